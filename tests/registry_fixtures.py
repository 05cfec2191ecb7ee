"""Real registries for the tests: Debian's docker-registry on 127.0.0.1.

Fixtures: ``registry`` (plain HTTP, anonymous), ``basic_registry``
(htpasswd basic auth, user ``pyrun``/``s3cret``), ``token_registry``
(bearer tokens from a small token server of our own, JWTs signed with an
openssl-made RSA key whose self-signed cert is the registry's
rootcertbundle) and ``redirect_registry`` (blob GETs answered with a 307 to
a file server on another port, via the registry's ``redirect`` storage
middleware).  Each is started on a free port with its storage in a temp dir
and stopped (by pid) at the end.  Helpers build OCI layouts for skopeo.
"""
import base64
import gzip
import hashlib
import http.server
import io
import json
import os
import secrets
import socket
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

# What conftest.py's star import brings in: the fixtures only.
__all__ = ["registry", "basic_registry", "token_registry", "redirect_registry", "tls_registry"]

USER, PASSWORD = "pyrun", "s3cret"
TOKEN_SERVICE, TOKEN_ISSUER = "pyrun-test-registry", "pyrun-test-issuer"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Registry:
    """A running docker-registry: ``host`` is ``127.0.0.1:<port>``."""
    host: str
    root: str
    proc: subprocess.Popen
    log: str
    extra: dict = field(default_factory=dict)

    def url(self, path=""):
        return f"http://{self.host}{path}"


def start_registry(workdir, auth=None, middleware=None, tls=None):
    """Start ``docker-registry serve`` with a JSON (= YAML) config; return a
    :class:`Registry` once ``/v2/`` answers."""
    os.makedirs(workdir, exist_ok=True)
    port = free_port()
    root = os.path.join(workdir, "storage")
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": root}, "delete": {"enabled": True},
                    "cache": {"blobdescriptor": "inmemory"}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
    }
    if auth:
        config["auth"] = auth
    if middleware:
        config["middleware"] = middleware
    if tls:
        config["http"]["tls"] = tls
    cfg = os.path.join(workdir, "config.yml")
    with open(cfg, "w") as f:
        json.dump(config, f)
    log = os.path.join(workdir, "registry.log")
    with open(log, "wb") as logf:
        proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=logf, stderr=logf)
    reg = Registry(f"127.0.0.1:{port}", root, proc, log)
    deadline = time.monotonic() + 15
    while True:
        try:
            requests.get(reg.url("/v2/"), timeout=1)  # any answer will do, even to HTTP on TLS
            return reg
        except requests.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_registry(reg)
                with open(log) as f:
                    raise RuntimeError(f"docker-registry did not start: {f.read()}")
            time.sleep(0.05)


