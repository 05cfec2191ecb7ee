"""Applying layers: entry types, metadata, compression, whiteouts, stacks.

As root on real files; the overlay tests mount a real overlayfs of layers
applied in overlay mode and compare it with the native-mode result.
"""
import gzip
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile

import pytest
import zstandard

from layer_tars import (MTIME, dir, entry, file, hardlink, node, opaque, sha256, symlink, tar,
                        tree, whiteout)
from pyrun import linux
from pyrun.errdefs import InvalidArgument
from pyrun.images.apply import apply_layer

pytestmark = pytest.mark.root

OPAQUE = "trusted.overlay.opaque"
CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep


def apply(root, data, **kw):
    os.makedirs(root, exist_ok=True)
    return apply_layer(io.BytesIO(data), str(root), **kw)


def is_whiteout(path):
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def opaque_xattr(path):
    try:
        return os.getxattr(path, OPAQUE)
    except OSError:
        return None


# -- entry types and metadata ---------------------------------------------

@pytest.mark.parametrize("mode", ["native", "overlay"])
def test_entry_types_and_metadata(tmp_path, mode):
    root = tmp_path / "root"
    data = tar(
        dir("etc", mode=0o750, uid=3, gid=4, mtime=1000,
            pax={"SCHILY.xattr.user.dir": "d"}),
        file("etc/conf", b"hello", mode=0o640, uid=1000, gid=1001,
             pax={"mtime": "1234567890.123456789", "atime": "1000000000.5",
                  "SCHILY.xattr.user.note": "x=y"}),
        file("usr/bin/ping", b"\x7fELF", mode=0o4755 | 0o2000, uid=0, gid=0,
             pax={"SCHILY.xattr.security.capability": CAP.decode("utf-8", "surrogateescape")}),
        file("usr/bin/mine", b"#!", mode=0o6755, uid=1000, gid=1000),
        dir("tmp", mode=0o1777),
        symlink("bin", "usr/bin", uid=5, gid=6),
        hardlink("usr/bin/ping2", "usr/bin/ping"),
        node("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666),
        node("dev/loop0", tarfile.BLKTYPE, 7, 0, mode=0o660, gid=6),
        node("run/fifo", tarfile.FIFOTYPE, mode=0o620),
        file("empty", pax={"LIBARCHIVE.xattr.user.lib%2Ename": "dmFsdWU="}),
    )
    res = apply(root, data, mode=mode)
    assert res.diffid == sha256(data) and res.size_uncompressed == len(data)
    assert res.entries == 11 and res.compression == "none"
    assert os.getxattr(root / "empty", "user.lib.name") == b"value"

    st = os.lstat(root / "etc")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 3, 4)
    assert st.st_mtime_ns == 1000 * 10**9  # set after etc/conf was written
    assert os.getxattr(root / "etc", "user.dir") == b"d"
    st = os.lstat(root / "etc/conf")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1000, 1001)
    assert st.st_mtime_ns == 1234567890123456789 and st.st_atime_ns == 1000000000500000000
    assert (root / "etc/conf").read_bytes() == b"hello"
    assert os.getxattr(root / "etc/conf", "user.note") == b"x=y"
    # setuid/setgid survive the chown; the capability survives too.
    st = os.lstat(root / "usr/bin/ping")
    assert stat.S_IMODE(st.st_mode) == 0o6755 and st.st_nlink == 2
    assert os.getxattr(root / "usr/bin/ping", "security.capability") == CAP
    st = os.lstat(root / "usr/bin/mine")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o6755, 1000)
    assert os.lstat(root / "usr/bin/ping2").st_ino == os.lstat(root / "usr/bin/ping").st_ino
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    st = os.lstat(root / "bin")
    assert os.readlink(root / "bin") == "usr/bin" and (st.st_uid, st.st_gid) == (5, 6)
    assert st.st_mtime_ns == MTIME * 10**9
    st = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(root / "dev/loop0")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0) and st.st_gid == 6
    st = os.lstat(root / "run/fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
    # Parents the tar does not list: 0755 root.
    st = os.lstat(root / "usr")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0)
    assert (root / "empty").read_bytes() == b""


