"""The shared snapshotter suite (like containerd's snapshots/testsuite),
run against every registered backend with real binds and overlayfs."""
import contextlib
import errno
import os
import sqlite3
import stat
import struct
import threading

import pytest

from pyrun import linux
from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyrun.fsutil import mounts_under, remove_tree
from pyrun.mount import mount_all, unmount_all
from pyrun.snapshots import Info, Kind, registry

pytestmark = pytest.mark.root
BACKENDS = sorted(registry.BUILTINS)


@pytest.fixture
def work(tmp_path):
    """A temp dir that is unmounted and removed (never crossing a mount)
    at the end."""
    try:
        yield str(tmp_path)
    finally:
        unmount_all(str(tmp_path), linux.MNT_DETACH)
        remove_tree(str(tmp_path))


@pytest.fixture(params=BACKENDS)
def sn(request, work):
    s = registry.new(request.param, os.path.join(work, "root"))
    s.backend = request.param
    try:
        yield s
    finally:
        s.close()


@contextlib.contextmanager
def mounted(mounts, where):
    os.makedirs(where, exist_ok=True)
    mount_all(mounts, where)
    try:
        yield where
    finally:
        unmount_all(where)


def snapshot_dirs(s):
    return sorted(os.listdir(os.path.join(s.root, "snapshots")))


def db_ids(root):
    c = sqlite3.connect(os.path.join(root, "metadata.db"))
    try:
        return sorted(str(r[0]) for r in c.execute("SELECT id FROM snapshots"))
    finally:
        c.close()


def fs_dir(s, key):
    """The ``fs`` dir of snapshot ``key``, found in the metadata db."""
    c = sqlite3.connect(os.path.join(s.root, "metadata.db"))
    try:
        (id,), = c.execute("SELECT id FROM snapshots WHERE key = ?", (key,))
    finally:
        c.close()
    return os.path.join(s.root, "snapshots", str(id), "fs")


def write(path, data):
    with open(path, "w") as f:
        f.write(data)


def read(path):
    with open(path) as f:
        return f.read()


def layer(s, work, name, parent, fn, labels=None):
    """Prepare ``<name>-active`` on ``parent``, run ``fn(mountpoint)``,
    commit as ``name``."""
    key = f"{name}-active"
    with mounted(s.prepare(key, parent), os.path.join(work, "mnt")) as m:
        fn(m)
    s.commit(name, key, labels=labels)
    return name


def test_prepare_commit_chain(sn, work):
    layer(sn, work, "a", "", lambda m: write(f"{m}/a", "a"))
    info = sn.stat("a")
    assert (info.kind, info.name, info.parent) == (Kind.COMMITTED, "a", "")
    with pytest.raises(NotFound, match="a-active"):
        sn.stat("a-active")
    layer(sn, work, "b", "a", lambda m: write(f"{m}/b", read(f"{m}/a") + "b"))
    sn.prepare("c", "b", labels={"role": "rw"})
    info = sn.stat("c")
    assert (info.kind, info.parent, info.labels) == (Kind.ACTIVE, "b", {"role": "rw"})
    assert info.created_at <= info.updated_at
    with mounted(sn.mounts("c"), f"{work}/c") as m:
        assert read(f"{m}/b") == "ab"
        write(f"{m}/c", "c")
    # The parent is untouched by its child's writes.
    with mounted(sn.view("v", "b"), f"{work}/v") as m:
        assert sorted(os.listdir(m)) == ["a", "b"]


def test_views_are_read_only(sn, work):
    layer(sn, work, "one", "", lambda m: write(f"{m}/f", "1"))
    layer(sn, work, "two", "one", lambda m: write(f"{m}/g", "2"))
    for key, parent, names in (("v0", "", []), ("v1", "one", ["f"]), ("v2", "two", ["f", "g"])):
        sn.view(key, parent)
        assert sn.stat(key).kind is Kind.VIEW
        with mounted(sn.mounts(key), f"{work}/{key}") as m:
            assert sorted(os.listdir(m)) == names
            with pytest.raises(OSError) as e:
                write(f"{m}/new", "x")
            assert e.value.errno == errno.EROFS
    with pytest.raises(FailedPrecondition, match="'v1' is view"):
        sn.commit("x", "v1")


