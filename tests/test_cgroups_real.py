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
import uuid

import pytest

from pyrun import linux
from pyrun.cgroups import fs, new_manager, parse_resources
from pyrun.cgroups import devices
from pyrun.cgroups.resources import DeviceRule
from pyrun.errdefs import FailedPrecondition

from cgroup_helpers import go, remove_test_parent, spawn, new_parent_name, try_open

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
    """A test-only parent group, cleaned up in every hierarchy afterwards."""
    name = new_parent_name()
    yield name
    remove_test_parent(_hierarchies(), name)


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
    listed = read(f"{ROOT}/devices", m.paths["devices"], "devices.list").splitlines()
    if rules[0] is DENY_ALL:
        # devices.list follows the spec's order, then the defaults.
        assert listed[0] == ("c *:* m" if defaults else "c 1:3 rwm")
    assert try_open(m, list(expect)) == expect
    m.destroy()


def test_devices_v1_list_in_spec_order(parent):
    # What the runtime-tools linux_cgroups_devices program checks.
    m = new_manager(f"{parent}/order", "order")
    m.create()
    spec = [DENY_ALL, char(10, 229), {"allow": True, "type": "b", "major": 8, "minor": 20,
                                      "access": "rw"},
            {"allow": True, "type": "b", "major": 10, "minor": 200, "access": "r"}]
    m.set(parse_resources({"devices": spec}).with_devices(devices.default_allowed()))
    listed = read(f"{ROOT}/devices", m.paths["devices"], "devices.list").splitlines()
    assert listed[:4] == ["c 10:229 rwm", "b 8:20 rw", "b 10:200 r", "c *:* m"]
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


# -- the same resources through runc 1.1 ---------------------------------------

RUNC_RESOURCES = {
    "devices": [DENY_ALL, char(1, 11, access="r"), char(10, 200, allow=False)],
    "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 96 << 20, "swappiness": 20},
    "cpu": {"shares": 512, "quota": 30000, "period": 60000, "cpus": "0", "mems": "0"},
    "pids": {"limit": 42},
}
COMPARED = [("memory", "memory.limit_in_bytes"), ("memory", "memory.memsw.limit_in_bytes"),
            ("memory", "memory.soft_limit_in_bytes"), ("memory", "memory.swappiness"),
            ("cpu", "cpu.shares"), ("cpu", "cpu.cfs_quota_us"), ("cpu", "cpu.cfs_period_us"),
            ("cpuset", "cpuset.cpus"), ("cpuset", "cpuset.mems"), ("pids", "pids.max"),
            ("devices", "devices.list")]


@pytest.mark.skipif(not os.path.exists("/usr/sbin/runc") and not os.path.exists("/usr/bin/runc"),
                    reason="needs runc")
def test_same_files_as_runc(parent, tmp_path, busybox_rootfs):
    """runc creates a container with RUNC_RESOURCES in one group, pyrun sets
    them in another: the kernel shows the same values in both."""
    import json
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["root"] = {"path": busybox_rootfs, "readonly": True}
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sleep", "60"]
    config["linux"]["cgroupsPath"] = f"{parent}/runc"
    config["linux"]["resources"] = RUNC_RESOURCES
    (bundle / "config.json").write_text(json.dumps(config))
    state = tmp_path / "runc-state"
    runc = ["runc", "--root", str(state)]
    cid = f"pyrun-test-{uuid.uuid4().hex[:8]}"
    # runc's init keeps the stdio it is given until `runc start`: no pipes.
    with open(tmp_path / "runc.log", "wb") as log:
        subprocess.run(runc + ["create", "--bundle", str(bundle), cid], check=True,
                       stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        m = new_manager(f"{parent}/pyrun", "pyrun")
        m.create()
        m.set(parse_resources(RUNC_RESOURCES).with_devices(devices.default_allowed()))
        theirs = {(c, f): read(f"{ROOT}/{c}", f"{parent}/runc", f) for c, f in COMPARED}
        ours = {(c, f): read(f"{ROOT}/{c}", f"{parent}/pyrun", f) for c, f in COMPARED}
        # The same device rules; pyrun keeps the spec's order where runc sorts.
        key = ("devices", "devices.list")
        assert sorted(ours.pop(key).splitlines()) == sorted(theirs.pop(key).splitlines())
        assert ours == theirs
        # runc joins the hybrid host's cgroup2 tree too, at the same path.
        assert os.path.isdir(fs.join(UNIFIED, f"{parent}/runc")) == ("" in m.paths)
        m.destroy()
    finally:
        subprocess.run(runc + ["delete", "--force", cid], check=True)
