"""The one mount type shared by snapshotters, unpack and the runtime.

Snapshotters return a list of :class:`Mount` and never perform them; whoever
needs the filesystem calls :func:`mount_all` (containerd's ``mount.Mount`` and
``mount.All``).
"""
from pyrun import linux
from pyrun.record import Frozen

# Options that map to mount(2) flags: name -> (clear?, flag).
_FLAG_OPTIONS = {
    "ro": (False, linux.MS_RDONLY),
    "rw": (True, linux.MS_RDONLY),
    "nosuid": (False, linux.MS_NOSUID),
    "suid": (True, linux.MS_NOSUID),
    "nodev": (False, linux.MS_NODEV),
    "dev": (True, linux.MS_NODEV),
    "noexec": (False, linux.MS_NOEXEC),
    "exec": (True, linux.MS_NOEXEC),
    "sync": (False, linux.MS_SYNCHRONOUS),
    "async": (True, linux.MS_SYNCHRONOUS),
    "dirsync": (False, linux.MS_DIRSYNC),
    "remount": (False, linux.MS_REMOUNT),
    "mand": (False, linux.MS_MANDLOCK),
    "nomand": (True, linux.MS_MANDLOCK),
    "atime": (True, linux.MS_NOATIME),
    "noatime": (False, linux.MS_NOATIME),
    "diratime": (True, linux.MS_NODIRATIME),
    "nodiratime": (False, linux.MS_NODIRATIME),
    "bind": (False, linux.MS_BIND),
    "rbind": (False, linux.MS_BIND | linux.MS_REC),
    "relatime": (False, linux.MS_RELATIME),
    "norelatime": (True, linux.MS_RELATIME),
    "strictatime": (False, linux.MS_STRICTATIME),
    "nostrictatime": (True, linux.MS_STRICTATIME),
    "nosymfollow": (False, linux.MS_NOSYMFOLLOW),
}


def parse_options(options):
    """Split mount options into (MS_* flags, comma-joined fs data).

    Unknown options are passed to the filesystem as data, as mount(8) and
    containerd's ``parseMountOptions`` do.
    """
    flags = 0
    data = []
    for opt in options:
        known = _FLAG_OPTIONS.get(opt)
        if known is None:
            data.append(opt)
            continue
        clear, flag = known
        if clear:
            flags &= ~flag
        else:
            flags |= flag
    return flags, ",".join(data)


class Mount(Frozen):
    """One filesystem mount: ``mount -t TYPE -o OPTIONS SOURCE TARGET``.

    ``target`` is relative to the directory given to :func:`mount_all`
    (empty means that directory itself).  ``options`` are mount(8) option
    strings (``ro``, ``rbind``, ``lowerdir=…``).
    """

    __slots__ = ("type", "source", "target", "options")
    _defaults = {"target": "", "options": ()}
