"""The cgroup managers against this host's real cgroups (root only).

Groups are made only below a fresh ``pyrun-test-<random>`` parent in each
hierarchy and removed at the end, processes in them first killed.  The v1
controllers are tested through the host's hybrid layout; the cgroup2 core
files, the v2 freezer and the BPF device filter through a pure-v2 manager
rooted at the unified mount (/sys/fs/cgroup/unified).
"""
import os
import select
import signal
import subprocess
import sys
import uuid

import pytest

from pyrun import linux
from pyrun.cgroups import fs, new_manager, parse_resources, v2
from pyrun.cgroups import devices
from pyrun.cgroups.resources import DeviceRule
from pyrun.errdefs import FailedPrecondition

ROOT = "/sys/fs/cgroup"
UNIFIED = os.path.join(ROOT, "unified")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, "memory")),
                       reason="needs cgroup v1 controllers under /sys/fs/cgroup"),
]


def _hierarchies():
    out = [os.path.join(ROOT, d) for d in os.listdir(ROOT)
           if os.path.isdir(os.path.join(ROOT, d, ".")) and d != "unified"]
    if os.path.isdir(UNIFIED):
        out.append(UNIFIED)
    return out


@pytest.fixture
def parent():
    """A test-only parent path; afterwards every process left below it is
    killed and every group below it removed, in every hierarchy."""
    name = f"/pyrun-test-{uuid.uuid4().hex[:10]}"
    yield name
    for hroot in _hierarchies():
        top = fs.join(hroot, name)
        if not os.path.isdir(top):
            continue
        for dirpath, _, _ in os.walk(top):
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        fs.remove_dir(hroot, name, attempts=50)


