"""Hostile layers: nothing a layer says may touch anything outside the root.

Each test applies into ``tmp/a/root`` and aims at ``tmp/a/outside`` (an
empty sentinel directory) and ``tmp/a/victim/v`` (a sentinel file); after
the test both must be exactly as they were.  No test aims at a real host
file except by a name that resolves inside the root.
"""
import gzip
import io
import os
import tarfile

import pytest

from layer_tars import dir, file, hardlink, node, opaque, symlink, tar, whiteout
from pyrun.errdefs import InvalidArgument
from pyrun.images.apply import apply_layer

pytestmark = pytest.mark.root

MODES = ["native", "overlay"]


class Box:
    def __init__(self, base):
        self.base = base
        self.root = base / "root"
        self.outside = base / "outside"
        self.victim = base / "victim"
        self.lower = base / "lower"
        for d in (self.root, self.outside, self.victim, self.lower):
            d.mkdir(parents=True)
        (self.victim / "v").write_bytes(b"victim")
        os.chmod(self.victim / "v", 0o600)
        self.victim_stat = os.stat(self.victim / "v")
        self.passwd_stat = os.stat("/etc/passwd")

    def apply(self, data, mode, **kw):
        return apply_layer(io.BytesIO(data), str(self.root), mode=mode, **kw)

    def check(self):
        assert sorted(os.listdir(self.base)) == ["lower", "outside", "root", "victim"]
        assert os.listdir(self.outside) == []
        assert os.listdir(self.victim) == ["v"]
        st = os.stat(self.victim / "v")
        assert (self.victim / "v").read_bytes() == b"victim"
        assert (st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_mtime_ns) == (
            self.victim_stat.st_ino, 1, self.victim_stat.st_mode, self.victim_stat.st_uid,
            self.victim_stat.st_mtime_ns)
        st = os.stat("/etc/passwd")
        assert (st.st_nlink, st.st_mtime_ns, st.st_mode) == (
            self.passwd_stat.st_nlink, self.passwd_stat.st_mtime_ns, self.passwd_stat.st_mode)


@pytest.fixture
def box(tmp_path):
    b = Box(tmp_path / "a")
    yield b
    b.check()


def rel(path):
    # An absolute host path as a name inside the root.
    return str(path).lstrip("/")


@pytest.mark.parametrize("mode", MODES)
def test_path_traversal(box, mode):
    box.apply(tar(
        file("../outside/x", b"1"), file("../../a/outside/y", b"2"), file("/abs/z", b"3"),
        file(str(box.outside / "w"), b"4"), file("a/../../outside/q", b"5"),
        dir("../../../../.."), hardlink("../../outside/ln", "/abs/z"),
    ), mode)
    assert (box.root / "outside/x").read_bytes() == b"1"
    assert (box.root / "a/outside/y").read_bytes() == b"2"
    assert (box.root / "abs/z").read_bytes() == b"3"
    assert (box.root / rel(box.outside) / "w").read_bytes() == b"4"
    assert (box.root / "outside/q").read_bytes() == b"5"
    assert os.lstat(box.root / "outside/ln").st_ino == os.lstat(box.root / "abs/z").st_ino


@pytest.mark.parametrize("mode", MODES)
def test_symlink_to_slash_then_write_through(box, mode):
    box.apply(tar(
        symlink("evil", "/"),
        file(f"evil/{rel(box.outside)}/pwn", b"x"),
        file("evil/newdir/deeper/f", b"y"),
    ), mode)
    # "/" inside the root is the root.
    assert (box.root / rel(box.outside) / "pwn").read_bytes() == b"x"
    assert (box.root / "newdir/deeper/f").read_bytes() == b"y"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("target,lands", [
    ("..", ""), ("../", ""), ("../../../../../..", ""), ("../../a", "a"), ("ABS", "ABS"),
    ("/tmp/../../a", "a"), ("x/../../../a", "a")])
def test_symlink_up_then_write_through(box, mode, target, lands):
    # Dangling symlinks as parents are followed inside the root, as the
    # kernel would with the root as "/" (containerd: fs.RootPath + MkdirAll).
    if target == "ABS":
        target, lands = str(box.base), rel(box.base)
    box.apply(tar(symlink("up", target), file("up/outside/pwn", b"x"),
                  dir("up/outside/d"), node("up/outside/fifo", tarfile.FIFOTYPE),
                  symlink("up/outside/s", "/etc/passwd"),
                  hardlink("up/outside/h", "up/outside/pwn")), mode)
    where = box.root / lands / "outside"
    assert (where / "pwn").read_bytes() == b"x"
    assert sorted(os.listdir(where)) == ["d", "fifo", "h", "pwn", "s"]


