"""``update``: change the cgroup limits of a live container (runc's
``update``).

The update is a ``linux.resources`` object (runtime spec config-linux.md
"Control groups"), from ``--resources FILE|-`` or built from runc's flags
by :func:`resources_from_flags`.  It is merged into the container's
current resources: as in runc, a value of 0 or "" means "leave as is"
(except ``swappiness``, ``idle`` and ``burst``, where 0 is a value), an
absent field keeps its value, and ``devices`` are not updatable and are
ignored.  Only the sections the update names are written (through
Manager.set, whole sections, so cpu.max gets both quota and period and
the v1 memory/memsw order is right), and the merged resources are saved
in the container's state for the next update.
"""
import os

from pyrun.errdefs import InvalidArgument, NotImplementedYet
from pyrun.runtime.state import Status, require

# JSON section -> Resources attribute, for the sections update applies.
_SECTIONS = {"memory": "memory", "cpu": "cpu", "pids": "pids", "blockIO": "block_io",
             "hugepageLimits": "hugepage_limits", "network": "network", "rdma": "rdma",
             "unified": "unified"}
_ZERO_IS_A_VALUE = {"swappiness", "idle", "burst"}

_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def ram_in_bytes(s):
    """A memory size as runc's flags take it (docker/go-units
    RAMInBytes): a number, optionally with a fraction, then an optional
    k/m/g/t/p (binary multiples, any case), optional ``i`` and ``b``:
    ``100m`` = 104857600, ``1.5G``, ``512kb``, ``4096``.  Raises
    InvalidArgument."""
    text = s.strip().lower()
    if text.endswith("b"):
        text = text[:-1]
    if text.endswith("i"):
        text = text[:-1]
    scale = _UNITS.get(text[-1:], 1)
    number = text[:-1].rstrip() if scale > 1 else text
    if not number.replace(".", "", 1).isdigit():
        raise InvalidArgument(f"invalid size: {s!r}")
    return int(float(number) * scale)


def _flag_int(name, value, unsigned):
    try:
        n = int(value, 10)
    except ValueError:
        raise InvalidArgument(f"invalid value for --{name}: {value!r} is not an integer") from None
    if unsigned and n < 0:
        raise InvalidArgument(f"invalid value for --{name}: {value!r} must not be negative")
    return n


def resources_from_flags(flags):
    """runc update's flags -> an update in ``linux.resources`` shape.
    ``flags``: {flag name without dashes: string value} for the flags
    given.  Raises InvalidArgument naming the flag, NotImplementedYet for
    the Intel RDT schemas."""
    for name in ("l3-cache-schema", "mem-bw-schema"):
        if flags.get(name):
            raise NotImplementedYet(f"--{name}: Intel RDT is not supported by pyrun")
    out = {}

    def put(section, key, value):
        out.setdefault(section, {})[key] = value

    if flags.get("blkio-weight") is not None:
        put("blockIO", "weight", _flag_int("blkio-weight", flags["blkio-weight"], True))
    for name, key in (("cpuset-cpus", "cpus"), ("cpuset-mems", "mems")):
        if flags.get(name):
            put("cpu", key, flags[name])
    for name, key, unsigned in (("cpu-period", "period", True), ("cpu-rt-period", "realtimePeriod", True),
                                ("cpu-share", "shares", True), ("cpu-quota", "quota", False),
                                ("cpu-rt-runtime", "realtimeRuntime", False)):
        if flags.get(name):
            put("cpu", key, _flag_int(name, flags[name], unsigned))
    for name, key in (("memory", "limit"), ("memory-swap", "swap"), ("kernel-memory", "kernel"),
                      ("kernel-memory-tcp", "kernelTCP"), ("memory-reservation", "reservation")):
        value = flags.get(name)
        if value:
            try:
                put("memory", key, -1 if value.strip() == "-1" else ram_in_bytes(value))
            except InvalidArgument as e:
                raise InvalidArgument(f"invalid value for --{name}: {e}") from None
    if flags.get("pids-limit") is not None:
        put("pids", "limit", _flag_int("pids-limit", flags["pids-limit"], False))
    return out


def _drop_unset(value, key=None):
    """The update without the 0 / "" values that mean "unchanged"."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = _drop_unset(v, k)
            if v is not None:
                out[k] = v
        return out
    if key not in _ZERO_IS_A_VALUE and (value == "" or (value == 0 and not isinstance(value, bool))):
        return None
    return value


def _merge(old, new):
    out = dict(old)
    for k, v in new.items():
        out[k] = _merge(old[k], v) if isinstance(v, dict) and isinstance(old.get(k), dict) else v
    return out


def _sections(res, names):
    from pyrun.cgroups import Resources
    return Resources(**{_SECTIONS[n]: getattr(res, _SECTIONS[n]) for n in names
                        if getattr(res, _SECTIONS[n]) is not None})


def update(store, cid, resources):
    """Apply the ``linux.resources``-shaped dict ``resources`` to container
    ``cid`` and save the merged resources.  Returns the merged resources
    (dict).  Raises NotFound, FailedPrecondition (stopped, or no cgroups),
    InvalidArgument naming the bad field, or the cgroup write error
    (SyscallError names file and value); on a failed write the sections
    are written back with their old values (best effort) and nothing is
    saved."""
    from pyrun.cgroups import parse_resources
    from pyrun.runtime.cgroup import manager_from_state

    if not isinstance(resources, dict):
        raise InvalidArgument(f"update: the resources must be a JSON object, got {resources!r}")
    lock = store.lock(cid)
    try:
        st = store.load(cid)
        require(st, "update", st.status in (Status.CREATED, Status.RUNNING, Status.PAUSED))
        manager = manager_from_state(st, "update").manager
        change = _drop_unset({k: v for k, v in resources.items() if k != "devices"})
        parse_resources(change, "update")           # names the update's own bad field
        linux = st.config.setdefault("linux", {})
        old_raw = linux.get("resources") or {}
        merged = _merge(old_raw, change)
        new = parse_resources(merged)
        names = [n for n in change if n in _SECTIONS]
        try:
            manager.set(_sections(new, names))
        except BaseException as e:
            try:
                manager.set(_sections(parse_resources(old_raw), names))
            except Exception as undo:
                e.add_note(f"and writing back the old values failed: {undo}")
            raise
        linux["resources"] = merged
        store.save(st)
        return merged
    finally:
        os.close(lock)
