"""What the directory-based snapshotters share: a root with a metadata
database and one directory per snapshot, as containerd's overlayfs and
native snapshotters lay it out::

    <root>/metadata.db        sqlite3 (WAL), see pyrun.snapshots.storage
    <root>/lock               flock(2): shared by creators, exclusive by removers
    <root>/snapshots/<id>/fs  the snapshot's tree (overlay: its upper dir)
    <root>/snapshots/<id>/work  overlay's work dir (active overlay snapshots)

Crash consistency: a new snapshot's directory is built under a temporary
name (``new-*``), and renamed to ``<id>`` inside the write transaction that
inserts its row, just before the commit.  A crash therefore leaves either
no trace in the database or a complete row with its directory; a crash
between rename and commit, or after a remove's commit, leaves an orphan
directory that :meth:`LocalSnapshotter.cleanup` removes (containerd's
``Cleanup``).  Creators hold the lock file shared and :meth:`remove` /
:meth:`cleanup` hold it exclusive, so a cleanup never takes the temporary
directory of a prepare that is still running in another process.
"""
import fcntl
import os
import tempfile
from contextlib import contextmanager

from pyrun.errdefs import FailedPrecondition, InvalidArgument
from pyrun.fsutil import mounts_under, remove_tree
from pyrun.snapshots import Kind, Snapshotter, Usage
from pyrun.snapshots.filters import match_any, parse_all
from pyrun.snapshots.storage import MetaStore, check_labels