def test_bad_input_names_the_key_and_changes_nothing(sn, work):
    layer(sn, work, "base", "", lambda m: write(f"{m}/f", "1"))
    sn.prepare("active", "base")
    before = (snapshot_dirs(sn), db_ids(sn.root))
    with pytest.raises(AlreadyExists, match="'active'"):
        sn.prepare("active", "base")
    with pytest.raises(AlreadyExists, match="'base'"):
        sn.view("base")
    with pytest.raises(NotFound, match="parent 'nope' of snapshot 'k'"):
        sn.prepare("k", "nope")
    with pytest.raises(FailedPrecondition, match="parent 'active' of snapshot 'k' is active"):
        sn.prepare("k", "active")
    with pytest.raises(FailedPrecondition, match="'base'.*parent of 'active'"):
        sn.remove("base")
    with pytest.raises(NotFound, match="'nope'"):
        sn.remove("nope")
    with pytest.raises(AlreadyExists, match="'base'"):
        sn.commit("base", "active")
    with pytest.raises(FailedPrecondition, match="'base' is committed"):
        sn.commit("x", "base")
    with pytest.raises(FailedPrecondition, match="'base' is committed"):
        sn.mounts("base")
    with pytest.raises(InvalidArgument):
        sn.prepare("")
    with pytest.raises(InvalidArgument, match="label"):
        sn.prepare("k", labels={"x": "y" * 5000})
    assert (snapshot_dirs(sn), db_ids(sn.root)) == before
    assert sn.stat("active").kind is Kind.ACTIVE


def test_remove(sn, work):
    layer(sn, work, "base", "", lambda m: write(f"{m}/f", "1"))
    sn.prepare("child", "base")
    sn.view("view", "base")
    sn.remove("child")
    with pytest.raises(FailedPrecondition):
        sn.remove("base")
    sn.remove("view")
    sn.remove("base")
    assert snapshot_dirs(sn) == [] and db_ids(sn.root) == []
    for key in ("base", "child", "view"):
        with pytest.raises(NotFound):
            sn.stat(key)
    # Keys are free again; ids are not reused.
    sn.prepare("base")
    assert db_ids(sn.root) == ["4"]


def test_walk_filters(sn, work):
    layer(sn, work, "base", "", lambda m: None, labels={"x": "1", "containerd.io/gc.root": "y"})
    layer(sn, work, "mid", "base", lambda m: None, labels={"x": "2"})
    sn.prepare("act", "mid", labels={"x": "1"})
    sn.view("vw", "base")

    def names(*filters):
        found = []
        sn.walk(lambda info: found.append(info.name), filters)
        return found

    assert names() == ["act", "base", "mid", "vw"]
    assert names("kind==committed") == ["base", "mid"]
    assert names("kind==active") == ["act"] and names("kind==view") == ["vw"]
    assert names('labels."x"==1') == ["act", "base"]
    assert names("labels.x==1,kind==committed") == ["base"]
    assert names("parent==base") == ["mid", "vw"]
    assert names("parent==mid", "kind==view") == ["act", "vw"]
    assert names('labels."containerd.io/gc.root"') == ["base"]
    assert names("labels.x!=1") == ["mid", "vw"]
    assert names("name~=^m") == ["mid"]
    assert names('name=="act"') == ["act"]
    with pytest.raises(InvalidArgument, match="kind=="):
        names("kind==")
    with pytest.raises(InvalidArgument):
        names("name~=(")


def test_walk_gives_info(sn):
    sn.prepare("a", labels={"k": "v"})
    seen = []
    sn.walk(seen.append)
    assert len(seen) == 1 and isinstance(seen[0], Info) and seen[0].labels == {"k": "v"}


def test_usage(sn, work):
    def fill(m):
        with open(f"{m}/big", "wb") as f:
            f.write(b"x" * (1 << 20))
        os.mkdir(f"{m}/d")
        write(f"{m}/d/small", "s")
        os.link(f"{m}/big", f"{m}/big-link")

    sn.prepare("a")
    with mounted(sn.mounts("a"), f"{work}/m") as m:
        fill(m)
    u = sn.usage("a")
    # big (once, despite the link), d, d/small, and the root dir.
    assert u.inodes == 4 and (1 << 20) <= u.size < (1 << 20) + 64 * 1024
    sn.commit("A", "a")
    assert sn.usage("A") == u
    sn.prepare("b", "A")
    if sn.backend == "overlayfs":
        assert sn.usage("b").inodes == 1  # its own (empty) upper dir
    else:
        assert sn.usage("b") == u  # native: the whole copy


def test_labels_update(sn):
    sn.prepare("a", labels={"one": "1", "two": "2"})
    before = sn.stat("a")
    info = sn.update(Info(Kind.ACTIVE, "a", labels={"three": "3"}))
    assert info.labels == {"three": "3"} and info.updated_at >= before.updated_at
    info = sn.update(Info(Kind.ACTIVE, "a", labels={"four": "4"}), ["labels.four", "labels.three"])
    assert info.labels == {"four": "4"}
    assert sn.stat("a").labels == {"four": "4"}
    with pytest.raises(InvalidArgument, match="'parent'"):
        sn.update(Info(Kind.ACTIVE, "a", parent="x"), ["parent"])
    with pytest.raises(NotFound):
        sn.update(Info(Kind.ACTIVE, "nope"))
    sn.commit("A", "a", labels={"c": "d"})
    assert sn.stat("A").labels == {"c": "d"}


