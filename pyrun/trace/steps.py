"""What each step of the child stage does at the kernel boundary, in words.

:func:`child_calls` turns a planned :class:`~pyrun.runtime.plan.Op` into
the syscalls that native/container.c makes for it (``run_op``), with flags
and capabilities by name.  :data:`PHASES` says why each phase exists.
"""
import os

from pyrun import _native
from pyrun import linux as L
from pyrun.oci.spec import CAP_NUMBERS, RLIMITS

lib = _native.lib

# Phase -> why it exists (one line, shown above each group of steps).
PHASES = {
    "setup": "prepare what the container's init will need: the state directory and the exec fifo",
    "namespaces": "clone/unshare/setns: give the container its own view of pids, mounts, "
                  "hostname, IPC and network (the kernel objects that make it a container)",
    "rootfs": "mount: build the container's file tree in its own mount namespace, "
              "where the host never sees these mounts",
    "devices": "mknod/symlink: give /dev only the device nodes the container may use",
    "hooks": "hooks: let the caller's tools (networking, GPUs, ...) act at fixed points of the lifecycle",
    "cgroups": "cgroup file writes: account for and cap the CPU, memory and pids of the container",
    "pivot": "pivot_root: swap the root so that the host's filesystem is no longer reachable",
    "identity": "setresuid/capset/prctl: become the spec's user with only its capabilities, "
                "so that root in the container is not root on the host",
    "limits": "rlimits, sysctls and the seccomp filter: cap what the process may use and "
              "which syscalls it may make",
    "exec": "execve: wait for start, then replace the runtime's code with the container's program",
    "signal": "kill: signal the init through a pidfd, which cannot hit a recycled pid",
    "cleanup": "delete: stop the init and remove what create made (cgroups, state); the kernel "
               "unmounts the container's mounts when its mount namespace's last process exits",
}

_KIND = {getattr(lib, n): n[len("PR_OP_"):] for n in dir(lib) if n.startswith("PR_OP_")}
_CAP_NAMES = {v: k for k, v in CAP_NUMBERS.items()}
_RLIMIT_NAMES = {v: k for k, v in RLIMITS.items()}
_S_IF = {0o020000: "S_IFCHR", 0o060000: "S_IFBLK", 0o010000: "S_IFIFO"}
_ATTRS = {"MOUNT_ATTR_RDONLY": 0x1, "MOUNT_ATTR_NOSUID": 0x2, "MOUNT_ATTR_NODEV": 0x4,
          "MOUNT_ATTR_NOEXEC": 0x8, "MOUNT_ATTR_NOATIME": 0x10, "MOUNT_ATTR_STRICTATIME": 0x20,
          "MOUNT_ATTR_NOSYMFOLLOW": 0x200000}


def kind_name(kind):
    return _KIND.get(kind, str(kind))


def clone_flags(flags):
    return L.flag_names(flags, L.CLONE_FLAGS)


def _q(s):
    return "NULL" if s is None else '"' + (s.decode(errors="replace") if isinstance(s, bytes) else s) + '"'


def _ms(flags):
    return L.flag_names(flags, L.MS_FLAGS)


def _caps(mask):
    return "[" + ", ".join(_CAP_NAMES.get(i, str(i)) for i in range(64) if mask >> i & 1) + "]"


def seccomp_summary(raw):
    """``linux.seccomp`` (dict) in one line: default action, rule count,
    architectures."""
    rules = raw.get("syscalls") or []
    names = sum(len(r.get("names") or []) for r in rules)
    arches = ", ".join(a[len("SCMP_ARCH_"):] for a in raw.get("architectures") or []) or "native"
    return (f"default {raw.get('defaultAction')}, {len(rules)} rules over {names} syscalls, "
            f"architectures {arches}")


