"""``config.json`` parsed into typed, frozen dataclasses.

Source: the OCI runtime spec v1.2 (config.md, config-linux.md).  Parsing
checks shapes and types and resolves names the kernel needs as numbers
(rlimit names, namespace types, device types); :mod:`pyrun.oci.validate`
checks meaning.  Runtime code never reads the raw dict.

Every error is :class:`~pyrun.errdefs.InvalidArgument` and names the JSON
path of the bad field, e.g. ``process.user.uid: expected an integer``.
"""
from pyrun.errdefs import InvalidArgument
from pyrun.record import Frozen

SUPPORTED_VERSIONS = ("1.0.", "1.1.", "1.2.")

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")

RLIMITS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4, "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}

# linux/capability.h, in bit order.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
    "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",
    "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAP_NUMBERS = {name: i for i, name in enumerate(CAPABILITIES)}

PERSONALITY_DOMAINS = {"LINUX": 0x0000, "LINUX32": 0x0008}


class Root(Frozen):
    """``path`` is relative to the bundle unless absolute."""
    __slots__ = ("path", "readonly")
    _defaults = {"readonly": False}


class User(Frozen):
    """Numeric ids; ``umask`` None keeps the runtime's (runc: 0022)."""
    __slots__ = ("uid", "gid", "umask", "additional_gids")
    _defaults = {"uid": 0, "gid": 0, "umask": None, "additional_gids": ()}


class Capabilities(Frozen):
    """Capability sets as tuples of ``CAP_*`` names."""
    __slots__ = ("bounding", "effective", "inheritable", "permitted", "ambient")
    _defaults = {"bounding": (), "effective": (), "inheritable": (), "permitted": (), "ambient": ()}


class Rlimit(Frozen):
    """``resource`` is the RLIMIT_* number; ``soft``/``hard`` as setrlimit(2)."""
    __slots__ = ("type", "resource", "soft", "hard")


class Process(Frozen):
    """``console_size`` is (height, width) in characters or None; ``rlimits`` a
    tuple of :class:`Rlimit`; ``capabilities`` None when the spec has none
    (the process then keeps what root has, as with runc)."""
    __slots__ = ("args", "cwd", "env", "terminal", "console_size", "user", "capabilities", "rlimits", "no_new_privileges", "oom_score_adj", "apparmor_profile", "selinux_label")
    _defaults = {"env": (), "terminal": False, "console_size": None, "user": User, "capabilities": None, "rlimits": (), "no_new_privileges": False, "oom_score_adj": None, "apparmor_profile": "", "selinux_label": ""}


class MountSpec(Frozen):
    """One entry of ``mounts``: destination inside the container."""
    __slots__ = ("destination", "type", "source", "options")
    _defaults = {"type": "", "source": "", "options": ()}


class Hook(Frozen):
    """``timeout`` in seconds, or None for no limit."""
    __slots__ = ("path", "args", "env", "timeout")
    _defaults = {"args": (), "env": (), "timeout": None}


class Hooks(Frozen):
    __slots__ = ("prestart", "create_runtime", "create_container", "start_container", "poststart", "poststop")
    _defaults = {"prestart": (), "create_runtime": (), "create_container": (), "start_container": (), "poststart": (), "poststop": ()}


class Namespace(Frozen):
    """``path`` set: join that namespace; empty: create a new one."""
    __slots__ = ("type", "path")
    _defaults = {"path": ""}


class IDMapping(Frozen):
    """One line of uid_map/gid_map: container id, host id, count."""
    __slots__ = ("container_id", "host_id", "size")


class Device(Frozen):
    """``type`` is c, u, b or p; ``file_mode`` the permission bits."""
    __slots__ = ("path", "type", "major", "minor", "file_mode", "uid", "gid")
    _defaults = {"major": 0, "minor": 0, "file_mode": None, "uid": None, "gid": None}


