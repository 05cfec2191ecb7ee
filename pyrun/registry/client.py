"""The OCI distribution API over a transport: auth, retries, endpoints.

:class:`Client` holds what is shared between repositories (transport, host
options, credentials, the token cache); :class:`Repository` speaks the
distribution spec's endpoints for one ``host/path``.  Sources: the OCI
distribution spec (pull, push, ``mount``/``from``, chunked uploads, error
codes), distribution's token spec, and RFC 9110 for Retry-After.
"""
import email.utils
import json
import threading
import time
from urllib.parse import urlencode, urljoin

from pyrun.errdefs import FailedPrecondition, InvalidArgument, NotFound, PyrunError, Unavailable
from pyrun.registry import auth
from pyrun.content.digest import digest_bytes
from pyrun.registry.manifest import ACCEPT, Descriptor, verify_digest
from pyrun.registry.transport import Hosts, RequestsTransport, TransportError

RETRIES = 5
BACKOFF = 0.5      # seconds, doubled per attempt
BACKOFF_MAX = 8.0  # seconds
RETRY_AFTER_MAX = 30.0  # seconds; a longer Retry-After is reported, not waited for
CLIENT_ID = "pyrun"  # OAuth2 client_id sent with refresh-token grants


# --- pure helpers ---------------------------------------------------------------

