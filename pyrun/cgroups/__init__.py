"""Cgroup managers for pyrun's OCI runtime (cgroupfs driver).

Typical use by the runtime (the order matters)::

    res = parse_resources(spec_linux.get("resources"))          # once, at load
    res = res.with_devices(devices.default_allowed(spec_device_paths))
    m = new_manager(spec_linux.get("cgroupsPath", ""), container_id)
    m.create()              # mkdir in every hierarchy
    state.cgroup = m.describe()
    m.apply(pid)            # the container process, before it execs (or it
                            # joins by itself through m.open_join())
    m.set(res)              # limits and device rules, still before exec
    ...
    m = Manager.from_state(state.cgroup)                        # later commands
    m.kill_all(signal.SIGKILL); m.destroy()                     # on delete

Modules: resources (the typed spec), paths (layout and cgroupsPath), fs (the
one write function), v1 / v2 (file mappings, conversions, stats), devices
(device rule semantics and the v2 BPF program), manager (Manager).
"""
from pyrun.cgroups import devices
from pyrun.cgroups.manager import Manager, new_manager
from pyrun.cgroups.paths import detect
from pyrun.cgroups.resources import (CPU, BlockIO, DeviceRule, HugepageLimit, Memory, Network,
                                     Pids, Resources, ThrottleDevice, WeightDevice,
                                     parse_resources)
from pyrun.cgroups.fs import write_file

__all__ = ["devices", "Manager", "new_manager", "detect", "parse_resources", "write_file", "Resources",
           "Memory", "CPU", "Pids", "BlockIO", "WeightDevice", "ThrottleDevice",
           "HugepageLimit", "DeviceRule", "Network"]
