"""pyrun: a container runtime and image/container manager for Linux.

The sandbox API is exported here but imported on first use, so that
``import pyrun`` stays cheap for the CLI."""

__version__ = "0.1.0"

__all__ = ["run", "run_async", "Sandbox", "AsyncSandbox", "Result", "Bind"]


def __getattr__(name):
    if name in __all__:
        from pyrun import sandbox
        return getattr(sandbox, name)
    raise AttributeError(f"module 'pyrun' has no attribute {name!r}")
