"""cgroup v1: resource files, freezer and stats, one controller at a time.

Each setter takes the :class:`~pyrun.cgroups.fs.Group` of its controller
and the matching part of :class:`~pyrun.cgroups.resources.Resources`; None
fields are left alone, as are runc's "unset" zero values.  Behaviour follows
runc's libcontainer/cgroups/fs (memory.go, cpu.go, cpuset.go, blkio.go,
pids.go, hugetlb.go, devices.go, freezer.go), restated here.  Kernel
reference: Documentation/admin-guide/cgroup-v1/.
"""
import errno
import time

from pyrun.errdefs import FailedPrecondition, InvalidArgument, Unavailable
from pyrun.linux import SyscallError
from pyrun.cgroups import devices
from pyrun.cgroups.fs import warn



def set_memory(g, m, where="linux.resources.memory"):
    if m.kernel is not None:
        # Linux >= 5.16 accepts memory.kmem.limit_in_bytes but ignores it;
        # runc 1.1 ignores the field too.
        warn(f"{where}.kernel is ignored (the kernel no longer enforces kmem limits)")
    if m.check_before_update and m.limit and m.limit > 0:
        usage = g.number("memory.usage_in_bytes")
        if m.limit < usage:
            raise InvalidArgument(f"{where}.limit: {m.limit} is below the current usage {usage}")
    limit, swap = m.limit or 0, m.swap or 0
    if limit == -1 and swap == 0 and g.exists("memory.memsw.limit_in_bytes"):
        # "unlimited memory" with swap unset means unlimited swap too.
        swap = -1
    if swap:
        g.require("memory.memsw.limit_in_bytes", f"{where}.swap")
    if limit and swap:
        # memsw must stay >= memory at every step, so raise memsw first when
        # it grows past the current memory limit, else lower memory first.
        current = g.number("memory.limit_in_bytes")
        order = ("memsw", "mem") if swap == -1 or current < swap else ("mem", "memsw")
    else:
        order = ("mem", "memsw")
    for which in order:
        if which == "mem" and limit:
            g.write("memory.limit_in_bytes", limit)
        elif which == "memsw" and swap:
            g.write("memory.memsw.limit_in_bytes", swap)
    if m.reservation:
        g.write("memory.soft_limit_in_bytes", m.reservation)
    if m.kernel_tcp:
        # Still enforced (socket buffers); runc 1.1 drops it, crun writes it.
        g.write("memory.kmem.tcp.limit_in_bytes", m.kernel_tcp)
    if m.disable_oom_killer:
        g.write("memory.oom_control", 1)
    if m.swappiness is not None:
        g.write("memory.swappiness", m.swappiness)
    if m.use_hierarchy is not None:
        g.write("memory.use_hierarchy", int(m.use_hierarchy))


def set_cpu(g, c, where="linux.resources.cpu"):
    if c.shares:
        g.write("cpu.shares", c.shares)
        # The kernel clamps to [2, 262144]; say so instead of running with
        # a value nobody asked for.
        got = g.number("cpu.shares")
        if got != c.shares:
            bound = "maximum" if c.shares > got else "minimum"
            raise InvalidArgument(f"{where}.shares: {c.shares} is beyond the kernel's "
                                  f"{bound} cpu.shares of {got}")
    pending_period = None
    if c.period:
        try:
            g.write("cpu.cfs_period_us", c.period)
        except SyscallError as e:
            # A shorter period can be refused (EINVAL) while the old quota
            # no longer fits the parent's; retry once the quota is written.
            if e.errno != errno.EINVAL or not c.quota:
                raise
            pending_period = c.period
    if c.quota:
        g.write("cpu.cfs_quota_us", c.quota)
        if pending_period:
            g.write("cpu.cfs_period_us", pending_period)
    if c.burst is not None:
        g.write("cpu.cfs_burst_us", c.burst)
    if c.realtime_period:
        g.write("cpu.rt_period_us", c.realtime_period)
    if c.realtime_runtime:
        g.write("cpu.rt_runtime_us", c.realtime_runtime)
    if c.idle is not None:
        g.write("cpu.idle", c.idle)


def set_cpuset(g, c):
    if c.cpus:
        g.write("cpuset.cpus", c.cpus)
    if c.mems:
        g.write("cpuset.mems", c.mems)


