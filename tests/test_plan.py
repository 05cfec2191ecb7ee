"""Unit tests of the child stage's plan: the exact steps, flags and paths
that create would hand to the C stage, without running anything."""
import copy

import pytest

from pyrun import linux as L
from pyrun._native import lib
from pyrun.errdefs import InvalidArgument, NotImplementedYet
from pyrun.oci import spec as ocispec
from pyrun.oci.default import default_spec
from pyrun.oci.validate import validate
from pyrun.runtime import plan as planner


def build(tmp_path, **changes):
    raw = copy.deepcopy(default_spec())
    raw["process"]["terminal"] = False
    raw["linux"].pop("resources")
    for key, value in changes.items():
        section, _, field = key.partition("_")
        if section in ("process", "linux"):
            raw[section][field] = value
        else:
            raw[key] = value
    spec = ocispec.parse(raw)
    validate(spec)
    inp = planner.Inputs(bundle=str(tmp_path), rootfs=str(tmp_path), fifo_fd=9, container_id="c")
    plan = planner.build(spec, inp)
    for fd in plan.ns_fds.values():
        import os
        os.close(fd)
    return plan


def kinds(plan):
    names = {getattr(lib, n): n[6:] for n in dir(lib) if n.startswith("PR_OP_")}
    return [names[op.kind] for op in plan.ops]


def find(plan, text):
    return next(op for op in plan.ops if text in op.what)


def test_default_order(tmp_path):
    plan = build(tmp_path)
    k = kinds(plan)
    assert plan.clone_flags == (L.CLONE_NEWPID | L.CLONE_NEWNET | L.CLONE_NEWIPC
                                | L.CLONE_NEWUTS | L.CLONE_NEWNS)
    # namespaces, rootfs, devices, pivot, identity, exec — runc's order
    assert k.index("SETHOSTNAME") < k.index("OPEN_ROOT") < k.index("MKNOD") \
        < k.index("PIVOT_ROOT") < k.index("IDENTITY") < k.index("WAIT_START") < k.index("EXEC")
    assert k[-1] == "EXEC" and k.count("PIVOT_ROOT") == 1
    first = next(op for op in plan.ops if op.kind == lib.PR_OP_MOUNT)
    assert first.flags == L.MS_SLAVE | L.MS_REC and first.s2 == "/"   # before any other mount


def test_bind_mount_flags(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    mounts = default_spec()["mounts"] + [
        {"destination": "/data", "type": "bind", "source": str(src),
         "options": ["rbind", "ro", "nosuid", "rshared", "rro"]}]
    op = find(build(tmp_path, mounts=mounts), "on /data")
    assert op.flags == L.MS_BIND | L.MS_REC               # the first call: bind only
    assert op.flags2 == L.MS_RDONLY | L.MS_NOSUID         # then the remount
    assert op.flags3 == L.MS_SHARED | L.MS_REC            # then propagation
    assert op.n2 == 0x1                                   # rro: MOUNT_ATTR_RDONLY, recursively
    assert op.s2 == "/data" and op.n1 == lib.PR_MNT_BIND_SOURCE


def test_fs_mount_data_and_flags(tmp_path):
    op = find(build(tmp_path), "on /dev/shm")
    assert op.s3 == "tmpfs" and op.s4 == "mode=1777,size=65536k"
    assert op.flags == L.MS_NOSUID | L.MS_NOEXEC | L.MS_NODEV


def test_missing_bind_source(tmp_path):
    mounts = [{"destination": "/x", "type": "bind", "source": "nope", "options": ["bind"]}]
    with pytest.raises(InvalidArgument, match=r"mounts\[0\]: bind source 'nope' does not exist"):
        build(tmp_path, mounts=mounts)


def test_joining_a_pid_namespace_takes_two_stages(tmp_path):
    ns = [{"type": "pid", "path": "/proc/self/ns/pid"}, {"type": "mount"},
          {"type": "network", "path": "/proc/self/ns/net"}]
    plan = build(tmp_path, linux_namespaces=ns, hostname="")
    k = kinds(plan)
    assert plan.clone_flags == 0
    # joins first (pid before mount), then the new ones, then the fork
    assert k[:4] == ["SETNS", "SETNS", "UNSHARE", "FORK"]
    assert [op.flags for op in plan.ops[:2]] == [L.CLONE_NEWNET, L.CLONE_NEWPID]
    assert plan.ops[2].flags == L.CLONE_NEWNS


def test_new_user_namespace_waits_for_id_maps(tmp_path):
    ns = [{"type": "user"}, {"type": "mount"}, {"type": "pid"}]
    plan = build(tmp_path, linux_namespaces=ns, hostname="",
                 linux_uidMappings=[{"containerID": 0, "hostID": 1000, "size": 1}],
                 linux_gidMappings=[{"containerID": 0, "hostID": 1000, "size": 1}])
    assert plan.clone_flags & L.CLONE_NEWUSER
    assert kinds(plan)[:2] == ["SYNC", "SETRESID0"]
    assert plan.syncs[0] == planner.SYNC_IDMAP
    # no mknod in a user namespace: the host's nodes are bound instead
    null = find(plan, "/dev/null")
    assert null.n1 == lib.PR_MKNOD_BIND


def test_seccomp_placement(tmp_path):
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    k = kinds(build(tmp_path, linux_seccomp=profile, process_noNewPrivileges=False))
    assert k.index("SECCOMP") < k.index("CAPBSET") < k.index("IDENTITY")   # needs CAP_SYS_ADMIN
    k = kinds(build(tmp_path, linux_seccomp=profile, process_noNewPrivileges=True))
    assert k.index("WAIT_START") < k.index("SECCOMP") == len(k) - 2         # as late as possible
    assert k.index("CHDIR") < k.index("CLOSE_FDS") < k.index("WAIT_START")


def test_no_mount_namespace_uses_chroot(tmp_path):
    plan = build(tmp_path, linux_namespaces=[{"type": "pid"}], hostname="",
                 root={"path": str(tmp_path), "readonly": False})
    k = kinds(plan)
    assert "CHROOT" in k and "PIVOT_ROOT" not in k
    assert not any(op.kind == lib.PR_OP_MOUNT and op.s2 == "/" for op in plan.ops)


def test_capability_masks(tmp_path):
    caps = {"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL"], "inheritable": [], "ambient": []}
    op = find(build(tmp_path, process_capabilities=caps), "capset")
    assert op.caps["bounding"] == (1 << 5) | 1 and op.caps["effective"] == 1 << 5


