"""Which cgroup layout the host has, and where a container's group lives.

Sources: runc libcontainer/cgroups (IsCgroup2UnifiedMode,
IsCgroup2HybridMode), fs/paths.go (subsysPath, innerPath),
fs2/defaultpath.go and specconv (CreateCgroupConfig), read and re-stated:

- ``cgroupsPath`` is cleaned so that it can never climb out of the
  hierarchy: ``../../x`` becomes ``x``, ``/a/../../b`` becomes ``/b``.
- An absolute path is taken from the root of each hierarchy.
- A relative path is below the cgroup of the calling process, per
  hierarchy (``/proc/self/cgroup``).  On a pure v2 host runc uses the
  *parent* of the caller's cgroup, because the caller's own group holds
  processes and so cannot have controllers enabled for its children.  In
  the cgroup2 tree of a hybrid host runc 1.1 (GetOwnCgroupPath(""))
  takes the tree's root instead: so does pyrun.
- An empty path means the container id, relative as above.
"""
import os
import posixpath

from pyrun.errdefs import FailedPrecondition, InvalidArgument

DEFAULT_ROOT = "/sys/fs/cgroup"
UNIFIED = "unified"  # where hybrid hosts mount cgroup2, below the root

# cgroup v1 hierarchies a container joins, in runc's order.  "name=systemd"
# is the named hierarchy systemd keeps; it is mounted at "systemd".
V1_CONTROLLERS = ("cpuset", "devices", "memory", "cpu", "cpuacct", "pids", "blkio",
                  "hugetlb", "net_cls", "net_prio", "perf_event", "freezer", "rdma",
                  "misc", "name=systemd")


def v1_dir_name(controller):
    return controller.removeprefix("name=")


def clean_path(path):
    """runc's utils.CleanPath: lexical clean that keeps ``..`` from leaving
    the root, for absolute and relative paths alike."""
    if not path:
        return ""
    if path.startswith("/"):
        return posixpath.normpath(path).replace("//", "/")
    rel = posixpath.relpath(posixpath.normpath("/" + path), "/")
    return "" if rel == "." else rel


def _mounts(mountinfo_path):
    """(mount point, fstype, super options) of each cgroup mount."""
    out = []
    with open(mountinfo_path) as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, super_opts = fields[sep + 1], fields[sep + 3]
            if fstype in ("cgroup", "cgroup2"):
                out.append((fields[4].replace("\\040", " "), fstype, super_opts))
    return out


def detect(mountinfo_path="/proc/self/mountinfo", root=DEFAULT_ROOT):
    """The cgroup layout below ``root``: "v2" (cgroup2 mounted at root),
    "hybrid" (v1 controllers plus cgroup2 at ``root/unified``) or "v1".

    Raises FailedPrecondition when no cgroup filesystem is mounted there.
    """
    root = root.rstrip("/") or "/"
    mounts = [m for m in _mounts(mountinfo_path)
              if m[0] == root or m[0].startswith(root + "/")]
    if any(m[0] == root and m[1] == "cgroup2" for m in mounts):
        return "v2"
    v1 = [m for m in mounts if m[1] == "cgroup"]
    if not v1:
        raise FailedPrecondition(f"no cgroup filesystem is mounted at or below {root} "
                                 f"(read {mountinfo_path})")
    if any(m[0] == os.path.join(root, UNIFIED) and m[1] == "cgroup2" for m in mounts):
        return "hybrid"
    return "v1"


def own_cgroups(proc_cgroup="/proc/self/cgroup"):
    """{controller or "" for cgroup2: path} of the calling process.  A v1
    line ``4:memory,foo:/x`` gives both "memory" and "foo"."""
    out = {}
    with open(proc_cgroup) as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def container_path(cgroups_path, container_id, controller, mode, proc_cgroup):
    """The group's path inside the hierarchy of ``controller`` ("" is the
    cgroup2 tree), as described in the module docstring."""
    inner = clean_path(cgroups_path) or clean_path(container_id)
    if not inner:
        raise InvalidArgument("cgroupsPath is empty and no container id was given")
    if inner.startswith("/"):
        return inner
    if controller == "" and mode == "hybrid":
        return "/" + inner
    own = own_cgroups(proc_cgroup)
    if controller not in own:
        raise FailedPrecondition(
            f"relative cgroupsPath {cgroups_path or container_id!r}: the calling process "
            f"has no {controller or 'cgroup2'} entry in {proc_cgroup}")
    base = own[controller]
    if mode == "v2":
        base = posixpath.dirname(base)
    return posixpath.join(base, inner)