class Linux(Frozen):
    """``sysctl`` is a tuple of (key, value); ``resources`` and ``seccomp``
    stay raw dicts for :mod:`pyrun.cgroups` and seccomp to parse."""
    __slots__ = ("namespaces", "uid_mappings", "gid_mappings", "devices", "cgroups_path", "resources", "rootfs_propagation", "masked_paths", "readonly_paths", "mount_label", "sysctl", "seccomp", "personality", "time_offsets", "intel_rdt")
    _defaults = {"namespaces": (), "uid_mappings": (), "gid_mappings": (), "devices": (), "cgroups_path": "", "resources": None, "rootfs_propagation": "", "masked_paths": (), "readonly_paths": (), "mount_label": "", "sysctl": (), "seccomp": None, "personality": None, "time_offsets": None, "intel_rdt": None}

    def namespace(self, kind):
        for ns in self.namespaces:
            if ns.type == kind:
                return ns
        return None


class Spec(Frozen):
    """The whole config; ``annotations`` is a tuple of (key, value)."""
    __slots__ = ("oci_version", "root", "process", "hostname", "domainname", "mounts", "hooks", "annotations", "linux")
    _defaults = {"process": None, "hostname": "", "domainname": "", "mounts": (), "hooks": Hooks, "annotations": (), "linux": Linux}

# ---- typed field access ----

# S_IFMT bits of each linux.devices type (stat(2)).
_DEVICE_FORMAT = {"c": 0o020000, "u": 0o020000, "b": 0o060000, "p": 0o010000}


def _show(value):
    from pyrun.jsonio import dumps
    try:
        text = dumps(value)  # JSON's spelling: null, true, {"x":1}
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPES = {
    str: "a string", bool: "a boolean", int: "an integer",
    dict: "an object", list: "an array",
}


def _get(obj, key, typ, where, default=None, required=False):
    path = f"{where}.{key}" if where else key
    if key not in obj or obj[key] is None:
        if required:
            raise InvalidArgument(f"{path}: required field is missing")
        return default
    value = obj[key]
    if typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, typ)
    if not ok:
        raise InvalidArgument(f"{path}: expected {_TYPES[typ]}, got {_show(value)}")
    return value


def _join(where, key):
    return f"{where}.{key}" if where else key


def _strings(obj, key, where):
    items = _get(obj, key, list, where, [])
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidArgument(f"{_join(where, key)}[{i}]: expected a string, got {_show(item)}")
    return tuple(items)


def _objects(obj, key, where):
    items = _get(obj, key, list, where, [])
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidArgument(f"{_join(where, key)}[{i}]: expected an object")
    return [(f"{where}.{key}[{i}]" if where else f"{key}[{i}]", item) for i, item in enumerate(items)]


def _u32(obj, key, where, default=None, required=False):
    v = _get(obj, key, int, where, default, required)
    if v is not None and not 0 <= v <= 0xFFFFFFFF:
        raise InvalidArgument(f"{where}.{key}: {v} is out of range for a 32-bit id")
    return v


def _string_map(obj, key, where):
    m = _get(obj, key, dict, where, {})
    for k, v in m.items():
        if not isinstance(v, str):
            raise InvalidArgument(f"{where + '.' if where else ''}{key}.{k}: expected a string")
    return tuple(m.items())


# ---- sections ----

