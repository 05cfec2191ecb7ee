"""Turn a parsed spec into the child stage's list of steps.

This is where the order of container creation is decided: the same order
runc uses (libcontainer ``nsexec``, ``prepareRootfs``,
``linux_standard_init``).  The steps run in C after clone
(native/container.c); this module only describes them, so tests can check
the exact flags and paths without creating anything.

Each :class:`Op` carries a ``what``: a readable description used in errors
("mount proc on /proc (MS_NOSUID|MS_NODEV|MS_NOEXEC)") and in the trace.
"""
import _thread
import fcntl
import os

from pyrun import _native
from pyrun import linux as L
from pyrun.errdefs import InvalidArgument, NotImplementedYet
from pyrun.mount import parse_options
from pyrun.oci.spec import CAP_NUMBERS
from pyrun.record import Record

lib = _native.lib

NS_FLAGS = {
    "pid": L.CLONE_NEWPID, "network": L.CLONE_NEWNET, "mount": L.CLONE_NEWNS,
    "ipc": L.CLONE_NEWIPC, "uts": L.CLONE_NEWUTS, "user": L.CLONE_NEWUSER,
    "cgroup": L.CLONE_NEWCGROUP, "time": L.CLONE_NEWTIME,
}
# Join order for namespace paths: user first (it grants the rights to join
# the others), mount last (it changes how later paths resolve).
_JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount")

NS_GET_NSTYPE = 0xB703  # ioctl_ns(2)

_PROPAGATION = {
    "shared": L.MS_SHARED, "rshared": L.MS_SHARED | L.MS_REC,
    "slave": L.MS_SLAVE, "rslave": L.MS_SLAVE | L.MS_REC,
    "private": L.MS_PRIVATE, "rprivate": L.MS_PRIVATE | L.MS_REC,
    "unbindable": L.MS_UNBINDABLE, "runbindable": L.MS_UNBINDABLE | L.MS_REC,
}
# Recursive mount attributes (mount_setattr(2) MOUNT_ATTR_*): option ->
# (set, clear).
_RECURSIVE = {
    "rro": (0x1, 0), "rrw": (0, 0x1), "rnosuid": (0x2, 0), "rsuid": (0, 0x2),
    "rnodev": (0x4, 0), "rdev": (0, 0x4), "rnoexec": (0x8, 0), "rexec": (0, 0x8),
    "rnoatime": (0x10, 0x70), "rstrictatime": (0x20, 0x70), "rrelatime": (0, 0x70),
    "rnosymfollow": (0x200000, 0), "rsymfollow": (0, 0x200000),
}
_UNSUPPORTED_OPTIONS = ("idmap", "ridmap")

DEFAULT_DEVICES = (
    # path, major, minor (all char devices, 0666, root:root), as runc.
    ("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7),
    ("/dev/random", 1, 8), ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0),
)
_DEV_TYPES = {"c": 0o020000, "u": 0o020000, "b": 0o060000, "p": 0o010000}

SYNC_IDMAP = 1      # parent: write uid_map/gid_map
SYNC_HOOKS = 3      # parent: run prestart/createRuntime hooks, send state


class Op(Record):
    """One step of the child stage; the fields mirror ``struct pr_op``
    (native/pyrun.h), whose meaning depends on ``kind``."""
    __slots__ = ("kind", "what", "phase", "fd", "flags", "flags2", "flags3", "n1", "n2", "n3",
                 "s1", "s2", "s3", "s4", "argv", "envp", "ids", "caps")
    _defaults = {"phase": "", "fd": -1, "flags": 0, "flags2": 0, "flags3": 0, "n1": 0, "n2": 0,
                 "n3": 0, "s1": None, "s2": None, "s3": None, "s4": None, "argv": None,
                 "envp": None, "ids": None, "caps": None}


class Plan(Record):
    """The steps, the clone flags of the first stage, the namespace fds
    the parent opened (kind -> fd), the sync points (SYNC_*), and the
    cgroup2 directory fd the first stage is born in (-1: none)."""
    __slots__ = ("ops", "clone_flags", "ns_fds", "syncs", "cgroup_fd")
    _defaults = {"ops": list, "clone_flags": 0, "ns_fds": dict, "syncs": list, "cgroup_fd": -1}

    def add(self, kind, what, phase, **kw):
        op = Op(kind, what, phase, **kw)
        self.ops.append(op)
        return op


