"""Protocol logic driven with bytes: manifests, platforms, digests, auth."""
import base64
import json
import subprocess

import pytest

from pyrun.content.digest import digest_bytes
from pyrun.errdefs import FailedPrecondition, InvalidArgument, NotFound, NotImplementedYet, Unavailable
from pyrun.registry import auth, manifest as m
from pyrun.registry.client import describe_error, error_for, parse_retry_after, with_query


def desc(data, mt, **extra):
    return {"mediaType": mt, "digest": digest_bytes(data), "size": len(data), **extra}


CONFIG = b'{"architecture":"amd64","os":"linux"}'
LAYER = b"layer-bytes"


def oci_manifest(mt=m.OCI_MANIFEST, layer_mt="application/vnd.oci.image.layer.v1.tar"):
    return json.dumps({"schemaVersion": 2, "mediaType": mt,
                       "config": desc(CONFIG, "application/vnd.oci.image.config.v1+json"),
                       "layers": [desc(LAYER, layer_mt), desc(b"2", layer_mt)]}).encode()


def index(*platforms, mt=m.OCI_INDEX):
    entries = []
    for i, p in enumerate(platforms):
        entries.append(desc(str(i).encode(), m.OCI_MANIFEST, platform=p))
    return json.dumps({"schemaVersion": 2, "mediaType": mt, "manifests": entries}).encode()


# --- manifests

def test_parse_manifest():
    doc = m.parse_manifest(oci_manifest())
    assert isinstance(doc, m.Manifest)
    assert doc.config.digest == digest_bytes(CONFIG)
    assert [d.size for d in doc.layers] == [len(LAYER), 1]
    assert m.children(doc) == [doc.config, *doc.layers]


def test_parse_docker_schema2_and_list():
    assert m.parse_manifest(oci_manifest(m.DOCKER_MANIFEST)).media_type == m.DOCKER_MANIFEST
    idx = m.parse_manifest(index({"os": "linux", "architecture": "amd64"}, mt=m.DOCKER_MANIFEST_LIST))
    assert isinstance(idx, m.Index) and idx.media_type == m.DOCKER_MANIFEST_LIST


def test_parse_without_media_type_uses_header_then_shape():
    body = json.loads(oci_manifest())
    del body["mediaType"]
    raw = json.dumps(body).encode()
    assert m.parse_manifest(raw, m.DOCKER_MANIFEST).media_type == m.DOCKER_MANIFEST
    assert m.parse_manifest(raw, "application/json").media_type == m.OCI_MANIFEST
    raw_idx = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert isinstance(m.parse_manifest(raw_idx), m.Index)


def test_schema1_unsupported():
    with pytest.raises(NotImplementedYet, match="schema1"):
        m.parse_manifest(b'{"schemaVersion": 1, "name": "x", "fsLayers": []}')
    with pytest.raises(NotImplementedYet, match="schema1"):
        m.parse_manifest(b"{}", m.DOCKER_SCHEMA1_SIGNED)


