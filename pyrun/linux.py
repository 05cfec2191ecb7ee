"""Every syscall pyrun makes from Python goes through this module.

The functions wrap ``pyrun._native`` (native/syscalls.c) and raise
:class:`SyscallError`, an :class:`OSError` subclass that keeps ``errno`` and
``filename`` and names the call, its paths and its flags (``MS_BIND|MS_REC``),
as runc's ``mountError`` does.  The container child stage does not come
through here: it runs in C (native/container.c), see native/README.md.
"""
import errno as _errno
import os

from pyrun._native import ffi, lib

# clone(2) / unshare(2) / setns(2) namespace flags.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
CLONE_PIDFD = 0x00001000
CLONE_FS = 0x00000200  # unshare(2): a private cwd/root/umask for this thread
CLONE_INTO_CGROUP = 0x200000000  # clone3(2): born in the cgroup2 group of clone_args.cgroup

CLONE_FLAGS = {
    "CLONE_NEWNS": CLONE_NEWNS,
    "CLONE_NEWCGROUP": CLONE_NEWCGROUP,
    "CLONE_NEWUTS": CLONE_NEWUTS,
    "CLONE_NEWIPC": CLONE_NEWIPC,
    "CLONE_NEWUSER": CLONE_NEWUSER,
    "CLONE_NEWPID": CLONE_NEWPID,
    "CLONE_NEWNET": CLONE_NEWNET,
    "CLONE_NEWTIME": CLONE_NEWTIME,
    "CLONE_PIDFD": CLONE_PIDFD,
    "CLONE_FS": CLONE_FS,
    "CLONE_INTO_CGROUP": CLONE_INTO_CGROUP,
}

# mount(2) flags (<sys/mount.h>).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000

MS_FLAGS = {
    name: value
    for name, value in globals().items()
    if name.startswith("MS_") and isinstance(value, int)
}

MNT_FORCE = 1
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8


def flag_names(value, table):
    """Render ``value`` as ``A|B|0x..`` using the names in ``table``."""
    names = []
    for name, bit in sorted(table.items(), key=lambda kv: kv[1]):
        if bit and value & bit == bit:
            names.append(name)
            value &= ~bit
    if value:
        names.append(hex(value))
    return "|".join(names) or "0"


class SyscallError(OSError):
    """A failed syscall.  ``errno`` and ``filename`` survive; ``syscall``
    names the call and ``detail`` its arguments in readable form."""

    def __init__(self, err, syscall, detail="", filename=None):
        self.syscall = syscall
        self.detail = detail
        msg = f"{syscall}({detail}): {os.strerror(err)}" if detail else f"{syscall}: {os.strerror(err)}"
        super().__init__(err, msg, filename)

    def __str__(self):
        return f"[Errno {self.errno} {_errno.errorcode.get(self.errno, '?')}] {self.strerror}"


def _check(ret, syscall, detail="", filename=None):
    if ret < 0:
        raise SyscallError(ffi.errno, syscall, detail, filename)
    return ret


def _b(s):
    if s is None:
        return ffi.NULL
    return os.fsencode(s)


def mount(source, target, fstype, flags=0, data=None):
    """mount(2).  Raises SyscallError naming source, target, type, flags
    by name and data."""
    ret = lib.pr_mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    if ret < 0:
        detail = (f"{source!r}, {target!r}, {fstype!r}, "
                  f"{flag_names(flags, MS_FLAGS)}, {data!r}")
        raise SyscallError(ffi.errno, "mount", detail, target)


def umount2(target, flags=0):
    """umount2(2); ``flags`` is MNT_DETACH, MNT_FORCE, UMOUNT_NOFOLLOW."""
    _check(lib.pr_umount2(_b(target), flags), "umount2", f"{target!r}, {flags}", target)


def unshare(flags):
    """unshare(2) with CLONE_* flags."""
    _check(lib.pr_unshare(flags), "unshare", flag_names(flags, CLONE_FLAGS))


def setns(fd, nstype=0):
    """setns(2): join the namespace that ``fd`` refers to."""
    _check(lib.pr_setns(fd, nstype), "setns", f"{fd}, {flag_names(nstype, CLONE_FLAGS)}")


def pivot_root(new_root, put_old):
    """pivot_root(2)."""
    _check(lib.pr_pivot_root(_b(new_root), _b(put_old)), "pivot_root",
           f"{new_root!r}, {put_old!r}", new_root)


def sethostname(name):
    """sethostname(2) in the caller's UTS namespace."""
    b = os.fsencode(name)
    _check(lib.pr_sethostname(b, len(b)), "sethostname", repr(name))


