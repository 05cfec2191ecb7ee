"""Consistency check of a pyrun root (``pyrunctl check``).

Reports corruption, not garbage: orphan blobs, orphan backend snapshots
and abandoned ingests are normal after a crash and are GC's job.
"""
import hashlib
import json
import os
import sqlite3
import stat

from pyrun.content.digest import ALGORITHMS, digester, parse_digest
from pyrun.errdefs import InvalidArgument, NotFound
from pyrun.metadata.db import connect, database_path
from pyrun.metadata.schema import SCHEMA_VERSION


def check(root, snapshotters=None, verify=True):
    """Problems found below ``root`` as a list of sentences (empty: sound).

    Checks the database (SQLite integrity, schema version), that every
    content row has its blob with the recorded size, that every snapshot
    row has its parent row and (for backends given in ``snapshotters``,
    ``{name: Snapshotter}``) its backend snapshot with the matching parent,
    that ``blobs/`` holds only well-named regular files (with ``verify``,
    whose bytes hash to their name) and that every ingest directory is
    complete.
    """
    root = os.path.abspath(root)
    problems = []
    problems += _check_blobs(root, verify)
    problems += _check_ingests(root)
    if os.path.exists(database_path(root)):
        try:
            conn = connect(database_path(root))
        except sqlite3.Error as e:
            return problems + [f"{database_path(root)}: cannot open: {e}"]
        try:
            problems += _check_db(root, conn, snapshotters or {})
        except sqlite3.Error as e:
            problems.append(f"{database_path(root)}: {e}")
        finally:
            conn.close()
    return problems


def _check_blobs(root, verify):
    problems = []
    base = os.path.join(root, "blobs")
    for alg in sorted(os.listdir(base)) if os.path.isdir(base) else ():
        if alg not in ALGORITHMS:
            problems.append(f"blobs/{alg}: unknown digest algorithm")
            continue
        for name in sorted(os.listdir(os.path.join(base, alg))):
            path = os.path.join(base, alg, name)
            where = f"blobs/{alg}/{name}"
            try:
                parse_digest(f"{alg}:{name}")
            except InvalidArgument:
                problems.append(f"{where}: not a blob name (a partial or stray file)")
                continue
            if not stat.S_ISREG(os.lstat(path).st_mode):
                problems.append(f"{where}: not a regular file")
            elif verify:
                h = digester(alg)
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                if h.hexdigest() != name:
                    problems.append(f"{where}: content hashes to {alg}:{h.hexdigest()}")
    return problems


def _check_ingests(root):
    problems = []
    base = os.path.join(root, "ingest")
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else ():
        if name.startswith("."):
            continue  # .tmp-/.trash- leftovers of a dead writer: garbage
        try:
            with open(os.path.join(base, name, "status")) as f:
                ref = json.load(f)["ref"]
        except (OSError, ValueError, KeyError) as e:
            problems.append(f"ingest/{name}: unreadable status: {e}")
            continue
        if hashlib.sha256(ref.encode()).hexdigest() != name:
            problems.append(f"ingest/{name}: holds ref {ref!r}, which belongs elsewhere")
    return problems


def _exists(backend, key):
    try:
        backend.stat(key)
        return True
    except NotFound:
        return False


def _check_db(root, conn, snapshotters):
    problems = [f"metadata.db: integrity: {r[0]}" for r in conn.execute("PRAGMA integrity_check")
                if r[0] != "ok"]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        return problems + [f"metadata.db: schema version {version}, expected {SCHEMA_VERSION}"]
    for r in conn.execute("SELECT namespace, digest, size FROM content ORDER BY namespace, digest"):
        alg, hexpart = parse_digest(r["digest"])
        try:
            size = os.stat(os.path.join(root, "blobs", alg, hexpart)).st_size
        except FileNotFoundError:
            problems.append(f"namespace {r['namespace']}: content {r['digest']}: blob missing")
            continue
        if size != r["size"]:
            problems.append(f"namespace {r['namespace']}: content {r['digest']}: blob has "
                            f"{size} bytes, recorded {r['size']}")
    rows = conn.execute("SELECT * FROM snapshots ORDER BY id").fetchall()
    by_key = {(r["namespace"], r["snapshotter"], r["key"]): r for r in rows}
    for r in rows:
        where = f"namespace {r['namespace']}: snapshot {r['snapshotter']}/{r['key']}"
        parent = by_key.get((r["namespace"], r["snapshotter"], r["parent"])) if r["parent"] else None
        if r["parent"] and parent is None:
            problems.append(f"{where}: parent {r['parent']!r} missing")
        backend = snapshotters.get(r["snapshotter"])
        if backend is None:
            continue
        try:
            info = backend.stat(r["backend_key"])
        except NotFound:
            if r["pending"] and _exists(backend, json.loads(r["pending"])["backend_key"]):
                continue  # a commit cut short; recovery finishes it on the next open
            problems.append(f"{where}: backend snapshot {r['backend_key']!r} missing")
            continue
        want = parent["backend_key"] if parent is not None else ""
        if (info.parent or "") != want:
            problems.append(f"{where}: backend parent {info.parent!r}, expected {want!r}")
    return problems
