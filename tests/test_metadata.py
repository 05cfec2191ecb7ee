"""The namespaced metadata layer: namespaces, images, containers, leases,
tenant views of content and snapshots (native snapshotter backend)."""
import json
import os
import sqlite3
from datetime import timedelta

import pytest

from pyrun.content import Info, write_blob
from pyrun.content.digest import digest_bytes
from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from pyrun.metadata import DB, Container, Image, Resource, check
from pyrun.metadata.db import database_path
from pyrun.snapshots import Info as SnapshotInfo, Kind
from pyrun.snapshots.native import NativeSnapshotter

BLOB = b"shared layer " * 1000
DESC = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_bytes(BLOB),
        "size": len(BLOB)}


@pytest.fixture
def db(safe_tmp):
    backend = NativeSnapshotter(str(safe_tmp / "native"))
    d = DB(str(safe_tmp / "root"), snapshotters={"native": backend})
    yield d
    d.close()
    backend.close()


def test_namespaces(db):
    ns = db.namespaces()
    ns.create("tenant-a", labels={"team": "x"})
    with pytest.raises(AlreadyExists, match="tenant-a"):
        ns.create("tenant-a")
    with pytest.raises(InvalidArgument, match="'bad/name'"):
        ns.create("bad/name")
    db.images("tenant-b").create(Image("img", DESC))  # created on first use
    assert ns.list() == ["tenant-a", "tenant-b"]
    ns.set_label("tenant-a", "env", "prod")
    assert ns.labels("tenant-a") == {"team": "x", "env": "prod"}
    ns.set_label("tenant-a", "team", "")
    assert ns.labels("tenant-a") == {"env": "prod"}
    write_blob(db.content_store("tenant-b"), "r", BLOB, DESC)
    db.leases("tenant-b").create("l1")
    with pytest.raises(FailedPrecondition) as e:
        ns.delete("tenant-b")
    msg = str(e.value)
    assert "tenant-b must be empty" in msg and "1 images (img)" in msg
    assert "1 leases (l1)" in msg and f"1 content ({DESC['digest']})" in msg
    ns.delete("tenant-a")
    with pytest.raises(NotFound):
        ns.delete("tenant-a")


def test_images(db):
    images = db.images("ns1")
    img = images.create(Image("docker.io/library/busybox:latest", DESC, {"a": "1"}))
    assert img.created_at is not None
    with pytest.raises(AlreadyExists, match="busybox:latest"):
        images.create(Image("docker.io/library/busybox:latest", DESC))
    assert images.get("docker.io/library/busybox:latest").target == DESC
    with pytest.raises(NotFound):
        db.images("ns2").get("docker.io/library/busybox:latest")
    bad = dict(DESC, digest="sha256:nope")
    with pytest.raises(InvalidArgument) as e:
        images.create(Image("broken", bad))
    assert "image 'broken': target" in str(e.value) and "sha256:nope" in str(e.value)
    with pytest.raises(NotFound):
        images.get("broken")
    new_target = dict(DESC, size=1)
    up = images.update(Image("docker.io/library/busybox:latest", new_target, {"b": "2"}),
                       ["target", "labels.b"])
    assert up.target == new_target and up.labels == {"a": "1", "b": "2"}
    with pytest.raises(InvalidArgument, match="cannot update field 'name'"):
        images.update(Image("docker.io/library/busybox:latest", DESC), ["name"])
    images.create(Image("other", DESC))
    assert [i.name for i in images.list(["name~=busybox"])] == ["docker.io/library/busybox:latest"]
    assert len(images.list([f"target.digest=={DESC['digest']}"])) == 2
    images.delete("other")
    with pytest.raises(NotFound):
        images.delete("other")


def test_containers(db):
    cs = db.containers("ns1")
    c = Container("c1", image="busybox", runtime={"name": "io.containerd.runc.v2", "options": {}},
                  spec={"ociVersion": "1.0.2"}, snapshotter="native", snapshot_key="c1-snap",
                  labels={"x": "y"}, extensions={"ext": {"v": 1}})
    cs.create(c)
    got = cs.get("c1")
    assert (got.spec, got.runtime["name"], got.extensions) == (c.spec, c.runtime["name"], c.extensions)
    with pytest.raises(InvalidArgument, match="runtime name must be set"):
        cs.create(Container("c2", runtime={}))
    with pytest.raises(InvalidArgument, match="invalid container id 'a b'"):
        cs.create(Container("a b", runtime={"name": "r"}))
    with pytest.raises(InvalidArgument, match="needs a snapshotter"):
        cs.create(Container("c3", runtime={"name": "r"}, snapshot_key="k"))
    cs.update(Container("c1", spec={"ociVersion": "1.1.0"}), ["spec"])
    assert cs.get("c1").spec == {"ociVersion": "1.1.0"} and cs.get("c1").image == "busybox"
    assert [x.id for x in cs.list(["labels.x==y"])] == ["c1"]
    assert cs.list(["runtime.name==other"]) == []
    cs.delete("c1")
    assert cs.list() == []