class Inputs(Record):
    """What the plan needs besides the spec.  ``cgroup_paths``: hierarchy
    mount point -> the container's group in it (for the cgroup mount);
    ``cgroup_join``: what the init needs to join its groups
    (Manager.open_join: v1 ``tasks`` files, cgroup2 directory fd);
    ``fifo_fd`` None: no exec fifo, the init
    goes on to its execve; ``pdeathsig``: a signal the init gets when the
    thread that spawned it ends (prctl PR_SET_PDEATHSIG; 0: none);
    ``make_cwd``: create a missing process.cwd in the rootfs, as runc
    does (the sandbox, whose rootfs is the caller's, does not)."""
    __slots__ = ("bundle", "rootfs", "fifo_fd", "console_fd", "preserve_fds", "no_pivot",
                 "no_new_keyring", "container_id", "cgroup_paths", "cgroup_join", "stdio",
                 "pdeathsig", "make_cwd")
    _defaults = {"console_fd": -1, "preserve_fds": 0, "no_pivot": False, "no_new_keyring": False,
                 "container_id": "", "cgroup_paths": dict, "cgroup_join": ((), -1), "stdio": None,
                 "pdeathsig": 0, "make_cwd": True}


def check_preserve_fds(n):
    """runc's --preserve-fds: 0 to 4096 fds after stdio, each open.
    Raises InvalidArgument naming the first that is not."""
    if not 0 <= n <= 4096:
        raise InvalidArgument(f"--preserve-fds {n}: must be between 0 and 4096")
    for fd in range(3, 3 + n):
        try:
            os.fstat(fd)
        except OSError:
            raise InvalidArgument(f"--preserve-fds {n}: fd {fd} is not open") from None


def high_fd(fd, low):
    """Move ``fd`` to a number >= ``low`` (close-on-exec), so that it cannot
    collide with the fds the container keeps (0-2 and --preserve-fds)."""
    if fd >= low:
        return fd
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
    os.close(fd)
    return new


def high_join(join, low, opened):
    """Manager.open_join's ([(path, fd)], fd) with every fd at a number
    >= ``low`` (a close-on-exec dup where needed).  Every fd, given or
    made, is appended to ``opened``, which the caller closes."""
    tasks, dfd = join
    opened.extend(fd for _, fd in tasks)
    if dfd >= 0:
        opened.append(dfd)

    def up(fd):
        if 0 <= fd < low:
            fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
            opened.append(fd)
        return fd
    return [(path, up(fd)) for path, fd in tasks], up(dfd)


def move_stdio(stdio, low, opened):
    """Duplicate the caller's (stdin, stdout, stderr) fds above ``low`` for
    the child's PR_OP_STDIO (None or -1 in a slot stays -1: keep ours);
    each new fd is appended to ``opened`` for the caller to close."""
    moved = []
    for fd in stdio:
        if fd is None or fd < 0:
            moved.append(-1)
        else:
            moved.append(high_fd(os.dup(fd), low))
            opened.append(moved[-1])
    return tuple(moved)


def console_fd_for(console_socket, console_fd, low):
    """The fd the child stage sends the pty master on, moved to >= ``low``:
    a new connection to the unix socket at ``console_socket`` (runc's
    --console-socket), else a dup of an already connected ``console_fd``,
    else None.  Raises InvalidArgument naming the socket."""
    if console_socket is not None:
        import _socket
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            s.connect(console_socket)
        except OSError as e:
            s.close()
            raise InvalidArgument(f"--console-socket {console_socket}: {e.strerror}") from None
        return high_fd(s.detach(), low)
    if console_fd is not None:
        return high_fd(os.dup(console_fd), low)
    return None


_own = (None, -1)
_own_lock = _thread.allocate_lock()  # (threading costs the CLI 8 ms of imports)


def _own_pidfd():
    """A pidfd of this process, opened once (and again after a fork)."""
    global _own
    with _own_lock:
        pid = os.getpid()
        if _own[0] != pid:
            _own = (pid, os.pidfd_open(pid))
        return _own[1]


