import os
import shutil
import subprocess

import pytest

from pyrun.fsutil import remove_tree

BUSYBOX = "/bin/busybox"


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
def safe_tmp(tmp_path):
    """A temp dir removed at the end without crossing mount points."""
    yield tmp_path
    remove_tree(str(tmp_path))


def _in_use_by_another_session(numbered_dir):
    """Whether a live pytest process other than this one owns
    ``numbered_dir`` (pytest writes its pid in the dir's ``.lock``)."""
    try:
        with open(os.path.join(numbered_dir, ".lock")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _unmount_leftovers(where):
    """Detach any mount a test left below ``where`` so that pytest's own
    temp-dir cleanup (shutil.rmtree) can never descend into a mount.  The
    numbered dirs of other pytest sessions still running (tests in other
    worktrees) are left alone."""
    from pyrun import linux
    from pyrun.fsutil import mounts_under

    left = []
    if os.path.isdir(where):
        for name in sorted(os.listdir(where)):
            d = os.path.join(where, name)
            if os.path.isdir(d) and not os.path.islink(d) and not _in_use_by_another_session(d):
                left += mounts_under(d)
    for m in left:
        try:
            linux.umount2(m, linux.MNT_DETACH)
        except OSError:
            pass
    return left


PYTEST_TMP = f"/tmp/pytest-of-{os.environ.get('USER', 'root')}"


def pytest_configure(config):
    _unmount_leftovers(PYTEST_TMP)


def pytest_sessionfinish(session, exitstatus):
    left = _unmount_leftovers(PYTEST_TMP)
    if left:
        print(f"\nWARNING: tests left mounts behind (now detached): {left}")
from registry_fixtures import *  # noqa: F401,F403  (registry test fixtures)
