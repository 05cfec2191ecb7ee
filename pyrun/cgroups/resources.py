"""Typed, frozen form of the OCI runtime-spec ``linux.resources`` object.

:func:`parse_resources` turns the raw JSON dict (config.json
``linux.resources``, or the body of ``runc update --resources``) into
:class:`Resources`.  It checks JSON types and ranges once, and names the field
path on error (``linux.resources.memory.limit: expected an integer, got
'1g'``).  Kernel-specific checks (is the file there, does the kernel accept
the value) happen later, in the managers.

Absent fields are ``None`` (or an empty tuple): the managers leave the
matching cgroup files alone.  Source: runtime-spec config-linux.md, "Control
groups"; the field-by-field meaning matches runc's specconv.
"""
from pyrun.record import Frozen

from pyrun.errdefs import InvalidArgument

INT64 = (-(1 << 63), (1 << 63) - 1)
UINT64 = (0, (1 << 64) - 1)
UINT32 = (0, (1 << 32) - 1)
UINT16 = (0, (1 << 16) - 1)


class Memory(Frozen):
    """Bytes, except ``swappiness`` (0-100).  ``limit``, ``swap`` of -1 mean
    unlimited.  ``swap`` is memory+swap, as in cgroup v1's memsw."""
    __slots__ = ("limit", "reservation", "swap", "kernel", "kernel_tcp", "swappiness", "disable_oom_killer", "use_hierarchy", "check_before_update")
    _defaults = {"limit": None, "reservation": None, "swap": None, "kernel": None, "kernel_tcp": None, "swappiness": None, "disable_oom_killer": None, "use_hierarchy": None, "check_before_update": None}


class CPU(Frozen):
    """``quota``/``period``/``burst`` in microseconds (CFS), ``shares`` as
    cgroup v1 cpu.shares, ``realtime_*`` in microseconds, ``cpus``/``mems`` in
    cpuset list syntax (``0-3,5``), ``idle`` 0 or 1."""
    __slots__ = ("shares", "quota", "burst", "period", "realtime_runtime", "realtime_period", "cpus", "mems", "idle")
    _defaults = {"shares": None, "quota": None, "burst": None, "period": None, "realtime_runtime": None, "realtime_period": None, "cpus": None, "mems": None, "idle": None}


class Pids(Frozen):
    """``limit`` < 0 means unlimited ("max"); 0 or None leaves pids.max
    alone (runc 1.1; runtime-spec 1.2.1 made ``limit`` optional)."""
    __slots__ = ("limit",)
    _defaults = {"limit": None}


class WeightDevice(Frozen):
    __slots__ = ("major", "minor", "weight", "leaf_weight")
    _defaults = {"weight": None, "leaf_weight": None}


class ThrottleDevice(Frozen):
    """``rate`` in bytes/s (bps) or operations/s (iops)."""
    __slots__ = ("major", "minor", "rate")


class BlockIO(Frozen):
    """``weight``/``leaf_weight`` 10-1000 (cgroup v1 blkio scale)."""
    __slots__ = ("weight", "leaf_weight", "weight_device", "throttle_read_bps_device", "throttle_write_bps_device", "throttle_read_iops_device", "throttle_write_iops_device")
    _defaults = {"weight": None, "leaf_weight": None, "weight_device": (), "throttle_read_bps_device": (), "throttle_write_bps_device": (), "throttle_read_iops_device": (), "throttle_write_iops_device": ()}


class HugepageLimit(Frozen):
    """``pagesize`` as the kernel names it in file names (``2MB``, ``1GB``);
    ``limit`` in bytes."""
    __slots__ = ("pagesize", "limit")


class DeviceRule(Frozen):
    """One ``linux.resources.devices`` entry.  ``type`` is ``a``, ``b`` or
    ``c``; ``major``/``minor`` None is the wildcard ``*``; ``access`` a
    non-empty subset of ``rwm``."""
    __slots__ = ("allow", "type", "major", "minor", "access")
    _defaults = {"type": "a", "major": None, "minor": None, "access": "rwm"}

    def cgroup_string(self):
        """The cgroup v1 devices.allow/deny line: ``c 1:3 rwm``."""
        def num(n):
            return "*" if n is None else str(n)
        return f"{self.type} {num(self.major)}:{num(self.minor)} {self.access}"


class Network(Frozen):
    """net_cls classid and net_prio (interface, priority) pairs."""
    __slots__ = ("class_id", "priorities")
    _defaults = {"class_id": None, "priorities": ()}


