"""A tenant's view of one snapshotter backend (containerd
``metadata/snapshot.go``).

Same interface as the backend (``pyrun.snapshots``).  The tenant's keys
are mapped to backend keys ``<namespace>/<random>/<key>`` (see
:mod:`pyrun.metadata.schema`), so tenants never see or touch each other's
snapshots.  Names, parents and labels live in the database; kind, mounts
and usage come from the backend.

Crash consistency.  prepare and view run the backend call inside the
transaction that records the row: if the process dies in between, the
database rolls back and the backend keeps an orphan, which GC removes.
remove deletes the row first, then the backend snapshot (same outcome).
commit cannot work that way, since a backend commit that happened under a
rolled-back transaction would leave the row pointing at a key that is
gone.  So commit first records its intent durably in the row's
``pending`` column, then does the backend commit and the row changes in
one transaction; :func:`recover` (run when a DB opens, and by GC) looks at
the backend to finish or forget a commit whose process died.  Commits and
recovery hold :func:`pyrun.metadata.db.metadata_lock`, so recovery never
races a live commit.
"""
import json
import secrets
from dataclasses import replace

from pyrun import labels as labelsmod
from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyrun.filters import labels_field, parse as parse_filters
from pyrun.metadata.db import metadata_lock, now_ns, to_time, validate_namespace
from pyrun.metadata.leases import hold

# Labels with this prefix are also passed to the backend (containerd does
# the same), e.g. containerd.io/snapshot/... hints.
BACKEND_LABEL_PREFIX = "containerd.io/snapshot/"


def recover(db):
    """Finish or forget snapshot commits whose process died (see the module
    docstring); the caller holds the metadata lock.  Rows of snapshotters
    not configured in ``db`` are left."""
    if not db.query("SELECT 1 FROM snapshots WHERE pending != '' LIMIT 1"):
        return
    with db.transaction() as c:
        for row in c.execute("SELECT * FROM snapshots WHERE pending != ''").fetchall():
            backend = db.snapshotters.get(row["snapshotter"])
            if backend is None:
                continue
            intent = json.loads(row["pending"])
            try:
                backend.stat(intent["backend_key"])
            except NotFound:  # the backend commit never happened
                c.execute("UPDATE snapshots SET pending='' WHERE id=?", (row["id"],))
                continue
            _commit_rows(c, row, intent)


def _commit_rows(c, row, intent):
    """Replace the active snapshot's row by its committed one."""
    now = now_ns()
    c.execute("DELETE FROM snapshots WHERE id=?", (row["id"],))
    c.execute("INSERT INTO snapshots (namespace, snapshotter, key, parent, backend_key, labels, "
              "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
              (row["namespace"], row["snapshotter"], intent["name"], row["parent"],
               intent["backend_key"], json.dumps(intent["labels"]), now, now))


def _backend_labels(labels):
    return {k: v for k, v in labels.items() if k.startswith(BACKEND_LABEL_PREFIX)}


def _snapshot_field(info, path):
    if path[0] == "labels":
        return labels_field(info.labels, path)
    if path == ["kind"]:
        return getattr(info.kind, "name", str(info.kind)).lower()
    if len(path) == 1 and path[0] in ("name", "parent"):
        return getattr(info, path[0]) or None
    return None


