"""Unit tests of pyrun.cgroups on a fake cgroupfs in a temporary directory.

A fake tree holds, per group directory, the files a kernel would show;
every write is recorded (root, path, file, value) so the tests check the
exact file/value mapping and order.  A little emulation stands in for the
kernel where the managers read back: devices.list, cpu.shares clamping.
"""
import errno
import os
import struct

import pytest

from pyrun.cgroups import detect, devices, fs, new_manager, parse_resources, v2
from pyrun.cgroups.paths import clean_path, container_path
from pyrun.cgroups.resources import (CPU, DeviceRule, HugepageLimit, Memory, Pids, Resources,
                                     ThrottleDevice)
from pyrun.errdefs import FailedPrecondition, InvalidArgument, NotImplementedYet
from pyrun.linux import SyscallError

V1_FILES = {
    "memory": {"memory.limit_in_bytes": "9223372036854771712",
               "memory.memsw.limit_in_bytes": "9223372036854771712",
               "memory.soft_limit_in_bytes": "", "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
               "memory.swappiness": "60", "memory.use_hierarchy": "1", "memory.usage_in_bytes": "4096",
               "memory.max_usage_in_bytes": "8192", "memory.failcnt": "0", "memory.stat": "cache 12\nrss 34\n",
               "cgroup.event_control": "", "memory.kmem.tcp.limit_in_bytes": "9223372036854771712"},
    "cpu": {"cpu.shares": "1024", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1",
            "cpu.cfs_burst_us": "0", "cpu.rt_period_us": "1000000", "cpu.rt_runtime_us": "0",
            "cpu.idle": "0", "cpu.stat": "nr_periods 5\nnr_throttled 2\nthrottled_time 700\n"},
    "cpuacct": {"cpuacct.usage": "1000", "cpuacct.usage_percpu": "600 400", "cpuacct.stat": "user 3\nsystem 1\n"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "devices": {"devices.allow": "", "devices.deny": "", "devices.list": "a *:* rwm\n"},
    "freezer": {"freezer.state": "THAWED"},
    "pids": {"pids.max": "max", "pids.current": "1"},
    # Like this host: no blkio.weight (no CFQ), throttle files only.
    "blkio": {"blkio.throttle.read_bps_device": "", "blkio.throttle.write_bps_device": "",
              "blkio.throttle.read_iops_device": "", "blkio.throttle.write_iops_device": "",
              "blkio.throttle.io_service_bytes_recursive": "8:0 Read 512\n8:0 Write 0\nTotal 512\n",
              "blkio.throttle.io_serviced_recursive": "8:0 Read 1\n"},
    "name=systemd": {},
}
V2_FILES = {
    "cgroup.controllers": "cpuset cpu io memory hugetlb pids", "cgroup.subtree_control": "",
    "cgroup.freeze": "0", "cgroup.kill": "", "cgroup.max.depth": "max", "cgroup.events": "populated 0\nfrozen 0\n",
    "memory.max": "max", "memory.swap.max": "max", "memory.low": "0", "memory.current": "4096",
    "memory.swap.current": "0", "memory.events": "low 0\nhigh 0\nmax 1\noom 1\noom_kill 2\n",
    "memory.stat": "anon 10\nfile 20\n", "memory.peak": "9000",
    "cpu.weight": "100", "cpu.max": "max 100000", "cpu.max.burst": "0", "cpu.idle": "0",
    "cpu.stat": "usage_usec 7\nuser_usec 5\nsystem_usec 2\nnr_periods 1\nnr_throttled 0\nthrottled_usec 0\n",
    "cpuset.cpus": "", "cpuset.mems": "", "pids.max": "max", "pids.current": "1",
    "io.weight": "default 100", "io.max": "", "io.stat": "8:0 rbytes=512 wbytes=0 rios=1 wios=0\n",
    "hugetlb.2MB.max": "max", "hugetlb.2MB.current": "0", "hugetlb.2MB.events": "max 0\n",
    "hugetlb.1GB.max": "max", "hugetlb.1GB.current": "0", "hugetlb.1GB.events": "max 0\n",
}


class FakeCgroupfs:
    """A fake hierarchy layout below ``root``; new group directories get the
    files of their hierarchy, and writes are recorded."""

    def __init__(self, root, mode, monkeypatch, v1=tuple(V1_FILES)):
        self.root, self.mode, self.writes = str(root), mode, []
        self.hroots = {}
        if mode != "v2":
            for c in v1:
                self.hroots[os.path.join(self.root, c.removeprefix("name="))] = V1_FILES[c]
        if mode == "v1":
            pass
        elif mode == "hybrid":
            # Like this host: cgroup2 offers only hugetlb beside its core files.
            self.hroots[os.path.join(self.root, "unified")] = {
                **{k: v for k, v in V2_FILES.items() if k.startswith(("cgroup.", "hugetlb.", "cpu.stat"))},
                "cgroup.controllers": "hugetlb"}
        else:
            self.hroots[self.root] = V2_FILES
        for hroot, files in self.hroots.items():
            self._populate(hroot, files, top=True)
        real_write, real_make, real_remove = fs.write_file, fs.make_dir, fs.remove_dir

        def make_dir(root, path):
            made = real_make(root, path)
            if made:
                self._populate(fs.join(root, path), self.hroots[root], top=False)
            return made

        def write_file(root, path, file, value):
            self.writes.append((os.path.relpath(root, self.root), path, file, str(value)))
            real_write(root, path, file, value)
            self._emulate(root, path, file, str(value))

        def remove_dir(root, path, attempts=10):
            full = fs.join(root, path)
            for name in os.listdir(full):
                if os.path.isfile(os.path.join(full, name)):
                    os.unlink(os.path.join(full, name))
            real_remove(root, path, attempts)

        monkeypatch.setattr(fs, "make_dir", make_dir)
        monkeypatch.setattr(fs, "write_file", write_file)
        monkeypatch.setattr(fs, "remove_dir", remove_dir)

    @staticmethod
    def _populate(d, files, top):
        os.makedirs(d, exist_ok=True)
        for name, content in {"cgroup.procs": "", **files}.items():
            if top and name in ("cpuset.cpus", "cpuset.mems"):
                content = "0-1" if name == "cpuset.cpus" else "0"
            with open(os.path.join(d, name), "w") as f:
                f.write(content)

    def _emulate(self, root, path, file, value):
        d = fs.join(root, path)
        if file in ("devices.allow", "devices.deny"):
            with open(os.path.join(d, "devices.list")) as f:
                state = devices.parse_devices_list(f.read())
            t, nums, access = value.split()
            major, minor = (None if n == "*" else int(n) for n in nums.split(":"))
            state.apply(DeviceRule(file == "devices.allow", t, major, minor, access))
            lines = ["a *:* rwm"] if state.default_allow else [
                DeviceRule(True, *meta, acc).cgroup_string() for meta, acc in state.sorted_exceptions()]
            with open(os.path.join(d, "devices.list"), "w") as f:
                f.write("\n".join(lines) + "\n")
        elif file == "cpu.shares":
            with open(os.path.join(d, file), "w") as f:
                f.write(str(min(max(int(value), 2), 262144)))

    def written(self, file=None):
        return [(h, v) if file else (h, f, v) for h, _, f, v in self.writes if file in (None, f)]


def proc_cgroup(tmp_path, text="0::/user.slice/me\n4:memory:/m\n3:cpu,cpuacct:/c\n"):
    p = tmp_path / "proc-self-cgroup"
    p.write_text(text)
    return str(p)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    def make(mode, path="/pyrun/c1", v1=tuple(V1_FILES)):
        cg = FakeCgroupfs(tmp_path / "cgroup", mode, monkeypatch, v1)
        m = new_manager(path, "c1", root=cg.root, mode=mode, proc_cgroup=proc_cgroup(tmp_path))
        m.create()
        cg.writes.clear()
        return cg, m
    return make


# --- parse_resources ------------------------------------------------------

FULL = {
    "devices": [{"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "wr"}],
    "memory": {"limit": 1 << 30, "reservation": 1 << 29, "swap": 2 << 30, "kernel": -1,
               "swappiness": 10, "disableOOMKiller": True},
    "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "realtimeRuntime": 950,
            "realtimePeriod": 1000, "cpus": "0-1", "mems": "0", "idle": 0},
    "pids": {"limit": 32},
    "blockIO": {"weight": 500, "leafWeight": 300,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 600}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
    "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
    "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 500}]},
    "unified": {"memory.high": "1G"},
}


def test_parse_full():
    r = parse_resources(FULL)
    assert r.devices == (DeviceRule(False, "a", None, None, "rwm"), DeviceRule(True, "c", 1, 3, "rw"))
    assert r.memory == Memory(limit=1 << 30, reservation=1 << 29, swap=2 << 30, kernel=-1,
                              swappiness=10, disable_oom_killer=True)
    assert r.cpu.cpus == "0-1" and r.cpu.realtime_runtime == 950 and r.cpu.idle == 0
    assert r.pids == Pids(32)
    assert r.block_io.weight_device[0].weight == 600
    assert r.block_io.throttle_read_bps_device == (ThrottleDevice(8, 0, 1048576),)
    assert r.hugepage_limits == (HugepageLimit("2MB", 4194304),)
    assert r.network.priorities == (("eth0", 500),)
    assert r.unified == (("memory.high", "1G"),)
    assert parse_resources(None) == parse_resources({}) == Resources()
    hash(r)  # frozen all the way down


@pytest.mark.parametrize("raw, message", [
    ({"memory": {"limit": "1g"}}, r"linux\.resources\.memory\.limit: expected an integer"),
    ({"memory": {"limit": True}}, r"memory\.limit: expected an integer"),
    ({"memory": {"swappiness": 101}}, r"memory\.swappiness: 101 is out of range"),
    ({"memory": {"limt": 1}}, r"linux\.resources\.memory: unknown field\(s\) limt"),
    ({"devices": [{"allow": True, "access": "rwm"}, {"allow": True, "access": "x"}]},
     r"devices\[1\]\.access: access 'x'"),
    ({"devices": [{"allow": True, "access": ""}]}, r"devices\[0\]\.access"),
    ({"devices": [{"access": "r"}]}, r"devices\[0\]\.allow: required"),
    ({"devices": [{"allow": True, "type": "x", "access": "r"}]}, r"devices\[0\]\.type"),
    ({"pids": {"limit": 1.5}}, r"pids\.limit: expected an integer"),
    ({"cpu": {"shares": -1}}, r"cpu\.shares: -1 is out of range"),
    ({"cpu": {"cpus": "0-a"}}, r"cpu\.cpus: '0-a' is not a cpuset list"),
    ({"blockIO": {"weight": 5}}, r"blockIO\.weight: 5 is out of range \[10, 1000\]"),
    ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0}]}},
     r"throttleReadBpsDevice\[0\]\.rate: required"),
    ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]}, r"hugepageLimits\[0\]\.pageSize"),
    ({"unified": {"../x": "1"}}, r"unified: key '\.\./x'"),
    ({"unified": {"memory.high": 5}}, r"unified\.memory\.high: expected a string"),
    ([], r"linux\.resources: expected an object"),
])
def test_parse_errors_name_the_field(raw, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_resources(raw)


# --- layout and paths -----------------------------------------------------

def _mountinfo(tmp_path, lines):
    p = tmp_path / "mountinfo"
    p.write_text("".join(
        f"{i} 1 0:{i} / {mp} rw - {fstype} {fstype} rw,{opts}\n"
        for i, (mp, fstype, opts) in enumerate(lines, start=30)))
    return str(p)


def test_detect(tmp_path):
    hybrid = _mountinfo(tmp_path, [("/sys/fs/cgroup", "tmpfs", ""),
                                   ("/sys/fs/cgroup/memory", "cgroup", "memory"),
                                   ("/sys/fs/cgroup/unified", "cgroup2", "")])
    assert detect(hybrid) == "hybrid"
    assert detect(_mountinfo(tmp_path, [("/sys/fs/cgroup", "cgroup2", "nsdelegate")])) == "v2"
    assert detect(_mountinfo(tmp_path, [("/sys/fs/cgroup/cpu", "cgroup", "cpu")])) == "v1"
    with pytest.raises(FailedPrecondition, match="no cgroup filesystem"):
        detect(_mountinfo(tmp_path, [("/sys", "sysfs", "")]))


def test_clean_path():
    assert clean_path("") == ""
    assert clean_path("../../x/./y") == "x/y"
    assert clean_path("/a/../../b//c") == "/b/c"
    assert clean_path("..") == ""


def test_container_path(tmp_path):
    pc = proc_cgroup(tmp_path)
    assert container_path("/abs/x", "id", "memory", "v1", pc) == "/abs/x"
    # Relative: below the caller's group in that hierarchy.
    assert container_path("x", "id", "memory", "v1", pc) == "/m/x"
    assert container_path("x", "id", "cpuacct", "v1", pc) == "/c/x"
    # Hybrid's cgroup2 tree: from its root, as runc 1.1 does.
    assert container_path("x", "id", "", "hybrid", pc) == "/x"
    # Pure v2: below the caller's parent (its own group holds processes).
    assert container_path("x", "id", "", "v2", pc) == "/user.slice/x"
    # Empty: the container id.
    assert container_path("", "id", "memory", "v1", pc) == "/m/id"
    assert container_path("../../../etc", "id", "memory", "v1", pc) == "/m/etc"
    with pytest.raises(FailedPrecondition, match="no pids entry"):
        container_path("x", "id", "pids", "v1", pc)


def test_systemd_driver_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="slice:prefix:name"):
        new_manager("/a/b", "id", systemd=True)
    if not os.path.isdir("/run/systemd/system"):
        with pytest.raises(FailedPrecondition, match="systemd"):
            new_manager("system.slice:pyrun:id", "id", systemd=True)


