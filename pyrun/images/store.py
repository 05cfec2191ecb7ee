"""A tenant's images: names bound to target descriptors, their configs, and
pull-and-unpack (containerd's ``images.Store``, ``images.Config`` and
``client.Pull(WithPullUnpack)``).

The records live in :mod:`pyrun.metadata` (``images`` table, a GC root);
this module adds what needs the content behind them: walking an index to a
platform's manifest, reading the image config into a typed
:class:`ImageConfig`, tagging, removing, and :func:`pull_image`.
"""
import json
from dataclasses import dataclass, field
from datetime import timedelta

from pyrun.errdefs import AlreadyExists, InvalidArgument, NotFound
from pyrun.images.unpack import read_manifest, read_small, unpack
from pyrun.metadata import Image
from pyrun.registry.manifest import (MAX_INDEX_DEPTH, Descriptor, Manifest, Platform, host_platform,
                                     normalize_platform, parse_manifest, parse_platform,
                                     platform_matches)

# How long the lease of a pull lives if the process dies before deleting it.
PULL_LEASE_EXPIRY = timedelta(hours=24)


@dataclass(frozen=True)
class ImageConfig:
    """The runtime defaults of an image (OCI image spec config.md,
    "Properties"; Docker's image JSON uses the same keys).

    ``entrypoint``, ``cmd``, ``env`` ("K=V" strings) and ``volumes``
    (paths) are tuples; ``exposed_ports`` a tuple of "port/proto";
    ``working_dir``, ``user`` and ``stop_signal`` strings ('' = unset);
    ``labels`` a dict.  ``platform`` and ``diff_ids`` come from the top
    level of the config; ``digest`` is the config blob's.
    """

    digest: str
    platform: Platform
    entrypoint: tuple = ()
    cmd: tuple = ()
    env: tuple = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple = ()
    volumes: tuple = ()
    labels: dict = field(default_factory=dict)
    stop_signal: str = ""
    diff_ids: tuple = ()


def _strings(value, what, allow_none=True):
    if value is None and allow_none:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidArgument(f"{what} must be a list of strings, got {value!r}")
    return tuple(value)


def _keys(value, what):
    # ExposedPorts and Volumes are JSON objects whose values are empty
    # objects ("a set"); only the keys carry meaning.
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be an object, got {value!r}")
    return tuple(sorted(value))


def _string(value, what):
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, got {value!r}")
    return value


def parse_image_config(data, digest):
    """Parse image config bytes (the blob ``digest``) into an
    :class:`ImageConfig`.  InvalidArgument, naming the config and the
    field, for JSON that is not an image config."""
    what = f"image config {digest}"
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{what} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    cfg = doc.get("config") or {}
    if not isinstance(cfg, dict):
        raise InvalidArgument(f"{what}: config must be an object")
    rootfs = doc.get("rootfs") or {}
    labels = cfg.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument(f"{what}: config.Labels must map strings to strings")
    return ImageConfig(
        digest=digest,
        platform=normalize_platform(Platform(_string(doc.get("os"), f"{what}: os"),
                                             _string(doc.get("architecture"), f"{what}: architecture"),
                                             _string(doc.get("variant"), f"{what}: variant"))),
        entrypoint=_strings(cfg.get("Entrypoint"), f"{what}: config.Entrypoint"),
        cmd=_strings(cfg.get("Cmd"), f"{what}: config.Cmd"),
        env=_strings(cfg.get("Env"), f"{what}: config.Env"),
        working_dir=_string(cfg.get("WorkingDir"), f"{what}: config.WorkingDir"),
        user=_string(cfg.get("User"), f"{what}: config.User"),
        exposed_ports=_keys(cfg.get("ExposedPorts"), f"{what}: config.ExposedPorts"),
        volumes=_keys(cfg.get("Volumes"), f"{what}: config.Volumes"),
        labels=dict(labels),
        stop_signal=_string(cfg.get("StopSignal"), f"{what}: config.StopSignal"),
        diff_ids=_strings(rootfs.get("diff_ids") if isinstance(rootfs, dict) else None,
                          f"{what}: rootfs.diff_ids"),
    )


def resolve_manifest(content, target, platform=None):
    """The manifest :class:`Descriptor` for ``platform`` (a Platform or a
    string such as ``"linux/arm64"``; default the host's) reached from the
    descriptor ``target`` through nested indexes, the first match in index
    order (containerd's ``images.Manifest``).  A single manifest matches
    whatever its config says.  NotFound if no entry matches or a blob is
    missing; InvalidArgument for malformed documents."""
    if isinstance(platform, str):
        platform = parse_platform(platform)
    want = platform or host_platform()
    offered = []

    def walk(desc, depth):
        if depth > MAX_INDEX_DEPTH:
            raise InvalidArgument(f"{target.digest}: indexes nested deeper than {MAX_INDEX_DEPTH}")
        data = read_small(content, desc.digest, f"manifest {desc.digest}")
        doc = parse_manifest(data, desc.media_type, f"manifest {desc.digest}")
        if isinstance(doc, Manifest):
            return desc
        for entry in doc.manifests:
            if isinstance(entry.platform, Platform):
                offered.append(str(entry.platform))
            if entry.platform is not None and not platform_matches(want, entry.platform):
                continue
            try:
                found = walk(entry, depth + 1)
            except NotFound:
                continue  # a platform that was not pulled
            if found is not None:
                return found
        return None

    found = walk(target, 0)
    if found is None:
        raise NotFound(f"image {target.digest}: no manifest for platform {want} in the store "
                       f"(index offers: {', '.join(sorted(set(offered))) or 'none'})")
    return found


