"""``pyrunctl namespaces|content|snapshots|leases|gc|check``: the storage
commands (ctr's ``namespaces``, ``content``, ``snapshots``, ``leases``;
``gc`` and ``check`` are pyrun's)."""
import json
import os
import sys
from datetime import timedelta

from pyrun.cli.ctl import table
from pyrun.errdefs import FailedPrecondition, InvalidArgument


def _labels(items, what="label"):
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key or not eq:
            raise InvalidArgument(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _fmt_labels(labels):
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _duration(text):
    """``30s``, ``15m``, ``24h``, ``2d`` -> timedelta; ``0`` -> None."""
    if text in ("0", ""):
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return timedelta(seconds=float(text[:-1]) * units[text[-1]])
    except (KeyError, ValueError):
        raise InvalidArgument(f"--expires {text!r}: expected a number with s, m, h or d") from None


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


# ---- namespaces ----

def namespaces_ls(ctx):
    ns = ctx.db.namespaces()
    names = ns.list()
    if ctx.args.quiet:
        print("\n".join(names))
        return
    table([("NAME", "LABELS")] + [(n, _fmt_labels(ns.labels(n))) for n in names])


def namespaces_create(ctx):
    ctx.db.namespaces().create(ctx.args.name, _labels(ctx.args.labels))


def namespaces_rm(ctx):
    if not ctx.args.names:
        raise InvalidArgument("namespaces rm: name at least one namespace")
    for name in ctx.args.names:
        ctx.db.namespaces().delete(name)
        print(name)


def namespaces_label(ctx):
    ns = ctx.db.namespaces()
    for key, value in _labels(ctx.args.labels).items():
        ns.set_label(ctx.args.name, key, value)
    print(_fmt_labels(ns.labels(ctx.args.name)))


# ---- content ----

def content_ls(ctx):
    infos = ctx.db.content_store(ctx.namespace).list()
    if ctx.args.quiet:
        print("\n".join(i.digest for i in infos))
        return
    table([("DIGEST", "SIZE", "CREATED", "LABELS")]
          + [(i.digest, _size(i.size), i.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
              _fmt_labels(i.labels)) for i in infos])


def content_get(ctx):
    with ctx.db.content_store(ctx.namespace).reader(ctx.args.digest) as r:
        out = sys.stdout.buffer
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
        out.flush()


def content_rm(ctx):
    store = ctx.db.content_store(ctx.namespace)
    for digest in ctx.args.digests:
        store.delete(digest)
        print(digest)


# ---- snapshots ----

def _snapshots(ctx):
    infos = []
    ctx.snapshotter().walk(infos.append)
    return sorted(infos, key=lambda i: i.name)


def snapshots_ls(ctx):
    table([("KEY", "PARENT", "KIND")]
          + [(i.name, i.parent or "", i.kind.value) for i in _snapshots(ctx)])


def snapshots_info(ctx):
    i = ctx.snapshotter().stat(ctx.args.key)
    print(json.dumps({"Kind": i.kind.value, "Name": i.name, "Parent": i.parent,
                      "Labels": i.labels, "Created": i.created_at.isoformat(),
                      "Updated": i.updated_at.isoformat()}, indent=4))


def snapshots_rm(ctx):
    sn = ctx.snapshotter()
    users = {c.snapshot_key: c.id for c in ctx.db.containers(ctx.namespace).list()
             if c.snapshotter == ctx.args.snapshotter}
    for key in ctx.args.keys:
        if key in users:
            raise FailedPrecondition(f"snapshot {key!r} is the root filesystem of container "
                                     f"{users[key]!r}: remove the container (containers rm)")
        sn.remove(key)
        print(key)


def snapshots_usage(ctx):
    sn = ctx.snapshotter()
    keys = ctx.args.keys or [i.name for i in _snapshots(ctx)]
    rows = [("KEY", "SIZE", "INODES")]
    for key in keys:
        u = sn.usage(key)
        rows.append((key, _size(u.size), u.inodes))
    table(rows)


def snapshots_tree(ctx):
    infos = _snapshots(ctx)
    children = {}
    for i in infos:
        children.setdefault(i.parent or "", []).append(i.name)

    def show(name, depth):
        print("  " * depth + name)
        for child in children.get(name, []):
            show(child, depth + 1)

    for root in children.get("", []):
        show(root, 0)


# ---- leases ----

def leases_ls(ctx):
    leases = ctx.db.leases(ctx.namespace).list()
    if ctx.args.quiet:
        print("\n".join(lease.id for lease in leases))
        return
    table([("ID", "CREATED AT", "LABELS")]
          + [(lease.id, lease.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"), _fmt_labels(lease.labels))
             for lease in leases])


def leases_create(ctx):
    lease = ctx.db.leases(ctx.namespace).create(ctx.args.id, _labels(ctx.args.label),
                                                expire=_duration(ctx.args.expires))
    print(lease.id)


def leases_rm(ctx):
    leases = ctx.db.leases(ctx.namespace)
    for lid in ctx.args.ids:
        leases.delete(lid)
        print(lid)


# ---- gc, check ----

def gc(ctx):
    from pyrun.metadata import collect

    stats = collect(ctx.db)
    print(f"removed {len(stats.blobs)} blobs, {len(stats.snapshots)} snapshots, "
          f"{len(stats.ingests)} ingests, {stats.leases} expired leases")
    for err in stats.errors:
        os.write(2, f"pyrunctl: gc: {err}\n".encode())
    return 1 if stats.errors else 0


def check(ctx):
    from pyrun.metadata import check as check_store

    problems = check_store(ctx.args.root, ctx.db.snapshotters, verify=not ctx.args.quick)
    for p in problems:
        print(p)
    if not problems:
        print("ok")
    return 1 if problems else 0