def test_write_file_error_names_file_and_value(tmp_path):
    with pytest.raises(SyscallError) as e:
        fs.write_file(str(tmp_path), "/nope", "memory.max", 123)
    assert e.value.errno == errno.ENOENT
    assert e.value.filename == str(tmp_path / "nope" / "memory.max")
    assert "'123'" in str(e.value) and "memory.max" in str(e.value)


# --- lifecycle on the fake tree ---------------------------------------------

def test_create_records_and_destroy_removes(tmp_path, monkeypatch):
    cg = FakeCgroupfs(tmp_path / "cgroup", "hybrid", monkeypatch)
    m = new_manager("/pyrun/c1", "c1", root=cg.root, mode="hybrid")
    assert set(m.paths) == set(V1_FILES) | {""}
    m.create()
    assert ("memory", "/pyrun") in m.created and ("", "/pyrun/c1") in m.created
    # cpuset: the new groups took their parent's cpus and mems.
    assert ("cpuset", "/pyrun/c1", "cpuset.cpus", "0-1") in cg.writes
    assert ("cpuset", "/pyrun/c1", "cpuset.mems", "0") in cg.writes
    # cgroup2: the new intermediate group passes its controllers down.
    assert ("unified", "/pyrun", "cgroup.subtree_control", "+hugetlb") in [
        (h, p, f, v) for h, p, f, v in cg.writes]
    assert m.mount_sources()[os.path.join(cg.root, "unified")] == "/pyrun/c1"
    state = m.describe()
    again = type(m).from_state(state)
    assert again.paths == m.paths and again.created == m.created
    again.destroy()
    assert again.created == []
    for c in ("memory", "unified", "systemd"):
        assert not os.path.exists(os.path.join(cg.root, c, "pyrun"))


