"""pyrun.mount: option parsing, mount_all/unmount_all on real mounts, and
overlay option strings longer than a page."""
import os

import pytest

from pyrun import linux, mount
from pyrun.errdefs import InvalidArgument
from pyrun.fsutil import mounts_under
from pyrun.mount import Mount, mount_all, unmount_all


@pytest.fixture
def where(safe_tmp):
    """A temp dir; anything mounted below it is unmounted at the end."""
    try:
        yield str(safe_tmp)
    finally:
        unmount_all(str(safe_tmp), linux.MNT_DETACH)


def test_parse_options_flags_and_data():
    flags, data = mount.parse_options(["rbind", "ro", "nosuid", "rw", "lowerdir=/a:/b", "index=off",
                                       "rprivate"])
    assert flags == linux.MS_BIND | linux.MS_REC | linux.MS_NOSUID | linux.MS_PRIVATE
    assert data == "lowerdir=/a:/b,index=off"


def test_split_and_compact_lowerdirs():
    assert mount._split_lowerdir(r"/a\:b:/c") == ["/a:b", "/c"]
    cwd, short = mount.compact_lowerdirs("index=off,lowerdir=/x/s/2/fs:/x/s/1/fs,upperdir=/u")
    assert (cwd, short) == ("/x/s", "index=off,lowerdir=2/fs:1/fs,upperdir=/u")
    assert mount.compact_lowerdirs("upperdir=/u") == ("", "upperdir=/u")


@pytest.mark.root
def test_bind_ro_and_unmount_all_nested(where):
    src = os.path.join(where, "src")
    os.makedirs(os.path.join(src, "sub"))
    top = os.path.join(where, "mnt")
    os.mkdir(top)
    mount_all([Mount("bind", src, options=("rbind", "ro")),
               Mount("tmpfs", "tmpfs", target="sub", options=("size=1m",))], top)
    with pytest.raises(OSError) as e:
        open(os.path.join(top, "x"), "w")
    assert e.value.errno == 30  # EROFS
    with open(os.path.join(top, "sub", "y"), "w") as f:  # the tmpfs on top is rw
        f.write("y")
    # A second mount stacked on the same path goes too.
    mount_all([Mount("tmpfs", "tmpfs")], os.path.join(top, "sub"))
    assert len(mounts_under(top)) == 2
    unmount_all(top)
    assert mounts_under(top) == []
    assert os.listdir(top) == []
    unmount_all(top)  # nothing mounted: not an error


@pytest.mark.root
def test_mount_all_undoes_on_failure_and_names_everything(where):
    top = os.path.join(where, "mnt")
    os.makedirs(os.path.join(top, "a"))
    missing = os.path.join(where, "missing")
    with pytest.raises(OSError) as e:
        mount_all([Mount("tmpfs", "tmpfs", target="a"),
                   Mount("bind", missing, target="a", options=("rbind", "nosuid"))], top)
    msg = str(e.value)
    for part in (repr(missing), repr(os.path.join(top, "a")), "'bind'", "MS_BIND|MS_REC",
                 "rbind,nosuid", "ENOENT"):
        assert part in msg
    assert mounts_under(top) == []


def test_mount_all_rejects_escaping_targets(where):
    for bad in ("/etc", "../x", "a/../../x"):
        with pytest.raises(InvalidArgument, match="must be relative"):
            mount_all([Mount("tmpfs", "tmpfs", target=bad)], where)


def _long_lowers(where, n=40):
    # Long common prefix, short leaves: like a snapshotter root.
    base = os.path.join(where, "p" * 200, "snapshots")
    lowers = []
    for i in range(n):
        d = os.path.join(base, str(i), "fs")
        os.makedirs(d)
        with open(os.path.join(d, f"only-{i}"), "w") as f:
            f.write(str(i))
        with open(os.path.join(d, "shared"), "w") as f:
            f.write(str(i))
        lowers.append(d)
    return lowers


def _check_long_overlay(where, chdir, monkeypatch):
    lowers = _long_lowers(where)
    upper, work, top = (os.path.join(where, n) for n in ("upper", "work", "mnt"))
    for d in (upper, work, top):
        os.mkdir(d)
    m = Mount("overlay", "overlay", options=(f"workdir={work}", f"upperdir={upper}",
                                             "lowerdir=" + ":".join(lowers)))
    assert len(",".join(m.options)) > 4096
    if chdir:
        monkeypatch.setattr(mount, "_has_lowerdir_plus", False)
    cwd = os.getcwd()
    mount_all([m], top)
    try:
        assert os.getcwd() == cwd
        names = set(os.listdir(top))
        assert names == {"shared"} | {f"only-{i}" for i in range(len(lowers))}
        with open(os.path.join(top, "shared")) as f:
            assert f.read() == "0"  # the first lower dir wins
        with open(os.path.join(top, "new"), "w") as f:
            f.write("x")
        assert os.path.exists(os.path.join(upper, "new"))
    finally:
        unmount_all(top)


@pytest.mark.root
def test_long_overlay_options_new_mount_api(where, monkeypatch):
    _check_long_overlay(where, False, monkeypatch)
    assert mount._has_lowerdir_plus is True


@pytest.mark.root
def test_long_overlay_options_chdir_fallback(where, monkeypatch):
    _check_long_overlay(where, True, monkeypatch)


@pytest.mark.root
def test_overlay_options_too_long_even_compacted(where, monkeypatch):
    monkeypatch.setattr(mount, "_has_lowerdir_plus", False)
    lowers = [os.path.join(where, "l" * 200 + str(i)) for i in range(25)]
    for d in lowers:
        os.mkdir(d)
    with pytest.raises(InvalidArgument, match="at most 4095"):
        mount_all([Mount("overlay", "overlay", options=("lowerdir=" + ":".join(lowers),))], where)


@pytest.mark.root
def test_overlay_error_names_the_lower_dir(where):
    with pytest.raises(OSError) as e:
        mount_all([Mount("overlay", "overlay", options=("lowerdir=/nonexistent-lower:/tmp",))],
                  where)
    assert "/nonexistent-lower" in str(e.value) and "type='overlay'" in str(e.value)


@pytest.mark.root
def test_overlay_error_names_a_long_lower_dir(where):
    missing = "/" + "m" * 200 + "/" + "n" * 100  # over fsconfig's string limit: an fd
    with pytest.raises(OSError) as e:
        mount_all([Mount("overlay", "overlay", options=(f"lowerdir={missing}:/tmp",))], where)
    assert e.value.errno == 2 and missing in str(e.value) and "type='overlay'" in str(e.value)
