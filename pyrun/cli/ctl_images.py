"""``pyrunctl images …`` and ``pyrunctl content fetch``: ctr's image
commands over :mod:`pyrun.images` and :mod:`pyrun.registry`.

Names: an image is looked up by the name given, then by its normalised
reference (``busybox`` finds ``docker.io/library/busybox:latest``), so
the short forms pull accepts work everywhere.  Errors end as ctr's do:
a message on stderr and exit status 1.
"""
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial

from pyrun.cli.ctl import table
from pyrun.cli.ctl_storage import _fmt_labels, _size
from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PyrunError

# ctr images mount leaves its lease for 24 hours unless unmounted with --rm.
MOUNT_LEASE_HOURS = 24
MOUNT_LABEL = "pyrun.mount"


def _stderr(text):
    os.write(2, f"pyrunctl: {text}\n".encode())


def _images(ctx):
    from pyrun.images.store import ImageStore
    return ImageStore(ctx.db, ctx.namespace)


def _lookup(images, name):
    """The image record called ``name``, or else the one called by
    ``name``'s normalised reference; NotFound naming what was tried."""
    from pyrun.registry.reference import parse_reference

    try:
        return images.get(name)
    except NotFound:
        pass
    try:
        full = str(parse_reference(name))
    except InvalidArgument:
        full = name
    if full != name:
        try:
            return images.get(full)
        except NotFound:
            pass
    raise NotFound(f"image {name!r}: not found in namespace {images.namespace}"
                   + (f" (nor {full!r})" if full != name else ""))


def _target(image):
    from pyrun.registry.manifest import Descriptor
    return Descriptor.from_dict(image.target, f"image {image.name!r}: target")


def _client(ctx, ref):
    """A registry client for ``ref``'s host with the command's
    ``--plain-http``, ``--skip-verify`` and ``--user``."""
    from pyrun.registry.client import Client
    from pyrun.registry.transport import HostOptions, Hosts

    opts = HostOptions(plain_http=ctx.args.plain_http, insecure_tls=ctx.args.skip_verify)
    return Client(hosts=Hosts({ref.domain: opts}), credentials=ctx.args.user or None)


def _platform(ctx):
    """The ``--platform`` given (a Platform), or None for the host's."""
    from pyrun.registry.manifest import parse_platform
    return parse_platform(ctx.args.platform) if ctx.args.platform else None


def _host_platform():
    from pyrun.registry.manifest import host_platform
    return host_platform()


def _platform_text(platform):
    return str(platform or _host_platform())


# ---- pull, fetch, push ----

def _pull(ctx, unpack, print_chainid=False):
    from pyrun.images.store import pull_image
    from pyrun.registry.reference import parse_reference
    from pyrun.registry.manifest import platform_matches

    ref = parse_reference(ctx.args.ref)
    platform = _platform(ctx)
    start = time.monotonic()
    pulled = pull_image(ctx.db, ctx.namespace, ref, snapshotter=ctx.args.snapshotter,
                        platform=platform, client=_client(ctx, ref), unpack=unpack,
                        all_platforms=ctx.args.all_platforms)
    digest = pulled.image.target["digest"]
    print(f"{pulled.image.name} {digest}")
    if unpack:
        if pulled.chain_id:
            # ctr's last lines; pyrun unpacks while it downloads, so the
            # time is the whole pull's.
            got = _images(ctx).config(pulled.image.name, platform).platform
            print(f"unpacking {got} {digest}...")
            if print_chainid:
                print(f"image chain ID: {pulled.chain_id}")
            print(f"done: {time.monotonic() - start:.3f}s")
            if platform is not None and not platform_matches(platform, got):
                # A lone manifest is taken whatever its platform, as ctr does.
                _stderr(f"warning: {pulled.image.name} is a {got} image, not {platform}")
        else:
            _stderr(f"{pulled.image.name}: nothing unpacked: no manifest for platform "
                    f"{_platform_text(platform)}")


def images_pull(ctx):
    _pull(ctx, unpack=not ctx.args.no_unpack, print_chainid=ctx.args.print_chainid)


def content_fetch(ctx):
    _pull(ctx, unpack=False)


