"""Garbage collection: mark and sweep over all namespaces (containerd
``metadata/gc.go`` and ``gc/gc.go``).

Roots, per namespace: images (their target), containers (their snapshot),
unexpired leases (the content, snapshots and ingests added to them), and
any content or snapshot labelled ``containerd.io/gc.root``.  Edges: the
labels ``containerd.io/gc.ref.content[.<anything>]`` (value: a digest) and
``containerd.io/gc.ref.snapshot.<snapshotter>[.<anything>]`` (value: a
key) on images, containers, content and snapshots, and a snapshot's
parent.  So index -> manifests -> config and layers -> unpacked snapshots
stay as long as the image does.

GC holds the metadata lock throughout (no snapshot commit runs meanwhile),
first finishes snapshot commits that a dead process left half-done
(:func:`pyrun.metadata.snapshots.recover`), then runs two transactions,
each holding the database write lock (which every content commit and
snapshot change also takes, so nothing in flight is seen half-made):

1. mark, then delete unreachable content and snapshot rows and expired
   leases;
2. remove from disk what no row refers to any more: blobs, backend
   snapshots (children first), and stale ingests (not locked by a live
   writer, not leased, untouched for ``ingest_grace`` seconds).

Disk objects go only after the rows are gone, so a crash at any point
leaves orphans (removed by the next run), never a row without its object.
"""
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyrun.errdefs import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from pyrun.metadata.leases import EXPIRE_LABEL, parse_expire
from pyrun.metadata.db import metadata_lock
from pyrun.metadata.snapshots import recover

ROOT_LABEL = "containerd.io/gc.root"
CONTENT_REF = "containerd.io/gc.ref.content"
SNAPSHOT_REF = "containerd.io/gc.ref.snapshot."

# Default age (seconds) after which an abandoned ingest is removed.
INGEST_GRACE = 24 * 3600


@dataclass
class Stats:
    """What one collection removed."""

    content_rows: int = 0
    snapshot_rows: int = 0
    leases: int = 0
    blobs: list = field(default_factory=list)
    snapshots: list = field(default_factory=list)
    ingests: list = field(default_factory=list)
    errors: list = field(default_factory=list)


def _label_refs(ns, labels):
    """Nodes referenced from a labels dict: ("content", ns, digest) and
    ("snapshot", ns, snapshotter, key)."""
    for k, v in labels.items():
        if k == CONTENT_REF or k.startswith(CONTENT_REF + "."):
            yield ("content", ns, v)
        elif k.startswith(SNAPSHOT_REF):
            snapshotter = k[len(SNAPSHOT_REF):].split(".", 1)[0]
            if snapshotter:
                yield ("snapshot", ns, snapshotter, v)


def _expired(labels, now):
    value = labels.get(EXPIRE_LABEL)
    if value is None:
        return False
    try:
        return parse_expire(value, "lease") <= now
    except InvalidArgument:
        return False  # unreadable expiry: keep the lease rather than guess


def _mark(conn, now):
    """(reachable nodes, leased ingests {(ns, ref)}, expired leases)."""
    roots, edges = [], defaultdict(list)
    leased_ingests, expired = set(), []
    for r in conn.execute("SELECT namespace, id, labels FROM leases"):
        if _expired(json.loads(r["labels"]), now):
            expired.append((r["namespace"], r["id"]))
    expired_set = set(expired)
    for r in conn.execute("SELECT namespace, lease, type, id FROM lease_resources"):
        if (r["namespace"], r["lease"]) in expired_set:
            continue
        ns, rtype, rid = r["namespace"], r["type"], r["id"]
        if rtype == "content":
            roots.append(("content", ns, rid))
        elif rtype == "ingests":
            leased_ingests.add((ns, rid))
        elif rtype.startswith("snapshots/"):
            roots.append(("snapshot", ns, rtype[len("snapshots/"):], rid))
    for r in conn.execute("SELECT namespace, target, labels FROM images"):
        roots.append(("content", r["namespace"], json.loads(r["target"])["digest"]))
        roots.extend(_label_refs(r["namespace"], json.loads(r["labels"])))
    for r in conn.execute("SELECT namespace, snapshotter, snapshot_key, labels FROM containers"):
        if r["snapshot_key"]:
            roots.append(("snapshot", r["namespace"], r["snapshotter"], r["snapshot_key"]))
        roots.extend(_label_refs(r["namespace"], json.loads(r["labels"])))
    for r in conn.execute("SELECT namespace, digest, labels FROM content"):
        node, labels = ("content", r["namespace"], r["digest"]), json.loads(r["labels"])
        if ROOT_LABEL in labels:
            roots.append(node)
        edges[node].extend(_label_refs(r["namespace"], labels))
    for r in conn.execute("SELECT namespace, snapshotter, key, parent, labels FROM snapshots"):
        node, labels = ("snapshot", r["namespace"], r["snapshotter"], r["key"]), json.loads(r["labels"])
        if ROOT_LABEL in labels:
            roots.append(node)
        if r["parent"]:
            edges[node].append(("snapshot", r["namespace"], r["snapshotter"], r["parent"]))
        edges[node].extend(_label_refs(r["namespace"], labels))
    reachable, todo = set(), list(roots)
    while todo:
        node = todo.pop()
        if node not in reachable:
            reachable.add(node)
            todo.extend(edges.get(node, ()))
    return reachable, leased_ingests, expired


