"""Import and export of images: OCI image layouts (a directory or a tar)
and docker-archive tars (``docker save``).

OCI image layout (image-spec image-layout.md): ``oci-layout``
(``{"imageLayoutVersion": "1.0.0"}``), ``index.json`` whose entries carry
the name in ``org.opencontainers.image.ref.name`` (and, as containerd
writes it, the full name in ``io.containerd.image.name``), and the blobs
under ``blobs/<alg>/<hex>``.  Blobs are copied byte for byte, so an
exported image imports elsewhere with the same digests.

docker-archive (Docker's ``image/spec/v1.2.md`` and ``docker save``):
``manifest.json`` lists each image's ``Config`` json, its ``RepoTags``
and its ``Layers`` tars; ``repositories`` maps repository -> tag -> top
layer id.  There is no registry manifest in it, so import builds a Docker
schema2 manifest (as containerd's importer does); the config digest (the
image ID) and the layer digests round-trip, and re-exporting an imported
image gives the same manifest digest again.

Safety.  Import reads archive members only into the content store, never
onto the filesystem, and refuses members whose names are absolute or
contain ``..``, links that lead out of the archive, and blobs whose bytes do not hash to their name or
descriptor (the content store checks every commit).  Everything is written
under a lease that is deleted at the end, so what a failed import wrote
goes at the next GC.  Exports are written next to the destination and
renamed into place at the end: a failed export leaves nothing.
"""
import io
import json
import os
import posixpath
import secrets
import stat
import tarfile
from datetime import timedelta

from pyrun.content.digest import digest_bytes, digester, parse_digest
from pyrun.errdefs import FailedPrecondition, InvalidArgument, NotFound, PyrunError
from pyrun.fsutil import remove_tree
from pyrun.images.compression import GZIP, UNCOMPRESSED, ZSTD, detect
from pyrun.images.store import ImageStore, resolve_manifest
from pyrun.images.unpack import MAX_JSON, read_manifest, read_small
from pyrun.registry.fetch import store_bytes
from pyrun.registry.manifest import (DOCKER_MANIFEST, OCI_INDEX, Descriptor, Index, Manifest,
                                     children, gc_labels, parse_manifest, parse_platform,
                                     platform_matches, verify_digest)
from pyrun.registry.reference import Reference, parse_reference

REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
LAYOUT_VERSION = "1.0.0"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYERS = {UNCOMPRESSED: "application/vnd.docker.image.rootfs.diff.tar",
                 GZIP: "application/vnd.docker.image.rootfs.diff.tar.gzip",
                 ZSTD: "application/vnd.docker.image.rootfs.diff.tar.zstd"}
IMPORT_LEASE_EXPIRY = timedelta(hours=24)
_CHUNK = 1 << 20


# --- reading archives ----------------------------------------------------------


def _member_name(name, where):
    """The normalised member path; InvalidArgument for an absolute path or
    one with a ``..`` component (it would name something outside)."""
    if name.startswith("/") or ".." in name.split("/"):
        raise InvalidArgument(f"{where}: member {name!r} escapes the archive "
                              "(absolute path or '..'); refusing it")
    name = posixpath.normpath(name)
    return "" if name == "." else name


class _TarSource:
    """Members of a tar file, by normalised name (random access)."""

    def __init__(self, path):
        self.where = path
        try:
            self.tar = tarfile.open(path, "r:")
        except (tarfile.TarError, OSError) as e:
            raise InvalidArgument(f"{path}: not a readable tar archive: {e}") from None
        self.members = {}
        links = {}
        try:
            members = self.tar.getmembers()
        except (tarfile.TarError, EOFError) as e:
            self.tar.close()
            raise InvalidArgument(f"{path}: a damaged or truncated tar archive: {e}") from None
        for m in members:
            name = _member_name(m.name, path)
            if m.isfile() or m.issym() or m.islnk():
                if name in self.members or name in links:
                    raise InvalidArgument(f"{path}: member {name!r} appears twice")
                if m.isfile():
                    self.members[name] = m
                else:
                    # skopeo's docker-archive links <id>/layer.tar to
                    # <diffid>.tar: follow links inside the archive only.
                    target = m.linkname if m.islnk() else \
                        posixpath.join(posixpath.dirname(name), m.linkname)
                    target = posixpath.normpath(target)
                    if target.startswith("/") or target.split("/")[0] == "..":
                        raise InvalidArgument(f"{path}: member {m.name!r} links to "
                                              f"{m.linkname!r}, outside the archive; refusing it")
                    links[name] = target
        for name, target in links.items():
            seen = {name}
            while target in links and target not in seen:
                seen.add(target)
                target = links[target]
            if target not in self.members:
                raise InvalidArgument(f"{path}: member {name!r} links to {target!r}, which is "
                                      "not a regular file of the archive")
            self.members[name] = self.members[target]

    def exists(self, name):
        return name in self.members

    def size(self, name):
        return self._get(name).size

    def open(self, name):
        return self.tar.extractfile(self._get(name))

    def _get(self, name):
        try:
            return self.members[name]
        except KeyError:
            raise NotFound(f"{self.where}: no member {name!r}") from None

    def close(self):
        self.tar.close()


