"""Running a process in the foreground: signals sent to pyrun go to the
process, its exit status becomes pyrun's, and a terminal process gets a pty
relayed to pyrun's own stdio (runc's ``run`` and ``exec`` without
``--detach``)."""
import _signal
import _socket
import os

from pyrun.errdefs import InvalidArgument

# Every catchable signal but SIGCHLD (ours) and SIGURG (Go runtimes use it).
_FORWARD = [s for s in range(1, _signal.NSIG)
            if s not in (_signal.SIGKILL, _signal.SIGSTOP, _signal.SIGCHLD, _signal.SIGURG,
                         32, 33)]  # 32, 33: used by glibc's threads


def console_pair():
    """A socket pair: ours receives the pty master, theirs goes to create
    or exec as the console socket."""
    return _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)


class forwarding:
    """``with forwarding(pid):`` forwards every catchable signal to ``pid``.
    (A class, not contextlib: that import costs the CLI's start-up.)"""

    def __init__(self, pid):
        self.pid = pid
        self.saved = {}

    def __enter__(self):
        for s in _FORWARD:
            try:
                self.saved[s] = _signal.signal(s, lambda n, _f: _forward(self.pid, n))
            except (OSError, ValueError):
                pass

    def __exit__(self, *exc):
        for s, h in self.saved.items():
            _signal.signal(s, h)


def wait(pid, master=None):
    """Wait for our child ``pid`` (relaying its pty ``master`` if given);
    returns its exit code, or 128+N for signal N."""
    if master is not None:
        return _relay(master, pid)
    return _wait(pid)


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


def receive_master(sock):
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
