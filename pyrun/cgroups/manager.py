"""The cgroup manager: one interface over cgroup v1, v2 and hybrid hosts.

A :class:`Manager` holds the container's group path in each hierarchy it
uses, keyed by controller: a v1 controller name ("memory", "name=systemd",
…) or "" for the cgroup2 tree.  On a v2 host that is only "", on a v1 host
only controllers, and on a hybrid host both: like runc 1.1, the container
also joins the cgroup2 tree (mounted at ``<root>/unified``), which gives it
cgroup.kill, cgroup.events and any controller that only v2 offers there.

For each resource the manager uses the v1 controller when it is mounted,
else the cgroup2 tree (``v1`` / ``v2`` modules hold the file mappings).  A
requested resource that neither offers is a FailedPrecondition.
"""
import errno
import os
import _signal
import time

from pyrun.errdefs import FailedPrecondition, InvalidArgument, NotImplementedYet
from pyrun.linux import SyscallError
from pyrun.cgroups import fs, paths, v1, v2
from pyrun.cgroups.fs import Group

W = "linux.resources"


def _given(section):
    """True if a resources section asks for anything (runc treats zero
    values as unset)."""
    if section is None:
        return False
    if isinstance(section, tuple):
        return bool(section)
    return any(v not in (None, (), 0, False) for v in section.asdict().values())


