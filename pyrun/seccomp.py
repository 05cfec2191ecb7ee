"""``linux.seccomp`` compiled into a BPF program with libseccomp.

The parent compiles (libseccomp through cffi, native/pyrun.cdef); the
child stage only loads the result with seccomp(2) (native/container.c,
PR_OP_SECCOMP), so no library code runs after clone.

Source: runtime spec config-linux.md "Seccomp"; runc's
``libcontainer/seccomp/seccomp_linux.go`` for the behaviours matched:
syscall names unknown to libseccomp are skipped (profiles name syscalls of
other kernels and arches), rules whose action equals the default action
are skipped (libseccomp refuses them), and comparisons on the same
argument index become separate rules (OR), the others one rule (AND).
"""
import os

from pyrun._native import ffi, lib
from pyrun.errdefs import InvalidArgument, NotImplementedYet

ACT_KILL_THREAD = 0x00000000
ACT_KILL_PROCESS = 0x80000000
ACT_TRAP = 0x00030000
ACT_ERRNO = 0x00050000
ACT_TRACE = 0x7FF00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000

OPS = {
    "SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7,
}
# seccomp(2) SECCOMP_FILTER_FLAG_*.
FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1, "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}
_EPERM = 1
# seccomp_syscall_resolve_name's answer for a name it does not know.  Other
# negative numbers are libseccomp's pseudo-syscalls: calls that exist on
# another architecture of the filter (socketcall, ipc, ... on x86); they are
# real rules there.
_NR_SCMP_ERROR = -1
_ATTR_CTL_NNP = 3  # SCMP_FLTATR_CTL_NNP: we set no_new_privs ourselves