def spawn(code):
    """A Python child that waits for one byte on stdin, then runs ``code``:
    move it into a group first, then let it go."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(1)\n" + code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def go(proc, timeout=30):
    out, err = proc.communicate(b"g", timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def read(root, path, file):
    return fs.read_file(root, path, file).strip()


def test_detect_hybrid():
    from pyrun.cgroups import detect
    assert detect() == ("hybrid" if os.path.isdir(UNIFIED) else "v1")


def test_create_apply_destroy_in_every_hierarchy(parent):
    m = new_manager(f"{parent}/c1", "c1")
    m.create()
    assert ("memory", parent) in m.created and ("memory", f"{parent}/c1") in m.created
    # The new cpuset groups got their parent's cpus and mems.
    assert read(f"{ROOT}/cpuset", parent, "cpuset.cpus")
    assert read(f"{ROOT}/cpuset", f"{parent}/c1", "cpuset.mems")
    p = spawn("import time; time.sleep(30)")
    try:
        m.apply(p.pid)
        for key in m.paths:
            procs = read(m.hierarchy_root(key), m.paths[key], "cgroup.procs").split()
            assert str(p.pid) in procs, key
        assert m.pids() == [p.pid]
        stats = m.stats()
        assert stats["pids"]["current"] == 1
        # (v1 does not move memory charges with a task, so usage may be 0.)
        assert stats["memory"]["usage"]["limit"] > 0
        assert set(stats) == {"cpu", "memory", "pids", "blkio", "hugetlb"}
    finally:
        m.kill_all(signal.SIGKILL)
        p.wait()
    m.destroy()
    assert m.created == []
    for key in m.paths:
        assert not os.path.exists(fs.join(m.hierarchy_root(key), parent)), key


def test_destroy_keeps_shared_parent(parent):
    a = new_manager(f"{parent}/a", "a")
    b = new_manager(f"{parent}/b", "b")
    a.create()
    b.create()
    a.destroy()
    assert os.path.isdir(fs.join(f"{ROOT}/memory", parent))
    assert not os.path.exists(fs.join(f"{ROOT}/memory", f"{parent}/a"))
    b.destroy()
    # b did not make the parent, so it leaves it (as runc leaves parents).
    assert os.listdir(fs.join(f"{ROOT}/memory", parent))
    assert not os.path.exists(fs.join(f"{ROOT}/memory", f"{parent}/b"))


def test_memory_limit_and_oom_kill(parent):
    m = new_manager(f"{parent}/mem", "mem")
    m.create()
    limit = 32 << 20
    m.set(parse_resources({"memory": {"limit": limit, "swap": limit}}))
    assert int(read(f"{ROOT}/memory", m.paths["memory"], "memory.limit_in_bytes")) == limit
    assert int(read(f"{ROOT}/memory", m.paths["memory"], "memory.memsw.limit_in_bytes")) == limit
    efd = m.oom_eventfd()
    try:
        p = spawn("b = bytearray(256 << 20)")
        m.apply(p.pid)
        rc, _, _ = go(p)
        assert rc == -signal.SIGKILL
        assert m.oom_kill_count() >= 1
        ready, _, _ = select.select([efd], [], [], 10)
        assert ready == [efd]
        assert int.from_bytes(os.read(efd, 8), "little") >= 1
    finally:
        os.close(efd)
    m.destroy()


def test_pids_limit_refuses_forks(parent):
    m = new_manager(f"{parent}/pids", "pids")
    m.create()
    m.set(parse_resources({"pids": {"limit": 5}}))
    assert read(f"{ROOT}/pids", m.paths["pids"], "pids.max") == "5"
    p = spawn(
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(20):\n"
        "        if os.fork() == 0:\n"
        "            os.closerange(0, 3); time.sleep(20); os._exit(0)\n"
        "        n += 1\n"
        "except BlockingIOError:\n"
        "    print('refused after', n)\n")
    m.apply(p.pid)
    rc, out, err = go(p)
    assert rc == 0, err
    assert out.strip() == "refused after 4"
    m.kill_all(signal.SIGKILL)
    m.destroy()


def test_cpu_and_cpuset_files(parent):
    m = new_manager(f"{parent}/cpu", "cpu")
    m.create()
    m.set(parse_resources({"cpu": {"shares": 512, "quota": 50000, "period": 200000,
                                   "cpus": "0", "mems": "0"}}))
    path = m.paths["cpu"]
    assert read(f"{ROOT}/cpu", path, "cpu.shares") == "512"
    assert read(f"{ROOT}/cpu", path, "cpu.cfs_quota_us") == "50000"
    assert read(f"{ROOT}/cpu", path, "cpu.cfs_period_us") == "200000"
    assert read(f"{ROOT}/cpuset", path, "cpuset.cpus") == "0"
    assert read(f"{ROOT}/cpuset", path, "cpuset.mems") == "0"
    # Unlimited again.
    m.set(parse_resources({"cpu": {"quota": -1}}))
    assert read(f"{ROOT}/cpu", path, "cpu.cfs_quota_us") == "-1"
    m.destroy()


OPEN_DEVICES = (
    "import os, sys\n"
    "for dev in sys.argv[1:]:\n"
    "    try:\n"
    "        os.close(os.open(dev, os.O_RDONLY))\n"
    "        print(dev, 'opened')\n"
    "    except PermissionError:\n"
    "        print(dev, 'denied')\n")


def try_open(m, paths):
    """Open each device from a process in the group: {path: opened?}."""
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(1)\n" + OPEN_DEVICES,
                          *paths], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    m.apply(p.pid)
    rc, out, err = go(p)
    assert rc == 0, err
    return {line.split()[0]: line.split()[1] == "opened" for line in out.splitlines()}


DENY_ALL = {"allow": False, "access": "rwm"}
ALLOW_ALL = {"allow": True, "access": "rwm"}


def char(major, minor, allow=True, access="rwm"):
    return {"allow": allow, "type": "c", "major": major, "minor": minor, "access": access}


@pytest.mark.parametrize("rules, defaults, expect", [
    # allow-list: /dev/null only
    ([DENY_ALL, char(1, 3)], False, {"/dev/null": True, "/dev/zero": False, "/dev/kmsg": False}),
    # deny-list: everything but /dev/zero
    ([ALLOW_ALL, char(1, 5, allow=False)], False,
     {"/dev/null": True, "/dev/zero": False, "/dev/kmsg": True}),
    # runc's defaults after a deny-all
    ([DENY_ALL], True, {"/dev/null": True, "/dev/zero": True, "/dev/kmsg": False}),
])
def test_devices_v1(parent, rules, defaults, expect):
    m = new_manager(f"{parent}/dev", "dev")
    m.create()
    res = parse_resources({"devices": rules})
    if defaults:
        res = res.with_devices(devices.default_allowed())
    m.set(res)
    if rules[0] is DENY_ALL and not defaults:
        assert read(f"{ROOT}/devices", m.paths["devices"], "devices.list") == "c 1:3 rwm"
    assert try_open(m, list(expect)) == expect
    m.destroy()


def test_freezer_v1(parent):
    m = new_manager(f"{parent}/frz", "frz")
    m.create()
    p = spawn("import time; time.sleep(30)")
    try:
        m.apply(p.pid)
        m.freeze()
        assert m.state() == "frozen"
        assert read(f"{ROOT}/freezer", m.paths["freezer"], "freezer.state") == "FROZEN"
        m.thaw()
        assert m.state() == "thawed"
        m.kill_all(signal.SIGTERM)
        assert p.wait(timeout=10) == -signal.SIGTERM
    finally:
        p.kill()
        p.wait()
    m.destroy()


def test_network_is_refused_clearly(parent):
    m = new_manager(f"{parent}/net", "net")
    with pytest.raises(FailedPrecondition, match="net_cls"):
        m.set(parse_resources({"network": {"classID": 1}}))


# -- cgroup v2 core files, on the hybrid host's unified tree ------------------

unified_only = pytest.mark.skipif(not os.path.isdir(UNIFIED), reason="no cgroup2 at /sys/fs/cgroup/unified")


@unified_only
def test_v2_core_files_freeze_kill(parent):
    m = new_manager(f"{parent}/v2", "v2", root=UNIFIED, mode="v2")
    m.create()
    p = spawn("import time; time.sleep(30)")
    m.apply(p.pid)
    assert m.pids() == [p.pid]
    g = m.group("")
    assert g.keyed("cgroup.events")["populated"] == 1
    m.freeze()
    assert m.state() == "frozen"
    assert g.keyed("cgroup.events")["frozen"] == 1
    m.thaw()
    assert g.keyed("cgroup.events")["frozen"] == 0
    m.kill_all(signal.SIGKILL)  # cgroup.kill
    assert p.wait(timeout=10) == -signal.SIGKILL
    m.destroy()
    assert not os.path.exists(fs.join(UNIFIED, parent))


@unified_only
def test_v2_hugetlb(parent):
    top = fs.read_file(UNIFIED, "/", "cgroup.subtree_control").split()
    if "hugetlb" not in top:
        pytest.skip("hugetlb is not enabled in the unified root's cgroup.subtree_control "
                    "(and that group is not ours to change)")
    m = new_manager(f"{parent}/huge", "huge", root=UNIFIED, mode="v2")
    m.create()
    m.set(parse_resources({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}]}))
    assert read(UNIFIED, m.path, "hugetlb.2MB.max") == str(4 << 20)
    m.destroy()


def test_bpf_device_program_passes_the_verifier():
    rules = [DeviceRule(False), DeviceRule(True, "c", 1, 3, "rwm"),
             DeviceRule(True, "c", None, None, "m"), DeviceRule(True, "b", 8, None, "r"),
             DeviceRule(True, "c", 136, None, "rw")]
    fd = linux.bpf_prog_load_cgroup_device(devices.encode(devices.bpf_program(rules)),
                                           devices.LICENSE)
    os.close(fd)


def test_bpf_verifier_rejection_is_reported():
    bad = devices.encode([devices.Insn(devices.EXIT)])  # R0 never set
    with pytest.raises(OSError, match="verifier"):
        linux.bpf_prog_load_cgroup_device(bad, devices.LICENSE)


@unified_only
def test_v2_bpf_device_filter_denies(parent):
    m = new_manager(f"{parent}/bpf", "bpf", root=UNIFIED, mode="v2")
    m.create()
    rules = {"devices": [{"allow": False, "access": "rwm"},
                         {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}]}
    m.set(parse_resources(rules))
    m.set(parse_resources(rules))  # replaces, does not stack
    dfd = os.open(fs.join(UNIFIED, m.path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(linux.bpf_prog_query(dfd, linux.BPF_CGROUP_DEVICE)) == 1
    finally:
        os.close(dfd)
    assert try_open(m, ["/dev/null", "/dev/zero", "/dev/full"]) == {
        "/dev/null": True, "/dev/zero": False, "/dev/full": False}
    m.destroy()