class _DirSource:
    """Regular files below an OCI layout directory (no symlinks followed)."""

    def __init__(self, path):
        self.where = path
        self.root = os.path.abspath(path)

    def _path(self, name):
        name = _member_name(name, self.where)
        path = self.root
        for part in name.split("/"):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise NotFound(f"{self.where}: no file {name!r}") from None
            if stat.S_ISLNK(st.st_mode):
                raise InvalidArgument(f"{self.where}: {name!r}: {part!r} is a symbolic link; "
                                      "image layouts hold regular files only")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"{self.where}: {name!r} is not a regular file")
        return path, st

    def exists(self, name):
        try:
            self._path(name)
        except NotFound:
            return False
        return True

    def size(self, name):
        return self._path(name)[1].st_size

    def open(self, name):
        path, _ = self._path(name)
        return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")

    def close(self):
        pass


def _open_source(path):
    if os.path.isdir(path):
        return _DirSource(path)
    return _TarSource(path)


def _read_small(src, name):
    if src.size(name) > MAX_JSON:
        raise InvalidArgument(f"{src.where}: {name!r} is larger than {MAX_JSON} bytes")
    with src.open(name) as f:
        return f.read()


def _load_json(src, name):
    try:
        return json.loads(_read_small(src, name))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{src.where}: {name} is not valid JSON: {e}") from None


def _copy_blob(src, name, store, desc):
    """Stream member ``name`` into ``store`` as the blob ``desc``; the
    store's commit checks size and digest."""
    if _has(store, desc.digest):
        return
    with src.open(name) as f:
        try:
            _stream(store, f"import-{desc.digest}", f, b"", desc.size, desc.digest)
        except FailedPrecondition as e:
            raise InvalidArgument(f"{src.where}: blob {name!r} does not match its "
                                  f"descriptor {desc.digest} ({desc.size} bytes): {e}") from None


def _stream(store, ref, f, head, size, expected):
    """Write ``head`` and the rest of ``f`` as ingest ``ref`` and commit it
    (with ``expected`` None: under the digest of what was written).  A
    failure discards the ingest.  Returns the digest."""
    writer = store.writer(ref, total=size, expected=expected)
    try:
        writer.truncate(0)
        dg = digester(parse_digest(expected)[0] if expected else "sha256")
        chunk = head or f.read(_CHUNK)
        while chunk:
            dg.update(chunk)
            writer.write(chunk)
            chunk = f.read(_CHUNK)
        digest = f"{dg.name}:{dg.hexdigest()}"
        if expected is None and _has(store, digest):  # a layer an earlier image shares
            writer.close()
            _abort(store, ref)
        else:
            writer.commit(size, expected or digest)
        return digest
    except BaseException:
        writer.close()
        _abort(store, ref)
        raise
    finally:
        writer.close()


def _has(store, digest):
    try:
        store.info(digest)
    except NotFound:
        return False
    return True


def _abort(store, ref):
    try:
        store.abort(ref)
    except NotFound:
        pass


def _blob_name(digest):
    alg, hexpart = parse_digest(digest)
    return f"blobs/{alg}/{hexpart}"


def _import_oci(src, store, base_name, index_name=None):
    """Copy what index.json reaches into ``store``; returns [(name, desc)],
    with ``index_name`` naming index.json itself (stored as a blob)."""
    layout = _load_json(src, "oci-layout")
    if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != LAYOUT_VERSION:
        raise InvalidArgument(f"{src.where}: oci-layout: unsupported imageLayoutVersion "
                              f"{layout.get('imageLayoutVersion') if isinstance(layout, dict) else layout!r}")
    data = _read_small(src, "index.json")
    index = parse_manifest(data, OCI_INDEX, f"{src.where}: index.json")
    if not isinstance(index, Index):
        raise InvalidArgument(f"{src.where}: index.json is not an image index")
    named = []
    for entry in index.manifests:
        _import_tree(src, store, entry, 0)
        name = _entry_name(entry, base_name)
        if name:
            named.append((name, Descriptor(entry.media_type, entry.digest, entry.size)))
    if index_name:
        desc = Descriptor(OCI_INDEX, digest_bytes(data), len(data))
        store_bytes(store, desc, data, gc_labels(index), src.where)
        named.append((index_name, desc))
    return named