def init_cpuset(parent, child):
    """A new v1 cpuset group starts with empty cpus and mems, and no task
    can join it until both are set: copy the parent's (runc's
    cpuset ensureParent/copyIfNeeded)."""
    for file in ("cpuset.cpus", "cpuset.mems"):
        if not child.read(file).strip():
            value = parent.read(file).strip()
            if not value:
                raise FailedPrecondition(f"{parent.dir}/{file} is empty: cannot give the new "
                                         f"group {child.dir} a cpuset")
            child.write(file, value)


def set_pids(g, p):
    if p.limit:
        g.write("pids.max", "max" if p.limit < 0 else p.limit)


def set_blkio(g, b, where="linux.resources.blockIO"):
    # With the BFQ scheduler the weights live in blkio.bfq.*; CFQ (gone
    # since Linux 5.0) had blkio.weight.
    prefix = "blkio.bfq." if g.exists("blkio.bfq.weight") else "blkio."
    if b.weight:
        g.require(prefix + "weight", f"{where}.weight")
        g.write(prefix + "weight", b.weight)
    if b.leaf_weight:
        g.require("blkio.leaf_weight", f"{where}.leafWeight")
        g.write("blkio.leaf_weight", b.leaf_weight)
    for i, wd in enumerate(b.weight_device):
        if wd.weight:
            g.require(prefix + "weight_device", f"{where}.weightDevice[{i}].weight")
            g.write(prefix + "weight_device", f"{wd.major}:{wd.minor} {wd.weight}")
        if wd.leaf_weight:
            g.require("blkio.leaf_weight_device", f"{where}.weightDevice[{i}].leafWeight")
            g.write("blkio.leaf_weight_device", f"{wd.major}:{wd.minor} {wd.leaf_weight}")
    for field, file in (("throttle_read_bps_device", "blkio.throttle.read_bps_device"),
                        ("throttle_write_bps_device", "blkio.throttle.write_bps_device"),
                        ("throttle_read_iops_device", "blkio.throttle.read_iops_device"),
                        ("throttle_write_iops_device", "blkio.throttle.write_iops_device")):
        for td in getattr(b, field):
            g.write(file, f"{td.major}:{td.minor} {td.rate}")


def set_hugetlb(g, limits):
    for h in limits:
        g.write(f"hugetlb.{h.pagesize}.limit_in_bytes", h.limit)
        # Kernels >= 5.7 also account reservations; keep both in step.
        rsvd = f"hugetlb.{h.pagesize}.rsvd.limit_in_bytes"
        if g.exists(rsvd):
            g.write(rsvd, h.limit)


def set_net_cls(g, n):
    g.write("net_cls.classid", n.class_id)


def set_net_prio(g, n):
    for name, prio in n.priorities:
        g.write("net_prio.ifpriomap", f"{name} {prio}")


def set_rdma(g, rdma):
    for name, handles, objects in rdma:
        h = "max" if handles is None else handles
        o = "max" if objects is None else objects
        g.write("rdma.max", f"{name} hca_handle={h} hca_object={o}")


def set_devices(g, rules):
    """Move the group from its current devices.list to ``rules`` with the
    fewest devices.allow/deny writes, then check devices.list agrees (runc
    does the same: a mismatch means the kernel did not take a rule, e.g.
    one the parent group does not allow)."""
    target = devices.target_state(rules)
    current = devices.parse_devices_list(g.read("devices.list"))
    for rule in devices.v1_transition(current, target):
        g.write("devices.allow" if rule.allow else "devices.deny", rule.cgroup_string())
    now = devices.parse_devices_list(g.read("devices.list"))
    # devices.list spells out an allow-list only; in deny-list mode it just
    # says "a *:* rwm", so only the mode can be checked.
    if now.default_allow != target.default_allow or (not target.default_allow and now != target):
        raise FailedPrecondition(f"{g.dir}/devices.list does not match the requested device "
                                 f"rules after writing them (is the parent group more restricted?)")


# --- freezer -------------------------------------------------------------