@pytest.mark.parametrize("data, why", [
    (b"not json", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (b'{"mediaType": "application/x-foo"}', "unsupported media type"),
    (json.dumps({"mediaType": m.OCI_MANIFEST, "config": {}, "layers": []}).encode(), "config: needs"),
    (json.dumps({"mediaType": m.OCI_MANIFEST, "config": desc(b"c", "x"),
                 "layers": [{"mediaType": "x", "digest": "sha256:zz", "size": 1}]}).encode(),
     r"layers\[0\]: invalid digest"),
    (json.dumps({"mediaType": m.OCI_INDEX}).encode(), "without a manifests list"),
])
def test_malformed(data, why):
    with pytest.raises(InvalidArgument, match=why):
        m.parse_manifest(data, what="img")


def test_descriptor_round_trip():
    d = {"mediaType": m.OCI_MANIFEST, "digest": digest_bytes(b"x"), "size": 1,
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
         "annotations": {"a": "b"}}
    assert m.Descriptor.from_dict(d).to_dict() == d


def test_verify_digest():
    m.verify_digest(b"abc", digest_bytes(b"abc"))
    with pytest.raises(InvalidArgument, match=r"blob x: digest mismatch: expected sha256:.*got"):
        m.verify_digest(b"abd", digest_bytes(b"abc"), "blob x")


def test_gc_labels():
    doc = m.parse_manifest(oci_manifest())
    labels = m.gc_labels(doc)
    assert labels == {"containerd.io/gc.ref.content.config": digest_bytes(CONFIG),
                      "containerd.io/gc.ref.content.l.0": digest_bytes(LAYER),
                      "containerd.io/gc.ref.content.l.1": digest_bytes(b"2")}
    idx = m.parse_manifest(index({"os": "linux", "architecture": "amd64"},
                                 {"os": "linux", "architecture": "arm64"}))
    assert m.gc_labels(idx, idx.manifests[1:]) == {
        "containerd.io/gc.ref.content.m.0": idx.manifests[1].digest}


# --- platforms

@pytest.mark.parametrize("s, want", [
    ("linux/amd64", ("linux", "amd64", "")),
    ("linux/x86_64", ("linux", "amd64", "")),
    ("linux/arm64", ("linux", "arm64", "v8")),
    ("linux/aarch64/8", ("linux", "arm64", "v8")),
    ("linux/arm64/v8", ("linux", "arm64", "v8")),
    ("linux/arm", ("linux", "arm", "v7")),
    ("linux/arm/v6", ("linux", "arm", "v6")),
    ("Linux/AMD64/v1", ("linux", "amd64", "")),
])
def test_parse_platform(s, want):
    p = m.parse_platform(s)
    assert (p.os, p.architecture, p.variant) == want


def test_parse_platform_os_only_takes_host_arch():
    assert m.parse_platform("linux").architecture == m.host_platform().architecture


@pytest.mark.parametrize("bad", ["", "/", "linux//v7", "a/b/c/d"])
def test_parse_platform_invalid(bad):
    with pytest.raises(InvalidArgument, match="invalid platform"):
        m.parse_platform(bad)


def test_select_manifests():
    idx = m.parse_manifest(index(
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64"},          # no variant: normalises to v8
        {"os": "linux", "architecture": "arm", "variant": "v7"},
        {"os": "linux", "architecture": "arm", "variant": "v6"}))
    pick = lambda s: [d.platform.architecture + d.platform.variant
                      for d in m.select_manifests(idx, m.parse_platform(s))]
    assert pick("linux/arm64/v8") == ["arm64"]
    assert pick("linux/arm") == ["armv7"]
    assert pick("linux/arm/v6") == ["armv6"]
    assert len(m.select_manifests(idx, all_platforms=True)) == 4
    assert m.select_manifests(idx)[0].platform.architecture == m.host_platform().architecture
    with pytest.raises(NotFound, match=r"no manifest for platform linux/s390x \(index offers: "
                                       r"linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64\)"):
        m.select_manifests(idx, m.parse_platform("linux/s390x"))


# --- auth challenges and tokens

def test_parse_challenges():
    h = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
         'scope="repository:library/busybox:pull"')
    [c] = auth.parse_challenges(h)
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                        "scope": "repository:library/busybox:pull"}


def test_parse_several_challenges_and_quoting():
    cs = auth.parse_challenges('Basic realm="Registry Realm", '
                               'Bearer realm="http://x/t?a=1", error="invalid_token",'
                               ' scope="a:b:pull,push", note="say \\"hi\\""')
    assert [c.scheme for c in cs] == ["basic", "bearer"]
    assert cs[0].params == {"realm": "Registry Realm"}
    assert cs[1].params["scope"] == "a:b:pull,push"
    assert cs[1].params["note"] == 'say "hi"'
    assert auth.parse_challenges("") == []
    assert auth.parse_challenges("Basic") == [auth.Challenge("basic", {})]


def test_parse_token_response():
    t = auth.parse_token_response(b'{"token": "abc", "expires_in": 100}', now=1000.0)
    assert t.token == "abc" and 1000 < t.expires_at <= 1100
    t = auth.parse_token_response(b'{"access_token": "xyz"}', now=0.0)
    assert t.token == "xyz" and t.expires_at == pytest.approx(54.0)
    with pytest.raises(InvalidArgument, match="no token"):
        auth.parse_token_response(b'{"expires_in": 5}')
    with pytest.raises(InvalidArgument, match="not JSON"):
        auth.parse_token_response(b"<html>")


def test_scope():
    assert auth.repository_scope("a/b") == "repository:a/b:pull"
    assert auth.repository_scope("a/b", ("pull", "push")) == "repository:a/b:pull,push"


# --- credentials

def b64(s):
    return base64.b64encode(s.encode()).decode()