def _import_tree(src, store, desc, depth):
    """Import ``desc`` and its children, children first (so a stored
    manifest implies its blobs).  Index entries absent from the archive
    (platforms not saved) are skipped; a manifest's blobs must all be
    there."""
    if depth > 4:
        raise InvalidArgument(f"{src.where}: indexes nested deeper than 4")
    name = _blob_name(desc.digest)
    data = _read_small(src, name)
    what = f"{src.where}: {name}"
    if len(data) != desc.size:
        raise InvalidArgument(f"{what}: content does not match its descriptor: "
                              f"{len(data)} bytes, expected {desc.size}")
    verify_digest(data, desc.digest, f"{what}: content does not match its descriptor")
    doc = parse_manifest(data, desc.media_type, what)
    if isinstance(doc, Index):
        kept = [e for e in doc.manifests if src.exists(_blob_name(e.digest))]
        if not kept:
            raise NotFound(f"{what}: none of the index's manifests is in the archive")
        for entry in kept:
            _import_tree(src, store, entry, depth + 1)
        labels = gc_labels(doc, kept)
    else:
        for child in children(doc):
            _copy_blob(src, _blob_name(child.digest), store, child)
        labels = gc_labels(doc)
    store_bytes(store, desc, data, labels, src.where)


def _entry_name(entry, base_name):
    ann = entry.annotations or {}
    if ann.get(IMAGE_NAME):
        return ann[IMAGE_NAME]
    ref_name = ann.get(REF_NAME)
    if not ref_name:
        return f"{base_name}@{entry.digest}" if base_name else None
    # A ref.name with "/", ":" or "@" is a whole reference already, as
    # containerd's import reads it; else it is a tag.
    if base_name and not any(c in ref_name for c in "/:@"):
        return f"{base_name}:{ref_name}"
    return ref_name


def _import_docker(src, store):
    """Import a docker-archive; returns [(name, manifest desc)]."""
    entries = _load_json(src, "manifest.json")
    if not isinstance(entries, list):
        raise InvalidArgument(f"{src.where}: manifest.json is not a list")
    named = []
    for i, e in enumerate(entries):
        where = f"{src.where}: manifest.json[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("Config"), str) \
                or not isinstance(e.get("Layers"), list) \
                or not all(isinstance(x, str) for x in e["Layers"]):
            raise InvalidArgument(f"{where}: needs Config (a path) and Layers (a list of paths)")
        config = _read_small(src, _member_name(e["Config"], src.where))
        config_desc = Descriptor(DOCKER_CONFIG, digest_bytes(config), len(config))
        store_bytes(store, config_desc, config, None, src.where)
        layers = [_import_layer(src, _member_name(p, src.where), store) for p in e["Layers"]]
        manifest = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                               "config": config_desc.to_dict(),
                               "layers": [d.to_dict() for d in layers]},
                              indent=3).encode()
        desc = Descriptor(DOCKER_MANIFEST, digest_bytes(manifest), len(manifest))
        store_bytes(store, desc, manifest, gc_labels(Manifest(DOCKER_MANIFEST, config_desc,
                                                              tuple(layers))), src.where)
        tags = e.get("RepoTags") or []
        if not isinstance(tags, list):
            raise InvalidArgument(f"{where}: RepoTags is not a list")
        for tag in tags:
            named.append((str(parse_reference(tag)), desc))
    return named


def _import_layer(src, name, store):
    """Stream a layer member into the store; its descriptor (media type
    from the compression its first bytes show)."""
    size = src.size(name)
    with src.open(name) as f:
        head = f.read(_CHUNK)
        media_type = DOCKER_LAYERS[detect(head)]
        digest = _stream(store, f"import-layer-{secrets.token_hex(8)}", f, head, size, None)
    return Descriptor(media_type, digest, size)