def test_create_undoes_itself_on_failure(tmp_path, monkeypatch):
    cg = FakeCgroupfs(tmp_path / "cgroup", "v1", monkeypatch)
    # The parent of the new cpuset group has no cpus: nothing to copy.
    with open(os.path.join(cg.root, "cpuset", "cpuset.cpus"), "w") as f:
        f.write("")
    m = new_manager("/pyrun/c1", "c1", root=cg.root, mode="v1")
    with pytest.raises(FailedPrecondition, match="cpuset.cpus is empty"):
        m.create()
    assert m.created == []
    assert not os.path.exists(os.path.join(cg.root, "memory", "pyrun"))


def test_apply_writes_every_hierarchy(fake):
    cg, m = fake("hybrid")
    m.apply(4242)
    assert sorted(h for h, f, v in cg.written() if f == "cgroup.procs" and v == "4242") == sorted(
        [c.removeprefix("name=") for c in V1_FILES] + ["unified"])


# --- v1 mappings -----------------------------------------------------------

def test_v1_memory(fake):
    cg, m = fake("v1")
    m.set(Resources(memory=Memory(limit=1 << 20, swap=2 << 20, reservation=4096, kernel=1 << 20,
                                  kernel_tcp=8192, disable_oom_killer=True, swappiness=0)))
    assert cg.written() == [
        ("memory", "memory.limit_in_bytes", str(1 << 20)),
        ("memory", "memory.memsw.limit_in_bytes", str(2 << 20)),
        ("memory", "memory.soft_limit_in_bytes", "4096"),
        ("memory", "memory.kmem.tcp.limit_in_bytes", "8192"),
        ("memory", "memory.oom_control", "1"),
        ("memory", "memory.swappiness", "0"),
    ]


