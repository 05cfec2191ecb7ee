"""Unpack an image: its layers, applied in order onto snapshots named by
chain ID (containerd's ``rootfs.ApplyLayers`` and unpacker).

Layer n's snapshot is committed under the name ``chainID(n)`` (OCI image
spec, config.md "Layer ChainID"), so images that share their first layers
share those snapshots, and a layer whose chain ID already exists is not
applied again.  Each layer is applied into a fresh active snapshot that is
committed only when the whole layer applied and its diffID matched the
config's ``rootfs.diff_ids``; on any failure the active snapshot is
removed, so nothing half-applied is ever visible under a chain ID.

Layers are applied one after the other, each streamed from the content
store through decompression into the snapshot (decompression and the
diffID hash run in a helper thread, see
:func:`pyrun.images.apply.apply_layer`).  With ``wait``, a layer is
applied as soon as its own blob has arrived, while later layers still
download (:func:`pyrun.images.store.pull_image`).
"""
import hashlib
import json
import os
import secrets
import tempfile
from dataclasses import replace

from pyrun.errdefs import AlreadyExists, InvalidArgument, NotFound
from pyrun.mount import mount_all, overlay_dirs, unmount_all
from pyrun.registry.manifest import Manifest, parse_manifest

# Labels containerd's unpacker sets, which GC and later diffs rely on.
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"
SNAPSHOT_REF_LABEL = "containerd.io/gc.ref.snapshot."
# Manifests and configs are read into memory; containerd caps them too.
MAX_JSON = 4 << 20


def chain_ids(diff_ids):
    """The chain IDs of a layer stack, bottom first: ``chainID(1) =
    diffID(1)``, ``chainID(n) = sha256(chainID(n-1) + " " + diffID(n))``
    (OCI image spec, config.md "Layer ChainID")."""
    out = []
    for diff_id in diff_ids:
        if out:
            diff_id = "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest()
        out.append(diff_id)
    return out


def read_small(store, digest, what):
    """The bytes of a small blob (manifest, index, config) of ``store``,
    at most ``MAX_JSON``; InvalidArgument naming ``what`` (which names
    the digest) if larger, NotFound if absent."""
    with store.reader(digest) as r:
        data = r.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise InvalidArgument(f"{what} is larger than {MAX_JSON} bytes")
    return data


def read_manifest(store, desc):
    """The :class:`~pyrun.registry.manifest.Manifest` that the descriptor
    ``desc`` names, read from ``store``.  InvalidArgument for an index
    (pick a platform's manifest first: ``registry.select_manifests``) or a
    malformed manifest; NotFound if the store lacks it."""
    what = f"manifest {desc.digest}"
    doc = parse_manifest(read_small(store, desc.digest, what), desc.media_type, what)
    if not isinstance(doc, Manifest):
        raise InvalidArgument(f"cannot unpack {what}: it is an index ({doc.media_type}); "
                              "pick a platform's manifest first")
    return doc


