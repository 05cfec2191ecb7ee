"""Apply one image layer (a tar changeset) to a directory, safely.

Follows the OCI image spec, layer.md ("Applying Changesets", "Whiteouts",
"Opaque Whiteout") with containerd's choices where the spec is silent
(``archive/tar.go``: the overlay whiteout conversion, copying a hard link's
lower-layer target up, parents created with the lower layer's metadata).

Hostile layers are expected.  Python's ``tarfile`` only parses headers
(``TarFile.next()`` on a ``r|`` stream, ``extractfile`` for data); every write
is ours and relative to a directory fd that openat2(2) resolved with
RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS, so ``..``, absolute names and
symlinks -- from earlier layers or earlier in this one -- all stay inside
the root.  Final components are never followed (O_NOFOLLOW, AT_SYMLINK_NOFOLLOW,
linkat(2) without AT_SYMLINK_FOLLOW).
"""
import base64
import collections
import errno
import io
import logging
import os
import stat
import tarfile
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from pyrun import linux
from pyrun.errdefs import InvalidArgument
from pyrun.fsutil import remove_at
from pyrun.images import compression

log = logging.getLogger(__name__)

OVERLAY = "overlay"
NATIVE = "native"

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

DEFAULT_MAX_ENTRIES = 1_000_000
DEFAULT_MAX_DEPTH = 256
# PAX and GNU long-name records are read into memory whole; Go's
# archive/tar (containerd, Docker) caps them at 1 MiB as well.
MAX_HEADER_DATA = 1 << 20
MAX_ID = 2**32 - 2            # 2^32-1 is (uid_t)-1, "no change" to chown(2)
MAX_MAJOR = (1 << 12) - 1     # the kernel's dev_t: 12-bit major,
MAX_MINOR = (1 << 20) - 1     # 20-bit minor (MINORBITS)

# Data is copied in blocks of this size; an all-zero block becomes a hole.
_BLOCK = 64 * 1024
_ZEROS = bytes(_BLOCK)
# Regular files up to this size (bytes) are written by helper threads,
# at most _WRITERS at a time and _IN_FLIGHT queued: creating a file costs
# far more in the kernel than in Python, and creates in different
# directories run in parallel.
_SMALL_FILE = 1 << 20
_WRITERS = 4
_IN_FLIGHT = 64

_IN_ROOT = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS
_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CACHE_MAX = 256
_MAX_SYMLINKS = 40  # the kernel's MAXSYMLINKS

# xattrs a layer may not set: overlayfs reads them as its own metadata
# (opaque, redirect, metacopy), which would let a layer reach other layers.
_FORBIDDEN_XATTRS = ("trusted.overlay.", "user.overlay.")
# Errors of the machine rather than of the layer; everything else an entry
# hits (ENOTDIR, EEXIST, ELOOP, ENAMETOOLONG, ...) means the layer does not fit.
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES,
                   errno.EPERM, errno.ENOMEM, errno.EMFILE, errno.ENFILE}

_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE)
_NODES = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
          tarfile.FIFOTYPE: stat.S_IFIFO}


@dataclass(frozen=True)
class AppliedLayer:
    """What :func:`apply_layer` read and applied.

    ``diffid`` is the digest of the uncompressed tar stream (the image
    config's ``rootfs.diff_ids`` entry), ``size_uncompressed`` its length in
    bytes, ``entries`` the number of tar entries (whiteouts included).
    ``compression`` is what the stream's magic bytes showed: "gzip", "zstd"
    or "none".  ``digest``/``size`` are the digest and length of the stream
    as read (the layer descriptor's), if ``compute_digest`` was asked for.
    """

    diffid: str
    size_uncompressed: int
    entries: int
    compression: str
    digest: str | None = None
    size: int | None = None


