"""The local content store: blobs addressed by digest on one filesystem.

Layout under ``root`` (containerd's ``content/local``)::

    blobs/<alg>/<hex>        committed blobs, read-only, never partial
    labels/<alg>/<hex>       a blob's labels and update time (JSON)
    ingest/<sha256(ref)>/    one in-progress write: ``status`` (JSON: ref,
                             total, expected, started_at) and ``data``

A writer holds an exclusive ``flock(2)`` on its ingest directory, so a ref
has at most one writer across all processes, and the kernel drops the lock
when a writer dies, leaving the data for a later writer to resume.  Commit
fsyncs the data, checks size and digest, then hard-links it into ``blobs/``
(link fails if the blob exists, which makes "already exists" race-free) and
fsyncs the directory; a reader therefore sees a whole blob or none.
"""
import errno
import fcntl
import hashlib
import io
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyrun import labels as labelsmod
from pyrun.filters import labels_field, parse as parse_filters
from pyrun.content.digest import ALGORITHMS, digester, parse_digest
from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from pyrun.fsutil import atomic_write, remove_tree

_CHUNK = 1 << 20


def _time(ns):
    return datetime.fromtimestamp(ns / 1e9, timezone.utc)


@dataclass(frozen=True)
class Info:
    """A committed blob: ``digest`` (``alg:hex``), ``size`` in bytes,
    ``created_at``/``updated_at`` (aware UTC datetimes) and ``labels``."""

    digest: str
    size: int = 0
    created_at: datetime = None
    updated_at: datetime = None
    labels: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    """An in-progress write: ``offset`` bytes written so far of ``total``
    (0 = unknown), the ``expected`` digest if one was given, and times."""

    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime
    updated_at: datetime


def info_field(info, path):
    """Filter adaptor for :class:`Info` (fields digest, size, labels.<k>)."""
    if path[0] == "labels":
        return labels_field(info.labels, path)
    if path == ["digest"]:
        return info.digest
    if path == ["size"]:
        return str(info.size)
    return None


def status_field(status, path):
    """Filter adaptor for :class:`Status` (fields ref, expected)."""
    if path == ["ref"]:
        return status.ref
    if path == ["expected"]:
        return status.expected or None
    return None