class Resources(Frozen):
    __slots__ = ("devices", "memory", "cpu", "pids", "block_io", "hugepage_limits", "network", "rdma", "unified")
    _defaults = {"devices": (), "memory": None, "cpu": None, "pids": None, "block_io": None, "hugepage_limits": (), "network": None, "rdma": (), "unified": ()}

    def with_devices(self, extra):
        """A copy with the ``extra`` DeviceRules appended (runc appends the
        default allowed devices after the spec's rules)."""
        return self.replace(devices=self.devices + tuple(extra))


def _int(raw, where, lo_hi):
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidArgument(f"{where}: expected an integer, got {raw!r}")
    lo, hi = lo_hi
    if not lo <= raw <= hi:
        raise InvalidArgument(f"{where}: {raw} is out of range [{lo}, {hi}]")
    return raw


def _bool(raw, where):
    if not isinstance(raw, bool):
        raise InvalidArgument(f"{where}: expected true or false, got {raw!r}")
    return raw


def _str(raw, where):
    if not isinstance(raw, str):
        raise InvalidArgument(f"{where}: expected a string, got {raw!r}")
    return raw


def _obj(raw, where):
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: expected an object, got {raw!r}")
    return raw


def _list(raw, where):
    if not isinstance(raw, list):
        raise InvalidArgument(f"{where}: expected an array, got {raw!r}")
    return raw


def _fields(raw, where, spec, required=()):
    """Convert the known fields of object ``raw`` with ``spec`` = {json name:
    (python name, converter(value, where))}; unknown names are an error so
    that a misspelt limit never goes unnoticed."""
    _obj(raw, where)
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise InvalidArgument(f"{where}: unknown field(s) {', '.join(unknown)}")
    for name in required:
        if raw.get(name) is None:
            raise InvalidArgument(f"{where}.{name}: required")
    out = {}
    for name, (attr, conv) in spec.items():
        if raw.get(name) is not None:
            out[attr] = conv(raw[name], f"{where}.{name}")
    return out


def _i(lo_hi):
    return lambda v, w: _int(v, w, lo_hi)


def _range(lo, hi):
    return lambda v, w: _int(v, w, (lo, hi))


def _is_cpuset_list(text):
    """``0-3,5``: comma-separated numbers and ranges (spaces allowed)."""
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            return False
    return True


def _cpuset(raw, where):
    _str(raw, where)
    if raw and not _is_cpuset_list(raw):
        raise InvalidArgument(f"{where}: {raw!r} is not a cpuset list such as '0-2,4'")
    return raw


def _weight(v, w):
    # 0 means "not set" in runc; otherwise the blkio range.
    _int(v, w, UINT16)
    if v and not 10 <= v <= 1000:
        raise InvalidArgument(f"{w}: {v} is out of range [10, 1000]")
    return v


def _memory(raw, where):
    return Memory(**_fields(raw, where, {
        "limit": ("limit", _i(INT64)),
        "reservation": ("reservation", _i(INT64)),
        "swap": ("swap", _i(INT64)),
        "kernel": ("kernel", _i(INT64)),
        "kernelTCP": ("kernel_tcp", _i(INT64)),
        "swappiness": ("swappiness", _range(0, 100)),
        "disableOOMKiller": ("disable_oom_killer", _bool),
        "useHierarchy": ("use_hierarchy", _bool),
        "checkBeforeUpdate": ("check_before_update", _bool),
    }))


def _cpu(raw, where):
    return CPU(**_fields(raw, where, {
        "shares": ("shares", _i(UINT64)),
        "quota": ("quota", _i(INT64)),
        "burst": ("burst", _i(UINT64)),
        "period": ("period", _i(UINT64)),
        "realtimeRuntime": ("realtime_runtime", _i(INT64)),
        "realtimePeriod": ("realtime_period", _i(UINT64)),
        "cpus": ("cpus", _cpuset),
        "mems": ("mems", _cpuset),
        "idle": ("idle", _range(0, 1)),
    }))


def _pids(raw, where):
    return Pids(**_fields(raw, where, {"limit": ("limit", _i(INT64))}))


def _array(conv):
    def parse(raw, where):
        return tuple(conv(item, f"{where}[{i}]") for i, item in enumerate(_list(raw, where)))
    return parse


def _weight_device(raw, where):
    return WeightDevice(**_fields(raw, where, {
        "major": ("major", _i(INT64)),
        "minor": ("minor", _i(INT64)),
        "weight": ("weight", _weight),
        "leafWeight": ("leaf_weight", _weight),
    }, required=("major", "minor")))


