"""Import and export of OCI image layouts (directory and tar) and
docker-archives: round trips with equal digests, interop with skopeo,
umoci and oci-image-tool, and hostile archives."""
import io
import json
import os
import subprocess
import tarfile

import pytest

from pyrun.errdefs import FailedPrecondition, InvalidArgument, NotFound
from pyrun.images.archive import export_docker, export_oci, import_archive
from pyrun.images.store import ImageStore
from pyrun.metadata import DB, collect
from pyrun.snapshots import registry as snapshotters
from registry_fixtures import OCILayout, skopeo
from test_images_store import BASE, RICH_CONFIG, build_image

pytestmark = pytest.mark.root

NAME = "example.com/pyrun/archive:1"


class Root:
    """A metadata DB with an overlayfs snapshotter in ``path``."""

    def __init__(self, path):
        self.backend = snapshotters.new("overlayfs", os.path.join(path, "snapshots"))
        self.db = DB(os.path.join(path, "meta"), snapshotters={"overlayfs": self.backend})
        self.images = ImageStore(self.db, "ns")

    def close(self):
        self.db.close()
        self.backend.close()


@pytest.fixture
def roots(safe_tmp):
    made = []

    def make(name):
        made.append(Root(str(safe_tmp / name)))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def layout(safe_tmp):
    """An OCI layout: NAME is a two-platform index, "single" one manifest."""
    lay = OCILayout(str(safe_tmp / "src-layout"))
    amd, _ = build_image(lay, [BASE, {"bin/app": b"amd64"}], config=RICH_CONFIG)
    arm, _ = build_image(lay, [BASE, {"bin/app": b"arm64"}], arch="arm64")
    index = lay.index([amd, arm])
    lay.tag(index, NAME)
    single, _ = build_image(lay, [BASE])
    lay.tag(single, "single")
    return lay


def all_digests(root):
    return {i.digest for i in root.db.content_store("ns").list()}


