"""Teaching mode: record every kernel step that create, start, run, kill
and delete take (``pyrun --trace``, ``PYRUN_TRACE=1``, or
:func:`tracing` in the library).

This module is only the switch, and it is all the runtime imports when
tracing is off: the verbs ask :func:`current` once and do no other work
when it is None.  The recorder and its output live in
:mod:`pyrun.trace.tracer`, the wording of the child's steps in
:mod:`pyrun.trace.steps`.
"""
from _thread import _local

# Per thread, as the daemon runs containers from several threads at once.
# (_thread is built in; contextvars would load a shared library on every
# CLI call, tracing or not.)
_state = _local()


class _NoSpan:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ``with (NO_SPAN if tr is None else tr.span(...)):`` when a call is traced.
NO_SPAN = _NoSpan()


def current():
    """The active :class:`~pyrun.trace.tracer.Tracer`, or None (off)."""
    return getattr(_state, "tracer", None)


class tracing:
    """``with tracing(tracer):`` makes ``tracer`` the active one in this
    thread, e.g. ``tracing(Tracer(fmt="json"))``; None switches it off."""

    def __init__(self, tracer):
        self.tracer = tracer
        self._saved = None

    def __enter__(self):
        self._saved = current()
        _state.tracer = self.tracer
        return self.tracer

    def __exit__(self, *exc):
        _state.tracer = self._saved