def _edit_layer(i):
    """What layer i (1-based) of the long chain does."""
    def fn(m):
        write(f"{m}/layer-{i}", str(i))
        write(f"{m}/common", str(i))
        if i % 10 == 5:
            os.unlink(f"{m}/layer-{i - 1}")
        if i == 20:
            os.makedirs(f"{m}/d/sub")
            write(f"{m}/d/old", "old")
            write(f"{m}/d/sub/old", "old")
        if i == 30:  # replace d: overlay makes the new d opaque
            for p in ("d/sub/old", "d/old"):
                os.unlink(f"{m}/{p}")
            os.rmdir(f"{m}/d/sub")
            os.rmdir(f"{m}/d")
            os.mkdir(f"{m}/d")
            write(f"{m}/d/new", "new")
    return fn


def test_long_chain_precedence_and_whiteouts(sn, work):
    n = 60
    parent = ""
    for i in range(1, n + 1):
        parent = layer(sn, work, f"layer-{i}", parent, _edit_layer(i))
    mounts = sn.view("top", parent)
    if sn.backend == "overlayfs":
        # The lower dir list alone is longer than a page.
        assert len(",".join(mounts[0].options)) > 4096
        lowers = mounts[0].options[0][len("lowerdir="):].split(":")
        assert len(lowers) == n
        # Nearest parent first.
        assert read(os.path.join(lowers[0], "common")) == str(n)
        # lowers[k] is layer n-k.  The kernel recorded layer 25's delete
        # of layer-24 as a 0/0 char device, and layer 30's new d as opaque.
        st = os.lstat(os.path.join(lowers[n - 25], "layer-24"))
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert os.getxattr(os.path.join(lowers[n - 30], "d"), "trusted.overlay.opaque") == b"y"
    deleted = {i - 1 for i in range(1, n + 1) if i % 10 == 5}
    with mounted(mounts, f"{work}/top") as m:
        names = set(os.listdir(m))
        assert names == {"common", "d"} | {f"layer-{i}" for i in range(1, n + 1) if i not in deleted}
        for i in range(1, n + 1):
            if i not in deleted:
                assert read(f"{m}/layer-{i}") == str(i)
        assert read(f"{m}/common") == str(n)
        assert os.listdir(f"{m}/d") == ["new"]
    # An active snapshot on the whole chain mounts too (upper + 60 lowers).
    with mounted(sn.prepare("rw-top", parent), f"{work}/rw") as m:
        write(f"{m}/common", "changed")
        assert os.listdir(f"{m}/d") == ["new"]


def _capability_v2(*caps):
    # struct vfs_cap_data, revision 2, effective bit set (<linux/capability.h>).
    lo = sum(1 << c for c in caps if c < 32)
    return struct.pack("<IIIII", 0x02000000 | 1, lo, 0, 0, 0)


SPARSE_SIZE = 64 << 20


def _make_rich_tree(m):
    """Every kind of file and metadata an image layer can hold."""
    os.makedirs(f"{m}/dir/sub")
    write(f"{m}/dir/file", "data")
    os.chown(f"{m}/dir/file", 1234, 5678)
    os.chmod(f"{m}/dir/file", 0o4751)
    os.setxattr(f"{m}/dir/file", "user.color", b"blue")
    os.setxattr(f"{m}/dir/file", "trusted.secret", b"\x00\x01binary")
    os.setxattr(f"{m}/dir/file", "security.capability", _capability_v2(10))
    os.link(f"{m}/dir/file", f"{m}/hardlink")
    os.link(f"{m}/dir/file", f"{m}/dir/sub/hardlink2")
    os.mknod(f"{m}/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(f"{m}/loop", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mknod(f"{m}/fifo", stat.S_IFIFO | 0o640)
    os.mknod(f"{m}/sock", stat.S_IFSOCK | 0o755)
    os.symlink("dir/file", f"{m}/link")
    os.chown(f"{m}/link", 42, 43, follow_symlinks=False)
    os.setxattr(f"{m}/link", "trusted.on-link", b"yes", follow_symlinks=False)
    os.chmod(f"{m}/dir/sub", 0o1777)
    os.chown(f"{m}/dir/sub", 7, 8)
    with open(f"{m}/sparse", "wb") as f:
        f.seek(1 << 20)
        f.write(b"middle")
        f.seek(SPARSE_SIZE - 5)
        f.write(b"tail!")
    for i, p in enumerate(("dir/file", "null", "loop", "fifo", "sock", "sparse", "dir/sub", "dir")):
        os.utime(f"{m}/{p}", ns=(1_000_000_000 + i, 1_500_000_000_123_456_789 + i))
    os.utime(f"{m}/link", ns=(5, 1_400_000_000_987_654_321), follow_symlinks=False)


def _meta(path):
    st = os.lstat(path)
    xattrs = {k: os.getxattr(path, k, follow_symlinks=False)
              for k in os.listxattr(path, follow_symlinks=False)
              if not k.startswith("trusted.overlay.")}
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
            st.st_rdev, st.st_size, st.st_nlink, xattrs,
            None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns)