def test_root_entry_and_dot_names(tmp_path):
    root = tmp_path / "root"
    data = tar(dir("./", mode=0o711, uid=7, mtime=5), file("./a/./b", b"x"), dir("./a/", mode=0o700))
    apply(root, data, mode="native")
    st = os.lstat(root)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime) == (0o711, 7, 5)
    assert (root / "a/b").read_bytes() == b"x"


def test_sparse_holes_from_zero_runs(tmp_path):
    root = tmp_path / "root"
    size = 8 << 20
    body = bytes(size - 4096) + b"z" * 4096
    apply(root, tar(file("big", body)), mode="native")
    st = os.lstat(root / "big")
    assert st.st_size == size and (root / "big").read_bytes() == body
    assert st.st_blocks * 512 < 256 * 1024


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_entries_from_gnu_tar(tmp_path, fmt):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.truncate(16 << 20)
        f.seek(1 << 20)
        f.write(b"a" * 5000)
        f.seek(9 << 20)
        f.write(b"b" * 100)
    layer = tmp_path / "layer.tar"
    subprocess.run(["tar", f"--format={fmt}", "--sparse", "-cf", str(layer), "-C", str(src),
                    "sparse"], check=True)
    with tarfile.open(layer) as tf:
        assert tf.getmember("sparse").sparse  # really a sparse entry
    root = tmp_path / "root"
    apply(root, layer.read_bytes(), mode="native")
    assert (root / "sparse").read_bytes() == (src / "sparse").read_bytes()
    assert os.lstat(root / "sparse").st_blocks * 512 < 256 * 1024


# -- streams: compression, media types, end of archive, diffID ------------