def test_v1_memory_grow_writes_memsw_first(fake):
    # memsw must stay >= memory at each step: raising both past the current
    # memory limit writes memsw first.
    cg, m = fake("v1")
    m.set(Resources(memory=Memory(limit=1 << 20, swap=2 << 20)))
    cg.writes.clear()
    m.set(Resources(memory=Memory(limit=8 << 20, swap=16 << 20)))
    assert cg.written() == [("memory", "memory.memsw.limit_in_bytes", str(16 << 20)),
                            ("memory", "memory.limit_in_bytes", str(8 << 20))]


def test_v1_memory_shrink_writes_memory_first(fake):
    cg, m = fake("v1")
    m.set(Resources(memory=Memory(limit=64 << 20, swap=64 << 20)))
    cg.writes.clear()
    m.set(Resources(memory=Memory(limit=16 << 20, swap=32 << 20)))
    assert cg.written("memory.limit_in_bytes")[0] == ("memory", str(16 << 20))
    assert [f for _, f, _ in cg.written()] == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]


def test_v1_memory_unlimited_implies_unlimited_swap(fake):
    cg, m = fake("v1")
    m.set(Resources(memory=Memory(limit=-1)))
    assert cg.written() == [("memory", "memory.memsw.limit_in_bytes", "-1"),
                            ("memory", "memory.limit_in_bytes", "-1")]


