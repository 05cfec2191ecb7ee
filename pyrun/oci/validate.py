"""Semantic checks of a parsed :class:`~pyrun.oci.spec.Spec`, before any
work is done (runc: ``libcontainer/configs/validate``).

:func:`validate` raises InvalidArgument naming the field, or
NotImplementedYet for a valid request pyrun cannot honour yet: pyrun never
skips a field silently.
"""
import os

from pyrun.errdefs import InvalidArgument, NotImplementedYet
from pyrun.oci.spec import SUPPORTED_VERSIONS

# Files under /proc a mount may cover (runc's checkProcMount: what lxcfs
# and friends provide).
PROC_MOUNTS_ALLOWED = (
    "/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
    "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
)

PROPAGATIONS = ("shared", "slave", "private", "unbindable",
                "rshared", "rslave", "rprivate", "runbindable")

# Sysctls that belong to a namespace, and which one (runc's list).
_IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")


def _sysctl_namespace(key):
    if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
        return "ipc"
    if key.startswith("net."):
        return "network"
    if key in ("kernel.hostname", "kernel.domainname"):
        return "uts"
    return None


def _apparmor_enabled():
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def validate(spec, need_process=True):
    """Check ``spec`` as a whole.  ``need_process``: create/run need one."""
    if not spec.oci_version.startswith(SUPPORTED_VERSIONS):
        raise InvalidArgument(
            f"ociVersion: {spec.oci_version!r} is not supported "
            f"(supported: {', '.join(v + 'x' for v in SUPPORTED_VERSIONS)})")
    linux = spec.linux
    kinds = [ns.type for ns in linux.namespaces]
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise InvalidArgument(f"linux.namespaces: {kind!r} is given more than once")
    has = set(kinds)
    user = linux.namespace("user")
    if (linux.uid_mappings or linux.gid_mappings) and user is None:
        raise InvalidArgument("linux.uidMappings: id mappings need a user namespace")
    if user is not None and not user.path and not (linux.uid_mappings and linux.gid_mappings):
        raise InvalidArgument("linux.namespaces: a new user namespace needs uidMappings and gidMappings")
    for ns in linux.namespaces:
        if ns.path and not os.path.isabs(ns.path):
            raise InvalidArgument(f"linux.namespaces: {ns.type} path {ns.path!r} is not absolute")
    if spec.hostname and "uts" not in has:
        raise InvalidArgument("hostname: setting it needs a new uts namespace")
    if spec.domainname and "uts" not in has:
        raise InvalidArgument("domainname: setting it needs a new uts namespace")
    if "mount" not in has:
        # Everything then happens in the caller's mount namespace: refuse
        # what would change the caller's own mounts.
        if spec.root.readonly:
            raise InvalidArgument("root.readonly: needs a mount namespace (it would remount "
                                  "the host's filesystem)")
        if linux.rootfs_propagation:
            raise InvalidArgument("linux.rootfsPropagation: needs a mount namespace")
    if linux.rootfs_propagation and linux.rootfs_propagation not in PROPAGATIONS:
        raise InvalidArgument(f"linux.rootfsPropagation: unknown value {linux.rootfs_propagation!r}")
    for key, _ in linux.sysctl:
        ns = _sysctl_namespace(key)
        if ns is None:
            raise InvalidArgument(f"linux.sysctl: {key!r} is not in a separate kernel namespace")
        if ns not in has:
            raise InvalidArgument(f"linux.sysctl: {key!r} needs a new {ns} namespace")
        if ns == "network" and linux.namespace("network").path:
            raise InvalidArgument(f"linux.sysctl: {key!r} would change a joined network namespace")
    for field, paths in (("linux.maskedPaths", linux.masked_paths),
                         ("linux.readonlyPaths", linux.readonly_paths)):
        for p in paths:
            if not p.startswith("/"):
                raise InvalidArgument(f"{field}: {p!r} is not absolute")
    for i, d in enumerate(linux.devices):
        if not d.path.startswith("/"):
            raise InvalidArgument(f"linux.devices[{i}].path: {d.path!r} is not absolute")
        if d.type != "p" and not (0 <= d.major < 4096 and 0 <= d.minor < (1 << 20)):
            raise InvalidArgument(f"linux.devices[{i}]: device number {d.major}:{d.minor} is out of range")
    if linux.time_offsets:
        raise NotImplementedYet("linux.timeOffsets: not supported yet")
    if linux.intel_rdt is not None:
        raise NotImplementedYet("linux.intelRdt: not supported by pyrun")
    for i, m in enumerate(spec.mounts):
        dest = os.path.normpath("/" + m.destination.lstrip("/"))
        if dest.startswith("/proc/") and dest not in PROC_MOUNTS_ALLOWED:
            raise InvalidArgument(f"mounts[{i}].destination: {m.destination!r} is inside /proc, "
                                  "where only a few files may be covered (as runc rules)")
        if dest == "/proc" and m.type not in ("proc", ""):
            raise InvalidArgument(f"mounts[{i}]: /proc must be a proc mount, not {m.type!r}")
        if m.type in ("bind", "rbind") or "bind" in m.options or "rbind" in m.options:
            if not m.source:
                raise InvalidArgument(f"mounts[{i}]: a bind mount needs a source")
    if need_process:
        p = spec.process
        if p is None:
            raise InvalidArgument("process: required to create a container")
        if not p.args:
            raise InvalidArgument("process.args: must name at least the program to run")
        if not p.cwd.startswith("/"):
            raise InvalidArgument(f"process.cwd: {p.cwd!r} is not absolute")
        for i, e in enumerate(p.env):
            if "=" not in e:
                raise InvalidArgument(f"process.env[{i}]: {e!r} is not KEY=VALUE")
        if p.apparmor_profile and not _apparmor_enabled():
            raise InvalidArgument("process.apparmorProfile: AppArmor is not enabled on this host")