@pytest.mark.parametrize("compress,media_type,kind", [
    (lambda b: b, "application/vnd.oci.image.layer.v1.tar", "none"),
    (gzip.compress, "application/vnd.oci.image.layer.v1.tar+gzip", "gzip"),
    (zstandard.ZstdCompressor().compress, "application/vnd.oci.image.layer.v1.tar+zstd", "zstd"),
    (gzip.compress, "application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
    # Media types that lie about the compression.
    (gzip.compress, "application/vnd.oci.image.layer.v1.tar+zstd", "gzip"),
    (zstandard.ZstdCompressor().compress, "application/vnd.docker.image.rootfs.diff.tar.gzip",
     "zstd"),
    (lambda b: b, "application/vnd.oci.image.layer.v1.tar+gzip", "none"),
    (gzip.compress, None, "gzip"),
])
def test_compression(tmp_path, compress, media_type, kind):
    data = tar(file("a", b"x" * 100000), dir("d"))
    blob = compress(data)
    res = apply(tmp_path / "root", blob, mode="native", media_type=media_type,
                expected_diffid=sha256(data), compute_digest=True)
    assert res.compression == kind
    assert (res.diffid, res.size_uncompressed) == (sha256(data), len(data))
    assert (res.digest, res.size) == (sha256(blob), len(blob))
    assert (tmp_path / "root/a").read_bytes() == b"x" * 100000


def test_multi_member_gzip_and_zstd_frames(tmp_path):
    data = tar(file("a", b"1" * 5000), file("b", b"2" * 5000))
    half = len(data) // 2
    for blob in (gzip.compress(data[:half]) + gzip.compress(data[half:]),
                 zstandard.ZstdCompressor().compress(data[:half])
                 + zstandard.ZstdCompressor().compress(data[half:])):
        res = apply(tmp_path / "root", blob, mode="native")
        assert res.diffid == sha256(data)


def test_bad_media_types(tmp_path):
    data = tar(file("a"))
    with pytest.raises(InvalidArgument, match="not a layer media type"):
        apply(tmp_path / "r", data, media_type="application/vnd.oci.image.config.v1+json")
    with pytest.raises(InvalidArgument, match="encrypted"):
        apply(tmp_path / "r", data, media_type="application/vnd.oci.image.layer.v1.tar+gzip+encrypted")
    with pytest.raises(InvalidArgument, match="corrupt gzip"):
        apply(tmp_path / "r", gzip.compress(data)[:-12], mode="native")


def test_tar_without_end_of_archive_blocks(tmp_path):
    data = tar(file("a", b"abc"), dir("d"), file("d/b", b"x" * 700), end=False)
    assert data.endswith(b"x" * 700 + bytes(512 - 700 % 512))
    res = apply(tmp_path / "root", data, mode="native", expected_diffid=sha256(data))
    assert res.entries == 3 and (tmp_path / "root/d/b").read_bytes() == b"x" * 700


def test_tar_ending_right_after_the_last_data(tmp_path):
    # umoci insert: no padding of the last block, no end-of-archive blocks.
    data = tar(dir("d"), file("d/a", b"hello"), end=False)[:1024 + 5]
    res = apply(tmp_path / "root", data, mode="native", expected_diffid=sha256(data))
    assert res.size_uncompressed == 1029 and (tmp_path / "root/d/a").read_bytes() == b"hello"
    with pytest.raises(InvalidArgument, match="'d/a': tar stream ends inside its data"):
        apply(tmp_path / "r2", data[:-2], mode="native")


@pytest.mark.skipif(not shutil.which("umoci"), reason="umoci not installed")
def test_umoci_insert_layer(tmp_path):
    layout, src = tmp_path / "layout", tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub/f").write_bytes(b"abc")
    for cmd in (["init", "--layout", str(layout)], ["new", "--image", f"{layout}:t"],
                ["insert", "--image", f"{layout}:t", str(src), "/dst"]):
        subprocess.run(["umoci", *cmd], check=True, capture_output=True)

    def blob(desc):
        return layout / "blobs" / desc["digest"].replace(":", "/")

    index = json.loads((layout / "index.json").read_bytes())
    manifest = json.loads(blob(index["manifests"][0]).read_bytes())
    config = json.loads(blob(manifest["config"]).read_bytes())
    layer = manifest["layers"][-1]
    (tmp_path / "root").mkdir()
    with open(blob(layer), "rb") as f:
        res = apply_layer(f, str(tmp_path / "root"), mode="overlay",
                          media_type=layer["mediaType"], compute_digest=True,
                          expected_diffid=config["rootfs"]["diff_ids"][-1])
    assert res.digest == layer["digest"] and res.size == layer["size"]
    assert (tmp_path / "root/dst/sub/f").read_bytes() == b"abc"


def test_empty_layers(tmp_path):
    for data in (b"", bytes(1024), tar()):
        res = apply(tmp_path / "root", data, mode="overlay")
        assert res.entries == 0 and res.diffid == sha256(data)
    assert os.listdir(tmp_path / "root") == []


def test_truncated_and_corrupt_tars(tmp_path):
    data = tar(file("a", b"x" * 3000), file("b", b"y" * 10))
    with pytest.raises(InvalidArgument, match="'a'.*ends inside its data|unexpected end"):
        apply(tmp_path / "r1", data[:1500], mode="native")
    broken = bytearray(data)
    broken[3584:3588] = b"junk"  # the second header (512 + 3072)
    with pytest.raises(InvalidArgument, match="corrupt tar header after entry 'a'"):
        apply(tmp_path / "r2", bytes(broken), mode="native")
    with pytest.raises(InvalidArgument, match="not a tar stream"):
        apply(tmp_path / "r3", b"hello world" * 100, mode="native")


def test_diffid_mismatch(tmp_path):
    data = tar(file("a", b"x"))
    other = sha256(b"something else")
    with pytest.raises(InvalidArgument, match=f"diffID mismatch.*expected {other}"):
        apply(tmp_path / "root", gzip.compress(data), expected_diffid=other)
    with pytest.raises(InvalidArgument, match="not a digest"):
        apply(tmp_path / "root", data, expected_diffid="abc")


def test_unsupported_entry_type_named(tmp_path):
    with pytest.raises(InvalidArgument, match=r"'vol'.*unsupported tar entry type b'V'"):
        apply(tmp_path / "root", tar(entry("vol", b"V")),
              mode="native")


# -- whiteouts and opaque directories -------------------------------------

BASE = tar(
    dir("a"), file("a/keep", b"k"), file("a/gone", b"g"), dir("a/sub"), file("a/sub/x", b"x"),
    dir("o1", mode=0o750, uid=9), file("o1/old", b"old"), dir("o1/d"), file("o1/d/old2"),
    dir("o2"), file("o2/old", b"old"),
    dir("del"), file("del/f"),
    file("f", b"f"),
)


def test_whiteouts_native(tmp_path):
    root = tmp_path / "root"
    apply(root, BASE, mode="native")
    apply(root, tar(
        whiteout("a/gone"), whiteout("a/sub"), whiteout("nothing/here"), whiteout("f"),
        file("o1/new", b"n"), opaque("o1"), file("o1/d/later", b"l"),  # marker after an entry
        opaque("o2"), file("o2/new", b"n"),                              # marker first
        whiteout("del"), dir("del"), file("del/again"),                  # delete and recreate
        file("mine", b"m"), whiteout("mine"),                            # own entries survive
    ), mode="native")
    assert sorted(os.listdir(root / "a")) == ["keep"]
    assert not (root / "f").exists() and not (root / "nothing").exists()
    assert sorted(os.listdir(root / "o1")) == ["d", "new"]
    assert os.listdir(root / "o1/d") == ["later"]
    assert os.listdir(root / "o2") == ["new"]
    assert os.listdir(root / "del") == ["again"]
    assert (root / "mine").read_bytes() == b"m"


def test_whiteouts_overlay(tmp_path):
    upper = tmp_path / "upper"
    apply(upper, tar(
        whiteout("a/gone"), whiteout("f"),
        file("o1/new", b"n"), opaque("o1"),
        opaque("o2"), file("o2/new", b"n"),
        whiteout("del"), file("del/again"),
        file("mine", b"m"), whiteout("mine"),
    ), mode="overlay")
    assert is_whiteout(upper / "a/gone") and is_whiteout(upper / "f")
    assert opaque_xattr(upper / "o1") == b"y" and opaque_xattr(upper / "o2") == b"y"
    assert (upper / "o1/new").read_bytes() == b"n"
    # A whiteout replaced by a directory: the directory is opaque.
    assert opaque_xattr(upper / "del") == b"y" and os.listdir(upper / "del") == ["again"]
    assert (upper / "mine").read_bytes() == b"m"
    assert opaque_xattr(upper / "a") is None


def test_overlay_parents_take_lower_metadata(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    apply(lower, BASE, mode="overlay")
    apply(upper, tar(file("o1/new"), whiteout("o2/old"), whiteout("nowhere/x"), opaque("nodir")),
          mode="overlay", lower_dirs=[str(lower)])
    st = os.lstat(upper / "o1")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o750, 9)
    assert st.st_mtime_ns == MTIME * 10**9
    assert is_whiteout(upper / "o2/old")
    # Nothing to hide: no directory appears in the merged view.
    assert not (upper / "nowhere").exists() and not (upper / "nodir").exists()


def test_hardlink_needs_lower_dirs_in_overlay(tmp_path):
    lower = tmp_path / "lower"
    apply(lower, BASE, mode="overlay")
    with pytest.raises(InvalidArgument, match=r"'ln'.*target 'a/keep' does not exist \(no lower_dirs"):
        apply(tmp_path / "upper", tar(hardlink("ln", "a/keep")), mode="overlay")


# -- multi-layer stacks: overlay mount == native --------------------------

LAYERS = [
    tar(
        dir("etc", mode=0o755, mtime=100), file("etc/passwd", b"root:x:0:0\n"),
        file("etc/group", b"root:x:0:\n"),
        dir("usr"), dir("usr/bin"),
        file("usr/bin/tool", b"tool-v1", mode=0o755), hardlink("usr/bin/tool2", "usr/bin/tool"),
        file("usr/bin/su", b"su", mode=0o4755),
        file("usr/bin/cap", b"cap", mode=0o755,
             pax={"SCHILY.xattr.security.capability": CAP.decode("utf-8", "surrogateescape")}),
        symlink("bin", "usr/bin"),
        dir("var", mode=0o755), dir("var/lib", mode=0o750, uid=5, gid=5, mtime=200),
        file("var/lib/a", b"a"), file("var/lib/b", b"b"),
        dir("opq"), file("opq/x"), dir("opq/sub"), file("opq/sub/z"),
        dir("data", mode=0o700, uid=1000), file("data/old"),
        dir("gone"), file("gone/inside"),
        dir("d2f"), file("d2f/inside"), file("f2d", b"file"),
        file("caf\udce9", b"latin-1 name"),
        node("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666), node("pipe", tarfile.FIFOTYPE),
        file("f", b"f", pax={"SCHILY.xattr.user.k": "v"}),
    ),
    tar(
        whiteout("etc/group"), whiteout("gone"),
        file("opq/new", b"n"), hardlink("opq_link", "opq/x"), opaque("opq"),
        opaque("data"), file("data/fresh", b"fresh", uid=1000),
        hardlink("usr/bin/tool3", "usr/bin/tool"),       # target in a lower layer
        file("etc/passwd", b"root:x:0:0\nuser:x:1000:1000\n"),
        file("var/lib/c", b"c"),                          # parent only in the lower layer
        file("newdir/deep/file", b"deep"),
        file("tmpfile", b"t"), whiteout("tmpfile"),       # own entry survives its whiteout
        file("d2f", b"now a file"), dir("f2d"), file("f2d/x"),  # file over dir, dir over file
    ),
    tar(
        dir("gone", mode=0o711), file("gone/back", b"back"),
        whiteout("var"), file("var/new", b"v"),           # delete, then a new var
        hardlink("etc/passwd2", "etc/passwd"),            # target from the layer below
        whiteout("bin"), dir("bin"), file("bin/sh", b"sh"),
        file("usr/bin/tool", b"tool-v3", mode=0o755),
        whiteout("data"), whiteout("data/fresh"),         # markers below a deleted dir
        whiteout("opq"), opaque("opq"),
    ),
]


def apply_overlay_stack(base, layers):
    uppers = [base / "empty"]
    uppers[0].mkdir(parents=True)
    for i, data in enumerate(layers):
        upper = base / f"layer{i}"
        apply(upper, data, mode="overlay", expected_diffid=sha256(data),
              lower_dirs=[str(u) for u in reversed(uppers)])
        uppers.append(upper)
    return uppers


def mounted_tree(target, uppers):
    target.mkdir()
    lowerdir = ":".join(str(u) for u in reversed(uppers))
    linux.mount("overlay", str(target), "overlay", linux.MS_RDONLY, f"lowerdir={lowerdir}")
    try:
        return tree(str(target))
    finally:
        linux.umount2(str(target))


def test_overlay_stack_matches_native(tmp_path):
    uppers = apply_overlay_stack(tmp_path / "ovl", LAYERS)
    native = tmp_path / "native"
    for i, data in enumerate(LAYERS):  # the merged view equals native after every layer
        apply(native, data, mode="native", expected_diffid=sha256(data))
        assert mounted_tree(tmp_path / f"merged{i}", uppers[:i + 2]) == tree(str(native))

    # And the native result is what the layers mean.
    assert not (native / "etc/group").exists()
    assert (native / "etc/passwd2").read_bytes().endswith(b"user:x:1000:1000\n")
    assert not (native / "opq").exists() and not (native / "data").exists()
    assert os.listdir(native / "gone") == ["back"]
    assert os.listdir(native / "var") == ["new"]
    assert os.listdir(native / "bin") == ["sh"] and not os.path.islink(native / "bin")
    assert (native / "tmpfile").read_bytes() == b"t"
    assert (native / "d2f").read_bytes() == b"now a file" and os.listdir(native / "f2d") == ["x"]
    assert os.listdir(os.fsencode(native)).count(b"caf\xe9") == 1
    assert os.lstat(native / "usr/bin/tool3").st_ino == os.lstat(native / "usr/bin/tool2").st_ino
    assert (native / "usr/bin/tool3").read_bytes() == b"tool-v1"
    assert (native / "usr/bin/tool").read_bytes() == b"tool-v3"
    assert stat.S_IMODE(os.lstat(native / "gone").st_mode) == 0o711


def test_opaque_root_overlay(tmp_path):
    layers = [tar(file("a"), dir("b"), file("b/c")),
              tar(file("new"), opaque("."), file("b/d"))]
    native = tmp_path / "native"
    for data in layers:
        apply(native, data, mode="native")
    assert sorted(os.listdir(native)) == ["b", "new"] and os.listdir(native / "b") == ["d"]
    uppers = apply_overlay_stack(tmp_path / "ovl", layers)
    assert mounted_tree(tmp_path / "merged", uppers) == tree(str(native))


def random_layer(rng, seen_files):
    """A random layer over a small name space: directories d0..d2 nest,
    leaves f0..f2 are files, symlinks or hard links; whiteouts and opaque
    markers land anywhere.  Symlinks are leaves only, so no name is
    resolved through one (where overlay and native modes differ on
    purpose: see apply_layer)."""
    def dirpath():
        return "/".join(rng.choice("d0 d1 d2".split()) for _ in range(rng.randint(1, 3)))

    def xattrs():
        return rng.choice([{}, {"SCHILY.xattr.user.x": rng.choice("ab")}])

    entries = []
    for _ in range(rng.randint(3, 10)):
        d, leaf = dirpath(), rng.choice("f0 f1 f2".split())
        kind = rng.choice("file file dir sym fifo link link wh wh opq over root".split())
        if kind in ("file", "over"):  # "over": a file where directories go
            path = f"{d}/{leaf}" if kind == "file" else d
            entries.append(file(path, rng.randbytes(rng.randint(0, 3)), pax=xattrs(),
                                mode=rng.choice([0o644, 0o4755, 0o600])))
            seen_files.append(path)
        elif kind == "dir":
            entries.append(dir(d, mode=rng.choice([0o755, 0o700, 0o1777]), pax=xattrs()))
        elif kind == "root":
            entries.append(opaque("."))
        elif kind == "sym":
            entries.append(symlink(f"{d}/{leaf}", rng.choice(["f0", "../x", "/d0/f1"])))
            seen_files.append(f"{d}/{leaf}")
        elif kind == "fifo":
            entries.append(node(f"{d}/{leaf}", tarfile.FIFOTYPE, pax=xattrs()))
            seen_files.append(f"{d}/{leaf}")
        elif kind == "link" and seen_files:
            entries.append(hardlink(f"{d}/{leaf}", rng.choice(seen_files)))
        elif kind == "wh":
            entries.append(whiteout(rng.choice([d, f"{d}/{leaf}"])))
        elif kind == "opq":
            entries.append(opaque(d))
    return tar(*entries)


@pytest.mark.parametrize("seed", range(30))
def test_random_stacks_overlay_matches_native(tmp_path, seed):
    import random
    rng = random.Random(seed)
    native, uppers, seen = tmp_path / "native", [tmp_path / "empty"], []
    native.mkdir()
    uppers[0].mkdir()
    for i in range(4):
        while True:  # a layer whose hard links all find their target
            data = random_layer(rng, seen)
            trial = tmp_path / "trial"
            subprocess.run(["cp", "-a", str(native), str(trial)], check=True)
            try:
                apply(trial, data, mode="native")
                break
            except InvalidArgument as e:
                # The generator made a layer that does not fit: try another.
                assert re.search("hard link|(?i:not a directory)", str(e)), e
            subprocess.run(["rm", "-rf", "--one-file-system", str(trial)], check=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(native)], check=True)
        trial.rename(native)
        upper = tmp_path / f"layer{i}"
        apply(upper, data, mode="overlay", lower_dirs=[str(u) for u in reversed(uppers)])
        uppers.append(upper)
        assert mounted_tree(tmp_path / f"merged{i}", uppers) == tree(str(native)), f"layer {i}"


# -- small files written by helper threads ---------------------------------------------

@pytest.mark.parametrize("mode", ["native", "overlay"])
def test_names_written_again_while_a_helper_may_still_write(tmp_path, mode):
    # Small files are created by helper threads; entries that come back to
    # a name (or a tree) they may still be writing must see what a
    # one-by-one apply would.
    many = [file(f"many/f{i:03d}", b"%d" % i) for i in range(150)]
    root = tmp_path / "root"
    apply(root, tar(file("a", b"first"), file("a", b"second"),
                    file("b", b"file"), dir("b"), file("b/c", b"in dir"),
                    file("d", b"file"), symlink("d", "a"),
                    file("e", b"linked"), hardlink("f", "e"),
                    dir("many"), *many, file("many", b"now a file"),
                    file("last", b"x" * 100000)), mode=mode)
    assert (root / "a").read_bytes() == b"second"
    assert (root / "b" / "c").read_bytes() == b"in dir"
    assert os.readlink(root / "d") == "a"
    assert os.lstat(root / "f").st_ino == os.lstat(root / "e").st_ino
    assert (root / "f").read_bytes() == b"linked"
    assert (root / "many").read_bytes() == b"now a file"
    assert (root / "last").read_bytes() == b"x" * 100000
    assert os.lstat(root / "a").st_mtime == MTIME
    with pytest.raises(InvalidArgument, match="parent 'p' is not a directory"):
        apply(tmp_path / "bad", tar(file("p", b"file"), file("p/q", b"under a file")), mode=mode)
