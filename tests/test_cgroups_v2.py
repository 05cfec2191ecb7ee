"""The cgroup managers on a pure cgroup v2 host with real controllers.

This host is hybrid, so these run in a qemu guest booted with
cgroup_no_v1=all: ``vagrant/run-in-qemu`` (marked ``vm``, which CI skips).
The guest is ours; its root group passes every controller down.
"""
import os
import signal

import pytest

from pyrun.cgroups import detect, fs, new_manager, parse_resources
from pyrun.errdefs import FailedPrecondition

from cgroup_helpers import go, new_parent_name, remove_test_parent, spawn, try_open

ROOT = "/sys/fs/cgroup"


def _is_v2():
    try:
        return detect() == "v2"
    except Exception:
        return False


pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 or not _is_v2(),
                       reason="needs root on a pure cgroup v2 host (vagrant/run-in-qemu)"),
]


@pytest.fixture
def parent():
    name = new_parent_name()
    yield name
    remove_test_parent([ROOT], name)


def read(m, file):
    return fs.read_file(ROOT, m.path, file).strip()


def manager(parent, name):
    m = new_manager(f"{parent}/{name}", name)
    m.create()
    return m


def test_layout_and_controllers_passed_down(parent):
    m = manager(parent, "c")
    assert m.mode == "v2" and list(m.paths) == [""]
    # The parent that create() made passes its controllers to the group.
    passed = fs.read_file(ROOT, parent, "cgroup.subtree_control").split()
    assert {"cpu", "memory", "pids", "io", "cpuset", "hugetlb"} <= set(passed)
    assert {"memory", "pids"} <= set(read(m, "cgroup.controllers").split())
    m.destroy()
    assert not os.path.exists(fs.join(ROOT, parent))


def test_relative_path_is_below_the_callers_parent(parent):
    # The caller sits in the root group here, whose "parent" is the root.
    name = parent.lstrip("/")
    m = new_manager(name, "id")
    assert m.path == "/" + name


def test_memory_swap_and_oom_kill(parent):
    m = manager(parent, "mem")
    limit = 32 << 20
    m.set(parse_resources({"memory": {"limit": limit, "swap": 2 * limit, "reservation": 4 << 20}}))
    assert read(m, "memory.max") == str(limit)
    assert read(m, "memory.swap.max") == str(limit)  # swap = memory+swap - memory
    assert read(m, "memory.low") == str(4 << 20)
    m.set(parse_resources({"memory": {"limit": limit, "swap": limit}}))
    assert read(m, "memory.swap.max") == "0"
    assert m.oom_eventfd() is None
    p = spawn("b = bytearray(256 << 20)")
    m.apply(p.pid)
    rc, _, _ = go(p, timeout=120)
    assert rc == -signal.SIGKILL
    assert m.oom_kill_count() >= 1
    m.destroy()


def test_unlimited_memory(parent):
    m = manager(parent, "unl")
    m.set(parse_resources({"memory": {"limit": -1}}))
    assert read(m, "memory.max") == "max" and read(m, "memory.swap.max") == "max"
    m.destroy()


def test_pids_limit_refuses_forks(parent):
    m = manager(parent, "pids")
    m.set(parse_resources({"pids": {"limit": 3}}))
    assert read(m, "pids.max") == "3"
    p = spawn(
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(10):\n"
        "        if os.fork() == 0:\n"
        "            os.closerange(0, 3); time.sleep(60); os._exit(0)\n"
        "        n += 1\n"
        "except BlockingIOError:\n"
        "    print('refused after', n)\n")
    m.apply(p.pid)
    rc, out, err = go(p, timeout=120)
    assert (rc, out.strip()) == (0, "refused after 2"), err
    m.kill_all(signal.SIGKILL)
    m.destroy()


def test_cpu_weight_max_and_cpuset(parent):
    m = manager(parent, "cpu")
    m.set(parse_resources({"cpu": {"shares": 512, "quota": 30000, "period": 60000,
                                   "cpus": "0", "mems": "0"}}))
    assert read(m, "cpu.weight") == "20"  # 1 + (510 * 9999) // 262142
    assert read(m, "cpu.max") == "30000 60000"
    assert read(m, "cpuset.cpus") == "0" and read(m, "cpuset.mems") == "0"
    m.set(parse_resources({"cpu": {"quota": -1}}))
    assert read(m, "cpu.max") == "max 100000"
    with pytest.raises(Exception, match="realtime"):
        m.set(parse_resources({"cpu": {"realtimeRuntime": 1000}}))
    m.destroy()


def test_io_throttle(parent):
    with open("/sys/block/vda/dev") as f:
        dev = f.read().strip()
    major, minor = (int(x) for x in dev.split(":"))
    m = manager(parent, "io")
    m.set(parse_resources({"blockIO": {
        "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1 << 20}],
        "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}]}}))
    assert read(m, "io.max") == f"{dev} rbps={1 << 20} wbps=max riops=max wiops=100"
    weight = parse_resources({"blockIO": {"weight": 500}})
    if m.group("").exists("io.weight") or m.group("").exists("io.bfq.weight"):
        m.set(weight)
    else:
        with pytest.raises(FailedPrecondition, match="io.weight"):
            m.set(weight)
    m.destroy()


def test_hugetlb(parent):
    m = manager(parent, "huge")
    m.set(parse_resources({"hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}]}))
    assert read(m, "hugetlb.2MB.max") == str(4 << 20)
    assert "2MB" in m.stats()["hugetlb"]
    m.destroy()


def test_unified_keys(parent):
    m = manager(parent, "uni")
    m.set(parse_resources({"pids": {"limit": 10}, "unified": {"pids.max": "7"}}))
    assert read(m, "pids.max") == "7"
    with pytest.raises(FailedPrecondition, match="no-such.file"):
        m.set(parse_resources({"unified": {"no-such.file": "1"}}))
    m.destroy()


def test_bpf_device_filter(parent):
    m = manager(parent, "dev")
    m.set(parse_resources({"devices": [{"allow": False, "access": "rwm"},
                                       {"allow": True, "type": "c", "major": 1, "minor": 3,
                                        "access": "rwm"}]}))
    assert try_open(m, ["/dev/null", "/dev/zero"]) == {"/dev/null": True, "/dev/zero": False}
    m.destroy()


def test_freeze_kill_stats(parent):
    m = manager(parent, "frz")
    p = spawn("import time; time.sleep(60)")
    m.apply(p.pid)
    m.freeze()
    assert m.state() == "frozen"
    m.thaw()
    assert m.state() == "thawed"
    s = m.stats()
    assert s["pids"]["current"] == 1 and s["memory"]["usage"]["usage"] > 0
    assert s["cpu"]["usage"]["total"] > 0
    m.kill_all(signal.SIGKILL)
    assert p.wait(timeout=30) == -signal.SIGKILL
    m.destroy()
