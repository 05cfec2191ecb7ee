"""Hooks that run in the runtime's namespace: prestart, createRuntime,
poststart and poststop (runtime spec config.md "POSIX-platform Hooks").
createContainer and startContainer hooks run inside the container and are
steps of the child stage (see plan.py).

Each hook gets the container's state JSON on stdin and runs with exactly
the env the spec gives.  ``timeout`` is in seconds.
"""
import os

from pyrun import trace
from pyrun.errdefs import FailedPrecondition


class HookError(FailedPrecondition):
    """A hook exited non-zero, could not run, or timed out."""


def run_hooks(kind, hooks, state, warn_only=False):
    """Run ``hooks`` (tuple of :class:`~pyrun.oci.spec.Hook`) in order with
    ``state`` (the runtime-spec state dict) on stdin.  Raises HookError
    for the first failure; with ``warn_only`` (poststart, poststop: runtime
    spec "Lifecycle" steps 11 and 13) every hook runs and each failure is
    a warning on stderr."""
    if not hooks:
        return
    if warn_only:
        for i, h in enumerate(hooks):
            try:
                run_hooks(kind, (h,), state)
            except HookError as e:
                warn(str(e).replace(f"{kind} hook 0", f"{kind} hook {i}", 1))
        return
    import subprocess

    from pyrun.jsonio import dumps

    data = dumps(state).encode()
    tr = trace.current()
    for i, h in enumerate(hooks):
        env = dict(e.split("=", 1) for e in h.env if "=" in e)
        t0 = tr.now() if tr is not None else 0
        try:
            r = subprocess.run(list(h.args) or [h.path], executable=h.path, input=data,
                               env=env, timeout=h.timeout, capture_output=True)
            if tr is not None:
                tr.call("hooks", f"fork + execve({h.path!r}, {list(h.args) or [h.path]}) + wait: "
                        f"{kind} hook {i}, the state JSON on its stdin",
                        f"exit status {r.returncode}", t=t0)
        except subprocess.TimeoutExpired:
            raise HookError(f"{kind} hook {i} ({h.path}) timed out after {h.timeout}s") from None
        except OSError as e:
            if tr is not None:
                tr.call("hooks", f"fork + execve({h.path!r}, {list(h.args) or [h.path]}): {kind} hook {i}",
                        err=e.errno, t=t0)
            raise HookError(f"{kind} hook {i} ({h.path}): {e.strerror}") from None
        if r.returncode != 0:
            detail = r.stderr.decode(errors="replace").strip()[-500:]
            raise HookError(f"{kind} hook {i} ({h.path}) exited with status {r.returncode}"
                            + (f": {detail}" if detail else ""))


def warn(msg):
    os.write(2, f"pyrun: warning: {msg}\n".encode())