def apply_layer(stream, root, *, mode=OVERLAY, media_type=None, expected_diffid=None,
                lower_dirs=(), compute_digest=False, max_entries=DEFAULT_MAX_ENTRIES,
                max_depth=DEFAULT_MAX_DEPTH):
    """Apply the layer read from ``stream`` to the directory ``root``.

    ``stream`` is a file object (``read(n)``) holding the layer blob, plain
    tar, gzip or zstd; it is read once, front to back, and never held in
    memory or on disk.  ``media_type`` (optional) must be an OCI or Docker
    layer type; the compression really used is detected from the magic
    bytes.  A tar stream that ends right after its last entry's data, with
    no padding or end-of-archive blocks, is accepted (``umoci insert``
    writes those); a truncated or corrupt one is not.

    ``mode`` says what ``root`` is:

    - ``"overlay"``: the empty upper dir of a new overlay snapshot.
      Whiteouts become char 0/0 devices and opaque dirs get the xattr
      ``trusted.overlay.opaque=y`` (overlayfs.rst, "whiteouts and opaque
      directories").  ``lower_dirs`` are the upper dirs of the parent
      layers, nearest first: a hard link whose target is only in a lower
      layer copies the target up first, and a directory created only as a
      parent takes its metadata from the lower layer (as containerd does).
    - ``"native"``: a full copy of the parent's tree.  Whiteouts delete the
      entry; an opaque marker deletes what the directory held before.

    Whiteouts only hide what lower layers hold (layer.md): entries of this
    layer survive a whiteout or opaque marker that comes after them in the
    tar, as if the marker had been applied first.

    Names are cleaned lexically against "/" (``..`` stops at the root) and
    resolved inside ``root`` only: in overlay mode that is the upper dir
    alone, so a symlink that only a lower layer holds is not followed (as
    containerd's and Docker's overlay appliers do).  A parent that is a
    dangling symlink is followed inside the root and the missing
    directories are made there (containerd: ``fs.RootPath`` + MkdirAll).
    Hard links are made to the link target itself, never through a final
    symlink.

    The tree is written with the header's numeric uid/gid, mode (set after
    chown, which clears setuid/setgid), xattrs (PAX ``SCHILY.xattr.*`` and
    ``LIBARCHIVE.xattr.*``, except ``trusted.overlay.*``/``user.overlay.*``),
    atime/mtime to the nanosecond (directories last, after their children);
    sparse entries and all-zero 64 KiB blocks become holes.

    Returns an :class:`AppliedLayer`.  The diffID is checked against
    ``expected_diffid`` ("sha256:<hex>", the config's ``rootfs.diff_ids``
    entry) once the whole stream is read.

    Raises InvalidArgument naming the entry and what is wrong for a bad
    layer: a corrupt stream, a diffID mismatch, an unsupported entry type,
    a uid/gid above 2^32-2, a device number beyond the kernel's 12-bit
    major / 20-bit minor, more than ``max_entries`` entries, a name or a
    directory (reached through symlinks) deeper than ``max_depth``
    components, a PAX or long-name record over 1 MiB, a hard link to a
    missing target or a directory.  Machine errors (ENOSPC, EIO, ...) stay OSError, with the
    entry named.

    Decompression and the diffID hash run in a helper thread, and regular
    files up to 1 MiB are created and written by a few helper threads
    (creating a file costs far more in the kernel than in Python); an
    entry that comes back to a name still being written, and every
    whiteout, hard link and removal, waits for them first, so the tree is
    the one a one-by-one apply makes.

    A failed apply leaves ``root`` half-written.  Callers apply into a fresh
    active snapshot (snapshotter ``prepare``) and remove it on failure, so
    nothing half-applied is ever committed or seen by a container.
    """
    if mode not in (OVERLAY, NATIVE):
        raise InvalidArgument(f"apply mode {mode!r}: must be {OVERLAY!r} or {NATIVE!r}")
    algorithm = "sha256"
    if expected_diffid is not None:
        algorithm, sep, _ = expected_diffid.partition(":")
        if not sep or algorithm not in ("sha256", "sha384", "sha512"):
            raise InvalidArgument(f"expected diffID {expected_diffid!r} is not a digest")
    raw = compression.DigestReader(stream) if compute_digest else stream
    reader, kind = compression.decompressed(raw, media_type)
    tar_stream = compression.DigestReader(reader, algorithm)
    applier = _Applier(root, mode, lower_dirs, max_entries, max_depth)
    # Decompression and the diffID hash run in a helper thread, on another
    # core than the file writes.
    with compression.ReadAhead(tar_stream) as ahead:
        try:
            applier.apply(ahead)
        finally:
            applier.close()
        # The diffID covers the whole stream: end-of-archive blocks and padding.
        while ahead.read(1 << 20):
            pass
    if compute_digest:
        raw.drain()
    diffid = tar_stream.digest()
    if expected_diffid is not None and diffid != expected_diffid:
        raise InvalidArgument(f"layer diffID mismatch: the tar stream is {diffid}, "
                              f"expected {expected_diffid} (config rootfs.diff_ids)")
    return AppliedLayer(diffid, tar_stream.size, applier.entries, kind,
                        raw.digest() if compute_digest else None,
                        raw.size if compute_digest else None)


class _Padded:
    # The tar stream as tarfile reads it.
    #
    # Zero-padded at its very end to a whole 512-byte block: ``umoci
    # insert`` ends its tar right after the last file's data, which Go's
    # archive/tar (containerd) takes but tarfile does not.  The padding is
    # added above the digest, so the diffID stays the stream's.  ``real``
    # counts the bytes that really came.
    #
    # And a guard: tarfile reads PAX records, GNU long names and sparse
    # maps into memory whole, so while one header is parsed (``limit`` set)
    # at most MAX_HEADER_DATA bytes may go by, as in Go's archive/tar.

    def __init__(self, fileobj):
        self._f = fileobj
        self._pad = None
        self.real = 0
        self.limit = None
        self.bad_header = None

    def read(self, n=-1):
        if self.limit is not None and self.real > self.limit:
            raise InvalidArgument(f"a tar header with its PAX, long-name or sparse-map records "
                                  f"is over {MAX_HEADER_DATA} bytes")
        if self._pad is None:
            data = self._f.read(n)
            if data:
                self.real += len(data)
                return data
            self._pad = -self.real % tarfile.BLOCKSIZE
        k = self._pad if n is None or n < 0 else min(n, self._pad)
        self._pad -= k
        return bytes(k)


