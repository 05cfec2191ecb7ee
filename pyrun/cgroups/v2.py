"""cgroup v2: resource files, the device filter, freezer and stats.

The OCI resources are written in cgroup v1 units; the conversions are
runc's (libcontainer/cgroups/utils.go and fs2/, docs/cgroup-v2.md),
restated:

- cpu.weight = 1 + ((shares - 2) * 9999) // 262142  (maps v1's [2, 262144]
  onto v2's [1, 10000]).
- cpu.max = "<quota or max> <period or 100000>".
- io.weight = "default " + 1 + ((weight - 10) * 9999) // 990  (maps blkio's
  [10, 1000] onto [1, 10000]); with BFQ, io.bfq.weight takes the v1 value.
- memory.swap.max = swap - limit (v1's swap is memory+swap); -1 stays
  "max"; limit -1 with swap unset makes both unlimited.
- memory.low = reservation; pids.max; hugetlb.<size>.max;
  io.max "<maj>:<min> rbps=|wbps=|riops=|wiops=<rate>".
- ``unified`` keys are written last, as given, so they win.

Settings v2 cannot express (memory.swappiness, disableOOMKiller, realtime
CPU, blkio leaf weights, net_cls/net_prio) are refused, never dropped.
Kernel reference: Documentation/admin-guide/cgroup-v2.rst.
"""
import os
import select
import time

from pyrun import linux
from pyrun.errdefs import InvalidArgument, NotImplementedYet, Unavailable
from pyrun.cgroups import devices
from pyrun.cgroups.fs import warn
# cpuset, pids and rdma have the same files and values in both versions.
from pyrun.cgroups.v1 import pids_stats, set_cpuset, set_pids, set_rdma  # noqa: F401



def cpu_weight(shares):
    """cgroup v1 cpu.shares -> v2 cpu.weight (0 stays 0: unset)."""
    return 0 if shares == 0 else 1 + ((shares - 2) * 9999) // 262142


def io_weight(weight):
    """blkio weight [10, 1000] -> io.weight [1, 10000] (0 stays 0: unset)."""
    return 0 if weight == 0 else 1 + ((weight - 10) * 9999) // 990


def swap_max(swap, limit, where="linux.resources.memory"):
    """v1 memory+swap -> v2 memory.swap.max (swap alone).  None: leave the
    file alone."""
    if limit == -1 and swap == 0:
        return "max"
    if swap == -1:
        return "max"
    if swap == 0:
        return None
    if limit in (0, -1):
        raise InvalidArgument(f"{where}.swap: a swap limit needs a memory limit "
                              f"(cgroup v2 limits swap apart from memory)")
    if swap < limit:
        raise InvalidArgument(f"{where}.swap: memory+swap {swap} is below the memory limit {limit}")
    return str(swap - limit)


def _num(v):
    return "max" if v == -1 else str(v)


def set_memory(g, m, where="linux.resources.memory"):
    if m.kernel is not None or m.kernel_tcp is not None:
        # memory.max already covers kernel and socket memory in v2.
        warn(f"{where}.kernel and .kernelTCP are ignored (cgroup v2 has no separate kernel "
             "memory limits; memory.max covers them)")
    if m.swappiness is not None:
        raise NotImplementedYet(f"{where}.swappiness: cgroup v2 has no per-group swappiness")
    if m.disable_oom_killer:
        raise NotImplementedYet(f"{where}.disableOOMKiller: cgroup v2 cannot disable the OOM killer")
    if m.use_hierarchy is False:
        raise InvalidArgument(f"{where}.useHierarchy: cgroup v2 is always hierarchical")
    if m.check_before_update and m.limit and m.limit > 0:
        usage = g.number("memory.current")
        if m.limit < usage:
            raise InvalidArgument(f"{where}.limit: {m.limit} is below the current usage {usage}")
    limit, swap = m.limit or 0, m.swap or 0
    value = swap_max(swap, limit, where)
    if value is not None:
        g.write("memory.swap.max", value)
    if limit:
        g.write("memory.max", _num(limit))
    if m.reservation:
        g.write("memory.low", _num(m.reservation))


def set_cpu(g, c, where="linux.resources.cpu"):
    if c.realtime_runtime or c.realtime_period:
        raise NotImplementedYet(f"{where}.realtimeRuntime/realtimePeriod: cgroup v2 has no "
                                f"realtime CPU bandwidth control")
    if c.shares:
        g.write("cpu.weight", cpu_weight(c.shares))
    if c.quota or c.period:
        quota = str(c.quota) if c.quota and c.quota > 0 else "max"
        g.write("cpu.max", f"{quota} {c.period or 100000}")
    if c.burst is not None:
        g.write("cpu.max.burst", c.burst)
    if c.idle is not None:
        g.write("cpu.idle", c.idle)






def set_io(g, b, where="linux.resources.blockIO"):
    if b.leaf_weight or any(wd.leaf_weight for wd in b.weight_device):
        raise NotImplementedYet(f"{where}.leafWeight: cgroup v2 has no leaf weights")
    bfq = g.exists("io.bfq.weight")
    if b.weight:
        if bfq:
            g.write("io.bfq.weight", b.weight)
        else:
            g.write("io.weight", f"default {io_weight(b.weight)}")
    for wd in b.weight_device:
        if wd.weight:
            if bfq:
                g.write("io.bfq.weight", f"{wd.major}:{wd.minor} {wd.weight}")
            else:
                g.write("io.weight", f"{wd.major}:{wd.minor} {io_weight(wd.weight)}")
    for field, key in (("throttle_read_bps_device", "rbps"), ("throttle_write_bps_device", "wbps"),
                       ("throttle_read_iops_device", "riops"), ("throttle_write_iops_device", "wiops")):
        for td in getattr(b, field):
            g.write("io.max", f"{td.major}:{td.minor} {key}={td.rate}")


