"""Snapshot metadata in sqlite3, shared by the directory-based snapshotters
(containerd's ``snapshots/storage`` MetaStore, on sqlite instead of bolt).

Schema, version 1 (``PRAGMA user_version``)::

    snapshots(
        id      INTEGER PRIMARY KEY AUTOINCREMENT, -- names <root>/snapshots/<id>;
                                                   -- AUTOINCREMENT: never reused
        key     TEXT NOT NULL UNIQUE,  -- key of an active/view, name of a committed
        parent  INTEGER REFERENCES snapshots(id),  -- committed parent or NULL
        kind    TEXT NOT NULL,         -- 'active' | 'view' | 'committed'
        created INTEGER NOT NULL,      -- ns since the epoch
        updated INTEGER NOT NULL,      -- ns since the epoch
        size    INTEGER NOT NULL DEFAULT 0,  -- Usage, measured at commit
        inodes  INTEGER NOT NULL DEFAULT 0)
    labels(
        id    INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
        name  TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (id, name))

A commit keeps the row (and so the id and directory) and changes ``key``
and ``kind``; only committed snapshots are parents, so a parent's key never
changes.  The database runs in WAL mode; writers take ``BEGIN IMMEDIATE``
so that concurrent processes queue on sqlite's lock instead of failing.
"""
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone

from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from pyrun.snapshots import Info, Kind, Usage

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    parent INTEGER REFERENCES snapshots(id),
    kind TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (id, name));
