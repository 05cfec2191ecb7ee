"""Pull: resolve a reference, choose manifests, stream blobs into a store.

Blobs stream straight into the content store's writer (nothing is visible
before the store's commit, which checks size and digest).  An interrupted
download resumes from the writer's offset with a Range request; two
processes wanting the same blob meet at the writer's lock, and the second
waits until the first has committed.  Children are committed before their
parents, so a stored index or manifest implies its content is there too.
Behaviour matched: containerd's ``remotes.FetchHandler``/``content.Copy``
(refs ``layer-<digest>`` etc., resume by offset) and its gc labels.
"""
import time
from concurrent.futures import ThreadPoolExecutor

from pyrun.content import Info
from pyrun.errdefs import AlreadyExists, InvalidArgument, NotFound, PyrunError, Unavailable
from pyrun.registry.client import Client
from pyrun.registry.manifest import (Descriptor, Index, children, gc_labels, is_index,
                                     parse_manifest, parse_platform, select_manifests)
from pyrun.registry.progress import Progress
from pyrun.registry.reference import Reference, parse_reference
from pyrun.registry.transport import TransportError, iter_body

CONCURRENCY = 3          # parallel blob downloads (containerd's default)
LOCK_POLL = (0.05, 1.0)  # seconds: first and largest wait for another writer
from pyrun.registry.manifest import MAX_INDEX_DEPTH as MAX_DEPTH  # noqa: E402


def ref_key(desc):
    """The ingest ref for a descriptor, the same in every process so that
    concurrent pulls of one blob share it (containerd's ``MakeRefKey``)."""
    mt = desc.media_type
    kind = ("index" if is_index(mt) else "manifest" if "manifest" in mt
            else "layer" if "layer" in mt else "config" if "config" in mt else "unknown")
    return f"{kind}-{desc.digest}"


def open_writer(store, ref, desc, sleep=time.sleep):
    """A writer for ``desc`` under ``ref``, or None when the store already
    has the blob.  While another process holds the ref, wait (polling with
    backoff) until it commits or lets go."""
    delay = LOCK_POLL[0]
    while True:
        try:
            return store.writer(ref, total=desc.size, expected=desc.digest)
        except AlreadyExists:
            return None
        except Unavailable:
            try:
                store.info(desc.digest)
                return None
            except NotFound:
                sleep(delay)
                delay = min(LOCK_POLL[1], delay * 2)


def _commit(store, ref, writer, desc, labels, source):
    """Commit, or on a size/digest mismatch drop the ingest and raise
    InvalidArgument naming the blob and where it came from."""
    try:
        writer.commit(desc.size, desc.digest, labels)
    except AlreadyExists:
        pass
    except PyrunError as e:
        writer.close()
        _abort(store, ref)
        raise InvalidArgument(f"blob {desc.digest} from {source} rejected, nothing stored: {e}") from None
    writer.close()


def _abort(store, ref):
    try:
        store.abort(ref)
    except NotFound:
        pass


def store_bytes(store, desc, data, labels=None, source="registry"):
    """Write ``data`` (bytes already checked against ``desc``) into the
    store with ``labels``.  A blob already present gets the labels set
    (containerd's pull does the same, so gc keeps a re-pulled image's
    children)."""
    ref = ref_key(desc)
    writer = open_writer(store, ref, desc)
    if writer is not None:
        try:
            writer.truncate(0)
            writer.write(data)
        except BaseException:
            writer.close()
            raise
        _commit(store, ref, writer, desc, labels, source)
    if labels:
        current = store.info(desc.digest).labels
        if any(current.get(k) != v for k, v in labels.items()):
            store.update(Info(desc.digest, labels=labels), [f"labels.{k}" for k in labels])


def fetch_blob(repo, store, desc, progress=None, sleep=time.sleep):
    """Download one blob into ``store`` unless it is already there.

    Resumes from the ingest's offset with a Range request (starting over if
    the registry ignores the range), retries a dropped connection with
    backoff, and stops a body that runs past ``desc.size``.  Raises
    InvalidArgument (wrong size or digest; the ingest is removed),
    TransportError after the retries, or the client's HTTP errors.
    """
    progress = progress or Progress()
    ref = ref_key(desc)
    progress.add(desc.digest, desc.size)
    writer = open_writer(store, ref, desc, sleep)
    if writer is None:
        progress.done(desc.digest, "exists")
        return
    try:
        _download(repo, writer, desc, progress, sleep)
    except InvalidArgument:
        writer.close()
        _abort(store, ref)
        raise
    except BaseException:
        writer.close()
        raise
    _commit(store, ref, writer, desc, None, repo)
    progress.done(desc.digest)


