"""The result cache: what ADD returned, kept for CHECK and DEL.

One file per attachment, ``<cache_dir>/results/<network>-<container>-<ifname>``,
as libcni's ``cacheDir`` layout: the result, the conflist it came from and
the runtime arguments.  DEL hands the cached result to every plugin as
``prevResult`` (spec 1.0.0, "DEL: ... prevResult"), and the conflist lets a
runtime detach when all it remembers is the container.
"""
import base64
import json
import os

from pyrun.fsutil import atomic_write

DEFAULT_CACHE_DIR = "/var/lib/pyrun/cni"
KIND = "pyrunCNICacheV1"


def _path(cache_dir, network, container_id, ifname):
    return os.path.join(cache_dir, "results", f"{network}-{container_id}-{ifname}")


def save(cache_dir, conflist, container_id, ifname, args, capability_args, result):
    """Store ``result`` (dict) for the attachment, atomically (mode 0600)."""
    d = os.path.join(cache_dir, "results")
    os.makedirs(d, 0o700, exist_ok=True)
    doc = {"kind": KIND, "containerId": container_id, "ifName": ifname,
           "networkName": conflist.name, "config": base64.b64encode(conflist.raw).decode(),
           "cniArgs": args, "capabilityArgs": capability_args, "result": result}
    atomic_write(_path(cache_dir, conflist.name, container_id, ifname), json.dumps(doc).encode())


def load(cache_dir, network, container_id, ifname):
    """The cached entry as a dict (``result``, ``config`` as bytes, ...),
    or None if there is none or it is unreadable."""
    try:
        with open(_path(cache_dir, network, container_id, ifname), "rb") as f:
            doc = json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        return None
    doc["config"] = base64.b64decode(doc.get("config") or "")
    return doc


def remove(cache_dir, network, container_id, ifname):
    """Forget the attachment; a missing entry is not an error."""
    try:
        os.unlink(_path(cache_dir, network, container_id, ifname))
    except FileNotFoundError:
        pass