def test_v1_cpu(fake):
    cg, m = fake("v1")
    m.set(parse_resources({"cpu": {"shares": 512, "quota": 20000, "period": 50000, "burst": 1000,
                                   "realtimePeriod": 1000000, "realtimeRuntime": 5000, "idle": 1,
                                   "cpus": "1", "mems": "0"}}))
    assert cg.written() == [
        ("cpuset", "cpuset.cpus", "1"), ("cpuset", "cpuset.mems", "0"),
        ("cpu", "cpu.shares", "512"), ("cpu", "cpu.cfs_period_us", "50000"),
        ("cpu", "cpu.cfs_quota_us", "20000"), ("cpu", "cpu.cfs_burst_us", "1000"),
        ("cpu", "cpu.rt_period_us", "1000000"), ("cpu", "cpu.rt_runtime_us", "5000"),
        ("cpu", "cpu.idle", "1"),
    ]


def test_v1_cpu_shares_clamped_is_an_error(fake):
    cg, m = fake("v1")
    with pytest.raises(InvalidArgument, match="maximum cpu.shares of 262144"):
        m.set(Resources(cpu=CPU(shares=300000)))


def test_v1_pids_blkio_hugetlb(fake):
    cg, m = fake("v1")
    m.set(parse_resources({"pids": {"limit": -1}, "blockIO": {
        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 100}],
        "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 7}]}}))
    assert cg.written() == [("pids", "pids.max", "max"),
                            ("blkio", "blkio.throttle.read_bps_device", "8:0 100"),
                            ("blkio", "blkio.throttle.write_iops_device", "8:16 7")]
    with pytest.raises(FailedPrecondition, match=r"blockIO\.weight needs blkio\.weight"):
        m.set(parse_resources({"blockIO": {"weight": 500}}))
    with pytest.raises(FailedPrecondition, match="needs the hugetlb cgroup controller"):
        m.set(parse_resources({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}))
    with pytest.raises(FailedPrecondition, match="net_prio"):
        m.set(parse_resources({"network": {"priorities": [{"name": "lo", "priority": 1}]}}))
    with pytest.raises(InvalidArgument, match="no cgroup v2 tree"):
        m.set(parse_resources({"unified": {"memory.high": "1"}}))


def test_v1_devices_transition(fake):
    cg, m = fake("v1")
    rules = parse_resources({"devices": [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": True, "type": "c", "access": "m"},
        {"allow": True, "type": "b", "major": 8, "access": "r"},
    ]})
    m.set(rules)
    # In the spec's order, so that devices.list lists them in that order.
    assert cg.written() == [
        ("devices", "devices.deny", "a *:* rwm"),
        ("devices", "devices.allow", "c 1:3 rwm"),
        ("devices", "devices.allow", "c *:* m"),
        ("devices", "devices.allow", "b 8:* r"),
    ]
    # Setting the same rules again changes nothing.
    cg.writes.clear()
    m.set(rules)
    assert cg.written() == []
    # Dropping one rule denies just that access.
    m.set(parse_resources({"devices": [{"allow": False, "access": "rwm"},
                                       {"allow": True, "type": "c", "major": 1, "minor": 3,
                                        "access": "rwm"}]}))
    assert cg.written() == [("devices", "devices.deny", "c *:* m"),
                            ("devices", "devices.deny", "b 8:* r")]


def test_v1_devices_deny_list(fake):
    cg, m = fake("v1")
    m.set(parse_resources({"devices": [{"allow": True, "access": "rwm"},
                                       {"allow": False, "type": "c", "major": 10, "minor": 200,
                                        "access": "rwm"}]}))
    assert cg.written() == [("devices", "devices.allow", "a *:* rwm"),
                            ("devices", "devices.deny", "c 10:200 rwm")]


def test_v1_freezer_and_oom(fake):
    cg, m = fake("v1")
    m.freeze()
    assert cg.written() == [("freezer", "freezer.state", "FROZEN")]
    assert m.state() == "frozen"
    m.kill_all(15)  # no processes; a paused group stays paused
    assert m.state() == "frozen"
    m.thaw()
    assert m.state() == "thawed"
    assert m.oom_kill_count() == 3


def test_v1_stats(fake):
    cg, m = fake("v1")
    s = m.stats()
    assert s["cpu"]["usage"] == {"total": 1000, "percpu": [600, 400], "kernel": 10_000_000,
                                 "user": 30_000_000}
    assert s["cpu"]["throttling"] == {"periods": 5, "throttledPeriods": 2, "throttledTime": 700}
    assert s["memory"]["cache"] == 12 and s["memory"]["usage"]["usage"] == 4096
    assert s["pids"] == {"current": 1, "limit": 0}
    assert s["blkio"]["ioServiceBytesRecursive"] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 512},
        {"major": 8, "minor": 0, "op": "Write", "value": 0}]
    assert s["hugetlb"] == {}


