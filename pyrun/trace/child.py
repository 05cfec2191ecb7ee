"""The child stage's trace pipe, from create to the container's execve.

The pipe is a FIFO in the container's state directory
(``<root>/<id>/trace.fifo``), because create and start may be two
processes (``pyrun create`` then ``pyrun start``).  The child holds its
only write end (close-on-exec) and writes one 24-byte record per step
(native/container.c ``trace_step``: type, step index, errno, the pid
inside the container, CLOCK_MONOTONIC ns).  Create reads what the child
wrote up to READY; start reads the rest until end of file, which comes
when execve closes the write end (or when the child dies after a failed
step, whose record carries the errno).  The steps' descriptions are saved
beside it (``trace.json``) for start.

Nobody holds the FIFO open between create and start, and the child writes
nothing then (it is blocked on the exec fifo).  A start that does not
trace still drains the FIFO (:func:`drain_for_start`), so a traced
create never leaves the child writing to a pipe without a reader.
"""
import errno
import os
import select
import struct

from pyrun.jsonio import dumps, loads
from pyrun.runtime.plan import high_fd
from pyrun.trace.steps import child_calls, kind_name
from pyrun.trace.tracer import Event

FIFO = "trace.fifo"
STEPS = "trace.json"
_REC = struct.Struct("iiiiq")


def _describe(plan, spec):
    return [{"kind": kind_name(op.kind), "phase": op.phase, "calls": child_calls(op, spec),
             "step": op.what} for op in plan.ops]


def _read_available(fd, buf):
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if not data:
            return True
        buf.extend(data)


def _events(steps, buf, host_pid):
    """Records -> Events.  Steps before a second-stage fork ran in the
    first stage, whose pid the record gives as seen from the host."""
    fork = next((i for i, s in enumerate(steps) if s["kind"] == "FORK"), -1)
    out = []
    for off in range(0, len(buf) - len(buf) % _REC.size, _REC.size):
        _, i, err, ns_pid, t_ns = _REC.unpack_from(buf, off)
        s = steps[i] if i < len(steps) else {"phase": "exec", "calls": ["(end of the plan)"], "step": ""}
        if i < fork:
            out.append(Event(t_ns, "stage1", ns_pid, s["phase"], s["calls"], "0", err, s["step"]))
        else:
            out.append(Event(t_ns, "init", host_pid, s["phase"], s["calls"], "0", err, s["step"],
                             ns_pid=ns_pid))
    return out


class CreateTrace:
    """Create's side: make the FIFO, give the child its write end
    (``write_fd``, at or above ``low``), then :meth:`collect`."""

    def __init__(self, state_dir, low):
        self.dir = state_dir
        path = os.path.join(state_dir, FIFO)
        os.mkfifo(path, 0o600)
        self.rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.write_fd = high_fd(os.open(path, os.O_WRONLY | os.O_CLOEXEC), low)
        self.steps = []

    def describe(self, plan, spec):
        """Word the plan's steps and save them for start."""
        self.steps = _describe(plan, spec)
        with open(os.path.join(self.dir, STEPS), "wb") as f:
            f.write(dumps(self.steps).encode())

    def collect(self, tracer, host_pid):
        """Add the child's records so far to ``tracer``; close our ends."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        buf = bytearray()
        _read_available(self.rfd, buf)
        os.close(self.rfd)
        for e in _events(self.steps, buf, host_pid):
            tracer.add(e)


def open_for_start(state_dir):
    """Open the FIFO's read end before start writes the exec fifo; None if
    the container was created without tracing."""
    try:
        fd = os.open(os.path.join(state_dir, FIFO), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    return fd


def drain_for_start(fd, state_dir, tracer, host_pid, timeout=10.0):
    """Read the child's records from the exec fifo write to end of file
    (execve, or the child's death) and add them to ``tracer`` (None:
    read and drop).  A successful execve leaves no record: it shows as the
    exec step with the time the pipe closed."""
    buf = bytearray()
    p = select.poll()
    p.register(fd, select.POLLIN)
    eof = False
    try:
        while not eof:
            if not p.poll(timeout * 1000):
                break
            eof = _read_available(fd, buf)
        t_eof = tracer.now() if tracer is not None else 0
    finally:
        os.close(fd)
    if tracer is None:
        return
    try:
        with open(os.path.join(state_dir, STEPS), "rb") as f:
            steps = loads(f.read())
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
        return
    events = _events(steps, buf, host_pid)
    for e in events:
        tracer.add(e)
    if eof and not any(e.err for e in events):
        i = max(i for i, s in enumerate(steps) if s["kind"] == "EXEC")
        s = steps[i]
        tracer.add(Event(t_eof, "init", host_pid, s["phase"], s["calls"],
                         "0 (seen when execve closed the trace pipe)", 0, s["step"],
                         ns_pid=events[-1].ns_pid if events else None))


def collect_pipe(tracer, plan, spec, rfd, host_pid):
    """exec's side: read the records from the read end ``rfd`` of a plain
    pipe until end of file (the process's execve, or its death) and add
    them to ``tracer``, worded from ``plan``.  Closes ``rfd``."""
    buf = bytearray()
    try:
        while True:
            data = os.read(rfd, 65536)
            if not data:
                break
            buf.extend(data)
    finally:
        os.close(rfd)
    steps = _describe(plan, spec)
    events = _events(steps, buf, host_pid)
    for e in events:
        tracer.add(e)
    if not any(e.err for e in events):
        i = max(i for i, s in enumerate(steps) if s["kind"] == "EXEC")
        s = steps[i]
        tracer.add(Event(tracer.now(), "init", host_pid, s["phase"], s["calls"],
                         "0 (seen when execve closed the trace pipe)", 0, s["step"],
                         ns_pid=events[-1].ns_pid if events else None))
