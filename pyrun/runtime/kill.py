"""``kill``: send a signal to a container's init, or to all its processes
(runtime spec "Operations: kill"; runc's ``kill`` and ``--all``)."""
import os
import _signal  # not signal: its enum import costs every CLI call 7 ms

from pyrun import linux, trace
from pyrun.errdefs import InvalidArgument
from pyrun.runtime.state import Status, proc_start_time, require


_NAMES = {n: getattr(_signal, n) for n in dir(_signal)
          if n.startswith("SIG") and not n.startswith("SIG_") and n not in ("SIGRTMIN", "SIGRTMAX")}


def signal_name(sig):
    """9 -> "SIGKILL" (the number as text when it has no name)."""
    return next((n for n, v in sorted(_NAMES.items()) if v == sig), str(sig))


def parse_signal(s):
    """``KILL``, ``SIGKILL``, ``9`` -> 9.  Raises InvalidArgument."""
    s = str(s).strip()
    if s.isdigit():
        n = int(s)
        if 0 <= n < 65:  # 0: only whether the init is alive (runc accepts it)
            return n
        raise InvalidArgument(f"invalid signal {s!r}")
    name = s.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return _NAMES[name]
    except KeyError:
        raise InvalidArgument(f"unknown signal {s!r}") from None


def signal_container(st, sig, phase="signal"):
    """Signal the init through a pidfd, after checking the pid is still
    the same process (start time), so a recycled pid is never hit.
    ``phase``: where a trace shows it ("signal", or "cleanup" for delete)."""
    tr = trace.current()
    try:
        with (trace.NO_SPAN if tr is None else tr.span(phase, f"pidfd_open({st.pid}, 0)")):
            fd = linux.pidfd_open(st.pid)
    except OSError:
        return False
    try:
        if proc_start_time(st.pid) != st.start_time:
            return False
        with (trace.NO_SPAN if tr is None else
              tr.span(phase, f"pidfd_send_signal(pidfd of {st.pid}, {signal_name(sig)}, NULL, 0)")):
            linux.pidfd_send_signal(fd, sig)
        return True
    finally:
        os.close(fd)


def same_pidns(pid):
    """Pids sharing ``pid``'s pid namespace, seen from the host."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return []
    if ns == os.readlink("/proc/self/ns/pid"):
        return [pid]
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == ns:
                    out.append(int(name))
            except OSError:
                pass
    return out


def kill(store, cid, sig=_signal.SIGTERM, all=False, cgroup_manager=None):
    """Send ``sig`` (number) to container ``cid``.  ``all``: every process
    of the container (its cgroup, or its pid namespace).  Raises NotFound,
    FailedPrecondition (not created, running or paused).

    A paused container stays frozen for every signal but SIGKILL, which
    is followed by a thaw so that the processes can die (runc does the
    same); the container is then no longer paused."""
    tr = trace.current()
    lock = store.lock(cid)
    try:
        st = store.load(cid)
        _kill(st, sig, all, cgroup_manager, tr)
        if st.status == Status.PAUSED and sig == _signal.SIGKILL:
            from pyrun.runtime.resume import thaw
            thaw(store, st)
    finally:
        os.close(lock)
        if tr is not None:
            tr.flush(f"kill {cid}")


def _kill(st, sig, all, cgroup_manager, tr):
    require(st, "kill", st.status.can_kill())
    if all:
        if cgroup_manager is None and st.cgroup:
            from pyrun.runtime.cgroup import manager_from_state
            cgroup_manager = manager_from_state(st)
        if cgroup_manager is not None:
            cgroup_manager.kill_all(sig)
            return
        for pid in same_pidns(st.pid):
            try:
                with (trace.NO_SPAN if tr is None else tr.span("signal", f"kill({pid}, {sig})")):
                    os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return
    signal_container(st, sig)
