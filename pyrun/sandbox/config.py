"""What a sandbox is made of: the checked options, the OCI config they
become, and the container's cgroups.

The defaults are the safe ones; every loosening is an explicit argument:

- namespaces: new pid, network (only ``lo``), ipc, uts, mount and cgroup;
- the rootfs read-only, a 64 MiB tmpfs at /tmp, /dev a tmpfs with the
  default devices only, no /sys;
- user 65534:65534 (nobody), every capability dropped, no_new_privs,
  RLIMIT_CORE 0, the default seccomp allow list
  (:mod:`pyrun.oci.seccomp_default`) for the native ABI only (a 32-bit
  x86 program is killed);
- limits: 256 MiB of memory (no swap), 128 pids, 30 s of wall time, 1 MiB
  of captured output per stream.

Cgroups: only the controllers a sandbox uses (memory, pids, cpuacct, cpu
when ``cpus`` is set, freezer where there is no cgroup2 tree to kill
through) and the cgroup2 tree, under ``<parent>/<id>``.  No devices
controller: the sandbox's /dev holds only the default devices, it cannot
mknod (no CAP_MKNOD) and every bind mount it gets is ``nodev``.
"""
import os
import threading

from pyrun import cgroups
from pyrun.cgroups import fs, paths
from pyrun.errdefs import InvalidArgument, NotFound
from pyrun.oci.seccomp_default import default_profile
from pyrun.runtime.cgroup import ContainerCgroup

MiB = 1 << 20
DEFAULT_MEMORY = 256 * MiB
DEFAULT_PIDS = 128
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_OUTPUT = 1 * MiB
DEFAULT_TMP_SIZE = 64 * MiB
NOBODY = (65534, 65534)
DEFAULT_CGROUP_PARENT = "/pyrun"
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME=/tmp", "LANG=C.UTF-8")
_CPU_PERIOD = 100000  # µs, the kernel's default CFS period
# Native ABI only: 32-bit programs are killed, and the filter loads 3x faster.
_SECCOMP = default_profile(compat_arches=False)


class Bind:
    """A host path bind-mounted into the sandbox: read-only unless
    ``writable``; always nosuid and nodev.  ``target`` defaults to
    ``source``.  Plain ``(source, target)`` tuples are accepted too."""
    __slots__ = ("source", "target", "writable")

    def __init__(self, source, target=None, writable=False):
        self.source, self.target, self.writable = source, target or source, writable

    def __repr__(self):
        return f"Bind({self.source!r}, {self.target!r}, writable={self.writable})"


def _positive(name, value, kind=int, allow_none=True, most=None):
    if value is None:
        if allow_none:
            return None
        raise InvalidArgument(f"{name}: a value is required")
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise InvalidArgument(f"{name}: expected a {'number' if kind is float else 'whole number'}, "
                              f"got {value!r}")
    if not value > 0:  # also NaN
        raise InvalidArgument(f"{name}: must be positive, got {value!r}")
    if most is not None and not value <= most:  # also infinity
        raise InvalidArgument(f"{name}: at most {most}, got {value!r}")
    return kind(value)


def check_argv(argv, where="argv"):
    """A non-empty list of strings without NUL bytes; returns it as a list."""
    if isinstance(argv, (str, bytes)) or not isinstance(argv, (list, tuple)):
        raise InvalidArgument(f"{where}: expected a list of strings such as ['sh', '-c', 'echo hi'], "
                              f"got {argv!r}")
    if not argv:
        raise InvalidArgument(f"{where}: empty: name the program to run")
    for i, a in enumerate(argv):
        if not isinstance(a, str) or "\0" in a:
            raise InvalidArgument(f"{where}[{i}]: expected a string without NUL bytes, got {a!r}")
    if not argv[0]:
        raise InvalidArgument(f"{where}[0]: empty program name")
    return list(argv)