def set_hugetlb(g, limits):
    for h in limits:
        g.write(f"hugetlb.{h.pagesize}.max", h.limit)
        rsvd = f"hugetlb.{h.pagesize}.rsvd.max"
        if g.exists(rsvd):
            g.write(rsvd, h.limit)




def set_unified(g, unified):
    for key, value in unified:
        g.write(key, value)


# --- devices: the BPF filter ---------------------------------------------

def install_device_filter(dir_path, insns):
    """Load ``insns`` as a cgroup device program and attach it to the group
    at ``dir_path``, replacing the programs attached there before (as runc
    does: attach the new one with BPF_F_ALLOW_MULTI first, then detach the
    old, so the group is never unfiltered)."""
    prog = linux.bpf_prog_load_cgroup_device(devices.encode(insns), devices.LICENSE)
    try:
        dfd = os.open(dir_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            old = linux.bpf_prog_query(dfd, linux.BPF_CGROUP_DEVICE)
            linux.bpf_prog_attach(dfd, prog, linux.BPF_CGROUP_DEVICE, linux.BPF_F_ALLOW_MULTI)
            for prog_id in old:
                ofd = linux.bpf_prog_get_fd_by_id(prog_id)
                try:
                    linux.bpf_prog_detach(dfd, ofd, linux.BPF_CGROUP_DEVICE)
                finally:
                    os.close(ofd)
        finally:
            os.close(dfd)
    finally:
        # The attachment holds its own reference to the program.
        os.close(prog)


def set_devices(g, rules):
    install_device_filter(g.dir, devices.bpf_program(rules))


# --- freezer -------------------------------------------------------------

def wait_events(g, key, want, timeout):
    """Wait until cgroup.events has ``key want``.  The kernel signals a
    change of cgroup.events with POLLPRI on an open fd of it."""
    deadline = time.monotonic() + timeout
    path = os.path.join(g.dir, "cgroup.events")
    with open(path, "rb", buffering=0) as f:
        poller = select.poll()
        poller.register(f, select.POLLPRI)
        while True:
            # Reading the polled fd itself re-arms POLLPRI.
            f.seek(0)
            fields = dict(line.split() for line in f.read().decode().splitlines() if line.strip())
            if fields.get(key) == str(want):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller.poll(min(left, 0.1) * 1000)


def freeze(g, timeout=10.0):
    g.write("cgroup.freeze", 1)
    if not wait_events(g, "frozen", 1, timeout):
        g.write("cgroup.freeze", 0)
        raise Unavailable(f"{g.dir}: cgroup.events did not report frozen within {timeout} s")


def thaw(g, timeout=10.0):
    g.write("cgroup.freeze", 0)
    wait_events(g, "frozen", 0, timeout)


def state(g):
    return "frozen" if g.read("cgroup.freeze").strip() == "1" else "thawed"


def oom_kill_count(g):
    return g.keyed("memory.events").get("oom_kill", 0)


# --- stats (the shape of runc's types.Stats) -------------------------------

def cpu_stats(g):
    s = g.keyed("cpu.stat")
    return {"usage": {"total": s.get("usage_usec", 0) * 1000,
                      "kernel": s.get("system_usec", 0) * 1000,
                      "user": s.get("user_usec", 0) * 1000},
            "throttling": {"periods": s.get("nr_periods", 0),
                           "throttledPeriods": s.get("nr_throttled", 0),
                           "throttledTime": s.get("throttled_usec", 0) * 1000}}


def memory_stats(g):
    raw = g.keyed("memory.stat")
    usage = g.number("memory.current")
    limit = g.number("memory.max")
    events = g.keyed("memory.events") if g.exists("memory.events") else {}
    # Like runc, report swap as memory+swap so that v1 and v2 compare.
    swap_usage = g.number("memory.swap.current") + usage
    swap_limit = g.number("memory.swap.max", 0)
    return {"cache": raw.get("file", 0),
            "usage": {"limit": limit, "usage": usage, "max": g.number("memory.peak"),
                      "failcnt": events.get("max", 0)},
            "swap": {"limit": min(swap_limit + limit, (1 << 64) - 1), "usage": swap_usage,
                     "max": 0, "failcnt": 0},
            "kernel": {"limit": 0, "usage": 0, "max": 0, "failcnt": 0},
            "kernelTCP": {"limit": 0, "usage": 0, "max": 0, "failcnt": 0},
            "raw": raw}




def io_stats(g):
    service_bytes, serviced = [], []
    for line in g.read("io.stat").splitlines():
        dev, *pairs = line.split()
        major, minor = (int(x) for x in dev.split(":"))
        kv = dict(p.split("=", 1) for p in pairs)
        for key, op, out in (("rbytes", "Read", service_bytes), ("wbytes", "Write", service_bytes),
                             ("rios", "Read", serviced), ("wios", "Write", serviced)):
            if key in kv:
                out.append({"major": major, "minor": minor, "op": op, "value": int(kv[key])})
    return {"ioServiceBytesRecursive": service_bytes, "ioServicedRecursive": serviced}


def hugetlb_stats(g, pagesizes):
    out = {}
    for size in pagesizes:
        events = g.keyed(f"hugetlb.{size}.events") if g.exists(f"hugetlb.{size}.events") else {}
        out[size] = {"usage": g.number(f"hugetlb.{size}.current"),
                     "max": 0, "failcnt": events.get("max", 0)}
    return out
