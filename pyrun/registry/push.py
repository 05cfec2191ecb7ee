"""Push: upload an image from a content store to a registry.

Order (the distribution spec's, and containerd's ``remotes.PushContent``):
blobs first (HEAD to skip those present; a cross-repository mount when a
source repository is given; else a monolithic or chunked upload), then
manifests by digest, then the root by tag (or digest).  A registry checks
that what a manifest refers to exists, so children always go first.
"""
from concurrent.futures import ThreadPoolExecutor

from pyrun.errdefs import InvalidArgument, NotFound, Unavailable
from pyrun.registry.client import Client
from pyrun.registry.manifest import Index, children, is_index, is_manifest, parse_manifest
from pyrun.registry.reference import Reference, parse_reference

CHUNK_SIZE = 8 << 20  # bytes; larger blobs go up in PATCH chunks of this size
CONCURRENCY = 3


class _Section:
    """A file-like view of a store reader for requests to stream from."""

    def __init__(self, reader, size):
        self.reader, self.size, self.offset = reader, size, 0

    def __len__(self):
        return self.size - self.offset

    def seek(self, offset):
        self.offset = offset

    def read(self, n=-1):
        left = self.size - self.offset
        n = left if n is None or n < 0 else min(n, left)
        data = self.reader.read_at(n, self.offset) if n else b""
        self.offset += len(data)
        return data


def upload_blob(repo, store, desc, mount_from=None, chunk_size=CHUNK_SIZE):
    """Make ``repo`` hold the blob ``desc`` from ``store``.

    Returns ``"exists"``, ``"mounted"`` or ``"uploaded"``.  ``mount_from``
    is a repository path on the same registry that may hold the blob.
    Blobs up to ``chunk_size`` bytes go in one PUT, larger ones in PATCH
    chunks; Location answers (relative or absolute) are followed.  Raises
    NotFound if the store lacks the blob, and the client's errors.
    """
    if repo.blob_exists(desc.digest):
        return "exists"
    if mount_from and mount_from != repo.path:
        mounted, location = repo.start_upload(desc.digest, mount_from)
        if mounted:
            return "mounted"
    else:
        _, location = repo.start_upload()
    try:
        with store.reader(desc.digest) as reader:
            if desc.size <= chunk_size:
                repo.finish_upload(location, desc.digest, _Section(reader, desc.size), desc.size)
                return "uploaded"
            offset = 0
            while offset < desc.size:
                data = reader.read_at(min(chunk_size, desc.size - offset), offset)
                if not data:
                    raise NotFound(f"push: blob {desc.digest} in the content store ends at byte "
                                   f"{offset} of {desc.size}")
                location = repo.upload_chunk(location, data, offset)
                offset += len(data)
        repo.finish_upload(location, desc.digest)
    except BaseException:
        repo.cancel_upload(location)
        raise
    return "uploaded"


def _upload_with_retries(repo, store, desc, mount_from, chunk_size):
    # An upload session cannot be resumed portably: start over, with backoff.
    attempt = 0
    while True:
        try:
            return upload_blob(repo, store, desc, mount_from, chunk_size)
        except Unavailable:
            if attempt >= repo.client.retries:
                raise
            repo.client.sleep(repo.client.backoff_delay(attempt))
            attempt += 1


def _read_all(store, desc):
    try:
        with store.reader(desc.digest) as r:
            return r.read_at(desc.size, 0)
    except NotFound:
        raise NotFound(f"push: {desc.media_type} {desc.digest} is not in the content store") from None


def push(ref, store, root, *, client=None, mount_from=None, chunk_size=CHUNK_SIZE,
         concurrency=CONCURRENCY):
    """Push the image rooted at ``root`` (a Descriptor of a manifest or
    index in ``store``) to ``ref`` (a string or Reference; its tag, else
    its digest, names the root).

    Every blob the root reaches must be in the store (an index pulled for
    one platform cannot be pushed whole: NotFound names the missing
    manifest).  ``mount_from`` is a repository path on the same registry to
    mount blobs from.  Returns the list of ``(digest, "exists"|"mounted"|
    "uploaded")`` for the blobs.  Raises NotFound, InvalidArgument
    (malformed manifest in the store) and the client's errors.
    """
    ref = ref if isinstance(ref, Reference) else parse_reference(ref)
    client = client or Client()
    repo = client.repository(ref, push=True)

    documents, blobs = [], {}

    def walk(desc):
        data = _read_all(store, desc)
        doc = parse_manifest(data, desc.media_type, f"{desc.media_type} {desc.digest}")
        if isinstance(doc, Index):
            for entry in doc.manifests:
                if is_index(entry.media_type) or is_manifest(entry.media_type):
                    walk(entry)
        else:
            for child in children(doc):
                blobs.setdefault(child.digest, child)
        documents.append((desc, data))

    walk(root)
    if ref.digest and ref.digest != root.digest:
        raise InvalidArgument(f"push: {ref} names digest {ref.digest} but the root is {root.digest}")
    for desc in blobs.values():  # fail before anything is sent
        try:
            store.info(desc.digest)
        except NotFound:
            raise NotFound(f"push: {desc.media_type} {desc.digest} is not in the content store") from None
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [(d.digest, pool.submit(_upload_with_retries, repo, store, d, mount_from,
                                          chunk_size)) for d in blobs.values()]
        try:
            results = [(digest, fut.result()) for digest, fut in futures]
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    for desc, data in documents[:-1]:
        repo.put_manifest(desc.digest, data, desc.media_type)
    desc, data = documents[-1]
    repo.put_manifest(ref.tag or desc.digest, data, desc.media_type)
    return results