def child_calls(op, spec=None):
    """The syscalls the child makes for ``op``, as text (main call first).
    ``spec``: the parsed spec, for the seccomp summary."""
    k = kind_name(op.kind)
    if k == "SETNS":
        return [f"setns({_q(op.what.split(' ', 2)[2])}, {clone_flags(op.flags)})"]
    if k == "UNSHARE":
        return [f"unshare({clone_flags(op.flags)})"]
    if k == "SYNC":
        return [f"sendmsg(sync socket) + recvmsg: {op.what}"]
    if k == "SETRESID0":
        return ["setresgid(0, 0, 0)", "setresuid(0, 0, 0)"]
    if k == "SETHOSTNAME":
        return [f"sethostname({_q(op.s1)})"]
    if k == "SETDOMAINNAME":
        return [f"setdomainname({_q(op.s1)})"]
    if k == "MOUNT":
        return _mount_calls(op)
    if k == "OPEN_ROOT":
        return [f"openat({_q(op.s1)}, O_DIRECTORY)"]
    if k == "MKNOD":
        if op.n1 & lib.PR_MKNOD_BIND:
            return [f"mount({_q(op.s1)}, {_q(op.s2)}, \"bind\", MS_BIND, NULL)"]
        mode = op.n2
        dev = op.n3
        return [f"mknodat({_q(op.s2)}, {_S_IF.get(mode & 0o170000, oct(mode & 0o170000))}|{mode & 0o7777:04o}, "
                f"makedev({os.major(dev)}, {os.minor(dev)}))",
                f"fchownat({_q(op.s2)}, {op.flags}, {op.flags2})"]
    if k == "SYMLINK":
        return [f"symlinkat({_q(op.s1)}, {_q(op.s2)})"]
    if k == "HOOK":
        return [f"clone(SIGCHLD) + execve({_q(op.s1)}, {list(op.argv or [])}): {op.what}"]
    if k == "PIVOT_ROOT":
        return [f"pivot_root(\".\", \".\") in {op.s1}",
                "mount(NULL, \".\", NULL, MS_SLAVE|MS_REC, NULL) on the old root",
                "umount2(\".\", MNT_DETACH): the old root (the host's /) is gone"]
    if k == "CHROOT":
        return [f"chroot({_q(op.s1)}) (as chdir there, chroot(\".\"), chdir(\"/\")): "
                "no mount namespace, so no pivot_root"]
    if k == "STDIO":
        return [f"dup3(fd, 0|1|2) for stdin, stdout, stderr from fds {[op.n1, op.n2, op.n3]} (-1: kept)"]
    if k == "DEVNULL":
        return ["openat(\"/dev/null\", O_RDWR) + dup3 onto each of 0, 1, 2 that is /dev/null"]
    if k == "MOVE_ROOT":
        return [f"mount({_q(op.s1)}, \"/\", NULL, MS_MOVE, NULL)", "chroot(\".\")"]
    if k == "MASK":
        return [f"mount(\"tmpfs\", {_q(op.s1)}, \"tmpfs\", MS_RDONLY, NULL) if a directory, else "
                f"mount(\"/dev/null\", {_q(op.s1)}, NULL, MS_BIND, NULL): {op.what}"]
    if k == "READONLY":
        calls = [] if op.n1 & 1 else [f"mount({_q(op.s1)}, {_q(op.s1)}, NULL, MS_BIND|MS_REC, NULL)"]
        return calls + [f"mount(NULL, {_q(op.s1)}, NULL, MS_REMOUNT|MS_BIND|MS_RDONLY, NULL)"]
    if k == "WRITE_FILE":
        return [f"write({_q(op.s1)}, {_q(op.s2)})"]
    if k == "CONSOLE":
        return ["openat(\"/dev/ptmx\") + ioctl(TIOCGPTPEER)", f"fchown(pty, {op.n3}, -1)",
                "sendmsg(console socket, SCM_RIGHTS)", "setsid() + ioctl(TIOCSCTTY) + dup3 onto 0, 1, 2"]
    if k == "RLIMIT":
        return [f"prlimit64(0, {_RLIMIT_NAMES.get(op.n1, op.n1)}, soft={op.flags}, hard={op.flags2})"]
    if k == "PERSONALITY":
        return [f"personality({op.flags:#x})"]
    if k == "KEYRING":
        return [f"keyctl(KEYCTL_JOIN_SESSION_KEYRING, {_q(op.s1)})"]
    if k == "CAPBSET":
        c = op.caps
        dropped = [i for i in range(c["last_cap"] + 1) if not c["bounding"] >> i & 1]
        return [f"prctl(PR_CAPBSET_DROP, cap) for {len(dropped)} capabilities; the bounding set "
                f"keeps {_caps(c['bounding'])}"]
    if k == "IDENTITY":
        return ["prctl(PR_SET_KEEPCAPS, 1)", f"setgroups({list(op.ids or [])})",
                f"setresgid({op.flags2}, {op.flags2}, {op.flags2})",
                f"setresuid({op.flags}, {op.flags}, {op.flags})"]
    if k == "CAPSET":
        c = op.caps
        return [f"capset(effective={_caps(c['effective'])}, permitted={_caps(c['permitted'])}, "
                f"inheritable={_caps(c['inheritable'])})",
                "prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)",
                f"prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap) for {_caps(c['ambient'])}"]
    if k == "CHDIR":
        return [f"chdir({_q(op.s1)})"]
    if k == "UMASK":
        return [f"umask({op.n1:04o})"]
    if k == "NO_NEW_PRIVS":
        return ["prctl(PR_SET_NO_NEW_PRIVS, 1)"]
    if k == "PDEATHSIG":
        return [f"prctl(PR_SET_PDEATHSIG, {op.n1})"]
    if k == "RESOLVE_EXEC":
        return [f"newfstatat + faccessat: find {_q(op.s1)} in PATH={op.s2}"]
    if k == "CLOSE_FDS":
        return [f"close_range({op.n1}, ~0U, CLOSE_RANGE_CLOEXEC)"]
    if k == "WAIT_START":
        return ["read(exec.fifo) returns: start wrote its byte",
                "(before it, sendmsg(sync socket, READY) told create that the container exists)"]
    if k == "JOIN_CGROUP":
        return [f"write(\"{op.what.rsplit(' ', 1)[1]}\", \"0\"): move itself into the group"]
    if k == "FORK":
        into = "|CLONE_INTO_CGROUP" if op.fd >= 0 else ""
        return [f"clone3(CLONE_PARENT{into}): the second stage becomes the container's init"]
    if k == "SECCOMP":
        detail = seccomp_summary(spec.linux.seccomp) if spec is not None and spec.linux.seccomp else ""
        return [f"seccomp(SECCOMP_SET_MODE_FILTER, {op.flags:#x}, {op.n1}-instruction BPF program)"
                + (f": {detail}" if detail else "")]
    if k == "EXEC":
        return [f"execve({_q(op.argv[0])} (found in PATH), {list(op.argv)}, {len(op.envp or [])} env vars)"]
    return [op.what]


