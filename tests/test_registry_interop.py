"""Pull and push against real docker-registry instances, checked with skopeo."""
import base64
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pyrun.content import ContentStore, write_blob
from pyrun.content.digest import digest_bytes
from pyrun.errdefs import FailedPrecondition
from pyrun.registry import Client, Descriptor, HostOptions, Hosts, manifest as m, parse_platform, pull, push
from pyrun.registry.fetch import ref_key
from pyrun.registry.transport import RequestsTransport
from registry_fixtures import PASSWORD, USER, FlakyProxy, OCILayout, skopeo

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def client(reg, credentials=lambda host: None, transport=None):
    hosts = Hosts.plain_http(reg.host)
    return Client(hosts=hosts, credentials=credentials,
                  transport=transport or RequestsTransport(hosts))


def blob(store, digest):
    with store.reader(digest) as r:
        return r.read_at(r.size, 0)


def rand_layers(n, size=4096):
    return [{f"file{i}": os.urandom(size)} for i in range(n)]


def multiarch_layout(path):
    lay = OCILayout(str(path))
    amd = lay.image(rand_layers(2), "amd64")
    arm = lay.image(rand_layers(2), "arm64", "v8")
    idx = lay.index([amd, arm])
    lay.tag(idx, "multi")
    lay.tag(amd, "single")
    return lay, idx, amd, arm


def load_layout(store, lay, desc):
    """Copy the image rooted at ``desc`` from an OCI layout into a store."""
    data = lay.read(desc["digest"])
    doc = m.parse_manifest(data, desc["mediaType"])
    for child in m.children(doc):
        load_layout(store, lay, child.to_dict()) if isinstance(doc, m.Index) else \
            write_blob(store, child.digest, lay.read(child.digest), child.to_dict())
    write_blob(store, desc["digest"], data, desc)
    return Descriptor(desc["mediaType"], desc["digest"], desc["size"])


class RecordingTransport(RequestsTransport):
    """The real transport, noting (method, url, Range) of each request."""

    def __init__(self, hosts, log=None):
        super().__init__(hosts)
        self.seen, self.log = [], log

    def request(self, method, url, *, host, headers=None, data=None, stream=False):
        entry = (method, url, (headers or {}).get("Range"))
        self.seen.append(entry)
        if self.log:
            with open(self.log, "a") as f:
                f.write(json.dumps(entry) + "\n")
        return super().request(method, url, host=host, headers=headers, data=data, stream=stream)


# --- skopeo pushes, pyrun pulls

def test_pull_multiarch_index_pushed_by_skopeo(registry, tmp_path):
    lay, idx, amd, arm = multiarch_layout(tmp_path / "layout")
    ref = f"{registry.host}/multi/app:1"
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{lay.path}:multi", f"docker://{ref}")

    store = ContentStore(str(tmp_path / "store"))
    name, root, chosen = pull(ref, store, client=client(registry), platform=parse_platform("linux/arm64"))
    assert name == ref
    assert (root.media_type, root.digest, root.size) == (m.OCI_INDEX, idx["digest"], idx["size"])
    assert [d.digest for d in chosen] == [arm["digest"]]
    arm_doc = m.parse_manifest(lay.read(arm["digest"]))
    for d in m.children(arm_doc):
        assert blob(store, d.digest) == lay.read(d.digest)
    assert store.info(idx["digest"]).labels == {"containerd.io/gc.ref.content.m.0": arm["digest"]}
    assert store.info(arm["digest"]).labels == m.gc_labels(arm_doc)
    assert not store.exists(amd["digest"])

    name, root, chosen = pull(ref, store, client=client(registry), all_platforms=True)
    assert [d.digest for d in chosen] == [amd["digest"], arm["digest"]]
    assert blob(store, amd["digest"]) == lay.read(amd["digest"])


def test_pull_docker_schema2_pushed_by_skopeo(registry, tmp_path):
    lay, _, amd, _ = multiarch_layout(tmp_path / "layout")
    ref = f"{registry.host}/schema2/app:1"
    skopeo("copy", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{lay.path}:single", f"docker://{ref}")
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}").encode()

    store = ContentStore(str(tmp_path / "store"))
    _, root, chosen = pull(ref, store, client=client(registry))
    assert root.media_type == m.DOCKER_MANIFEST and root.digest == digest_bytes(raw)
    assert blob(store, root.digest) == raw
    doc = m.parse_manifest(raw)
    for layer in doc.layers:  # layers travel unchanged through the conversion
        assert blob(store, layer.digest) == lay.read(layer.digest)
    assert store.exists(doc.config.digest)
    # by digest as well
    _, again, _ = pull(f"{registry.host}/schema2/app@{root.digest}", store, client=client(registry))
    assert again == root


