"""``create``: build the container and leave its init blocked on the exec
fifo, ready for ``start`` (runtime spec "Lifecycle" steps 1-8; runc's
``create``).

A failed create undoes everything it did: the init is killed and reaped,
its state directory removed, and the error names the step that failed.
"""
import os
import stat

from pyrun.errdefs import InvalidArgument, NotFound
from pyrun import trace
from pyrun.jsonio import dumps, loads
from pyrun.oci import spec as ocispec
from pyrun.oci.validate import validate
from pyrun.runtime import plan as planner
from pyrun.runtime.hooks import run_hooks
from pyrun.runtime.spawn import Child
from pyrun.runtime.state import State, Status, now_rfc3339, proc_start_time, unmount_own


MAX_CONFIG = 16 << 20  # bytes of config.json read at most


def load_bundle(bundle):
    """Read ``<bundle>/config.json``: returns (raw dict, Spec).  NotFound
    for a missing bundle or config, InvalidArgument for a bad one."""
    bundle = os.path.abspath(bundle)
    if not os.path.isdir(bundle):
        raise NotFound(f"bundle {bundle}: no such directory")
    path = os.path.join(bundle, "config.json")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"bundle {bundle}: no config.json") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{path}: not a regular file")
    if st.st_size > MAX_CONFIG:
        raise InvalidArgument(f"{path}: {st.st_size} bytes is larger than pyrun reads "
                              f"({MAX_CONFIG} bytes)")
    try:
        with open(path, "rb") as f:
            raw = loads(f.read(MAX_CONFIG + 1))
    except FileNotFoundError:
        raise NotFound(f"bundle {bundle}: no config.json") from None
    except ValueError as e:
        raise InvalidArgument(f"{path}: not valid JSON: {e}") from None
    try:
        spec = ocispec.parse(raw)
        validate(spec)
    except InvalidArgument as e:
        raise type(e)(f"{path}: {e}") from None
    return raw, spec


def _write_id_maps(pid, spec, tr=None):
    linux = spec.linux
    for name, maps in (("uid_map", linux.uid_mappings), ("gid_map", linux.gid_mappings)):
        data = "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps)
        with (trace.NO_SPAN if tr is None else
              tr.span("namespaces", f"write(\"/proc/{pid}/{name}\", {data!r})")):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(data)