def check_ref(ref):
    """A ref is any non-empty string without NUL; InvalidArgument otherwise."""
    if not isinstance(ref, str) or not ref or "\0" in ref:
        raise InvalidArgument(f"invalid ingest ref {ref!r}: must be a non-empty string")
    return ref


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ReaderAt(io.RawIOBase):
    """A committed blob opened for reading.

    ``size`` in bytes; ``read_at(n, offset)`` reads up to ``n`` bytes at
    ``offset`` without moving the file position (pread(2)); the usual
    file methods read/readinto/seek/tell work too, so it can be handed to
    ``tarfile`` or ``io.BufferedReader``.  Use as a context manager.
    """

    def __init__(self, fd, size, digest):
        super().__init__()
        self._fd = fd
        self._pos = 0
        self.size = size
        self.digest = digest

    def read_at(self, n, offset):
        return os.pread(self._fd, n, offset)

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        data = os.pread(self._fd, len(b), self._pos)
        b[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise InvalidArgument(f"seek in {self.digest} to negative offset {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self):
        return self._pos

    def fileno(self):
        return self._fd

    def close(self):
        if not self.closed:
            os.close(self._fd)
        super().close()


class ContentStore:
    """Content-addressed blob store at ``root`` (see the module docstring).

    Implements containerd's content Provider (``reader``), Ingester
    (``writer``, ``status``, ``list_statuses``, ``abort``) and Manager
    (``info``, ``update``, ``walk``, ``list``, ``delete``).  Safe to use
    from several processes at once.
    """

    def __init__(self, root):
        self.root = os.path.abspath(root)
        for sub in ("blobs", "labels", "ingest"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)

    # -- paths -------------------------------------------------------------

    def blob_path(self, digest):
        """Path of the blob ``digest``; InvalidArgument for a bad digest."""
        alg, hexpart = parse_digest(digest)
        return os.path.join(self.root, "blobs", alg, hexpart)

    def _labels_path(self, digest):
        alg, hexpart = parse_digest(digest)
        return os.path.join(self.root, "labels", alg, hexpart)

    def _ingest_path(self, ref):
        return os.path.join(self.root, "ingest", hashlib.sha256(check_ref(ref).encode()).hexdigest())

    # -- manager -----------------------------------------------------------

    def exists(self, digest):
        """True if the blob ``digest`` is committed."""
        return os.path.exists(self.blob_path(digest))

    def info(self, digest):
        """The :class:`Info` of blob ``digest``; NotFound if absent."""
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        labels, updated = {}, st.st_mtime_ns
        try:
            with open(self._labels_path(digest)) as f:
                saved = json.load(f)
            labels, updated = saved["labels"], max(updated, saved["updated_at"])
        except FileNotFoundError:
            pass
        return Info(digest, st.st_size, _time(st.st_mtime_ns), _time(updated), labels)

    def _save_labels(self, digest, labels):
        path = self._labels_path(digest)
        if not labels:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, json.dumps({"labels": labels, "updated_at": _now_ns()}).encode())

    def update(self, info, fieldpaths=None):
        """Update the labels of ``info.digest`` (only labels can change).

        ``fieldpaths``: None/empty replaces all labels; ``"labels"`` too;
        ``"labels.<key>"`` sets or removes one key.  Returns the new Info.
        NotFound if the blob is absent; InvalidArgument for other fields.
        """
        current = self.info(info.digest)
        labels = labelsmod.apply_update(current.labels, info.labels, fieldpaths,
                                        f"content {info.digest}")
        self._save_labels(info.digest, labels)
        return self.info(info.digest)

    def walk(self, fn, filters=()):
        """Call ``fn(info)`` for each committed blob matching ``filters``
        (containerd filter strings, see :mod:`pyrun.filters`)."""
        match = parse_filters(filters)
        for alg in sorted(ALGORITHMS):
            base = os.path.join(self.root, "blobs", alg)
            try:
                names = sorted(os.listdir(base))
            except FileNotFoundError:
                continue
            for name in names:
                try:
                    info = self.info(f"{alg}:{name}")
                except (NotFound, InvalidArgument):
                    continue  # deleted meanwhile, or a stray file (check() reports it)
                if match(info, info_field):
                    fn(info)

    def list(self, filters=()):
        """All matching blobs as a list of :class:`Info`."""
        out = []
        self.walk(out.append, filters)
        return out

    def delete(self, digest):
        """Remove blob ``digest``; NotFound if absent.  Open readers keep
        reading the removed data."""
        try:
            os.unlink(self.blob_path(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        try:
            os.unlink(self._labels_path(digest))
        except FileNotFoundError:
            pass

    def reader(self, digest):
        """Open blob ``digest`` as a :class:`ReaderAt`; NotFound if absent."""
        try:
            fd = os.open(self.blob_path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        return ReaderAt(fd, os.fstat(fd).st_size, digest)

    # -- ingester ----------------------------------------------------------

    def writer(self, ref, total=None, expected=None):
        """Open a :class:`Writer` for ``ref``, creating or resuming its ingest.

        ``total``: the size in bytes if known; ``expected``: the digest if
        known.  Raises AlreadyExists if ``expected`` is already committed,
        Unavailable("ref … locked") if another writer (in any process)
        holds ``ref``, InvalidArgument for a bad ref or digest.
        """
        check_ref(ref)
        if expected:
            if self.exists(expected):
                raise AlreadyExists(f"content {expected}: already exists")
        if total is not None and (not isinstance(total, int) or total < 0):
            raise InvalidArgument(f"ref {ref}: invalid total size {total!r}")
        path = self._ingest_path(ref)
        while True:
            if not os.path.isdir(path):
                self._create_ingest(path, ref, total, expected)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # aborted between our check and open
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise Unavailable(f"ref {ref} locked: another writer holds it") from None
            # The directory may have been aborted (and maybe re-created)
            # while we waited for the lock: only the current one counts.
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            return Writer(self, ref, path, fd, total, expected)
        except BaseException:
            os.close(fd)
            raise

    def _create_ingest(self, path, ref, total, expected):
        # Build the directory complete under a temporary name and rename it
        # into place, so an ingest directory is never seen half-made.
        tmp = os.path.join(self.root, "ingest", f".tmp-{os.getpid()}-{secrets.token_hex(8)}")
        os.mkdir(tmp)
        try:
            _write_status(tmp, ref, total or 0, expected or "", _now_ns())
            os.close(os.open(os.path.join(tmp, "data"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            os.rename(tmp, path)
        except OSError as e:
            remove_tree(tmp)
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise  # otherwise another process created it first

    def _read_status(self, path):
        with open(os.path.join(path, "status")) as f:
            saved = json.load(f)
        try:
            st = os.stat(os.path.join(path, "data"))
            offset, updated = st.st_size, st.st_mtime_ns
        except FileNotFoundError:  # committed; the directory is being removed
            offset, updated = saved["total"], saved["started_at"]
        return Status(saved["ref"], offset, saved["total"], saved["expected"],
                      _time(saved["started_at"]), _time(max(updated, saved["started_at"])))

    def status(self, ref):
        """The :class:`Status` of ingest ``ref``; NotFound if none."""
        try:
            return self._read_status(self._ingest_path(ref))
        except FileNotFoundError:
            raise NotFound(f"ingest ref {ref}: not found") from None

    def list_statuses(self, filters=()):
        """Statuses of all ingests matching ``filters`` (fields ref, expected)."""
        match = parse_filters(filters)
        out = []
        base = os.path.join(self.root, "ingest")
        for name in sorted(os.listdir(base)):
            if name.startswith("."):
                continue
            try:
                st = self._read_status(os.path.join(base, name))
            except FileNotFoundError:
                continue
            if match(st, status_field):
                out.append(st)
        return out

    def is_locked(self, ref):
        """True if a writer currently holds ``ref`` (used by GC)."""
        try:
            fd = os.open(self._ingest_path(ref), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def remove_stale_temporaries(self):
        """Remove ingest directories left half-made or half-removed by a
        process that died (``ingest/.tmp-<pid>-*``, ``ingest/.trash-<pid>-*``;
        the pid is the process that made them, and its own are left while it
        lives).  Returns the names removed."""
        base = os.path.join(self.root, "ingest")
        removed = []
        for name in os.listdir(base):
            kind, _, rest = name.partition("-")
            pid = rest.split("-")[0]
            if kind not in (".tmp", ".trash") or not pid.isdigit() or _alive(int(pid)):
                continue
            try:
                remove_tree(os.path.join(base, name))
                removed.append(name)
            except FileNotFoundError:
                pass  # removed by another process meanwhile
        return removed

    def abort(self, ref):
        """Discard ingest ``ref`` and its data.  NotFound if none;
        Unavailable if a writer holds it."""
        path = self._ingest_path(ref)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"ingest ref {ref}: not found") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Unavailable(f"ref {ref} locked: another writer holds it") from None
            _discard_ingest(path)
        finally:
            os.close(fd)


def _discard_ingest(path):
    # Rename away first so that no new writer opens the directory while its
    # files are being removed; the caller holds its lock.
    trash = os.path.join(os.path.dirname(path), f".trash-{os.getpid()}-{secrets.token_hex(8)}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    remove_tree(trash)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _now_ns():
    return int(datetime.now(timezone.utc).timestamp() * 1e9)


def _write_status(path, ref, total, expected, started_at):
    atomic_write(os.path.join(path, "status"), json.dumps(
        {"ref": ref, "total": total, "expected": expected, "started_at": started_at}).encode(), 0o644)


class Writer:
    """An open ingest: append with ``write``, then ``commit``.

    Reopening the same ref after ``close`` (or after the writing process
    died) resumes at ``status().offset``.  Use as a context manager; leaving
    the block closes the writer but keeps the data.
    """

    def __init__(self, store, ref, path, lockfd, total, expected):
        self._store = store
        self.ref = ref
        self._path = path
        self._lockfd = lockfd
        saved = store._read_status(path)
        if (total and total != saved.total) or (expected and expected != saved.expected):
            _write_status(path, ref, total or saved.total, expected or saved.expected,
                          int(saved.started_at.timestamp() * 1e9))
        self._algorithm = parse_digest(expected)[0] if expected else "sha256"
        data = os.path.join(path, "data")
        self._fd = os.open(data, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if os.fstat(self._fd).st_nlink > 1:
            # A commit linked these bytes into blobs/ and died before it
            # removed the ingest: writing here would change the blob.
            # Continue on a private copy instead (we hold the lock).
            os.close(self._fd)
            tmp = f"{data}.tmp"
            shutil.copyfile(data, tmp)
            os.rename(tmp, data)
            self._fd = os.open(data, os.O_RDWR | os.O_CLOEXEC)
        self._hash = self._rehash(self._algorithm)
        self._offset = os.lseek(self._fd, 0, os.SEEK_END)

    def _rehash(self, algorithm):
        h = digester(algorithm)
        offset = 0
        while True:
            chunk = os.pread(self._fd, _CHUNK, offset)
            if not chunk:
                return h
            h.update(chunk)
            offset += len(chunk)

    def _check_open(self):
        if self._fd is None:
            raise FailedPrecondition(f"writer for ref {self.ref} is closed")

    def write(self, data):
        """Append ``data`` (bytes-like); returns the number of bytes written."""
        self._check_open()
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        self._hash.update(view)
        self._offset += done
        return done

    def digest(self, algorithm=None):
        """Digest string of the bytes written so far."""
        self._check_open()
        if algorithm and algorithm != self._algorithm:
            return f"{algorithm}:{self._rehash(algorithm).hexdigest()}"
        return f"{self._algorithm}:{self._hash.hexdigest()}"

    def status(self):
        """Current :class:`Status` of this ingest."""
        self._check_open()
        return self._store._read_status(self._path)

    def truncate(self, size):
        """Cut the data back to ``size`` bytes (0 restarts the write)."""
        self._check_open()
        if not isinstance(size, int) or not 0 <= size <= self._offset:
            raise InvalidArgument(f"ref {self.ref}: cannot truncate to {size!r} "
                                  f"(have {self._offset} bytes)")
        os.ftruncate(self._fd, size)
        os.lseek(self._fd, size, os.SEEK_SET)
        self._offset = size
        self._hash = self._rehash(self._algorithm)

    def commit(self, size, expected, labels=None):
        """Make the written bytes the blob ``expected``.

        ``size`` in bytes (0 or None: not checked); ``expected``: digest
        string (None: use what was written).  A wrong size or digest raises
        FailedPrecondition naming both values and changes nothing.  If the
        blob already exists, the ingest is removed and AlreadyExists is
        raised (containerd's ``Commit``; :func:`write_blob` treats that as
        success).  On success the writer is closed.  Returns the digest.
        """
        self._check_open()
        algorithm = parse_digest(expected)[0] if expected else self._algorithm
        what = f"commit of ref {self.ref}"
        labels = labelsmod.validate(labels, what)
        if size and size != self._offset:
            raise FailedPrecondition(f"{what}: unexpected size {self._offset}, expected {size}")
        digest = self.digest(algorithm)
        if expected and expected != digest:
            raise FailedPrecondition(f"{what}: unexpected digest {digest}, expected {expected}")
        os.fsync(self._fd)
        target = self._store.blob_path(digest)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.fchmod(self._fd, 0o444)
        try:
            os.link(os.path.join(self._path, "data"), target)
        except FileExistsError:
            self._finish()
            raise AlreadyExists(f"content {digest}: already exists") from None
        _fsync_dir(os.path.dirname(target))
        if labels:
            self._store._save_labels(digest, labels)
        self._finish()
        return digest

    def _finish(self):
        _discard_ingest(self._path)
        self.close()

    def close(self):
        """Release the ref's lock; the data stays for a later resume."""
        if self._fd is not None:
            os.close(self._fd)
            os.close(self._lockfd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_blob(store, ref, data, expected_desc, labels=None):
    """Write ``data`` (bytes or a readable binary file) as the blob that
    ``expected_desc`` (an OCI descriptor dict with ``digest`` and ``size``)
    describes, resuming an earlier partial write of ``ref``.

    Like containerd's ``content.WriteBlob``: a blob that already exists is
    success.  If the bytes do not match the descriptor the partial data is
    discarded (a retry starts afresh) and FailedPrecondition is raised.
    Returns the digest.
    """
    digest, size = expected_desc["digest"], expected_desc.get("size") or None
    try:
        w = store.writer(ref, total=size, expected=digest)
    except AlreadyExists:
        return digest
    with w:
        offset = w.status().offset
        if isinstance(data, (bytes, bytearray, memoryview)):
            src = io.BytesIO(data)
        else:
            src = data
        if offset:
            if size is not None and offset > size:
                w.truncate(0)
            elif src.seekable():
                src.seek(offset)
            else:
                w.truncate(0)
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            w.write(chunk)
        try:
            w.commit(size, digest, labels)
        except AlreadyExists:
            pass
        except FailedPrecondition:
            w.truncate(0)
            raise
    return digest