def test_credentials_from_auths():
    config = {"auths": {"localhost:5000": {"auth": b64("u:p:with:colons")},
                        "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
                        "https://other.io": {"username": "o", "password": "q"}}}
    assert auth.credentials_from_config(config, "localhost:5000") == auth.Credentials("u", "p:with:colons")
    assert auth.credentials_from_config(config, "docker.io") == auth.Credentials("hub", "pw")
    assert auth.credentials_from_config(config, "other.io") == auth.Credentials("o", "q")
    assert auth.credentials_from_config(config, "nowhere.io") is None
    with pytest.raises(InvalidArgument, match="not base64 of user:password"):
        auth.credentials_from_config({"auths": {"h": {"auth": b64("nocolon")}}}, "h")


class FakeRun:
    """Records credential-helper calls and answers like a helper would."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def __call__(self, argv, input, capture_output, timeout):
        self.calls.append((argv, input))
        rc, out = self.answers.get(argv[0], (1, b"credentials not found in native keychain"))
        return subprocess.CompletedProcess(argv, rc, out, b"")


def test_credential_helpers():
    run = FakeRun({"docker-credential-pass": (0, b'{"ServerURL":"h","Username":"hu","Secret":"hs"}'),
                   "docker-credential-store": (0, b'{"Username":"su","Secret":"ss"}')})
    config = {"credHelpers": {"h.io": "pass"}, "credsStore": "store",
              "auths": {"h.io": {"auth": b64("a:b")}}}
    assert auth.credentials_from_config(config, "h.io", run) == auth.Credentials("hu", "hs")
    assert run.calls[-1] == (["docker-credential-pass", "get"], b"h.io")
    assert auth.credentials_from_config(config, "k.io", run) == auth.Credentials("su", "ss")
    assert run.calls[-1] == (["docker-credential-store", "get"], b"k.io")


def test_credential_helper_not_found_falls_back_to_auths():
    config = {"credsStore": "none", "auths": {"k.io": {"auth": b64("a:b")}}}
    assert auth.credentials_from_config(config, "k.io", FakeRun({})) == auth.Credentials("a", "b")


def test_credential_helper_errors():
    run = FakeRun({"docker-credential-bad": (0, b"garbage"),
                   "docker-credential-fail": (3, b"boom")})
    with pytest.raises(Unavailable, match="not {Username, Secret} JSON"):
        auth.helper_get("bad", "h", run)
    with pytest.raises(Unavailable, match="exit 3: boom"):
        auth.helper_get("fail", "h", run)
    with pytest.raises(Unavailable, match="docker-credential-does-not-exist"):
        auth.helper_get("does-not-exist", "h")  # real subprocess.run: not on PATH


def test_docker_config_env(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"r:1": {"auth": b64("x:y")}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert auth.docker_credentials("r:1") == auth.Credentials("x", "y")
    assert auth.docker_credentials("r:1", config_dir=str(tmp_path / "none")) is None
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(InvalidArgument, match="config.json: not valid JSON"):
        auth.docker_credentials("r:1")


def test_parse_user_password():
    assert auth.parse_user_password("a:b:c") == auth.Credentials("a", "b:c")
    with pytest.raises(InvalidArgument):
        auth.parse_user_password("nocolon")


# --- HTTP error helpers

def test_retry_after():
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470) == 10
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_error_for():
    body = b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}'
    e = error_for(403, "r.io", "manifest r.io/a:1", body)
    assert isinstance(e, FailedPrecondition) and e.status == 403
    assert str(e) == "r.io refused manifest r.io/a:1: HTTP 403: DENIED: requested access to the resource is denied"
    assert isinstance(error_for(404, "r", "x"), NotFound)
    e = error_for(429, "r", "x", b"", retry_after=7)
    assert isinstance(e, Unavailable) and "retry after 7s" in str(e) and e.retry_after == 7
    assert isinstance(error_for(503, "r", "x"), Unavailable)
    assert isinstance(error_for(400, "r", "x"), InvalidArgument)
    assert describe_error(500, b"<h1>oops</h1>") == "<h1>oops</h1>"
    assert describe_error(401, b"") == "unauthorized"


def test_with_query():
    assert with_query("http://h/u/", {"digest": "sha256:1"}) == "http://h/u/?digest=sha256%3A1"
    assert with_query("http://h/u?_state=x", {"digest": "d"}) == "http://h/u?_state=x&digest=d"
