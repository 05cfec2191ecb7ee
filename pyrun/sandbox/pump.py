"""Feeding a sandboxed process's stdin and capturing its stdout and stderr
with a bound, until it exits or its time is up.

Output beyond ``max_output`` bytes per stream is read and dropped (the
result says ``truncated``): the process is never blocked on a full pipe,
so it runs to its end or to its timeout, whichever comes first.  After
the process exits, what is already in the pipes is kept; processes that
outlive it (possible only in a long-lived sandbox) get a short grace to
close their end, then are no longer listened to.
"""
import errno
import os
import select
import time

_CHUNK = 65536
_GRACE = 0.05       # s of silence after exit before we stop reading
_GRACE_MAX = 0.5    # s after exit at most


class Capture:
    """Bytes of one stream, kept up to ``limit``."""
    __slots__ = ("limit", "chunks", "size", "truncated")

    def __init__(self, limit):
        self.limit, self.chunks, self.size, self.truncated = limit, [], 0, False

    def add(self, data):
        room = self.limit - self.size
        if len(data) > room:
            self.truncated = True
            data = data[:room]
        if data:
            self.chunks.append(data)
            self.size += len(data)

    def value(self):
        return b"".join(self.chunks)


def pump(pidfd, stdin_fd, data, out_fd, err_fd, out, err, deadline, kill, cancel_fd=-1):
    """Run the I/O loop.  ``pidfd`` becomes readable when the process exits;
    ``stdin_fd`` (ours to close) gets ``data``; ``out_fd``/``err_fd`` (ours
    to close) go to the :class:`Capture` objects ``out``/``err``.
    ``deadline``: time.monotonic() value or None; when it passes, or when
    ``cancel_fd`` becomes readable, ``kill()`` is called once and the loop
    waits for the exit.  Returns "timeout", "cancelled" or None."""
    poller = select.poll()
    streams = {out_fd: out, err_fd: err}
    for fd in streams:
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    if cancel_fd >= 0:
        poller.register(cancel_fd, select.POLLIN)
    view = memoryview(data)
    if view:
        os.set_blocking(stdin_fd, False)
        poller.register(stdin_fd, select.POLLOUT)
    else:
        os.close(stdin_fd)
        stdin_fd = -1
    reason = None
    exited_at = None
    try:
        while streams or exited_at is None:
            now = time.monotonic()
            # On every pass, not only when poll() times out: a program
            # that floods its output keeps poll() busy (a bug: `yes` with
            # timeout=1 ran for 4-9 s).
            if deadline is not None and reason is None and exited_at is None and now >= deadline:
                reason = "timeout"
                kill()
            if exited_at is not None:
                if now - exited_at > _GRACE_MAX:
                    break
                wait = _GRACE
            elif deadline is not None and reason is None:
                wait = max(deadline - now, 0)
            else:
                wait = None
            events = poller.poll(None if wait is None else int(wait * 1000) + 1)
            if not events:
                if exited_at is not None:
                    break
                continue
            for fd, ev in events:
                if fd == pidfd:
                    poller.unregister(pidfd)
                    exited_at = time.monotonic()
                elif fd == cancel_fd:
                    poller.unregister(cancel_fd)
                    if reason is None:
                        reason = "cancelled"
                        kill()
                elif fd == stdin_fd:
                    try:
                        n = os.write(stdin_fd, view[:_CHUNK])
                        view = view[n:]
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        if e.errno != errno.EPIPE:
                            raise
                        view = view[:0]
                    if not view:
                        poller.unregister(stdin_fd)
                        os.close(stdin_fd)
                        stdin_fd = -1
                else:
                    chunk = os.read(fd, _CHUNK)
                    if chunk:
                        streams[fd].add(chunk)
                    else:
                        poller.unregister(fd)
                        del streams[fd]
    finally:
        if stdin_fd >= 0:
            os.close(stdin_fd)
        for fd in (out_fd, err_fd):
            os.close(fd)
    return reason
