"""Snapshotters shared by several processes, and killed (SIGKILL) in the
middle of prepare, commit and remove: the store must stay openable and
cleanup() must leave no orphan directory."""
import os
import signal
import subprocess
import sys
import time

import pytest

from pyrun.errdefs import NotFound
from pyrun.snapshots import Kind, registry
from test_snapshots import BACKENDS, db_ids, snapshot_dirs, work  # noqa: F401 (fixture)

pytestmark = pytest.mark.root
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import os, signal, sys
from pyrun.errdefs import AlreadyExists
from pyrun.snapshots import local, registry, storage

backend, root, mode, arg = sys.argv[1:5]

def die(*_a, **_k):
    os.kill(os.getpid(), signal.SIGKILL)

def then_die(fn):
    def wrapped(*a, **k):
        fn(*a, **k)
        die()
    return wrapped

s = registry.new(backend, root)
if mode == "chain":
    parent = ""
    for i in range(12):
        key, name = f"w{arg}-{i}-active", f"w{arg}-{i}"
        s.prepare(key, parent, labels={"worker": arg})
        s.view(f"w{arg}-{i}-view", parent)
        s.commit(name, key)
        s.remove(f"w{arg}-{i}-view")
        parent = name
    try:
        s.prepare("contended", parent)
        print("won")
    except AlreadyExists:
        print("lost")
elif mode == "kill-populate":
    type(s)._populate = then_die(type(s)._populate)
    s.prepare("victim", arg)
elif mode == "kill-rename":
    os.rename = then_die(os.rename)
    s.prepare("victim", arg)
elif mode == "kill-commit":
    storage.MetaStore.commit = then_die(storage.MetaStore.commit)
    s.commit("victim-committed", arg)
elif mode == "kill-remove":
    local.remove_tree = die
    s.remove(arg)
elif mode == "slow-copy":
    # A real copy, slowed down so that the test's SIGKILL lands inside it
    # however loaded the machine is.
    import time
    from pyrun.snapshots import copy
    orig = copy._copy_file
    def slow(*a):
        time.sleep(0.002)
        orig(*a)
    copy._copy_file = slow
    s.prepare("victim", arg)
"""


def worker(backend, root, mode, arg=""):
    return subprocess.Popen([sys.executable, "-c", WORKER, backend, root, mode, arg],
                            env={**os.environ, "PYTHONPATH": REPO},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def consistent(root, backend):
    """Open the store again, clean up, check that the dirs match the db,
    and return what cleanup removed."""
    with registry.new(backend, root) as s:
        removed = s.cleanup()
        assert snapshot_dirs(s) == db_ids(root)
        return removed


def killed(backend, root, mode, arg):
    """Run a worker that SIGKILLs itself at the point ``mode`` names."""
    p = worker(backend, root, mode, arg)
    _, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, err


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_processes(backend, work):
    root = os.path.join(work, "root")
    procs = [worker(backend, root, "chain", str(p)) for p in range(4)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.strip())
    assert sorted(outs) == ["lost", "lost", "lost", "won"]
    with registry.new(backend, root) as s:
        infos = []
        s.walk(infos.append)
        committed = {i.name: i for i in infos if i.kind is Kind.COMMITTED}
        assert len(committed) == 48
        for w in range(4):
            for i in range(12):
                info = committed[f"w{w}-{i}"]
                assert info.parent == (f"w{w}-{i - 1}" if i else "")
        assert [i.name for i in infos if i.kind is not Kind.COMMITTED] == ["contended"]
        assert s.cleanup() == []
        assert snapshot_dirs(s) == db_ids(root)


def _base(backend, root, files=1):
    with registry.new(backend, root) as s:
        s.prepare("base-active")
        fs = os.path.join(root, "snapshots", db_ids(root)[0], "fs")
        for i in range(files):
            with open(os.path.join(fs, f"f{i}"), "wb") as f:
                f.write(os.urandom(4096))
        s.commit("base", "base-active")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["kill-populate", "kill-rename"])
def test_kill_during_prepare(backend, mode, work):
    root = os.path.join(work, "root")
    _base(backend, root)
    killed(backend, root, mode, "base")
    with registry.new(backend, root) as s:
        with pytest.raises(NotFound):
            s.stat("victim")
        left = set(snapshot_dirs(s)) - set(db_ids(root))
        assert len(left) == 1  # the temp dir, or the renamed dir not in the db
        s.prepare("victim", "base")
        if mode == "kill-rename":
            # The id was never handed out: this prepare got it and replaced
            # the orphan.
            assert snapshot_dirs(s) == db_ids(root)
    removed = consistent(root, backend)
    assert len(removed) == (1 if mode == "kill-populate" else 0)


def killed_on_active(backend, work, mode):
    """A store with "base" and active "a" on it, and a worker killed
    while it runs ``mode`` on "a"; returns the root."""
    root = os.path.join(work, "root")
    _base(backend, root)
    with registry.new(backend, root) as s:
        s.prepare("a", "base")
    killed(backend, root, mode, "a")
    return root


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_during_commit(backend, work):
    root = killed_on_active(backend, work, "kill-commit")
    assert consistent(root, backend) == []
    with registry.new(backend, root) as s:
        assert s.stat("a").kind is Kind.ACTIVE
        s.commit("victim-committed", "a")
        assert s.stat("victim-committed").parent == "base"


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_during_remove(backend, work):
    root = killed_on_active(backend, work, "kill-remove")
    removed = consistent(root, backend)
    assert len(removed) == 1 and removed[0].endswith("/snapshots/2")


def test_kill_in_the_middle_of_a_native_copy(work):
    """A real SIGKILL from outside while the copy runs."""
    root = os.path.join(work, "root")
    _base("native", root, files=1000)
    p = worker("native", root, "slow-copy", "base")
    snapshots = os.path.join(root, "snapshots")
    deadline = time.monotonic() + 30
    while not any(n.startswith("new-") for n in os.listdir(snapshots)):
        assert p.poll() is None and time.monotonic() < deadline, "prepare never started copying"
        time.sleep(0.001)
    p.kill()
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    with registry.new("native", root) as s:
        with pytest.raises(NotFound):
            s.stat("victim")
    removed = consistent(root, "native")
    assert len(removed) == 1 and "/new-" in removed[0]
