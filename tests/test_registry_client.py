"""The client, pull and push over canned HTTP (a fake transport), with the
real content store on a temp dir."""
import json
import threading
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from pyrun.content import ContentStore
from pyrun.content.digest import digest_bytes
from pyrun.errdefs import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from pyrun.registry import Client, Hosts, manifest as m, pull, push
from pyrun.registry.auth import Credentials
from pyrun.registry.fetch import fetch_blob, ref_key
from pyrun.registry.reference import parse_reference
from pyrun.registry.transport import TransportError

HOST = "reg.test"


class FakeResponse:
    def __init__(self, status, headers=None, body=b"", url="", cut=None):
        self.status_code, self.url = status, url
        self.headers = CaseInsensitiveDict(headers or {})
        self.content, self.cut = body, cut

    def iter_content(self, n):
        data = self.content if self.cut is None else self.content[:self.cut]
        for i in range(0, len(data), n):
            yield data[i:i + n]
        if self.cut is not None:
            raise requests.exceptions.ChunkedEncodingError("connection dropped")

    def close(self):
        pass


class FakeRegistry:
    """An in-memory registry behind a fake transport.  ``auth`` is None,
    "basic" or "bearer"; ``faults`` maps (method, path-suffix) to a list of
    canned outcomes consumed one per request."""

    def __init__(self, auth=None):
        self.auth = auth
        self.blobs, self.manifests, self.uploads = {}, {}, {}
        self.log, self.faults = [], {}
        self.tokens_issued = 0
        self.valid_tokens = set()
        self.lock = threading.Lock()

    def add_blob(self, data):
        self.blobs[digest_bytes(data)] = data
        return {"digest": digest_bytes(data), "size": len(data)}

    def add_manifest(self, tag, data, mt):
        self.manifests[digest_bytes(data)] = (mt, data)
        if tag:
            self.manifests[tag] = (mt, data)

    # the transport interface
    def request(self, method, url, *, host, headers=None, data=None, stream=False):
        if hasattr(data, "read"):
            data = data.read()
        headers = CaseInsensitiveDict(headers or {})
        with self.lock:
            self.log.append((method, url, dict(headers)))
        parts = urlsplit(url)
        for (fm, suffix), outcomes in self.faults.items():
            if fm == method and parts.path.endswith(suffix) and outcomes:
                outcome = outcomes.pop(0)
                if outcome == "drop":
                    raise TransportError(f"{method} {url}: connection reset")
                if isinstance(outcome, FakeResponse):
                    outcome.url = url
                    return outcome
        if parts.path == "/token":
            return self._token(parts, headers, url, data if method == "POST" else None)
        if not self._authorized(headers):
            challenge = ('Basic realm="fake"' if self.auth == "basic" else
                         f'Bearer realm="https://{HOST}/token",service="fake"')
            return FakeResponse(401, {"WWW-Authenticate": challenge},
                                b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}', url)
        return self._route(method, parts, headers, data, url)

    def _token(self, parts, headers, url, form=None):
        q = parse_qs(parts.query) if form is None else parse_qs(form.decode())
        if form is not None:
            assert q["grant_type"] == ["refresh_token"] and q["client_id"] == ["pyrun"]
            q["scope"] = q["scope"][0].split(" ")
        with self.lock:
            self.tokens_issued += 1
            tok = f"tok{self.tokens_issued}:{','.join(q.get('scope', []))}"
            self.valid_tokens.add(tok)
        return FakeResponse(200, {}, json.dumps({"token": tok}).encode(), url)

    def _authorized(self, headers):
        a = headers.get("Authorization", "")
        if self.auth is None:
            return True
        if self.auth == "basic":
            return a == "Basic dTpw"  # u:p
        return a.startswith("Bearer ") and a[7:] in self.valid_tokens

    def _route(self, method, parts, headers, data, url):
        path = parts.path
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if "/manifests/" in path:
            obj = path.rsplit("/", 1)[1]
            if method == "PUT":
                self.add_manifest(None if ":" in obj else obj, data, headers["Content-Type"])
                return FakeResponse(201, {}, b"", url)
            if obj not in self.manifests:
                return FakeResponse(404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}', url)
            mt, body = self.manifests[obj]
            return FakeResponse(200, {"Content-Type": mt, "Docker-Content-Digest": digest_bytes(body)}, body, url)
        if "/blobs/uploads/" in path:
            return self._upload(method, path, q, headers, data, url)
        if "/blobs/" in path:
            digest = path.rsplit("/", 1)[1]
            if digest not in self.blobs:
                return FakeResponse(404, {}, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}', url)
            body = self.blobs[digest]
            rng = headers.get("Range")
            if rng and method == "GET":
                start = int(rng[len("bytes="):-1])
                return FakeResponse(206, {"Content-Length": str(len(body) - start)}, body[start:], url)
            return FakeResponse(200, {"Content-Length": str(len(body))}, b"" if method == "HEAD" else body, url)
        return FakeResponse(404, {}, b"", url)

    def _upload(self, method, path, q, headers, data, url):
        if method == "POST":
            if "mount" in q and q["mount"] in self.blobs:
                return FakeResponse(201, {"Location": f"/v2/x/blobs/{q['mount']}"}, b"", url)
            uid = f"u{len(self.uploads)}"
            self.uploads[uid] = b""
            # a relative Location, as docker-registry sends
            return FakeResponse(202, {"Location": f"/v2/x/blobs/uploads/{uid}?_state=s0"}, b"", url)
        uid = path.rsplit("/", 1)[1]
        if method == "PATCH":
            start = int(headers["Content-Range"].split("-")[0])
            assert start == len(self.uploads[uid]), "chunk out of order"
            self.uploads[uid] += data
            # an absolute Location this time
            return FakeResponse(202, {"Location": f"https://{HOST}/v2/x/blobs/uploads/{uid}?_state=s1",
                                      "Range": f"0-{len(self.uploads[uid]) - 1}"}, b"", url)
        if method == "DELETE":
            self.uploads.pop(uid, None)
            return FakeResponse(204, {}, b"", url)
        if method == "PUT":
            body = self.uploads.pop(uid) + (data or b"")
            if digest_bytes(body) != q["digest"]:
                return FakeResponse(400, {}, b'{"errors":[{"code":"DIGEST_INVALID"}]}', url)
            self.blobs[q["digest"]] = body
            return FakeResponse(201, {"Location": f"/v2/x/blobs/{q['digest']}"}, b"", url)
        return FakeResponse(405, {}, b"", url)

    def requests_to(self, method, fragment):
        return [entry for entry in self.log if entry[0] == method and fragment in entry[1]]