"""
# containerd's limit on one label (key plus value), in bytes.
MAX_LABEL_SIZE = 4096
# How long a writer waits for another process's transaction, in seconds.
BUSY_TIMEOUT = 60


def _ts(ns):
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


def check_labels(labels):
    """Return ``labels`` as a dict of str, or raise InvalidArgument."""
    labels = dict(labels or {})
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise InvalidArgument(f"label {k!r}={v!r}: keys must be non-empty strings, values strings")
        if len(k.encode()) + len(v.encode()) > MAX_LABEL_SIZE:
            raise InvalidArgument(f"label {k!r} is longer than {MAX_LABEL_SIZE} bytes")
    return labels


class Snapshot:
    """One row: ``id`` (int), ``kind``, and ``parents``: the ids of the
    parent chain, nearest first."""

    __slots__ = ("id", "key", "kind", "parents")

    def __init__(self, id, key, kind, parents):
        self.id, self.key, self.kind, self.parents = id, key, Kind(kind), parents


def _retry_locked(conn, sql):
    """Run ``sql``, retrying while another process holds the database:
    switching a new database to WAL fails at once with "database is
    locked" (sqlite's busy timeout does not cover it) when several
    processes open the same new root together."""
    import time
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            return conn.execute(sql)
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class MetaStore:
    """The metadata database at ``path``.  Safe to share between threads
    (one connection per thread) and processes (sqlite's locking)."""

    def __init__(self, path):
        self.path = path
        self._local = threading.local()
        self._conns = []
        self._conns_lock = threading.Lock()
        with self.write() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise FailedPrecondition(f"{path}: metadata schema {version} is newer than "
                                         f"this pyrun's {SCHEMA_VERSION}")
            if version < SCHEMA_VERSION:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is None:
            if self._conns is None:
                raise FailedPrecondition(f"{self.path}: the snapshotter is closed")
            c = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                                check_same_thread=False)
            _retry_locked(c, "PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process; a power cut may
            # lose the last transactions, which leaves orphan dirs that
            # cleanup() removes, never a row without its dir.
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA foreign_keys=ON")
            self._local.conn = c
            with self._conns_lock:
                self._conns.append(c)
        return c

    @contextmanager
    def _tx(self, begin):
        c = self._conn()
        try:
            c.execute(begin)
        except sqlite3.OperationalError as e:
            raise Unavailable(f"{self.path}: {e}") from e
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def write(self):
        """A write transaction (context manager yielding the connection)."""
        return self._tx("BEGIN IMMEDIATE")

    def read(self):
        """A read transaction: one consistent snapshot of the database."""
        return self._tx("BEGIN")

    def close(self):
        with self._conns_lock:
            conns, self._conns = self._conns or [], None
        for c in conns:
            c.close()

    # Queries; each takes the connection of an open transaction.

    def get(self, c, key, chain=True):
        """The :class:`Snapshot` named ``key``; NotFound.  With ``chain``
        False, ``parents`` holds only the nearest parent."""
        row = c.execute("SELECT id, kind, parent FROM snapshots WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        if not chain:
            return Snapshot(row[0], key, row[1], [row[2]] if row[2] is not None else [])
        parents = [r[0] for r in c.execute(
            "WITH RECURSIVE chain(id, depth) AS ("
            " SELECT parent, 1 FROM snapshots WHERE id = ? AND parent IS NOT NULL"
            " UNION ALL SELECT s.parent, chain.depth + 1 FROM snapshots s JOIN chain"
            " ON s.id = chain.id WHERE s.parent IS NOT NULL)"
            " SELECT id FROM chain ORDER BY depth", (row[0],))]
        return Snapshot(row[0], key, row[1], parents)

    def check_free(self, c, key):
        if c.execute("SELECT 1 FROM snapshots WHERE key = ?", (key,)).fetchone():
            raise AlreadyExists(f"snapshot {key!r} already exists")

    def check_create(self, c, key, parent, chain=True):
        """The parent chain (ids, nearest first; only the parent's id if
        not ``chain``) for a new snapshot ``key`` on ``parent``.
        InvalidArgument for an empty key; AlreadyExists; NotFound for an
        unknown parent; FailedPrecondition if the parent is not
        committed."""
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        self.check_free(c, key)
        parents = []
        if parent:
            try:
                p = self.get(c, parent, chain)
            except NotFound:
                raise NotFound(f"parent {parent!r} of snapshot {key!r} does not exist") from None
            if p.kind is not Kind.COMMITTED:
                raise FailedPrecondition(f"parent {parent!r} of snapshot {key!r} is {p.kind.value}, "
                                         "not committed")
            parents = [p.id] + p.parents if chain else [p.id]
        return parents

    def create(self, c, kind, key, parent, labels):
        """Insert an active snapshot or view; returns its Snapshot.  Errors
        as :meth:`check_create`."""
        parents = self.check_create(c, key, parent)
        now = time.time_ns()
        cur = c.execute("INSERT INTO snapshots (key, parent, kind, created, updated) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (key, parents[0] if parents else None, kind.value, now, now))
        self._set_labels(c, cur.lastrowid, labels)
        return Snapshot(cur.lastrowid, key, kind, parents)

    def commit(self, c, key, name, usage, labels):
        """Turn active ``key`` into committed ``name``; returns its id."""
        s = self.get(c, key)
        if s.kind is not Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is {s.kind.value}, only active ones can be "
                                     "committed")
        if not name:
            raise InvalidArgument(f"commit of {key!r}: name must not be empty")
        self.check_free(c, name)
        c.execute("UPDATE snapshots SET key = ?, kind = ?, updated = ?, size = ?, inodes = ? "
                  "WHERE id = ?", (name, Kind.COMMITTED.value, time.time_ns(), usage.size,
                                   usage.inodes, s.id))
        c.execute("DELETE FROM labels WHERE id = ?", (s.id,))
        self._set_labels(c, s.id, labels)
        return s.id

    def remove(self, c, key):
        """Delete ``key``; returns its Snapshot.  FailedPrecondition if it
        has children."""
        s = self.get(c, key)
        children = [r[0] for r in c.execute(
            "SELECT key FROM snapshots WHERE parent = ? ORDER BY key LIMIT 5", (s.id,))]
        if children:
            raise FailedPrecondition(f"cannot remove snapshot {key!r}: it is the parent of "
                                     f"{', '.join(map(repr, children))}")
        c.execute("DELETE FROM snapshots WHERE id = ?", (s.id,))
        return s

    def _set_labels(self, c, id, labels):
        c.executemany("INSERT INTO labels (id, name, value) VALUES (?, ?, ?)",
                      [(id, k, v) for k, v in labels.items()])

    def set_labels(self, c, key, labels):
        s = self.get(c, key)
        c.execute("DELETE FROM labels WHERE id = ?", (s.id,))
        self._set_labels(c, s.id, labels)
        c.execute("UPDATE snapshots SET updated = ? WHERE id = ?", (time.time_ns(), s.id))

    def infos(self, c, key=None):
        """Info of ``key`` (NotFound), or of all snapshots in key order."""
        q = ("SELECT s.id, s.key, s.kind, p.key, s.created, s.updated FROM snapshots s "
             "LEFT JOIN snapshots p ON p.id = s.parent")
        rows = (c.execute(q + " WHERE s.key = ?", (key,)) if key is not None
                else c.execute(q + " ORDER BY s.key")).fetchall()
        if key is not None and not rows:
            raise NotFound(f"snapshot {key!r} does not exist")
        labels = {}
        lq = "SELECT id, name, value FROM labels"
        for id, name, value in (c.execute(lq + " WHERE id = ?", (rows[0][0],)) if key is not None
                                else c.execute(lq)):
            labels.setdefault(id, {})[name] = value
        return [Info(Kind(kind), k, parent or "", labels.get(id, {}), _ts(created), _ts(updated))
                for id, k, kind, parent, created, updated in rows]

    def usage(self, c, key):
        row = c.execute("SELECT size, inodes FROM snapshots WHERE key = ?", (key,)).fetchone()
        return Usage(row[0], row[1])

    def ids(self, c):
        return {r[0] for r in c.execute("SELECT id FROM snapshots")}