def _removal_order(infos):
    """Backend snapshot names ordered children first."""
    parents = {i.name: i.parent for i in infos}

    def depth(name):
        d = 0
        while parents.get(name):
            name, d = parents[name], d + 1
        return d
    return sorted(parents, key=depth, reverse=True)


def collect(db, ingest_grace=INGEST_GRACE):
    """Run one garbage collection over every namespace of ``db``.

    ``ingest_grace``: seconds an unlocked, unleased ingest must have been
    idle before it is removed.  Returns :class:`Stats`; a backend object
    that cannot be removed (e.g. a snapshot still mounted) is listed in
    ``errors`` and retried next time.
    """
    with metadata_lock(db.root):
        recover(db)
        return _collect(db, ingest_grace)


def _collect(db, ingest_grace):
    stats = Stats()
    now = datetime.now(timezone.utc)
    with db.transaction() as c:
        reachable, leased_ingests, expired = _mark(c, now)
        for ns, lease in expired:
            c.execute("DELETE FROM leases WHERE namespace=? AND id=?", (ns, lease))
        stats.leases = len(expired)
        for r in c.execute("SELECT namespace, digest FROM content").fetchall():
            if ("content", r["namespace"], r["digest"]) not in reachable:
                c.execute("DELETE FROM content WHERE namespace=? AND digest=?", tuple(r))
                stats.content_rows += 1
        for r in c.execute("SELECT id, namespace, snapshotter, key FROM snapshots").fetchall():
            if ("snapshot", r["namespace"], r["snapshotter"], r["key"]) not in reachable:
                c.execute("DELETE FROM snapshots WHERE id=?", (r["id"],))
                stats.snapshot_rows += 1
    with db.transaction() as c:
        _sweep_blobs(db, c, stats)
        _sweep_snapshots(db, c, stats)
        _sweep_ingests(db, leased_ingests, ingest_grace, stats)
    return stats


def _sweep_blobs(db, c, stats):
    kept = {r[0] for r in c.execute("SELECT DISTINCT digest FROM content")}
    for info in db.content.list():
        if info.digest not in kept:
            try:
                db.content.delete(info.digest)
                stats.blobs.append(info.digest)
            except NotFound:
                pass


def _sweep_snapshots(db, c, stats):
    for name, backend in sorted(db.snapshotters.items()):
        kept = {r[0] for r in c.execute("SELECT backend_key FROM snapshots WHERE snapshotter=?",
                                        (name,))}
        infos = []
        backend.walk(infos.append)
        for key in _removal_order(infos):
            if key in kept:
                continue
            try:
                backend.remove(key)
                stats.snapshots.append((name, key))
            except NotFound:
                pass
            except (FailedPrecondition, OSError) as e:
                stats.errors.append(f"snapshot {name}/{key}: {e}")
        # Directories a crashed backend call left behind (prepare killed
        # before its own commit, remove killed half-way).
        stats.snapshots.extend((name, path) for path in backend.cleanup())


def _sweep_ingests(db, leased, grace, stats):
    store = db.content
    cutoff = time.time() - grace
    for st in store.list_statuses():
        ns, _, ref = st.ref.partition("/")
        if (ns, ref) in leased or st.updated_at.timestamp() > cutoff or store.is_locked(st.ref):
            continue
        try:
            store.abort(st.ref)
            stats.ingests.append(st.ref)
        except (NotFound, Unavailable):
            pass  # finished or picked up meanwhile
    stats.ingests.extend(store.remove_stale_temporaries())
