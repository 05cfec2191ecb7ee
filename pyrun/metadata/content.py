"""A tenant's view of the shared content store.

Same interface as :class:`pyrun.content.ContentStore`.  A namespace sees
only the blobs it added; the bytes are stored once.  containerd's "shared"
policy: opening a writer with an ``expected`` digest that another
namespace already has returns a writer that needs no data and commits at
once (its status reports the whole size as written).
"""
import json
from dataclasses import replace

from pyrun import labels as labelsmod
from pyrun.content.digest import parse_digest
from pyrun.content.store import Info, Status, check_ref, info_field, status_field
from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyrun.filters import parse as parse_filters
from pyrun.metadata.db import now_ns, to_time, validate_namespace
from pyrun.metadata.leases import hold


class NamespacedContentStore:
    """Content of ``namespace`` in ``db``; with ``lease``, every ingest and
    committed blob is added to that lease."""

    def __init__(self, db, namespace, lease=None):
        self.db = db
        self.namespace = validate_namespace(namespace)
        self.lease = lease
        self.backend = db.content

    def _row(self, digest):
        parse_digest(digest)
        rows = self.db.query("SELECT * FROM content WHERE namespace=? AND digest=?",
                             (self.namespace, digest))
        if not rows:
            raise NotFound(f"content {digest}: not found in namespace {self.namespace}")
        return rows[0]

    def _backend_ref(self, ref):
        return f"{self.namespace}/{check_ref(ref)}"

    def info(self, digest):
        """The :class:`Info` of ``digest`` in this namespace; NotFound."""
        return _info(self._row(digest))

    def update(self, info, fieldpaths=None):
        """Update labels (see ContentStore.update); NotFound if absent."""
        with self.db.transaction() as c:
            row = self._row(info.digest)
            labels = labelsmod.apply_update(json.loads(row["labels"]), info.labels, fieldpaths,
                                            f"content {info.digest}")
            c.execute("UPDATE content SET labels=?, updated_at=? WHERE namespace=? AND digest=?",
                      (json.dumps(labels), now_ns(), self.namespace, info.digest))
        return self.info(info.digest)

    def walk(self, fn, filters=()):
        """Call ``fn(info)`` for each blob of this namespace matching ``filters``."""
        match = parse_filters(filters)
        rows = self.db.query("SELECT * FROM content WHERE namespace=? ORDER BY digest",
                             (self.namespace,))
        for info in map(_info, rows):
            if match(info, info_field):
                fn(info)

    def list(self, filters=()):
        out = []
        self.walk(out.append, filters)
        return out

    def delete(self, digest):
        """Remove ``digest`` from this namespace; the bytes leave disk when
        no namespace has it any more.  NotFound if absent."""
        with self.db.transaction() as c:
            cur = c.execute("DELETE FROM content WHERE namespace=? AND digest=?",
                            (self.namespace, digest))
            if not cur.rowcount:
                raise NotFound(f"content {digest}: not found in namespace {self.namespace}")
        # A second transaction: had the file gone in the first one, a crash
        # before COMMIT would leave a row whose blob is missing.
        with self.db.transaction() as c:
            if not c.execute("SELECT 1 FROM content WHERE digest=?", (digest,)).fetchone():
                try:
                    self.backend.delete(digest)
                except NotFound:
                    pass

    def reader(self, digest):
        """Open ``digest`` for reading (a ReaderAt); NotFound if this
        namespace does not have it."""
        self._row(digest)
        return self.backend.reader(digest)

    def writer(self, ref, total=None, expected=None):
        """Open a writer (see ContentStore.writer).  AlreadyExists if this
        namespace has ``expected``; Unavailable if ``ref`` is locked."""
        backend_ref = self._backend_ref(ref)
        if expected:
            parse_digest(expected)
            if self.db.query("SELECT 1 FROM content WHERE namespace=? AND digest=?",
                             (self.namespace, expected)):
                raise AlreadyExists(f"content {expected}: already exists in namespace {self.namespace}")
            shared = self._shared(ref, total, expected)
            if shared:
                return shared
        with self.db.transaction():
            self.db.ensure_namespace(self.namespace)
            hold(self.db, self.namespace, self.lease, "ingests", ref)
        try:
            w = self.backend.writer(backend_ref, total, expected)
        except AlreadyExists:  # committed by another namespace meanwhile
            shared = self._shared(ref, total, expected)
            if shared is None:
                raise
            return shared
        return NamespacedWriter(self, ref, w)

    def _shared(self, ref, total, expected):
        try:
            info = self.backend.info(expected)
        except NotFound:
            return None
        if total and total != info.size:
            return None  # the caller is wrong about the size; let commit say so
        return SharedWriter(self, ref, expected, info.size)

    def status(self, ref):
        """Status of this namespace's ingest ``ref``; NotFound."""
        try:
            return replace(self.backend.status(self._backend_ref(ref)), ref=ref)
        except NotFound:
            raise NotFound(f"ingest ref {ref}: not found in namespace {self.namespace}") from None

    def list_statuses(self, filters=()):
        """Statuses of this namespace's ingests matching ``filters``."""
        match = parse_filters(filters)
        prefix = f"{self.namespace}/"
        out = []
        for st in self.backend.list_statuses():
            if st.ref.startswith(prefix):
                st = replace(st, ref=st.ref[len(prefix):])
                if match(st, status_field):
                    out.append(st)
        return out

    def abort(self, ref):
        """Discard ingest ``ref``; NotFound, or Unavailable if locked."""
        try:
            self.backend.abort(self._backend_ref(ref))
        except NotFound:
            raise NotFound(f"ingest ref {ref}: not found in namespace {self.namespace}") from None

    def _add(self, digest, size, labels):
        """Inside a transaction: record ``digest`` for this namespace."""
        self.db.ensure_namespace(self.namespace)
        if self.db.conn.execute("SELECT 1 FROM content WHERE namespace=? AND digest=?",
                                (self.namespace, digest)).fetchone():
            raise AlreadyExists(f"content {digest}: already exists in namespace {self.namespace}")
        now = now_ns()
        self.db.conn.execute("INSERT INTO content (namespace, digest, size, labels, created_at, "
                             "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                             (self.namespace, digest, size, json.dumps(labels), now, now))
        hold(self.db, self.namespace, self.lease, "content", digest)


def _info(row):
    return Info(row["digest"], row["size"], to_time(row["created_at"]),
                to_time(row["updated_at"]), json.loads(row["labels"]))


class NamespacedWriter:
    """A backend writer whose commit also records the blob for the tenant."""

    def __init__(self, store, ref, writer):
        self._store = store
        self.ref = ref
        self._w = writer

    def write(self, data):
        return self._w.write(data)

    def digest(self):
        return self._w.digest()

    def status(self):
        return replace(self._w.status(), ref=self.ref)

    def truncate(self, size):
        self._w.truncate(size)

    def commit(self, size, expected, labels=None):
        """Commit (see Writer.commit).  The blob is recorded for this
        namespace in the same transaction, so GC cannot remove it between
        the two.  AlreadyExists if this namespace already has it."""
        what = f"commit of ref {self.ref}"
        labels = labelsmod.validate(labels, what)
        algorithm = parse_digest(expected)[0] if expected else None
        store = self._store
        with store.db.transaction():
            digest = self._w.digest(algorithm)
            try:
                self._w.commit(size, expected, None)
            except AlreadyExists:
                pass  # the bytes are there already (another namespace, or an orphan)
            store._add(digest, store.backend.info(digest).size, labels)
        return digest

    def close(self):
        self._w.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SharedWriter:
    """Writer for a blob already in the shared store: reports the whole
    ``size`` as written, ignores data, and commits without copying."""

    def __init__(self, store, ref, digest, size):
        self._store = store
        self.ref = ref
        self._digest = digest
        self._size = size
        self._status = None

    def write(self, data):
        return len(data)

    def digest(self):
        return self._digest

    def status(self):
        if self._status is None:
            info = self._store.backend.info(self._digest)
            self._status = Status(self.ref, self._size, self._size, self._digest,
                                  info.created_at, info.updated_at)
        return self._status

    def truncate(self, size):
        if size != 0:
            raise InvalidArgument(f"ref {self.ref}: cannot truncate a shared blob to {size}")

    def commit(self, size, expected, labels=None):
        what = f"commit of ref {self.ref}"
        labels = labelsmod.validate(labels, what)
        if size and size != self._size:
            raise FailedPrecondition(f"{what}: unexpected size {self._size}, expected {size}")
        if expected and expected != self._digest:
            raise FailedPrecondition(f"{what}: unexpected digest {self._digest}, expected {expected}")
        store = self._store
        with store.db.transaction():
            if not store.backend.exists(self._digest):
                raise FailedPrecondition(f"{what}: shared blob {self._digest} was removed "
                                         "meanwhile; write it again")
            store._add(self._digest, self._size, labels)
        return self._digest

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass
