"""Registry authentication: challenges, tokens, credentials.

The parsing here is pure (strings and bytes in, values out); the only I/O is
reading Docker's config file and running credential helpers, both behind
functions that tests can point at a temp dir or a fake runner.  The token
fetch itself lives with the HTTP client (:mod:`pyrun.registry.client`).

Sources: RFC 7235 section 4.1 (WWW-Authenticate), the distribution
"Token Authentication Specification" (docs/spec/auth/token.md: realm,
service, scope, ``token``/``access_token``, ``expires_in``, ``issued_at``),
Docker's config.json ``auths``/``credsStore``/``credHelpers`` and the
docker-credential-helpers protocol (``get`` with the server URL on stdin,
``{"Username", "Secret"}`` on stdout).
"""
import base64
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass

from pyrun.errdefs import InvalidArgument, Unavailable

DEFAULT_TOKEN_LIFETIME = 60  # seconds; token.md: "defaults to 60 seconds"


@dataclass(frozen=True)
class Challenge:
    """One authentication challenge: scheme (lower case) and its params
    (names lower case)."""
    scheme: str
    params: dict


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CHALLENGE_RE = re.compile(
    rf'\s*(?P<key>{_TOKEN})\s*(?:=\s*(?:"(?P<q>(?:[^"\\]|\\.)*)"|(?P<t>{_TOKEN}=*)))?\s*(?:,|$)?')


def parse_challenges(header):
    """Parse a WWW-Authenticate value (several headers may be joined with
    ``,``) into a list of :class:`Challenge`.  Unparseable trailing text
    ends the parse; what was parsed so far is returned."""
    out, pos = [], 0
    header = header or ""
    while pos < len(header):
        m = re.compile(rf"\s*,?\s*(?P<scheme>{_TOKEN})(?:\s+|$)").match(header, pos)
        if not m or m.end() == pos:
            break
        scheme, pos = m.group("scheme").lower(), m.end()
        params = {}
        while pos < len(header):
            p = _CHALLENGE_RE.match(header, pos)
            if not p or p.end() == pos or (p.group("q") is None and p.group("t") is None):
                break  # the next token is a new scheme
            val = p.group("q")
            val = re.sub(r"\\(.)", r"\1", val) if val is not None else p.group("t")
            params[p.group("key").lower()] = val
            pos = p.end()
        out.append(Challenge(scheme, params))
    return out


def repository_scope(path, actions=("pull",)):
    """``repository:<path>:<actions>`` (token.md "Requesting a Token")."""
    return f"repository:{path}:{','.join(actions)}"


@dataclass(frozen=True)
class Token:
    """A bearer token and the monotonic time (seconds) it stops being used."""
    token: str
    expires_at: float


def parse_token_response(body, now=None):
    """Parse a token server's JSON answer (bytes).  ``token`` or
    ``access_token`` (token.md allows either); ``expires_in`` seconds,
    default 60.  A token is refreshed a little before it expires.  Raises
    InvalidArgument if there is no token."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"token response is not JSON: {e}") from None
    tok = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(tok, str) or not tok:
        raise InvalidArgument("token response has no token or access_token")
    lifetime = doc.get("expires_in")
    if not isinstance(lifetime, int) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    now = time.monotonic() if now is None else now
    return Token(tok, now + lifetime * 0.9)


def basic_auth_header(username, secret):
    raw = f"{username}:{secret}".encode()
    return "Basic " + base64.b64encode(raw).decode()


# --- credentials ---------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """A username and secret.  An empty username with a secret is an
    identity (refresh) token, exchanged by an OAuth2 POST for bearer
    tokens."""
    username: str
    secret: str


def parse_user_password(s):
    """``"user:password"`` -> Credentials.  Raises InvalidArgument without a
    colon."""
    user, sep, password = (s or "").partition(":")
    if not sep or not user:
        raise InvalidArgument("credentials must be given as user:password")
    return Credentials(user, password)


def docker_config_dir():
    """``$DOCKER_CONFIG`` or ``~/.docker``."""
    return os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")


def _server_keys(host):
    # Docker stores Docker Hub under its legacy index URL; others under the
    # bare host or a URL of it.
    if host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        return ["https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"]
    return [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]


def credentials_from_config(config, host, run=subprocess.run):
    """Credentials for ``host`` (e.g. ``"localhost:5000"``) from a parsed
    config.json dict, or None.  ``credHelpers[host]`` wins over
    ``credsStore``, which wins over ``auths`` (Docker's order).  ``run`` runs
    a helper (a ``subprocess.run`` look-alike).  Raises InvalidArgument for
    a malformed ``auth`` field, Unavailable if a helper fails."""
    keys = _server_keys(host)
    helpers = config.get("credHelpers") or {}
    for key in keys:
        if key in helpers:
            return helper_get(helpers[key], key, run)
    if config.get("credsStore"):
        creds = helper_get(config["credsStore"], keys[0], run)
        if creds is not None:
            return creds
    auths = config.get("auths") or {}
    for key in keys:
        entry = auths.get(key)
        if not entry:
            continue
        if entry.get("auth"):
            try:
                user, sep, pw = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise InvalidArgument(f"docker config: auths[{key!r}].auth is not base64 of user:password")
            return Credentials(user, pw)
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""))
        if entry.get("identitytoken"):
            return Credentials("", entry["identitytoken"])
    return None


def helper_get(helper, server_url, run=subprocess.run):
    """Run ``docker-credential-<helper> get`` with ``server_url`` on stdin.
    Returns Credentials, or None when the helper has none for that server
    ("credentials not found in native keychain").  Raises Unavailable when
    the helper is missing or fails otherwise."""
    prog = f"docker-credential-{helper}"
    try:
        res = run([prog, "get"], input=server_url.encode(), capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"credential helper {prog}: {e}") from None
    out = (res.stdout or b"").decode(errors="replace").strip()
    if res.returncode != 0:
        if "credentials not found" in out.lower():
            return None
        err = (res.stderr or b"").decode(errors="replace").strip()
        raise Unavailable(f"credential helper {prog} get {server_url}: exit {res.returncode}: {out or err}")
    try:
        doc = json.loads(out)
        user, secret = doc["Username"], doc["Secret"]
    except (ValueError, KeyError, TypeError):
        raise Unavailable(f"credential helper {prog}: output is not {{Username, Secret}} JSON") from None
    if user == "<token>":  # helpers mark an identity token this way
        user = ""
    return Credentials(user, secret)


def docker_credentials(host, config_dir=None, run=subprocess.run):
    """Credentials for ``host`` from ``<config_dir>/config.json`` (default
    :func:`docker_config_dir`), or None when the file or entry is missing."""
    path = os.path.join(config_dir or docker_config_dir(), "config.json")
    try:
        with open(path, "rb") as f:
            config = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise InvalidArgument(f"{path}: not valid JSON: {e}") from None
    return credentials_from_config(config, host, run)