def _throttle_device(raw, where):
    return ThrottleDevice(**_fields(raw, where, {
        "major": ("major", _i(INT64)),
        "minor": ("minor", _i(INT64)),
        "rate": ("rate", _i(UINT64)),
    }, required=("major", "minor", "rate")))


def _block_io(raw, where):
    return BlockIO(**_fields(raw, where, {
        "weight": ("weight", _weight),
        "leafWeight": ("leaf_weight", _weight),
        "weightDevice": ("weight_device", _array(_weight_device)),
        "throttleReadBpsDevice": ("throttle_read_bps_device", _array(_throttle_device)),
        "throttleWriteBpsDevice": ("throttle_write_bps_device", _array(_throttle_device)),
        "throttleReadIOPSDevice": ("throttle_read_iops_device", _array(_throttle_device)),
        "throttleWriteIOPSDevice": ("throttle_write_iops_device", _array(_throttle_device)),
    }))


def _is_pagesize(text):
    """``2MB``, ``1GB``, ``64KB``: as the kernel names hugetlb files."""
    return (len(text) >= 3 and text[-2:] in ("KB", "MB", "GB") and text[:-2].isdigit()
            and text[0] != "0")


def _pagesize(raw, where):
    if not _is_pagesize(_str(raw, where)):
        raise InvalidArgument(f"{where}: {raw!r} is not a page size such as '2MB' or '1GB'")
    return raw


def _hugepage_limit(raw, where):
    return HugepageLimit(**_fields(raw, where, {
        "pageSize": ("pagesize", _pagesize),
        "limit": ("limit", _i(UINT64)),
    }, required=("pageSize", "limit")))


def _device_type(raw, where):
    if _str(raw, where) not in ("a", "b", "c"):
        raise InvalidArgument(f"{where}: device type {raw!r} is not one of 'a', 'b', 'c'")
    return raw


def _access(raw, where):
    # runc refuses an empty access string; the spec lists r, w, m.
    _str(raw, where)
    if not raw or set(raw) - set("rwm"):
        raise InvalidArgument(f"{where}: access {raw!r} must be a non-empty combination of 'r', 'w', 'm'")
    return "".join(c for c in "rwm" if c in raw)


def _device(raw, where):
    return DeviceRule(**_fields(raw, where, {
        "allow": ("allow", _bool),
        "type": ("type", _device_type),
        "major": ("major", _i(INT64)),
        "minor": ("minor", _i(INT64)),
        "access": ("access", _access),
    }, required=("allow", "access")))


def _priority(raw, where):
    f = _fields(raw, where, {"name": ("name", _str), "priority": ("priority", _i(UINT32))},
                required=("name", "priority"))
    return (f["name"], f["priority"])


def _network(raw, where):
    return Network(**_fields(raw, where, {
        "classID": ("class_id", _i(UINT32)),
        "priorities": ("priorities", _array(_priority)),
    }))


def _rdma(raw, where):
    out = []
    for name, limits in sorted(_obj(raw, where).items()):
        f = _fields(limits, f"{where}.{name}", {
            "hcaHandles": ("hca_handles", _i(UINT32)),
            "hcaObjects": ("hca_objects", _i(UINT32)),
        })
        out.append((name, f.get("hca_handles"), f.get("hca_objects")))
    return tuple(out)


def _unified(raw, where):
    out = []
    for key, value in sorted(_obj(raw, where).items()):
        # A key is a file name in the group's directory: never a path.
        if "/" in key or key in ("", ".", ".."):
            raise InvalidArgument(f"{where}: key {key!r} is not a cgroup file name")
        out.append((key, _str(value, f"{where}.{key}")))
    return tuple(out)


def parse_resources(raw, where="linux.resources"):
    """Parse the OCI ``linux.resources`` object into :class:`Resources`.

    ``raw`` is the decoded JSON object (None or {} gives an empty
    Resources).  Raises InvalidArgument naming the field path
    (``{where}.memory.limit``) for an unknown field, a wrong JSON type, or a
    value out of its spec range.
    """
    if raw is None:
        return Resources()
    return Resources(**_fields(raw, where, {
        "devices": ("devices", _array(_device)),
        "memory": ("memory", _memory),
        "cpu": ("cpu", _cpu),
        "pids": ("pids", _pids),
        "blockIO": ("block_io", _block_io),
        "hugepageLimits": ("hugepage_limits", _array(_hugepage_limit)),
        "network": ("network", _network),
        "rdma": ("rdma", _rdma),
        "unified": ("unified", _unified),
    }))