@pytest.fixture
def store(tmp_path):
    return ContentStore(str(tmp_path / "content"))


def client_for(reg, credentials=lambda host: None):
    return Client(hosts=Hosts(), credentials=credentials, transport=reg, sleep=lambda s: None)


def image(reg, tag="v1", layers=(b"layer one", b"layer two" * 1000), mt=m.OCI_MANIFEST):
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    cfg = reg.add_blob(config)
    lays = [reg.add_blob(data) for data in layers]
    body = json.dumps({
        "schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **x} for x in lays],
    }).encode()
    reg.add_manifest(tag, body, mt)
    return body


# --- resolve and manifests

def test_resolve_sends_accept_and_checks_digest(store):
    reg = FakeRegistry()
    body = image(reg)
    repo = client_for(reg).repository(parse_reference(f"{HOST}/x:v1"))
    desc, data = repo.get_manifest("v1")
    assert data == body and desc.digest == digest_bytes(body) and desc.media_type == m.OCI_MANIFEST
    accept = reg.log[0][2]["Accept"]
    for mt in (m.OCI_MANIFEST, m.OCI_INDEX, m.DOCKER_MANIFEST, m.DOCKER_MANIFEST_LIST):
        assert mt in accept
    # a digest that does not match the bytes is refused
    reg.manifests[digest_bytes(body)] = (m.OCI_MANIFEST, body + b" ")
    with pytest.raises(InvalidArgument, match=f"manifest reg.test/x@{digest_bytes(body)}: digest mismatch"):
        repo.get_manifest(digest_bytes(body))  # by digest: compared with the digest asked for
    reg.faults[("GET", "/manifests/v1")] = [FakeResponse(
        200, {"Content-Type": m.OCI_MANIFEST, "Docker-Content-Digest": digest_bytes(b"x")}, body)]
    with pytest.raises(InvalidArgument, match="manifest reg.test/x:v1: digest mismatch"):
        repo.get_manifest("v1")  # by tag: compared with Docker-Content-Digest


