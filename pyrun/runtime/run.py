"""``run``: create, start, and (unless detached) wait for the container,
forwarding signals to it, then delete it (runc's ``run``).

The exit status is the container process's: its exit code, or 128+N if a
signal N ended it.  A terminal container in the foreground without
``--console-socket`` gets a pty that this process relays to its own stdio.
"""
import _signal
import _socket
import os

from pyrun.errdefs import InvalidArgument
from pyrun.runtime.create import create, load_bundle
from pyrun.runtime.delete import delete
from pyrun.runtime.start import start

# Every catchable signal but SIGCHLD (ours) and SIGURG (Go runtimes use it).
_FORWARD = [s for s in range(1, _signal.NSIG)
            if s not in (_signal.SIGKILL, _signal.SIGSTOP, _signal.SIGCHLD, _signal.SIGURG,
                         32, 33)]  # 32, 33: used by glibc's threads


def run(store, cid, bundle, *, detach=False, keep=False, console_socket=None, **create_kw):
    """Run container ``cid`` from ``bundle``.  Returns the exit status
    (0 when detached).  Raises what create and start raise."""
    _, spec = load_bundle(bundle)
    terminal = spec.process is not None and spec.process.terminal
    relay = None
    console_fd = None
    if terminal and console_socket is None:
        if detach:
            raise InvalidArgument("a detached terminal container needs --console-socket")
        relay, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        console_fd = theirs.fileno()
    try:
        st = create(store, cid, bundle, console_socket=console_socket, console_fd=console_fd,
                    **create_kw)
    finally:
        if console_fd is not None:
            theirs.close()
    master = _receive_master(relay) if relay is not None else None
    forwarded = {}
    if not detach:
        for s in _FORWARD:
            try:
                forwarded[s] = _signal.signal(s, lambda n, _f: _forward(st.pid, n))
            except (OSError, ValueError):
                pass
    try:
        start(store, cid)
        if detach:
            return 0
        if master is not None:
            status = _relay(master, st.pid)
        else:
            status = _wait(st.pid)
    except BaseException:
        if not detach:
            try:
                delete(store, cid, force=True)
            except Exception:
                pass
        raise
    finally:
        for s, h in forwarded.items():
            _signal.signal(s, h)
    if not keep:
        delete(store, cid, force=True)
    return status


def _forward(pid, n):
    try:
        os.kill(pid, n)
    except ProcessLookupError:
        pass


def _wait(pid):
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return 255
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)


def _receive_master(sock):
    import array
    fds = array.array("i")
    _, anc, _, _ = sock.recvmsg(256, _socket.CMSG_SPACE(fds.itemsize))
    sock.close()
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[:fds.itemsize])
    if not fds:
        raise InvalidArgument("the container sent no pty master")
    return fds[0]


def _relay(master, pid):
    """Copy between our stdio and the pty until the container exits."""
    import select
    import termios
    import tty

    saved = None
    if os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    try:
        fds = [master, 0]
        while True:
            try:
                ready, _, _ = select.select(fds, [], [], 0.2)
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                os.write(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if not data:
                    fds.remove(0)
                else:
                    os.write(master, data)
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid:
                _drain(master)
                return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        return _wait(pid)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)


def _drain(master):
    import select
    while select.select([master], [], [], 0)[0]:
        try:
            data = os.read(master, 65536)
        except OSError:
            return
        if not data:
            return
        os.write(1, data)
