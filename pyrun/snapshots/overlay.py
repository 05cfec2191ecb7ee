"""The overlayfs snapshotter (containerd's ``snapshots/overlay``).

Each snapshot's ``fs`` dir is its own layer: the upper dir while it is
active, a lower dir once committed.  Mounts (never performed here):

- active, no parent: rw bind of its ``fs``;
- view, no parent: ro bind of its (empty) ``fs``;
- view of one committed parent: ro bind of the parent's ``fs``;
- view of a longer chain: overlay with only ``lowerdir`` (read-only);
- active with parents: overlay with ``upperdir``, ``workdir`` and
  ``lowerdir`` = the chain, nearest parent first (overlayfs gives the
  leftmost lower dir precedence; Documentation/filesystems/overlayfs.rst).

Whiteouts and opaque dirs in a layer are overlayfs's own: a char device
0/0 hides the name below, ``trusted.overlay.opaque=y`` hides a dir's lower
contents.  The mount and prepare cost does not grow with the chain: no
data is copied, and option strings longer than a page are handled by
:func:`pyrun.mount.mount_overlay`.
"""
import os

from pyrun.errdefs import InvalidArgument, Unavailable
from pyrun.mount import Mount
from pyrun.snapshots import Kind
from pyrun.snapshots.local import LocalSnapshotter


def check_overlay():
    """Raise Unavailable unless the kernel has overlayfs."""
    with open("/proc/filesystems") as f:
        if not any(line.split()[-1] == "overlay" for line in f if line.strip()):
            raise Unavailable("overlayfs snapshotter: the kernel has no overlay filesystem "
                              "(modprobe overlay)")


def _index_option():
    # With index=on (a module default some distributions pick), reusing a
    # lower dir under another upper fails; containerd turns it off when the
    # kernel knows the option.
    return ("index=off",) if os.path.exists("/sys/module/overlay/parameters/index") else ()


def _lower(path):
    if ":" in path or "\\" in path:
        return path.replace("\\", "\\\\").replace(":", "\\:")
    return path


class OverlaySnapshotter(LocalSnapshotter):
    """Snapshots as overlayfs layers under ``root`` (see
    :mod:`pyrun.snapshots.local` for the layout).  InvalidArgument if
    ``root`` holds a comma, which overlay's option syntax cannot carry."""

    def __init__(self, root):
        if "," in root:
            raise InvalidArgument(f"overlayfs snapshotter root {root!r} must not contain ','")
        super().__init__(root)

    def _populate(self, tmp, kind, parent):
        fs = os.path.join(tmp, "fs")
        os.mkdir(fs, 0o755)
        if parent:
            # The mount's root dir takes its owner and mode from the upper.
            st = os.stat(os.path.join(parent, "fs"))
            os.chown(fs, st.st_uid, st.st_gid)
            os.chmod(fs, st.st_mode & 0o7777)
        if kind is Kind.ACTIVE:
            os.mkdir(os.path.join(tmp, "work"), 0o700)

    def _mounts(self, path, kind, parents):
        ro = kind is Kind.VIEW
        if not parents:
            return [Mount("bind", os.path.join(path, "fs"), options=("rbind", "ro" if ro else "rw"))]
        if ro and len(parents) == 1:
            return [Mount("bind", os.path.join(parents[0], "fs"), options=("rbind", "ro"))]
        lowers = "lowerdir=" + ":".join([_lower(f"{p}/fs") for p in parents])
        if ro:
            return [Mount("overlay", "overlay", options=(lowers,))]
        return [Mount("overlay", "overlay", options=_index_option() + (
            f"workdir={os.path.join(path, 'work')}",
            f"upperdir={os.path.join(path, 'fs')}",
            lowers))]
