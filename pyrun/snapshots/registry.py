"""The built-in snapshotters, by name (containerd's plugin registrations
of type ``io.containerd.snapshotter.v1``).  Adding a backend means adding
one :class:`Registration` to :data:`BUILTINS`."""
from dataclasses import dataclass
from typing import Callable

from pyrun.errdefs import NotFound
from pyrun.snapshots.native import NativeSnapshotter
from pyrun.snapshots.overlay import OverlaySnapshotter, check_overlay


@dataclass(frozen=True)
class Registration:
    """``id`` is the name users give; ``init(root)`` builds the snapshotter;
    ``requires`` says what the host needs and ``check()`` raises
    Unavailable when it is missing."""

    id: str
    init: Callable
    requires: str
    check: Callable = lambda: None
    type: str = "snapshotter"


BUILTINS = {r.id: r for r in (
    Registration("overlayfs", OverlaySnapshotter, "overlayfs in the kernel; root on a "
                 "filesystem that can be an overlay upper (ext4, xfs, btrfs, tmpfs)",
                 check_overlay),
    Registration("native", NativeSnapshotter, "nothing (copies trees; reflinks on btrfs/xfs)"),
)}


def new(name, root):
    """The snapshotter registered as ``name``, with its state under
    ``root``.  NotFound for an unknown name; Unavailable if the host lacks
    what it needs."""
    reg = BUILTINS.get(name)
    if reg is None:
        raise NotFound(f"no snapshotter named {name!r} (have: {', '.join(sorted(BUILTINS))})")
    reg.check()
    return reg.init(root)
