"""Named network namespaces, pinned by a bind mount (what ``ip netns`` does).

A named namespace is a file ``<root>/<name>`` on which the namespace's nsfs
inode (``/proc/thread-self/ns/net`` of the thread that created it) is bind
mounted; the namespace lives as long as that mount (or any process or open
fd in it) does.  ``root`` defaults to ``/run/pyrun/netns`` and is made a
shared mount, as iproute2 does for ``/run/netns`` (ip-netns(8)): an unmount
by :func:`delete` then also reaches the mount namespaces of containers
started later, so the namespace really goes away.

Namespaces are per *thread* in Linux: :func:`entered` moves only the
calling thread, :func:`run_in` runs a function in a short-lived thread
inside the namespace; a subprocess started from such a thread inherits it.

Everywhere in :mod:`pyrun.network` a namespace argument (``netns``) is a
path (``path(name)``, ``/proc/<pid>/ns/net``) or an open fd; ``None`` means
the calling thread's own namespace.
"""
import contextlib
import errno
import os
import threading

from pyrun import linux
from pyrun.errdefs import AlreadyExists, InvalidArgument, NotFound

DEFAULT_ROOT = "/run/pyrun/netns"

# Every nsfs inode lives on the one internal nsfs superblock, so a file is a
# pinned namespace when its st_dev is that of our own namespace links.
_NSFS_DEV = os.stat("/proc/self/ns/net").st_dev


def validate_name(name):
    """Check a namespace name: a single non-empty path component (not ``.``
    or ``..``) of at most 255 bytes.  Raises InvalidArgument."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name \
            or "\0" in name or len(os.fsencode(name)) > 255:
        raise InvalidArgument(f"invalid network namespace name {name!r}: want one path "
                              "component of 1-255 bytes, not '.' or '..'")


def path(name, root=DEFAULT_ROOT):
    """The path of the named namespace ``name`` under ``root`` (not checked
    to exist).  Raises InvalidArgument for a bad name."""
    validate_name(name)
    return os.path.join(root, name)


def is_pinned(p):
    """True if ``p`` is a file with a namespace bind-mounted on it."""
    try:
        return os.stat(p).st_dev == _NSFS_DEV
    except OSError:
        return False


def list_names(root=DEFAULT_ROOT):
    """Names of the namespaces pinned under ``root``, sorted."""
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in entries if is_pinned(os.path.join(root, n)))


def _share_root(root):
    # ip-netns(8) does the same: make the directory a shared mount (binding
    # it on itself first if it is not a mount point yet).
    os.makedirs(root, 0o755, exist_ok=True)
    try:
        linux.mount(None, root, None, linux.MS_SHARED | linux.MS_REC)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        linux.mount(root, root, None, linux.MS_BIND | linux.MS_REC)
        linux.mount(None, root, None, linux.MS_SHARED | linux.MS_REC)


@contextlib.contextmanager
def _root_lock(root):
    """Serialise create and delete under ``root`` (flock on its parent
    directory), so the last delete's unmount of the root cannot race a
    create's pin."""
    import fcntl
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, 0o755, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _unshare_root_if_empty(root):
    """Undo :func:`_share_root` once the last namespace is gone, so that
    pinning namespaces leaves no mount behind (ip-netns(8) leaves its
    /run/netns mounted; pyrun does not)."""
    from pyrun.fsutil import mount_points
    if os.listdir(root) or os.path.abspath(root) not in mount_points():
        return
    try:
        linux.umount2(root, linux.MNT_DETACH)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise


def _in_thread(fn, *args, **kw):
    box = {}

    def body():
        try:
            box["value"] = fn(*args, **kw)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=body, name="pyrun-netns")
    t.start()
    t.join()
    if "error" in box:
        raise box.pop("error")
    return box.get("value")


def _unshare_and_pin(target):
    linux.unshare(linux.CLONE_NEWNET)
    linux.mount("/proc/thread-self/ns/net", target, None, linux.MS_BIND)