# --- pyrun pushes, skopeo reads

def test_push_index_read_back_by_skopeo(registry, tmp_path):
    lay, idx, amd, arm = multiarch_layout(tmp_path / "layout")
    big = lay.image([{"big": os.urandom(300_000)}], "amd64")  # chunked below
    store = ContentStore(str(tmp_path / "store"))
    root = load_layout(store, lay, idx)
    ref = f"{registry.host}/pushed/app:v1"
    results = push(ref, store, root, client=client(registry), chunk_size=100_000)
    assert {state for _, state in results} == {"uploaded"}

    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}").encode()
    assert raw == lay.read(idx["digest"])
    out = tmp_path / "out"
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{ref}", f"oci:{out}:v1")
    [entry] = json.loads((out / "index.json").read_text())["manifests"]
    assert entry["digest"] == idx["digest"]
    copied = set(os.listdir(out / "blobs" / "sha256"))
    ours = {d[7:] for d in [idx["digest"], amd["digest"], arm["digest"]]}
    for man in (amd, arm):
        ours |= {c.digest[7:] for c in m.children(m.parse_manifest(lay.read(man["digest"])))}
    assert copied == ours
    for name in copied:
        assert (out / "blobs" / "sha256" / name).read_bytes() == lay.read("sha256:" + name)

    # a big layer goes up in chunks; a second repository mounts, a third skips
    big_root = load_layout(store, lay, big)
    push(f"{registry.host}/pushed/big:1", store, big_root, client=client(registry), chunk_size=100_000)
    states = dict(push(f"{registry.host}/pushed/mounted:1", store, big_root, client=client(registry),
                       mount_from="pushed/big"))
    assert set(states.values()) == {"mounted"}
    states = dict(push(f"{registry.host}/pushed/mounted@{big['digest']}", store, big_root,
                       client=client(registry)))
    assert set(states.values()) == {"exists"}
    big_raw = skopeo("inspect", "--raw", "--tls-verify=false",
                     f"docker://{registry.host}/pushed/mounted@{big['digest']}")
    assert digest_bytes(big_raw.encode()) == big["digest"]


# --- auth

def single_image(tmp_path):
    lay, _, amd, _ = multiarch_layout(tmp_path / "layout")
    store = ContentStore(str(tmp_path / "src"))
    return store, load_layout(store, lay, amd)


def test_basic_auth(basic_registry, tmp_path, monkeypatch):
    src, root = single_image(tmp_path)
    ref = f"{basic_registry.host}/basic/app:1"
    push(ref, src, root, client=client(basic_registry, credentials=f"{USER}:{PASSWORD}"))

    dst = ContentStore(str(tmp_path / "dst"))
    with pytest.raises(FailedPrecondition, match=rf"{basic_registry.host} refused manifest .*HTTP 401: UNAUTHORIZED"):
        pull(ref, dst, client=client(basic_registry))
    with pytest.raises(FailedPrecondition, match="HTTP 401"):
        pull(ref, dst, client=client(basic_registry, credentials=f"{USER}:wrong"))

    # credentials from $DOCKER_CONFIG/config.json
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    hosts = Hosts.plain_http(basic_registry.host)
    _, got, _ = pull(ref, dst, client=Client(hosts=hosts))
    assert got.digest == root.digest

    # and from a credential helper named in credHelpers
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-pyrun-test"
    helper.write_text("#!/bin/sh\nread server\n"
                      f"echo '{{\"ServerURL\":\"'$server'\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}'\n")
    helper.chmod(0o755)
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {basic_registry.host: "pyrun-test"}}))
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    dst2 = ContentStore(str(tmp_path / "dst2"))
    _, got, _ = pull(ref, dst2, client=Client(hosts=hosts))
    assert blob(dst2, got.digest) == blob(src, root.digest)


def test_token_auth(token_registry, tmp_path):
    tokens = token_registry.extra["tokens"]
    src, root = single_image(tmp_path)
    ref = f"{token_registry.host}/tok/app:1"
    with pytest.raises(FailedPrecondition, match=rf"{token_registry.host} refused .*HTTP 401"):
        push(ref, src, root, client=client(token_registry))  # anonymous: pull only
    push(ref, src, root, client=client(token_registry, credentials=f"{USER}:{PASSWORD}"))
    assert {"scopes": ["repository:tok/app:pull,push"], "user": USER,
            "service": "pyrun-test-registry"} in tokens.requests

    dst = ContentStore(str(tmp_path / "dst"))
    before = len(tokens.requests)
    _, got, _ = pull(ref, dst, client=client(token_registry))  # anonymous pull is allowed
    assert got.digest == root.digest
    assert tokens.requests[before:] == [{"scopes": ["repository:tok/app:pull"], "user": None,
                                         "service": "pyrun-test-registry"}]  # one token, cached


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_ca_file_and_insecure(tls_registry, tmp_path):
    src, root = single_image(tmp_path)
    ref = f"{tls_registry.host}/tls/app:1"
    insecure = Hosts({tls_registry.host: HostOptions(insecure_tls=True)})
    push(ref, src, root, client=Client(hosts=insecure, credentials=lambda h: None))
    dst = ContentStore(str(tmp_path / "dst"))
    with pytest.raises(FailedPrecondition, match="TLS failed.*give a CA file"):
        pull(ref, dst, client=Client(credentials=lambda h: None))
    trusted = Hosts({tls_registry.host: HostOptions(ca_file=tls_registry.extra["ca_file"])})
    _, got, _ = pull(ref, dst, client=Client(hosts=trusted, credentials=lambda h: None))
    assert got.digest == root.digest


