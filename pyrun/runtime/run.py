"""``run``: create, start, and (unless detached) wait for the container,
forwarding signals to it, then delete it (runc's ``run``).

The exit status is the container process's: its exit code, or 128+N if a
signal N ended it.  A terminal container in the foreground without
``--console-socket`` gets a pty that this process relays to its own stdio.
"""
from pyrun import trace
from pyrun.errdefs import InvalidArgument
from pyrun.runtime import foreground
from pyrun.runtime.create import create, load_bundle
from pyrun.runtime.delete import delete
from pyrun.runtime.start import start


def run(store, cid, bundle, *, detach=False, keep=False, console_socket=None, on_created=None,
        **create_kw):
    """Run container ``cid`` from ``bundle``.  Returns the exit status
    (0 when detached).  ``on_created(pid)`` is called between create and
    start (e.g. to attach the container's network namespace); what it
    raises deletes the container.  Raises what create and start raise."""
    _, spec = load_bundle(bundle)
    terminal = spec.process is not None and spec.process.terminal
    relay = None
    console_fd = None
    if terminal and console_socket is None:
        if detach:
            raise InvalidArgument("a detached terminal container needs --console-socket")
        relay, theirs = foreground.console_pair()
        console_fd = theirs.fileno()
    watch = []
    try:
        st = create(store, cid, bundle, console_socket=console_socket, console_fd=console_fd,
                    exec_watch=watch, **create_kw)
    finally:
        if console_fd is not None:
            theirs.close()
    child = watch[0]
    master = foreground.receive_master(relay) if relay is not None else None
    try:
        if on_created is not None:
            on_created(st.pid)
        if detach:
            start(store, cid)
            child.exec_result()
            return 0
        with foreground.forwarding(st.pid):
            start(store, cid)
            # runc's run reports a failed execve or startContainer hook:
            # the init tells us before it would have exec'd.
            child.exec_result()
            tr = trace.current()
            t0 = tr.now() if tr is not None else 0
            status = foreground.wait(st.pid, master)
            if tr is not None:
                tr.call("exec", f"wait4({st.pid}): the container's process runs, run waits for it",
                        f"exit status {status}", t=t0)
                tr.flush(f"run {cid}")
    except BaseException:
        try:
            delete(store, cid, force=True)
        except Exception:
            pass
        raise
    finally:
        child.close()
    if not keep:
        delete(store, cid, force=True)
    return status


