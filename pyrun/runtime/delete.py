"""``delete``: remove a container's resources and run the poststop hooks
(runtime spec "Lifecycle" steps 12-13; runc's ``delete``)."""
import os
import select

from pyrun import linux, trace
from pyrun.oci import spec as ocispec
from pyrun.runtime.hooks import run_hooks
from pyrun.runtime.state import Damaged, Status, proc_start_time, require, unmount_own


def wait_gone(pid, start_time, timeout=10.0):
    """Wait until ``pid`` (with that start time) has exited; seconds."""
    try:
        fd = linux.pidfd_open(pid)
    except OSError:
        return True
    try:
        if proc_start_time(pid) != start_time:
            return True
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(timeout * 1000))
    finally:
        os.close(fd)


def delete(store, cid, force=False, cgroup_manager=None):
    """Delete container ``cid``.  A created container's init is killed;
    a running or paused one needs ``force`` (SIGKILL, then a thaw for a
    paused one).  Raises NotFound, FailedPrecondition.  poststop hook
    failures are warnings."""
    tr = trace.current()
    lock = store.lock(cid)
    try:
        try:
            st = store.load(cid)
        except Damaged:
            if not force:
                raise
            store.remove(cid)  # nothing in it can be trusted to undo: drop the record
            return
        require(st, "delete", st.status.can_delete(force))
        # CREATING with a live init: its create died (it holds the lock
        # while it lives), after the init was cloned.
        if st.status in (Status.CREATING, Status.CREATED, Status.RUNNING, Status.PAUSED) \
                and st.alive():
            from pyrun.runtime.kill import signal_container
            signal_container(st, 9, "cleanup")
            if st.status == Status.PAUSED:
                from pyrun.runtime.resume import thaw
                thaw(store, st, save=False)
            with (trace.NO_SPAN if tr is None else
                  tr.span("cleanup", f"poll(pidfd of {st.pid}, POLLIN): wait for the init to exit")):
                wait_gone(st.pid, st.start_time)
        if cgroup_manager is None and st.cgroup:
            from pyrun.runtime.cgroup import manager_from_state
            cgroup_manager = manager_from_state(st)
        unmount_own(st)
        if cgroup_manager is not None:
            if st.status == Status.CREATING:
                # A create that died before it recorded the init's pid
                # (the lock says it is gone): whatever is in its groups.
                cgroup_manager.kill_all(9)
            cgroup_manager.destroy()
        hooks = ()
        if st.config.get("hooks"):
            hooks = ocispec.parse(st.config).hooks.poststop
        with (trace.NO_SPAN if tr is None else
              tr.span("cleanup", f"unlink + rmdir(\"{store.dir(cid)}\"): the state directory")):
            store.remove(cid)
        if hooks and st.status != Status.CREATING:
            st.status = Status.STOPPED
            run_hooks("poststop", hooks, st.oci(), warn_only=True)
    finally:
        os.close(lock)
        if tr is not None:
            tr.flush(f"delete {cid}")