def import_archive(db, namespace, path, *, base_name=None, index_name=None):
    """Import the images of ``path`` (an OCI layout directory, an OCI
    layout tar, or a docker-archive tar; told apart by their files) into
    ``namespace`` of the metadata ``db``.  Returns the
    :class:`~pyrun.metadata.Image` records made or moved, in archive order.

    Names: docker-archive ``RepoTags`` (normalised, e.g.
    ``docker.io/library/busybox:latest``); for OCI, the entry's
    ``io.containerd.image.name``, else ``<base_name>:<ref.name>`` with
    ``base_name`` when ref.name is a bare tag, else the ``ref.name``
    itself (containerd's ``ctr images import --base-name``).  Entries without a name are
    imported as ``<base_name>@<digest>`` when a base name is given, and
    not recorded otherwise.  ``index_name`` also records the layout's
    index.json itself under that name (ctr's ``--index-name``; OCI
    layouts only).  Raises InvalidArgument for a malformed or hostile
    archive (naming the member), NotFound for a missing blob.
    """
    src = _open_source(path)
    leases = db.leases(namespace)
    try:
        lease = leases.create(expire=IMPORT_LEASE_EXPIRY, labels={"pyrun.import": str(path)})
    except BaseException:
        src.close()
        raise
    try:
        store = db.content_store(namespace, lease=lease.id)
        if src.exists("index.json") and src.exists("oci-layout"):
            named = _import_oci(src, store, base_name, index_name)
        elif src.exists("manifest.json"):
            if index_name:
                raise InvalidArgument(f"{path}: a docker-archive has no index to name; "
                                      "--index-name applies to OCI layouts")
            named = _import_docker(src, store)
        else:
            raise InvalidArgument(f"{path}: neither an OCI image layout (oci-layout, index.json) "
                                  "nor a docker-archive (manifest.json)")
        images = ImageStore(db, namespace)
        return [images.set(name, desc) for name, desc in named]
    finally:
        src.close()
        leases.delete(lease.id)


# --- writing archives ----------------------------------------------------------


class _DirSink:
    def __init__(self, path):
        self.path = path
        os.makedirs(path)

    def add(self, name, size, reader):
        full = os.path.join(self.path, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            _copy(reader, f, size)

    def close(self):
        pass


class _TarSink:
    def __init__(self, path):
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)
        self.dirs = set()

    def add(self, name, size, reader):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self.tar.addfile(_tarinfo(d + "/", tarfile.DIRTYPE, 0o755))
        self.tar.addfile(_tarinfo(name, tarfile.REGTYPE, 0o644, size), _Limited(reader, size))

    def close(self):
        self.tar.close()


def _tarinfo(name, type_, mode, size=0):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = type_, mode, size, 0
    return info


class _Limited:
    def __init__(self, reader, size):
        self.reader, self.left = reader, size

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.reader.read(n)
        self.left -= len(data)
        return data


def _copy(reader, f, size):
    left = size
    while left:
        chunk = reader.read(min(_CHUNK, left))
        if not chunk:
            raise FailedPrecondition(f"blob ended {left} bytes early")
        f.write(chunk)
        left -= len(chunk)


def _add_blob(sink, content, desc, name=None):
    with content.reader(desc.digest) as r:
        sink.add(name or _blob_name(desc.digest), desc.size, r)


def _add_bytes(sink, name, data):
    sink.add(name, len(data), io.BytesIO(data))


def _oci_blobs(content, desc, out, depth=0, platform=None):
    """Collect ``desc`` and what it reaches into ``out`` (digest -> desc).
    Index entries absent from the store are skipped (platforms not pulled,
    as containerd's exporter skips them), and so are entries for another
    platform than ``platform`` when one is given; NotFound for anything
    else."""
    if depth > 4:
        raise InvalidArgument(f"{desc.digest}: indexes nested deeper than 4")
    doc = parse_manifest(read_small(content, desc.digest, "manifest"), desc.media_type,
                         f"manifest {desc.digest}")
    out[desc.digest] = desc
    if isinstance(doc, Index):
        for entry in doc.manifests:
            if platform is not None and entry.platform is not None \
                    and not platform_matches(platform, entry.platform):
                continue
            try:
                content.info(entry.digest)
            except NotFound:
                continue
            _oci_blobs(content, entry, out, depth + 1, platform)
    else:
        for child in children(doc):
            content.info(child.digest)  # NotFound names a missing layer now, not mid-write
            out[child.digest] = child


def _ref_name(name):
    try:
        ref = parse_reference(name)
    except InvalidArgument:
        return name
    return ref.tag or name


