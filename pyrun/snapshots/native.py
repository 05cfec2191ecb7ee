"""The native snapshotter (containerd's ``snapshots/native``): every
snapshot is a full copy of its parent's tree, made when it is prepared
(:func:`pyrun.snapshots.copy.copy_tree`: reflinks where the filesystem has
them, all metadata kept).  Works on any filesystem and needs no overlayfs;
prepare costs time and space in proportion to the parent's data, not to the
length of the chain.  Its mount is a bind mount of the snapshot's ``fs``,
read-only for views.  :meth:`usage` of an active snapshot is the whole
copy, as in containerd.
"""
import os

from pyrun.mount import Mount
from pyrun.snapshots import Kind
from pyrun.snapshots.copy import copy_tree
from pyrun.snapshots.local import LocalSnapshotter


class NativeSnapshotter(LocalSnapshotter):
    """Snapshots as full directory copies under ``root`` (layout in
    :mod:`pyrun.snapshots.local`)."""

    def _populate(self, tmp, kind, parent):
        fs = os.path.join(tmp, "fs")
        if parent:
            copy_tree(os.path.join(parent, "fs"), fs)
        else:
            os.mkdir(fs, 0o755)

    def _mounts(self, path, kind, parents):
        return [Mount("bind", os.path.join(path, "fs"),
                      options=("rbind", "ro" if kind is Kind.VIEW else "rw"))]