def _cap_mask(names):
    mask = 0
    for n in names:
        mask |= 1 << CAP_NUMBERS[n]
    return mask


def _last_cap():
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


def _inside(path):
    # Paths in the rootfs are given relative to it; RESOLVE_IN_ROOT keeps
    # them there whatever they contain.
    return "/" + path.lstrip("/") if path else "/"


def _cgroup_hierarchies():
    """v1 hierarchies and the unified mount from /proc/self/mountinfo:
    [(mount point, fstype, super options)]."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            mp = left.split()[4]
            # Only the host's hierarchies: a container without a mount
            # namespace may have cgroup mounts under its rootfs right now.
            if fields and fields[0] in ("cgroup", "cgroup2") and (
                    mp == "/sys/fs/cgroup" or mp.startswith("/sys/fs/cgroup/")):
                out.append((mp, fields[0], fields[2] if len(fields) > 2 else ""))
    return out


def _own_cgroups(pid="self"):
    """hierarchy name (controllers, or '' for v2) -> cgroup path of pid."""
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            out[ctrls] = path
    return out


def _plan_cgroup_mount(plan, m, flags, inp, cgroupns):
    """runc's ``cgroup`` mount on v1/hybrid: a tmpfs with one directory per
    hierarchy, each the container's own group (a fresh cgroup mount inside
    a cgroup namespace, a bind of the host's group otherwise)."""
    dest = m.destination
    ro = flags & L.MS_RDONLY
    base = flags & ~L.MS_RDONLY & ~(L.MS_BIND | L.MS_REC)
    hier = _cgroup_hierarchies()
    if any(t == "cgroup2" and mp == "/sys/fs/cgroup" for mp, t, _ in hier):
        # Pure v2: one cgroup2 mount (needs a cgroup namespace or shows the
        # host's tree from its root, as runc's does).
        plan.add(lib.PR_OP_MOUNT, f"mount cgroup2 on {dest}", "rootfs",
                 s1="cgroup", s2=_inside(dest), s3="cgroup2", flags=flags)
        return
    plan.add(lib.PR_OP_MOUNT, f"mount tmpfs on {dest} (cgroup)", "rootfs",
             s1="tmpfs", s2=_inside(dest), s3="tmpfs", flags=base, s4="mode=755")
    own = inp.cgroup_paths or {}
    mine = _own_cgroups()
    for mp, fstype, opts in hier:
        name = os.path.basename(mp)
        target = _inside(os.path.join(dest, name))
        if fstype == "cgroup2":
            data, key = None, ""
        else:
            data = ",".join(o for o in opts.split(",") if o not in ("rw", "ro") and not o.startswith("xattr"))
            key = ",".join(sorted(o for o in data.split(",")))
        if cgroupns:
            plan.add(lib.PR_OP_MOUNT, f"mount {fstype} {data or ''} on {target}", "rootfs",
                     s1="cgroup", s2=target, s3=fstype, flags=base | (ro and L.MS_RDONLY), s4=data)
            continue
        group = own.get(mp)
        if group is None:
            for ctrls, path in mine.items():
                if ",".join(sorted(ctrls.split(","))) == key or (fstype == "cgroup2" and ctrls == ""):
                    group = path
                    break
        src = mp + (group or "/")
        plan.add(lib.PR_OP_MOUNT, f"bind {src} on {target} (cgroup)", "rootfs",
                 s1=src, s2=target, flags=L.MS_BIND | L.MS_REC, flags2=base | (ro and L.MS_RDONLY),
                 n1=lib.PR_MNT_BIND_SOURCE)
    for mp, fstype, opts in hier:
        name = os.path.basename(mp)
        if "," in name:
            # cpu,cpuacct -> cpu and cpuacct links, as on the host.
            for part in name.split(","):
                plan.add(lib.PR_OP_SYMLINK, f"symlink {dest}/{part} -> {name}", "rootfs",
                         s1=name, s2=_inside(os.path.join(dest, part)))
    if ro:
        plan.add(lib.PR_OP_MOUNT, f"remount {dest} read-only", "rootfs",
                 s2=_inside(dest), flags=L.MS_REMOUNT | L.MS_RDONLY | base)


