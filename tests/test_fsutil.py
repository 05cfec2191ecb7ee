import os

import pytest

from pyrun import linux
from pyrun.errdefs import FailedPrecondition
from pyrun.fsutil import atomic_write, remove_at, remove_tree


def test_remove_tree_removes_everything(tmp_path):
    d = tmp_path / "t"
    (d / "a" / "b").mkdir(parents=True)
    (d / "a" / "f").write_text("x")
    os.symlink("/etc", d / "link")
    remove_tree(str(d))
    assert not d.exists()
    assert os.path.isdir("/etc")


@pytest.mark.root
def test_remove_tree_refuses_mount_points(tmp_path):
    d = tmp_path / "t"
    (d / "m").mkdir(parents=True)
    (d / "m" / "keep").write_text("x")
    linux.mount("tmpfs", str(d / "m"), "tmpfs")
    try:
        with pytest.raises(FailedPrecondition, match="mount points"):
            remove_tree(str(d))
    finally:
        linux.umount2(str(d / "m"))
    assert (d / "m" / "keep").exists()


def test_atomic_write(tmp_path):
    p = tmp_path / "state.json"
    atomic_write(str(p), b"{}")
    assert p.read_bytes() == b"{}"
    assert [x.name for x in tmp_path.iterdir()] == ["state.json"]


def test_mount_error_names_flags(tmp_path):
    with pytest.raises(linux.SyscallError) as e:
        linux.mount("/nonexistent-src", str(tmp_path / "missing"), None,
                    linux.MS_BIND | linux.MS_REC)
    assert "MS_BIND|MS_REC" in str(e.value)
    assert e.value.errno == 2


@pytest.mark.root
def test_remove_at(tmp_path):
    d = tmp_path / "t"
    (d / "sub" / "deep").mkdir(parents=True)
    (d / "sub" / "deep" / "f").write_text("x")
    (d / "victim").write_text("keep")
    os.symlink(str(d / "victim"), d / "link")
    (d / "m").mkdir()
    fd = os.open(d, os.O_PATH | os.O_DIRECTORY)
    try:
        remove_at(fd, "sub")
        remove_at(fd, "link")
        remove_at(fd, "missing")
        linux.mount("tmpfs", str(d / "m"), "tmpfs")
        try:
            with pytest.raises(FailedPrecondition, match="mount points"):
                remove_at(fd, "m")
        finally:
            linux.umount2(str(d / "m"))
    finally:
        os.close(fd)
    assert sorted(os.listdir(d)) == ["m", "victim"]
    assert (d / "victim").read_text() == "keep"