@pytest.mark.parametrize("raw, message", [
    ({"ociVersion": "1.0.2"}, "root: required field is missing"),
    ({"ociVersion": "1.0.2", "root": {"path": "r"}, "process": {"cwd": "/", "user": {"uid": "x"}}},
     "process.user.uid: expected an integer"),
    ({"ociVersion": "1.0.2", "root": {"path": "r"}, "linux": {"namespaces": [{"type": "bogus"}]}},
     r"linux.namespaces\[0\].type: unknown namespace type 'bogus'"),
    ({"ociVersion": "1.0.2", "root": {"path": "r"},
      "process": {"cwd": "/", "rlimits": [{"type": "RLIMIT_NOPE", "soft": 1, "hard": 1}]}},
     r"process.rlimits\[0\].type: unknown rlimit"),
    ({"ociVersion": "1.0.2", "root": {"path": "r"},
      "process": {"cwd": "/", "capabilities": {"bounding": ["CAP_FLY"]}}},
     r"process.capabilities.bounding\[0\]: unknown capability 'CAP_FLY'"),
])
def test_parse_errors_name_the_field(raw, message):
    with pytest.raises(InvalidArgument, match=message):
        ocispec.parse(raw)


@pytest.mark.parametrize("changes, error, message", [
    ({"ociVersion": "0.1.0"}, InvalidArgument, "ociVersion"),
    ({"hostname": "x", "linux": {"namespaces": [{"type": "mount"}]}}, InvalidArgument,
     "hostname: setting it needs a new uts namespace"),
    ({"linux": {"namespaces": [{"type": "mount"}],
                "uidMappings": [{"containerID": 0, "hostID": 0, "size": 1}]}}, InvalidArgument,
     "id mappings need a user namespace"),
    ({"linux": {"namespaces": [{"type": "mount"}], "sysctl": {"kernel.domainname": "x"}}},
     InvalidArgument, "needs a new uts namespace"),
    ({"linux": {"namespaces": [{"type": "mount"}], "timeOffsets": {"monotonic": {"secs": 1}}}},
     NotImplementedYet, "timeOffsets"),
])
def test_validation_errors(changes, error, message):
    raw = {"ociVersion": "1.0.2", "root": {"path": "r"},
           "process": {"cwd": "/", "args": ["sh"]}}
    raw.update(changes)
    with pytest.raises(error, match=message):
        validate(ocispec.parse(raw))