def images_push(ctx):
    from pyrun.images.store import resolve_manifest
    # The submodule, not pyrun.registry's lazy name: once pyrun.registry.push
    # is imported, the package attribute ``push`` is that module.
    from pyrun.registry.push import push
    from pyrun.registry.reference import parse_reference

    ref = parse_reference(ctx.args.remote)
    images = _images(ctx)
    image = _lookup(images, ctx.args.local or ctx.args.remote)
    root = _target(image)
    platform = _platform(ctx)
    if platform is not None:  # that platform's manifest alone, as ctr push --platform
        root = resolve_manifest(images.content, root, platform)
    try:
        push(ref, images.content, root, client=_client(ctx, ref))
    except NotFound as e:
        if platform is None and "not in the content store" in str(e):
            raise NotFound(f"{e} (was {image.name} pulled for one platform only? "
                           "push that one with --platform)") from None
        raise
    print(f"{ref} {root.digest}")


# ---- ls, rm, tag, inspect, check ----

def _manifest_and_doc(images, image, platform=None):
    from pyrun.images.store import resolve_manifest
    from pyrun.images.unpack import read_manifest

    mdesc = resolve_manifest(images.content, _target(image), platform)
    return mdesc, read_manifest(images.content, mdesc)


def _platforms(images, image):
    """The platforms an image offers: its index's entries, or its config's."""
    from pyrun.images.unpack import read_small
    from pyrun.registry.manifest import Index, normalize_platform, parse_manifest

    target = _target(image)
    try:
        doc = parse_manifest(read_small(images.content, target.digest, "manifest"),
                             target.media_type, f"image {image.name}")
        if isinstance(doc, Index):
            return sorted({str(normalize_platform(e.platform)) for e in doc.manifests
                           if e.platform})
        return [str(images.config(image.name).platform)]
    except PyrunError:
        return []


def _image_size(images, image):
    """Bytes of the image for the host platform (target, manifest, config,
    layers), as ctr ls shows; None when content is missing."""
    from pyrun.registry.manifest import children

    try:
        mdesc, doc = _manifest_and_doc(images, image)
    except PyrunError:
        return None
    size = mdesc.size + sum(c.size for c in children(doc))
    return size + (image.target["size"] if mdesc.digest != image.target["digest"] else 0)


def images_ls(ctx):
    images = _images(ctx)
    records = images.list(ctx.args.filters)
    if ctx.args.quiet:
        print("\n".join(i.name for i in records))
        return
    rows = [("REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS")]
    for i in records:
        size = _image_size(images, i)
        rows.append((i.name, i.target["mediaType"], i.target["digest"],
                     "-" if size is None else _size(size),
                     ",".join(_platforms(images, i)) or "-", _fmt_labels(i.labels)))
    table(rows)


def images_rm(ctx):
    if not ctx.args.refs:
        raise InvalidArgument("images rm: name at least one image")
    images, status = _images(ctx), 0
    for name in ctx.args.refs:
        try:
            images.remove(_lookup(images, name).name)
        except NotFound as e:  # ctr goes on with the others and fails at the end
            _stderr(f"unable to delete {name}: {e}")
            status = 1
            continue
        print(name)
    return status


def images_tag(ctx):
    if not ctx.args.targets:
        raise InvalidArgument("images tag: give at least one target name")
    from pyrun.metadata import Image

    images = _images(ctx)
    source = _lookup(images, ctx.args.source)
    for name in ctx.args.targets:
        if ctx.args.force:
            images.tag(source.name, name)
        else:
            try:
                images.records.create(Image(name, source.target, source.labels))
            except AlreadyExists as e:
                raise AlreadyExists(f"{e} (use --force to move it)") from None
        print(name)


def images_inspect(ctx):
    from pyrun.images.unpack import read_small
    from pyrun.images.unpack import chain_ids

    images = _images(ctx)
    image = _lookup(images, ctx.args.ref)
    platform = _platform(ctx)
    mdesc, doc = _manifest_and_doc(images, image, platform)
    config = json.loads(read_small(images.content, doc.config.digest, "image config"))
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layers = [{**layer.to_dict(), "diffID": diff_id}
              for layer, diff_id in zip(doc.layers, diff_ids + [None] * len(doc.layers))]
    out = {"name": image.name, "target": image.target, "labels": image.labels,
           "platform": _platform_text(platform), "manifest": mdesc.to_dict(),
           "config": {"digest": doc.config.digest, "document": config},
           "layers": layers, "chainID": chain_ids(diff_ids)[-1] if diff_ids else ""}
    print(json.dumps(out, indent=2))


