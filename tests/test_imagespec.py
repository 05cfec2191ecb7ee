"""The spec of a container made from an image (containerd's defaults plus
the image config and ctr's run options)."""
import os

import pytest

from pyrun.errdefs import InvalidArgument
from pyrun.oci import spec as ocispec
from pyrun.oci.imagespec import DEFAULT_PATH, image_spec, resolve_user
from pyrun.oci.validate import validate


class Config:
    def __init__(self, **kw):
        self.entrypoint = kw.get("entrypoint", ())
        self.cmd = kw.get("cmd", ("sh",))
        self.env = kw.get("env", ())
        self.working_dir = kw.get("working_dir", "")
        self.user = kw.get("user", "")


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
        "daemon:x:2:2::/:/bin/false\n")
    (root / "etc" / "group").write_text(
        "root:x:0:\napp:x:1000:\nwheel:x:10:app,daemon\nstaff:x:50:app\n")
    return str(root)


def test_resolve_user(rootfs):
    assert resolve_user(rootfs, "") == (0, 0, [])
    assert resolve_user(rootfs, "app") == (1000, 1000, [10, 50])
    assert resolve_user(rootfs, "app:staff") == (1000, 50, [10])
    assert resolve_user(rootfs, "1000") == (1000, 1000, [10, 50])
    assert resolve_user(rootfs, "4242:4343") == (4242, 4343, [])
    with pytest.raises(InvalidArgument, match="user 'nobody': no such user"):
        resolve_user(rootfs, "nobody")
    with pytest.raises(InvalidArgument, match="group 'nogroup': no such group"):
        resolve_user(rootfs, "app:nogroup")


def test_passwd_symlink_stays_inside(rootfs, tmp_path):
    """An image whose /etc/passwd links to the host's must not read the
    host's file."""
    os.unlink(os.path.join(rootfs, "etc", "passwd"))
    os.symlink("/etc/passwd", os.path.join(rootfs, "etc", "passwd"))
    with pytest.raises(InvalidArgument, match="no such user"):
        resolve_user(rootfs, "app")   # /etc/passwd resolves to <rootfs>/etc/passwd: a loop


def test_image_config_and_options(rootfs, tmp_path):
    cfg = Config(entrypoint=("/bin/app",), cmd=("--serve",), env=("A=1",), working_dir="/srv",
                 user="app")
    spec = image_spec("c1", "team-a", cfg, rootfs, args=["--once"], env=["B=2", "A=3"],
                      memory=64 << 20, cpus=0.5, pids_limit=20, cap_add=["sys_admin"],
                      cap_drop=["CAP_MKNOD"], seccomp=False, etc_dir=str(tmp_path / "etc"))
    p = spec["process"]
    assert p["args"] == ["/bin/app", "--once"]
    assert p["env"] == [DEFAULT_PATH, "A=3", "B=2"]
    assert p["cwd"] == "/srv" and p["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10, 50]}
    caps = p["capabilities"]["bounding"]
    assert "CAP_SYS_ADMIN" in caps and "CAP_MKNOD" not in caps
    assert spec["linux"]["cgroupsPath"] == "/pyrun/team-a/c1"
    r = spec["linux"]["resources"]
    assert r["memory"] == {"limit": 64 << 20} and r["cpu"] == {"quota": 50000, "period": 100000}
    assert r["pids"] == {"limit": 20}
    assert {"type": "network"} in spec["linux"]["namespaces"]
    assert [m["destination"] for m in spec["mounts"]][-3:] == ["/etc/hosts", "/etc/resolv.conf",
                                                              "/etc/hostname"]
    assert (tmp_path / "etc" / "hostname").read_text() == "c1\n"
    validate(ocispec.parse(spec))


def test_cni_network_is_a_new_namespace(rootfs, tmp_path):
    spec = image_spec("c1", "ns", Config(), rootfs, net="cni:testnet", seccomp=False,
                      etc_dir=str(tmp_path / "etc"))
    assert {"type": "network"} in spec["linux"]["namespaces"]
    assert spec["hostname"] == "c1"
    validate(ocispec.parse(spec))


def test_no_command_and_bad_options(rootfs):
    with pytest.raises(InvalidArgument, match="no Entrypoint or Cmd"):
        image_spec("c1", "ns", Config(cmd=()), rootfs, seccomp=False)
    with pytest.raises(InvalidArgument, match="--cap-add: unknown capability 'fly'"):
        image_spec("c1", "ns", Config(), rootfs, cap_add=["fly"], seccomp=False)
    with pytest.raises(InvalidArgument, match="--net 'bridge'"):
        image_spec("c1", "ns", Config(), rootfs, net="bridge", seccomp=False)
    for bad in ("cni:", "cni:-x", "cni:a/b"):
        with pytest.raises(InvalidArgument, match="want cni:<network>"):
            image_spec("c1", "ns", Config(), rootfs, net=bad, seccomp=False)
    with pytest.raises(InvalidArgument, match="--memory -1: must be positive"):
        image_spec("c1", "ns", Config(), rootfs, memory=-1, seccomp=False)


def test_image_env_without_equals_is_blamed_on_the_image(rootfs):
    """An image with an Env entry without '=' failed every container with
    "--env 'NOEQ': expected KEY=VALUE", a flag the user never gave.  (runc
    refuses such an entry as well: the error now names the image.)"""
    with pytest.raises(InvalidArgument, match="image config's Env entry 'NOEQ'"):
        image_spec("c1", "ns", Config(env=("NOEQ", "A=1")), rootfs, seccomp=False)
    with pytest.raises(InvalidArgument, match="--env 'NOEQ2'"):
        image_spec("c1", "ns", Config(), rootfs, env=["NOEQ2"], seccomp=False)
    with pytest.raises(InvalidArgument, match="--cpus nan"):
        image_spec("c1", "ns", Config(), rootfs, cpus=float("nan"), seccomp=False)