def _publish(dest, write, as_dir):
    """Run ``write(sink)`` into a temporary sibling of ``dest`` and rename
    it into place; nothing is left behind on failure."""
    if os.path.lexists(dest):
        raise FailedPrecondition(f"{dest}: already exists; export writes a new file or directory")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise NotFound(f"{dest}: no such directory {parent}")
    tmp = os.path.join(os.path.dirname(os.path.abspath(dest)),
                       f".{os.path.basename(dest)}.tmp-{secrets.token_hex(4)}")
    try:
        sink = _DirSink(tmp) if as_dir else _TarSink(tmp)
        try:
            write(sink)
        finally:
            sink.close()
        os.rename(tmp, dest)
    except BaseException:
        if os.path.isdir(tmp):
            remove_tree(tmp)
        elif os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def export_oci(db, namespace, names, dest, *, as_tar=False, platform=None):
    """Write the images ``names`` of ``namespace`` as an OCI image layout:
    a new directory ``dest``, or with ``as_tar`` a tar file (what
    ``ctr images export`` and ``skopeo copy … oci-archive:`` write).

    index.json has one entry per name: the image's target descriptor with
    ``org.opencontainers.image.ref.name`` = the reference's tag (the whole
    name if it has none, so ``skopeo … oci:DIR:<tag>`` finds it) and
    ``io.containerd.image.name`` = the full name.  Every blob the targets
    reach is copied as-is; with ``platform`` (a Platform or a string such
    as ``"linux/arm64"``) only that platform's manifests of an index (ctr
    export's ``--platform``; the index itself is kept whole, so its digest
    round-trips).  Raises NotFound for an unknown image or a missing blob,
    FailedPrecondition if ``dest`` exists.
    """
    if isinstance(platform, str):
        platform = parse_platform(platform)
    images = ImageStore(db, namespace)
    entries, blobs = [], {}
    for name in names:
        desc = Descriptor.from_dict(images.get(name).target, f"image {name!r}")
        _oci_blobs(images.content, desc, blobs, platform=platform)
        entry = desc.to_dict()
        entry["annotations"] = {**desc.annotations, REF_NAME: _ref_name(name), IMAGE_NAME: name}
        entries.append(entry)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries},
                       indent=2).encode()

    def write(sink):
        _add_bytes(sink, "oci-layout", json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        for desc in blobs.values():
            _add_blob(sink, images.content, desc)
        _add_bytes(sink, "index.json", index)

    _publish(dest, write, as_dir=not as_tar)


def export_docker(db, namespace, names, dest, *, platform=None):
    """Write the images ``names`` of ``namespace`` as a docker-archive tar
    ``dest`` (``docker save``'s format: ``manifest.json``,
    ``repositories``, ``<config hex>.json``, ``<layer hex>/layer.tar``),
    the manifest for ``platform`` (default the host's) of each.  Layer
    blobs are written as stored (``docker load`` and skopeo accept gzip
    and zstd layers), so digests round-trip.  Images named by digest only
    get no RepoTags.  Raises NotFound and FailedPrecondition as
    :func:`export_oci`.
    """
    images = ImageStore(db, namespace)
    out, blobs, repositories = [], {}, {}
    by_config = {}
    for name in names:
        mdesc = resolve_manifest(images.content, Descriptor.from_dict(
            images.get(name).target, f"image {name!r}"), platform)
        doc = read_manifest(images.content, mdesc)
        for child in children(doc):
            images.content.info(child.digest)
        config_name = f"{parse_digest(doc.config.digest)[1]}.json"
        layer_names = [f"{parse_digest(l.digest)[1]}/layer.tar" for l in doc.layers]
        blobs[config_name] = doc.config
        blobs.update(zip(layer_names, doc.layers))
        entry = by_config.get(doc.config.digest)
        if entry is None:
            entry = by_config[doc.config.digest] = {"Config": config_name, "RepoTags": [],
                                                    "Layers": layer_names}
            out.append(entry)
        ref = _parse_or_none(name)
        if ref is None:
            raise InvalidArgument(f"image {name!r}: not a reference that a docker-archive "
                                  "RepoTag can hold; tag it with a valid name first")
        if ref.tag:
            entry["RepoTags"].append(Reference(ref.domain, ref.path, ref.tag).familiar())
            top = parse_digest(doc.layers[-1].digest)[1] if doc.layers else ""
            repositories.setdefault(Reference(ref.domain, ref.path).familiar(), {})[ref.tag] = top

    def write(sink):
        for name, desc in blobs.items():
            _add_blob(sink, images.content, desc, name)
        _add_bytes(sink, "manifest.json", json.dumps(out).encode())
        _add_bytes(sink, "repositories", json.dumps(repositories).encode())

    _publish(dest, write, as_dir=False)


def _parse_or_none(name):
    try:
        return parse_reference(name)
    except PyrunError:
        return None