class ImageStore:
    """The images of ``namespace`` in the metadata ``db``
    (:class:`pyrun.metadata.DB`), with their content."""

    def __init__(self, db, namespace):
        self.db = db
        self.namespace = namespace
        self.records = db.images(namespace)
        self.content = db.content_store(namespace)

    def get(self, name):
        """The :class:`~pyrun.metadata.Image` ``name``; NotFound."""
        return self.records.get(name)

    def list(self, filters=()):
        """Images matching containerd filter strings (name, target.digest,
        target.mediatype, labels.<key>)."""
        return self.records.list(filters)

    def set(self, name, target, labels=None):
        """Bind ``name`` to ``target`` (a Descriptor or descriptor dict),
        creating the record or moving an existing one (as containerd's
        pull and import do).  Returns the Image."""
        target = target.to_dict() if isinstance(target, Descriptor) else dict(target)
        image = Image(name, target, dict(labels or {}))
        try:
            return self.records.create(image)
        except AlreadyExists:
            fields = ["target"] + [f"labels.{k}" for k in image.labels]
            return self.records.update(image, fields)

    def tag(self, source, name):
        """Make ``name`` point at ``source``'s target (``ctr images tag
        --force``).  NotFound if ``source`` does not exist."""
        src = self.get(source)
        return self.set(name, src.target, src.labels)

    def remove(self, name):
        """Delete the image record; its content and snapshots go at the
        next :func:`pyrun.metadata.collect` unless something else (another
        image, a container, a lease) still holds them.  NotFound."""
        self.records.delete(name)

    def manifest(self, name, platform=None):
        """The manifest Descriptor of image ``name`` for ``platform``
        (see :func:`resolve_manifest`)."""
        return resolve_manifest(self.content, _descriptor(self.get(name)), platform)

    def config(self, name, platform=None):
        """The :class:`ImageConfig` of image ``name`` for ``platform``."""
        desc = self.manifest(name, platform)
        doc = read_manifest(self.content, desc)
        data = read_small(self.content, doc.config.digest, f"image config {doc.config.digest}")
        return parse_image_config(data, doc.config.digest)

    def unpack(self, name, snapshotter, platform=None, lease=None):
        """Unpack image ``name`` for ``platform`` into the tenant's
        ``snapshotter`` (a configured snapshotter name) and label its config
        so GC keeps the snapshots with the image; returns the top chain ID
        (see :func:`pyrun.images.unpack.unpack`)."""
        return _unpack(self.db, self.namespace, self.manifest(name, platform), snapshotter, lease)


def _descriptor(image):
    return Descriptor.from_dict(image.target, f"image {image.name!r}: target")


@dataclass(frozen=True)
class Pulled:
    """What :func:`pull_image` made: the ``image`` record, the ``manifest``
    descriptor unpacked, and the top ``chain_id`` ('' when not unpacked)."""

    image: Image
    manifest: Descriptor
    chain_id: str = ""


def pull_image(db, namespace, ref, *, snapshotter="overlayfs", platform=None, client=None,
               unpack=True, progress=None, all_platforms=False):
    """Pull ``ref`` into ``namespace`` of ``db``, record it as an image
    named by the normalised reference, and unpack it (containerd's
    ``client.Pull`` with ``WithPullUnpack``).

    Everything is written under a fresh lease (expiring after
    ``PULL_LEASE_EXPIRY`` in case this process dies), so a concurrent GC
    cannot take blobs or snapshots before the image record and the
    ``containerd.io/gc.ref.snapshot.<snapshotter>`` label on the config
    hold them; the lease is deleted at the end, success or not (what a
    failed pull left then goes at the next GC).  ``platform``: see
    :func:`pyrun.registry.pull`; ``all_platforms`` fetches every entry of
    an index and unpacks the one for ``platform`` (the host's by default;
    none if the index lacks it).  Layers are applied as they arrive, while
    later ones download; ``unpack=False`` only fetches.  Returns a
    :class:`Pulled`.  Raises what ``pull`` and ``unpack`` raise, and
    NotFound for an unconfigured snapshotter (before any download).
    """
    if unpack:
        db.backend_snapshotter(snapshotter)
    if isinstance(platform, str):
        platform = parse_platform(platform)
    leases = db.leases(namespace)
    lease = leases.create(expire=PULL_LEASE_EXPIRY, labels={"pyrun.pull": str(ref)})
    try:
        content = db.content_store(namespace, lease=lease.id)
        unpacked = []

        def unpack_while_fetching(manifests, wait):
            # Each layer is applied as soon as its blob is in, while the
            # later ones still download.
            want = platform or host_platform()
            chosen = [(d, m) for d, m in manifests
                      if d.platform is None or platform_matches(want, d.platform)]
            if chosen:
                desc, doc = chosen[0]
                unpacked.append((desc, _unpack(db, namespace, desc, snapshotter, lease.id, doc,
                                               wait)))

        from pyrun.registry import fetch  # the HTTP side: imported only to pull

        name, root, manifests = fetch.pull(
            ref, content, client=client, platform=platform, all_platforms=all_platforms,
            progress=progress, while_fetching=unpack_while_fetching if unpack else None)
        image = ImageStore(db, namespace).set(name, root)
        desc, chain_id = unpacked[0] if unpacked else (manifests[0], "")
        return Pulled(image, desc, chain_id)
    finally:
        leases.delete(lease.id)


def _unpack(db, namespace, manifest, snapshotter, lease, doc=None, wait=None):
    return unpack(manifest, db.content_store(namespace, lease=lease),
                  db.snapshotter(namespace, snapshotter, lease=lease),
                  snapshotter_name=snapshotter, doc=doc, wait=wait)