def test_leases(db):
    leases = db.leases("ns1")
    lease = leases.create("l1", expire=timedelta(hours=1))
    assert "containerd.io/gc.expire" in lease.labels
    with pytest.raises(AlreadyExists):
        leases.create("l1")
    with pytest.raises(InvalidArgument, match="RFC 3339"):
        leases.create("l2", labels={"containerd.io/gc.expire": "tomorrow"})
    leases.add_resource("l1", Resource(DESC["digest"], "content"))
    leases.add_resource("l1", Resource("snap", "snapshots/native"))
    with pytest.raises(InvalidArgument, match="unknown type 'blob'"):
        leases.add_resource("l1", Resource("x", "blob"))
    with pytest.raises(NotFound):
        leases.add_resource("nope", Resource(DESC["digest"], "content"))
    assert leases.list_resources("l1") == [Resource(DESC["digest"], "content"),
                                           Resource("snap", "snapshots/native")]
    leases.delete_resource("l1", Resource("snap", "snapshots/native"))
    assert len(leases.list_resources("l1")) == 1
    assert [lease.id for lease in leases.list(["id==l1"])] == ["l1"]
    assert db.leases("ns2").list() == []
    leases.delete("l1")
    with pytest.raises(NotFound):
        leases.list_resources("l1")


def test_content_isolation_and_shared_commit(db):
    a, b = db.content_store("ns-a"), db.content_store("ns-b")
    write_blob(a, "pull-1", BLOB, DESC)
    assert a.info(DESC["digest"]).size == len(BLOB)
    with pytest.raises(NotFound, match="ns-b"):
        b.info(DESC["digest"])
    with pytest.raises(NotFound):
        b.reader(DESC["digest"])
    assert b.list() == []
    with pytest.raises(AlreadyExists, match="ns-a"):
        a.writer("again", expected=DESC["digest"])
    # containerd's shared policy: ns-b already "has" every byte.
    with b.writer("pull-1", total=len(BLOB), expected=DESC["digest"]) as w:
        assert w.status().offset == len(BLOB)
        w.commit(len(BLOB), DESC["digest"], labels={"l": "v"})
    assert b.info(DESC["digest"]).labels == {"l": "v"}
    assert a.info(DESC["digest"]).labels == {}
    assert b.list_statuses() == []
    # Removed from disk only when no namespace has it.
    a.delete(DESC["digest"])
    assert db.content.exists(DESC["digest"])
    with b.reader(DESC["digest"]) as r:
        assert r.read() == BLOB
    b.delete(DESC["digest"])
    assert not db.content.exists(DESC["digest"])


def test_content_ingests_per_namespace(db):
    a, b = db.content_store("ns-a"), db.content_store("ns-b")
    wa = a.writer("same-ref")
    wa.write(b"abc")
    with b.writer("same-ref") as wb:  # another tenant's ref, another ingest
        wb.write(b"x")
    with pytest.raises(Unavailable, match="same-ref locked"):
        a.writer("same-ref")
    assert [(s.ref, s.offset) for s in a.list_statuses()] == [("same-ref", 3)]
    assert [(s.ref, s.offset) for s in b.list_statuses()] == [("same-ref", 1)]
    wa.close()
    a.abort("same-ref")
    with pytest.raises(NotFound, match="ns-a"):
        a.status("same-ref")
    assert b.status("same-ref").offset == 1


def test_content_commit_wrong_size_changes_nothing(db):
    a = db.content_store("ns-a")
    w = a.writer("r1", expected=DESC["digest"])
    w.write(BLOB[:10])
    with pytest.raises(FailedPrecondition, match=f"unexpected size 10, expected {len(BLOB)}"):
        w.commit(len(BLOB), DESC["digest"])
    assert a.list() == [] and not db.content.exists(DESC["digest"])
    assert a.status("r1").offset == 10
    w.close()


def test_content_update_labels(db):
    a = db.content_store("ns-a")
    write_blob(a, "r", BLOB, DESC, labels={"k": "1"})
    info = a.update(Info(DESC["digest"], labels={"j": "2"}), ["labels.j"])
    assert info.labels == {"k": "1", "j": "2"}
    assert [i.digest for i in a.list(["labels.j==2"])] == [DESC["digest"]]


def test_lease_bound_stores(db):
    db.leases("ns-a").create("pull")
    a = db.content_store("ns-a", lease="pull")
    write_blob(a, "r", BLOB, DESC)
    snaps = db.snapshotter("ns-a", "native", lease="pull")
    snaps.prepare("k1")
    types = {(r.type, r.id) for r in db.leases("ns-a").list_resources("pull")}
    assert types == {("ingests", "r"), ("content", DESC["digest"]), ("snapshots/native", "k1")}
    nolease = db.snapshotter("ns-a", "native", lease="missing")
    with pytest.raises(NotFound, match="lease missing"):
        nolease.prepare("k2")
    with pytest.raises(NotFound):
        snaps.stat("k2")