class _TarInfo(tarfile.TarInfo):
    # Parses each header under the guard of ``stream`` (a _Padded; set in
    # a subclass per layer).  tarfile.next() takes a bad or truncated
    # header after the first one for the end of the archive: remember it,
    # so that it can be refused.
    stream = None

    @classmethod
    def fromtarfile(cls, tf):
        outer = cls.stream.limit is None  # PAX and long names nest
        if outer:
            # tarfile reads ahead at most a record (RECORDSIZE) of what follows.
            cls.stream.limit = cls.stream.real + MAX_HEADER_DATA + tarfile.RECORDSIZE
        try:
            return super().fromtarfile(tf)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as e:
            cls.stream.bad_header = e
            raise
        finally:
            if outer:
                cls.stream.limit = None


def _entry_error(name, e):
    if isinstance(e, OSError) and e.errno in _MACHINE_ERRNOS:
        return OSError(e.errno, f"layer entry {name!r}: {e}", e.filename)
    return InvalidArgument(f"layer entry {name!r}: {e}")


def _lstat(name, dir_fd):
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _is_whiteout(st):
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _proc(fd, name=None):
    # Reach an fd's file by path (xattr calls, which have no *at form).
    return f"/proc/self/fd/{fd}" if name is None else f"/proc/self/fd/{fd}/{name}"


def _is_opaque(fd):
    try:
        return os.getxattr(_proc(fd), OVERLAY_OPAQUE_XATTR) == b"y"
    except OSError as e:
        if e.errno == errno.ENODATA:
            return False
        raise


def _time_ns(value, what, name):
    try:
        ns = int(Decimal(value) * 1_000_000_000)
    except (InvalidOperation, ValueError, TypeError):
        raise InvalidArgument(f"layer entry {name!r}: bad {what} {value!r}") from None
    if not -2**63 <= ns < 2**63:
        raise InvalidArgument(f"layer entry {name!r}: {what} {value!r} is out of range")
    return ns


def _times(ti):
    pax = ti.pax_headers
    mtime = _time_ns(pax.get("mtime", ti.mtime), "mtime", ti.name)
    atime = _time_ns(pax["atime"], "atime", ti.name) if "atime" in pax else mtime
    return atime, mtime


def _xattrs(ti):
    for key, value in ti.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            yield key[13:], value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            yield urllib.parse.unquote(key[17:]), base64.b64decode(value)


def _set_xattrs(target, pairs, name, follow=True):
    # ``target``: an fd, or a /proc path to a node that may be a symlink.
    for key, value in pairs:
        if key.startswith(_FORBIDDEN_XATTRS):
            log.warning("layer entry %r: xattr %s not applied (overlayfs metadata)", name, key)
            continue
        try:
            os.setxattr(target, key, value, follow_symlinks=follow)
        except OSError as e:
            # As containerd: a filesystem without that xattr namespace, or
            # user.* on a symlink or device (xattr(7)), is not fatal.
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP) or (
                    e.errno == errno.EPERM and not follow):
                log.warning("layer entry %r: xattr %s not applied: %s", name, key, e.strerror)
                continue
            raise


def _copy_fd(src, dst):
    while True:
        try:
            if os.copy_file_range(src, dst, 1 << 30) == 0:
                return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            break
    while data := os.read(src, 1 << 20):
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view):]


def _file_meta(ti):
    # What a regular file gets after its data: owner, mode, xattrs, times.
    return ti.uid, ti.gid, ti.mode & 0o7777, list(_xattrs(ti)), _times(ti)


def _write_file(pfd, base, src, regions, size, name, meta):
    """Create ``base`` in the directory ``pfd`` from the data ``regions``
    (offset, length) of ``src``; the rest of ``size`` bytes are holes."""
    uid, gid, mode, xattrs, times = meta
    fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=pfd)
    try:
        # A sparse entry lists its data regions; everything else is a hole.
        written = 0
        for offset, length in regions:
            src.seek(offset)
            written = _copy_region(src, fd, offset, length, name)
        if written < size:  # a hole at the end
            os.ftruncate(fd, size)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)  # after fchown, which clears setuid/setgid
        _set_xattrs(fd, xattrs, name)  # after fchown, which drops security.capability
        os.utime(fd, ns=times)
    finally:
        os.close(fd)


def _write_task(dfd, base, data, name, meta):
    # A writer thread's job: one small file whose bytes are in memory.
    try:
        _write_file(dfd, base, io.BytesIO(data), [(0, len(data))], len(data), name, meta)
    except InvalidArgument:
        raise
    except OSError as e:
        raise _entry_error(name, e) from e
    finally:
        os.close(dfd)


def _copy_region(src, fd, offset, length, name):
    # Returns the end of the data written: past it, the file is a hole.
    pos, end, written = offset, offset + length, 0
    while pos < end:
        data = src.read(min(_BLOCK, end - pos))
        if not data:
            raise InvalidArgument(f"layer entry {name!r}: tar stream ends inside its data")
        if data != _ZEROS[:len(data)]:
            _pwrite_all(fd, data, pos)
            written = pos + len(data)
        pos += len(data)
    return written