def freeze(g, timeout=10.0):
    """Write FROZEN and wait until freezer.state says FROZEN (it passes
    through FREEZING while tasks are being stopped).  On timeout the group
    is thawed again and Unavailable raised."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        g.write("freezer.state", "FROZEN")
        if g.read("freezer.state").strip() == "FROZEN":
            return
        if time.monotonic() > deadline:
            g.write("freezer.state", "THAWED")
            raise Unavailable(f"{g.dir}: freezer.state stayed FREEZING for {timeout} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def thaw(g):
    g.write("freezer.state", "THAWED")


def state(g):
    return "frozen" if g.read("freezer.state").strip() in ("FROZEN", "FREEZING") else "thawed"


# --- OOM -----------------------------------------------------------------

def oom_kill_count(g):
    """memory.oom_control's oom_kill counter (kernel >= 4.13)."""
    return g.keyed("memory.oom_control").get("oom_kill", 0)


# --- stats (the shape of runc's types.Stats) -------------------------------

USER_HZ = 100  # cpuacct.stat counts in USER_HZ ticks


def cpu_stats(cpu, cpuacct):
    out = {"usage": {}, "throttling": {}}
    if cpuacct is not None:
        u = out["usage"]
        u["total"] = cpuacct.number("cpuacct.usage")
        if cpuacct.exists("cpuacct.usage_percpu"):
            u["percpu"] = [int(x) for x in cpuacct.read("cpuacct.usage_percpu").split()]
        for file, key in (("cpuacct.usage_percpu_sys", "percpu_kernel"),
                          ("cpuacct.usage_percpu_user", "percpu_user")):
            if cpuacct.exists(file):
                u[key] = [int(x) for x in cpuacct.read(file).split()]
        ticks = cpuacct.keyed("cpuacct.stat")
        ns = 1_000_000_000 // USER_HZ
        u["kernel"] = ticks.get("system", 0) * ns
        u["user"] = ticks.get("user", 0) * ns
    if cpu is not None and cpu.exists("cpu.stat"):
        s = cpu.keyed("cpu.stat")
        out["throttling"] = {"periods": s.get("nr_periods", 0),
                             "throttledPeriods": s.get("nr_throttled", 0),
                             "throttledTime": s.get("throttled_time", 0)}
    return out


def _memory_entry(g, prefix):
    return {"limit": g.number(prefix + "limit_in_bytes"), "usage": g.number(prefix + "usage_in_bytes"),
            "max": g.number(prefix + "max_usage_in_bytes"), "failcnt": g.number(prefix + "failcnt")}


def memory_stats(g):
    raw = g.keyed("memory.stat")
    return {"cache": raw.get("cache", 0),
            "usage": _memory_entry(g, "memory."),
            "swap": _memory_entry(g, "memory.memsw."),
            "kernel": _memory_entry(g, "memory.kmem."),
            "kernelTCP": _memory_entry(g, "memory.kmem.tcp."),
            "raw": raw}


def pids_stats(g):
    limit = g.read("pids.max").strip()
    return {"current": g.number("pids.current"), "limit": 0 if limit == "max" else int(limit)}


def _blkio_entries(g, file):
    out = []
    if not g.exists(file):
        return out
    for line in g.read(file).splitlines():
        parts = line.split()
        if len(parts) == 3 and ":" in parts[0]:
            major, minor = parts[0].split(":")
            out.append({"major": int(major), "minor": int(minor), "op": parts[1], "value": int(parts[2])})
    return out


def blkio_stats(g):
    # With no CFQ/BFQ statistics (this kernel has BFQ's only when the
    # scheduler is in use), the throttle counters are what runc reports.
    bfq = g.exists("blkio.bfq.io_service_bytes_recursive")
    pre = "blkio.bfq." if bfq else "blkio.throttle."
    return {"ioServiceBytesRecursive": _blkio_entries(g, pre + "io_service_bytes_recursive"),
            "ioServicedRecursive": _blkio_entries(g, pre + "io_serviced_recursive")}


def hugetlb_stats(g, pagesizes):
    return {size: {"usage": g.number(f"hugetlb.{size}.usage_in_bytes"),
                   "max": g.number(f"hugetlb.{size}.max_usage_in_bytes"),
                   "failcnt": g.number(f"hugetlb.{size}.failcnt")} for size in pagesizes}