def test_redirected_blob_download(redirect_registry, tmp_path):
    src, root = single_image(tmp_path)
    ref = f"{redirect_registry.host}/redir/app:1"
    push(ref, src, root, client=client(redirect_registry))
    dst = ContentStore(str(tmp_path / "dst"))
    pull(ref, dst, client=client(redirect_registry))
    doc = m.parse_manifest(blob(src, root.digest))
    for d in m.children(doc):
        assert blob(dst, d.digest) == blob(src, d.digest)
    served = redirect_registry.extra["served"]
    assert len([p for p in served if p.endswith("/data")]) == len(m.children(doc))


def test_real_dropped_connection_and_5xx_are_retried(registry, tmp_path):
    lay = OCILayout(str(tmp_path / "layout"))
    desc = lay.image([{"big": os.urandom(3 << 20)}])
    src = ContentStore(str(tmp_path / "src"))
    root = load_layout(src, lay, desc)
    ref = f"{registry.host}/flaky/app:1"
    push(ref, src, root, client=client(registry))
    layer = m.parse_manifest(blob(src, root.digest)).layers[0]
    cut = 5 << 19  # 2.5 MiB: the bytes read before the drop are kept
    proxy = FlakyProxy(registry.host)
    try:
        proxy.faults = {"/manifests/": [503, 502], layer.digest: [("cut", cut)]}
        hosts = Hosts.plain_http(proxy.host)
        c = Client(hosts=hosts, credentials=lambda h: None, backoff=0.01)
        dst = ContentStore(str(tmp_path / "dst"))
        _, got, _ = pull(f"{proxy.host}/flaky/app:1", dst, client=c)
    finally:
        proxy.stop()
    assert got.digest == root.digest
    assert [s[0] for s in proxy.seen if "/manifests/" in s[1]][:3] == ["GET"] * 3
    first, second = [s[2] for s in proxy.seen if layer.digest in s[1]]
    assert first is None and 0 < int(second[len("bytes="):-1]) <= cut
    assert blob(dst, layer.digest) == blob(src, layer.digest)


# --- interruption and concurrency

BIG = 64 << 20

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {tests!r})
from pyrun.content import ContentStore
from pyrun.registry import Client, Hosts, pull
from test_registry_interop import RecordingTransport

host, ref, store_dir, big, log, go = sys.argv[1:7]

class PauseAtHalf:
    # A slow reader: stop taking bytes once the big layer is a quarter in,
    # until the test says go (or kills us).
    paused = False
    def add(self, digest, size): pass
    def done(self, digest, state="done"): pass
    def close(self): pass
    def update(self, digest, offset):
        if digest == big and offset >= {pause_at} and not self.paused:
            self.paused = True
            print("PAUSED", flush=True)
            while not os.path.exists(go):
                time.sleep(0.02)

