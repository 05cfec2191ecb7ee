"""``start``: let a created container's init exec the user process
(runtime spec "Lifecycle" steps 9-11; runc's ``start``), then run the
poststart hooks."""
import errno
import os

from pyrun.errdefs import FailedPrecondition
from pyrun.oci import spec as ocispec
from pyrun.runtime.hooks import run_hooks
from pyrun.runtime.state import Status, require


def start(store, cid):
    """Start container ``cid``.  Raises NotFound, FailedPrecondition (not
    in the created state, or its init died).  A failing poststart hook is
    a warning (runtime spec "Lifecycle" step 11; crun does the same)."""
    lock = store.lock(cid)
    try:
        st = store.load(cid)
        require(st, "start", st.status.can_start())
        fifo = store.fifo(cid)
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT):
                raise FailedPrecondition(f"cannot start container {cid!r}: its init is gone") from None
            raise
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
        os.unlink(fifo)
        st.status = Status.RUNNING
        store.save(st)
        hooks = ocispec.parse(st.config).hooks.poststart if st.config.get("hooks") else ()
        run_hooks("poststart", hooks, st.oci(), warn_only=True)
        return st
    finally:
        os.close(lock)