def test_snapshots_isolated(db):
    a, b = db.snapshotter("ns-a", "native"), db.snapshotter("ns-b", "native")
    a.prepare("layer1-extract")
    a.commit("layer1", "layer1-extract", labels={"x": "1"})
    b.prepare("layer1-extract")  # same key, other tenant
    with pytest.raises(NotFound, match="'layer1'"):
        b.prepare("c", parent="layer1")
    with pytest.raises(AlreadyExists, match="'layer1-extract'"):
        b.prepare("layer1-extract")
    mounts = a.prepare("ctr", parent="layer1")
    assert mounts and mounts[0].type == "bind"
    info = a.stat("ctr")
    assert (info.kind, info.name, info.parent) == (Kind.ACTIVE, "ctr", "layer1")
    assert a.stat("layer1").labels == {"x": "1"}
    with pytest.raises(FailedPrecondition, match="children 'ctr'"):
        a.remove("layer1")
    names = []
    a.walk(lambda i: names.append(i.name))
    assert names == ["ctr", "layer1"]
    names = []
    a.walk(lambda i: names.append(i.name), ["kind==committed"])
    assert names == ["layer1"]
    assert a.usage("layer1").inodes >= 1
    a.update(SnapshotInfo(Kind.COMMITTED, "layer1", labels={"y": "2"}), ["labels.y"])
    assert a.stat("layer1").labels == {"x": "1", "y": "2"}
    a.remove("ctr")
    a.remove("layer1")
    backend_keys = []
    db.backend_snapshotter("native").walk(lambda i: backend_keys.append(i.name))
    assert len(backend_keys) == 1 and backend_keys[0].startswith("ns-b/")
    with pytest.raises(NotFound, match="snapshotter 'zfs'"):
        db.snapshotter("ns-a", "zfs")


def test_snapshot_prepare_failure_leaves_no_row(db):
    a = db.snapshotter("ns-a", "native")
    a.prepare("active")
    with pytest.raises(FailedPrecondition):
        a.prepare("child", parent="active")  # the backend refuses: parent not committed
    with pytest.raises(NotFound):
        a.stat("child")
    assert check(db.root, db.snapshotters) == []


def test_schema_version_newer_refused(safe_tmp):
    root = str(safe_tmp / "root")
    DB(root).close()
    conn = sqlite3.connect(database_path(root))
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(FailedPrecondition, match="schema version 99 is newer"):
        DB(root)


def test_check_reports_corruption(db):
    a = db.content_store("ns-a")
    write_blob(a, "r", BLOB, DESC)
    a.writer("partial").write(b"abc")
    assert check(db.root) == []
    path = db.content.blob_path(DESC["digest"])
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"X")
    stray = os.path.join(os.path.dirname(path), "half-written.tmp")
    open(stray, "w").close()
    problems = check(db.root)
    assert any("content hashes to" in p for p in problems)
    assert any("half-written.tmp: not a blob name" in p for p in problems)
    os.unlink(path)
    assert any(f"content {DESC['digest']}: blob missing" in p for p in check(db.root))


def test_snapshot_commit_cut_short_is_recovered(db):
    snaps = db.snapshotter("ns1", "native")
    snaps.prepare("done")
    snaps.prepare("not-done")
    rows = {r["key"]: r for r in db.query("SELECT * FROM snapshots")}
    # What a process killed inside commit leaves: the intent recorded, and
    # the backend commit either done ("done") or not ("not-done").
    for key in rows:
        intent = {"name": f"{key}-c", "backend_key": f"ns1/cafe/{key}-c", "labels": {"x": "1"}}
        db.conn.execute("UPDATE snapshots SET pending=? WHERE id=?",
                        (json.dumps(intent), rows[key]["id"]))
    db.backend_snapshotter("native").commit("ns1/cafe/done-c", rows["done"]["backend_key"])
    assert check(db.root, db.snapshotters) == []
    DB(db.root, db.snapshotters).close()  # opening recovers
    info = snaps.stat("done-c")
    assert (info.kind, info.labels) == (Kind.COMMITTED, {"x": "1"})
    with pytest.raises(NotFound):
        snaps.stat("done")
    assert snaps.stat("not-done").kind == Kind.ACTIVE
    assert db.query("SELECT count(*) FROM snapshots WHERE pending != ''")[0][0] == 0
    snaps.commit("not-done-c", "not-done")
    assert check(db.root, db.snapshotters) == []


def test_snapshot_commit_of_view_refused_cleanly(db):
    snaps = db.snapshotter("ns1", "native")
    snaps.prepare("a")
    snaps.commit("base", "a")
    snaps.view("v", parent="base")
    with pytest.raises(FailedPrecondition):
        snaps.commit("v-c", "v")
    assert snaps.stat("v").kind == Kind.VIEW
    with pytest.raises(NotFound):
        snaps.stat("v-c")
    assert db.query("SELECT count(*) FROM snapshots WHERE pending != ''")[0][0] == 0