def stop_registry(reg):
    if reg.proc.poll() is None:
        reg.proc.terminate()
        try:
            reg.proc.wait(10)
        except subprocess.TimeoutExpired:
            reg.proc.kill()
            reg.proc.wait()


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """An anonymous plain-HTTP registry shared by the session (tests use
    their own repository names)."""
    reg = start_registry(str(tmp_path_factory.mktemp("registry")))
    yield reg
    stop_registry(reg)


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory):
    """A registry with htpasswd basic auth (USER/PASSWORD)."""
    work = str(tmp_path_factory.mktemp("basic-registry"))
    htpasswd = os.path.join(work, "htpasswd")
    line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True,
                          capture_output=True, text=True).stdout.strip()
    with open(htpasswd, "w") as f:
        f.write(line + "\n")
    reg = start_registry(work, auth={"htpasswd": {"realm": "pyrun-test", "path": htpasswd}})
    yield reg
    stop_registry(reg)


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory):
    """A registry speaking HTTPS with a self-signed certificate for
    127.0.0.1; its PEM is ``reg.extra["ca_file"]``."""
    work = str(tmp_path_factory.mktemp("tls-registry"))
    key, cert = os.path.join(work, "key.pem"), os.path.join(work, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    reg = start_registry(work, tls={"certificate": cert, "key": key})
    reg.extra["ca_file"] = cert
    yield reg
    stop_registry(reg)


# --- token auth -------------------------------------------------------------------

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A token server (distribution's token spec) on 127.0.0.1: grants the
    requested actions to USER/PASSWORD, pull only to anonymous callers, and
    records each request's scopes and whether credentials came."""

    def __init__(self, key, cert_der):
        self.key, self.cert_der = key, cert_der
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                q = parse_qs(urlsplit(self.path).query)
                authz = self.headers.get("Authorization", "")
                good = authz == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if authz and not good:
                    self.send_response(401)
                    self.end_headers()
                    return
                server.requests.append({"scopes": q.get("scope", []), "user": USER if good else None,
                                        "service": q.get("service", [None])[0]})
                body = json.dumps({"access_token": server.token(q.get("scope", []), good),
                                   "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, scopes, authenticated):
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            actions = actions.split(",") if authenticated else [a for a in actions.split(",") if a == "pull"]
            access.append({"type": kind, "name": name, "actions": actions})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": TOKEN_ISSUER, "sub": USER if authenticated else "", "aud": TOKEN_SERVICE,
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
                  "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key],
                             input=signing_input.encode(), capture_output=True, check=True).stdout
        return f"{signing_input}.{b64url(sig)}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory):
    """A registry with ``auth: token:`` and our token server; the server is
    on ``reg.extra["tokens"]``."""
    work = str(tmp_path_factory.mktemp("token-registry"))
    key, cert = os.path.join(work, "key.pem"), os.path.join(work, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=pyrun-test-token"],
                   check=True, capture_output=True)
    der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"],
                         check=True, capture_output=True).stdout
    tokens = TokenServer(key, der)
    reg = start_registry(work, auth={"token": {"realm": tokens.realm, "service": TOKEN_SERVICE,
                                               "issuer": TOKEN_ISSUER, "rootcertbundle": cert}})
    reg.extra["tokens"] = tokens
    yield reg
    stop_registry(reg)
    tokens.stop()


@pytest.fixture(scope="session")
def redirect_registry(tmp_path_factory):
    """A registry whose blob GETs redirect (307) to a static file server on
    another port serving its storage directory; the server's request paths
    are in ``reg.extra["served"]``."""
    work = str(tmp_path_factory.mktemp("redirect-registry"))
    root = os.path.join(work, "storage")
    os.makedirs(root)
    served = []

    class Files(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            served.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Files, directory=root))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://localhost:{httpd.server_address[1]}/"
    reg = start_registry(work, middleware={"storage": [{"name": "redirect",
                                                         "options": {"baseurl": base}}]})
    reg.extra["served"] = served
    yield reg
    stop_registry(reg)
    httpd.shutdown()
    httpd.server_close()


class FlakyProxy:
    """A pull-only HTTP proxy on 127.0.0.1 in front of a registry that
    misbehaves on request: ``faults`` maps a path fragment to a list of
    faults, one used per matching request: an int status (answered
    instead of forwarding) or ``("cut", n)`` (send the real headers, then
    only ``n`` bytes of the body and close the connection).  ``seen`` lists
    (method, path, Range header)."""

    def __init__(self, target):
        self.faults, self.seen = {}, []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):
                self.forward()

            def do_GET(self):
                self.forward()

            def forward(self):
                proxy.seen.append((self.command, self.path, self.headers.get("Range")))
                fault = next((f.pop(0) for frag, f in proxy.faults.items()
                              if frag in self.path and f), None)
                if isinstance(fault, int):
                    self.send_response(fault)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                resp = requests.request(self.command, f"http://{target}{self.path}", headers=headers,
                                        stream=True, allow_redirects=False)
                body = resp.raw.read() if self.command == "GET" else b""
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", resp.headers.get("Content-Length", str(len(body))))
                if fault:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body[:fault[1]] if fault else body)
                if fault:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# --- OCI layouts and skopeo ---------------------------------------------------------

def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_layer(files):
    """A gzipped tar of ``{name: bytes}``; returns (compressed, diff_id)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1700000000, 0o644
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0), sha256(raw)


class OCILayout:
    """Builds an OCI image layout (image-layout.md) in ``path``."""

    LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
    CONFIG = "application/vnd.oci.image.config.v1+json"
    MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    INDEX = "application/vnd.oci.image.index.v1+json"

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion": "1.0.0"}')
        self.refs = []

    def blob(self, data, media_type):
        d = sha256(data)
        with open(os.path.join(self.path, "blobs", "sha256", d[7:]), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": d, "size": len(data)}

    def image(self, layers, arch="amd64", variant=None):
        """A manifest over gzipped tar ``layers`` (list of {name: bytes});
        returns its descriptor (with platform)."""
        descs, diff_ids = [], []
        for files in layers:
            gz, diff_id = tar_layer(files)
            descs.append(self.blob(gz, self.LAYER))
            diff_ids.append(diff_id)
        plat = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
        config = json.dumps({**plat, "created": "2024-01-01T00:00:00Z",
                             "config": {"Cmd": ["/bin/sh"]},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": self.MANIFEST,
                               "config": self.blob(config, self.CONFIG), "layers": descs}).encode()
        return {**self.blob(manifest, self.MANIFEST), "platform": plat}

    def index(self, manifests):
        body = json.dumps({"schemaVersion": 2, "mediaType": self.INDEX,
                           "manifests": manifests}).encode()
        return self.blob(body, self.INDEX)

    def tag(self, desc, name):
        entry = {k: v for k, v in desc.items() if k != "platform"}
        entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.refs.append(entry)
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": self.refs}, f)

    def read(self, digest):
        with open(os.path.join(self.path, "blobs", *digest.split(":")), "rb") as f:
            return f.read()


def skopeo(*args):
    """Run skopeo (TLS verification off: our registries speak plain HTTP)."""
    res = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {res.stderr}")
    return res.stdout
