"""runc's cgroup verbs from outside, on this host's real cgroups: pause,
resume, ps, update, events, and OOM reporting in state and events.

Every container lives under a fresh ``/pyrun-test-<random>`` parent (an
absolute cgroupsPath), so no group lands under the machine's own; the
tests check that delete leaves nothing behind there.
"""
import json
import os
import subprocess
import time

import pytest

from cgroup_helpers import hierarchies, new_parent_name, remove_test_parent
from runtime_helpers import PYRUN, Pyrun, make_bundle

ROOT = "/sys/fs/cgroup"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, "freezer")),
                       reason="needs the cgroup v1 controllers of this host's hybrid layout"),
]


@pytest.fixture
def parent():
    name = new_parent_name()
    yield name
    left = [h for h in hierarchies(ROOT) if os.path.exists(h + name)]
    remove_test_parent(hierarchies(ROOT), name)
    assert not left, f"groups left behind under {name}: {left}"


@pytest.fixture
def pyrun(tmp_path, parent):
    p = Pyrun(tmp_path / "state")
    yield p
    p.cleanup()


@pytest.fixture
def bundle(tmp_path, busybox_rootfs, parent):
    """make(name, args, resources=...) -> bundle path; the container's
    cgroupsPath is <parent>/<name>."""
    def make(name, args, resources=None, cgroups=True, **changes):
        path = tmp_path / f"bundle-{name}"
        if cgroups:
            changes["linux_cgroupsPath"] = f"{parent}/{name}"
        if resources is not None:
            changes["linux_resources"] = resources
        make_bundle(path, busybox_rootfs, args, **changes)
        return str(path)
    return make


def run_detached(pyrun, b, cid, out):
    """``pyrun run -d`` with the container's stdout and stderr in file
    ``out`` (a file, not a pipe: the container keeps it open)."""
    with open(out, "wb") as f:
        r = subprocess.run([PYRUN, "--root", pyrun.root, "run", "-d", "-b", b, cid],
                           stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=30)
    assert r.returncode == 0, open(out).read()