def _pwrite_all(fd, data, offset):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class _Applier:
    """One layer's application: the root and lower dir fds, the parent
    directory cache, and what this layer has written so far."""

    def __init__(self, root, mode, lower_dirs, max_entries, max_depth):
        self.overlay = mode == OVERLAY
        self.max_entries = max_entries
        self.max_depth = max_depth
        self.entries = 0
        # "a/b" paths this layer wrote, and their ancestors: whiteouts and
        # opaque markers must leave them alone.
        self.touched = set()
        self.ancestors = set()
        self.dir_times = {}
        self._cache = {}
        self._retired = []
        # Files handed to the writers: (dev, ino of the parent, name) while
        # pending, and the futures in submission order.
        self._pending = set()
        self._writes = collections.deque()
        self._writers = ThreadPoolExecutor(_WRITERS, thread_name_prefix="pyrun-apply")
        self.lower_fds = []
        self.root_fd = os.open(root, _PATH_DIR)
        self.root_path = os.readlink(_proc(self.root_fd))
        try:
            if self.overlay:
                for d in lower_dirs:
                    self.lower_fds.append(os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except BaseException:
            self.close()
            raise

    def close(self):
        # The writers finish before the fds close and before the caller
        # may remove the tree; their errors no longer matter here.
        for fut in self._writes:
            fut.exception()
        self._writers.shutdown()
        self._invalidate()
        self._close_retired()
        for fd in [self.root_fd, *self.lower_fds]:
            os.close(fd)
        self.lower_fds = []

    # -- the tar stream ---------------------------------------------------

    def apply(self, stream):
        stream = _Padded(stream)
        try:
            tf = tarfile.open(fileobj=stream, mode="r|",
                              tarinfo=type("_TarInfo", (_TarInfo,), {"stream": stream}),
                              encoding="utf-8", errors="surrogateescape")
        except tarfile.ReadError as e:
            if stream.real == 0:
                return  # an empty blob: a layer that changes nothing
            raise InvalidArgument(f"layer is not a tar stream: {e}") from None
        last, data_end = None, 0
        while True:
            try:
                ti = tf.next()
            except tarfile.TarError as e:
                raise InvalidArgument(f"corrupt tar stream after entry {last!r}: {e}") from None
            if ti is None:
                if stream.bad_header is not None:
                    raise InvalidArgument(f"corrupt tar header after entry {last!r}: "
                                          f"{stream.bad_header}")
                if data_end > stream.real:  # what _Padded added was not padding
                    raise InvalidArgument(f"layer entry {last!r}: tar stream ends inside its data")
                break
            tf.members.clear()  # tarfile keeps every header; we need none
            if ti.isreg():
                stored = sum(n for _, n in ti.sparse) if ti.sparse is not None else ti.size
                data_end = ti.offset_data + stored
                if tf.offset != ti.offset_data + -(-stored // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE:
                    raise InvalidArgument(f"layer entry {ti.name!r}: its sparse map does not "
                                          "match the size of its data")
            self.entries += 1
            if self.entries > self.max_entries:
                raise InvalidArgument(f"layer has more than {self.max_entries} entries "
                                      f"(at {ti.name!r})")
            try:
                self._entry(tf, ti)
            except InvalidArgument:
                raise
            except (OSError, tarfile.TarError) as e:
                raise _entry_error(ti.name, e) from e
            finally:
                self._close_retired()
            last = ti.name
        self._drain()
        self._set_dir_times()

    def _entry(self, tf, ti):
        name = ti.name
        parts = self._clean(name, name)
        if any(p.startswith(WHITEOUT_META_PREFIX) and p != WHITEOUT_OPAQUE for p in parts):
            return  # aufs metadata (.wh..wh.plnk, ...): not part of the tree
        self._check_header(ti)
        base = parts[-1] if parts else ""
        if base.startswith(WHITEOUT_PREFIX) or not parts or ti.islnk():
            self._drain()  # these look at and change whole trees
        if base == WHITEOUT_OPAQUE:
            self._opaque(parts[:-1], name)
        elif base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts[:-1], base[len(WHITEOUT_PREFIX):], name)
        elif not parts:
            self._root_entry(ti)
        elif ti.islnk():
            self._hardlink(ti, parts)
            self._touch(parts)
        else:
            self._create(tf, ti, parts)
            self._touch(parts)

    # -- files written by the helper threads ------------------------------

    def _drain(self):
        """Wait for every file handed to the writers; raise the first error."""
        while self._writes:
            self._writes.popleft().result()
        self._pending.clear()

    def _slot(self, pfd, base):
        st = os.fstat(pfd)
        return st.st_dev, st.st_ino, base

    def _settle(self, pfd, base):
        # Before looking at a name: if a writer may still be creating it,
        # wait, so that what follows sees what a sequential apply would.
        if self._pending and self._slot(pfd, base) in self._pending:
            self._drain()

    def _write_later(self, tf, ti, pfd, base):
        data = tf.extractfile(ti).raw.read(ti.size)
        if len(data) < ti.size:
            raise InvalidArgument(f"layer entry {ti.name!r}: tar stream ends inside its data")
        meta = _file_meta(ti)
        if len(self._writes) >= _IN_FLIGHT:
            self._writes.popleft().result()
        dfd = os.dup(pfd)
        try:
            fut = self._writers.submit(_write_task, dfd, base, data, ti.name, meta)
        except BaseException:
            os.close(dfd)
            raise
        self._writes.append(fut)
        self._pending.add(self._slot(pfd, base))

    def _clean(self, path, name):
        # Lexical clean against "/": "..", "." and empty components go,
        # ".." never above the root (containerd: filepath.Join("/", name)).
        if "\0" in path:
            raise InvalidArgument(f"layer entry {name!r}: NUL in path")
        parts = []
        for c in path.split("/"):
            if c == "..":
                if parts:
                    parts.pop()
            elif c not in ("", "."):
                parts.append(c)
        if len(parts) > self.max_depth:
            raise InvalidArgument(f"layer entry {name[:200]!r}...: {len(parts)} path components "
                                  f"(limit {self.max_depth})")
        return tuple(parts)

    def _check_header(self, ti):
        name = ti.name
        if ti.type not in _REGULAR and ti.type not in _NODES and ti.type not in (
                tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE):
            raise InvalidArgument(f"layer entry {name!r}: unsupported tar entry type {ti.type!r}")
        for what, value in (("uid", ti.uid), ("gid", ti.gid)):
            if not 0 <= value <= MAX_ID:
                raise InvalidArgument(f"layer entry {name!r}: {what} {value} is out of range "
                                      f"(0..{MAX_ID})")
        if ti.ischr() or ti.isblk():
            if not (0 <= ti.devmajor <= MAX_MAJOR and 0 <= ti.devminor <= MAX_MINOR):
                raise InvalidArgument(f"layer entry {name!r}: device number "
                                      f"{ti.devmajor}:{ti.devminor} is out of range "
                                      f"(major <= {MAX_MAJOR}, minor <= {MAX_MINOR})")

    def _touch(self, parts):
        self.touched.add("/".join(parts))
        for i in range(len(parts) - 1, 0, -1):
            key = "/".join(parts[:i])
            if key in self.ancestors:
                break
            self.ancestors.add(key)

    def _ours(self, key):
        return key in self.touched or key in self.ancestors

    # -- resolving directories inside the root ----------------------------

    def _invalidate(self):
        # A directory or symlink went away: cached resolutions may be stale.
        # The fds stay open until the current entry is done with them.
        self._retired.extend(self._cache.values())
        self._cache.clear()

    def _close_retired(self):
        for fd in self._retired:
            os.close(fd)
        self._retired = []

    def _lookup_dir(self, parts):
        """O_PATH fd of the directory ``parts`` resolves to inside the root,
        or None if it does not exist.  Owned by the cache."""
        key = "/".join(parts)
        fd = self._cache.get(key)
        if fd is None:
            try:
                fd = linux.openat2(self.root_fd, key or ".", _PATH_DIR, 0, _IN_ROOT)
            except linux.SyscallError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    return None
                raise
            self._cache_put(key, fd)
        return fd

    def _cache_put(self, key, fd):
        if len(self._cache) >= _CACHE_MAX:
            self._invalidate()
        self._cache[key] = fd

    def _parent(self, parts, name, hops=0):
        """Like _lookup_dir, but missing directories are created."""
        fd = self._lookup_dir(parts)
        if fd is not None:
            return fd
        # Find the longest prefix that exists, then make the rest in order
        # (a loop: the depth of a hostile name must not become recursion).
        i = len(parts) - 1
        while i > 0 and self._lookup_dir(parts[:i]) is None:
            i -= 1
        for j in range(i + 1, len(parts) + 1):
            fd = self._make_dir(parts[:j], self._lookup_dir(parts[:j - 1]), name, hops)
            self._cache_put("/".join(parts[:j]), fd)
        return fd

    def _make_dir(self, parts, pfd, name, hops):
        # The directory ``parts`` whose parent is open as ``pfd``: made if
        # missing, reached through a dangling symlink, or refused.
        base, path = parts[-1], "/".join(parts)
        self._settle(pfd, base)
        st = _lstat(base, pfd)
        opaque = False
        if st is not None and self.overlay and _is_whiteout(st):
            # This layer deleted the lower directory and now puts one back:
            # nothing of the lower one may show through.
            os.unlink(base, dir_fd=pfd)
            st, opaque = None, True
        if st is None:
            self._mkdir(pfd, base, name)
            self._init_dir(parts, pfd, base, opaque)
        elif stat.S_ISLNK(st.st_mode):
            # A symlink to a directory that does not exist yet: create it
            # where the link leads inside the root, as containerd does
            # (fs.RootPath, then MkdirAll).
            if hops >= _MAX_SYMLINKS:
                raise InvalidArgument(f"layer entry {name!r}: too many levels of symbolic links "
                                      f"at {path!r}")
            target = os.readlink(base, dir_fd=pfd)
            if not target.startswith("/"):
                target = "/".join(self._real_parts(pfd) + (target,))
            return os.dup(self._parent(self._clean(target, name), name, hops + 1))
        elif not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"layer entry {name!r}: parent {path!r} is not a directory")
        return os.open(base, _PATH_DIR | os.O_NOFOLLOW, dir_fd=pfd)

    def _mkdir(self, pfd, base, name):
        # Names are at most max_depth deep, but symlinks can lead deeper; a
        # tree deeper than that is refused too, since whoever walks it later
        # (removal, copies) must not run out of stack.
        depth = len(self._real_parts(pfd)) + 1
        if depth > self.max_depth:
            raise InvalidArgument(f"layer entry {name!r}: a directory {depth} levels below the "
                                  f"root (limit {self.max_depth})")
        os.mkdir(base, 0o700, dir_fd=pfd)

    def _real_parts(self, fd):
        # Where a directory fd really is, as components below the root.
        path = os.readlink(_proc(fd))
        if path == self.root_path:
            return ()
        if not path.startswith(self.root_path.rstrip("/") + "/"):
            raise InvalidArgument(f"directory {path!r} is not below the root {self.root_path!r}")
        return tuple(path[len(self.root_path.rstrip("/")) + 1:].split("/"))

    def _init_dir(self, parts, pfd, base, opaque):
        # A directory the layer needs but does not list: in overlay mode it
        # takes the lower layer's metadata, as overlayfs's copy-up would,
        # unless this layer deleted the lower one (``opaque``).
        found = None if opaque else self._lookup_lower(parts)
        if found is not None and stat.S_ISDIR(found[2].st_mode):
            lfd, lname, lst = found
            try:
                self._copy_meta(lfd, lname, lst, pfd, base, "/".join(parts))
            finally:
                os.close(lfd)
        else:
            if found is not None:
                os.close(found[0])
            os.chmod(base, 0o755, dir_fd=pfd)
        if opaque:
            os.setxattr(_proc(pfd, base), OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)

    def _remove(self, dfd, base, st):
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self._invalidate()
        remove_at(dfd, base)

    # -- lower layers (overlay mode) -------------------------------------

    def _lookup_lower(self, parts):
        """The entry ``parts`` names in the union of the lower dirs, seen
        through what the root holds so far and looked up as overlayfs does:
        per component, nearest layer first, stopping at a whiteout, a
        non-directory or an opaque directory.  (In the root only the
        parents count: its own entry at ``parts`` is what the caller
        makes.)  Returns ``(fd of its parent dir in that layer, name,
        stat)``, the fd the caller's to close, or None."""
        if not self.lower_fds or not parts:
            return None
        for layer, lfd in enumerate([self.root_fd, *self.lower_fds]):
            dfd, opaque = os.dup(lfd), False
            try:
                for i, comp in enumerate(parts if layer else parts[:-1]):
                    st = _lstat(comp, dfd)
                    if st is None:
                        break
                    if _is_whiteout(st):
                        return None
                    if i == len(parts) - 1:
                        found, dfd = (dfd, comp, st), -1
                        return found
                    if not stat.S_ISDIR(st.st_mode):
                        return None
                    sub = os.open(comp, _PATH_DIR | os.O_NOFOLLOW, dir_fd=dfd)
                    os.close(dfd)
                    dfd = sub
                    opaque = opaque or _is_opaque(dfd)
            finally:
                if dfd >= 0:
                    os.close(dfd)
            if opaque:
                return None
        return None

    def _lower_exists(self, parts, want_dir=False):
        found = self._lookup_lower(parts)
        if found is None:
            return False
        os.close(found[0])
        return stat.S_ISDIR(found[2].st_mode) or not want_dir

    def _visible_dir(self, parts):
        """Whether the merged view of the root over the lower dirs has a
        directory at ``parts``."""
        if self._lookup_dir(parts) is not None:
            return True
        pfd = self._lookup_dir(parts[:-1])
        if pfd is not None and _lstat(parts[-1], pfd) is not None:
            return False  # the root holds a non-directory there
        return self._lower_exists(parts, want_dir=True)

    def _copy_meta(self, sfd, sname, st, dfd, dname, key):
        os.chown(dname, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
        link = stat.S_ISLNK(st.st_mode)
        if not link:
            os.chmod(dname, stat.S_IMODE(st.st_mode), dir_fd=dfd)
        src = _proc(sfd, sname)
        pairs = ((x, os.getxattr(src, x, follow_symlinks=False))
                 for x in os.listxattr(src, follow_symlinks=False)
                 if not x.startswith(_FORBIDDEN_XATTRS))
        _set_xattrs(_proc(dfd, dname), pairs, key, follow=False)
        times = (st.st_atime_ns, st.st_mtime_ns)
        if stat.S_ISDIR(st.st_mode):
            self.dir_times.setdefault(key, times)
        else:
            os.utime(dname, ns=times, dir_fd=dfd, follow_symlinks=False)

    def _copy_up(self, parts):
        """Copy the lower layers' entry at ``parts`` into the root (for a
        hard link to it).  Returns (parent fd, stat) or None."""
        found = self._lookup_lower(parts)
        if found is None:
            return None
        lfd, lname, lst = found
        try:
            if stat.S_ISDIR(lst.st_mode):
                return None
            pfd = self._parent(parts[:-1], "/".join(parts))
            base, mode = parts[-1], lst.st_mode
            if stat.S_ISREG(mode):
                src = os.open(lname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lfd)
                try:
                    dst = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, 0o600, dir_fd=pfd)
                    try:
                        _copy_fd(src, dst)
                    finally:
                        os.close(dst)
                finally:
                    os.close(src)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(lname, dir_fd=lfd), base, dir_fd=pfd)
            else:
                os.mknod(base, stat.S_IFMT(mode) | 0o600, lst.st_rdev, dir_fd=pfd)
            self._copy_meta(lfd, lname, lst, pfd, base, "/".join(parts))
            return pfd, os.lstat(base, dir_fd=pfd)
        finally:
            os.close(lfd)

    # -- whiteouts --------------------------------------------------------

    def _whiteout(self, dir_parts, target, name):
        if target in ("", ".", ".."):
            raise InvalidArgument(f"layer entry {name!r}: whiteout of {target!r}")
        parts = dir_parts + (target,)
        ours = self._ours("/".join(parts))
        if not self.overlay:
            dfd = self._lookup_dir(dir_parts)
            st = _lstat(target, dfd) if dfd is not None else None
            if st is None:
                return
            if not ours:
                self._remove(dfd, target, st)
            elif stat.S_ISDIR(st.st_mode):
                self._prune_at(dfd, target, parts)
            return
        if ours:
            # Keep what this layer wrote; hide only the lower directory.
            dfd = self._lookup_dir(dir_parts)
            st = _lstat(target, dfd) if dfd is not None else None
            if st is not None and stat.S_ISDIR(st.st_mode):
                os.setxattr(_proc(dfd, target), OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
                self._prune_at(dfd, target, parts)
            return
        if self.lower_fds and not self._lower_exists(parts):
            # Nothing below to hide.  A whiteout here could only land in a
            # directory overlayfs does not merge, whose listing would show it.
            dfd = self._lookup_dir(dir_parts)
            st = _lstat(target, dfd) if dfd is not None else None
            if st is not None:  # copied up for a hard link
                self._remove(dfd, target, st)
            return
        dfd = self._parent(dir_parts, name)
        st = _lstat(target, dfd)
        if st is not None:
            if _is_whiteout(st):
                return
            self._remove(dfd, target, st)
        os.mknod(target, stat.S_IFCHR, 0, dir_fd=dfd)

    def _opaque(self, dir_parts, name):
        if not self.overlay:
            dfd = self._lookup_dir(dir_parts)
            if dfd is not None:
                self._prune_at(dfd, ".", dir_parts)
        elif not dir_parts:
            self._opaque_root()
        elif not self.lower_fds or self._visible_dir(dir_parts):
            dfd = self._parent(dir_parts, name)
            os.setxattr(_proc(dfd), OVERLAY_OPAQUE_XATTR, b"y")
            self._prune_at(dfd, ".", dir_parts)

    def _opaque_root(self):
        # overlayfs ignores the opaque xattr on its root directory: hide
        # each lower top-level entry with a whiteout instead.
        names = set()
        for lfd in self.lower_fds:
            names.update(os.listdir(lfd))
        for n in sorted(names):
            st = _lstat(n, self.root_fd)
            if self._ours(n):
                # Keep what this layer wrote, hide the lower directory.
                if st is not None and stat.S_ISDIR(st.st_mode):
                    os.setxattr(_proc(self.root_fd, n), OVERLAY_OPAQUE_XATTR, b"y",
                                follow_symlinks=False)
                    self._prune_at(self.root_fd, n, (n,))
                continue
            if st is not None:
                if _is_whiteout(st):
                    continue
                self._remove(self.root_fd, n, st)
            os.mknod(n, stat.S_IFCHR, 0, dir_fd=self.root_fd)

    def _prune_at(self, dfd, name, parts):
        # Delete what the directory holds that this layer did not write:
        # in native mode the lower layers' entries, in overlay mode what was
        # copied up for a hard link (the opaque xattr hides the rest).
        fd = os.open(name, _READ_DIR, dir_fd=dfd)
        try:
            for child in os.listdir(fd):
                cparts = parts + (child,)
                st = _lstat(child, fd)
                if st is None:
                    continue
                if not self._ours("/".join(cparts)):
                    self._remove(fd, child, st)
                elif stat.S_ISDIR(st.st_mode):
                    self._prune_at(fd, child, cparts)
        finally:
            os.close(fd)

    # -- entries ----------------------------------------------------------

    def _root_entry(self, ti):
        if not ti.isdir():
            raise InvalidArgument(f"layer entry {ti.name!r} names the root but is not a directory")
        fd = os.open(".", _READ_DIR, dir_fd=self.root_fd)
        try:
            self._dir_meta(fd, ti, "")
        finally:
            os.close(fd)

    def _dir_meta(self, fd, ti, key):
        os.fchown(fd, ti.uid, ti.gid)
        os.fchmod(fd, ti.mode & 0o7777)
        xattrs = dict(_xattrs(ti))
        # An entry for a directory that exists says all of its metadata:
        # xattrs it does not list go, as they would in overlay mode, where
        # the entry makes a new upper directory (overlayfs's own stay).
        for name in os.listxattr(fd):
            if name not in xattrs and not name.startswith(_FORBIDDEN_XATTRS):
                os.removexattr(fd, name)
        _set_xattrs(fd, xattrs.items(), ti.name)
        self.dir_times[key] = _times(ti)

    def _create(self, tf, ti, parts):
        name, base = ti.name, parts[-1]
        pfd = self._parent(parts[:-1], name)
        self._settle(pfd, base)
        st = _lstat(base, pfd)
        if ti.isdir() and st is not None and stat.S_ISDIR(st.st_mode):
            fd = os.open(base, _READ_DIR, dir_fd=pfd)
            try:
                self._dir_meta(fd, ti, "/".join(parts))
            finally:
                os.close(fd)
            return
        opaque = False
        if st is not None:
            # A directory in place of a whiteout, or of a file that hid the
            # lower directory: nothing of the lower one may show through.
            opaque = self.overlay and ti.isdir()
            if stat.S_ISDIR(st.st_mode):
                self._drain()  # pending files may lie below it
            self._remove(pfd, base, st)  # pfd stays valid: base is not on its path
        if ti.isdir():
            self._mkdir(pfd, base, name)
            fd = os.open(base, _READ_DIR, dir_fd=pfd)
            try:
                self._dir_meta(fd, ti, "/".join(parts))
                if opaque:
                    os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
        elif ti.type in _REGULAR and ti.sparse is None and ti.size <= _SMALL_FILE:
            self._write_later(tf, ti, pfd, base)
        elif ti.type in _REGULAR:
            self._regular(tf, ti, pfd, base)
        elif ti.issym():
            os.symlink(ti.linkname, base, dir_fd=pfd)
            self._node_meta(ti, pfd, base, chmod=False)
        else:
            dev = os.makedev(ti.devmajor, ti.devminor) if ti.ischr() or ti.isblk() else 0
            os.mknod(base, _NODES[ti.type] | 0o600, dev, dir_fd=pfd)
            self._node_meta(ti, pfd, base, chmod=True)

    def _node_meta(self, ti, pfd, base, chmod):
        # Symlinks and device nodes: no fd to work on, so by name in the
        # parent; never following a symlink.
        os.chown(base, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
        if chmod:  # base is the node just made, not a symlink
            os.chmod(base, ti.mode & 0o7777, dir_fd=pfd)
        _set_xattrs(_proc(pfd, base), _xattrs(ti), ti.name, follow=False)
        os.utime(base, ns=_times(ti), dir_fd=pfd, follow_symlinks=False)

    def _regular(self, tf, ti, pfd, base):
        regions = ti.sparse if ti.sparse is not None else [(0, ti.size)]
        _write_file(pfd, base, tf.extractfile(ti).raw, regions, ti.size,
                    ti.name, _file_meta(ti))

    def _hardlink(self, ti, parts):
        name, base = ti.name, parts[-1]
        target = self._clean(ti.linkname, name)
        if not target:
            raise InvalidArgument(f"layer entry {name!r}: hard link to the root directory")
        tpfd = self._lookup_dir(target[:-1])
        tst = _lstat(target[-1], tpfd) if tpfd is not None else None
        if tst is not None and self.overlay and _is_whiteout(tst):
            raise InvalidArgument(f"layer entry {name!r}: hard link target {ti.linkname!r} "
                                  "was deleted by this layer")
        if tst is None and self.overlay:
            copied = self._copy_up(target)
            if copied is not None:
                tpfd, tst = copied
        if tst is None:
            hint = "" if self.lower_fds or not self.overlay else " (no lower_dirs given)"
            raise InvalidArgument(f"layer entry {name!r}: hard link target {ti.linkname!r} "
                                  f"does not exist{hint}")
        if stat.S_ISDIR(tst.st_mode):
            raise InvalidArgument(f"layer entry {name!r}: hard link to directory {ti.linkname!r}")
        pfd = self._parent(parts[:-1], name)
        st = _lstat(base, pfd)
        if st is not None:
            if (st.st_dev, st.st_ino) == (tst.st_dev, tst.st_ino):
                return
            # The fds stay valid; if the target lived below what goes here,
            # linkat(2) fails with ENOENT.
            self._remove(pfd, base, st)
        os.link(target[-1], base, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)

    def _set_dir_times(self):
        # Last: creating entries in a directory changes its mtime.
        for key, times in self.dir_times.items():
            try:
                fd = linux.openat2(self.root_fd, key or ".", _READ_DIR, 0, _IN_ROOT)
            except linux.SyscallError:
                continue  # replaced later in the layer
            try:
                os.utime(fd, ns=times)
            finally:
                os.close(fd)