def _parse_process(obj, w="process"):
    user = _get(obj, "user", dict, w, {})
    uw = f"{w}.user"
    gids = _get(user, "additionalGids", list, uw, [])
    for i, g in enumerate(gids):
        if not isinstance(g, int) or isinstance(g, bool) or not 0 <= g <= 0xFFFFFFFF:
            raise InvalidArgument(f"{uw}.additionalGids[{i}]: expected a 32-bit id")
    if "username" in user:
        raise InvalidArgument(f"{uw}.username: only meaningful on Windows; use uid and gid")
    umask = _get(user, "umask", int, uw)
    if umask is not None and not 0 <= umask <= 0o777:
        raise InvalidArgument(f"{uw}.umask: {umask} is not a valid umask")
    caps = None
    if _get(obj, "capabilities", dict, w) is not None:
        cw = f"{w}.capabilities"
        c = obj["capabilities"]
        sets = {}
        for name in ("bounding", "effective", "inheritable", "permitted", "ambient"):
            values = _strings(c, name, cw)
            for i, cap in enumerate(values):
                if cap not in CAP_NUMBERS:
                    raise InvalidArgument(f"{cw}.{name}[{i}]: unknown capability {cap!r}")
            sets[name] = values
        caps = Capabilities(**sets)
    rlimits = []
    seen = set()
    for rw, r in _objects(obj, "rlimits", w):
        kind = _get(r, "type", str, rw, required=True)
        if kind not in RLIMITS:
            raise InvalidArgument(f"{rw}.type: unknown rlimit {kind!r}")
        if kind in seen:
            raise InvalidArgument(f"{rw}.type: {kind} is given twice")
        seen.add(kind)
        soft = _get(r, "soft", int, rw, required=True)
        hard = _get(r, "hard", int, rw, required=True)
        for n, v in (("soft", soft), ("hard", hard)):
            if not 0 <= v <= 0xFFFFFFFFFFFFFFFF:
                raise InvalidArgument(f"{rw}.{n}: {v} is out of range")
        rlimits.append(Rlimit(kind, RLIMITS[kind], soft, hard))
    console = None
    cs = _get(obj, "consoleSize", dict, w)
    if cs is not None:
        console = (_u32(cs, "height", f"{w}.consoleSize", required=True),
                   _u32(cs, "width", f"{w}.consoleSize", required=True))
    for unsupported in ("ioPriority", "scheduler", "execCPUAffinity", "commandLine"):
        if obj.get(unsupported) is not None:
            raise InvalidArgument(f"{w}.{unsupported}: not supported by pyrun")
    return Process(
        args=_strings(obj, "args", w),
        cwd=_get(obj, "cwd", str, w, required=True),
        env=_strings(obj, "env", w),
        terminal=_get(obj, "terminal", bool, w, False),
        console_size=console,
        user=User(
            uid=_u32(user, "uid", uw, 0),
            gid=_u32(user, "gid", uw, 0),
            umask=umask,
            additional_gids=tuple(gids),
        ),
        capabilities=caps,
        rlimits=tuple(rlimits),
        no_new_privileges=_get(obj, "noNewPrivileges", bool, w, False),
        oom_score_adj=_get(obj, "oomScoreAdj", int, w),
        apparmor_profile=_get(obj, "apparmorProfile", str, w, ""),
        selinux_label=_get(obj, "selinuxLabel", str, w, ""),
    )


def _parse_hooks(obj, w="hooks"):
    def hooks(key):
        out = []
        for hw, h in _objects(obj, key, w):
            timeout = _get(h, "timeout", int, hw)
            if timeout is not None and timeout <= 0:
                raise InvalidArgument(f"{hw}.timeout: must be a positive number of seconds")
            path = _get(h, "path", str, hw, required=True)
            if not path.startswith("/"):
                raise InvalidArgument(f"{hw}.path: {path!r} must be absolute (runtime spec: hooks)")
            out.append(Hook(
                path=path,
                args=_strings(h, "args", hw),
                env=_strings(h, "env", hw),
                timeout=timeout,
            ))
        return tuple(out)

    return Hooks(
        prestart=hooks("prestart"),
        create_runtime=hooks("createRuntime"),
        create_container=hooks("createContainer"),
        start_container=hooks("startContainer"),
        poststart=hooks("poststart"),
        poststop=hooks("poststop"),
    )