def test_missing_manifest_names_registry():
    reg = FakeRegistry()
    repo = client_for(reg).repository(parse_reference(f"{HOST}/x:nope"))
    with pytest.raises(NotFound, match=r"reg.test refused manifest reg.test/x:nope: HTTP 404: MANIFEST_UNKNOWN"):
        repo.get_manifest("nope")


# --- auth

def test_bearer_token_flow_and_cache():
    reg = FakeRegistry(auth="bearer")
    image(reg)
    c = client_for(reg, credentials=lambda host: Credentials("u", "p"))
    repo = c.repository(parse_reference(f"{HOST}/x:v1"))
    repo.get_manifest("v1")
    repo.get_manifest("v1")
    assert reg.tokens_issued == 1
    [(_, url, headers)] = reg.requests_to("GET", "/token")
    assert "service=fake" in url and "scope=repository%3Ax%3Apull" in url
    assert headers["Authorization"] == "Basic dTpw"
    # the registry forgets the token: the client refreshes it on the 401
    reg.valid_tokens.clear()
    repo.get_manifest("v1")
    assert reg.tokens_issued == 2
    # a push scope is a different token
    c.repository(parse_reference(f"{HOST}/x:v1"), push=True).blob_exists("sha256:" + "0" * 64)
    assert "scope=repository%3Ax%3Apull%2Cpush" in reg.requests_to("GET", "/token")[-1][1]


def test_identity_token_uses_oauth_refresh_grant():
    reg = FakeRegistry(auth="bearer")
    image(reg)
    c = client_for(reg, credentials=lambda host: Credentials("", "refresh-me"))
    c.repository(parse_reference(f"{HOST}/x:v1")).get_manifest("v1")
    [(_, url, headers)] = reg.requests_to("POST", "/token")
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert reg.tokens_issued == 1


def test_basic_auth():
    reg = FakeRegistry(auth="basic")
    image(reg)
    repo = client_for(reg, credentials="u:p").repository(parse_reference(f"{HOST}/x:v1"))
    repo.get_manifest("v1")
    repo.get_manifest("v1")
    # one 401, then the header is sent up front
    assert [e[2].get("Authorization") for e in reg.log] == [None, "Basic dTpw", "Basic dTpw"]


def test_refused_without_credentials():
    reg = FakeRegistry(auth="basic")
    repo = client_for(reg).repository(parse_reference(f"{HOST}/x:v1"))
    with pytest.raises(FailedPrecondition, match=r"reg.test refused manifest reg.test/x:v1: HTTP 401: "
                                                 "UNAUTHORIZED: authentication required"):
        repo.get_manifest("v1")


# --- retries

def test_retries_5xx_and_dropped_connections():
    reg = FakeRegistry()
    image(reg)
    reg.faults[("GET", "/manifests/v1")] = [FakeResponse(503), "drop", FakeResponse(502)]
    sleeps = []
    c = Client(transport=reg, credentials=lambda h: None, sleep=sleeps.append)
    c.repository(parse_reference(f"{HOST}/x:v1")).get_manifest("v1")
    assert sleeps == [0.5, 1.0, 2.0]


def test_429_waits_retry_after_then_gives_up():
    reg = FakeRegistry()
    reg.faults[("GET", "/manifests/v1")] = [FakeResponse(429, {"Retry-After": "3"})] * 10
    sleeps = []
    c = Client(transport=reg, credentials=lambda h: None, sleep=sleeps.append, retries=2)
    with pytest.raises(Unavailable, match=r"HTTP 429: too many requests \(retry after 3s\)") as e:
        c.repository(parse_reference(f"{HOST}/x:v1")).get_manifest("v1")
    assert sleeps == [3, 3] and e.value.retry_after == 3


# --- blobs into the store

def layer_desc(reg, data):
    return m.Descriptor("application/vnd.oci.image.layer.v1.tar", **reg.add_blob(data))


def read_blob(store, digest):
    with store.reader(digest) as r:
        return r.read_at(r.size, 0)


def test_fetch_resumes_with_range(store):
    reg = FakeRegistry()
    data = bytes(range(256)) * 4096
    desc = layer_desc(reg, data)
    reg.faults[("GET", desc.digest)] = [FakeResponse(200, {}, data, cut=300_000)]
    repo = client_for(reg).repository(parse_reference(f"{HOST}/x:v1"))
    fetch_blob(repo, store, desc)
    assert read_blob(store, desc.digest) == data
    gets = reg.requests_to("GET", desc.digest)
    assert [g[2].get("Range") for g in gets] == [None, "bytes=300000-"]