class NamespacedSnapshotter:
    """Snapshots of ``namespace`` in the backend registered as ``name``.
    With ``lease``, created snapshots are added to that lease."""

    def __init__(self, db, namespace, name, lease=None):
        self.db = db
        self.namespace = validate_namespace(namespace)
        self.name = name
        self.backend = db.backend_snapshotter(name)
        self.lease = lease

    def _row(self, key):
        rows = self.db.query("SELECT * FROM snapshots WHERE namespace=? AND snapshotter=? AND key=?",
                             (self.namespace, self.name, key))
        if not rows:
            raise NotFound(f"snapshot {key!r}: not found in namespace {self.namespace} "
                           f"({self.name})")
        return rows[0]

    def _info(self, row):
        info = self.backend.stat(row["backend_key"])
        return replace(info, name=row["key"], parent=row["parent"], labels=json.loads(row["labels"]),
                       created_at=to_time(row["created_at"]), updated_at=to_time(row["updated_at"]))

    def stat(self, key):
        """Info of snapshot ``key``; NotFound."""
        return self._info(self._row(key))

    def update(self, info, fieldpaths=None):
        """Update the labels of ``info.name`` (only labels can change)."""
        with self.db.transaction() as c:
            row = self._row(info.name)
            what = f"snapshot {info.name!r}"
            labels = labelsmod.apply_update(json.loads(row["labels"]), info.labels, fieldpaths, what)
            c.execute("UPDATE snapshots SET labels=?, updated_at=? WHERE id=?",
                      (json.dumps(labels), now_ns(), row["id"]))
            old, new = _backend_labels(json.loads(row["labels"])), _backend_labels(labels)
            if old != new:
                binfo = self.backend.stat(row["backend_key"])
                self.backend.update(replace(binfo, labels={**binfo.labels, **new}), None)
        return self.stat(info.name)

    def usage(self, key):
        """Disk usage of snapshot ``key`` (backend Usage); NotFound."""
        return self.backend.usage(self._row(key)["backend_key"])

    def mounts(self, key):
        """Mounts of active or view snapshot ``key``; NotFound."""
        return self.backend.mounts(self._row(key)["backend_key"])

    def prepare(self, key, parent="", labels=None):
        """Create active snapshot ``key`` on committed ``parent`` ('' for
        none); returns its mounts.  AlreadyExists, NotFound (parent)."""
        return self._create("prepare", key, parent, labels)

    def view(self, key, parent="", labels=None):
        """Create a read-only view ``key`` of committed ``parent``."""
        return self._create("view", key, parent, labels)

    def _check_key(self, key, what="snapshot key"):
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"invalid {what} {key!r}: must be a non-empty string")

    def _insert(self, key, parent, labels, now):
        c = self.db.conn
        self._check_free(key)
        backend_key = self._new_backend_key(key)
        c.execute("INSERT INTO snapshots (namespace, snapshotter, key, parent, backend_key, "
                  "labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (self.namespace, self.name, key, parent, backend_key, json.dumps(labels), now, now))
        hold(self.db, self.namespace, self.lease, f"snapshots/{self.name}", key)
        return backend_key

    def _new_backend_key(self, key):
        return f"{self.namespace}/{secrets.token_hex(8)}/{key}"

    def _check_free(self, key):
        # A name that a commit in progress (or cut short) will take counts
        # as taken, so that its recovery never finds the name in use.
        if self.db.conn.execute("SELECT 1 FROM snapshots WHERE namespace=? AND snapshotter=? AND "
                                "(key=? OR (pending != '' AND json_extract(pending, '$.name')=?))",
                                (self.namespace, self.name, key, key)).fetchone():
            raise AlreadyExists(f"snapshot {key!r}: already exists in namespace {self.namespace} "
                                f"({self.name})")

    def _create(self, verb, key, parent, labels):
        self._check_key(key)
        parent = parent or ""
        labels = labelsmod.validate(labels, f"snapshot {key!r}")
        with self.db.transaction():
            self.db.ensure_namespace(self.namespace)
            parent_key = self._row(parent)["backend_key"] if parent else ""
            backend_key = self._insert(key, parent, labels, now_ns())
            return getattr(self.backend, verb)(backend_key, parent_key, _backend_labels(labels))

    def commit(self, name, key, labels=None):
        """Commit active snapshot ``key`` as ``name`` (``key`` goes away).
        NotFound (key), AlreadyExists (name), FailedPrecondition (not
        active).  Crash-safe as the module docstring describes."""
        self._check_key(name, "snapshot name")
        labels = labelsmod.validate(labels, f"snapshot {name!r}")
        intent = {"name": name, "backend_key": self._new_backend_key(name), "labels": labels}
        with metadata_lock(self.db.root):
            recover(self.db)  # cut-short commits of dead processes first
            with self.db.transaction() as c:
                row = self._row(key)
                self._check_free(name)
                c.execute("UPDATE snapshots SET pending=? WHERE id=?", (json.dumps(intent), row["id"]))
            try:
                with self.db.transaction() as c:
                    row = self._row(key)
                    _commit_rows(c, row, intent)
                    hold(self.db, self.namespace, self.lease, f"snapshots/{self.name}", name)
                    self.backend.commit(intent["backend_key"], row["backend_key"],
                                        _backend_labels(labels))
            except BaseException:
                with self.db.transaction() as c:
                    c.execute("UPDATE snapshots SET pending='' WHERE id=?", (row["id"],))
                raise

    def remove(self, key):
        """Remove snapshot ``key``.  FailedPrecondition if it has children
        (named in the message); NotFound.  The backend snapshot is removed
        right after the database commit; if that fails (or the process
        dies), GC removes it later."""
        with self.db.transaction() as c:
            row = self._row(key)
            children = [r[0] for r in c.execute(
                "SELECT key FROM snapshots WHERE namespace=? AND snapshotter=? AND parent=? "
                "ORDER BY key", (self.namespace, self.name, key))]
            if children:
                raise FailedPrecondition(f"cannot remove snapshot {key!r}: it has children "
                                         f"{', '.join(map(repr, children))}")
            c.execute("DELETE FROM snapshots WHERE id=?", (row["id"],))
        try:
            self.backend.remove(row["backend_key"])
        except (NotFound, FailedPrecondition, OSError):
            pass  # left for GC, which retries every orphan

    def walk(self, fn, filters=()):
        """Call ``fn(info)`` for each snapshot of this namespace matching
        ``filters`` (fields name, parent, kind, labels.<key>)."""
        match = parse_filters(filters)
        rows = self.db.query("SELECT * FROM snapshots WHERE namespace=? AND snapshotter=? "
                             "ORDER BY key", (self.namespace, self.name))
        for row in rows:
            try:
                info = self._info(row)
            except NotFound:
                continue  # removed meanwhile
            if match(info, _snapshot_field):
                fn(info)

    def close(self):
        """Nothing to release: the backend belongs to the DB."""
