"""The only place that touches cgroup files.

Every write goes through :func:`write_file` and every directory change
through :func:`make_dir` / :func:`remove_dir`, each with the hierarchy root
as an argument, so unit tests point the managers at a temporary directory
(runc: ``cgroups.WriteFile``; youki's tmpfs fixtures).  Errors are
:class:`pyrun.linux.SyscallError` (an OSError) naming the file and the value.
"""
import errno
import os
import time

from pyrun import trace
from pyrun.errdefs import FailedPrecondition
from pyrun.linux import SyscallError


def join(root, path, file=""):
    """``root`` + cgroup ``path`` (absolute within the hierarchy) + ``file``.
    ``path`` must be clean (no ``..``); new_manager guarantees that."""
    full = os.path.join(root, path.lstrip("/")) if path.strip("/") else root
    return os.path.join(full, file) if file else full


def write_file(root, path, file, value):
    """Write ``value`` (str or int) to ``file`` of cgroup ``path`` below the
    hierarchy ``root``, in one write(2).

    The file is never created: a missing file raises SyscallError(ENOENT),
    which the managers turn into a clear "not available on this host".
    O_NOFOLLOW keeps a planted symlink from redirecting the write.
    """
    full = join(root, path, file)
    data = str(value).encode()
    tr = trace.current()
    try:
        with (trace.NO_SPAN if tr is None else tr.span("cgroups", f"write(\"{full}\", {str(value)!r})")):
            fd = os.open(full, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
    except OSError as e:
        raise SyscallError(e.errno, "write", f"{str(value)!r} to {full}", full) from None


def read_file(root, path, file):
    """The text of ``file`` in cgroup ``path`` (SyscallError when absent)."""
    full = join(root, path, file)
    try:
        with open(full, "rb") as f:
            return f.read().decode()
    except OSError as e:
        raise SyscallError(e.errno, "read", full, full) from None


def exists(root, path, file=""):
    return os.path.exists(join(root, path, file))


def make_dir(root, path):
    """mkdir one cgroup directory; returns False if it already existed."""
    full = join(root, path)
    tr = trace.current()
    try:
        with (trace.NO_SPAN if tr is None else tr.span("cgroups", f"mkdir(\"{full}\", 0755)")):
            os.mkdir(full, 0o755)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        raise SyscallError(e.errno, "mkdir", full, full) from None


def remove_dir(root, path, attempts=10):
    """rmdir a cgroup directory and, first, any child groups below it (made
    by the container itself).  EBUSY (tasks still exiting) is retried with a
    growing sleep, as runc's RemovePath does; a missing directory is fine."""
    full = join(root, path)
    if not os.path.isdir(full):
        return
    for entry in os.scandir(full):
        # Only directories are child groups; cgroupfs files cannot be removed.
        if entry.is_dir(follow_symlinks=False):
            remove_dir(root, os.path.join(path, entry.name), attempts)
    delay = 0.01
    tr = trace.current()
    for attempt in range(attempts):
        try:
            with (trace.NO_SPAN if tr is None else tr.span("cleanup", f"rmdir(\"{full}\")")):
                os.rmdir(full)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or attempt == attempts - 1:
                raise SyscallError(e.errno, "rmdir", full, full) from None
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class Group:
    """One cgroup directory: ``path`` in the hierarchy mounted at ``root``,
    serving ``controller`` (a v1 controller name, or "" for cgroup2).
    The setters write through here so that a missing file becomes a clear
    FailedPrecondition naming the file, the value and the controller."""

    def __init__(self, root, path, controller):
        self.root, self.path, self.controller = root, path, controller

    @property
    def dir(self):
        return join(self.root, self.path)

    def what(self):
        return f"the {self.controller} controller" if self.controller else "cgroup v2"

    def exists(self, file):
        return exists(self.root, self.path, file)

    def read(self, file):
        return read_file(self.root, self.path, file)

    def write(self, file, value):
        try:
            write_file(self.root, self.path, file, value)
        except SyscallError as e:
            if e.errno != errno.ENOENT:
                raise
            raise FailedPrecondition(
                f"cannot write {str(value)!r} to {file}: {self.dir} has no such file "
                f"({self.what()} does not offer it on this host)") from e

    def require(self, file, what):
        """FailedPrecondition unless ``file`` exists; ``what`` names the
        resource asked for (``linux.resources.memory.swap``)."""
        if not self.exists(file):
            raise FailedPrecondition(f"{what} needs {file}, which {self.dir} does not have "
                                     f"({self.what()} does not offer it on this host)")

    def keyed(self, file):
        """A flat-keyed file (``key value`` lines) as {key: int}."""
        out = {}
        for line in self.read(file).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
        return out

    def number(self, file, default=0):
        """An integer file; "max" (v2) reads as 2**64-1 like runc; a missing
        file gives ``default``."""
        if not self.exists(file):
            return default
        text = self.read(file).strip()
        return (1 << 64) - 1 if text == "max" else int(text)
