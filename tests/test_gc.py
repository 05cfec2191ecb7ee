"""Garbage collection over namespaces, content, snapshots, leases, ingests."""
import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from pyrun.content import write_blob
from pyrun.content.digest import digest_bytes
from pyrun.metadata import DB, Container, Image, Resource, check, collect
from pyrun.snapshots.native import NativeSnapshotter

INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


@pytest.fixture
def db(safe_tmp):
    backend = NativeSnapshotter(str(safe_tmp / "native"))
    d = DB(str(safe_tmp / "root"), snapshotters={"native": backend})
    yield d
    d.close()
    backend.close()


def put(store, data, labels=None):
    """Write ``data`` and return its descriptor."""
    desc = {"mediaType": "application/octet-stream", "digest": digest_bytes(data), "size": len(data)}
    write_blob(store, f"ref-{desc['digest']}", data, desc, labels=labels)
    return desc


def image_graph(store, tag=b""):
    """index -> manifest -> config + 2 layers, linked by gc.ref labels as the
    registry client labels them.  Returns (index desc, all digests)."""
    layers = [put(store, b"layer %d %s" % (i, tag)) for i in range(2)]
    config = put(store, b'{"config": "%s"}' % tag)
    mlabels = {"containerd.io/gc.ref.content.config": config["digest"]}
    mlabels.update({f"containerd.io/gc.ref.content.l.{i}": l["digest"] for i, l in enumerate(layers)})
    manifest = put(store, json.dumps({"m": tag.decode()}).encode(), mlabels)
    index = put(store, json.dumps({"i": tag.decode()}).encode(),
                {"containerd.io/gc.ref.content.m.0": manifest["digest"]})
    index["mediaType"] = INDEX_TYPE
    return index, {d["digest"] for d in (*layers, config, manifest, index)}


def on_disk(db):
    return {i.digest for i in db.content.list()}


def backend_keys(db):
    keys = []
    db.backend_snapshotter("native").walk(lambda i: keys.append(i.name))
    return set(keys)


def test_image_keeps_its_graph(db):
    store = db.content_store("ns1")
    index, digests = image_graph(store)
    loose = put(store, b"unreferenced")
    db.images("ns1").create(Image("img:1", index))
    stats = collect(db)
    assert stats.blobs == [loose["digest"]] and stats.content_rows == 1
    assert on_disk(db) == digests
    assert {i.digest for i in store.list()} == digests
    db.images("ns1").delete("img:1")
    collect(db)
    assert on_disk(db) == set() and store.list() == []
    assert check(db.root, db.snapshotters) == []


def test_shared_blob_stays_while_any_namespace_references_it(db):
    a, b = db.content_store("ns-a"), db.content_store("ns-b")
    index, digests = image_graph(a)
    image_graph(b)  # same bytes, written again by another tenant (shared commits)
    db.images("ns-a").create(Image("img", index))
    db.images("ns-b").create(Image("img", index))
    db.images("ns-a").delete("img")
    collect(db)
    assert a.list() == [] and on_disk(db) == digests
    db.images("ns-b").delete("img")
    collect(db)
    assert on_disk(db) == set()


def test_leases_protect_until_expiry(db):
    leases = db.leases("ns1")
    leases.create("pull")
    store = db.content_store("ns1", lease="pull")
    kept = put(store, b"in a lease")
    snaps = db.snapshotter("ns1", "native", lease="pull")
    snaps.prepare("extract")
    collect(db)
    assert kept["digest"] in on_disk(db) and len(backend_keys(db)) == 1
    past = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
    leases.create("old", labels={"containerd.io/gc.expire": past})
    leases.add_resource("old", Resource(kept["digest"], "content"))
    leases.delete("pull")
    stats = collect(db)
    assert stats.leases == 1 and leases.list() == []
    assert on_disk(db) == set() and backend_keys(db) == set()
    assert check(db.root, db.snapshotters) == []


def test_gc_root_label(db):
    store = db.content_store("ns1")
    root = put(store, b"pinned", {"containerd.io/gc.root": "1"})
    put(store, b"not pinned")
    collect(db)
    assert on_disk(db) == {root["digest"]}


def test_snapshot_chains_and_label_refs(db):
    snaps = db.snapshotter("ns1", "native")
    snaps.prepare("l1-x")
    snaps.commit("l1", "l1-x")
    snaps.prepare("l2-x", parent="l1")
    snaps.commit("l2", "l2-x")
    snaps.prepare("stray")
    snaps.prepare("ctr-rootfs", parent="l2")
    db.containers("ns1").create(Container("ctr", runtime={"name": "r"}, snapshotter="native",
                                          snapshot_key="ctr-rootfs"))
    # A config blob names the unpacked top layer, as unpack labels it.
    store = db.content_store("ns1")
    put(store, b"config", {"containerd.io/gc.root": "1",
                           "containerd.io/gc.ref.snapshot.native": "l2"})
    stats = collect(db)
    assert stats.snapshot_rows == 1
    names = []
    snaps.walk(lambda i: names.append(i.name))
    assert names == ["ctr-rootfs", "l1", "l2"]
    db.containers("ns1").delete("ctr")
    collect(db)
    names = []
    snaps.walk(lambda i: names.append(i.name))
    assert names == ["l1", "l2"] and len(backend_keys(db)) == 2


def test_orphan_backend_snapshots_removed(db):
    backend = db.backend_snapshotter("native")
    backend.prepare("orphan-parent-x")
    backend.commit("orphan-parent", "orphan-parent-x")
    backend.prepare("orphan-child", "orphan-parent")
    os.makedirs(os.path.join(backend.root, "snapshots", "999"))  # a crashed prepare's dir
    db.snapshotter("ns1", "native").prepare("kept", labels={"containerd.io/gc.root": "y"})
    stats = collect(db)
    assert ("native", "orphan-child") in stats.snapshots
    assert len(backend_keys(db)) == 1 and stats.errors == []
    assert len(os.listdir(os.path.join(backend.root, "snapshots"))) == 1


def test_ingests(db):
    store = db.content_store("ns1")
    live = store.writer("live")
    live.write(b"in flight")
    idle = store.writer("idle")
    idle.write(b"abandoned")
    idle.close()
    db.leases("ns1").create("hold")
    with db.content_store("ns1", lease="hold").writer("leased") as w:
        w.write(b"held")
    collect(db)  # default grace: all recent, all kept
    assert {s.ref for s in store.list_statuses()} == {"live", "idle", "leased"}
    stats = collect(db, ingest_grace=0)
    assert stats.ingests == ["ns1/idle"]
    assert {s.ref for s in store.list_statuses()} == {"live", "leased"}
    live.write(b" and more")
    digest = live.commit(0, None)  # the writer GC left alone still commits
    assert store.info(digest).size == len(b"in flight and more")


def test_gc_content_in_flight_commit_is_safe(db):
    """A blob committed without lease or image is garbage at the next GC;
    one committed in a lease survives it."""
    db.leases("ns1").create("l")
    kept = put(db.content_store("ns1", lease="l"), b"with lease")
    lost = put(db.content_store("ns1"), b"without")
    collect(db)
    assert on_disk(db) == {kept["digest"]}
    assert lost["digest"] not in on_disk(db)
