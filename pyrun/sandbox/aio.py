"""asyncio variants: ``run_async`` and ``AsyncSandbox``.

Each call runs the blocking one in the loop's default executor (a
thread), so the event loop never waits on a container.  Cancelling the
awaiting task kills the sandbox's processes through an eventfd the
worker's I/O loop watches, waits for the cleanup to finish, and then
re-raises CancelledError: a cancelled task leaves nothing behind either.
"""
import asyncio
import functools
import os

from pyrun.sandbox import api
from pyrun.sandbox.api import Cancelled


async def _call(fn, *args, **kw):
    loop = asyncio.get_running_loop()
    cancel = os.eventfd(0, os.EFD_CLOEXEC)
    fut = loop.run_in_executor(None, functools.partial(fn, *args, _cancel_fd=cancel, **kw))
    try:
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            os.eventfd_write(cancel, 1)
            try:
                await fut  # the worker kills, reaps and cleans up
            except Cancelled:
                pass
            raise
    finally:
        os.close(cancel)


async def run_async(argv, **kw):
    """:func:`pyrun.sandbox.run` for asyncio: same arguments, same
    :class:`Result`, same errors."""
    return await _call(api.run, argv, **kw)


class AsyncSandbox:
    """:class:`pyrun.sandbox.Sandbox` for asyncio::

        async with AsyncSandbox(rootfs=...) as sb:
            r = await sb.exec(["echo", "hi"])
    """

    def __init__(self, **kw):
        self._kw = kw
        self._sb = None

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        self._sb = await loop.run_in_executor(None, functools.partial(api.Sandbox, **self._kw))
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def exec(self, argv, **kw):
        if self._sb is None:
            from pyrun.errdefs import FailedPrecondition
            raise FailedPrecondition("the sandbox is not open (use 'async with')")
        return await _call(self._sb.exec, argv, **kw)

    async def close(self):
        if self._sb is not None:
            sb, self._sb = self._sb, None
            await asyncio.get_running_loop().run_in_executor(None, sb.close)