def check_env(env, where="env"):
    """``env``: None (the defaults), a mapping or ``KEY=VALUE`` strings;
    returns the full list, defaults first, later entries winning."""
    merged = {e.split("=", 1)[0]: e for e in DEFAULT_ENV}
    items = env.items() if isinstance(env, dict) else None
    if items is not None:
        extra = [f"{k}={v}" for k, v in items]
    elif env is None:
        extra = []
    elif isinstance(env, (list, tuple)):
        extra = list(env)
    else:
        raise InvalidArgument(f"{where}: expected a dict or a list of 'KEY=VALUE', got {env!r}")
    if items is not None:
        for k, v in items:
            if not isinstance(k, str) or not k or "=" in k or not isinstance(v, str):
                raise InvalidArgument(f"{where}: {k!r}: {v!r} is not a name (no '=') and a string")
    for e in extra:
        if not isinstance(e, str) or "=" not in e or e.startswith("=") or "\0" in e:
            raise InvalidArgument(f"{where}: {e!r} is not KEY=VALUE")
        merged[e.split("=", 1)[0]] = e
    return list(merged.values())


def check_user(user, where="user"):
    if (not isinstance(user, (tuple, list)) or len(user) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**32 - 1
                       for x in user)):
        raise InvalidArgument(f"{where}: expected (uid, gid) numbers, got {user!r}")
    return tuple(user)


def check_cwd(cwd, where="cwd"):
    if not isinstance(cwd, str) or not cwd.startswith("/") or "\0" in cwd:
        raise InvalidArgument(f"{where}: expected an absolute path (without NUL bytes), got {cwd!r}")
    return cwd


def _check_target(path, where):
    """A mount target of the caller's: absolute, and not one of the
    sandbox's own mounts (/, /proc, /dev and below).  Returns it
    normalized (normpath keeps a leading "//", this does not)."""
    check_cwd(path, where)
    norm = "/" + os.path.normpath(path).lstrip("/")
    if norm == "/" or any(norm == p or norm.startswith(p + "/") for p in ("/proc", "/dev")):
        raise InvalidArgument(f"{where}: {path!r} is the sandbox's own (/, /proc and /dev "
                              f"are set up by the sandbox)")
    return norm


def _check_list(value, name):
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InvalidArgument(f"{name}: expected a list, got {value!r}")
    return value


MAX_TIMEOUT = 10 ** 9          # s, about 31 years
MAX_MEMORY = (1 << 63) - 1     # bytes, the cgroup files' int64
MAX_PIDS = 1 << 22             # PID_MAX_LIMIT, the most pids.max can mean
MAX_CPUS = 10 ** 6             # CPUs, far beyond any machine's


def check_timeout(timeout):
    return _positive("timeout", timeout, float, most=MAX_TIMEOUT)


def check_max_output(max_output):
    return _positive("max_output", max_output, int, allow_none=False)


def resolve_rootfs(rootfs=None, bundle=None, image=None, db=None, namespace="default",
                   snapshotter="overlayfs"):
    """Where the sandbox's root comes from, from exactly one of ``rootfs``
    (a directory: returns its absolute path), ``bundle`` (an OCI bundle:
    its config's ``root.path``; the rest of its config is not used) or
    ``image`` (a name in the image store ``db``, tenant ``namespace``:
    returns an :class:`~pyrun.sandbox.image.ImageSource`, mounted per
    sandbox)."""
    given = [n for n, v in (("rootfs", rootfs), ("bundle", bundle), ("image", image)) if v is not None]
    if len(given) != 1:
        raise InvalidArgument(f"give exactly one of rootfs=, bundle=, image= (got {given or 'none'})")
    if image is not None:
        from pyrun.sandbox.image import ImageSource
        return ImageSource(image, db, namespace, snapshotter)
    if bundle is not None:
        from pyrun.runtime.create import load_bundle
        _, spec = load_bundle(bundle)
        rootfs = spec.root.path
        if not os.path.isabs(rootfs):
            rootfs = os.path.join(os.path.abspath(bundle), rootfs)
    if not isinstance(rootfs, (str, os.PathLike)) or "\0" in os.fspath(rootfs):
        raise InvalidArgument(f"rootfs: expected a path (without NUL bytes), got {rootfs!r}")
    path = os.path.realpath(rootfs)
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise InvalidArgument(f"rootfs {rootfs}: not a directory")
        raise NotFound(f"rootfs {rootfs}: no such directory")
    return path


