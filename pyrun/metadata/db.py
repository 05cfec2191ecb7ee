"""The metadata database: connection, transactions, migrations.

One :class:`DB` per process and root.  Writes run in ``BEGIN IMMEDIATE``
transactions, which SQLite serialises across processes (WAL mode lets
readers go on meanwhile); a transaction that also changes files on disk
(content commit, snapshot prepare, GC) holds the write lock while it does,
so GC never sees a half-made object of another process.
"""
import fcntl
import json
import os
import re
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone

from pyrun.content import ContentStore
from pyrun.errdefs import FailedPrecondition, InvalidArgument, NotFound
from pyrun.metadata.schema import MIGRATIONS, SCHEMA_VERSION

# containerd's namespace name rule (namespaces.Validate): alphanumerics
# joined by single '.', '_' or '-', at most 76 characters.
_NAMESPACE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
_NAMESPACE_MAX = 76

# How long a writer waits for another process's write transaction, seconds.
BUSY_TIMEOUT = 60


def validate_namespace(name):
    """InvalidArgument unless ``name`` is a valid namespace name."""
    if not isinstance(name, str) or len(name) > _NAMESPACE_MAX or not _NAMESPACE.fullmatch(name):
        raise InvalidArgument(f"invalid namespace name {name!r}: use letters and digits joined "
                              f"by '.', '_' or '-', at most {_NAMESPACE_MAX} characters")
    return name


def now_ns():
    """The current time in integer nanoseconds since the epoch."""
    return int(datetime.now(timezone.utc).timestamp() * 1e9)


def to_time(ns):
    """Integer nanoseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(ns / 1e9, timezone.utc)


def dumps(obj):
    """JSON text for a column (sorted keys, so equal values compare equal)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def database_path(root):
    """Path of the metadata database below ``root``."""
    return os.path.join(os.path.abspath(root), "metadata.db")


@contextmanager
def metadata_lock(root):
    """Hold ``<root>/metadata.lock`` exclusively (flock(2)).

    Taken while a DB opens (so that first opens do not race to create and
    switch the database to WAL), while a snapshot commit runs, and while GC
    runs (see :mod:`pyrun.metadata.snapshots`).  Always take it before a
    database transaction, never inside one, or two processes could each
    hold what the other waits for.
    """
    fd = os.open(os.path.join(root, "metadata.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def connect(path):
    """An autocommit SQLite connection with pyrun's pragmas."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed transaction survives power loss too, so a row is
    # never lost after the blob file it allowed to be removed is gone.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class DB:
    """Metadata at ``root`` (``<root>/metadata.db``) over the shared content
    store (``<root>/blobs``) and the given snapshotter backends
    (``{name: Snapshotter}``).

    Tenant-facing stores are obtained per namespace: :meth:`content_store`,
    :meth:`snapshotter`, :meth:`images`, :meth:`containers`, :meth:`leases`;
    :meth:`namespaces` manages the tenants themselves.  Raises
    FailedPrecondition if the database was written by a newer pyrun.
    """

    def __init__(self, root, snapshotters=None):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.content = ContentStore(self.root)
        # Kept as given (not copied): a mapping that opens backends on first
        # use (pyrunctl's) stays lazy.
        self.snapshotters = snapshotters if snapshotters is not None else {}
        self._lock = threading.RLock()
        self._depth = 0
        from pyrun.metadata.snapshots import recover
        with metadata_lock(self.root):
            self.conn = connect(database_path(self.root))
            self._migrate()
            recover(self)

    def _migrate(self):
        with self.transaction():
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"{database_path(self.root)}: schema version {version} is newer than "
                    f"this pyrun understands ({SCHEMA_VERSION})")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {v}")

    @contextmanager
    def transaction(self):
        """A write transaction (BEGIN IMMEDIATE … COMMIT, ROLLBACK on error).

        Nested use joins the outer transaction.  Yields the connection.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self.conn.execute("ROLLBACK")
                raise
            self._depth = 0
            self.conn.execute("COMMIT")

    def query(self, sql, args=()):
        """Rows of one read-only statement."""
        with self._lock:
            return self.conn.execute(sql, args).fetchall()

    def ensure_namespace(self, namespace):
        """Create the namespace row on first use (containerd creates
        namespaces on demand).  Call inside a transaction."""
        now = now_ns()
        self.conn.execute("INSERT OR IGNORE INTO namespaces (name, labels, created_at, updated_at) "
                          "VALUES (?, '{}', ?, ?)", (validate_namespace(namespace), now, now))

    def backend_snapshotter(self, name):
        """The snapshotter backend registered as ``name``; NotFound if none."""
        try:
            return self.snapshotters[name]
        except KeyError:
            raise NotFound(f"snapshotter {name!r}: not configured "
                           f"(have: {', '.join(sorted(self.snapshotters)) or 'none'})") from None

    # -- tenant-facing stores ------------------------------------------------

    def namespaces(self):
        from pyrun.metadata.namespaces import Namespaces
        return Namespaces(self)

    def content_store(self, namespace, lease=None):
        from pyrun.metadata.content import NamespacedContentStore
        return NamespacedContentStore(self, namespace, lease)

    def snapshotter(self, namespace, name, lease=None):
        from pyrun.metadata.snapshots import NamespacedSnapshotter
        return NamespacedSnapshotter(self, namespace, name, lease)

    def images(self, namespace):
        from pyrun.metadata.images import Images
        return Images(self, namespace)

    def containers(self, namespace):
        from pyrun.metadata.containers import Containers
        return Containers(self, namespace)

    def leases(self, namespace):
        from pyrun.metadata.leases import Leases
        return Leases(self, namespace)

    def close(self):
        """Close the database connection (snapshotter backends stay open)."""
        with self._lock:
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
