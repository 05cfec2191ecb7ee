"""Unpacking images from a content store onto every snapshotter backend,
with real overlayfs and bind mounts."""
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess

import pytest
import zstandard

from layer_tars import dir, file, hardlink, opaque, sha256, symlink, tar, tree, whiteout
from pyrun import linux
from pyrun.content.store import ContentStore, write_blob
from pyrun.errdefs import InvalidArgument
from pyrun.fsutil import remove_tree
from pyrun.images.apply import apply_layer
from pyrun.metadata import DB, Image, collect
from pyrun.images.unpack import (SNAPSHOT_REF_LABEL, UNCOMPRESSED_LABEL, apply_to_mounts,
                                 chain_ids, unpack)
from pyrun.mount import Mount, mount_all, unmount_all
from pyrun.registry import Client, Hosts, pull, push
from pyrun.registry.manifest import Descriptor
from pyrun.snapshots import Kind
from pyrun.snapshots import registry as snapshotters

pytestmark = pytest.mark.root

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
ZST = "application/vnd.oci.image.layer.v1.tar+zstd"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"

LAYERS = [
    tar(dir("etc"), file("etc/os-release", b"ID=test\n"), dir("usr"), dir("usr/bin"),
        file("usr/bin/tool", b"v1", mode=0o755), symlink("bin", "usr/bin"),
        dir("var"), file("var/a"), file("var/b"), dir("opq"), file("opq/old")),
    tar(whiteout("var/a"), opaque("opq"), file("opq/new"), hardlink("usr/bin/tool2", "usr/bin/tool"),
        file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")),
    tar(file("app", b"#!/bin/sh\n", mode=0o755), whiteout("etc/os-release")),
]


@pytest.fixture
def work(tmp_path):
    try:
        yield tmp_path
    finally:
        unmount_all(str(tmp_path), linux.MNT_DETACH)
        remove_tree(str(tmp_path))


@pytest.fixture(params=sorted(snapshotters.BUILTINS))
def sn(request, work):
    s = snapshotters.new(request.param, str(work / "snapshots"))
    s.backend = request.param
    try:
        yield s
    finally:
        s.close()


def put(store, data, media_type):
    desc = {"mediaType": media_type, "digest": sha256(data), "size": len(data)}
    write_blob(store, f"test-{desc['digest']}", data, desc)
    return desc


def gz(data):
    return gzip.compress(data, mtime=0)  # no time stamp: the same digest every run


def image(store, layers, diff_ids=None, compress=(gz, GZ)):
    fn, media_type = compress
    descs = [put(store, fn(data), media_type) for data in layers]
    config = {"architecture": "amd64", "os": "linux",
              "rootfs": {"type": "layers", "diff_ids": diff_ids or [sha256(d) for d in layers]}}
    cdesc = put(store, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": cdesc, "layers": descs}
    return Descriptor.from_dict(put(store, json.dumps(manifest).encode(), MANIFEST))


def rootfs_tree(sn, top, where):
    mounts = sn.view(f"view-{top}", top)
    where.mkdir()
    mount_all(mounts, str(where))
    try:
        return tree(str(where))
    finally:
        unmount_all(str(where))
        sn.remove(f"view-{top}")


def native_tree(work, layers):
    root = work / "expected"
    root.mkdir()
    for data in layers:
        apply_layer(io.BytesIO(data), str(root), mode="native")
    return tree(str(root))


def committed(sn):
    out = []
    sn.walk(lambda info: out.append((info.name, info.kind, info.parent)))
    return sorted(out)


def test_chain_ids():
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_ids([a, b]) == [a, "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()]
    assert chain_ids([]) == []


@pytest.mark.parametrize("compress", [(gz, GZ),
                                      (zstandard.ZstdCompressor().compress, ZST)])
def test_unpack_into_snapshots(sn, work, compress):
    store = ContentStore(str(work / "content"))
    desc = image(store, LAYERS, compress=compress)
    top = unpack(desc, store, sn, snapshotter_name=sn.backend)
    chain = chain_ids([sha256(d) for d in LAYERS])
    assert top == chain[-1]
    assert committed(sn) == sorted((c, Kind.COMMITTED, p) for c, p in zip(chain, ["", *chain[:-1]]))
    assert rootfs_tree(sn, top, work / "view") == native_tree(work, LAYERS)

    manifest = json.loads(store.reader(desc.digest).read())
    for layer, data in zip(manifest["layers"], LAYERS):
        assert store.info(layer["digest"]).labels[UNCOMPRESSED_LABEL] == sha256(data)
    assert store.info(manifest["config"]["digest"]).labels == {SNAPSHOT_REF_LABEL + sn.backend: top}


def test_shared_layers_are_not_applied_again(sn, work):
    store = ContentStore(str(work / "content"))
    unpack(image(store, LAYERS[:2]), store, sn)
    prepared = []
    real_prepare = sn.prepare
    sn.prepare = lambda key, parent="", labels=None: (prepared.append(key),
                                                       real_prepare(key, parent, labels))[1]
    top = unpack(image(store, LAYERS), store, sn)
    assert [k.split(" ")[1] for k in prepared] == [top]
    assert len(committed(sn)) == 3
    assert unpack(image(store, LAYERS), store, sn) == top and len(prepared) == 1


def test_another_unpack_commits_the_same_layer_first(sn, work):
    store = ContentStore(str(work / "content"))
    chain = sha256(LAYERS[0])
    real_prepare = sn.prepare

    def racing_prepare(key, parent="", labels=None):
        # Between our stat and our commit, someone else commits the chain.
        real_prepare("other", parent)
        sn.commit(chain, "other")
        sn.prepare = real_prepare
        return real_prepare(key, parent, labels)

    sn.prepare = racing_prepare
    assert unpack(image(store, LAYERS[:1]), store, sn) == chain
    assert committed(sn) == [(chain, Kind.COMMITTED, "")]  # ours is gone


def test_diffid_mismatch_leaves_nothing(sn, work):
    store = ContentStore(str(work / "content"))
    wrong = [sha256(LAYERS[0]), sha256(b"not the second layer"), sha256(LAYERS[2])]
    desc = image(store, LAYERS, diff_ids=wrong)
    with pytest.raises(InvalidArgument, match=f"layer {sha256(gz(LAYERS[1]))}: layer diffID mismatch"):
        unpack(desc, store, sn)
    # The first layer is committed; no active snapshot is left behind.
    assert committed(sn) == [(wrong[0], Kind.COMMITTED, "")]


def test_hostile_layer_fails_cleanly(sn, work):
    store = ContentStore(str(work / "content"))
    evil = tar(symlink("up", "../../../.."), file("up/escaped", b"x"), hardlink("h", "/etc/shadow"))
    with pytest.raises(InvalidArgument, match="layer sha256:.*'h'.*does not exist"):
        unpack(image(store, [LAYERS[0], evil]), store, sn)
    assert [c[0] for c in committed(sn)] == [sha256(LAYERS[0])]
    assert not (work / "escaped").exists() and not (work.parent / "escaped").exists()


def test_bad_manifests(sn, work):
    store = ContentStore(str(work / "content"))
    desc = image(store, LAYERS[:1], diff_ids=[sha256(LAYERS[0]), sha256(LAYERS[1])])
    with pytest.raises(InvalidArgument, match="has 1 layers but its config .* has 2 diff_ids"):
        unpack(desc, store, sn)
    index = put(store, b'{"schemaVersion": 2, "manifests": []}',
                "application/vnd.oci.image.index.v1+json")
    with pytest.raises(InvalidArgument, match="cannot unpack manifest sha256:.*: it is an index"):
        unpack(Descriptor.from_dict(index), store, sn)
    config = put(store, b'{"rootfs": {"type": "layers", "diff_ids": "no"}}',
                 "application/vnd.oci.image.config.v1+json")
    manifest = put(store, json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "config": config,
                                      "layers": []}).encode(), MANIFEST)
    with pytest.raises(InvalidArgument, match="rootfs is not"):
        unpack(Descriptor.from_dict(manifest), store, sn)
    assert committed(sn) == []


def test_apply_through_mounts(work):
    # Mounts that are neither one overlay nor one bind: applied through a
    # temporary mount, which is gone afterwards.
    a, b, tmp = work / "a", work / "b", work / "tmp"
    for d in (a, b, tmp):
        d.mkdir()
    (a / "inner").mkdir()
    mounts = [Mount("bind", str(a), options=("rbind", "rw")),
              Mount("bind", str(b), target="inner", options=("rbind", "rw"))]
    data = tar(file("x", b"1"), file("inner/y", b"2"))
    res = apply_to_mounts(mounts, io.BytesIO(data), tmp_dir=str(tmp), expected_diffid=sha256(data))
    assert res.entries == 2
    assert (a / "x").read_bytes() == b"1" and (b / "y").read_bytes() == b"2"
    assert list(tmp.iterdir()) == []
    with pytest.raises(OSError, match="Read-only"):
        apply_to_mounts([Mount("bind", str(a), options=("rbind", "ro"))], io.BytesIO(data),
                        tmp_dir=str(tmp))
    assert list(tmp.iterdir()) == [] and not (a / "inner/y").exists()


@pytest.mark.skipif(not shutil.which("umoci"), reason="umoci not installed")
def test_unpack_matches_umoci(sn, work):
    # A peer builds the image (umoci repack writes whiteouts for what a
    # layer deleted) and unpacks it; our snapshot must hold the same tree.
    layout = work / "layout"

    def umoci(*args):
        subprocess.run(["umoci", *map(str, args)], check=True, capture_output=True)

    umoci("init", "--layout", layout)
    umoci("new", "--image", f"{layout}:t")
    umoci("unpack", "--image", f"{layout}:t", work / "b1")
    r = work / "b1/rootfs"
    for d in ("bin", "etc/sub", "opq/d"):
        (r / d).mkdir(parents=True)
    (r / "bin/tool").write_bytes(b"tool")
    os.chmod(r / "bin/tool", 0o4755)
    os.symlink("tool", r / "bin/sh")
    (r / "etc/a").write_bytes(b"a")
    os.link(r / "etc/a", r / "etc/a2")
    os.setxattr(r / "etc/a", "user.k", b"v")
    (r / "etc/sub/x").write_bytes(b"x")
    (r / "opq/old").write_bytes(b"o")
    (r / "opq/d/old2").write_bytes(b"o")
    os.mkfifo(r / "fifo")
    os.mknod(r / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chown(r / "etc/sub/x", 1000, 1000)
    umoci("repack", "--image", f"{layout}:t", work / "b1")
    umoci("unpack", "--image", f"{layout}:t", work / "b2")
    r = work / "b2/rootfs"
    os.unlink(r / "etc/a")
    remove_tree(str(r / "etc/sub"))
    remove_tree(str(r / "opq"))
    (r / "opq").mkdir()
    (r / "opq/new").write_bytes(b"n")
    (r / "newfile").write_bytes(b"new")
    umoci("repack", "--image", f"{layout}:t", work / "b2")
    umoci("unpack", "--image", f"{layout}:t", work / "ref")

    store = ContentStore(str(layout))  # an OCI layout has the store's blob layout
    index = json.loads((layout / "index.json").read_bytes())
    top = unpack(Descriptor.from_dict(index["manifests"][0]), store, sn)
    want = tree(str(work / "ref/rootfs"))
    assert {"etc/a2", "opq/new", "newfile", "null", "fifo"} <= set(want)
    assert not {"etc/a", "etc/sub", "opq/old", "opq/d"} & set(want)
    assert rootfs_tree(sn, top, work / "view") == want


def test_pull_unpack_and_gc(registry, work):
    # The whole path through the metadata layer: push to a real
    # docker-registry, pull into a tenant's store, unpack, and check that
    # GC keeps the snapshots exactly as long as the image (the labels).
    client = Client(hosts=Hosts.plain_http(registry.host))
    src = ContentStore(str(work / "src"))
    ref = f"{registry.host}/pyrun-test/unpack:1"
    push(ref, src, image(src, LAYERS, compress=(zstandard.ZstdCompressor().compress, ZST)),
         client=client)
    backend = snapshotters.new("overlayfs", str(work / "snapshots"))
    db = DB(str(work / "meta"), snapshotters={"overlayfs": backend})
    try:
        store, sn = db.content_store("ns"), db.snapshotter("ns", "overlayfs")
        _, root, manifests = pull(ref, store, client=client)
        top = unpack(manifests[0], store, sn, snapshotter_name="overlayfs")
        assert rootfs_tree(sn, top, work / "view") == native_tree(work, LAYERS)
        db.images("ns").create(Image("img:1", root.to_dict()))
        collect(db)
        assert [c[0] for c in committed(sn)] == sorted(chain_ids([sha256(d) for d in LAYERS]))
        db.images("ns").delete("img:1")
        collect(db)
        assert committed(sn) == [] and committed(backend) == []
    finally:
        db.close()
        backend.close()