def disk_usage(path):
    """:class:`Usage` of the tree at ``path``: allocated bytes
    (st_blocks * 512) and inodes, each hard-linked inode counted once, as
    containerd's ``fs.DiskUsage``.  Does not cross mount points."""
    seen = set()
    size = 0
    dev = os.lstat(path).st_dev
    stack = [path]
    while stack:
        d = stack.pop()
        st = os.lstat(d)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            size += st.st_blocks * 512
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if e.is_dir(follow_symlinks=False):
                    if st.st_dev == dev:
                        stack.append(e.path)
                elif (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    size += st.st_blocks * 512
    return Usage(size, len(seen))


class LocalSnapshotter(Snapshotter):
    """Base of :class:`~pyrun.snapshots.overlay.OverlaySnapshotter` and
    :class:`~pyrun.snapshots.native.NativeSnapshotter`.  Subclasses fill a
    new snapshot's directory (:meth:`_populate`) and say how to mount it
    (:meth:`_mounts`)."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self._snapshots = os.path.join(self.root, "snapshots")
        os.makedirs(self._snapshots, mode=0o700, exist_ok=True)
        self._lockfile = os.path.join(self.root, "lock")
        self._db = MetaStore(os.path.join(self.root, "metadata.db"))

    # What a backend provides.

    def _populate(self, tmp, kind, parent):
        """Fill the new directory ``tmp`` for a snapshot of ``kind`` whose
        parent's snapshot dir is ``parent`` (None for no parent)."""
        raise NotImplementedError

    def _mounts(self, path, kind, parents):
        """Mounts for the snapshot dir ``path`` on the chain ``parents``
        (snapshot dirs, nearest first)."""
        raise NotImplementedError

    # The interface.

    def _dir(self, id):
        return f"{self._snapshots}/{id}"

    @contextmanager
    def _locked(self, how):
        fd = os.open(self._lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)

    def stat(self, key):
        with self._db.read() as c:
            return self._db.infos(c, key)[0]

    def update(self, info, fieldpaths=None):
        new = check_labels(info.labels)
        with self._db.write() as c:
            labels = self._db.infos(c, info.name)[0].labels
            for fp in fieldpaths or ["labels"]:
                if fp == "labels":
                    labels = dict(new)
                elif fp.startswith("labels."):
                    k = fp[len("labels."):]
                    if k in new:
                        labels[k] = new[k]
                    else:
                        labels.pop(k, None)
                else:
                    raise InvalidArgument(f"update of snapshot {info.name!r}: cannot update "
                                          f"field {fp!r}, only labels")
            self._db.set_labels(c, info.name, labels)
            return self._db.infos(c, info.name)[0]

    def usage(self, key):
        with self._db.read() as c:
            s = self._db.get(c, key)
            if s.kind is Kind.COMMITTED:
                return self._db.usage(c, key)
        return disk_usage(os.path.join(self._dir(s.id), "fs"))

    def mounts(self, key):
        with self._db.read() as c:
            s = self._db.get(c, key)
        if s.kind is Kind.COMMITTED:
            raise FailedPrecondition(f"snapshot {key!r} is committed: only active snapshots and "
                                     "views have mounts")
        return self._mounts(self._dir(s.id), s.kind, [self._dir(p) for p in s.parents])

    def prepare(self, key, parent="", labels=None):
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key, parent="", labels=None):
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(self, kind, key, parent, labels):
        labels = check_labels(labels)
        with self._locked(fcntl.LOCK_SH):
            # Check first, so that bad input fails before any copying; the
            # write transaction checks again.  The shared lock keeps the
            # parent from being removed meanwhile.
            with self._db.read() as c:
                first = self._db.check_create(c, key, parent, chain=False)
            tmp = tempfile.mkdtemp(prefix="new-", dir=self._snapshots)
            renamed = None
            try:
                self._populate(tmp, kind, self._dir(first[0]) if first else None)
                with self._db.write() as c:
                    s = self._db.create(c, kind, key, parent, labels)
                    path = self._dir(s.id)
                    if os.path.lexists(path):
                        # Only a crash between rename and commit leaves a
                        # dir with an id the database has not handed out.
                        remove_tree(path)
                    os.rename(tmp, path)
                    renamed = path
            except BaseException:
                remove_tree(renamed or tmp)
                raise
        return self._mounts(path, kind, [self._dir(p) for p in s.parents])

    def commit(self, name, key, labels=None):
        labels = check_labels(labels)
        with self._locked(fcntl.LOCK_SH):
            with self._db.read() as c:
                s = self._db.get(c, key)
                if s.kind is Kind.ACTIVE:
                    self._db.check_free(c, name)
            usage = disk_usage(os.path.join(self._dir(s.id), "fs")) if s.kind is Kind.ACTIVE else Usage()
            with self._db.write() as c:
                self._db.commit(c, key, name, usage, labels)

    def remove(self, key):
        with self._locked(fcntl.LOCK_EX):
            with self._db.read() as c:
                s = self._db.get(c, key)
            path = self._dir(s.id)
            held = mounts_under(path)
            if held:
                raise FailedPrecondition(f"cannot remove snapshot {key!r}: mounts below "
                                         f"{path}: {held}")
            with self._db.write() as c:
                self._db.remove(c, key)
            remove_tree(path)

    def walk(self, fn, filters=()):
        parsed = parse_all(filters)
        with self._db.read() as c:
            infos = self._db.infos(c)
        for info in infos:
            if match_any(parsed, lambda fp, i=info: _field(i, fp)):
                fn(info)

    def cleanup(self):
        removed = []
        with self._locked(fcntl.LOCK_EX):
            with self._db.read() as c:
                known = {str(i) for i in self._db.ids(c)}
            for name in sorted(os.listdir(self._snapshots)):
                if name not in known:
                    path = os.path.join(self._snapshots, name)
                    remove_tree(path)
                    removed.append(path)
        return removed

    def close(self):
        self._db.close()


def _field(info, fieldpath):
    """Filter adaptor for Info (containerd's snapshot fields)."""
    head, rest = fieldpath[0], fieldpath[1:]
    if head == "labels":
        return info.labels.get(".".join(rest)) if rest else None
    if rest:
        return None
    if head == "kind":
        return info.kind.value
    if head == "name":
        return info.name
    if head == "parent":
        return info.parent
    return None