def _download(repo, writer, desc, progress, sleep):
    attempt = 0
    while True:
        offset = writer.status().offset
        if offset > desc.size:
            writer.truncate(0)
            offset = 0
        if offset == desc.size:
            return
        resp = repo.open_blob(desc.digest, offset)
        try:
            if offset and resp.status_code != 206:
                writer.truncate(0)
                offset = 0
            progress.update(desc.digest, offset)
            for chunk in iter_body(resp):
                if offset + len(chunk) > desc.size:
                    raise InvalidArgument(f"blob {desc.digest} from {repo}: registry sent more than "
                                          f"the {desc.size} bytes its descriptor gives; nothing stored")
                writer.write(chunk)
                offset += len(chunk)
                progress.update(desc.digest, offset)
            if offset < desc.size:
                raise TransportError(f"blob {desc.digest} from {repo}: body ended at byte {offset} "
                                     f"of {desc.size}")
            return
        except TransportError:
            if attempt >= repo.client.retries:
                raise
            sleep(repo.client.backoff_delay(attempt))
            attempt += 1
        finally:
            resp.close()


def pull(ref, store, *, client=None, platform=None, all_platforms=False,
         concurrency=CONCURRENCY, progress=None, while_fetching=None):
    """Pull an image into a content store.

    ``ref``: a reference string or :class:`Reference`.  ``store``: a
    content store (``writer``/``info``/``update``/``abort``).
    ``platform``: a :class:`~pyrun.registry.manifest.Platform` or a string
    like ``"linux/arm64/v8"`` to choose from an index (default the host's); ``all_platforms`` takes every entry.  Blobs
    download ``concurrency`` at a time.

    Returns ``(name, root descriptor, [manifest descriptors chosen])`` where
    ``name`` is the normalised reference.  Manifests and indexes are stored
    with containerd's gc labels (``containerd.io/gc.ref.content.config``,
    ``.l.<i>`` and ``.m.<i>``).  Raises InvalidArgument (bad reference,
    digest mismatch, malformed manifest), NotImplementedYet (schema1),
    NotFound (unknown image, no manifest for the platform), and the
    client's errors (refused, unreachable).

    With the metadata layer, pass a store bound to a lease
    (``db.content_store(ns, lease=…)``) so that garbage collection cannot
    take the blobs before an image record points at ``root``.

    ``while_fetching(manifests, wait)``, if given, runs in the calling
    thread while the blobs download (config first, then the layers in
    order): ``manifests`` is the list of ``(descriptor, Manifest)``
    chosen, and ``wait(digest)`` blocks until that blob is committed (or
    raises its download's error).  Unpacking layers as they arrive uses
    it.  If it raises, the downloads not started yet are cancelled and
    the error propagates; the manifests are then not stored.
    """
    ref = ref if isinstance(ref, Reference) else parse_reference(ref)
    if isinstance(platform, str):
        platform = parse_platform(platform)
    client = client or Client()
    progress = progress or Progress()
    repo = client.repository(ref)
    head, data = repo.get_manifest(ref.object)
    doc = parse_manifest(data, head.media_type, f"{ref}")
    root = Descriptor(doc.media_type, head.digest, head.size)

    documents = []   # (descriptor, bytes, labels), children before parents
    manifests = []   # (descriptor, Manifest)
    blobs = {}

    def walk(desc, doc, data, depth):
        if isinstance(doc, Index):
            if depth >= MAX_DEPTH:
                raise InvalidArgument(f"{ref}: indexes nested deeper than {MAX_DEPTH}")
            kept = select_manifests(doc, platform, all_platforms)
            for entry in kept:
                _, child_data = repo.get_manifest(entry.digest, expected=entry.digest)
                what = f"{ref}: manifest {entry.digest}"
                walk(entry, parse_manifest(child_data, entry.media_type, what), child_data, depth + 1)
            documents.append((desc, data, gc_labels(doc, kept)))
        else:
            manifests.append((desc, doc))
            for child in children(doc):
                blobs.setdefault(child.digest, child)
            documents.append((desc, data, gc_labels(doc)))

    walk(root, doc, data, 0)
    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = {d: pool.submit(fetch_blob, repo, store, b, progress)
                       for d, b in blobs.items()}
            try:
                if while_fetching is not None:
                    while_fetching(manifests, lambda digest: futures[digest].result())
                for fut in futures.values():
                    fut.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
        for desc, data, labels in documents:
            store_bytes(store, desc, data, labels, str(repo))
    finally:
        progress.close()
    return str(ref), root, [desc for desc, _ in manifests]
