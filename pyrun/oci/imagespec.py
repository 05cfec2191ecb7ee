"""The OCI spec of a container made from an image: containerd's default
spec (``oci.populateDefaultUnixSpec``) plus ``WithImageConfig``, and the
options of ``pyrunctl run`` (ctr's ``run`` flags).

The result is a plain dict ready to be written as ``config.json``; it
passes :func:`pyrun.oci.spec.parse` and :func:`pyrun.oci.validate.validate`.
User names are resolved from the image's own ``/etc/passwd`` and
``/etc/group``, read inside the rootfs (never following a link out of it).
"""
import errno
import os

from pyrun.errdefs import InvalidArgument, NotFound
from pyrun.oci.spec import CAP_NUMBERS, CAPABILITIES

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# containerd's default capabilities (oci/spec.go defaultUnixCaps).
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def default_mounts():
    """containerd's default mounts (oci/mounts.go defaultMounts): runc's
    (:func:`pyrun.oci.default.default_spec`), with /proc nosuid, noexec
    and nodev, a tmpfs on /run, and a read-only cgroup mount."""
    from pyrun.oci.default import default_spec

    mounts = default_spec()["mounts"]
    for m in mounts:
        if m["destination"] == "/proc":
            m["options"] = ["nosuid", "noexec", "nodev"]
        elif m["destination"] == "/sys/fs/cgroup":
            m["options"] = ["ro", "nosuid", "noexec", "nodev"]
    at = next(i for i, m in enumerate(mounts) if m["destination"] == "/sys/fs/cgroup")
    mounts.insert(at, {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]})
    return mounts