def test_child_keeps_all_metadata(sn, work):
    layer(sn, work, "rich", "", _make_rich_tree)
    src = fs_dir(sn, "rich")  # the committed layer itself
    with mounted(sn.prepare("child", "rich"), f"{work}/dst") as dst:
        for root, dirs, files in os.walk(src):
            for name in dirs + files:
                rel = os.path.relpath(os.path.join(root, name), src)
                assert _meta(f"{dst}/{rel}") == _meta(f"{src}/{rel}"), rel
        assert os.lstat(f"{dst}/dir/file").st_mode & stat.S_ISUID
        assert os.getxattr(f"{dst}/dir/file", "security.capability") == _capability_v2(10)
        # Hard links stay one inode with three names.
        inos = {os.lstat(f"{dst}/{p}").st_ino for p in ("dir/file", "hardlink", "dir/sub/hardlink2")}
        assert len(inos) == 1 and os.lstat(f"{dst}/hardlink").st_nlink == 3
        assert os.readlink(f"{dst}/link") == "dir/file"
        assert os.lstat(f"{dst}/dir").st_mtime_ns == 1_500_000_000_123_456_789 + 7
        # The sparse file keeps its holes and its data.
        st = os.lstat(f"{dst}/sparse")
        assert st.st_size == SPARSE_SIZE and st.st_blocks * 512 < 256 * 1024
        with open(f"{dst}/sparse", "rb") as f:
            f.seek(1 << 20)
            assert f.read(6) == b"middle"
            f.seek(SPARSE_SIZE - 5)
            assert f.read() == b"tail!"


def test_overlay_whiteouts_written_into_the_upper(work):
    """What an unpacker does: write whiteouts straight into the upper dir."""
    s = registry.new("overlayfs", os.path.join(work, "root"))
    try:
        def base(m):
            for n in ("a", "b"):
                write(f"{m}/{n}", n)
            os.mkdir(f"{m}/d")
            write(f"{m}/d/x", "x")
        layer(s, work, "base", "", base)
        s.prepare("top-active", "base")
        upper = next(o for o in s.mounts("top-active")[0].options if o.startswith("upperdir="))
        upper = upper[len("upperdir="):]
        os.mknod(f"{upper}/a", stat.S_IFCHR, 0)
        os.mkdir(f"{upper}/d")
        os.setxattr(f"{upper}/d", "trusted.overlay.opaque", b"y")
        write(f"{upper}/d/z", "z")
        s.commit("top", "top-active")
        with mounted(s.view("v", "top"), f"{work}/v") as m:
            assert sorted(os.listdir(m)) == ["b", "d"]
            assert os.listdir(f"{m}/d") == ["z"]
    finally:
        s.close()


def test_registry():
    assert set(registry.BUILTINS) == {"overlayfs", "native"}
    with pytest.raises(NotFound, match="'zfs'"):
        registry.new("zfs", "/nonexistent")


def test_mounted_snapshot_dir_is_not_removed(sn, work):
    sn.prepare("a")
    path = fs_dir(sn, "a")
    linux.mount("tmpfs", path, "tmpfs")
    try:
        with pytest.raises(FailedPrecondition, match="'a'"):
            sn.remove("a")
    finally:
        unmount_all(path)
    assert mounts_under(path) == []
    sn.remove("a")
    assert snapshot_dirs(sn) == []


def test_threads_share_one_snapshotter(sn):
    errors = []

    def chain(t):
        try:
            parent = ""
            for i in range(8):
                sn.prepare(f"t{t}-{i}-active", parent)
                sn.commit(f"t{t}-{i}", f"t{t}-{i}-active")
                parent = f"t{t}-{i}"
        except BaseException as e:  # handed to the main thread
            errors.append(e)

    threads = [threading.Thread(target=chain, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    found = []
    sn.walk(found.append, ["kind==committed"])
    assert len(found) == 32 and snapshot_dirs(sn) == db_ids(sn.root)