def wait_for(cond, what, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def cg(hierarchy, parent, name, file):
    with open(os.path.join(ROOT, hierarchy, parent.lstrip("/"), name, file)) as f:
        return f.read().strip()


def saved_resources(pyrun, cid):
    with open(os.path.join(pyrun.root, cid, "state.json")) as f:
        return json.load(f)["config"]["linux"]["resources"]


def test_pause_resume(pyrun, bundle, parent, tmp_path):
    out = tmp_path / "out"
    b = bundle("c1", ["sh", "-c", "while true; do echo tick; sleep 0.02; done"])
    run_detached(pyrun, b, "c1", out)
    wait_for(lambda: out.stat().st_size > 0, "the first tick")
    pyrun("pause", "c1")
    assert pyrun.state("c1")["status"] == "paused"
    assert cg("freezer", parent, "c1", "freezer.state") == "FROZEN"
    assert [r.split()[2] for r in pyrun("list").stdout.splitlines()[1:]] == ["paused"]
    size = out.stat().st_size
    time.sleep(0.3)
    assert out.stat().st_size == size            # a frozen process does not progress
    r = pyrun("pause", "c1", check=False)
    assert r.returncode == 1 and "cannot pause container 'c1': it is paused" in r.stderr
    assert json.loads(pyrun("ps", "--format", "json", "c1").stdout)     # ps works while paused
    r = pyrun("exec", "c1", "true", check=False)
    assert r.returncode == 255 and "it is paused" in r.stderr  # runc's exec status
    pyrun("resume", "c1")
    assert pyrun.state("c1")["status"] == "running"
    assert cg("freezer", parent, "c1", "freezer.state") == "THAWED"
    wait_for(lambda: out.stat().st_size > size, "a tick after resume")
    r = pyrun("resume", "c1", check=False)
    assert r.returncode == 1 and "cannot resume container 'c1': it is running" in r.stderr
    # SIGKILL to a paused container kills it (frozen v1 tasks need a thaw).
    pyrun("pause", "c1")
    pyrun("kill", "c1", "KILL")
    wait_for(lambda: pyrun.state("c1")["status"] == "stopped", "c1 to stop")
    for verb in ("pause", "resume"):
        r = pyrun(verb, "c1", check=False)
        assert r.returncode == 1 and "it is stopped" in r.stderr
    pyrun("delete", "c1")


def test_pause_created_delete_force_and_kill_all_paused(pyrun, bundle, parent):
    b = bundle("c1", ["sleep", "100"])
    pyrun("create", "-b", b, "c1")
    pyrun("pause", "c1")                         # runc pauses a created container too
    assert pyrun.state("c1")["status"] == "paused"
    pyrun("resume", "c1")
    assert pyrun.state("c1")["status"] == "created"
    pyrun("start", "c1")
    pyrun("pause", "c1")
    pid = pyrun.state("c1")["pid"]
    r = pyrun("delete", "c1", check=False)
    assert r.returncode == 1 and "paused" in r.stderr
    pyrun("delete", "--force", "c1")
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert pyrun("list", "-q").stdout.split() == []
    # kill --all of a paused container: every process dies, none stays frozen.
    b = bundle("c2", ["sh", "-c", "sleep 100 & sleep 101 & wait"])
    pyrun("run", "-d", "-b", b, "c2")
    wait_for(lambda: len(json.loads(pyrun("ps", "-f", "json", "c2").stdout)) == 3, "three processes")
    pyrun("pause", "c2")
    pyrun("kill", "--all", "c2", "KILL")
    wait_for(lambda: pyrun.state("c2")["status"] == "stopped", "c2 to stop")
    wait_for(lambda: json.loads(pyrun("ps", "-f", "json", "c2").stdout) == [], "an empty group")
    pyrun("delete", "c2")


def test_pause_without_cgroups(pyrun, bundle):
    b = bundle("c1", ["sleep", "100"], cgroups=False)
    pyrun("run", "-d", "-b", b, "c1")
    for args in (("pause", "c1"), ("update", "--pids-limit", "10", "c1"), ("events", "--stats", "c1")):
        r = pyrun(*args, check=False)
        assert r.returncode == 1 and "it has no cgroups" in r.stderr, r.stderr
    # ps still lists the container's pid namespace.
    assert json.loads(pyrun("ps", "--format", "json", "c1").stdout) == [pyrun.state("c1")["pid"]]


def test_ps(pyrun, bundle, parent):
    b = bundle("c1", ["sh", "-c", "sleep 100 & sleep 101 & wait"], resources={"pids": {"limit": 20}})
    pyrun("run", "-d", "-b", b, "c1")
    init = pyrun.state("c1")["pid"]
    wait_for(lambda: len(cg("pids", parent, "c1", "cgroup.procs").split()) == 3, "three processes")
    pids = json.loads(pyrun("ps", "--format", "json", "c1").stdout)
    assert pids == sorted(int(p) for p in cg("pids", parent, "c1", "cgroup.procs").split())
    assert init in pids and len(pids) == 3
    lines = pyrun("ps", "c1").stdout.splitlines()
    assert lines[0].split()[:2] == ["UID", "PID"]
    assert sorted(int(line.split()[1]) for line in lines[1:]) == pids
    lines = pyrun("ps", "c1", "-o", "pid,comm").stdout.splitlines()
    assert lines[0].split() == ["PID", "COMMAND"]
    assert sorted(line.split()[1] for line in lines[1:]) == ["sh", "sleep", "sleep"]
    r = pyrun("ps", "c1", "-o", "comm", check=False)
    assert r.returncode == 1 and "no PID column" in r.stderr
    r = pyrun("ps", "--format", "yaml", "c1", check=False)
    assert r.returncode == 1 and "yaml" in r.stderr
    assert "oomKilled" not in pyrun.state("c1")


def test_update(pyrun, bundle, parent, tmp_path):
    b = bundle("c1", ["sleep", "100"],
               resources={"pids": {"limit": 100}, "memory": {"limit": 64 << 20}})
    pyrun("run", "-d", "-b", b, "c1")
    assert cg("pids", parent, "c1", "pids.max") == "100"
    pyrun("update", "--pids-limit", "50", "--memory", "100m", "c1")
    assert cg("pids", parent, "c1", "pids.max") == "50"
    assert cg("memory", parent, "c1", "memory.limit_in_bytes") == str(100 << 20)
    pyrun("update", "--cpu-quota", "20000", "--cpu-period", "100000", "--memory-reservation", "32M",
          "c1")
    assert cg("cpu", parent, "c1", "cpu.cfs_quota_us") == "20000"
    assert cg("memory", parent, "c1", "memory.soft_limit_in_bytes") == str(32 << 20)
    # A later update merges again: the earlier values stay, in the files
    # and in the saved resources.
    res = tmp_path / "res.json"
    res.write_text(json.dumps({"memory": {"limit": 0, "swap": 0}, "pids": {"limit": 30},
                               "cpu": {"period": 50000}}))
    pyrun("update", "--resources", str(res), "c1")
    assert cg("pids", parent, "c1", "pids.max") == "30"
    assert cg("memory", parent, "c1", "memory.limit_in_bytes") == str(100 << 20)
    assert cg("cpu", parent, "c1", "cpu.cfs_period_us") == "50000"
    assert cg("cpu", parent, "c1", "cpu.cfs_quota_us") == "20000"
    assert saved_resources(pyrun, "c1") == {
        "pids": {"limit": 30}, "memory": {"limit": 100 << 20, "reservation": 32 << 20},
        "cpu": {"quota": 20000, "period": 50000}}
    pyrun("update", "-r", "-", "c1", input=b'{"pids": {"limit": -1}}')
    assert cg("pids", parent, "c1", "pids.max") == "max"


def test_update_bad_input(pyrun, bundle, parent, tmp_path):
    b = bundle("c1", ["sleep", "100"], resources={"pids": {"limit": 100}})
    pyrun("run", "-d", "-b", b, "c1")
    before = saved_resources(pyrun, "c1")
    for args, message in (
            (("--memory", "abc"), "invalid value for --memory: invalid size: 'abc'"),
            (("--cpu-quota", "x"), "invalid value for --cpu-quota: 'x' is not an integer"),
            (("--cpu-share", "-5"), "invalid value for --cpu-share: '-5' must not be negative"),
            (("--cpuset-cpus", "0-a"), "update.cpu.cpus: '0-a' is not a cpuset list"),
            (("--l3-cache-schema", "L3:0=f"), "Intel RDT is not supported"),
    ):
        r = pyrun("update", *args, "c1", check=False)
        assert r.returncode == 1 and message in r.stderr, (args, r.stderr)
    bad = tmp_path / "bad.json"
    for text, message in (('{"memory": {"limit": "1g"}}', "update.memory.limit: expected an integer"),
                          ('{"pids": {"max": 3}}', "update.pids: unknown field(s) max"),
                          ('{"pids": ', "not valid JSON"),
                          ('[1]', "must be a JSON object")):
        bad.write_text(text)
        r = pyrun("update", "-r", str(bad), "c1", check=False)
        assert r.returncode == 1 and message in r.stderr, (text, r.stderr)
    # The kernel refuses a CPU this machine lacks: both sections are
    # written back, nothing is saved.
    r = pyrun("update", "--pids-limit", "7", "--cpuset-cpus", "999", "c1", check=False)
    assert r.returncode == 1 and "cpuset.cpus" in r.stderr and "999" in r.stderr
    assert cg("pids", parent, "c1", "pids.max") == "100"
    assert saved_resources(pyrun, "c1") == before
    pyrun("kill", "c1", "KILL")
    wait_for(lambda: pyrun.state("c1")["status"] == "stopped", "c1 to stop")
    r = pyrun("update", "--pids-limit", "5", "c1", check=False)
    assert r.returncode == 1 and "cannot update container 'c1': it is stopped" in r.stderr


def test_events_stats(pyrun, bundle, parent):
    b = bundle("c1", ["sleep", "100"], resources={"pids": {"limit": 10}})
    pyrun("run", "-d", "-b", b, "c1")
    ev = json.loads(pyrun("events", "--stats", "c1").stdout)
    assert ev["type"] == "stats" and ev["id"] == "c1"
    data = ev["data"]
    assert {"cpu", "memory", "pids", "blkio", "hugetlb"} <= set(data)
    assert data["pids"] == {"current": 1, "limit": 10}
    assert data["memory"]["usage"]["usage"] > 0
    assert data["cpu"]["usage"]["total"] > 0
    r = pyrun("events", "--interval", "0s", "c1", check=False)
    assert r.returncode == 1 and "--interval" in r.stderr


def test_events_stream_ends_with_the_container(pyrun, bundle, tmp_path):
    b = bundle("c1", ["sleep", "100"], resources={"pids": {"limit": 10}})
    pyrun("run", "-d", "-b", b, "c1")
    p = subprocess.Popen([PYRUN, "--root", pyrun.root, "events", "--interval", "50ms", "c1"],
                         stdout=subprocess.PIPE, text=True)
    first = json.loads(p.stdout.readline())
    assert first["type"] == "stats" and first["data"]["pids"]["current"] == 1
    pyrun("kill", "c1", "KILL")
    rest = p.stdout.read()
    assert p.wait(10) == 0
    assert all(json.loads(line)["type"] == "stats" for line in rest.splitlines())


def test_oom_in_events_and_state(pyrun, bundle, parent, tmp_path):
    b = bundle("c1", ["sh", "-c", "dd if=/dev/zero bs=16M count=1 | cat >/dev/null; exit 0"],
               resources={"memory": {"limit": 8 << 20, "swap": 8 << 20}})
    out = tmp_path / "out"
    with open(out, "wb") as f:
        subprocess.run([PYRUN, "--root", pyrun.root, "create", "-b", b, "c1"],
                       stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=30, check=True)
    assert "oomKilled" not in pyrun.state("c1")
    p = subprocess.Popen([PYRUN, "--root", pyrun.root, "events", "--interval", "50ms", "c1"],
                         stdout=subprocess.PIPE, text=True)
    assert json.loads(p.stdout.readline())["type"] == "stats"     # watching now
    pyrun("start", "c1")
    events = [json.loads(line) for line in p.stdout.read().splitlines()]
    assert p.wait(10) == 0
    assert {"type": "oom", "id": "c1"} in events
    st = pyrun.state("c1")
    assert st["status"] == "stopped" and st["oomKilled"] is True
    assert "Killed" in out.read_text()
    r = pyrun("events", "c1", check=False)
    assert r.returncode == 1 and "it is stopped" in r.stderr
    pyrun("delete", "c1")
