"""``exec``: run another process in a running container (runc's
``exec``; containerd's "exec process").

The new process joins every namespace of the container's init (the user
namespace first, the mount namespace last), is put into the container's
cgroup, and then becomes ``process`` exactly as the init did: rlimits,
seccomp, capabilities, identity, cwd (pyrun/runtime/plan.py
``plan_process``).  Nothing on the host is changed on its behalf: no chown
of a terminal or of /dev/null (a peer once chowned the host's /dev/null for
``exec --user``).
"""
import os

from pyrun import trace
from pyrun._native import lib
from pyrun.errdefs import FailedPrecondition, InvalidArgument
from pyrun.oci import spec as ocispec
from pyrun.runtime import plan as planner
from pyrun.runtime.spawn import Child
from pyrun.runtime.state import Status, proc_start_time

_NS_FILES = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts",
             "user": "user", "cgroup": "cgroup", "time": "time"}
_JOIN = ("user", "ipc", "uts", "network", "cgroup", "time", "pid", "mount")


def process_for_exec(st, args=None, *, process_json=None, env=(), cwd=None, user=None,
                     additional_gids=(), caps=(), no_new_privs=False, tty=False):
    """The :class:`~pyrun.oci.spec.Process` to exec: ``process_json`` (a
    dict, runc ``--process``) as given, or the container's own process with
    these overrides (runc's flags).  ``user`` is ``"uid[:gid]"``.  Raises
    InvalidArgument naming the bad value."""
    if process_json is not None:
        raw = process_json
    else:
        if not args:
            raise InvalidArgument("exec: no command given (and no --process)")
        raw = dict(st.config.get("process") or {})
        raw["args"] = list(args)
        raw["terminal"] = tty
        merged = {}
        for e in list(raw.get("env") or []) + list(env):
            if "=" not in e:
                raise InvalidArgument(f"exec: --env {e!r} is not KEY=VALUE")
            merged[e.split("=", 1)[0]] = e
        raw["env"] = list(merged.values())
        if cwd:
            raw["cwd"] = cwd
        u = dict(raw.get("user") or {})
        if user:
            uid, _, gid = user.partition(":")
            try:
                u["uid"] = int(uid)
                if gid:
                    u["gid"] = int(gid)
            except ValueError:
                raise InvalidArgument(f"exec: --user {user!r}: expected uid[:gid] numbers") from None
        if additional_gids:
            u["additionalGids"] = [int(g) for g in additional_gids]
        raw["user"] = u
        if caps:
            c = {k: list(v) for k, v in (raw.get("capabilities") or {}).items()}
            for cap in caps:
                name = cap if cap.startswith("CAP_") else "CAP_" + cap.upper()
                for setname in ("bounding", "effective", "permitted", "ambient"):
                    if name not in c.setdefault(setname, []):
                        c[setname].append(name)
            raw["capabilities"] = c
        if no_new_privs:
            raw["noNewPrivileges"] = True
    try:
        return ocispec._parse_process(raw)
    except InvalidArgument as e:
        raise InvalidArgument(f"exec: {e}") from None


def exec_process(store, cid, process, *, console_socket=None, console_fd=None, pid_file=None,
                 preserve_fds=0, cgroup_manager=None, stdio=None):
    """Start ``process`` in container ``cid``; returns its host pid (the
    caller's child: wait for it with os.waitpid).  ``stdio``: (stdin,
    stdout, stderr) fds for the process, as for create (None, or -1 in a
    slot, keeps the caller's own; the caller keeps and closes its fds).
    Raises NotFound,
    FailedPrecondition (not created or running), InvalidArgument,
    StepError (naming the step that failed)."""
    st = store.load(cid)
    if st.status not in (Status.CREATED, Status.RUNNING):
        raise FailedPrecondition(f"cannot exec in container {cid!r}: it is {st.status}")
    if cgroup_manager is None and st.cgroup:
        from pyrun.runtime.cgroup import manager_from_state
        cgroup_manager = manager_from_state(st)
    pid = exec_in(cid, st.pid, st.start_time, ocispec.parse(st.config), process,
                  console_socket=console_socket, console_fd=console_fd, preserve_fds=preserve_fds,
                  cgroup_manager=cgroup_manager, stdio=stdio)
    if pid_file:
        from pyrun.fsutil import atomic_write
        atomic_write(os.path.abspath(pid_file), str(pid).encode(), 0o644)
    return pid