class Manager:
    """The cgroups of one container.  Build it with :func:`new_manager`
    (or :meth:`from_state` in a later command).

    Attributes: ``mode`` ("v1", "v2", "hybrid"), ``root`` (the directory the
    hierarchies are mounted in), ``paths`` ({controller or "": path in that
    hierarchy}), ``path`` (the cgroup2 path if any, else the first),
    ``created`` ([(controller, path)] that create() made, in order).
    """

    def __init__(self, mode, root, group_paths, created=()):
        self.mode, self.root = mode, root
        self.paths = dict(group_paths)
        self.created = [tuple(c) for c in created]
        self.path = self.paths.get("", next(iter(self.paths.values()), ""))

    # -- persistence across runtime commands --------------------------------

    def describe(self):
        """What a later command (kill, delete, …) needs, as JSON-able data
        for the container's state; :meth:`from_state` takes it back."""
        return {"mode": self.mode, "root": self.root, "paths": self.paths,
                "created": [list(c) for c in self.created]}

    @classmethod
    def from_state(cls, state):
        return cls(state["mode"], state["root"], state["paths"], state["created"])

    def mount_sources(self):
        """{hierarchy mount point: the container's group path in it}, for
        the runtime's bind of the container's own groups at /sys/fs/cgroup
        (symlinks such as cpu -> cpu,cpuacct resolved)."""
        return {os.path.realpath(self.hierarchy_root(k)): p for k, p in self.paths.items()}

    # -- hierarchies ------------------------------------------------------

    def hierarchy_root(self, key):
        if self.mode == "v2":
            return self.root
        if key == "":
            return os.path.join(self.root, paths.UNIFIED)
        return os.path.join(self.root, paths.v1_dir_name(key))

    def group(self, key, path=None):
        return Group(self.hierarchy_root(key), self.paths[key] if path is None else path, key)

    def backend(self, controller):
        """("v1", Group) if the v1 ``controller`` is mounted, else ("v2",
        Group) of the cgroup2 tree if the container has one, else None."""
        if controller in self.paths:
            return "v1", self.group(controller)
        if "" in self.paths:
            return "v2", self.group("")
        return None

    def _need(self, controller, what):
        b = self.backend(controller)
        if b is None:
            raise FailedPrecondition(f"{what} needs the {controller} cgroup controller, which is "
                                     f"not mounted under {self.root}")
        return b

    # -- lifecycle --------------------------------------------------------

    def create(self):
        """Make the group's directory (and missing ancestors) in every
        hierarchy; records them in ``created``.  A new v1 cpuset group gets
        its parent's cpus/mems; a new cgroup2 ancestor passes on every
        controller it has (cgroup.subtree_control), as runc does.  Groups
        that exist already are joined, not recreated.  On failure,
        everything made so far is removed again."""
        try:
            for key, path in self.paths.items():
                groot = self.hierarchy_root(key)
                parts = [p for p in path.split("/") if p]
                for i in range(len(parts)):
                    cur = "/" + "/".join(parts[:i + 1])
                    if not fs.make_dir(groot, cur):
                        continue
                    self.created.append((key, cur))
                    if key == "cpuset":
                        v1.init_cpuset(self.group(key, os.path.dirname(cur)), self.group(key, cur))
                    if key == "" and cur != path:
                        self._enable_controllers(self.group(key, cur))
        except BaseException as e:
            try:
                self.destroy()
            except Exception as cleanup:
                e.add_note(f"and removing the groups made so far failed: {cleanup}")
            raise

    @staticmethod
    def _enable_controllers(g):
        available = g.read("cgroup.controllers").split()
        if not available:
            return
        try:
            g.write("cgroup.subtree_control", " ".join("+" + c for c in available))
        except (SyscallError, FailedPrecondition):
            # One refused controller must not block the others; a resource
            # that needed a missing one fails clearly in set().
            for c in available:
                try:
                    g.write("cgroup.subtree_control", "+" + c)
                except (SyscallError, FailedPrecondition):
                    pass

    def apply(self, pid):
        """Move process ``pid`` (and so its future children) into the group
        in every hierarchy (cgroup.procs)."""
        for key in self.paths:
            g = self.group(key)
            for attempt in range(5):
                try:
                    g.write("cgroup.procs", pid)
                    break
                except SyscallError as e:
                    # EINVAL: a task still in TASK_NEW (fork in progress)
                    # cannot move yet; runc retries the same way.
                    if e.errno != errno.EINVAL or attempt == 4:
                        raise
                    time.sleep(0.01 * (attempt + 1))

    def open_join(self):
        """What a new process needs to join the group by itself, without
        the global cgroup lock whose first write-locking after a quiet
        spell waits an RCU grace period (5-15 ms here): the v1 ``tasks``
        files, to which a single-threaded process writes "0" (moving only
        the current thread skips the lock), and the cgroup2 directory, for
        clone3's CLONE_INTO_CGROUP.  Returns ([(tasks path, fd)], directory
        fd or -1), all close-on-exec; the caller closes them.  Raises
        SyscallError naming the file."""
        tasks, dfd = [], -1
        try:
            for key in self.paths:
                full = fs.join(self.hierarchy_root(key), self.paths[key], "" if key == "" else "tasks")
                flags = os.O_CLOEXEC | (os.O_RDONLY | os.O_DIRECTORY if key == "" else
                                        os.O_WRONLY | os.O_NOFOLLOW)
                try:
                    fd = os.open(full, flags)
                except OSError as e:
                    raise SyscallError(e.errno, "open", full, full) from None
                if key == "":
                    dfd = fd
                else:
                    tasks.append((full, fd))
        except BaseException:
            for fd in [fd for _, fd in tasks] + ([dfd] if dfd >= 0 else []):
                os.close(fd)
            raise
        return tasks, dfd

    def set(self, res):
        """Write every limit in ``res`` (a Resources); absent (None, empty)
        parts leave their files alone, so an empty ``devices`` keeps the
        current device access (append devices.default_allowed() to get
        runc's deny-all-but-defaults).  Errors name the resource field or
        the cgroup file and value: FailedPrecondition when the host lacks
        the controller or file, NotImplementedYet for what the cgroup
        version cannot express, InvalidArgument for refused values,
        SyscallError (OSError) when the kernel refuses a write."""
        cpu = res.cpu
        if cpu is not None and (cpu.cpus or cpu.mems):
            kind, g = self._need("cpuset", f"{W}.cpu.cpus/mems")
            (v1 if kind == "v1" else v2).set_cpuset(g, cpu)
        if res.devices:
            kind, g = self._need("devices", f"{W}.devices")
            (v1 if kind == "v1" else v2).set_devices(g, res.devices)
        if _given(res.memory):
            kind, g = self._need("memory", f"{W}.memory")
            (v1 if kind == "v1" else v2).set_memory(g, res.memory)
        if cpu is not None and _given(cpu.replace(cpus=None, mems=None)):
            kind, g = self._need("cpu", f"{W}.cpu")
            (v1 if kind == "v1" else v2).set_cpu(g, cpu)
        if _given(res.pids):
            kind, g = self._need("pids", f"{W}.pids")
            (v1 if kind == "v1" else v2).set_pids(g, res.pids)
        if _given(res.block_io):
            kind, g = self._need("blkio", f"{W}.blockIO")
            (v1.set_blkio if kind == "v1" else v2.set_io)(g, res.block_io)
        if res.hugepage_limits:
            kind, g = self._need("hugetlb", f"{W}.hugepageLimits")
            (v1 if kind == "v1" else v2).set_hugetlb(g, res.hugepage_limits)
        if res.network is not None:
            self._set_network(res.network)
        if res.rdma:
            kind, g = self._need("rdma", f"{W}.rdma")
            (v1 if kind == "v1" else v2).set_rdma(g, res.rdma)
        if res.unified:
            if "" not in self.paths:
                raise InvalidArgument(f"{W}.unified: this host has no cgroup v2 tree "
                                      f"(cgroup layout {self.mode})")
            v2.set_unified(self.group(""), res.unified)

    def _set_network(self, n):
        for controller, given, setter in (("net_cls", n.class_id, v1.set_net_cls),
                                          ("net_prio", n.priorities, v1.set_net_prio)):
            if not given:
                continue
            if controller not in self.paths:
                raise FailedPrecondition(
                    f"{W}.network needs the cgroup v1 {controller} controller, which is not "
                    f"mounted under {self.root} (cgroup v2 has no equivalent)")
            setter(self.group(controller), n)

    # -- freezer ----------------------------------------------------------

    def freeze(self):
        """Freeze every task in the group and wait until the kernel says
        frozen (v1 freezer.state FROZEN; v2 cgroup.events "frozen 1")."""
        kind, g = self._need("freezer", "freeze")
        (v1 if kind == "v1" else v2).freeze(g)

    def thaw(self):
        kind, g = self._need("freezer", "thaw")
        (v1 if kind == "v1" else v2).thaw(g)

    def state(self):
        """"frozen" or "thawed" (v1 FREEZING counts as frozen)."""
        kind, g = self._need("freezer", "freezer state")
        return (v1 if kind == "v1" else v2).state(g)

    # -- processes --------------------------------------------------------

    def _procs_group(self):
        for key in ("", "freezer", "devices", "memory"):
            if key in self.paths:
                return self.group(key)
        return self.group(next(iter(self.paths)))

    def pids(self):
        """Every pid in the group and its descendant groups (the container
        may make child groups), like runc's ``ps``."""
        out = []
        top = self._procs_group().dir
        for dirpath, _, _ in os.walk(top):
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    out += [int(x) for x in f.read().split()]
            except FileNotFoundError:
                continue
        return sorted(set(out))

    def kill_all(self, sig=_signal.SIGKILL):
        """Send ``sig`` to every process in the group.  SIGKILL uses
        cgroup.kill when the cgroup2 tree has it (atomic, races no fork);
        otherwise the group is frozen while the signals go out, so that no
        new child escapes, then thawed (unless it was frozen before)."""
        if sig == _signal.SIGKILL and "" in self.paths and self.group("").exists("cgroup.kill"):
            self.group("").write("cgroup.kill", 1)
            return
        # A paused container stays paused: only thaw what we froze here.
        frozen = self.backend("freezer") is not None and self.state() == "thawed"
        if frozen:
            self.freeze()
        try:
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:
            if frozen:
                self.thaw()

    # -- OOM --------------------------------------------------------------

    def oom_kill_count(self):
        """How many processes the OOM killer has killed in the group."""
        kind, g = self._need("memory", "OOM kill count")
        return (v1 if kind == "v1" else v2).oom_kill_count(g)

    def oom_eventfd(self):
        """An eventfd (O_CLOEXEC) that becomes readable (8-byte counter) on
        each OOM in the group: cgroup v1's memory.oom_control notification
        through cgroup.event_control.  None on cgroup v2, which has no such
        registration: watch memory.events or use oom_kill_count()."""
        kind, g = self._need("memory", "OOM notification")
        if kind == "v2":
            return None
        efd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            ofd = os.open(os.path.join(g.dir, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                g.write("cgroup.event_control", f"{efd} {ofd}")
            finally:
                # The kernel keeps its own references once registered.
                os.close(ofd)
        except BaseException:
            os.close(efd)
            raise
        return efd

    # -- stats ------------------------------------------------------------

    def stats(self):
        """Usage counters in the shape of ``runc events --stats`` "data":
        {"cpu", "memory", "pids", "blkio", "hugetlb"}; a section whose
        controller is absent is empty.  Units: ns for CPU time, bytes."""
        out = {"cpu": {}, "memory": {}, "pids": {}, "blkio": {}, "hugetlb": {}}
        b = self.backend("cpuacct")
        if b and b[0] == "v1":
            out["cpu"] = v1.cpu_stats(self.group("cpu") if "cpu" in self.paths else None, b[1])
        elif b and b[1].exists("cpu.stat"):
            out["cpu"] = v2.cpu_stats(b[1])
        for controller, key, v1f, v2f, probe in (
                ("memory", "memory", v1.memory_stats, v2.memory_stats, "memory.current"),
                ("pids", "pids", v1.pids_stats, v2.pids_stats, "pids.current"),
                ("blkio", "blkio", v1.blkio_stats, v2.io_stats, "io.stat")):
            b = self.backend(controller)
            if b and b[0] == "v1":
                out[key] = v1f(b[1])
            elif b and b[1].exists(probe):
                out[key] = v2f(b[1])
        b = self.backend("hugetlb")
        if b:
            import re
            sizes = sorted({m.group(1) for m in map(re.compile(r"^hugetlb\.(\d+[KMG]B)\.").match,
                                                   os.listdir(b[1].dir)) if m})
            out["hugetlb"] = (v1 if b[0] == "v1" else v2).hugetlb_stats(b[1], sizes)
        return out

    # -- removal ----------------------------------------------------------

    def destroy(self):
        """Remove what create() made, deepest first: the container's own
        group with any child groups inside it, and the ancestors it made
        once they are empty (another container may share them).  Tasks must
        be gone; EBUSY is retried briefly.  Nothing else is touched."""
        errors = []
        for key, path in reversed(self.created):
            groot = self.hierarchy_root(key)
            try:
                if path == self.paths.get(key):
                    fs.remove_dir(groot, path)
                elif not any(e.is_dir() for e in os.scandir(fs.join(groot, path))):
                    fs.remove_dir(groot, path)
                else:
                    continue
            except FileNotFoundError:
                pass
            except OSError as e:
                errors.append(e)
                continue
            self.created.remove((key, path))
        if errors:
            raise errors[0]


def new_manager(cgroups_path, container_id, *, root=paths.DEFAULT_ROOT, mode=None, systemd=False,
                proc_cgroup="/proc/self/cgroup", mountinfo="/proc/self/mountinfo"):
    """A Manager for the OCI ``linux.cgroupsPath`` of container
    ``container_id``; nothing is created yet.

    ``cgroupsPath`` as in runc's cgroupfs driver (see pyrun.cgroups.paths):
    absolute from each hierarchy's root, relative to the caller's own group,
    empty = the container id.  ``mode`` forces "v1", "v2" or "hybrid"
    (default: detected from ``mountinfo``).  ``root``, ``proc_cgroup`` and
    ``mountinfo`` exist for tests on a fake tree.

    ``systemd=True`` (runc's --systemd-cgroup, path "slice:prefix:name"):
    InvalidArgument on a malformed path, FailedPrecondition when systemd is
    not running, NotImplementedYet otherwise.
    """
    if systemd:
        if cgroups_path and len(cgroups_path.split(":")) != 3:
            raise InvalidArgument(f"cgroupsPath {cgroups_path!r}: the systemd cgroup driver "
                                  f"expects \"slice:prefix:name\"")
        if not os.path.isdir("/run/systemd/system"):
            try:
                with open("/proc/1/comm") as f:
                    init = f.read().strip()
            except OSError:
                init = "unknown"
            raise FailedPrecondition(f"the systemd cgroup driver needs systemd as init, but PID 1 "
                                     f"is {init!r} (no /run/systemd/system); use the cgroupfs driver")
        raise NotImplementedYet("the systemd cgroup driver is not implemented; use the cgroupfs driver")
    if mode is None:
        mode = paths.detect(mountinfo, root)
    if mode not in ("v1", "v2", "hybrid"):
        raise InvalidArgument(f"cgroup mode {mode!r} is not one of v1, v2, hybrid")
    keys = []
    if mode != "v2":
        keys = [c for c in paths.V1_CONTROLLERS
                if os.path.isdir(os.path.join(root, paths.v1_dir_name(c)))]
    if mode != "v1":
        keys.append("")
    group_paths = {k: paths.container_path(cgroups_path, container_id, k, mode, proc_cgroup)
                   for k in keys}
    return Manager(mode, root, group_paths)