def create(name, root=DEFAULT_ROOT):
    """Create a new, empty network namespace named ``name`` and pin it at
    ``<root>/<name>``; returns that path.  Only ``lo`` (down) is in it.

    Raises InvalidArgument (bad name), AlreadyExists (the name is taken),
    SyscallError (mount/unshare failed; nothing is left behind).
    Matches ``ip netns add`` (iproute2 ip/ipnetns.c).
    """
    target = path(name, root)
    with _root_lock(root):
        _share_root(root)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
        except FileExistsError:
            raise AlreadyExists(f"network namespace {name!r} already exists ({target})") from None
        os.close(fd)
        try:
            # unshare(2) moves only the calling thread: a throw-away thread
            # leaves this one where it was.
            _in_thread(_unshare_and_pin, target)
        except BaseException:
            os.unlink(target)
            _unshare_root_if_empty(root)
            raise
    return target


def delete(name, root=DEFAULT_ROOT):
    """Unpin the namespace ``name`` (lazy unmount) and remove its file.  The
    namespace itself ends once no process or fd holds it any more; its
    interfaces go with it (veth peers in other namespaces too), a moment
    later: the kernel tears namespaces down in a work queue.

    Raises InvalidArgument (bad name), NotFound (no such file under
    ``root``).  Matches ``ip netns delete``.
    """
    target = path(name, root)
    if not os.path.lexists(target):
        raise NotFound(f"network namespace {name!r} not found in {root}")
    with _root_lock(root):
        try:
            linux.umount2(target, linux.MNT_DETACH)
        except OSError as e:
            if e.errno != errno.EINVAL:  # EINVAL: not a mount point (a stale file)
                raise
        os.unlink(target)
        _unshare_root_if_empty(root)


def open_fd(netns):
    """An fd (O_RDONLY|O_CLOEXEC, the caller closes it) for the namespace
    ``netns``: a path to a pinned namespace or a ``/proc/<pid>/ns/net``
    link.  Raises NotFound if the path does not exist or holds no
    namespace."""
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"network namespace {netns} not found") from None
    if os.fstat(fd).st_dev != _NSFS_DEV:
        os.close(fd)
        raise NotFound(f"{netns} is not a namespace (nothing is mounted on it)")
    return fd


@contextlib.contextmanager
def scratch():
    """A new, empty, unnamed network namespace for the ``with`` block,
    given as a path (``/proc/<pid>/task/<tid>/ns/net``) that stays valid
    while a parked thread holds the namespace; it ends with the block.  No
    mount is made, so nothing can outlive the process."""
    ready = threading.Event()
    done = threading.Event()
    box = {}

    def park():
        try:
            linux.unshare(linux.CLONE_NEWNET)
            box["path"] = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"
        except BaseException as e:
            box["error"] = e
        ready.set()
        done.wait()

    t = threading.Thread(target=park, name="pyrun-netns-scratch", daemon=True)
    t.start()
    ready.wait()
    try:
        if "error" in box:
            raise box["error"]
        yield box["path"]
    finally:
        done.set()
        t.join()


@contextlib.contextmanager
def entered(netns):
    """Move the calling thread into ``netns`` (path or fd) for the ``with``
    block and back afterwards.  Only this thread moves; processes it starts
    inside the block are born in ``netns``.  Raises NotFound, or
    SyscallError (EINVAL if ``netns`` is not a network namespace)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = netns if isinstance(netns, int) else open_fd(netns)
        try:
            linux.setns(fd, linux.CLONE_NEWNET)
        finally:
            if fd is not netns:
                os.close(fd)
        try:
            yield
        finally:
            linux.setns(own, linux.CLONE_NEWNET)
    finally:
        os.close(own)


def run_in(netns, fn, *args, **kw):
    """Call ``fn(*args, **kw)`` in a new thread that has joined ``netns``
    (path or fd) and return its result or raise its exception.  ``None``
    runs it in the calling thread's namespace, still in a new thread."""
    if netns is None:
        return _in_thread(fn, *args, **kw)

    def inside():
        with entered(netns):
            return fn(*args, **kw)
    return _in_thread(inside)
