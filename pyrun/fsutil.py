"""Filesystem helpers that are safe to use as root on a shared machine."""
import os
import stat

from pyrun.errdefs import FailedPrecondition


def _unescape(field):
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(pid="self"):
    """Mount points (absolute paths) listed in ``/proc/<pid>/mountinfo``."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f]


def mounts_under(path):
    """Mount points at or below ``path`` (after realpath), deepest first."""
    root = os.path.realpath(path)
    prefix = root.rstrip("/") + "/"
    found = [m for m in mount_points() if m == root or m.startswith(prefix)]
    return sorted(set(found), key=len, reverse=True)


def remove_tree(path):
    """Remove ``path`` and everything below it without ever crossing into
    another mount.

    Refuses (FailedPrecondition) if any mount point sits at or below
    ``path``, and re-checks the device of every directory on the way down
    (a mount made during the walk).  Missing ``path`` is not an error.
    Symlinks are removed, never followed.
    """
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        os.unlink(path)
        return
    held = mounts_under(path)
    if held:
        raise FailedPrecondition(f"refusing to remove {path}: mount points below it: {held}")
    dev = top.st_dev
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _clear_dir(fd, dev, path)
    finally:
        os.close(fd)
    os.rmdir(path)


def remove_at(dir_fd, name):
    """Remove the entry ``name`` of the directory open as ``dir_fd``: a
    directory with everything below it, anything else by unlink.  Symlinks
    are removed, never followed.  Refuses (FailedPrecondition) if a mount
    point sits at or below it.  A missing ``name`` is not an error."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        where = os.readlink(f"/proc/self/fd/{sub}")
        held = mounts_under(where)
        if held or os.fstat(sub).st_dev != os.fstat(dir_fd).st_dev:
            raise FailedPrecondition(f"refusing to remove {where}: mount points below it: "
                                     f"{held or [where]}")
        _clear_dir(sub, st.st_dev, where)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dir_fd)


def _clear_dir(dfd, dev, where):
    for entry in os.scandir(dfd):
        st = os.lstat(entry.name, dir_fd=dfd)
        if stat.S_ISDIR(st.st_mode):
            if st.st_dev != dev:
                raise FailedPrecondition(f"refusing to cross a mount point at {where}/{entry.name}")
            sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            try:
                if os.fstat(sub).st_dev != dev:
                    raise FailedPrecondition(f"refusing to cross a mount point at {where}/{entry.name}")
                _clear_dir(sub, dev, f"{where}/{entry.name}")
            finally:
                os.close(sub)
            os.rmdir(entry.name, dir_fd=dfd)
        else:
            os.unlink(entry.name, dir_fd=dfd)


def atomic_write(path, data, mode=0o600, durable=True):
    """Write ``data`` (bytes) to ``path`` atomically: temp file, fsync, rename.
    ``durable=False`` skips the fsync, for state that does not outlive a
    reboot anyway (readers still never see a partial file)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