@pytest.mark.parametrize("honours_range", [True, False])
def test_resume_from_an_earlier_ingest(store, honours_range):
    reg = FakeRegistry()
    data = b"0123456789" * 1000
    desc = layer_desc(reg, data)
    with store.writer(ref_key(desc), total=desc.size, expected=desc.digest) as w:
        w.write(data[:4000])
    if not honours_range:  # the whole blob comes back: start over
        reg.faults[("GET", desc.digest)] = [FakeResponse(200, {}, data)]
    fetch_blob(client_for(reg).repository(parse_reference(f"{HOST}/x")), store, desc)
    assert read_blob(store, desc.digest) == data
    assert reg.requests_to("GET", desc.digest)[0][2]["Range"] == "bytes=4000-"


def test_wrong_digest_rejected_nothing_stored(store):
    reg = FakeRegistry()
    desc = layer_desc(reg, b"the real bytes")
    reg.blobs[desc.digest] = b"the fake bytes"
    repo = client_for(reg).repository(parse_reference(f"{HOST}/x"))
    with pytest.raises(InvalidArgument, match=f"blob {desc.digest} from reg.test/x rejected, nothing stored"):
        fetch_blob(repo, store, desc)
    with pytest.raises(NotFound):
        store.info(desc.digest)
    with pytest.raises(NotFound):
        store.status(ref_key(desc))


def test_too_long_body_rejected(store):
    reg = FakeRegistry()
    desc = layer_desc(reg, b"short")
    reg.blobs[desc.digest] = b"short but longer"
    with pytest.raises(InvalidArgument, match="more than the 5 bytes"):
        fetch_blob(client_for(reg).repository(parse_reference(f"{HOST}/x")), store, desc)
    with pytest.raises(NotFound):
        store.status(ref_key(desc))


def test_waits_for_another_writer_then_finds_blob(store):
    reg = FakeRegistry()
    data = b"shared blob"
    desc = layer_desc(reg, data)
    other = store.writer(ref_key(desc), total=desc.size, expected=desc.digest)
    other.write(data)
    waits = []

    def sleep(s):  # the other writer finishes while we wait
        waits.append(s)
        if len(waits) == 3:
            other.commit(desc.size, desc.digest)

    fetch_blob(client_for(reg).repository(parse_reference(f"{HOST}/x")), store, desc, sleep=sleep)
    assert waits == [0.05, 0.1, 0.2]
    assert reg.requests_to("GET", desc.digest) == []
    assert read_blob(store, desc.digest) == data


# --- pull