def parse_retry_after(value, now=None):
    """Retry-After (RFC 9110 10.2.3): delay seconds or an HTTP-date.
    Returns seconds (float, >= 0) or None if absent or unparseable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def describe_error(status, body):
    """A one-line reason from a registry error answer: the spec's
    ``{"errors": [{"code", "message", "detail"}]}`` when present, else the
    start of the body."""
    try:
        errs = json.loads(body).get("errors") or []
        parts = [f"{e.get('code', '?')}: {e.get('message', '')}".rstrip(": ") for e in errs]
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError, UnicodeDecodeError):
        pass
    text = (body or b"")[:200].decode(errors="replace").strip()
    return text or {401: "unauthorized", 403: "forbidden", 404: "not found",
                    429: "too many requests"}.get(status, f"HTTP {status}")


def error_for(status, registry, what, body=b"", retry_after=None):
    """The errdefs error for an HTTP error status, naming the registry and
    the operation: 404 NotFound; 401/403 FailedPrecondition (refused);
    429 and 5xx Unavailable (with ``retry_after`` seconds when sent);
    other 4xx InvalidArgument.  The status is kept on ``.status``."""
    reason = describe_error(status, body)
    msg = f"{registry} refused {what}: HTTP {status}: {reason}"
    if status == 429 and retry_after is not None:
        msg += f" (retry after {retry_after:.0f}s)"
    kind = (NotFound if status == 404 else FailedPrecondition if status in (401, 403)
            else Unavailable if status == 429 or status >= 500 else InvalidArgument)
    err = kind(msg)
    err.status, err.registry, err.retry_after = status, registry, retry_after
    return err


def with_query(url, params):
    """Append query parameters to a URL that may already have some (an
    upload Location carries its own ``_state``)."""
    return url + ("&" if "?" in url else "?") + urlencode(params)


# --- the client -----------------------------------------------------------------

class Client:
    """Shared state for talking to registries.

    ``hosts``: :class:`~pyrun.registry.transport.Hosts` (plain HTTP, CA file,
    insecure TLS per host).  ``credentials``: a ``user:password`` string, a
    :class:`~pyrun.registry.auth.Credentials`, or a callable ``host ->
    Credentials | None``; default: Docker's config.json and credential
    helpers.  ``transport``: anything with ``request()`` like
    :class:`~pyrun.registry.transport.RequestsTransport`.  ``sleep`` is
    injectable for tests of the backoff.
    """

    def __init__(self, hosts=None, credentials=None, transport=None, retries=RETRIES,
                 backoff=BACKOFF, sleep=time.sleep):
        self.hosts = hosts or Hosts()
        self.transport = transport or RequestsTransport(self.hosts)
        if credentials is None:
            self._credentials = auth.docker_credentials
        elif isinstance(credentials, str):
            creds = auth.parse_user_password(credentials)
            self._credentials = lambda host: creds
        elif isinstance(credentials, auth.Credentials):
            self._credentials = lambda host: credentials
        else:
            self._credentials = credentials
        self.retries, self.backoff, self.sleep = retries, backoff, sleep
        self._lock = threading.Lock()
        self._challenges = {}   # host -> Challenge
        self._tokens = {}       # (host, scope) -> Token
        self._creds = {}        # host -> Credentials | None

    def repository(self, ref, push=False):
        """A :class:`Repository` for a parsed reference's repository;
        ``push`` asks for pull and push access."""
        return Repository(self, ref.domain, ref.path, push)

    def backoff_delay(self, attempt):
        return min(BACKOFF_MAX, self.backoff * (2 ** attempt))

    # --- auth

    def credentials(self, host):
        with self._lock:
            if host not in self._creds:
                self._creds[host] = self._credentials(host)
            return self._creds[host]

    def _authorization(self, host, scopes):
        """The Authorization header value for ``host`` and ``scopes``, from
        what earlier challenges taught us, or None."""
        with self._lock:
            challenge = self._challenges.get(host)
            token = self._tokens.get((host, scopes))
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials(host)
            return auth.basic_auth_header(creds.username, creds.secret) if creds else None
        if challenge.scheme == "bearer":
            if token is None or token.expires_at <= time.monotonic():
                token = self._fetch_token(host, challenge, scopes)
            return f"Bearer {token.token}"
        return None

    def _fetch_token(self, host, challenge, scopes):
        """Get a bearer token: GET the realm with service and scopes (basic
        credentials when we have a user), or, for an identity token (no
        user), the OAuth2 refresh-token POST of distribution's
        oauth.md."""
        realm = challenge.params.get("realm")
        if not realm:
            raise InvalidArgument(f"{host}: bearer challenge without a realm")
        service = challenge.params.get("service")
        creds = self.credentials(host)
        if creds and not creds.username and creds.secret:
            form = {"grant_type": "refresh_token", "refresh_token": creds.secret,
                    "client_id": CLIENT_ID, "scope": " ".join(scopes)}
            if service:
                form["service"] = service
            resp = self.transport.request(
                "POST", realm, host=host, data=urlencode(form).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"})
        else:
            params = ([("service", service)] if service else []) + [("scope", s) for s in scopes]
            headers = {}
            if creds:
                headers["Authorization"] = auth.basic_auth_header(creds.username, creds.secret)
            resp = self.transport.request("GET", with_query(realm, params), host=host, headers=headers)
        try:
            if resp.status_code != 200:
                raise error_for(resp.status_code, f"token server {realm} (for {host})",
                                f"a token for {' '.join(scopes)}", resp.content)
            token = auth.parse_token_response(resp.content)
        finally:
            resp.close()
        with self._lock:
            self._tokens[(host, scopes)] = token
        return token

    def _learn_challenge(self, host, resp, scopes):
        """Remember a 401's challenge and drop the stale token.  Returns True
        if retrying with credentials or a new token may help."""
        challenges = auth.parse_challenges(resp.headers.get("WWW-Authenticate", ""))
        usable = [c for c in challenges if c.scheme in ("bearer", "basic")]
        if not usable:
            return False
        chosen = next((c for c in usable if c.scheme == "bearer"), usable[0])
        with self._lock:
            self._challenges[host] = chosen
            self._tokens.pop((host, scopes), None)
        # A bearer challenge may be met anonymously; basic needs credentials.
        return chosen.scheme == "bearer" or self.credentials(host) is not None

    # --- requests

    def request(self, method, host, url, scopes, what, *, headers=None, data=None, stream=False,
                ok=(200,), retry=True):
        """Send a request with auth and retries; return the response when its
        status is in ``ok``, else raise :func:`error_for`'s error.

        A 401 is answered once by (re)authenticating.  5xx, 429 and dropped
        connections are retried ``retries`` times with exponential backoff
        (429 waits Retry-After when sent) if ``retry``.  ``data`` is bytes
        or a file-like with ``seek`` (rewound before each attempt).
        ``scopes`` is a tuple of token scopes.
        """
        attempt, reauthed = 0, False
        while True:
            if hasattr(data, "seek"):
                data.seek(0)  # a body stream is sent again after a 401
            hdrs = dict(headers or {})
            authz = self._authorization(host, scopes)
            if authz:
                hdrs["Authorization"] = authz
            try:
                resp = self.transport.request(method, url, host=host, headers=hdrs, data=data,
                                              stream=stream)
            except TransportError:
                if not retry or attempt >= self.retries:
                    raise
                self.sleep(self.backoff_delay(attempt))
                attempt += 1
                continue
            status = resp.status_code
            if status in ok:
                return resp
            body = b"" if method == "HEAD" else resp.content
            resp.close()
            if status == 401 and not reauthed and self._learn_challenge(host, resp, scopes):
                reauthed = True
                continue
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if retry and (status >= 500 or status == 429) and attempt < self.retries:
                delay = retry_after if status == 429 and retry_after is not None \
                    else self.backoff_delay(attempt)
                if delay <= RETRY_AFTER_MAX:
                    self.sleep(delay)
                    attempt += 1
                    continue
            raise error_for(status, host, what, body, retry_after)


class Repository:
    """The distribution endpoints of one repository (``host/path``)."""

    def __init__(self, client, host, path, push=False):
        self.client, self.host, self.path = client, host, path
        self.base = f"{client.hosts.base_url(host)}/v2/{path}"
        self.scopes = (auth.repository_scope(path, ("pull", "push") if push else ("pull",)),)

    def __str__(self):
        return f"{self.host}/{self.path}"

    def _request(self, method, url, what, **kw):
        return self.client.request(method, self.host, url, self.scopes, what, **kw)

    # --- pull side

    def get_manifest(self, obj, expected=None):
        """GET a manifest or index by tag or digest.

        Returns ``(Descriptor, bytes)``.  The digest is checked against
        ``expected`` (a descriptor's digest), ``obj`` when it is a digest,
        else against the Docker-Content-Digest header; without any, it is
        computed.  Raises NotFound, InvalidArgument (digest mismatch), or
        the errors of :meth:`Client.request`.
        """
        what = f"manifest {self}:{obj}" if ":" not in obj else f"manifest {self}@{obj}"
        resp = self._request("GET", f"{self.base}/manifests/{obj}", what,
                             headers={"Accept": ACCEPT})
        data = resp.content
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        header_digest = resp.headers.get("Docker-Content-Digest")
        resp.close()
        want = expected or (obj if ":" in obj else header_digest)
        if want:
            verify_digest(data, want, what)
        digest = want or digest_bytes(data)
        return Descriptor(media_type, digest, len(data)), data

    def open_blob(self, digest, offset=0):
        """GET a blob, from byte ``offset`` (a Range request) when > 0.
        Returns a streaming response whose ``status_code`` is 206 when the
        registry honoured the range, 200 when it sends the whole blob."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        return self._request("GET", f"{self.base}/blobs/{digest}", f"blob {self}@{digest}",
                             headers=headers, stream=True, ok=(200, 206))

    def blob_exists(self, digest):
        """HEAD a blob: True if the repository has it."""
        try:
            self._request("HEAD", f"{self.base}/blobs/{digest}", f"blob {self}@{digest}").close()
        except NotFound:
            return False
        return True

    # --- push side

    def start_upload(self, mount=None, mount_from=None):
        """POST an upload session.  With ``mount``/``mount_from`` (a digest
        and a repository path on the same registry) ask for a cross-repository
        mount.  Returns ``(mounted, location)``: mounted is True when the
        registry answered 201, else location is the absolute upload URL."""
        url = f"{self.base}/blobs/uploads/"
        scopes = self.scopes
        if mount:
            url = with_query(url, {"mount": mount, "from": mount_from})
            scopes = self.scopes + (auth.repository_scope(mount_from),)
        resp = self.client.request("POST", self.host, url, scopes, f"blob upload to {self}",
                                   ok=(201, 202), headers={"Content-Length": "0"}, data=b"")
        resp.close()
        location = resp.headers.get("Location")
        if resp.status_code == 202 and not location:
            raise InvalidArgument(f"{self.host}: upload answer without a Location")
        return resp.status_code == 201, urljoin(resp.url, location) if location else None

    def upload_chunk(self, location, data, offset):
        """PATCH ``data`` (bytes) at ``offset`` into an upload; returns the
        next absolute Location."""
        resp = self._request("PATCH", location, f"blob upload to {self}", ok=(202,), retry=False,
                             headers={"Content-Type": "application/octet-stream",
                                      "Content-Range": f"{offset}-{offset + len(data) - 1}",
                                      "Content-Length": str(len(data))}, data=data)
        resp.close()
        return urljoin(resp.url, resp.headers.get("Location") or location)

    def finish_upload(self, location, digest, data=b"", length=0):
        """PUT the end of an upload with ``?digest=``: ``data`` is the last
        (or only, for a monolithic upload) piece — bytes or a file-like of
        ``length`` bytes."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        self._request("PUT", with_query(location, {"digest": digest}), f"blob {self}@{digest}",
                      ok=(201,), retry=False, headers=headers, data=data).close()

    def cancel_upload(self, location):
        """DELETE an upload session, best effort (the registry would expire
        it anyway); errors are ignored because the caller is already
        failing."""
        try:
            self._request("DELETE", location, f"cancel of upload to {self}", ok=(204,),
                          retry=False).close()
        except (PyrunError, OSError):
            pass

    def put_manifest(self, obj, data, media_type):
        """PUT a manifest or index (bytes) by tag or digest."""
        self._request("PUT", f"{self.base}/manifests/{obj}", f"manifest {self}:{obj}",
                      ok=(201,), headers={"Content-Type": media_type}, data=data).close()
