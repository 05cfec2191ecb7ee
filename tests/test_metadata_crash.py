"""Several processes on one root at once, and processes killed with
SIGKILL at random points: nothing is lost, nothing half-made is visible,
and check() finds no problem; a final GC leaves no orphan behind."""
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace

from pyrun.metadata import DB, check, collect
from pyrun.snapshots.native import NativeSnapshotter

WORKTREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Writes blobs (some shared by all writers, some its own) in its namespace,
# each under a lease that is dropped once an image holds the blob.
WRITER = r"""
import hashlib, sys, time
from pyrun.content import write_blob
from pyrun.errdefs import Unavailable
from pyrun.metadata import DB, Image
root, ns, me, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
db = DB(root)
for j in range(count):
    data = (b"common %d " % j if j % 2 else b"own %d %d " % (me, j)) * (3000 * (j + 1))
    desc = {"mediaType": "application/octet-stream", "size": len(data),
            "digest": "sha256:" + hashlib.sha256(data).hexdigest()}
    lease = db.leases(ns).create().id
    while True:
        try:
            write_blob(db.content_store(ns, lease=lease), f"ref-{j}", data, desc)
            break
        except Unavailable:  # another writer of this namespace holds ref-j
            time.sleep(0.01)
    db.images(ns).create(Image(f"img-{me}-{j}", desc))
    db.leases(ns).delete(lease)
"""

GC_LOOP = r"""
import os, sys
from pyrun.metadata import DB, collect
db = DB(sys.argv[1])
while not os.path.exists(sys.argv[2]):
    collect(db, ingest_grace=0)
"""

# Does random work on content, images, snapshots and GC until killed.
CHAOS = r"""
import hashlib, os, random, sys
from pyrun.content import write_blob
from pyrun.errdefs import PyrunError
from pyrun.metadata import DB, Container, Image, collect
from pyrun.snapshots.native import NativeSnapshotter
root, snaproot, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rnd = random.Random(seed)
db = DB(root, {"native": NativeSnapshotter(snaproot)})
print("ready", flush=True)
while True:
    ns = rnd.choice(["ns-a", "ns-b"])
    store, snaps, images = db.content_store(ns), db.snapshotter(ns, "native"), db.images(ns)
    op = rnd.randrange(9)
    try:
        if op <= 2:
            n = rnd.randrange(6)
            data = (b"blob %d " % n) * (20000 * (n + 1)) if n < 4 else os.urandom(rnd.randrange(1, 300000))
            desc = {"mediaType": "application/octet-stream", "size": len(data),
                    "digest": "sha256:" + hashlib.sha256(data).hexdigest()}
            write_blob(store, f"ref-{n}", data, desc)
            images.create(Image(f"img-{n}", desc))
        elif op == 3:
            w = store.writer(f"raw-{rnd.randrange(3)}")
            for _ in range(rnd.randrange(1, 20)):
                w.write(os.urandom(8192))
            if rnd.random() < 0.5:
                w.commit(0, None)
            w.close()
        elif op == 4:
            key = f"k{rnd.randrange(4)}"
            mounts = snaps.prepare(key, rnd.choice(["", "c0", "c1", "c2"]))
            with open(os.path.join(mounts[0].source, f"f{rnd.randrange(100)}"), "wb") as f:
                f.write(os.urandom(rnd.randrange(1, 50000)))
            if rnd.random() < 0.3:
                db.containers(ns).create(Container(f"ctr-{key}", runtime={"name": "r"},
                                                   snapshotter="native", snapshot_key=key))
            else:
                snaps.commit(f"c{rnd.randrange(3)}", key, labels={"containerd.io/gc.root": "x"})
        elif op == 5:
            snaps.remove(rnd.choice(["k0", "k1", "k2", "k3", "c0", "c1", "c2"]))
        elif op == 6:
            images.delete(f"img-{rnd.randrange(6)}")
        elif op == 7:
            db.containers(ns).delete(f"ctr-k{rnd.randrange(4)}")
        else:
            collect(db, ingest_grace=0)
    except PyrunError:
        pass
"""


def run_py(code, *args, **kw):
    env = dict(os.environ, PYTHONPATH=WORKTREE)
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, **kw)


def test_concurrent_writers_and_gc_lose_nothing(safe_tmp):
    root = str(safe_tmp / "root")
    DB(root).close()
    stop = str(safe_tmp / "stop")
    gc = run_py(GC_LOOP, root, stop)
    writers = [run_py(WRITER, root, f"ns{i % 2}", i, 12) for i in range(4)]
    try:
        assert [w.wait(timeout=300) for w in writers] == [0, 0, 0, 0]
    finally:
        open(stop, "w").close()
        assert gc.wait(timeout=60) == 0
    db = DB(root)
    for i in range(4):
        images = db.images(f"ns{i % 2}")
        store = db.content_store(f"ns{i % 2}")
        for j in range(12):
            target = images.get(f"img-{i}-{j}").target
            with store.reader(target["digest"]) as r:
                assert "sha256:" + hashlib.sha256(r.read()).hexdigest() == target["digest"]
    collect(db, ingest_grace=0)
    assert len(db.content.list()) == 6 + 4 * 6  # the common blobs once, each writer's own
    assert check(root) == []
    db.close()


def _kill_round(root, snaproot, seed, rnd):
    procs = [run_py(CHAOS, root, snaproot, seed * 2 + k, stdout=subprocess.PIPE)
             for k in range(2)]
    for p in procs:
        assert p.stdout.readline() == b"ready\n"
    for p in procs:
        time.sleep(rnd.uniform(0.0, 0.25))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()


def test_kill9_at_random_points(safe_tmp):
    root, snaproot = str(safe_tmp / "root"), str(safe_tmp / "native")
    backend = NativeSnapshotter(snaproot)
    base = int(os.environ.get("PYRUN_CRASH_SEED", "1234"))
    rnd = random.Random(base)
    for seed in range(base, base + 15):  # 30 kills
        _kill_round(root, snaproot, seed, rnd)
        problems = check(root, {"native": backend})
        assert problems == [], f"after kill round {seed}: {problems}"
    db = DB(root, {"native": backend})  # opening recovers cut-short commits
    assert check(root, {"native": backend}) == []
    for ns in db.namespaces().list():
        for img in db.images(ns).list():
            db.images(ns).delete(img.name)
        for c in db.containers(ns).list():
            db.containers(ns).delete(c.id)
        snaps, infos = db.snapshotter(ns, "native"), []
        snaps.walk(infos.append)
        for info in infos:  # drop gc.root so that GC may take them
            snaps.update(replace(info, labels={}), ["labels"])
    collect(db, ingest_grace=0)
    assert db.content.list() == [] and db.content.list_statuses() == []
    left = []
    backend.walk(left.append)
    assert left == []
    assert os.listdir(os.path.join(snaproot, "snapshots")) == []
    assert [n for n in os.listdir(os.path.join(root, "ingest"))] == []
    assert check(root, {"native": backend}) == []
    db.close()
    backend.close()
