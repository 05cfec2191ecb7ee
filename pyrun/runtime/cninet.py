"""A container's attachment to a CNI network (``pyrunctl run --net
cni:NAME``), kept on the container record under the extension
``pyrun.cni``: ``{"network": NAME, "conflist": {...}, "result": {...}}``.

The conflist is looked up by name when the container is created and kept
in the record, so the attachment is undone with the very configuration it
was made with (containerd's CRI keeps the sandbox's network config the same
way), even if the file changed or went since.  ``result`` (the CNI result:
interfaces, IPs, routes) is there while the task is attached: from between
the runtime's create and start until the task is deleted.
"""
import json
import os

from pyrun.errdefs import InvalidArgument, NotFound
from pyrun.network import cni
from pyrun.network.cni import cache, config
from pyrun.record import Frozen

EXTENSION = "pyrun.cni"
CONF_EXTENSIONS = (".conflist", ".conf", ".json")


class Settings(Frozen):
    """Where CNI things are: ``conf_dir`` (conflists), ``cni_path`` (plugin
    binaries, a sequence of directories), ``cache_dir`` (results kept for
    DEL) and ``host_netns`` (the namespace plugins run in: a path, or None
    for the caller's own)."""
    __slots__ = ("conf_dir", "cni_path", "cache_dir", "host_netns")
    _defaults = {"conf_dir": "/etc/cni/net.d", "cni_path": cni.DEFAULT_CNI_PATH,
                 "cache_dir": cni.DEFAULT_CACHE_DIR, "host_netns": None}


def find_conflist(conf_dir, name):
    """The conflist named ``name`` among ``conf_dir``'s ``*.conflist``,
    ``*.conf`` and ``*.json`` files (in that order, then by file name, as
    libcni's LoadConfList; files that do not parse are skipped).  Raises
    NotFound naming the directory."""
    try:
        entries = os.listdir(conf_dir)
    except FileNotFoundError:
        entries = []
    for ext in CONF_EXTENSIONS:
        for f in sorted(e for e in entries if e.endswith(ext)):
            try:
                conf = config.load(os.path.join(conf_dir, f))
            except (InvalidArgument, NotFound, OSError):
                continue
            if conf.name == name:
                return conf
    raise NotFound(f"CNI network {name!r}: no conflist with this name in {conf_dir}")


def new_extension(settings, name):
    """The ``pyrun.cni`` extension of a new container on network ``name``:
    its conflist, checked to have every plugin binary.  Raises NotFound
    (conflist or plugin missing)."""
    conf = find_conflist(settings.conf_dir, name)
    for p in conf.plugins:
        config.find_plugin(p["type"], settings.cni_path)
    return {"network": name, "conflist": json.loads(conf.raw)}


def attach(settings, c, pid):
    """CNI ADD of container ``c`` (a record with the extension) whose init
    is ``pid``, as eth0 in ``/proc/<pid>/ns/net``.  Raises as
    :func:`pyrun.network.cni.attach` (a failed ADD is undone)."""
    ext = c.extensions[EXTENSION]
    cni.attach(ext["conflist"], c.id, f"/proc/{pid}/ns/net", cni_path=settings.cni_path,
               cache_dir=settings.cache_dir, host_netns=settings.host_netns)


def cached_result(settings, c):
    """The attachment's CNI result as cached at ADD (a JSON dict), or None."""
    ext = c.extensions[EXTENSION]
    entry = cache.load(settings.cache_dir, ext["network"], c.id, "eth0")
    return entry["result"] if entry else None


def detach(settings, c, pid=None):
    """CNI DEL of container ``c``; works once its namespace is gone (``pid``
    None or dead) and when nothing is attached."""
    ext = c.extensions[EXTENSION]
    netns = f"/proc/{pid}/ns/net" if pid else ""
    cni.detach(ext["conflist"], c.id, netns, cni_path=settings.cni_path,
               cache_dir=settings.cache_dir, host_netns=settings.host_netns)