def _has(content, digest):
    try:
        content.info(digest)
    except NotFound:
        return False
    return True


def images_check(ctx):
    from pyrun.images.unpack import chain_ids, read_diff_ids
    from pyrun.registry.manifest import children

    images = _images(ctx)
    sn = ctx.snapshotter()
    rows = [("REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED")]
    broken = 0
    for image in images.list(ctx.args.filters):
        target = _target(image)
        required, chain = [target], None  # chain: the top chain ID, once the config is read
        damage = None
        try:
            mdesc, doc = _manifest_and_doc(images, image)
            if mdesc.digest != target.digest:
                required.append(mdesc)
            required += list(children(doc))
            if _has(images.content, doc.config.digest):
                chain = (chain_ids(read_diff_ids(images.content, doc.config)) or [""])[-1]
        except NotFound:
            pass
        except InvalidArgument as e:
            # One bad image is reported as such; the others are still checked.
            damage = str(e)
        present = [d for d in required if _has(images.content, d.digest)]
        if damage is not None:
            status = "broken"
            broken += 1
            os.write(2, f"pyrunctl: images check: {image.name}: {damage}\n".encode())
        elif not present or present[0] is not target:
            status = "missing"
        elif len(present) == len(required) and chain is not None:
            status = "complete"
        else:
            status = "incomplete"
        unpacked = False
        if chain:
            try:
                sn.stat(chain)
                unpacked = True
            except NotFound:
                pass
        rows.append((image.name, target.media_type, target.digest,
                     f"{status} ({len(present)}/{len(required)})",
                     f"{_size(sum(d.size for d in present))}/{_size(sum(d.size for d in required))}",
                     str(unpacked).lower()))
    table(rows)
    return 1 if broken else 0


# ---- import, export ----

def _unpack_imported(ctx, images, records):
    from pyrun.images.archive import IMPORT_LEASE_EXPIRY

    # Under a lease, as pull unpacks: a concurrent gc cannot take the new
    # snapshots before the config's gc label holds them.
    leases = ctx.db.leases(ctx.namespace)
    lease = leases.create(expire=IMPORT_LEASE_EXPIRY, labels={"pyrun.import": ctx.args.file})
    try:
        _unpack_each(ctx, images, records, lease.id)
    finally:
        leases.delete(lease.id)


def _unpack_each(ctx, images, records, lease):
    platform = _platform(ctx)
    for image in records:
        try:
            images.manifest(image.name, platform)
        except NotFound:
            if ctx.args.all_platforms:
                print(f"{image.name} ({image.target['digest']}): no manifest for "
                      f"{_platform_text(platform)}, not unpacked")
                continue
            raise
        sys.stdout.write(f"unpacking {image.name} ({image.target['digest']})...")
        sys.stdout.flush()
        images.unpack(image.name, ctx.args.snapshotter, platform, lease=lease)
        print("done")


@contextmanager
def _spool_dir():
    """A private temporary directory for an archive on its way from stdin
    or to stdout (tar needs a seekable file); removed with what is in it."""
    where = tempfile.mkdtemp(prefix="pyrunctl-archive-")
    try:
        yield where
    finally:
        for name in os.listdir(where):
            os.unlink(os.path.join(where, name))
        os.rmdir(where)


