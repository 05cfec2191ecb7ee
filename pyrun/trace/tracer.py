"""The trace recorder and its two outputs (readable text, JSON lines).

Events come from two sides.  The runtime records its own calls (clone,
uid_map writes, cgroup file writes, hooks, the exec fifo write, signals,
cleanup) as it makes them.  The container's child stage, which runs C
between clone and execve, writes one fixed-size record per step to a
trace pipe (native/container.c ``trace_step``); :mod:`pyrun.trace.child`
turns those into events.  Both use CLOCK_MONOTONIC, so :meth:`Tracer.flush`
can merge them in time order.  Output goes to stderr or to the file named
by PYRUN_TRACE_FILE, never to stdout (it belongs to the container).
"""
import errno as _errno
import os
import time

from pyrun.trace.steps import PHASES


class Event:
    """One step.  ``t_ns``: CLOCK_MONOTONIC; ``proc``: "runtime", "init"
    or "stage1"; ``pid``: on the host, ``ns_pid``: in the container's pid
    namespace (None for the runtime); ``calls``: the syscalls as text, the
    first being the step's main one; ``err``: errno, 0 on success."""
    __slots__ = ("t_ns", "proc", "pid", "ns_pid", "phase", "calls", "result", "err", "step")

    def __init__(self, t_ns, proc, pid, phase, calls, result="0", err=0, step="", ns_pid=None):
        self.t_ns, self.proc, self.pid, self.ns_pid = t_ns, proc, pid, ns_pid
        self.phase, self.calls, self.result, self.err, self.step = phase, calls, result, err, step

    def who(self):
        if self.ns_pid is None:
            return f"{self.proc}[{self.pid}]"
        return f"{self.proc}[{self.pid} host, {self.ns_pid} in container]"

    def outcome(self):
        if self.err:
            return f"-1 {_errno.errorcode.get(self.err, str(self.err))} ({os.strerror(self.err)})"
        return self.result


class Tracer:
    """Collects :class:`Event` s and writes them, grouped by verb, at each
    :meth:`flush`.  ``fmt``: "text" or "json"; ``path``: append to this
    file instead of writing to ``fd`` (default 2, stderr)."""

    def __init__(self, fmt="text", path=None, fd=2):
        if fmt not in ("text", "json"):
            from pyrun.errdefs import InvalidArgument
            raise InvalidArgument(f"trace format {fmt!r}: expected text or json")
        self.fmt = fmt
        self.path = path
        self.fd = fd
        self.start_ns = time.monotonic_ns()
        self.events = []
        self.pid = os.getpid()

    @staticmethod
    def now():
        return time.monotonic_ns()

    def add(self, event):
        self.events.append(event)

    def call(self, phase, call, result="0", err=0, t=None, step="", more=()):
        """Record a call the runtime itself made (``call``: the syscall
        with its arguments as text)."""
        self.add(Event(self.now() if t is None else t, "runtime", self.pid, phase,
                       [call, *more], result, err, step))

    def span(self, phase, call, step=""):
        """``with tracer.span(phase, "write(...)"):`` records the call with
        its errno if the block raises OSError (and re-raises)."""
        return _Span(self, phase, call, step)

    def flush(self, verb):
        """Write the events so far in time order under the heading
        ``verb`` (e.g. "create demo") and forget them."""
        events = sorted(self.events, key=lambda e: e.t_ns)
        self.events = []
        if not events:
            return
        text = self._json(verb, events) if self.fmt == "json" else self._text(verb, events)
        data = text.encode()
        if self.path:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        else:
            while data:
                data = data[os.write(self.fd, data):]

    def _us(self, e):
        return (e.t_ns - self.start_ns) // 1000

    def _text(self, verb, events):
        lines = [f"== pyrun {verb}"]
        phase = None
        for e in events:
            if e.phase != phase:
                phase = e.phase
                lines.append(f"-- {phase}: {PHASES.get(phase, '')}")
            lines.append(f"{self._us(e):>9}us  {e.who():<34} {e.calls[0]} = {e.outcome()}")
            for c in e.calls[1:]:
                lines.append(f"{'':>11}  {'':<34}   then {c}")
            if e.err and e.step:
                lines.append(f"{'':>11}  {'':<34}   ^ failed step: {e.step}")
        return "\n".join(lines) + "\n"

    def _json(self, verb, events):
        from pyrun.jsonio import dumps
        out = []
        for e in events:
            out.append(dumps({
                "verb": verb, "t_us": self._us(e), "proc": e.proc, "pid": e.pid,
                "ns_pid": e.ns_pid, "phase": e.phase, "call": e.calls[0], "then": e.calls[1:],
                "step": e.step, "result": None if e.err else e.result,
                "errno": _errno.errorcode.get(e.err, str(e.err)) if e.err else None,
            }))
        return "\n".join(out) + "\n"


class _Span:
    __slots__ = ("tracer", "phase", "call_text", "step", "t")

    def __init__(self, tracer, phase, call_text, step):
        self.tracer, self.phase, self.call_text, self.step = tracer, phase, call_text, step

    def __enter__(self):
        self.t = self.tracer.now()
        return self

    def __exit__(self, typ, exc, tb):
        if typ is None:
            self.tracer.call(self.phase, self.call_text, t=self.t, step=self.step)
        elif issubclass(typ, OSError) and exc.errno:
            self.tracer.call(self.phase, self.call_text, err=exc.errno, t=self.t, step=self.step)
        return False


def from_environ(flag=False, fmt=None):
    """The tracer the CLI asks for: ``--trace`` (``flag``) or
    PYRUN_TRACE=1|text|json; ``fmt`` (``--trace-format``) wins over the
    variable's format; PYRUN_TRACE_FILE names an output file.  None when
    tracing is off."""
    env = os.environ.get("PYRUN_TRACE", "")
    if not flag and env in ("", "0"):
        return None
    fmt = fmt or (env if env in ("text", "json") else "text")
    return Tracer(fmt, os.environ.get("PYRUN_TRACE_FILE") or None)