def test_pull_index_selects_platform_and_labels(store):
    reg = FakeRegistry()
    amd = image(reg, tag=None, layers=(b"amd layer",))
    arm = image(reg, tag=None, layers=(b"arm layer",))
    idx = json.dumps({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": [
        {"mediaType": m.OCI_MANIFEST, "digest": digest_bytes(amd), "size": len(amd),
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": m.OCI_MANIFEST, "digest": digest_bytes(arm), "size": len(arm),
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}).encode()
    reg.add_manifest("multi", idx, m.OCI_INDEX)
    name, root, chosen = pull(f"{HOST}/x:multi", store, client=client_for(reg),
                              platform=m.parse_platform("linux/arm64"))
    assert name == f"{HOST}/x:multi"
    assert root == m.Descriptor(m.OCI_INDEX, digest_bytes(idx), len(idx))
    assert [d.digest for d in chosen] == [digest_bytes(arm)]
    assert store.info(root.digest).labels == {"containerd.io/gc.ref.content.m.0": digest_bytes(arm)}
    labels = store.info(digest_bytes(arm)).labels
    assert labels["containerd.io/gc.ref.content.l.0"] == digest_bytes(b"arm layer")
    assert "containerd.io/gc.ref.content.config" in labels
    with pytest.raises(NotFound):
        store.info(digest_bytes(amd))
    assert read_blob(store, digest_bytes(b"arm layer")) == b"arm layer"


def test_pull_schema1_is_unsupported(store):
    reg = FakeRegistry()
    reg.add_manifest("old", b'{"schemaVersion":1,"name":"x","tag":"old","fsLayers":[]}', m.DOCKER_SCHEMA1_SIGNED)
    with pytest.raises(InvalidArgument, match="schema1 manifests .* are unsupported"):
        pull(f"{HOST}/x:old", store, client=client_for(reg))


# --- push

def test_push_skips_mounts_and_uploads(store, tmp_path):
    src = FakeRegistry()
    body = image(src, layers=(b"small", b"B" * 2500, b"already there"))
    name, root, _ = pull(f"{HOST}/x:v1", store, client=client_for(src))

    dst = FakeRegistry()
    dst.add_blob(b"already there")
    dst.faults[("POST", "/blobs/uploads/")] = []
    results = dict(push(f"{HOST}/y:v2", store, root, client=client_for(dst), chunk_size=1000))
    assert results[digest_bytes(b"already there")] == "exists"
    assert results[digest_bytes(b"small")] == "uploaded"
    assert dst.blobs[digest_bytes(b"B" * 2500)] == b"B" * 2500
    # the 2500-byte layer went in three PATCH chunks, following each Location
    patches = dst.requests_to("PATCH", "/blobs/uploads/")
    assert [p[2]["Content-Range"] for p in patches] == ["0-999", "1000-1999", "2000-2499"]
    assert all("_state=s" in p[1] for p in patches)
    assert dst.manifests["v2"] == (m.OCI_MANIFEST, body)

    # a second push to another repository on that registry mounts
    dst2 = FakeRegistry()
    dst2.blobs = dict(dst.blobs)
    dst2.blobs.pop(digest_bytes(b"small"))
    dst2.faults[("HEAD", digest_bytes(b"small"))] = [FakeResponse(404)]
    results = dict(push(f"{HOST}/z:v3", store, root, client=client_for(dst2), mount_from="y"))
    assert results[digest_bytes(b"small")] == "uploaded"  # the registry did not have it to mount
    [post] = [p for p in dst2.requests_to("POST", "/blobs/uploads/") if "mount=" in p[1]]
    assert f"from=y" in post[1]
    dst2.blobs[digest_bytes(b"small")] = b"small"
    dst2.faults[("HEAD", digest_bytes(b"small"))] = [FakeResponse(404)]
    results = dict(push(f"{HOST}/z:v3", store, root, client=client_for(dst2), mount_from="y"))
    assert results[digest_bytes(b"small")] == "mounted"


def test_failed_upload_is_cancelled_then_retried(store):
    src = FakeRegistry()
    image(src, layers=(b"C" * 2500,))
    _, root, _ = pull(f"{HOST}/x:v1", store, client=client_for(src))
    dst = FakeRegistry()
    dst.faults[("PATCH", "")] = [FakeResponse(500)]  # the first PATCH, whichever upload
    results = dict(push(f"{HOST}/y:v1", store, root, client=client_for(dst), chunk_size=1000))
    assert results[digest_bytes(b"C" * 2500)] == "uploaded"
    [(_, url, _)] = dst.requests_to("DELETE", "/blobs/uploads/")
    assert url.startswith(f"https://{HOST}/v2/x/blobs/uploads/u") and url.endswith("?_state=s0")
    assert dst.blobs[digest_bytes(b"C" * 2500)] == b"C" * 2500


def test_push_missing_content(store):
    reg = FakeRegistry()
    root = m.Descriptor(m.OCI_MANIFEST, digest_bytes(b"{}"), 2)
    with pytest.raises(NotFound, match="is not in the content store"):
        push(f"{HOST}/x:v1", store, root, client=client_for(reg))
    assert reg.log == []


# --- progress

class Tty:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_progress_on_a_terminal_only():
    from pyrun.registry.progress import Progress

    out = Tty(True)
    p = Progress(out)
    p.add("sha256:" + "a" * 64, 2048)
    p.add("sha256:" + "b" * 64, 10)
    p.update("sha256:" + "a" * 64, 1024)
    p.done("sha256:" + "a" * 64)
    p.done("sha256:" + "b" * 64, "exists")
    p.close()
    last = out.text.rsplit("\x1b[3F", 1)[-1]  # the final redraw of three lines
    assert "sha256:aaaaaaaaaaaa  done" in last and "2.0 KiB / 2.0 KiB" in last
    assert "exists" in last and "10 B / 10 B" in last
    assert "total" in last and "2.0 KiB / 2.0 KiB" in last.splitlines()[-1]
    quiet = Tty(False)
    p = Progress(quiet)
    p.add("sha256:" + "a" * 64, 1)
    p.done("sha256:" + "a" * 64)
    p.close()
    assert quiet.text == ""
