"""Layer media types and their compression, read as a stream.

A layer blob is a tar stream, plain or compressed with gzip or zstd (OCI
image spec, layer.md and media-types.md; Docker image manifest v2.2).  The
media type says which, but registries and tools get it wrong often enough
that the compression actually used is taken from the stream's magic bytes,
as containerd's ``compression.DecompressStream`` does.  Nothing here
buffers more than one read: a layer of any size streams through.
"""
import gzip
import hashlib
import io
import queue
import threading
import zlib

import zstandard

from pyrun.errdefs import InvalidArgument, NotImplementedYet

GZIP = "gzip"
ZSTD = "zstd"
UNCOMPRESSED = "none"

# The media types of layers pyrun applies, and the compression each declares.
LAYER_MEDIA_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": UNCOMPRESSED,
    "application/vnd.oci.image.layer.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": UNCOMPRESSED,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar": UNCOMPRESSED,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": GZIP,
    "application/vnd.docker.image.rootfs.diff.tar.zstd": ZSTD,
}

_MAGIC = ((b"\x1f\x8b", GZIP), (b"\x28\xb5\x2f\xfd", ZSTD))
_MAGIC_LEN = 4
# Named only to give a clear error: formats some old tools wrote.
_UNSUPPORTED_MAGIC = ((b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))


def declared_compression(media_type):
    """The compression (GZIP, ZSTD or UNCOMPRESSED) that a layer media
    type declares.  Raises InvalidArgument for a type that is not a layer,
    NotImplementedYet for encrypted layers (``+encrypted``, ocicrypt)."""
    if media_type.endswith("+encrypted"):
        raise NotImplementedYet(f"encrypted layer media type {media_type!r} is not supported")
    try:
        return LAYER_MEDIA_TYPES[media_type]
    except KeyError:
        raise InvalidArgument(f"{media_type!r} is not a layer media type") from None


def detect(prefix):
    """The compression of a stream that starts with ``prefix`` (bytes, at
    least 4 unless the stream is shorter).  Raises InvalidArgument for
    bzip2 and xz, which no OCI or Docker layer type allows."""
    for magic, kind in _MAGIC:
        if prefix.startswith(magic):
            return kind
    for magic, kind in _UNSUPPORTED_MAGIC:
        if prefix.startswith(magic):
            raise InvalidArgument(f"layer is {kind}-compressed, which no layer media type allows")
    return UNCOMPRESSED


class DigestReader:
    """A read-only file object that hashes and counts every byte read
    through it.  ``digest()`` is ``"<algorithm>:<hex>"``, ``size`` bytes."""

    def __init__(self, fileobj, algorithm="sha256"):
        self._f = fileobj
        self._algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.size = 0

    def read(self, n=-1):
        data = self._f.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def drain(self, chunk=1 << 20):
        """Read to the end (the digest covers the whole stream)."""
        while self.read(chunk):
            pass

    def digest(self):
        return f"{self._algorithm}:{self._hash.hexdigest()}"


class ReadAhead(io.RawIOBase):
    """Reads ``fileobj`` in a helper thread, ``chunk`` bytes at a time and
    at most ``depth`` chunks ahead of the consumer, so that decompression
    and hashing (which release the GIL) run on another core while the
    consumer writes files.  An exception in the helper is raised again by
    the consumer's next read.  ``close()`` stops and joins the helper; use
    it as a context manager.
    """

    def __init__(self, fileobj, chunk=1 << 20, depth=4):
        super().__init__()
        self._f = fileobj
        self._chunk = chunk
        self._queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._buf = memoryview(b"")
        self._eof = False
        self._thread = threading.Thread(target=self._run, name="pyrun-readahead", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                data = self._f.read(self._chunk)
                self._put(data)
                if not data:
                    return
        except BaseException as e:  # handed to the consumer
            self._put(e)

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def readable(self):
        return True

    def readinto(self, b):
        if self.closed:
            raise ValueError("read from a closed ReadAhead")
        if not self._buf:
            if self._eof:
                return 0
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return 0
            self._buf = memoryview(item)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self):
        if not self.closed:
            self._stop.set()
            self._thread.join()
        super().close()


class _Prefixed:
    # The bytes already read to sniff the magic, then the rest of the stream.
    def __init__(self, prefix, fileobj):
        self._prefix = prefix
        self._f = fileobj

    def read(self, n=-1):
        if self._prefix:
            if n is None or n < 0:
                data, self._prefix = self._prefix + self._f.read(), b""
                return data
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        return self._f.read(n)


class _Translated:
    # Turns the decompressors' own exceptions into InvalidArgument at this
    # module's edge, naming the compression.
    _ERRORS = (gzip.BadGzipFile, EOFError, zlib.error, zstandard.ZstdError)

    def __init__(self, fileobj, kind):
        self._f = fileobj
        self._kind = kind

    def read(self, n=-1):
        try:
            return self._f.read(n)
        except self._ERRORS as e:
            raise InvalidArgument(f"corrupt {self._kind} layer stream: {e}") from None


def decompressed(fileobj, media_type=None):
    """Open the layer stream ``fileobj`` (anything with ``read(n)``) for
    reading its tar stream.  Returns ``(reader, compression)``.

    ``media_type``, if given, must be a layer media type; the compression
    used is detected from the magic bytes whatever the type declares.
    ``reader.read`` raises InvalidArgument on a corrupt stream.
    """
    if media_type is not None:
        declared_compression(media_type)
    prefix = b""
    while len(prefix) < _MAGIC_LEN:
        more = fileobj.read(_MAGIC_LEN - len(prefix))
        if not more:
            break
        prefix += more
    kind = detect(prefix)
    stream = _Prefixed(prefix, fileobj)
    if kind == GZIP:
        return _Translated(gzip.GzipFile(fileobj=stream, mode="rb"), kind), kind
    if kind == ZSTD:
        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True,
                                                            closefd=False)
        return _Translated(reader, kind), kind
    return stream, kind
