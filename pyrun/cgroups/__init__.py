"""Cgroup managers for pyrun's OCI runtime (cgroupfs driver).

Typical use by the runtime (the order matters)::

    res = parse_resources(spec["linux"].get("resources"))       # once, at load
    m = new_manager(spec["linux"].get("cgroupsPath", ""), container_id)
    m.create()          # mkdir in every hierarchy
    m.apply(pid)        # before the container process execs
    m.set(res)          # limits; then start the process
    state["cgroup"] = m.to_state()
    ...
    m = Manager.from_state(state["cgroup"])
    m.kill_all(signal.SIGKILL); m.destroy()                     # on delete

Modules: resources (the typed spec), paths (layout and cgroupsPath), fs (the
one write function), v1 / v2 (file mappings, conversions, stats), devices
(device rule semantics and the v2 BPF program), manager (Manager).
"""
from pyrun.cgroups.manager import Manager, new_manager
from pyrun.cgroups.paths import detect
from pyrun.cgroups.resources import (CPU, BlockIO, DeviceRule, HugepageLimit, Memory, Network,
                                     Pids, Resources, ThrottleDevice, WeightDevice,
                                     parse_resources)
from pyrun.cgroups.fs import write_file

__all__ = ["Manager", "new_manager", "detect", "parse_resources", "write_file", "Resources",
           "Memory", "CPU", "Pids", "BlockIO", "WeightDevice", "ThrottleDevice",
           "HugepageLimit", "DeviceRule", "Network"]