def _mount_calls(op):
    target = _q(op.s2)
    calls = []
    copyup_ro = op.n1 & lib.PR_MNT_COPYUP and op.flags & L.MS_RDONLY
    flags = op.flags & ~L.MS_RDONLY if copyup_ro else op.flags
    if flags or op.s3 or op.s1:
        calls.append(f"mount({_q(op.s1)}, {target}, {_q(op.s3)}, {_ms(flags)}, {_q(op.s4)})")
    if op.n1 & lib.PR_MNT_COPYUP:
        calls.append("getdents64 + openat + sendfile + fchownat + fchmodat + utimensat: "
                     "copy the covered directory into the tmpfs (tmpcopyup)")
    if copyup_ro:
        calls.append(f"mount(NULL, {target}, NULL, MS_REMOUNT|{_ms(op.flags)}, {_q(op.s4)})")
    if op.n1 & lib.PR_MNT_BIND_SOURCE and op.flags2:
        calls.append(f"mount(NULL, {target}, NULL, MS_REMOUNT|MS_BIND|{_ms(op.flags2)}, NULL)")
    if op.flags3:
        calls.append(f"mount(NULL, {target}, NULL, {_ms(op.flags3)}, NULL)")
    if op.n2 or op.n3:
        calls.append(f"mount_setattr({target}, AT_RECURSIVE, set={L.flag_names(op.n2, _ATTRS)}, "
                     f"clear={L.flag_names(op.n3, _ATTRS)})")
    return calls or [op.what]