# --- v2 mappings and conversions -----------------------------------------------

@pytest.mark.parametrize("shares, weight", [(2, 1), (1024, 39), (262144, 10000), (0, 0)])
def test_cpu_weight(shares, weight):
    assert v2.cpu_weight(shares) == weight


@pytest.mark.parametrize("blkio, io", [(10, 1), (500, 4950), (1000, 10000), (0, 0)])
def test_io_weight(blkio, io):
    assert v2.io_weight(blkio) == io


@pytest.mark.parametrize("swap, limit, out", [
    (0, -1, "max"), (-1, 100, "max"), (0, 100, None), (300, 100, "200"), (100, 100, "0")])
def test_swap_max(swap, limit, out):
    assert v2.swap_max(swap, limit) == out


def test_swap_max_errors():
    with pytest.raises(InvalidArgument, match="needs a memory limit"):
        v2.swap_max(100, 0)
    with pytest.raises(InvalidArgument, match="below the memory limit"):
        v2.swap_max(50, 100)


def test_v2_set_all(fake, monkeypatch):
    cg, m = fake("v2")
    filters = []
    monkeypatch.setattr(v2, "install_device_filter", lambda d, insns: filters.append((d, insns)))
    m.set(parse_resources({
        "devices": [{"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
        "memory": {"limit": 1 << 30, "swap": 3 << 30, "reservation": 1 << 20},
        "cpu": {"shares": 1024, "quota": 50000, "cpus": "0", "mems": "0", "idle": 1},
        "pids": {"limit": 10},
        "blockIO": {"weight": 500, "weightDevice": [{"major": 8, "minor": 0, "weight": 10}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}],
                    "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 2}],
                    "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 3}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 4}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 2097152}],
        "unified": {"memory.max": "2G"},
    }))
    assert cg.written() == [
        (".", "cpuset.cpus", "0"), (".", "cpuset.mems", "0"),
        (".", "memory.swap.max", str(2 << 30)), (".", "memory.max", str(1 << 30)),
        (".", "memory.low", str(1 << 20)),
        (".", "cpu.weight", "39"), (".", "cpu.max", "50000 100000"), (".", "cpu.idle", "1"),
        (".", "pids.max", "10"),
        (".", "io.weight", "default 4950"), (".", "io.weight", "8:0 1"),
        (".", "io.max", "8:0 rbps=1"), (".", "io.max", "8:0 wbps=2"),
        (".", "io.max", "8:0 riops=3"), (".", "io.max", "8:0 wiops=4"),
        (".", "hugetlb.2MB.max", "2097152"),
        (".", "memory.max", "2G"),  # unified last: it wins
    ]
    assert [d for d, _ in filters] == [fs.join(cg.root, "/pyrun/c1")]
    assert filters[0][1] == devices.bpf_program(m_rules := parse_resources(
        {"devices": [{"allow": False, "access": "rwm"},
                     {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]}).devices)
    assert m_rules


def test_v2_cpu_max_forms(fake):
    cg, m = fake("v2")
    m.set(Resources(cpu=CPU(quota=-1)))
    m.set(Resources(cpu=CPU(period=250000)))
    assert cg.written("cpu.max") == [(".", "max 100000"), (".", "max 250000")]


@pytest.mark.parametrize("raw, message", [
    ({"memory": {"swappiness": 10}}, "swappiness"),
    ({"memory": {"disableOOMKiller": True}}, "disableOOMKiller"),
    ({"cpu": {"realtimeRuntime": 10}}, "realtime"),
    ({"blockIO": {"leafWeight": 10}}, "leaf"),
])
def test_v2_refuses_what_it_cannot_express(fake, raw, message):
    cg, m = fake("v2")
    with pytest.raises(NotImplementedYet, match=message):
        m.set(parse_resources(raw))
    assert cg.written() == []


def test_v2_network_refused(fake):
    cg, m = fake("v2")
    with pytest.raises(FailedPrecondition, match="net_cls"):
        m.set(parse_resources({"network": {"classID": 1}}))


def test_v2_missing_file_is_clear(fake):
    cg, m = fake("v2")
    os.unlink(fs.join(cg.root, m.path, "hugetlb.1GB.max"))
    with pytest.raises(FailedPrecondition, match=r"'1' to hugetlb\.1GB\.max: .* has no such file"):
        m.set(parse_resources({"hugepageLimits": [{"pageSize": "1GB", "limit": 1}]}))


def test_v2_freeze_kill_oom_stats(fake, monkeypatch):
    cg, m = fake("v2")
    events = fs.join(cg.root, m.path, "cgroup.events")
    real_write = fs.write_file

    def write_and_report(root, path, file, value):
        real_write(root, path, file, value)
        if file == "cgroup.freeze":  # what the kernel reports once done
            with open(events, "w") as f:
                f.write(f"populated 1\nfrozen {value}\n")
    monkeypatch.setattr(fs, "write_file", write_and_report)
    m.freeze()
    assert m.state() == "frozen"
    m.thaw()
    assert m.state() == "thawed"
    monkeypatch.setattr(fs, "write_file", real_write)
    cg.writes.clear()
    m.kill_all()
    assert cg.written() == [(".", "cgroup.kill", "1")]
    assert m.oom_kill_count() == 2
    assert m.oom_eventfd() is None
    s = m.stats()
    assert s["cpu"]["usage"] == {"total": 7000, "kernel": 2000, "user": 5000}
    assert s["memory"]["cache"] == 20 and s["memory"]["usage"]["failcnt"] == 1
    assert s["pids"] == {"current": 1, "limit": 0}
    assert s["blkio"]["ioServicedRecursive"] == [
        {"major": 8, "minor": 0, "op": "Read", "value": 1},
        {"major": 8, "minor": 0, "op": "Write", "value": 0}]
    assert set(s["hugetlb"]) == {"2MB", "1GB"}


def test_v2_freeze_timeout_thaws(fake, monkeypatch):
    from pyrun.errdefs import Unavailable
    cg, m = fake("v2")
    with pytest.raises(Unavailable, match="frozen"):
        v2.freeze(m.group(""), timeout=0.05)
    assert cg.written("cgroup.freeze") == [(".", "1"), (".", "0")]


def test_hybrid_uses_unified_for_what_v1_lacks(fake):
    cg, m = fake("hybrid")
    m.set(parse_resources({"memory": {"limit": 4096},
                           "hugepageLimits": [{"pageSize": "2MB", "limit": 2097152}],
                           "unified": {"cgroup.max.depth": "3"}}))
    assert cg.written() == [("memory", "memory.limit_in_bytes", "4096"),
                            ("unified", "hugetlb.2MB.max", "2097152"),
                            ("unified", "cgroup.max.depth", "3")]
    m.kill_all()  # cgroup.kill of the unified group
    assert cg.written()[-1] == ("unified", "cgroup.kill", "1")


# --- device rules and the BPF program ---------------------------------------------

def test_device_state_semantics():
    s = devices.target_state([DeviceRule(False), DeviceRule(True, "c", 1, 3, "r"),
                              DeviceRule(True, "c", 1, 3, "w")])
    assert (s.default_allow, s.exceptions) == (False, {("c", 1, 3): "rw"})
    # An 'a' rule resets everything before it.
    s = devices.target_state([DeviceRule(True, "c", 1, 3, "r"), DeviceRule(True)])
    assert (s.default_allow, s.exceptions) == (True, {})
    # Deny-list mode: deny exceptions.
    s = devices.target_state([DeviceRule(True), DeviceRule(False, "b", 8, 0, "w")])
    assert (s.default_allow, s.exceptions) == (True, {("b", 8, 0): "w"})
    with pytest.raises(InvalidArgument, match="punch a hole"):
        devices.target_state([DeviceRule(False), DeviceRule(True, "c", None, None, "rwm"),
                              DeviceRule(False, "c", 1, 3, "r")])


def test_default_allowed_devices():
    rules = devices.default_allowed()
    assert DeviceRule(True, "c", 1, 3, "rwm") in rules and len(rules) == 11
    # A spec device with the same path replaces the default rule (runc).
    assert DeviceRule(True, "c", 1, 3, "rwm") not in devices.default_allowed(["/dev/null"])
    s = devices.target_state(parse_resources({"devices": [{"allow": False, "access": "rwm"}]})
                             .with_devices(rules).devices)
    assert s.exceptions[("c", None, None)] == "m" and s.exceptions[("c", 136, None)] == "rwm"


def test_v1_transition_from_allow_all_resets():
    cur = devices.parse_devices_list("a *:* rwm\n")
    tgt = devices.target_state([DeviceRule(False), DeviceRule(True, "c", 1, 5, "rw")])
    assert [r.cgroup_string() + (" allow" if r.allow else " deny")
            for r in devices.v1_transition(cur, tgt)] == ["a *:* rwm deny", "c 1:5 rw allow"]


def test_bpf_program_instructions():
    insns = devices.bpf_program([DeviceRule(False), DeviceRule(True, "c", 1, 3, "rw")])
    I = devices.Insn
    assert insns == [
        I(0x61, 2, 1, 0), I(0x54, 2, imm=0xFFFF),      # r2 = type
        I(0x61, 3, 1, 0), I(0x74, 3, imm=16),          # r3 = access
        I(0x61, 4, 1, 4), I(0x61, 5, 1, 8),            # r4 = major, r5 = minor
        I(0x55, 2, off=7, imm=2),                      # type != char: next rule
        I(0xbc, 1, 3), I(0x54, 1, imm=6), I(0x5d, 1, 3, off=4),  # access not within rw
        I(0x55, 4, off=3, imm=1), I(0x55, 5, off=2, imm=3),
        I(0xb4, 0, imm=1), I(0x95),                    # allow
        I(0xb4, 0, imm=0), I(0x95),                    # default: deny
    ]
    blob = devices.encode(insns)
    assert len(blob) == 8 * len(insns)
    assert struct.unpack_from("<BBhi", blob, 8 * 6) == (0x55, 2, 7, 2)


def run_bpf(insns, dev_type, access, major, minor):
    """A tiny interpreter for the instruction subset the generator uses."""
    r = [0] * 11
    ctx = struct.pack("<III", dev_type | (access << 16), major, minor)
    pc = 0
    while True:
        i = insns[pc]
        pc += 1
        if i.code == devices.LDX_MEM_W:
            r[i.dst] = struct.unpack_from("<I", ctx, i.off)[0]
        elif i.code == devices.ALU32_AND_K:
            r[i.dst] &= i.imm
        elif i.code == devices.ALU32_RSH_K:
            r[i.dst] >>= i.imm
        elif i.code == devices.ALU32_MOV_K:
            r[i.dst] = i.imm
        elif i.code == devices.ALU32_MOV_X:
            r[i.dst] = r[i.src]
        elif i.code == devices.JNE_K:
            pc += i.off if r[i.dst] != i.imm else 0
        elif i.code == devices.JNE_X:
            pc += i.off if r[i.dst] != r[i.src] else 0
        elif i.code == devices.EXIT:
            return r[0]
        else:
            raise AssertionError(f"unexpected opcode {i.code:#x}")


R, W, M = devices.BPF_DEVCG_ACC_READ, devices.BPF_DEVCG_ACC_WRITE, devices.BPF_DEVCG_ACC_MKNOD
C, B = devices.BPF_DEVCG_DEV_CHAR, devices.BPF_DEVCG_DEV_BLOCK


def test_bpf_program_semantics():
    p = devices.bpf_program([
        DeviceRule(False),
        DeviceRule(True, "c", 1, 3, "rwm"),
        DeviceRule(True, "c", None, None, "m"),
        DeviceRule(True, "b", 8, None, "r"),
        DeviceRule(True, "c", 136, None, "rw"),
    ])
    assert run_bpf(p, C, R | W, 1, 3) == 1
    assert run_bpf(p, C, R, 1, 5) == 0            # /dev/zero not listed
    assert run_bpf(p, C, M, 1, 5) == 1            # mknod of any char device
    assert run_bpf(p, B, M, 8, 0) == 0
    assert run_bpf(p, B, R, 8, 17) == 1
    assert run_bpf(p, B, R | W, 8, 17) == 0       # write not granted
    assert run_bpf(p, C, W, 136, 4) == 1
    assert run_bpf(p, C, M, 136, 4) == 1          # via c *:* m
    deny_list = devices.bpf_program([DeviceRule(True), DeviceRule(False, "c", 10, 200, "rwm")])
    assert run_bpf(deny_list, C, R, 10, 200) == 0
    assert run_bpf(deny_list, C, R, 1, 3) == 1
    assert run_bpf(devices.bpf_program([]), C, R, 1, 3) == 0  # no rules: deny all