def _action(name, errno_ret, where):
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return ACT_KILL_THREAD
    if name == "SCMP_ACT_KILL_PROCESS":
        return ACT_KILL_PROCESS
    if name == "SCMP_ACT_TRAP":
        return ACT_TRAP
    if name == "SCMP_ACT_ERRNO":
        return ACT_ERRNO | ((_EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if name == "SCMP_ACT_TRACE":
        return ACT_TRACE | ((_EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if name == "SCMP_ACT_LOG":
        return ACT_LOG
    if name == "SCMP_ACT_ALLOW":
        return ACT_ALLOW
    if name == "SCMP_ACT_NOTIFY":
        raise NotImplementedYet(f"{where}: SCMP_ACT_NOTIFY (seccomp notify) is not supported")
    raise InvalidArgument(f"{where}: unknown seccomp action {name!r}")


def _int(obj, key, where, default=None):
    v = obj.get(key, default)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
        raise InvalidArgument(f"{where}.{key}: expected a non-negative integer")
    return v


_cache = {}
_CACHE_MAX = 16


def compile_filter(raw):
    """Compile the ``linux.seccomp`` object ``raw`` (a dict), or return the
    result of an earlier call with an equal object: libseccomp takes ~10 ms
    for a Docker-sized profile, more than creating a container, and
    sandbox users create many containers with one profile.

    Returns (bpf bytes, number of instructions, seccomp(2) flags).  Raises
    InvalidArgument naming the field for bad input, NotImplementedYet for
    ``listenerPath``/SCMP_ACT_NOTIFY.
    """
    import json
    key = json.dumps(raw, sort_keys=True)
    hit = _cache.get(key)
    if hit is None:
        hit = _disk_load(key)
        if hit is None:
            hit = _compile(raw)
            _disk_store(key, hit)
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[key] = hit
    return hit


# Compiled filters also outlive the process (each pyrun and pyrunctl call
# is one), in a directory only root can write, keyed by the profile and by
# the libseccomp that compiled it.
DISK_CACHE = "/run/pyrun-seccomp-cache"
_DISK_MAX = 64


def _libseccomp_id():
    """Which libseccomp is loaded: its path, size and mtime (an upgrade
    changes the key)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if "libseccomp" in line:
                    path = line.split()[-1]
                    st = os.stat(path)
                    return f"{path}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        pass
    return None


def _disk_path(key):
    import hashlib
    lib_id = _libseccomp_id()
    if lib_id is None:
        return None
    try:
        st = os.stat(DISK_CACHE)
    except FileNotFoundError:
        try:
            os.makedirs(DISK_CACHE, 0o700)
            st = os.stat(DISK_CACHE)
        except OSError:
            return None
    except OSError:
        return None
    if st.st_uid != 0 or st.st_mode & 0o077:
        return None  # not ours alone: never trust what it holds
    digest = hashlib.sha256(f"{lib_id}\n{key}".encode()).hexdigest()
    return os.path.join(DISK_CACHE, digest)


def _disk_load(key):
    path = _disk_path(key)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if len(data) < 4 or (len(data) - 4) % 8:
        return None
    flags = int.from_bytes(data[:4], "little")
    bpf = data[4:]
    return bpf, len(bpf) // 8, flags


def _disk_store(key, value):
    path = _disk_path(key)
    if path is None:
        return
    from pyrun.fsutil import atomic_write
    bpf, _, flags = value
    try:
        if len(os.listdir(DISK_CACHE)) >= _DISK_MAX:
            for name in os.listdir(DISK_CACHE):
                os.unlink(os.path.join(DISK_CACHE, name))
        atomic_write(path, flags.to_bytes(4, "little") + bpf, 0o600, durable=False)
    except OSError:
        pass


def _compile(raw):
    w = "linux.seccomp"
    if raw.get("listenerPath"):
        raise NotImplementedYet(f"{w}.listenerPath: seccomp notify is not supported")
    default = _action(raw.get("defaultAction", ""), _int(raw, "defaultErrnoRet", w), f"{w}.defaultAction")
    flags = 0
    for i, f in enumerate(raw.get("flags") or []):
        if f not in FLAGS:
            raise InvalidArgument(f"{w}.flags[{i}]: unknown flag {f!r}")
        flags |= FLAGS[f]
    ctx = lib.seccomp_init(default)
    if ctx == ffi.NULL:
        raise InvalidArgument(f"{w}.defaultAction: libseccomp refused it")
    try:
        lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0)
        for i, arch in enumerate(raw.get("architectures") or []):
            if not isinstance(arch, str) or not arch.startswith("SCMP_ARCH_"):
                raise InvalidArgument(f"{w}.architectures[{i}]: unknown architecture {arch!r}")
            token = lib.seccomp_arch_resolve_name(arch[len("SCMP_ARCH_"):].lower().encode())
            if token == 0:
                raise InvalidArgument(f"{w}.architectures[{i}]: unknown architecture {arch!r}")
            if lib.seccomp_arch_exist(ctx, token) != 0:
                r = lib.seccomp_arch_add(ctx, token)
                if r < 0:
                    raise InvalidArgument(f"{w}.architectures[{i}]: {os.strerror(-r)}")
        for i, rule in enumerate(raw.get("syscalls") or []):
            rw = f"{w}.syscalls[{i}]"
            action = _action(rule.get("action", ""), _int(rule, "errnoRet", rw), f"{rw}.action")
            args = []
            for j, a in enumerate(rule.get("args") or []):
                aw = f"{rw}.args[{j}]"
                index = _int(a, "index", aw)
                if index is None or index > 5:
                    raise InvalidArgument(f"{aw}.index: must be 0 to 5")
                if a.get("op") not in OPS:
                    raise InvalidArgument(f"{aw}.op: unknown operator {a.get('op')!r}")
                args.append((index, OPS[a["op"]], _int(a, "value", aw, 0), _int(a, "valueTwo", aw, 0)))
            if action == default:
                continue
            for name in rule.get("names") or []:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == _NR_SCMP_ERROR:
                    continue  # unknown to this libseccomp: runc skips it too
                indexes = [a[0] for a in args]
                groups = [[a] for a in args] if len(set(indexes)) < len(indexes) else [args]
                for group in groups:
                    cmps = ffi.new("struct scmp_arg_cmp[]", max(len(group), 1))
                    for k, (index, op, va, vb) in enumerate(group):
                        cmps[k].arg, cmps[k].op, cmps[k].datum_a, cmps[k].datum_b = index, op, va, vb
                    r = lib.seccomp_rule_add_array(ctx, action, nr, len(group), cmps)
                    if r < 0:
                        raise InvalidArgument(f"{rw}: libseccomp refused {name}: {os.strerror(-r)}")
        fd = os.memfd_create("pyrun-seccomp", os.MFD_CLOEXEC)
        try:
            r = lib.seccomp_export_bpf(ctx, fd)
            if r < 0:
                raise InvalidArgument(f"{w}: libseccomp could not export the filter: {os.strerror(-r)}")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        bpf = b"".join(chunks)
        return bpf, len(bpf) // 8, flags
    finally:
        lib.seccomp_release(ctx)
