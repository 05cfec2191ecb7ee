"""``resume``: thaw a paused container (runc's ``resume``).  Also the
thaw that must follow a SIGKILL to a paused container: on cgroup v1 a
frozen task acts on no signal, not even SIGKILL, until it is thawed
(runc's Signal thaws the same way)."""
import os

from pyrun.runtime.state import require


def thaw(store, st, save=True):
    """Thaw paused container ``st`` and give it back the status it had
    before pause (created or running); saved unless ``save`` is false."""
    from pyrun.runtime.cgroup import manager_from_state

    manager_from_state(st, "resume").manager.thaw()
    st.status = store.unpaused_status(st)
    if save:
        store.save(st)


def resume(store, cid):
    """Thaw container ``cid``.  Raises NotFound, FailedPrecondition (not
    paused)."""
    lock = store.lock(cid)
    try:
        st = store.load(cid)
        require(st, "resume", st.status.can_resume())
        thaw(store, st)
        return st
    finally:
        os.close(lock)