def read_diff_ids(store, config):
    """The ``rootfs.diff_ids`` of the image config blob ``config`` (a
    descriptor).  InvalidArgument if the config is not JSON or its rootfs
    is not ``{"type": "layers", "diff_ids": [...]}``."""
    what = f"image config {config.digest}"
    try:
        doc = json.loads(read_small(store, config.digest, what))
    except ValueError as e:
        raise InvalidArgument(f"{what} is not JSON: {e}") from None
    rootfs = doc.get("rootfs") if isinstance(doc, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or rootfs.get("type") != "layers" \
            or not all(isinstance(d, str) for d in diff_ids):
        raise InvalidArgument(f"{what}: rootfs is not {{type: layers, diff_ids: [...]}}")
    return diff_ids


def apply_to_mounts(mounts, stream, *, tmp_dir=None, **kw):
    """Apply the layer ``stream`` to the active snapshot whose mounts are
    ``mounts`` (containerd's ``diff/apply``), without mounting when it can:

    - one overlay mount with an ``upperdir``: overlay mode on the upper dir,
      its ``lowerdir`` list as ``lower_dirs``;
    - one read-write bind mount: native mode on its source;
    - anything else: mounted in a temporary dir under ``tmp_dir`` and
      applied in native mode through the mount.

    ``kw`` goes to :func:`~pyrun.images.apply.apply_layer`; returns its
    :class:`~pyrun.images.apply.AppliedLayer`.
    """
    # Imported here: the applier (tarfile, threads) is not needed to read
    # an image's config or to run a container from an unpacked image.
    from pyrun.images.apply import NATIVE, OVERLAY, apply_layer

    if len(mounts) == 1 and mounts[0].type == "overlay":
        upper, lowers = overlay_dirs(mounts[0])
        if upper is not None:
            return apply_layer(stream, upper, mode=OVERLAY, lower_dirs=lowers, **kw)
    if len(mounts) == 1 and mounts[0].type == "bind" and not mounts[0].target \
            and "ro" not in mounts[0].options:
        return apply_layer(stream, mounts[0].source, mode=NATIVE, **kw)
    where = tempfile.mkdtemp(prefix="pyrun-apply-", dir=tmp_dir)
    try:
        mount_all(mounts, where)
        try:
            return apply_layer(stream, where, mode=NATIVE, **kw)
        finally:
            unmount_all(where)
    finally:
        os.rmdir(where)


def unpack(manifest, store, snapshotter, *, snapshotter_name=None, tmp_dir=None, doc=None,
           wait=None):
    """Unpack the image whose manifest descriptor is ``manifest`` (a
    :class:`~pyrun.registry.manifest.Descriptor`, e.g. one that
    ``registry.pull`` returned) from the content ``store`` into
    ``snapshotter``.  Returns the top layer's chain ID, the name of the
    committed snapshot that holds the image's root filesystem.

    ``store`` needs ``reader(digest)`` (and ``info``/``update`` for the
    labels); ``snapshotter`` needs ``stat``, ``prepare``, ``commit``,
    ``remove``.  Existing chain IDs are skipped.  Each blob applied gets
    the label ``containerd.io/uncompressed`` = its diffID; with
    ``snapshotter_name`` the config gets ``containerd.io/gc.ref.snapshot.
    <snapshotter_name>`` = the top chain ID, as containerd's unpacker does,
    so GC keeps the snapshots as long as the image.  Callers that race GC
    run this under a lease (the store and snapshotter given carry it).

    ``doc``: the parsed :class:`~pyrun.registry.manifest.Manifest`, when
    the caller has it (default: read from ``store``).  ``wait(digest)``,
    if given, is called before the config and each layer blob is read,
    and blocks until it is in the store (see ``registry.pull``'s
    ``while_fetching``).

    Raises InvalidArgument for an index, a manifest or config that is
    malformed, a layer count that differs from ``rootfs.diff_ids``, and
    anything :func:`~pyrun.images.apply.apply_layer` raises for a bad layer
    (the message names the layer digest); NotFound for a missing blob.
    """
    doc = doc or read_manifest(store, manifest)
    wait = wait or (lambda digest: None)
    wait(doc.config.digest)
    diff_ids = read_diff_ids(store, doc.config)
    if len(diff_ids) != len(doc.layers):
        raise InvalidArgument(f"manifest {manifest.digest} has {len(doc.layers)} layers but its "
                              f"config {doc.config.digest} has {len(diff_ids)} diff_ids")
    parent = ""
    for layer, diff_id, chain_id in zip(doc.layers, diff_ids, chain_ids(diff_ids)):
        if not _exists(snapshotter, chain_id):
            wait(layer.digest)
            _apply_one(layer, diff_id, chain_id, parent, store, snapshotter, tmp_dir)
        parent = chain_id
    if snapshotter_name and parent:
        _label(store, doc.config.digest, SNAPSHOT_REF_LABEL + snapshotter_name, parent)
    return parent


def _exists(snapshotter, name):
    try:
        snapshotter.stat(name)
    except NotFound:
        return False
    return True


def _apply_one(layer, diff_id, chain_id, parent, store, snapshotter, tmp_dir):
    # containerd names the active snapshot "extract-<unique> <chainID>".
    key = f"extract-{secrets.token_hex(8)} {chain_id}"
    mounts = snapshotter.prepare(key, parent)
    try:
        with store.reader(layer.digest) as r:
            try:
                apply_to_mounts(mounts, r, tmp_dir=tmp_dir, media_type=layer.media_type,
                                expected_diffid=diff_id)
            except InvalidArgument as e:  # the same kind, naming the layer
                raise type(e)(f"layer {layer.digest}: {e}") from e
        try:
            snapshotter.commit(chain_id, key)
        except AlreadyExists:
            # Another unpack of an image with this chain committed it first.
            snapshotter.remove(key)
    except BaseException:
        try:
            snapshotter.remove(key)
        except NotFound:
            pass
        raise
    _label(store, layer.digest, UNCOMPRESSED_LABEL, diff_id)


def _label(store, digest, key, value):
    info = store.info(digest)
    if info.labels.get(key) != value:
        store.update(replace(info, labels={key: value}), [f"labels.{key}"])
