"""Sandboxes for untrusted code: ``run`` a command in a throw-away
container, or keep a ``Sandbox`` open for several; asyncio variants
``run_async`` and ``AsyncSandbox``.  See docs/sandbox.md."""
from pyrun.sandbox.aio import AsyncSandbox, run_async
from pyrun.sandbox.api import Cancelled, Result, Sandbox, run
from pyrun.sandbox.config import Bind, remove_cgroup_parent

__all__ = ["run", "run_async", "Sandbox", "AsyncSandbox", "Result", "Bind", "Cancelled",
           "remove_cgroup_parent"]