def _plan_mount(plan, i, m, inp, cgroupns):
    for opt in m.options:
        if opt in _UNSUPPORTED_OPTIONS:
            raise NotImplementedYet(f"mounts[{i}].options: {opt!r} is not supported yet")
    props = 0
    rec_set = rec_clr = 0
    plain = []
    copyup = 0
    for opt in m.options:
        if opt == "tmpcopyup":
            # runc's extension (podman's --tmpfs and --read-only use it).
            if m.type != "tmpfs":
                raise InvalidArgument(f"mounts[{i}].options: 'tmpcopyup' needs type tmpfs, "
                                      f"not {m.type!r}")
            copyup = lib.PR_MNT_COPYUP
        elif opt in _PROPAGATION:
            props |= _PROPAGATION[opt]
        elif opt in _RECURSIVE:
            s, c = _RECURSIVE[opt]
            rec_set, rec_clr = (rec_set | s) & ~c, (rec_clr | c) & ~s
        else:
            plain.append(opt)
    flags, data = parse_options(plain)
    dest = _inside(m.destination)
    is_bind = m.type in ("bind", "rbind") or flags & L.MS_BIND
    if m.type == "cgroup":
        _plan_cgroup_mount(plan, m, flags, inp, cgroupns)
        return
    if is_bind:
        src = m.source if os.path.isabs(m.source) else os.path.join(inp.bundle, m.source)
        if not os.path.exists(src):
            raise InvalidArgument(f"mounts[{i}]: bind source {m.source!r} does not exist")
        first = L.MS_BIND | (flags & L.MS_REC) | (L.MS_REC if m.type == "rbind" else 0)
        rest = flags & ~(L.MS_BIND | L.MS_REC | L.MS_REMOUNT)
        what = f"bind {src} on {m.destination} ({L.flag_names(first | rest, L.MS_FLAGS)})"
        plan.add(lib.PR_OP_MOUNT, what, "rootfs", s1=src, s2=dest, flags=first,
                 flags2=rest, flags3=props, n1=lib.PR_MNT_BIND_SOURCE, n2=rec_set, n3=rec_clr)
        return
    if data and len(data) > 4095:
        raise InvalidArgument(f"mounts[{i}].options: data longer than a page")
    what = f"mount {m.type or m.source} on {m.destination} ({L.flag_names(flags, L.MS_FLAGS)}{', ' + data if data else ''})"
    no_link = lib.PR_MNT_NO_SYMLINK if m.type in ("proc", "sysfs") else 0
    plan.add(lib.PR_OP_MOUNT, what + (", copy up" if copyup else ""), "rootfs",
             s1=m.source or m.type, s2=dest, s3=m.type or None, s4=data or None, flags=flags,
             flags3=props, n1=copyup | no_link, n2=rec_set, n3=rec_clr)