def setdomainname(name):
    """setdomainname(2) in the caller's UTS namespace."""
    b = os.fsencode(name)
    _check(lib.pr_setdomainname(b, len(b)), "setdomainname", repr(name))


def set_child_subreaper(on=True):
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are re-parented
    to this process instead of init (how a task monitor keeps its
    container's exit status)."""
    _check(lib.pr_prctl(36, 1 if on else 0, 0, 0, 0), "prctl", "PR_SET_CHILD_SUBREAPER")


def pidfd_open(pid):
    """pidfd_open(2); returns the fd."""
    return _check(lib.pr_pidfd_open(pid, 0), "pidfd_open", str(pid))


def pidfd_send_signal(pidfd, sig):
    """pidfd_send_signal(2): signal the process that ``pidfd`` refers to."""
    _check(lib.pr_pidfd_send_signal(pidfd, sig, 0), "pidfd_send_signal", f"{pidfd}, {sig}")


def close_range(first, last=0xFFFFFFFF, flags=0):
    """close_range(2)."""
    _check(lib.pr_close_range(first, last, flags), "close_range", f"{first}, {last}, {flags}")


def mount_setattr(path, attr_set=0, attr_clr=0, propagation=0, recursive=False, dfd=-100):
    """mount_setattr(2), e.g. MOUNT_ATTR_RDONLY recursively (``rro``)."""
    flags = 0x8000 if recursive else 0  # AT_RECURSIVE
    _check(lib.pr_mount_setattr(dfd, _b(path), flags, attr_set, attr_clr, propagation, 0),
           "mount_setattr", f"{path!r}, set={attr_set:#x}, clr={attr_clr:#x}", path)


# bpf(2), for cgroup v2 device filters (native/cgroup_bpf.c).
BPF_CGROUP_DEVICE = 6     # enum bpf_attach_type
BPF_F_ALLOW_MULTI = 2


def bpf_prog_load_cgroup_device(insns, license):
    """BPF_PROG_LOAD of a BPF_PROG_TYPE_CGROUP_DEVICE program; ``insns`` is
    the encoded ``struct bpf_insn`` array.  Returns the program fd.  A
    rejection raises SyscallError whose detail holds the verifier's log."""
    log = ffi.new("char[]", 64 * 1024)
    fd = lib.pr_bpf_prog_load_cgroup_device(insns, len(insns) // 8, license.encode(), log, len(log))
    if fd < 0:
        err = ffi.errno
        text = ffi.string(log).decode(errors="replace").strip()
        raise SyscallError(err, "bpf", f"BPF_PROG_LOAD cgroup_device, {len(insns) // 8} insns"
                           + (f"; verifier: {text}" if text else ""))
    return fd


def bpf_prog_attach(target_fd, prog_fd, attach_type, flags=0):
    """BPF_PROG_ATTACH ``prog_fd`` to the cgroup directory ``target_fd``."""
    _check(lib.pr_bpf_prog_attach(target_fd, prog_fd, attach_type, flags), "bpf",
           f"BPF_PROG_ATTACH target_fd={target_fd}, prog_fd={prog_fd}, type={attach_type}, flags={flags}")


def bpf_prog_detach(target_fd, prog_fd, attach_type):
    """BPF_PROG_DETACH ``prog_fd`` from the cgroup directory ``target_fd``."""
    _check(lib.pr_bpf_prog_detach(target_fd, prog_fd, attach_type), "bpf",
           f"BPF_PROG_DETACH target_fd={target_fd}, prog_fd={prog_fd}, type={attach_type}")


def bpf_prog_query(target_fd, attach_type):
    """BPF_PROG_QUERY: the ids of the programs attached to the cgroup
    directory ``target_fd`` (not its ancestors)."""
    room = 16
    while True:
        ids = ffi.new("uint32_t[]", room)
        cnt = ffi.new("uint32_t *", room)
        if lib.pr_bpf_prog_query(target_fd, attach_type, ids, cnt) == 0:
            return list(ids[0:cnt[0]])
        if ffi.errno != _errno.ENOSPC:
            raise SyscallError(ffi.errno, "bpf", f"BPF_PROG_QUERY target_fd={target_fd}, type={attach_type}")
        room = cnt[0]


def bpf_prog_get_fd_by_id(prog_id):
    """BPF_PROG_GET_FD_BY_ID; returns a new fd for the program."""
    return _check(lib.pr_bpf_prog_get_fd_by_id(prog_id), "bpf", f"BPF_PROG_GET_FD_BY_ID {prog_id}")


# The new mount API (fsopen(2), fsconfig(2), fsmount(2), move_mount(2),
# open_tree(2)); values from <linux/mount.h>.
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_NOSYMFOLLOW = 0x200000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100

_FSCONFIG_CMDS = {FSCONFIG_SET_FLAG: "FSCONFIG_SET_FLAG", FSCONFIG_SET_STRING: "FSCONFIG_SET_STRING",
                  FSCONFIG_SET_FD: "FSCONFIG_SET_FD", FSCONFIG_CMD_CREATE: "FSCONFIG_CMD_CREATE"}


def fs_context_log(fd):
    """The messages the kernel queued on an fsopen(2) context (``e overlay:
    …`` lines), joined by ``; ``.  Empty if there are none."""
    lines = []
    while True:
        try:
            msg = os.read(fd, 4096)
        except OSError:  # ENODATA: the queue is empty
            break
        if not msg:
            break
        lines.append(os.fsdecode(msg))
    return "; ".join(lines)


def _fs_error(fd, syscall, detail, filename=None):
    err = ffi.errno
    log = fs_context_log(fd)
    raise SyscallError(err, syscall, f"{detail}{' [' + log + ']' if log else ''}", filename)


def fsopen(fsname, flags=FSOPEN_CLOEXEC):
    """fsopen(2): a filesystem context fd for ``fsname`` (e.g. "overlay")."""
    return _check(lib.pr_fsopen(_b(fsname), flags), "fsopen", repr(fsname))


def fsconfig(fd, cmd, key=None, value=None, aux=0):
    """fsconfig(2) on an fsopen(2) context.  A failure carries the kernel's
    message for the context (e.g. ``overlay: failed to resolve 'x'``)."""
    if lib.pr_fsconfig(fd, cmd, _b(key), _b(value), aux) < 0:
        _fs_error(fd, "fsconfig", f"{fd}, {_FSCONFIG_CMDS.get(cmd, cmd)}, {key!r}, {value!r}, {aux}")


def fsmount(fd, flags=FSMOUNT_CLOEXEC, attr_flags=0):
    """fsmount(2): a detached mount fd for a created filesystem context;
    ``attr_flags`` are MOUNT_ATTR_*."""
    ret = lib.pr_fsmount(fd, flags, attr_flags)
    if ret < 0:
        _fs_error(fd, "fsmount", f"{fd}, {flags:#x}, {attr_flags:#x}")
    return ret


def move_mount(from_dfd, from_path, to_dfd, to_path, flags=0):
    """move_mount(2), e.g. attach an fsmount(2) fd at ``to_path``
    (``from_path=""`` with MOVE_MOUNT_F_EMPTY_PATH)."""
    _check(lib.pr_move_mount(from_dfd, _b(from_path), to_dfd, _b(to_path), flags),
           "move_mount", f"{from_dfd}, {from_path!r}, {to_dfd}, {to_path!r}, {flags:#x}", to_path)


# openat2(2) resolve flags (<linux/openat2.h>).
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20

RESOLVE_FLAGS = {
    "RESOLVE_NO_XDEV": RESOLVE_NO_XDEV,
    "RESOLVE_NO_MAGICLINKS": RESOLVE_NO_MAGICLINKS,
    "RESOLVE_NO_SYMLINKS": RESOLVE_NO_SYMLINKS,
    "RESOLVE_BENEATH": RESOLVE_BENEATH,
    "RESOLVE_IN_ROOT": RESOLVE_IN_ROOT,
    "RESOLVE_CACHED": RESOLVE_CACHED,
}


def openat2(dirfd, path, flags, mode=0, resolve=0):
    """openat2(2): open ``path`` relative to ``dirfd`` with ``resolve``
    (RESOLVE_*) restricting how the path is walked; returns the fd.

    With RESOLVE_IN_ROOT every ``..``, absolute symlink and absolute path is
    resolved as if ``dirfd`` were ``/``, so the result can never lie outside
    it.  EAGAIN (a rename raced the walk, see openat2(2)) is retried a few
    times before it is raised.  Raises SyscallError naming the path, the
    open flags and the resolve flags by name.
    """
    b = _b(path)
    for _ in range(16):
        fd = lib.pr_openat2(dirfd, b, flags, mode, resolve)
        if fd >= 0:
            return fd
        err = ffi.errno
        if err != _errno.EAGAIN or resolve & RESOLVE_CACHED:
            break
    raise SyscallError(err, "openat2",
                       f"{dirfd}, {path!r}, {flags:#o}, {flag_names(resolve, RESOLVE_FLAGS)}", path)