class Options:
    """The checked container-level options of a sandbox (see
    :func:`pyrun.sandbox.run` for their meaning and units)."""
    __slots__ = ("rootfs", "user", "memory", "cpus", "pids", "network", "mounts", "writable",
                 "cgroup_parent", "tmp_size")

    def __init__(self, rootfs, *, user=NOBODY, memory=DEFAULT_MEMORY, cpus=None, pids=DEFAULT_PIDS,
                 network=False, mounts=(), writable=(), cgroup_parent=DEFAULT_CGROUP_PARENT,
                 tmp_size=DEFAULT_TMP_SIZE):
        self.rootfs = rootfs
        self.user = check_user(user)
        self.memory = _positive("memory", memory, most=MAX_MEMORY)
        self.cpus = _positive("cpus", cpus, float, most=MAX_CPUS)
        self.pids = _positive("pids", pids, most=MAX_PIDS)
        if self.memory is not None and self.memory < 4 * MiB:
            raise InvalidArgument(f"memory: {memory} bytes is too little to start a process "
                                  f"(at least 4 MiB)")
        if not isinstance(network, bool):
            raise InvalidArgument(f"network: expected True or False, got {network!r}")
        self.network = network
        self.tmp_size = _positive("tmp_size", tmp_size, allow_none=False, most=MAX_MEMORY)
        self.mounts = []
        for i, m in enumerate(_check_list(mounts, "mounts")):
            if isinstance(m, (tuple, list)) and len(m) in (2, 3):
                m = Bind(*m)
            if not isinstance(m, Bind):
                raise InvalidArgument(f"mounts[{i}]: expected Bind(source, target) or a "
                                      f"(source, target) tuple, got {m!r}")
            check_cwd(m.source, f"mounts[{i}].source")
            if not os.path.exists(m.source):
                raise NotFound(f"mounts[{i}].source {m.source}: no such file or directory")
            target = _check_target(m.target, f"mounts[{i}].target")
            if not isinstance(m.writable, bool):
                raise InvalidArgument(f"mounts[{i}].writable: expected True or False, got "
                                      f"{m.writable!r}")
            self.mounts.append(Bind(m.source, target, m.writable))
        self.writable = [_check_target(w, f"writable[{i}]")
                         for i, w in enumerate(_check_list(writable, "writable"))]
        if not isinstance(cgroup_parent, str) or not cgroup_parent.startswith("/") \
                or paths.clean_path(cgroup_parent) in ("/", ""):
            raise InvalidArgument(f"cgroup_parent: expected an absolute cgroup path below the "
                                  f"root such as '/pyrun', got {cgroup_parent!r}")
        self.cgroup_parent = paths.clean_path(cgroup_parent)


def build_spec(opts, cid, argv, env, cwd, rootfs):
    """The OCI config (a dict) of the sandbox's container, on the
    directory ``rootfs``."""
    nosuid = ["nosuid", "nodev"]
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": nosuid + ["noexec"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": nosuid + ["noexec", "mode=1777", "size=65536k"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": nosuid + ["mode=1777", f"size={opts.tmp_size}"]},
    ]
    for m in opts.mounts:
        mounts.append({"destination": m.target, "type": "bind", "source": m.source,
                       "options": ["rbind", "rw" if m.writable else "ro"] + nosuid})
    for w in opts.writable:
        mounts.append({"destination": w, "type": "tmpfs", "source": "tmpfs",
                       "options": nosuid + ["mode=1777", f"size={opts.tmp_size}"]})
    kinds = ["pid", "ipc", "uts", "mount", "cgroup"] + ([] if opts.network else ["network"])
    return {
        "ociVersion": "1.0.2",
        "process": _process(opts.user, argv, env, cwd),
        "root": {"path": rootfs, "readonly": True},
        "hostname": "sandbox",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": k} for k in kinds],
            "cgroupsPath": f"{opts.cgroup_parent}/{cid}",
            "seccomp": _SECCOMP,
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }


def _process(user, argv, env, cwd):
    uid, gid = user
    return {
        "terminal": False, "user": {"uid": uid, "gid": gid}, "args": argv, "env": env,
        "cwd": cwd, "capabilities": {k: [] for k in ("bounding", "effective", "permitted",
                                                     "inheritable", "ambient")},
        "noNewPrivileges": True,
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
                    {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}],
    }


def spec_for(opts, cid, argv, env, cwd, rootfs):
    """:func:`build_spec`, parsed and validated (pyrun.oci.spec.Spec)."""
    from pyrun.oci.spec import parse
    from pyrun.oci.validate import validate
    spec = parse(build_spec(opts, cid, argv, env, cwd, rootfs))
    validate(spec)
    return spec