def create(store, cid, bundle, *, console_socket=None, console_fd=None, pid_file=None,
           no_pivot=False, no_new_keyring=False, preserve_fds=0, cgroup_manager=None,
           stdio=None, exec_watch=None):
    """Create container ``cid`` from the OCI bundle at ``bundle``.

    ``console_socket``: path of a unix socket that receives the pty master
    (SCM_RIGHTS) when ``process.terminal`` is set; ``console_fd``: an
    already connected one.  ``preserve_fds``: number of fds after stdio
    passed on to the container (runc ``--preserve-fds``).  ``stdio``:
    (stdin, stdout, stderr) fds for the container's process; None, or -1 in
    a slot, keeps the caller's own fd 0/1/2 (runc's pass-through).  The
    caller keeps and closes its fds.  ``exec_watch``: a list that receives
    the :class:`~pyrun.runtime.spawn.Child`, whose ``exec_result()`` after
    start reports a failure of the last steps (``run`` uses it).  Returns
    the saved :class:`State` (status created).

    Raises NotFound (bundle), InvalidArgument (config), AlreadyExists (id),
    StepError (a step of the child stage failed), HookError.
    """
    bundle = os.path.abspath(bundle)
    planner.check_preserve_fds(preserve_fds)
    raw, spec = load_bundle(bundle)
    given = spec.root.path
    if not os.path.isabs(given):
        # Relative to the bundle as runc sees it: from inside it (its cwd).
        given = os.path.join(os.path.realpath(bundle), given)
    given = os.path.normpath(given)
    rootfs = os.path.realpath(given)
    if not os.path.isdir(rootfs):
        raise NotFound(f"root.path: rootfs {rootfs} is not a directory")
    if rootfs != given:
        # As runc ("invalid rootfs: not an absolute path, or a symlink"):
        # a rootfs that is a symlink (say to /) is never what was meant.
        raise InvalidArgument(f"root.path: {given} is a symlink (to {rootfs}) or goes through "
                              "one; give the real path")
    if cgroup_manager is None:
        from pyrun.runtime import cgroup
        if cgroup.wanted(spec):
            cgroup_manager = cgroup.manager_for(spec, cid)

    tr = trace.current()
    store.reserve(cid)
    # Held until create ends: a delete that finds the container
    # "creating" and gets the lock knows this create died, and undoes it.
    lock = store.lock(cid)
    low = 3 + preserve_fds
    fds = []
    child = None
    child_trace = None
    created_cgroup = False
    st = State(id=cid, bundle=bundle, rootfs=rootfs, created=now_rfc3339(),
               annotations=dict(spec.annotations), config=raw)
    if spec.linux.namespace("mount") is None:
        from pyrun.fsutil import mounts_under
        st.host_mounts = mounts_under(rootfs)
    try:
        fifo = store.fifo(cid)
        os.mkfifo(fifo, 0o622)
        if tr is not None:
            tr.call("setup", f"mkfifo(\"{fifo}\", 0622): start will write here to let the init exec")
            from pyrun.trace.child import CreateTrace
            child_trace = CreateTrace(store.dir(cid), low)
            st.traced = True
        fifo_fd = planner.high_fd(os.open(fifo, os.O_RDWR | os.O_CLOEXEC), low)
        fds.append(fifo_fd)
        console_fd = planner.console_fd_for(console_socket, console_fd, low)
        if console_fd is not None:
            fds.append(console_fd)
        if cgroup_manager is not None:
            cgroup_manager.create()
            created_cgroup = True
            st.cgroup = cgroup_manager.describe()
            st.oom = cgroup_manager.oom_counter()
            store.save(st)  # status creating: what delete needs if we die
        if stdio is not None:
            stdio = planner.move_stdio(stdio, low, fds)
        join = ((), -1)
        if cgroup_manager is not None:
            join = planner.high_join(cgroup_manager.open_join(), low, fds)
        inp = planner.Inputs(
            bundle=bundle, rootfs=rootfs, fifo_fd=fifo_fd,
            console_fd=console_fd if console_fd is not None else -1,
            preserve_fds=preserve_fds, no_pivot=no_pivot, no_new_keyring=no_new_keyring,
            container_id=cid, cgroup_join=join,
            cgroup_paths=cgroup_manager.mount_sources() if cgroup_manager is not None else {},
            stdio=stdio,
        )
        plan = planner.build(spec, inp)
        fds.extend(plan.ns_fds.values())

        def on_sync(kind, pid):
            if kind == planner.SYNC_IDMAP:
                _write_id_maps(pid, spec, tr)
            elif kind == planner.SYNC_HOOKS:
                st.pid = pid
                st.start_time = proc_start_time(pid) or 0
                store.save(st)  # hooks may take long: the init is findable meanwhile
                state = st.oci()
                # The init exists and waits: hooks see "created" with its pid
                # (crun does; the runtime-tools hooks_stdin test wants it).
                state["status"] = "created"
                state["pid"] = pid
                run_hooks("prestart", spec.hooks.prestart, state)
                run_hooks("createRuntime", spec.hooks.create_runtime, state)
                return dumps(state).encode()
            return b""

        if child_trace is not None:
            child_trace.describe(plan, spec)
        child = Child(plan, on_sync, low_fd=low,
                      trace_fd=child_trace.write_fd if child_trace is not None else -1,
                      lock_fd=lock)
        pid = child.spawn()
        st.pid = pid
        st.start_time = proc_start_time(pid) or 0
        if cgroup_manager is not None:
            cgroup_manager.set_resources()
        st.status = Status.CREATED
        store.save(st)
        if pid_file:
            from pyrun.fsutil import atomic_write
            try:
                atomic_write(os.path.abspath(pid_file), str(pid).encode(), 0o644)
            except OSError as e:
                raise InvalidArgument(f"--pid-file {pid_file}: {e.strerror}") from None
        if exec_watch is not None:
            # The caller starts the container itself and wants to hear
            # how the execve went (run): hand it the child's channel.
            exec_watch.append(child)
        else:
            child.close()
        return st
    except BaseException:
        if child is not None:
            child.kill()
        unmount_own(st)
        if created_cgroup:
            try:
                cgroup_manager.destroy()
            except Exception:
                pass
        store.remove(cid)
        raise
    finally:
        os.close(lock)
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if child_trace is not None:
            child_trace.collect(tr, child.pid if child is not None else None)
        if tr is not None:
            tr.flush(f"create {cid}")