def _read_in_root(rootfs, path):
    """The text of ``path`` inside ``rootfs`` (resolved inside it), or ""
    when it does not exist."""
    from pyrun import linux

    try:
        dirfd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"rootfs {rootfs}: no such directory") from None
    try:
        fd = linux.openat2(dirfd, path, os.O_RDONLY | os.O_CLOEXEC, 0,
                           linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return ""
        raise
    finally:
        os.close(dirfd)
    try:
        with os.fdopen(fd, "rb") as f:
            return f.read(4 << 20).decode(errors="replace")
    except IsADirectoryError:
        return ""


def _entries(text, fields):
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= fields and not line.startswith("#"):
            yield parts


def resolve_user(rootfs, user):
    """``user`` as an image or ``--user`` gives it (``name``, ``uid``,
    ``name:group``, ``uid:gid``, ``""``) -> (uid, gid, additional gids),
    from the rootfs's /etc/passwd and /etc/group as containerd's
    ``WithUser`` and ``WithAdditionalGIDs`` do.  Raises InvalidArgument
    naming the user or group that is unknown to the image."""
    name, _, group = (user or "").partition(":")
    if name in ("", "0", "root") and not group:
        return 0, 0, []
    passwd = _read_in_root(rootfs, "/etc/passwd")
    uid = gid = 0
    username = None
    if not name:
        name = "0"
    if name.isdigit():
        uid = int(name)
        for p in _entries(passwd, 4):
            if p[2] == name and p[3].isdigit():
                gid, username = int(p[3]), p[0]
                break
    else:
        for p in _entries(passwd, 4):
            if p[0] == name and p[2].isdigit() and p[3].isdigit():
                uid, gid, username = int(p[2]), int(p[3]), name
                break
        else:
            raise InvalidArgument(f"user {name!r}: no such user in the image's /etc/passwd")
    groups = _read_in_root(rootfs, "/etc/group")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for g in _entries(groups, 3):
                if g[0] == group and g[2].isdigit():
                    gid = int(g[2])
                    break
            else:
                raise InvalidArgument(f"group {group!r}: no such group in the image's /etc/group")
    extra = []
    if username is not None:
        for g in _entries(groups, 4):
            if username in g[3].split(",") and g[2].isdigit() and int(g[2]) != gid:
                extra.append(int(g[2]))
    if uid > 0xFFFFFFFE or gid > 0xFFFFFFFE:
        raise InvalidArgument(f"user {user!r}: id out of range")
    return uid, gid, sorted(set(extra))


def _caps(names, what):
    out = []
    for n in names:
        cap = n.upper()
        if not cap.startswith("CAP_"):
            cap = "CAP_" + cap
        if cap == "CAP_ALL":
            return list(CAPABILITIES)
        if cap not in CAP_NUMBERS:
            raise InvalidArgument(f"{what}: unknown capability {n!r}")
        out.append(cap)
    return out


def image_spec(cid, namespace, config, rootfs, *, args=None, env=(), cwd=None, user=None,
               hostname=None, tty=False, read_only=False, net="none", mounts=(),
               memory=None, cpus=None, pids_limit=None, cap_add=(), cap_drop=(),
               privileged=False, seccomp=True, labels=None, etc_dir=None):
    """The config.json (a dict) of container ``cid`` in ``namespace``.

    ``config``: the image's config (an object with ``entrypoint``, ``cmd``,
    ``env``, ``working_dir``, ``user``, as :class:`pyrun.images.store.
    ImageConfig`).  ``args`` replace the image's Cmd (ctr: the args after
    the id).  ``memory`` in bytes, ``cpus`` a float of CPUs (quota over a
    100000 µs period), ``pids_limit`` a count.  ``net``: "none" (a new
    network namespace with only lo), "host", or "cni:<network>" (a new
    namespace, which the caller attaches to the CNI network; see
    :func:`cni_network`).  ``mounts``: runtime-spec
    mount dicts added after the defaults.  ``etc_dir``: a directory holding
    ``hosts``, ``resolv.conf`` and ``hostname`` to bind into /etc (written
    here).  Raises InvalidArgument for a container with nothing to run or a
    bad option.
    """
    argv = list(config.entrypoint) + (list(args) if args else list(config.cmd))
    if not argv:
        raise InvalidArgument("the image has no Entrypoint or Cmd: give a command to run")
    envs = list(config.env) or [DEFAULT_PATH]
    if not any(e.startswith("PATH=") for e in envs):
        envs.insert(0, DEFAULT_PATH)
    merged = {}
    for e in list(env):
        if "=" not in e:
            raise InvalidArgument(f"--env {e!r}: expected KEY=VALUE")
    for e in config.env:
        if "=" not in e:
            # runc refuses such an entry too ("invalid environment
            # variable"): say it is the image's.
            raise InvalidArgument(f"the image config's Env entry {e!r} is not KEY=VALUE: no "
                                  "container can run it")
    for e in envs + list(env):
        merged[e.split("=", 1)[0]] = e
    if tty:
        merged.setdefault("TERM", "TERM=xterm")
    uid, gid, extra = resolve_user(rootfs, user if user is not None else config.user)

    caps = list(CAPABILITIES) if privileged else list(DEFAULT_CAPS)
    caps = [c for c in caps if c not in set(_caps(cap_drop, "--cap-drop"))]
    caps += [c for c in _caps(cap_add, "--cap-add") if c not in caps]
    # This host has no CAP_SYS_RESOURCE to give (see MACHINE.md); the
    # kernel refuses a bounding set that asks for a capability we lack.
    caps = [c for c in caps if c in _available_caps()]

    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if net == "none" or cni_network(net):
        namespaces.append({"type": "network"})
    elif net != "host":
        raise InvalidArgument(f"--net {net!r}: use host, none or cni:<network>")
    mount_list = default_mounts()
    if net == "host":
        mount_list = [m for m in mount_list if m["destination"] != "/sys"] + [
            {"destination": "/sys", "type": "bind", "source": "/sys",
             "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}]
    host = hostname or (os.uname().nodename if net == "host" else cid[:63])
    if etc_dir is not None:
        mount_list += _etc_files(etc_dir, host, net)
    mount_list += list(mounts)

    resources = {"devices": [{"allow": False, "access": "rwm"}]}
    if privileged:
        resources["devices"] = [{"allow": True, "access": "rwm"}]
    if memory is not None:
        if memory <= 0:
            raise InvalidArgument(f"--memory {memory}: must be positive")
        resources["memory"] = {"limit": int(memory)}
    if cpus is not None:
        if not 0 < cpus <= 1e6:  # also NaN and infinity
            raise InvalidArgument(f"--cpus {cpus}: must be a positive number of CPUs "
                                  "(at most 1000000)")
        resources["cpu"] = {"quota": int(cpus * 100000), "period": 100000}
    if pids_limit is not None:
        if pids_limit <= 0:
            raise InvalidArgument(f"--pids-limit {pids_limit}: must be positive")
        resources["pids"] = {"limit": int(pids_limit)}

    spec = {
        "ociVersion": "1.1.0",
        "process": {
            "terminal": bool(tty),
            "user": {"uid": uid, "gid": gid, "additionalGids": extra},
            "args": argv,
            "env": list(merged.values()),
            "cwd": cwd or config.working_dir or "/",
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": False,
        },
        "root": {"path": rootfs, "readonly": bool(read_only)},
        "hostname": host if net != "host" else "",
        "mounts": mount_list,
        "annotations": dict(labels or {}),
        "linux": {
            "cgroupsPath": f"/pyrun/{namespace}/{cid}",  # all of pyrun's groups under one parent
            "resources": resources,
            "namespaces": namespaces,
            "maskedPaths": [] if privileged else list(MASKED_PATHS),
            "readonlyPaths": [] if privileged else list(READONLY_PATHS),
        },
    }
    if seccomp and not privileged:
        from pyrun.oci.seccomp_default import default_profile
        spec["linux"]["seccomp"] = default_profile(caps)
    return spec


def _available_caps():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    mask = int(line.split()[1], 16)
                    return {name for i, name in enumerate(CAPABILITIES) if mask >> i & 1}
    except OSError:
        pass
    return set(CAPABILITIES)


def cni_network(net):
    """The network name of ``net`` = "cni:<network>" (None for anything
    else).  Raises InvalidArgument for "cni:" with an empty or bad name
    (CNI names: letters, digits, ``_.-``, not starting with a symbol)."""
    if not isinstance(net, str) or not net.startswith("cni:"):
        return None
    from pyrun.network.cni.config import NAME
    name = net[4:]
    if not NAME.match(name):
        raise InvalidArgument(f"--net {net!r}: want cni:<network>, the network name being "
                              "letters, digits and _.- (not starting with a symbol)")
    return name


def _etc_files(etc_dir, hostname, net):
    """Write /etc/hosts, /etc/resolv.conf and /etc/hostname for the
    container into ``etc_dir`` and return their bind mounts (as Docker and
    nerdctl provide them; ctr leaves the image's own)."""
    os.makedirs(etc_dir, exist_ok=True)
    hosts = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
             f"127.0.1.1\t{hostname}\n")
    if net == "host" or cni_network(net):
        try:
            with open("/etc/resolv.conf") as f:
                resolv = f.read()
        except OSError:
            resolv = ""
    else:
        resolv = ""  # no network: no name servers to reach
    files = {"hosts": hosts, "resolv.conf": resolv, "hostname": hostname + "\n"}
    out = []
    for name, text in files.items():
        path = os.path.join(etc_dir, name)
        with open(path, "w") as f:
            f.write(text)
        out.append({"destination": f"/etc/{name}", "type": "bind", "source": path,
                    "options": ["rbind", "rprivate", "rw"]})
    return out