def process_for(user, argv, env, cwd):
    """The parsed process of a command exec'd in a sandbox (same
    restrictions as its init)."""
    from pyrun.oci.spec import _parse_process
    return _parse_process(_process(user, argv, env, cwd))


# -- cgroups ---------------------------------------------------------------

_layout = None
_parents_made = {}  # (parent, keys) -> done; an entry before its creation starts
_parents_lock = threading.Lock()


def _host_layout():
    """(mode, v1 controllers mounted): read once per process."""
    global _layout
    if _layout is None:
        mode = paths.detect()
        v1 = {c for c in ("memory", "pids", "cpu", "cpuacct", "freezer")
              if mode != "v2" and os.path.isdir(os.path.join(paths.DEFAULT_ROOT, c))}
        _layout = (mode, v1)
    return _layout


def _keys(need_freezer):
    mode, v1 = _host_layout()
    keys = sorted(v1)
    if mode != "v1":
        keys.append("")
    if not need_freezer or "" in keys:
        keys = [k for k in keys if k != "freezer"]
    return mode, keys


def _ensure_parent(parent, keys):
    """Make the parent group once per process and keep it: removing it when
    the last sandbox goes would race a sandbox being created under it."""
    with _parents_lock:
        key = (parent, tuple(keys))
        if _parents_made.get(key):
            return
        # Recorded first: remove_cgroup_parent then finds what an
        # interrupted creation made.
        _parents_made[key] = False
        mode, _ = _host_layout()
        m = cgroups.Manager(mode, paths.DEFAULT_ROOT, {k: parent for k in keys})
        m.create()
        if "" in m.paths:
            m._enable_controllers(m.group(""))
        _parents_made[key] = True


def remove_cgroup_parent(parent):
    """Remove the (empty) parent groups made for sandboxes under ``parent``
    in this process: for tests and for tidy shutdowns."""
    with _parents_lock:
        for p, keys in list(_parents_made):
            if p != paths.clean_path(parent):
                continue
            mode, _ = _host_layout()
            m = cgroups.Manager(mode, paths.DEFAULT_ROOT, {k: p for k in keys})
            for k in keys:
                fs.remove_dir(m.hierarchy_root(k), p)
            del _parents_made[(p, keys)]


def make_cgroup(opts, cid, need_freezer=False):
    """The sandbox's :class:`ContainerCgroup` (not created yet)."""
    mode, keys = _keys(need_freezer)
    if opts.cpus is None:
        keys = [k for k in keys if k != "cpu"]
    _ensure_parent(opts.cgroup_parent, keys)
    raw = {}
    if opts.memory:
        mem = {"limit": opts.memory}
        if mode == "v2" or os.path.exists(os.path.join(paths.DEFAULT_ROOT, "memory",
                                                       "memory.memsw.limit_in_bytes")):
            mem["swap"] = opts.memory  # memory+swap = memory: no swap
        raw["memory"] = mem
    if opts.cpus:
        raw["cpu"] = {"quota": int(opts.cpus * _CPU_PERIOD), "period": _CPU_PERIOD}
    if opts.pids:
        raw["pids"] = {"limit": opts.pids}
    manager = cgroups.Manager(mode, paths.DEFAULT_ROOT,
                              {k: f"{opts.cgroup_parent}/{cid}" for k in keys})
    return ContainerCgroup(manager, cgroups.parse_resources(raw))


def read_usage(cg):
    """(cpu ns, peak memory bytes, OOM kills) of the sandbox so far."""
    m = cg.manager
    cpu = peak = ooms = 0
    b = m.backend("cpuacct")
    if b is not None and b[0] == "v1":
        cpu = b[1].number("cpuacct.usage")
    elif b is not None and b[1].exists("cpu.stat"):
        # cgroup2 keeps cpu.stat usage_usec even without the cpu controller.
        cpu = b[1].keyed("cpu.stat").get("usage_usec", 0) * 1000
    b = m.backend("memory")
    if b is not None:
        peak = b[1].number("memory.max_usage_in_bytes" if b[0] == "v1" else "memory.peak")
        if b[0] == "v1" or b[1].exists("memory.events"):
            ooms = m.oom_kill_count()
    return cpu, peak, ooms