def _parse_linux(obj, w="linux"):
    namespaces = []
    for nw, n in _objects(obj, "namespaces", w):
        kind = _get(n, "type", str, nw, required=True)
        if kind not in NAMESPACE_TYPES:
            raise InvalidArgument(f"{nw}.type: unknown namespace type {kind!r}")
        namespaces.append(Namespace(kind, _get(n, "path", str, nw, "")))

    def mappings(key):
        out = []
        for mw, m in _objects(obj, key, w):
            mapping = IDMapping(
                _u32(m, "containerID", mw, required=True),
                _u32(m, "hostID", mw, required=True),
                _u32(m, "size", mw, required=True),
            )
            if mapping.size == 0:
                raise InvalidArgument(f"{mw}.size: must be at least 1")
            out.append(mapping)
        return tuple(out)

    devices = []
    for dw, d in _objects(obj, "devices", w):
        kind = _get(d, "type", str, dw, required=True)
        if kind not in ("c", "u", "b", "p"):
            raise InvalidArgument(f"{dw}.type: unknown device type {kind!r} (c, u, b or p)")
        mode = _get(d, "fileMode", int, dw)
        if mode is not None and mode & ~0o7777 == _DEVICE_FORMAT[kind]:
            # podman sends Go's full st_mode (0o20644 for a char device);
            # runc ORs the type bits in anyway, so they may be there.
            mode &= 0o7777
        if mode is not None and not 0 <= mode <= 0o7777:
            raise InvalidArgument(f"{dw}.fileMode: {mode:o} is not a permission mode"
                                  f" (nor one with the S_IFMT bits of type {kind!r})")
        devices.append(Device(
            path=_get(d, "path", str, dw, required=True),
            type=kind,
            major=_get(d, "major", int, dw, 0),
            minor=_get(d, "minor", int, dw, 0),
            file_mode=mode,
            uid=_u32(d, "uid", dw),
            gid=_u32(d, "gid", dw),
        ))
    personality = None
    p = _get(obj, "personality", dict, w)
    if p is not None:
        domain = _get(p, "domain", str, f"{w}.personality", required=True)
        if domain not in PERSONALITY_DOMAINS:
            raise InvalidArgument(f"{w}.personality.domain: unknown domain {domain!r}")
        if _strings(p, "flags", f"{w}.personality"):
            raise InvalidArgument(f"{w}.personality.flags: not supported by pyrun")
        personality = PERSONALITY_DOMAINS[domain]
    return Linux(
        namespaces=tuple(namespaces),
        uid_mappings=mappings("uidMappings"),
        gid_mappings=mappings("gidMappings"),
        devices=tuple(devices),
        cgroups_path=_get(obj, "cgroupsPath", str, w, ""),
        resources=_get(obj, "resources", dict, w),
        rootfs_propagation=_get(obj, "rootfsPropagation", str, w, ""),
        masked_paths=_strings(obj, "maskedPaths", w),
        readonly_paths=_strings(obj, "readonlyPaths", w),
        mount_label=_get(obj, "mountLabel", str, w, ""),
        sysctl=_string_map(obj, "sysctl", w),
        seccomp=_get(obj, "seccomp", dict, w),
        personality=personality,
        time_offsets=_get(obj, "timeOffsets", dict, w),
        intel_rdt=_get(obj, "intelRdt", dict, w),
    )


def parse(raw):
    """Parse a decoded ``config.json`` (a dict) into a :class:`Spec`.

    Raises InvalidArgument naming the JSON path of the first bad field.
    """
    if not isinstance(raw, dict):
        raise InvalidArgument("expected a JSON object at the top level")
    version = _get(raw, "ociVersion", str, "", required=True)
    root = _get(raw, "root", dict, "", required=True)
    mounts = []
    for mw, m in _objects(raw, "mounts", ""):
        mounts.append(MountSpec(
            destination=_get(m, "destination", str, mw, required=True),
            type=_get(m, "type", str, mw, ""),
            source=_get(m, "source", str, mw, ""),
            options=_strings(m, "options", mw),
        ))
        for key in ("uidMappings", "gidMappings"):
            if m.get(key):
                raise InvalidArgument(f"{mw}.{key}: id-mapped mounts are not supported by pyrun yet")
    process = _get(raw, "process", dict, "")
    for section in ("windows", "solaris", "vm", "zos"):
        if raw.get(section) is not None:
            raise InvalidArgument(f"{section}: not a Linux configuration")
    if not _get(root, "path", str, "root", required=True):
        raise InvalidArgument("root.path: must not be empty")
    return Spec(
        oci_version=version,
        root=Root(_get(root, "path", str, "root", required=True),
                  _get(root, "readonly", bool, "root", False)),
        process=_parse_process(process) if process is not None else None,
        hostname=_get(raw, "hostname", str, "", ""),
        domainname=_get(raw, "domainname", str, "", ""),
        mounts=tuple(mounts),
        hooks=_parse_hooks(_get(raw, "hooks", dict, "", {})),
        annotations=_string_map(raw, "annotations", ""),
        linux=_parse_linux(_get(raw, "linux", dict, "", {})),
    )


def load(path):
    """Read and parse a ``config.json`` file.  Raises NotFound if it is
    missing and InvalidArgument (with the file name) if it is not valid
    JSON or not a valid spec."""
    from pyrun.errdefs import NotFound
    from pyrun.jsonio import loads

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    try:
        raw = loads(data)
    except ValueError as e:
        raise InvalidArgument(f"{path}: not valid JSON: {e}") from None
    try:
        return parse(raw)
    except InvalidArgument as e:
        raise InvalidArgument(f"{path}: {e}") from None
