"""``pause``: freeze every process of a container (runc's ``pause``:
the v1 freezer's freezer.state, or cgroup.freeze on cgroup v2).

runc pauses a created or a running container; so does pyrun.  The
container then reports *paused* until ``resume``.
"""
import os

from pyrun.runtime.state import Status, require


def pause(store, cid):
    """Freeze container ``cid`` and record it as paused.  Raises NotFound,
    FailedPrecondition (not created or running, or no cgroups: pyrun makes
    them only when config.json has linux.resources or linux.cgroupsPath),
    Unavailable (the group did not finish freezing; it is thawed again)."""
    from pyrun.runtime.cgroup import manager_from_state

    lock = store.lock(cid)
    try:
        st = store.load(cid)
        require(st, "pause", st.status.can_pause())
        manager = manager_from_state(st, "pause").manager
        manager.freeze()
        try:
            st.status = Status.PAUSED
            store.save(st)
        except BaseException:
            manager.thaw()
            raise
        return st
    finally:
        os.close(lock)
