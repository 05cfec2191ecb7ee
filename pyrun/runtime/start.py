"""``start``: let a created container's init exec the user process
(runtime spec "Lifecycle" steps 9-11; runc's ``start``), then run the
poststart hooks."""
import errno
import os

from pyrun import trace
from pyrun.errdefs import FailedPrecondition
from pyrun.oci import spec as ocispec
from pyrun.runtime.hooks import run_hooks
from pyrun.runtime.state import Status, require


def start(store, cid):
    """Start container ``cid``.  Raises NotFound, FailedPrecondition (not
    in the created state, or its init died).  A failing poststart hook is
    a warning (runtime spec "Lifecycle" step 11; crun does the same)."""
    tr = trace.current()
    lock = store.lock(cid)
    trace_fd = None
    try:
        st = store.load(cid)
        require(st, "start", st.status.can_start())
        fifo = store.fifo(cid)
        if st.traced:
            # Before the init can run on: it writes its last records now.
            from pyrun.trace.child import open_for_start
            trace_fd = open_for_start(store.dir(cid))
        try:
            with (trace.NO_SPAN if tr is None else tr.span("exec", f"open(\"{fifo}\", O_WRONLY)")):
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT):
                raise FailedPrecondition(f"cannot start container {cid!r}: its init is gone") from None
            raise
        try:
            with (trace.NO_SPAN if tr is None else
                  tr.span("exec", "write(exec.fifo, \"0\"): the init's read returns, it goes on to execve")):
                os.write(fd, b"0")
        finally:
            os.close(fd)
        os.unlink(fifo)
        if trace_fd is not None:
            from pyrun.trace.child import drain_for_start
            fd, trace_fd = trace_fd, None
            drain_for_start(fd, store.dir(cid), tr, st.pid)
        st.status = Status.RUNNING
        store.save(st)
        hooks = ocispec.parse(st.config).hooks.poststart if st.config.get("hooks") else ()
        run_hooks("poststart", hooks, st.oci(), warn_only=True)
        return st
    finally:
        if trace_fd is not None:
            os.close(trace_fd)
        os.close(lock)
        if tr is not None:
            tr.flush(f"start {cid}")