def build(spec, inp):
    """Build the :class:`Plan` for creating ``spec``'s container.

    Raises InvalidArgument or NotImplementedYet for what cannot be planned
    (e.g. a bind source that does not exist).  Opens the namespace files
    named by ``linux.namespaces[].path`` (the caller closes
    ``plan.ns_fds``).
    """
    plan = Plan()
    linux = spec.linux
    proc = spec.process
    new = [ns.type for ns in linux.namespaces if not ns.path]
    joins = {ns.type: ns.path for ns in linux.namespaces if ns.path}
    cgroupns_new = "cgroup" in new
    userns_new = "user" in new

    for kind, path in joins.items():
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            for fd in plan.ns_fds.values():
                os.close(fd)
            raise InvalidArgument(f"linux.namespaces: {kind} path {path!r}: {e.strerror}") from None
        plan.ns_fds[kind] = high_fd(fd, 3 + inp.preserve_fds)
        try:
            nstype = fcntl.ioctl(plan.ns_fds[kind], NS_GET_NSTYPE)
        except OSError:
            nstype = None
        if nstype != NS_FLAGS[kind]:
            for fd in plan.ns_fds.values():
                os.close(fd)
            raise InvalidArgument(f"linux.namespaces: {kind} path {path!r} is not a {kind} "
                                  "namespace")

    if inp.stdio is not None:
        plan.add(lib.PR_OP_STDIO, f"stdin, stdout, stderr from fds {inp.stdio}", "exec",
                 n1=inp.stdio[0], n2=inp.stdio[1], n3=inp.stdio[2])

    # ---- namespaces ----
    # A single clone() creates every new namespace unless something must be
    # joined first (a pid or user namespace path, or any path when a new
    # user namespace would own the new ones): then a second stage forks
    # after the joins, like runc's nsexec stages.
    two_stage = "pid" in joins or "user" in joins or (userns_new and joins)
    clone_new = 0
    for kind in new:
        if kind != "cgroup":
            clone_new |= NS_FLAGS[kind]

    def idmap_sync():
        plan.add(lib.PR_OP_SYNC, "wait for the uid/gid maps", "namespaces", n1=SYNC_IDMAP)
        plan.syncs.append(SYNC_IDMAP)
        plan.add(lib.PR_OP_SETRESID0, "setresuid(0)/setresgid(0) in the new user namespace",
                 "namespaces")

    if not two_stage:
        plan.clone_flags = clone_new
        if userns_new:
            idmap_sync()
        for kind in _JOIN_ORDER:
            if kind in joins:
                plan.add(lib.PR_OP_SETNS, f"setns {kind} {joins[kind]}", "namespaces",
                         fd=plan.ns_fds[kind], flags=NS_FLAGS[kind])
    else:
        plan.clone_flags = 0
        if "user" in joins:
            plan.add(lib.PR_OP_SETNS, f"setns user {joins['user']}", "namespaces",
                     fd=plan.ns_fds["user"], flags=L.CLONE_NEWUSER)
        for kind in _JOIN_ORDER:
            if kind in joins and kind != "user":
                plan.add(lib.PR_OP_SETNS, f"setns {kind} {joins[kind]}", "namespaces",
                         fd=plan.ns_fds[kind], flags=NS_FLAGS[kind])
        if userns_new:
            plan.add(lib.PR_OP_UNSHARE, "unshare CLONE_NEWUSER", "namespaces", flags=L.CLONE_NEWUSER)
            idmap_sync()
        rest = clone_new & ~L.CLONE_NEWUSER
        if rest:
            plan.add(lib.PR_OP_UNSHARE, f"unshare {L.flag_names(rest, L.CLONE_FLAGS)}", "namespaces",
                     flags=rest)
        fork = plan.add(lib.PR_OP_FORK, "fork the container init (second stage)", "namespaces")

    tasks, cgroup_fd = inp.cgroup_join
    if two_stage:
        fork.fd = cgroup_fd  # the second stage, the init, is born in the group
    else:
        plan.cgroup_fd = cgroup_fd
    plan_cgroup_join(plan, tasks)
    if cgroupns_new:
        # After joining the container's cgroup, so that it is the root of
        # the new cgroup namespace (runc does the same).
        plan.add(lib.PR_OP_UNSHARE, "unshare CLONE_NEWCGROUP", "namespaces", flags=L.CLONE_NEWCGROUP)

    if proc is not None and proc.oom_score_adj is not None:
        plan.add(lib.PR_OP_WRITE_FILE, f"oom_score_adj = {proc.oom_score_adj}", "limits",
                 s1="/proc/self/oom_score_adj", s2=str(proc.oom_score_adj))
    if spec.hostname:
        plan.add(lib.PR_OP_SETHOSTNAME, f"sethostname {spec.hostname!r}", "namespaces", s1=spec.hostname)
    if spec.domainname:
        plan.add(lib.PR_OP_SETDOMAINNAME, f"setdomainname {spec.domainname!r}", "namespaces",
                 s1=spec.domainname)

    # ---- root filesystem ----
    # Nothing done in the new mount namespace may reach the host: make the
    # whole tree a slave first.  The spec's rootfsPropagation applies to
    # the container's own / after pivot_root (a shared or unbindable parent
    # would make the rootfs bind or pivot_root fail).
    own_mountns = linux.namespace("mount") is not None
    if own_mountns:
        prop = L.MS_SLAVE | L.MS_REC
        plan.add(lib.PR_OP_MOUNT, f"make / {L.flag_names(prop, L.MS_FLAGS)} in the new mount namespace",
                 "rootfs", s2="/", flags=prop, n1=lib.PR_MNT_HOST_TARGET)
        plan.add(lib.PR_OP_MOUNT, f"bind the rootfs {inp.rootfs} onto itself", "rootfs",
                 s1=inp.rootfs, s2=inp.rootfs, flags=L.MS_BIND | L.MS_REC,
                 n1=lib.PR_MNT_HOST_TARGET)
    plan.add(lib.PR_OP_OPEN_ROOT, f"open the rootfs {inp.rootfs}", "rootfs", s1=inp.rootfs)

    dev_bound = False
    for i, m in enumerate(spec.mounts):
        _plan_mount(plan, i, m, inp, cgroupns_new)
        if os.path.normpath(_inside(m.destination)) == "/dev" and (
                m.type == "bind" or "bind" in m.options or "rbind" in m.options):
            dev_bound = True

    # ---- devices ----
    if not dev_bound:
        devices = {d.path: d for d in linux.devices}
        for path, major, minor in DEFAULT_DEVICES:
            if path not in devices:
                _plan_device(plan, path, "c", major, minor, 0o666, 0, 0, userns_new)
        for d in linux.devices:
            mode = d.file_mode if d.file_mode is not None else 0o666
            _plan_device(plan, d.path, d.type, d.major, d.minor, mode, d.uid or 0, d.gid or 0,
                         userns_new)
        links = [("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
                 ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr")]
        if os.path.exists("/proc/kcore"):
            links.append(("/proc/kcore", "/dev/core"))
        for target, path in links:
            plan.add(lib.PR_OP_SYMLINK, f"symlink {path} -> {target}", "devices", s1=target, s2=path)
        plan.add(lib.PR_OP_SYMLINK, "symlink /dev/ptmx -> pts/ptmx", "devices",
                 s1="pts/ptmx", s2="/dev/ptmx", n1=1)
    else:
        for d in linux.devices:
            mode = d.file_mode if d.file_mode is not None else 0o666
            _plan_device(plan, d.path, d.type, d.major, d.minor, mode, d.uid or 0, d.gid or 0,
                         userns_new)

    if proc is not None and linux.namespace("mount") is not None and inp.make_cwd:
        # runc makes process.cwd if it is missing (it may be a fresh volume).
        plan.add(lib.PR_OP_MKDIR, f"make sure the cwd {proc.cwd} exists", "rootfs",
                 s1=proc.cwd)

    # ---- hooks before pivot ----
    if spec.hooks.prestart or spec.hooks.create_runtime:
        plan.add(lib.PR_OP_SYNC, "wait for the prestart and createRuntime hooks", "hooks",
                 n1=SYNC_HOOKS)
        plan.syncs.append(SYNC_HOOKS)
    elif spec.hooks.create_container or spec.hooks.start_container:
        # The child still needs the state JSON for its own hooks.
        plan.add(lib.PR_OP_SYNC, "receive the state for the container's hooks", "hooks",
                 n1=SYNC_HOOKS)
        plan.syncs.append(SYNC_HOOKS)
    for i, h in enumerate(spec.hooks.create_container):
        _plan_hook(plan, "createContainer", i, h)

    # ---- pivot ----
    if not own_mountns:
        plan.add(lib.PR_OP_CHROOT, f"chroot to {inp.rootfs} (no mount namespace: no pivot_root)",
                 "pivot", s1=inp.rootfs)
    elif inp.no_pivot:
        plan.add(lib.PR_OP_MOVE_ROOT, f"move {inp.rootfs} to / and chroot (--no-pivot)", "pivot",
                 s1=inp.rootfs)
    else:
        plan.add(lib.PR_OP_PIVOT_ROOT, f"pivot_root to {inp.rootfs}, detach the old root", "pivot",
                 s1=inp.rootfs)
    plan.add(lib.PR_OP_OPEN_ROOT, "open the new /", "pivot", s1="/")
    if own_mountns and not dev_bound:
        plan.add(lib.PR_OP_DEVNULL, "stdio that is /dev/null: the container's, read-write",
                 "pivot")
    if linux.rootfs_propagation:
        rp = _PROPAGATION[linux.rootfs_propagation]
        plan.add(lib.PR_OP_MOUNT, f"make / {L.flag_names(rp, L.MS_FLAGS)} (rootfsPropagation)",
                 "pivot", s2="/", flags=rp, n1=lib.PR_MNT_HOST_TARGET)

    if proc is not None and proc.terminal:
        if inp.console_fd < 0:
            raise InvalidArgument("process.terminal: a terminal needs --console-socket (or run in the foreground)")
        rows, cols = proc.console_size or (0, 0)
        plan.add(lib.PR_OP_CONSOLE, f"create the pty (owner uid {proc.user.uid}) and send its "
                 "master to the console socket", "identity", fd=inp.console_fd, n1=rows, n2=cols,
                 n3=proc.user.uid)

    for key, value in linux.sysctl:
        plan.add(lib.PR_OP_WRITE_FILE, f"sysctl {key} = {value}", "limits",
                 s1="/proc/sys/" + key.replace(".", "/"), s2=value)
    if spec.root.readonly:
        plan.add(lib.PR_OP_READONLY, "remount / read-only", "rootfs", s1="/", n1=1)
    for p in linux.readonly_paths:
        plan.add(lib.PR_OP_READONLY, f"make {p} read-only", "rootfs", s1=p)
    for p in linux.masked_paths:
        plan.add(lib.PR_OP_MASK, f"mask {p}", "rootfs", s1=p)

    if proc is None:
        return plan
    if not inp.no_new_keyring:
        name = f"_ses.{inp.container_id}"[:255]
        plan.add(lib.PR_OP_KEYRING, f"join a new session keyring {name}", "identity", s1=name)
    plan_process(plan, proc, linux, preserve_fds=inp.preserve_fds, wait_fd=inp.fifo_fd,
                 start_hooks=spec.hooks.start_container, pdeathsig=inp.pdeathsig)
    return plan


def plan_process(plan, proc, linux, *, preserve_fds=0, wait_fd=None, start_hooks=(), pdeathsig=0):
    """Add the steps that turn the child into ``proc`` (a
    :class:`~pyrun.oci.spec.Process`): personality, rlimits, cwd, seccomp,
    capabilities, identity, then execve.  ``wait_fd``: the exec fifo to
    block on before the last steps (create; none for exec).
    ``pdeathsig``: as Inputs.pdeathsig.  Used by create and by exec."""
    # ---- identity ----
    u = proc.user
    if linux.personality is not None:
        plan.add(lib.PR_OP_PERSONALITY, f"personality {linux.personality:#x}", "identity",
                 flags=linux.personality)
    for r in proc.rlimits:
        plan.add(lib.PR_OP_RLIMIT, f"setrlimit {r.type} soft={r.soft} hard={r.hard}", "limits",
                 n1=r.resource, flags=r.soft, flags2=r.hard)
    # Where the process starts, and the last look-ups, happen before the
    # seccomp filter: a profile may refuse getcwd, close_range or stat.
    plan.add(lib.PR_OP_CHDIR, f"chdir {proc.cwd}", "exec", s1=proc.cwd)
    if u.umask is not None:
        plan.add(lib.PR_OP_UMASK, f"umask {u.umask:04o}", "exec", n1=u.umask)
    path = next((e[5:] for e in proc.env if e.startswith("PATH=")), "")
    where = "" if "/" in proc.args[0] else " in PATH"
    plan.add(lib.PR_OP_RESOLVE_EXEC, f"find {proc.args[0]!r}{where}", "exec",
             s1=proc.args[0], s2=path)
    plan.add(lib.PR_OP_CLOSE_FDS, f"close-on-exec every fd from {3 + preserve_fds} up", "exec",
             n1=3 + preserve_fds)
    seccomp = None
    if linux.seccomp is not None:
        from pyrun.seccomp import compile_filter
        bpf, count, sflags = compile_filter(linux.seccomp)
        seccomp = dict(kind=lib.PR_OP_SECCOMP, what=f"load the seccomp filter ({count} BPF instructions)",
                       phase="limits", s1=bpf, n1=count, flags=sflags)
    if seccomp and not proc.no_new_privileges:
        # Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it
        # while we still have it, before the identity changes (runc does).
        plan.add(**seccomp)

    caps = proc.capabilities
    last = _last_cap()
    capvals = None
    if caps is not None:
        for setname in ("bounding", "effective", "permitted", "inheritable", "ambient"):
            for name in getattr(caps, setname):
                if CAP_NUMBERS[name] > last:
                    raise InvalidArgument(
                        f"process.capabilities.{setname}: {name} is not known to this kernel")
        capvals = {
            "bounding": _cap_mask(caps.bounding), "effective": _cap_mask(caps.effective),
            "permitted": _cap_mask(caps.permitted), "inheritable": _cap_mask(caps.inheritable),
            "ambient": _cap_mask(caps.ambient), "last_cap": last,
        }
        plan.add(lib.PR_OP_CAPBSET, f"drop from the bounding set all but {', '.join(caps.bounding) or 'nothing'}",
                 "identity", caps=capvals)
    plan.add(lib.PR_OP_IDENTITY,
             f"setgroups {list(u.additional_gids)}, setresgid {u.gid}, setresuid {u.uid}", "identity",
             flags=u.uid, flags2=u.gid, n2=len(u.additional_gids), ids=list(u.additional_gids))
    if capvals is not None:
        plan.add(lib.PR_OP_CAPSET,
                 f"capset effective={list(caps.effective)} permitted={list(caps.permitted)} "
                 f"inheritable={list(caps.inheritable)} ambient={list(caps.ambient)}",
                 "identity", caps=capvals)
    if proc.no_new_privileges:
        plan.add(lib.PR_OP_NO_NEW_PRIVS, "prctl PR_SET_NO_NEW_PRIVS", "identity")
    if pdeathsig:
        # After the identity change, which clears it.
        plan.add(lib.PR_OP_PDEATHSIG, f"signal {pdeathsig} when the spawning thread ends, "
                 "or fail if the runtime has already gone", "exec", n1=pdeathsig,
                 fd=_own_pidfd())
    if wait_fd is not None:
        plan.add(lib.PR_OP_WAIT_START, "wait for start (exec fifo)", "exec", fd=wait_fd)
    for i, h in enumerate(start_hooks):
        _plan_hook(plan, "startContainer", i, h)
    if seccomp and proc.no_new_privileges:
        plan.add(**seccomp)  # as late as possible: fewer syscalls need allowing
    plan.add(lib.PR_OP_EXEC, f"execve {list(proc.args)}", "exec",
             argv=list(proc.args), envp=list(proc.env))


def plan_cgroup_join(plan, tasks):
    """Join the v1 cgroups whose ``tasks`` files are ``tasks`` ([(path,
    fd)], Manager.open_join): before anything the container runs can fork,
    and before a new cgroup namespace takes the group as its root (runc's
    order).  (The cgroup2 group is joined at the clone.)"""
    for path, fd in tasks:
        plan.add(lib.PR_OP_JOIN_CGROUP, f"join the cgroup: write \"0\" to {path}", "cgroups", fd=fd)


def _plan_device(plan, path, kind, major, minor, mode, uid, gid, userns):
    if userns:
        plan.add(lib.PR_OP_MKNOD, f"bind host {path} (user namespace)", "devices",
                 s1=path, s2=path, n1=lib.PR_MKNOD_BIND)
        return
    dev = os.makedev(major, minor) if kind != "p" else 0
    plan.add(lib.PR_OP_MKNOD, f"mknod {path} {kind} {major}:{minor} mode {mode:04o} owner {uid}:{gid}",
             "devices", s2=path, n2=_DEV_TYPES[kind] | mode, n3=dev, flags=uid, flags2=gid)


def _plan_hook(plan, kind, i, h):
    plan.add(lib.PR_OP_HOOK, f"{kind} hook {i}: {h.path}", "hooks", s1=h.path,
             argv=list(h.args) or [h.path], envp=list(h.env), n1=h.timeout or 0)