@pytest.mark.parametrize("mode", MODES)
def test_symlink_loop(box, mode):
    with pytest.raises(InvalidArgument, match="(?i)'a/x'.*too many levels of symbolic links"):
        box.apply(tar(symlink("a", "b"), symlink("b", "/a"), file("a/x")), mode)


@pytest.mark.parametrize("mode", MODES)
def test_symlink_from_lower_layer(box, mode):
    lower = tar(symlink("evil", str(box.outside)), symlink("up", "../.."))
    kw = {}
    if mode == "overlay":
        apply_layer(io.BytesIO(lower), str(box.lower), mode=mode)
        kw["lower_dirs"] = [str(box.lower)]
    else:
        box.apply(lower, mode)
    for entry in (file("evil/x", b"1"), dir("evil/d"), file("up/a/outside/x"),
                  hardlink("evil/ln", "up"), whiteout("evil/x"), opaque("up")):
        try:
            box.apply(tar(entry), mode, **kw)
        except InvalidArgument as e:  # overlay: "up" became a directory in the upper dir
            assert mode == "overlay" and f"layer entry {entry[0].name!r}" in str(e)


@pytest.mark.parametrize("mode", MODES)
def test_final_symlink_is_replaced_not_followed(box, mode):
    box.apply(tar(symlink("f", str(box.victim / "v")), file("f", b"mine", mode=0o777),
                  symlink("d", str(box.outside)), dir("d", mode=0o777),
                  symlink("n", str(box.victim / "v")), node("n", tarfile.FIFOTYPE)), mode)
    assert (box.root / "f").read_bytes() == b"mine"
    assert os.path.isdir(box.root / "d") and not os.path.islink(box.root / "d")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("link", ["/etc/passwd", "../../../../etc/passwd", "../victim/v", "ABS"])
def test_hardlink_escape(box, mode, link):
    link = str(box.victim / "v") if link == "ABS" else link
    with pytest.raises(InvalidArgument, match=r"layer entry 'h'.*hard link target .*does not exist"):
        box.apply(tar(hardlink("h", link)), mode, lower_dirs=[str(box.outside)])
    assert not os.path.lexists(box.root / "h")


@pytest.mark.parametrize("mode", MODES)
def test_hardlink_via_symlinks(box, mode):
    box.apply(tar(symlink("s", str(box.victim / "v")), hardlink("h", "s"),
                  symlink("p", str(box.victim))), mode)
    # linkat(2) without AT_SYMLINK_FOLLOW: h is a second name of the symlink.
    assert os.readlink(box.root / "h") == str(box.victim / "v")
    with pytest.raises(InvalidArgument, match="'h2'.*does not exist"):
        box.apply(tar(hardlink("h2", "p/v")), mode)


@pytest.mark.parametrize("mode", MODES)
def test_hardlink_to_directory_refused(box, mode):
    with pytest.raises(InvalidArgument, match="'h'.*hard link to directory"):
        box.apply(tar(dir("d"), hardlink("h", "d")), mode)
    with pytest.raises(InvalidArgument, match="'h'.*hard link to the root"):
        box.apply(tar(hardlink("h", "../..")), mode)


def test_whiteouts_stay_inside(box):
    (box.root / "keep").write_bytes(b"k")
    box.apply(tar(symlink("s", str(box.victim)), symlink("up", ".."),
                  file("s/.wh.v"), file("../victim/.wh.v"), file("up/victim/.wh.v"),
                  file("s/.wh..wh..opq"), file("up/victim/.wh..wh..opq"), file("../.wh.victim"),
                  file(f"{rel(box.victim)}/.wh.v")), "native")
    assert (box.root / "keep").read_bytes() == b"k"


@pytest.mark.parametrize("name,bad", [(".wh.", "''"), ("d/.wh..", "'.'"), ("d/.wh...", "'..'")])
def test_bad_whiteout_names(box, name, bad):
    with pytest.raises(InvalidArgument, match=f"{name}.*whiteout of {bad}"):
        box.apply(tar(file(name)), "native")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,major,minor", [
    (tarfile.CHRTYPE, 4096, 0), (tarfile.CHRTYPE, 1, 1 << 20), (tarfile.BLKTYPE, 2**31, 1),
    (tarfile.BLKTYPE, 0, 2**40),
])
def test_absurd_device_numbers(box, mode, kind, major, minor):
    with pytest.raises(InvalidArgument, match=rf"'dev/x'.*device number {major}:{minor} is out"):
        box.apply(tar(node("dev/x", kind, major, minor), fmt=tarfile.GNU_FORMAT), mode)
    assert not os.path.lexists(box.root / "dev/x")