def exec_in(cid, init_pid, start_time, spec, process, *, console_socket=None, console_fd=None,
            preserve_fds=0, cgroup_manager=None, stdio=None):
    """:func:`exec_process` for a container known by its init (host pid
    ``init_pid``, whose /proc start time is ``start_time``: a recycled pid
    is refused) and parsed ``spec``, without a state directory (the
    sandbox keeps its containers in memory).  ``cgroup_manager``: the
    container's (a ContainerCgroup) or None.  Same returns and errors."""
    if not process.args:
        raise InvalidArgument("exec: process.args must name the program to run")
    planner.check_preserve_fds(preserve_fds)
    low = 3 + preserve_fds
    fds = []
    child = None
    try:
        plan = planner.Plan()
        kinds = {ns.type for ns in spec.linux.namespaces}
        for kind in _JOIN:
            if kind not in kinds:
                continue
            fd = os.open(f"/proc/{init_pid}/ns/{_NS_FILES[kind]}", os.O_RDONLY | os.O_CLOEXEC)
            fd = planner.high_fd(fd, low)
            fds.append(fd)
            if proc_start_time(init_pid) != start_time:
                raise FailedPrecondition(f"cannot exec in container {cid!r}: its init is gone")
            plan.add(lib.PR_OP_SETNS, f"setns {kind} of the container's init", "namespaces",
                     fd=fd, flags=planner.NS_FLAGS[kind])
        # setns into a pid (or time) namespace applies to children: fork,
        # into the cgroup2 group.
        tasks, cgroup_fd = ((), -1) if cgroup_manager is None else \
            planner.high_join(cgroup_manager.open_join(), low, fds)
        plan.add(lib.PR_OP_FORK, "fork into the container's pid namespace", "namespaces",
                 fd=cgroup_fd)
        planner.plan_cgroup_join(plan, tasks)
        if process.terminal:
            console_fd = planner.console_fd_for(console_socket, console_fd, low)
            if console_fd is None:
                raise InvalidArgument("exec: a terminal needs --console-socket (or the foreground)")
            fds.append(console_fd)
            rows, cols = process.console_size or (0, 0)
            plan.add(lib.PR_OP_CONSOLE, f"create the pty (owner uid {process.user.uid}) and send "
                     "its master to the console socket", "identity", fd=console_fd, n1=rows,
                     n2=cols, n3=process.user.uid)
        if stdio is not None:
            moved = planner.move_stdio(stdio, low, fds)
            plan.add(lib.PR_OP_STDIO, f"stdin, stdout, stderr from fds {tuple(moved)}", "exec",
                     n1=moved[0], n2=moved[1], n3=moved[2])
        planner.plan_process(plan, process, spec.linux, preserve_fds=preserve_fds)

        tr = trace.current()
        trace_r = trace_w = -1
        if tr is not None:
            trace_r, w = os.pipe2(os.O_CLOEXEC)
            trace_w = planner.high_fd(w, low)
            fds.append(trace_w)
        child = Child(plan, None, low_fd=low, until_exec=True, trace_fd=trace_w)
        try:
            pid = child.spawn()
        finally:
            if tr is not None:
                # Our write end goes; the child's closes at its execve.
                os.close(trace_w)
                fds.remove(trace_w)
                from pyrun.trace.child import collect_pipe
                collect_pipe(tr, plan, spec, trace_r, child.pid)
                tr.flush(f"exec {cid}")
        child.close()
        return pid
    except BaseException:
        if child is not None:
            child.kill()
        raise
    finally:
        for fd in fds:
            os.close(fd)
