import os
import shutil
import subprocess

import pytest

from pyrun.fsutil import remove_tree

BUSYBOX = os.environ.get("PYRUN_TEST_BUSYBOX", "/bin/busybox")  # the VM runs get a copy


def make_busybox_rootfs(root):
    """Fill ``root`` with the host's static busybox and its applet links."""
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list-full"], check=True,
                             capture_output=True, text=True).stdout.split()
    for applet in applets:
        path = os.path.join(root, applet)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.lexists(path):
            os.symlink("/bin/busybox", path)
    for d in ("proc", "sys", "dev", "tmp", "etc", "root"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory):
    """A read-only-by-convention busybox root filesystem (session-wide)."""
    root = str(tmp_path_factory.mktemp("busybox") / "rootfs")
    make_busybox_rootfs(root)
    return root


@pytest.fixture
def pyrun(tmp_path):
    """The pyrun CLI with a private --root in ``tmp_path``; containers
    left at the end are deleted (--force)."""
    from runtime_helpers import Pyrun
    p = Pyrun(tmp_path / "state")
    yield p
    p.cleanup()


@pytest.fixture
def safe_tmp(tmp_path):
    """A temp dir removed at the end without crossing mount points."""
    yield tmp_path
    remove_tree(str(tmp_path))



def _unmount_leftovers(where):
    """Detach any mount a test left below ``where`` so that removing the
    temp dir can never descend into a mount."""
    from pyrun import linux
    from pyrun.fsutil import mounts_under

    left = mounts_under(where) if os.path.isdir(where) else []
    for m in left:
        try:
            linux.umount2(m, linux.MNT_DETACH)
        except OSError:
            pass
    return left


def pytest_configure(config):
    # A private base temp dir per session: pytest's own numbered dirs are
    # pruned by rmtree across sessions, which could walk into the mounts
    # of another session still running on this machine.
    if config.option.basetemp is None:
        import tempfile
        config.option.basetemp = tempfile.mkdtemp(prefix="pyrun-tests-")
        config._pyrun_basetemp = config.option.basetemp


def pytest_unconfigure(config):
    base = getattr(config, "_pyrun_basetemp", None)
    if base is None:
        return
    left = _unmount_leftovers(base)
    if left:
        print(f"\nWARNING: tests left mounts behind (now detached): {left}")
    try:
        remove_tree(base)
    except OSError as e:
        print(f"\nWARNING: could not remove {base}: {e}")
from registry_fixtures import *  # noqa: E402,F401,F403  (registry test fixtures)