@pytest.mark.parametrize("field,value", [("uid", 2**32 - 1), ("gid", 2**32), ("uid", -1),
                                          ("gid", 2**55)])
def test_absurd_ids(box, field, value):
    with pytest.raises(InvalidArgument, match=rf"'f'.*{field} {value} is out of range"):
        box.apply(tar(file("f", **{field: value}), fmt=tarfile.GNU_FORMAT), "native")
    assert not os.path.lexists(box.root / "f")


def test_max_id_accepted(box):
    box.apply(tar(file("f", uid=2**32 - 2, gid=2**32 - 2)), "native")
    assert os.lstat(box.root / "f").st_uid == 2**32 - 2


def test_entry_count_bounded(box):
    entries = [file(f"f{i}") for i in range(101)]
    with pytest.raises(InvalidArgument, match=r"more than 100 entries \(at 'f100'\)"):
        box.apply(tar(*entries), "overlay", max_entries=100)


def test_path_depth_bounded(box):
    name = "/".join(["d"] * 300)
    with pytest.raises(InvalidArgument, match="300 path components"):
        box.apply(tar(file(name)), "native")


def test_huge_header_record_refused(box):
    with pytest.raises(InvalidArgument, match="records is over 1048576 bytes"):
        box.apply(tar(file("f", pax={"comment": "x" * (2 << 20)})), "native")


def test_name_too_long_named(box):
    with pytest.raises(InvalidArgument, match="'x{300}'.*too long"):
        box.apply(tar(file("x" * 300)), "native")


def test_layer_cannot_forge_overlay_xattrs(box):
    box.apply(tar(dir("d", pax={"SCHILY.xattr.trusted.overlay.redirect": "/etc",
                                "SCHILY.xattr.trusted.overlay.opaque": "y",
                                "SCHILY.xattr.user.ok": "1"})), "overlay")
    assert os.listxattr(box.root / "d") == ["user.ok"]


@pytest.mark.parametrize("mode", MODES)
def test_depth_through_symlinks_bounded(box, mode):
    # Each symlink leads 200 levels deeper than its name says; the tree
    # may still not get deeper than max_depth.
    deep = "/".join(["m"] * 200)
    entries = [symlink(f"s{k}", f"s{k + 1}/{deep}") for k in range(30)]
    with pytest.raises(InvalidArgument, match=r"'s0/x'.*levels below the root \(limit 256\)"):
        box.apply(tar(*entries, symlink("s30", "end"), file("s0/x")), mode)
    with pytest.raises(InvalidArgument, match=r"'t/.*levels below the root \(limit 256\)"):
        box.apply(tar(symlink("t", f"/{deep}"), dir(deep), dir(f"t/{deep}"),
                      dir(f"t/{deep}/more")), mode)


def gnu_sparse_entry(extended_blocks):
    """An old-GNU sparse entry ('S') whose sparse map goes on for
    ``extended_blocks`` extension blocks of 21 regions each, and no data."""
    ti = tarfile.TarInfo("bomb")
    hdr = bytearray(ti.tobuf(tarfile.GNU_FORMAT))
    hdr[156:157] = tarfile.GNUTYPE_SPARSE
    hdr[482] = 1                                    # isextended
    hdr[483:495] = b"%011o\0" % (1 << 30)           # realsize
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    ext = bytearray(512)
    for i in range(21):
        ext[i * 24:i * 24 + 24] = b"%011o\0%011o\0" % (i * 4096 + 4096, 1)
    ext[504] = 1
    return bytes(hdr) + bytes(ext) * extended_blocks + bytes(ext[:504]) + bytes(8) + bytes(1024)


def pax_sparse_entry(regions):
    """A PAX 1.0 sparse entry whose map lists ``regions`` regions, and no
    data beyond the map."""
    body = b"%d\n" % regions + b"4096\n1\n" * regions
    body += bytes(-len(body) % 512)
    ti, _ = file("bomb", body, pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                    "GNU.sparse.name": "bomb",
                                    "GNU.sparse.realsize": str(1 << 30)})
    return tar((ti, body))


@pytest.mark.parametrize("make", [gnu_sparse_entry, pax_sparse_entry])
def test_sparse_map_bombs(box, make):
    # A sparse map is read into memory whole: one that compresses to a few
    # KiB could otherwise take gigabytes.
    big = make(5000 if make is gnu_sparse_entry else 300000)
    with pytest.raises(InvalidArgument, match="records is over 1048576 bytes"):
        box.apply(gzip.compress(big), "native")
    with pytest.raises(InvalidArgument, match="'bomb': its sparse map does not match"):
        box.apply(make(3), "native")
    assert not os.path.lexists(box.root / "bomb")
