"""Snapshotters: copy-on-write filesystem trees for images and containers.

The interface is containerd's ``snapshots.Snapshotter``.  A snapshot is
*active* (writable, made by :meth:`Snapshotter.prepare`), a *view*
(read-only, :meth:`Snapshotter.view`) or *committed* (immutable, made from an
active one by :meth:`Snapshotter.commit`, and the only kind that can be a
parent).  Active snapshots and views are named by a *key*; committing gives
the snapshot a *name*; keys and names share one namespace.  Snapshotters
return :class:`pyrun.mount.Mount` lists and never mount anything.

Backends are listed in :mod:`pyrun.snapshots.registry`.
"""
import enum
from dataclasses import dataclass, field
from datetime import datetime


class Kind(str, enum.Enum):
    """The kind of a snapshot; the value is the word used in filters
    (``kind==committed``)."""

    VIEW = "view"
    ACTIVE = "active"
    COMMITTED = "committed"


@dataclass(frozen=True)
class Info:
    """What :meth:`Snapshotter.stat` returns.  ``parent`` is the name of the
    committed parent ("" for none); times are UTC ``datetime``."""

    kind: Kind
    name: str
    parent: str = ""
    labels: dict = field(default_factory=dict)
    created_at: datetime = None
    updated_at: datetime = None


@dataclass(frozen=True)
class Usage:
    """Disk use of one snapshot's own layer: ``size`` in bytes (allocated
    blocks, as du(1) counts them) and ``inodes`` (files, dirs, links…,
    each hard-linked inode once)."""

    size: int = 0
    inodes: int = 0


class Snapshotter:
    """containerd's ``snapshots.Snapshotter``.  Errors are the kinds in
    :mod:`pyrun.errdefs` and name the key."""

    def stat(self, key):
        """Info of ``key`` (a key or a committed name).  NotFound."""
        raise NotImplementedError

    def update(self, info, fieldpaths=None):
        """Change the labels of ``info.name`` and return the new Info.

        ``fieldpaths`` as containerd: empty or ``["labels"]`` replaces all
        labels with ``info.labels``; ``"labels.K"`` sets K from
        ``info.labels`` or removes it if absent there.  Any other field is
        InvalidArgument; NotFound for an unknown name."""
        raise NotImplementedError

    def usage(self, key):
        """:class:`Usage` of the snapshot's own layer (for a committed
        snapshot, measured at commit).  NotFound."""
        raise NotImplementedError

    def mounts(self, key):
        """The mounts of an active snapshot or a view (list of Mount).
        NotFound; FailedPrecondition for a committed snapshot."""
        raise NotImplementedError

    def prepare(self, key, parent="", labels=None):
        """Create an active (writable) snapshot ``key`` on top of the
        committed snapshot ``parent`` ("" for an empty tree) and return its
        mounts.  AlreadyExists if ``key`` is in use; NotFound for an unknown
        parent; FailedPrecondition if the parent is not committed."""
        raise NotImplementedError

    def view(self, key, parent="", labels=None):
        """Like :meth:`prepare`, but the snapshot and its mounts are
        read-only and it can never be committed."""
        raise NotImplementedError

    def commit(self, name, key, labels=None):
        """Turn the active snapshot ``key`` into the committed snapshot
        ``name`` with ``labels`` (the active snapshot's labels are not
        carried over, as in containerd).  The key is gone afterwards.
        NotFound; AlreadyExists if ``name`` is in use; FailedPrecondition if
        ``key`` is not active."""
        raise NotImplementedError

    def remove(self, key):
        """Remove a snapshot of any kind.  NotFound; FailedPrecondition if
        other snapshots have it as parent."""
        raise NotImplementedError

    def walk(self, fn, filters=()):
        """Call ``fn(info)`` for every snapshot that matches one of
        ``filters`` (containerd filter syntax, see
        :mod:`pyrun.snapshots.filters`; none means all), in name order."""
        raise NotImplementedError

    def cleanup(self):
        """Remove snapshot directories that the metadata does not know
        (left by a crash or an interrupted remove); returns their paths."""
        raise NotImplementedError

    def close(self):
        """Release the metadata database.  The snapshotter is unusable
        afterwards."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