def images_import(ctx):
    from pyrun.images.archive import import_archive

    if not ctx.args.no_unpack:
        ctx.db.backend_snapshotter(ctx.args.snapshotter)  # fail before reading the archive
    with _spool_dir() as spool:
        path = ctx.args.file
        if path == "-":  # ctr reads the archive from stdin too
            path = os.path.join(spool, "stdin.tar")
            with open(path, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        records = import_archive(ctx.db, ctx.namespace, path,
                                 base_name=ctx.args.base_name, index_name=ctx.args.index_name)
    if not records:
        _stderr(f"{ctx.args.file}: no named image in it (give --base-name or --index-name)")
        return 1
    images = _images(ctx)
    if ctx.args.no_unpack:
        for image in records:
            print(f"{image.name} ({image.target['digest']})")
    else:
        _unpack_imported(ctx, images, records)


def images_export(ctx):
    from pyrun.images.archive import export_docker, export_oci

    if not ctx.args.refs:
        raise InvalidArgument("images export: name at least one image")
    images = _images(ctx)
    names = [_lookup(images, name).name for name in ctx.args.refs]
    fmt = ctx.args.format
    if ctx.args.all_platforms and ctx.args.platform:
        raise InvalidArgument("images export: --platform and --all-platforms exclude each other")
    if fmt == "oci":
        # ctr's default: the host's platform only; the index stays whole.
        platform = None if ctx.args.all_platforms else (_platform(ctx) or _host_platform())
        write = partial(export_oci, as_tar=True, platform=platform)
    elif fmt == "docker":
        if ctx.args.all_platforms:
            raise InvalidArgument("images export: a docker-archive holds one platform per image; "
                                  "--all-platforms needs --format oci")
        write = partial(export_docker, platform=_platform(ctx))
    else:
        raise InvalidArgument(f"images export: --format {fmt!r}: expected oci or docker")
    if ctx.args.file != "-":
        write(ctx.db, ctx.namespace, names, ctx.args.file)
        return
    with _spool_dir() as spool:  # ctr writes to stdout for "-"
        path = os.path.join(spool, "export.tar")
        write(ctx.db, ctx.namespace, names, path)
        with open(path, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()


# ---- mount, unmount ----

def images_mount(ctx):
    from datetime import timedelta

    from pyrun.mount import mount_all

    target = os.path.abspath(ctx.args.target)
    if not os.path.isdir(target):
        raise NotFound(f"images mount: target {target}: not a directory")
    if os.path.ismount(target):
        raise FailedPrecondition(f"images mount: {target} is already a mount point "
                                 "(`pyrunctl images unmount` it first)")
    images = _images(ctx)
    image = _lookup(images, ctx.args.ref)
    platform = _platform(ctx)
    leases = ctx.db.leases(ctx.namespace)
    # ctr's lease: named by the target, expiring in 24 hours; it holds the
    # snapshot (and the unpacked chain) until `images unmount --rm`.
    try:
        lease = leases.create(target, {MOUNT_LABEL: image.name},
                              expire=timedelta(hours=MOUNT_LEASE_HOURS))
        made_lease = True
    except AlreadyExists:
        lease, made_lease = leases.get(target), False
    sn = ctx.db.snapshotter(ctx.namespace, ctx.args.snapshotter, lease=lease.id)
    made_snapshot = False
    try:
        chain = images.unpack(image.name, ctx.args.snapshotter, platform, lease=lease.id)
        try:
            mounts = (sn.prepare if ctx.args.rw else sn.view)(target, chain)
            made_snapshot = True
        except AlreadyExists:  # mounted before and unmounted without --rm
            mounts = sn.mounts(target)
        mount_all(mounts, target)
    except BaseException:
        if made_snapshot:
            sn.remove(target)
        if made_lease:
            leases.delete(lease.id)
        raise
    print(target)
    _stderr(f"lease {lease.id} holds snapshot {target!r} ({ctx.args.snapshotter}) for "
            f"{MOUNT_LEASE_HOURS}h; `pyrunctl images unmount --rm {target}` removes both")


def images_unmount(ctx):
    from pyrun.mount import unmount_stack

    # Only what is stacked on the target, as ctr: a path that happens to
    # hold other mounts below it (a running container's rootfs) keeps them.
    target = os.path.abspath(ctx.args.target)
    unmount_stack(target)
    leases = ctx.db.leases(ctx.namespace)
    if ctx.args.rm:
        try:
            ctx.snapshotter().remove(target)
        except NotFound:
            pass
        try:
            leases.delete(target)
        except NotFound:
            pass
    else:
        try:
            lease = leases.get(target)
        except NotFound:
            pass
        else:
            _stderr(f"kept snapshot {target!r} and lease {lease.id} (expires "
                    f"{lease.labels.get('containerd.io/gc.expire', 'never')}); "
                    "`images unmount --rm` or `leases rm` frees them")
    print(target)
