"""Running one CNI plugin (spec 1.0.0, "Protocol parameters" and "Error").

The plugin gets its parameters in ``CNI_*`` environment variables (added to
the caller's environment, as libcni does: plugins run iptables and need
PATH), its configuration on stdin, and answers on stdout: a result, or an
error object ``{"code", "msg", "details"}`` with a non-zero exit status.
"""
import json
import os
import subprocess

from pyrun.errdefs import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from pyrun.network import netns as _netns

# Spec 1.0.0 well-known error codes, and the pyrun error kind for each.
ERROR_CODES = {
    1: ("Incompatible CNI version", InvalidArgument),
    2: ("Unsupported field in network configuration", InvalidArgument),
    3: ("Container unknown or does not exist", NotFound),
    4: ("Invalid necessary environment variables", InvalidArgument),
    5: ("I/O failure", FailedPrecondition),
    6: ("Failed to decode content", InvalidArgument),
    7: ("Invalid network config", InvalidArgument),
    11: ("Try again later", Unavailable),
}


def format_args(args):
    """``CNI_ARGS`` from a dict: ``K1=V1;K2=V2``.  InvalidArgument for a
    key or value that holds ``;`` or ``=`` (keys) and cannot be encoded."""
    parts = []
    for k, v in (args or {}).items():
        k, v = str(k), str(v)
        if not k or any(c in k for c in ";=") or ";" in v:
            raise InvalidArgument(f"invalid CNI_ARGS entry {k!r}={v!r}: no ';' (or '=' in the key)")
        parts.append(f"{k}={v}")
    return ";".join(parts)


def environment(command, container_id="", netns="", ifname="", args=None, cni_path=()):
    """The CNI_* variables for one call, as a dict."""
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
            "CNI_IFNAME": ifname, "CNI_ARGS": format_args(args), "CNI_PATH": ":".join(cni_path)}


def plugin_error(plugin, command, network, stdout, stderr, status):
    """The pyrun error for a failed call: the kind follows the spec error
    code (InvalidArgument, NotFound, Unavailable; FailedPrecondition for
    any other), the message names plugin, command and network and carries
    the plugin's ``msg`` and ``details``.  ``cni_code`` holds the code."""
    try:
        doc = json.loads(stdout)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "code" in doc:
        code = doc.get("code")
        text = doc.get("msg") or ""
        if doc.get("details"):
            text += f": {doc['details']}"
    else:
        code = None
        text = (stderr or stdout or b"").decode(errors="replace").strip() or f"exit status {status}"
    name, kind = ERROR_CODES.get(code, (None, FailedPrecondition))
    label = f" (code {code}: {name})" if name else (f" (code {code})" if code is not None else "")
    err = kind(f"CNI plugin {plugin} {command} on network {network}{label}: {text}")
    err.cni_code = code
    return err


def run(path, command, stdin, env, network="", host_netns=None):
    """Run the plugin binary ``path`` with ``stdin`` (dict) and the CNI_*
    ``env``; return its stdout parsed as JSON (None if empty).  The plugin
    runs in ``host_netns`` (path or fd) if given, else in the caller's
    namespace.  Raises the error :func:`plugin_error` builds, or
    InvalidArgument if a successful plugin printed something not JSON."""
    full = {**os.environ, **env}
    data = json.dumps(stdin).encode()
    plugin = os.path.basename(path)

    def call():
        # A thread inside host_netns forks the plugin: it is born there.
        return subprocess.run([path], input=data, env=full, capture_output=True, close_fds=True)

    proc = _netns.run_in(host_netns, call) if host_netns is not None else call()
    if proc.returncode != 0:
        raise plugin_error(plugin, command, network, proc.stdout, proc.stderr, proc.returncode)
    out = proc.stdout.strip()
    if not out:
        return None
    try:
        return json.loads(out)
    except ValueError:
        raise InvalidArgument(f"CNI plugin {plugin} {command} on network {network}: "
                              f"output is not JSON: {out[:200]!r}") from None