hosts = Hosts.plain_http(host)
client = Client(hosts=hosts, credentials=lambda h: None, transport=RecordingTransport(hosts, log))
print("START", flush=True)
pull(ref, ContentStore(store_dir), client=client, progress=PauseAtHalf())
print("DONE", flush=True)
"""


@pytest.fixture(scope="module")
def big_image(registry, tmp_path_factory):
    """A one-layer image with a 64 MiB random layer, pushed by pyrun."""
    store = ContentStore(str(tmp_path_factory.mktemp("big") / "store"))
    layer = os.urandom(BIG)
    ldesc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_bytes(layer), "size": BIG}
    write_blob(store, "big-layer", layer, ldesc)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    cdesc = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_bytes(config),
             "size": len(config)}
    write_blob(store, "big-config", config, cdesc)
    man = json.dumps({"schemaVersion": 2, "mediaType": m.OCI_MANIFEST, "config": cdesc,
                      "layers": [ldesc]}).encode()
    root = {"mediaType": m.OCI_MANIFEST, "digest": digest_bytes(man), "size": len(man)}
    write_blob(store, "big-manifest", man, root)
    ref = f"{registry.host}/big/app:1"
    push(ref, store, Descriptor(**{"media_type": m.OCI_MANIFEST, "digest": root["digest"],
                                   "size": root["size"]}), client=client(registry))
    return ref, ldesc


def start_child(tmp_path, registry, ref, store_dir, big, name, pause_at):
    script = tmp_path / "child.py"
    script.write_text(CHILD.replace("{tests!r}", repr(os.path.join(REPO_ROOT, "tests")))
                      .replace("{pause_at}", str(pause_at)))
    log, go = tmp_path / f"{name}.log", tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.Popen([sys.executable, str(script), registry.host, ref, str(store_dir), big,
                             str(log), str(go)], stdout=subprocess.PIPE, text=True, env=env)
    return proc, log, go


def wait_line(proc, want):
    for line in proc.stdout:
        if line.strip() == want:
            return
    raise AssertionError(f"child exited ({proc.wait()}) before printing {want}")


def test_interrupted_pull_resumes(registry, big_image, tmp_path):
    ref, ldesc = big_image
    store_dir = tmp_path / "store"
    proc, _, _ = start_child(tmp_path, registry, ref, store_dir, ldesc["digest"], "a", BIG // 4)
    try:
        wait_line(proc, "PAUSED")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    store = ContentStore(str(store_dir))
    layer = Descriptor(ldesc["mediaType"], ldesc["digest"], ldesc["size"])
    offset = store.status(ref_key(layer)).offset
    assert BIG // 4 <= offset < BIG
    assert not store.exists(ldesc["digest"])

    hosts = Hosts.plain_http(registry.host)
    transport = RecordingTransport(hosts)
    pull(ref, store, client=Client(hosts=hosts, credentials=lambda h: None, transport=transport))
    gets = [e for e in transport.seen if e[0] == "GET" and ldesc["digest"] in e[1]]
    assert gets == [("GET", gets[0][1], f"bytes={offset}-")]
    assert store.info(ldesc["digest"]).size == BIG  # committed: size and digest were checked


def test_two_processes_download_a_blob_once(registry, big_image, tmp_path):
    ref, ldesc = big_image
    store_dir = tmp_path / "store"
    first, log1, go = start_child(tmp_path, registry, ref, store_dir, ldesc["digest"], "first", BIG // 4)
    second = None
    try:
        wait_line(first, "PAUSED")  # the first holds the layer's ref mid-download
        second, log2, _ = start_child(tmp_path, registry, ref, store_dir, ldesc["digest"], "second", 0)
        wait_line(second, "START")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "/manifests/" not in (log2.read_text() if log2.exists() else ""):
            time.sleep(0.02)
        time.sleep(0.3)  # let the second reach the locked ref (correct either way)
        go.touch()
        assert first.wait(60) == 0 and second.wait(60) == 0
    finally:
        for p in (first, second):
            if p and p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()

    def blob_gets(log):
        return [e for e in map(json.loads, log.read_text().splitlines())
                if e[0] == "GET" and ldesc["digest"] in e[1]]

    assert len(blob_gets(log1)) == 1 and blob_gets(log2) == []
    assert ContentStore(str(store_dir)).info(ldesc["digest"]).size == BIG


# --- with the metadata layer: namespaces share bytes, gc follows our labels

def test_pull_into_namespaces_then_gc(registry, tmp_path):
    from pyrun.metadata.db import DB
    from pyrun.metadata.gc import collect
    from pyrun.metadata.images import Image

    lay, idx, amd, arm = multiarch_layout(tmp_path / "layout")
    ref = f"{registry.host}/ns/app:1"
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{lay.path}:multi", f"docker://{ref}")
    db = DB(str(tmp_path / "root"))
    try:
        one = db.content_store("one")
        name, root, chosen = pull(ref, one, client=client(registry), all_platforms=True)
        db.images("one").create(Image(name, root.to_dict()))
        write_blob(one, "stray", b"unreferenced", {"digest": digest_bytes(b"unreferenced"), "size": 12})

        # another tenant pulls the same image: the bytes are already there
        transport = RecordingTransport(Hosts.plain_http(registry.host))
        two = db.content_store("two")
        pull(ref, two, client=client(registry, transport=transport), all_platforms=True)
        assert [e for e in transport.seen if "/blobs/" in e[1]] == []

        collect(db)
        reachable = {root.digest, *(d.digest for d in chosen)}
        for man in chosen:
            reachable |= {d.digest for d in m.children(m.parse_manifest(blob(one, man.digest)))}
        assert {i.digest for i in one.list()} == reachable  # the stray blob went, the image stayed
        assert {i.digest for i in two.list()} == set()       # no image in "two": all collected
    finally:
        db.close()