def test_oci_dir_round_trip_and_peer_tools(roots, layout, safe_tmp):
    a = roots("a")
    imported = import_archive(a.db, "ns", layout.path, base_name="example.com/pyrun/base")
    assert [i.name for i in imported] == [NAME, "example.com/pyrun/base:single"]
    assert a.images.config(NAME, "linux/amd64").entrypoint == ("/bin/app", "--serve")
    assert a.images.config(NAME, "linux/arm64").cmd == ("/bin/sh",)

    out = str(safe_tmp / "out")
    export_oci(a.db, "ns", [NAME, "example.com/pyrun/base:single"], out)
    index = json.load(open(os.path.join(out, "index.json")))
    entry = index["manifests"][0]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1"
    assert entry["digest"] == a.images.get(NAME).target["digest"]
    res = subprocess.run(["oci-image-tool", "validate", "--type", "image", "--ref", "name=1", out],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    inspect = json.loads(skopeo("inspect", "--override-arch", "arm64", f"oci:{out}:1"))
    assert inspect["Architecture"] == "arm64"
    # umoci 0.4.7 cannot choose a platform in an index: unpack the single one.
    bundle = str(safe_tmp / "bundle")
    res = subprocess.run(["umoci", "unpack", "--image", f"{out}:single", bundle],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    with open(os.path.join(bundle, "rootfs", "etc", "os-release"), "rb") as f:
        assert f.read() == BASE["etc/os-release"]

    b = roots("b")
    again = import_archive(b.db, "ns", out)
    assert [(i.name, i.target) for i in again] == [(i.name, i.target) for i in imported]
    assert all_digests(b) == all_digests(a)
    assert b.images.unpack(NAME, "overlayfs") == a.images.unpack(NAME, "overlayfs")


def test_oci_tar_round_trip(roots, layout, safe_tmp):
    a = roots("a")
    import_archive(a.db, "ns", layout.path, base_name="b")
    tar_path = str(safe_tmp / "img.tar")
    export_oci(a.db, "ns", [NAME, "b:single"], tar_path, as_tar=True)
    b = roots("b")
    names = [i.name for i in import_archive(b.db, "ns", tar_path)]
    assert names == [NAME, "b:single"]
    assert all_digests(b) == all_digests(a)
    assert {i.name: i.target for i in b.images.list()} == {i.name: i.target for i in a.images.list()}
    # skopeo reads the tar too.
    skopeo("inspect", f"oci-archive:{tar_path}:single")
    with pytest.raises(FailedPrecondition, match="already exists"):
        export_oci(a.db, "ns", [NAME], tar_path, as_tar=True)


def test_docker_archive_round_trip_and_skopeo(roots, layout, safe_tmp):
    a = roots("a")
    import_archive(a.db, "ns", layout.path)
    path = str(safe_tmp / "docker.tar")
    export_docker(a.db, "ns", [NAME], path, platform="linux/amd64")
    with tarfile.open(path) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == [NAME]
        assert json.load(tf.extractfile("repositories")) == {
            "example.com/pyrun/archive": {"1": manifest[0]["Layers"][-1].split("/")[0]}}
    want_cfg = a.images.config(NAME, "linux/amd64")

    b = roots("b")
    [img] = import_archive(b.db, "ns", path)
    assert img.name == NAME
    cfg = b.images.config(NAME, "linux/amd64")
    assert cfg == want_cfg                       # same config digest: same image ID
    assert b.images.unpack(NAME, "overlayfs") == a.images.unpack(NAME, "overlayfs", "linux/amd64")
    # Exporting the imported image again gives the same manifest back.
    path2 = str(safe_tmp / "docker2.tar")
    export_docker(b.db, "ns", [NAME], path2)
    c = roots("c")
    [img2] = import_archive(c.db, "ns", path2)
    assert img2.target == img.target

    oci = str(safe_tmp / "from-docker")
    skopeo("copy", f"docker-archive:{path}", f"oci:{oci}:x")
    assert skopeo("inspect", "--config", f"oci:{oci}:x")


def test_import_what_skopeo_writes(roots, layout, safe_tmp):
    oci_tar = str(safe_tmp / "skopeo-oci.tar")
    docker_tar = str(safe_tmp / "skopeo-docker.tar")
    skopeo("copy", f"oci:{layout.path}:single", f"oci-archive:{oci_tar}:single")
    skopeo("copy", f"oci:{layout.path}:single", f"docker-archive:{docker_tar}:pyrun/single:2")
    a = roots("a")
    [from_oci] = import_archive(a.db, "ns", oci_tar, base_name="local/single")
    assert from_oci.name == "local/single:single"
    [from_docker] = import_archive(a.db, "ns", docker_tar)
    assert from_docker.name == "docker.io/pyrun/single:2"
    top = a.images.unpack("local/single:single", "overlayfs")
    assert a.images.unpack(from_docker.name, "overlayfs") == top
    assert a.images.config(from_docker.name).cmd == ("/bin/sh",)


def test_rm_after_import_then_gc_frees_it(roots, layout):
    a = roots("a")
    import_archive(a.db, "ns", layout.path, base_name="b")
    a.images.unpack("b:single", "overlayfs")
    a.images.remove("b:single")
    a.images.remove(NAME)
    collect(a.db)
    assert all_digests(a) == set() and a.db.content.list() == []


# --- hostile archives ------------------------------------------------------------------------

def make_tar(path, members):
    """``members``: (TarInfo fields dict, bytes)."""
    with tarfile.open(path, "w") as tf:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for k, v in fields.items():
                setattr(info, k, v)
            info.size = len(data) if info.isfile() else 0
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)


def layout_members(layout):
    out = []
    for top, _, files in os.walk(layout.path):
        for f in files:
            full = os.path.join(top, f)
            out.append(({"name": os.path.relpath(full, layout.path)}, open(full, "rb").read()))
    return out


@pytest.mark.parametrize("bad", [
    {"name": "../escape"}, {"name": "/abs/escape"}, {"name": "blobs/../../escape"},
    {"name": "blobs/sha256/link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"},
    {"name": "blobs/sha256/link", "type": tarfile.SYMTYPE, "linkname": "../../../etc/passwd"},
    {"name": "blobs/sha256/link", "type": tarfile.LNKTYPE, "linkname": "nosuch"},
    {"name": "blobs/sha256/link", "type": tarfile.SYMTYPE, "linkname": "link"},
])
def test_hostile_member_names(roots, layout, safe_tmp, bad):
    path = str(safe_tmp / "bad.tar")
    make_tar(path, layout_members(layout) + [(dict(bad), b"evil")])
    a = roots("a")
    with pytest.raises(InvalidArgument, match="escapes the archive|outside the archive|not a regular file of the archive"):
        import_archive(a.db, "ns", path)
    assert not os.path.exists(safe_tmp / "escape") and not os.path.exists("/abs/escape")
    assert a.images.list() == [] and a.db.leases("ns").list() == []
    collect(a.db)
    assert a.db.content.list() == []


def test_blob_digest_mismatch(roots, layout, safe_tmp):
    layer = json.loads(layout.read(layout.refs[1]["digest"]))["layers"][0]
    members = [(f, b"tampered" if f["name"] == f"blobs/sha256/{layer['digest'][7:]}" else d)
               for f, d in layout_members(layout)]
    path = str(safe_tmp / "tampered.tar")
    make_tar(path, members)
    a = roots("a")
    with pytest.raises(InvalidArgument, match=f"blobs/sha256/{layer['digest'][7:]}.*does not match"):
        import_archive(a.db, "ns", path)
    assert a.images.list() == []
    # A tampered manifest is caught as well, before anything is parsed.
    man = layout.refs[1]["digest"][7:]
    members = [(f, b"{}" if f["name"] == f"blobs/sha256/{man}" else d)
               for f, d in layout_members(layout)]
    make_tar(path, members)
    with pytest.raises(InvalidArgument, match="does not match its descriptor"):
        import_archive(a.db, "ns", path)


def test_bad_archives(roots, safe_tmp):
    a = roots("a")
    junk = safe_tmp / "junk"
    junk.write_bytes(b"not a tar")
    with pytest.raises(InvalidArgument, match="not a readable tar"):
        import_archive(a.db, "ns", str(junk))
    empty = str(safe_tmp / "empty.tar")
    make_tar(empty, [({"name": "hello"}, b"x")])
    with pytest.raises(InvalidArgument, match="neither an OCI image layout"):
        import_archive(a.db, "ns", empty)
    d = str(safe_tmp / "docker-missing.tar")
    make_tar(d, [({"name": "manifest.json"},
                  json.dumps([{"Config": "c.json", "Layers": ["l/layer.tar"]}]).encode()),
                 ({"name": "c.json"}, b"{}")])
    with pytest.raises(NotFound, match="no member 'l/layer.tar'"):
        import_archive(a.db, "ns", d)
    d2 = str(safe_tmp / "docker-escape.tar")
    make_tar(d2, [({"name": "manifest.json"},
                   json.dumps([{"Config": "../../etc/passwd", "Layers": []}]).encode())])
    with pytest.raises(InvalidArgument, match="escapes the archive"):
        import_archive(a.db, "ns", d2)
    with pytest.raises(NotFound):
        export_oci(a.db, "ns", ["nosuch"], str(safe_tmp / "never"))
    assert not os.path.exists(safe_tmp / "never")


def test_layout_dir_with_symlinked_blob(roots, layout, safe_tmp):
    man = layout.refs[1]["digest"][7:]
    blob = os.path.join(layout.path, "blobs", "sha256", man)
    os.rename(blob, str(safe_tmp / "outside"))
    os.symlink(str(safe_tmp / "outside"), blob)
    a = roots("a")
    with pytest.raises(InvalidArgument, match="is a symbolic link"):
        import_archive(a.db, "ns", layout.path)


def test_export_of_a_partly_pulled_index(roots, layout, safe_tmp):
    # As after a pull of one platform: the index is there, arm64's
    # manifest is not.  Export keeps the index as it is (same digest) and
    # skips the platforms not present; import does the same.
    a = roots("a")
    import_archive(a.db, "ns", layout.path)
    arm = a.images.manifest(NAME, "linux/arm64")
    a.db.content_store("ns").delete(arm.digest)
    out = str(safe_tmp / "partial")
    export_oci(a.db, "ns", [NAME], out)
    assert not os.path.exists(os.path.join(out, "blobs", "sha256", arm.digest[7:]))
    b = roots("b")
    [img] = import_archive(b.db, "ns", out)
    assert img.target == a.images.get(NAME).target
    assert b.images.config(NAME, "linux/amd64").entrypoint == ("/bin/app", "--serve")
    with pytest.raises(NotFound, match="no manifest for platform linux/arm64"):
        b.images.manifest(NAME, "linux/arm64")
    inspect = json.loads(skopeo("inspect", "--override-arch", "amd64", f"oci:{out}:1"))
    assert inspect["Architecture"] == "amd64"
