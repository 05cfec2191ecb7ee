"""``pyrunctl images …`` and ``content fetch`` end to end: the real CLI in
a subprocess, a real docker-registry, real overlayfs mounts (root)."""
import json
import os
import subprocess
import sys

import pytest

from registry_fixtures import USER, PASSWORD, OCILayout, skopeo
from test_images_store import BASE, RICH_CONFIG, build_image

pytestmark = pytest.mark.root

PYRUNCTL = os.path.join(os.path.dirname(__file__), "..", "bin", "pyrunctl")


class Ctl:
    """Runs ``pyrunctl --root <root>`` and keeps the last result."""

    def __init__(self, root):
        self.root = root

    def __call__(self, *args, ns="default", ok=True):
        res = subprocess.run([sys.executable, PYRUNCTL, "--root", self.root, "-n", ns, *args],
                             capture_output=True, text=True, timeout=120)
        if ok and res.returncode != 0:
            raise AssertionError(f"pyrunctl {' '.join(args)} failed ({res.returncode}): "
                                 f"{res.stderr}")
        if not ok:
            assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
        return res

    def blob_files(self):
        d = os.path.join(self.root, "blobs", "sha256")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []


@pytest.fixture
def ctl(safe_tmp):
    c = Ctl(str(safe_tmp / "root"))
    yield c
    # Nothing may stay mounted below the temp dir (safe_tmp refuses to cross mounts).
    for line in open("/proc/self/mountinfo"):
        assert str(safe_tmp) not in line.split()[4], line


@pytest.fixture(scope="module")
def images(registry, tmp_path_factory):
    """``multi``: an index (amd64 + arm64); ``arm``: arm64 only."""
    work = tmp_path_factory.mktemp("ctl-images")
    layout = OCILayout(str(work / "layout"))
    amd, _ = build_image(layout, [BASE, {"bin/app": b"amd64 app\n"}], config=RICH_CONFIG)
    arm, _ = build_image(layout, [BASE, {"bin/app": b"arm64 app\n"}], arch="arm64")
    layout.tag(layout.index([amd, arm]), "multi")
    layout.tag(layout.index([arm]), "arm")
    refs = {}
    for tag in ("multi", "arm"):
        refs[tag] = f"{registry.host}/pyrun-test/ctl:{tag}"
        skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{layout.path}:{tag}",
               f"docker://{refs[tag]}")
    return refs


def test_pull_ls_inspect_mount_tag_push_rm_gc(ctl, registry, images, safe_tmp):
    ref = images["multi"]
    out = ctl("images", "pull", "--plain-http", "--platform", "linux/amd64", "--print-chainid",
              ref).stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"{ref} sha256:")             # not a tty: no progress lines
    assert lines[1].startswith("unpacking linux/amd64 sha256:")
    assert lines[2].startswith("image chain ID: sha256:") and lines[3].startswith("done: ")
    digest = lines[0].split()[1]

    assert ctl("images", "ls", "-q").stdout.split() == [ref]
    table = ctl("images", "ls").stdout.splitlines()
    assert table[0].split() == ["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]
    assert digest in table[1] and "linux/amd64,linux/arm64/v8" in table[1]
    assert OCILayout.INDEX in table[1]

    doc = json.loads(ctl("images", "inspect", ref).stdout)
    assert doc["name"] == ref and doc["target"]["digest"] == digest
    assert doc["config"]["document"]["config"]["Entrypoint"] == RICH_CONFIG["Entrypoint"]
    assert len(doc["layers"]) == 2 and all(l["diffID"].startswith("sha256:") for l in doc["layers"])
    assert doc["chainID"] == lines[2].split()[-1]
    check = ctl("images", "check").stdout.splitlines()[1]
    assert "complete (5/5)" in check and check.endswith("true")

    target = safe_tmp / "mnt"
    target.mkdir()
    res = ctl("images", "mount", ref, str(target))
    assert res.stdout.strip() == str(target) and "lease" in res.stderr
    try:
        assert (target / "bin" / "app").read_bytes() == b"amd64 app\n"
        assert (target / "etc" / "os-release").read_bytes() == BASE["etc/os-release"]
        with pytest.raises(OSError):                           # a view is read-only
            (target / "new").write_text("x")
        assert ctl("leases", "ls", "-q").stdout.split() == [str(target)]
    finally:
        ctl("images", "unmount", "--rm", str(target))
    assert not os.path.ismount(target) and os.listdir(target) == []
    assert ctl("leases", "ls", "-q").stdout.split() == []
    assert str(target) not in ctl("snapshots", "ls").stdout

    assert ctl("images", "tag", ref, "local/copy:1").stdout.split() == ["local/copy:1"]
    res = ctl("images", "tag", ref, "local/copy:1", ok=False)
    assert "already exists" in res.stderr and "--force" in res.stderr
    ctl("images", "tag", "--force", ref, "local/copy:1")

    # Only amd64 was pulled: the index cannot go whole, its amd64 manifest can.
    other = f"{registry.host}/pyrun-test/ctl-pushed:1"
    res = ctl("images", "push", "--plain-http", other, "local/copy:1", ok=False)
    assert "--platform" in res.stderr
    out = ctl("images", "push", "--plain-http", "--platform", "linux/amd64", other,
              "local/copy:1").stdout
    assert out.split()[0] == other
    pushed = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{other}")
    assert json.loads(pushed)["layers"][1]["digest"] == doc["layers"][1]["digest"]

    before = ctl.blob_files()
    assert ctl("images", "rm", ref, "local/copy:1").stdout.split() == [ref, "local/copy:1"]
    assert ctl("images", "ls", "-q").stdout.strip() == ""
    assert ctl("gc").stdout.startswith(f"removed {len(before)} blobs, 2 snapshots")
    assert ctl.blob_files() == [] and ctl("snapshots", "ls").stdout.splitlines()[1:] == []
    assert ctl("check").stdout.strip() == "ok"


def test_mount_without_rm_keeps_a_visible_lease(ctl, registry, images, safe_tmp):
    ctl("content", "fetch", "--plain-http", images["multi"])    # fetch only, mount unpacks
    assert ctl("snapshots", "ls").stdout.splitlines()[1:] == []
    target = safe_tmp / "mnt"
    target.mkdir()
    ctl("images", "mount", "--rw", images["multi"], str(target))
    (target / "scratch").write_text("rw")
    res = ctl("images", "mount", images["multi"], str(target), ok=False)
    assert "already a mount point" in res.stderr
    res = ctl("images", "unmount", str(target))
    assert "kept snapshot" in res.stderr and "--rm" in res.stderr
    assert ctl("leases", "ls", "-q").stdout.split() == [str(target)]
    ctl("images", "rm", images["multi"])
    ctl("gc")                                 # the lease holds the snapshot and its chain
    assert str(target) in ctl("snapshots", "ls").stdout
    ctl("content", "fetch", "--plain-http", images["multi"])
    ctl("images", "mount", images["multi"], str(target))   # the kept snapshot, again
    try:
        assert (target / "scratch").read_text() == "rw"
    finally:
        ctl("images", "unmount", "--rm", str(target))
    ctl("images", "rm", images["multi"])
    ctl("gc")
    assert ctl("snapshots", "ls").stdout.splitlines()[1:] == [] and ctl.blob_files() == []


def test_import_export_round_trip(ctl, safe_tmp, images, registry):
    layout = OCILayout(str(safe_tmp / "layout"))
    amd, _ = build_image(layout, [BASE, {"bin/app": b"amd64 app\n"}])
    arm, _ = build_image(layout, [BASE, {"bin/app": b"arm64 app\n"}], arch="arm64")
    layout.tag(layout.index([amd, arm]), "1")
    out = ctl("images", "import", "--base-name", "example.com/rt", layout.path).stdout
    assert out.startswith("unpacking example.com/rt:1 (sha256:") and out.rstrip().endswith("done")
    digest = json.loads(ctl("images", "inspect", "example.com/rt:1").stdout)["target"]["digest"]

    oci_tar = str(safe_tmp / "all.tar")
    ctl("images", "export", "--all-platforms", oci_tar, "example.com/rt:1")
    docker_tar = str(safe_tmp / "docker.tar")
    ctl("images", "export", "--format", "docker", docker_tar, "example.com/rt:1")
    res = ctl("images", "export", oci_tar, "example.com/rt:1", ok=False)
    assert "already exists" in res.stderr

    other = Ctl(str(safe_tmp / "other"))
    out = other("images", "import", "--no-unpack", oci_tar).stdout
    assert out.split() == ["example.com/rt:1", f"({digest})"]
    other("images", "inspect", "--platform", "linux/arm64", "example.com/rt:1")
    out = other("images", "import", docker_tar).stdout
    assert "unpacking example.com/rt:1 (" in out
    manifest = json.loads(ctl("images", "inspect", "example.com/rt:1").stdout)["manifest"]
    # The docker-archive round trip keeps config and layers; its manifest is Docker's.
    def layers(c):
        doc = json.loads(c("images", "inspect", "example.com/rt:1").stdout)
        return doc["config"]["digest"], [(l["digest"], l["diffID"]) for l in doc["layers"]]

    assert layers(other) == layers(ctl)
    assert manifest["mediaType"] == OCILayout.MANIFEST

    # "-": the archive on stdout, and back in from stdin.
    piped = subprocess.run(f"{sys.executable} {PYRUNCTL} --root {ctl.root} images export "
                           f"--all-platforms - example.com/rt:1 | {sys.executable} {PYRUNCTL} "
                           f"--root {safe_tmp / 'piped'} images import --no-unpack -",
                           shell=True, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.split() == ["example.com/rt:1", f"({digest})"]

    # The default OCI export holds the host's platform only, under the same index.
    host_tar = str(safe_tmp / "host.tar")
    ctl("images", "export", host_tar, "example.com/rt:1")
    third = Ctl(str(safe_tmp / "third"))
    third("images", "import", "--index-name", "example.com/rt:index", host_tar)
    assert json.loads(third("images", "inspect", "example.com/rt:1").stdout)["target"]["digest"] \
        == digest
    res = third("images", "inspect", "--platform", "linux/arm64", "example.com/rt:1", ok=False)
    assert "no manifest for platform linux/arm64" in res.stderr
    assert third("images", "ls", "-q").stdout.split() == ["example.com/rt:1",
                                                          "example.com/rt:index"]


def test_namespaces_see_their_own_images_and_share_bytes(ctl, registry, images):
    ctl("images", "pull", "--plain-http", images["multi"], ns="team-a")
    blobs = ctl.blob_files()
    ctl("images", "pull", "--plain-http", images["multi"], ns="team-b")
    assert ctl.blob_files() == blobs                        # stored once
    ctl("images", "tag", images["multi"], "team-b/only:1", ns="team-b")
    assert ctl("images", "ls", "-q", ns="team-a").stdout.split() == [images["multi"]]
    assert ctl("images", "ls", "-q", ns="team-b").stdout.split() == [images["multi"],
                                                                     "team-b/only:1"]
    assert ctl("images", "ls", "-q", "name==team-b/only:1", ns="team-b").stdout.split() == \
        ["team-b/only:1"]
    res = ctl("images", "inspect", "team-b/only:1", ns="team-a", ok=False)
    assert "not found in namespace team-a" in res.stderr
    ctl("content", "fetch", "--plain-http", "--all-platforms", images["multi"], ns="team-b")
    ctl("images", "inspect", "--platform", "linux/arm64", images["multi"], ns="team-b")
    res = ctl("images", "inspect", "--platform", "linux/arm64", images["multi"], ns="team-a",
              ok=False)
    assert "no manifest for platform linux/arm64" in res.stderr
    blobs = ctl.blob_files()
    ctl("images", "rm", images["multi"], ns="team-a")
    ctl("gc")
    assert ctl.blob_files() == blobs                        # team-b still holds them
    assert ctl("images", "check", ns="team-b").stdout.count("complete") == 2


def test_bad_input(ctl, registry, basic_registry, images, safe_tmp):
    res = ctl("images", "pull", "--plain-http", "Bad//Ref:x", ok=False)
    assert res.stderr.startswith("pyrunctl: invalid reference 'Bad//Ref:x'")
    res = ctl("images", "pull", "--plain-http", f"{registry.host}/pyrun-test/nothing:1", ok=False)
    assert "HTTP 404: MANIFEST_UNKNOWN" in res.stderr and registry.host in res.stderr
    res = ctl("images", "pull", "--plain-http", "--platform", "linux/s390x", images["arm"], ok=False)
    assert "no manifest for platform linux/s390x" in res.stderr and "linux/arm64" in res.stderr
    res = ctl("images", "pull", "--plain-http", "--all-platforms", images["arm"])
    if not os.uname().machine.startswith(("aarch64", "arm64")):
        assert "nothing unpacked: no manifest for platform" in res.stderr
    # An arm64-only image pulls with --platform, but mounts only for that platform.
    ctl("images", "pull", "--plain-http", "--platform", "linux/arm64", images["arm"])
    target = safe_tmp / "mnt"
    target.mkdir()
    if not os.uname().machine.startswith(("aarch64", "arm64")):
        res = ctl("images", "mount", images["arm"], str(target), ok=False)
        assert "no manifest for platform" in res.stderr
        assert ctl("leases", "ls", "-q").stdout.strip() == ""    # the failed mount cleaned up
    res = ctl("images", "mount", "nosuch:1", str(target), ok=False)
    assert "image 'nosuch:1': not found in namespace default" in res.stderr
    res = ctl("images", "rm", "nosuch:1", images["arm"], ok=False)
    assert res.stdout.split() == [images["arm"]] and "unable to delete nosuch:1" in res.stderr
    res = ctl("images", "export", "--format", "tar", str(safe_tmp / "x.tar"), "nosuch", ok=False)
    assert "not found" in res.stderr

    # A registry that refuses: basic auth without and with credentials.
    layout = OCILayout(str(safe_tmp / "layout"))
    layout.tag(build_image(layout, [BASE])[0], "1")
    ctl("images", "import", "--no-unpack", "--base-name", "example.com/auth", layout.path)
    remote = f"{basic_registry.host}/pyrun-test/auth:1"
    res = ctl("images", "push", "--plain-http", remote, "example.com/auth:1", ok=False)
    assert f"{basic_registry.host} refused" in res.stderr and "401" in res.stderr
    res = ctl("images", "push", "--plain-http", "--user", f"{USER}:wrong", remote,
              "example.com/auth:1", ok=False)
    assert "401" in res.stderr
    ctl("images", "push", "--plain-http", "--user", f"{USER}:{PASSWORD}", remote,
        "example.com/auth:1")
    ctl("images", "pull", "--plain-http", "-u", f"{USER}:{PASSWORD}", remote)
    res = ctl("images", "pull", "--plain-http", "--user", "nocolon", remote, ok=False)
    assert "user:password" in res.stderr

    # A lone manifest is taken whatever its platform (as ctr does), with a warning.
    res = ctl("images", "pull", "--plain-http", "--platform", "linux/s390x", remote,
              "-u", f"{USER}:{PASSWORD}")
    assert "unpacking linux/amd64 " in res.stdout
    assert "is a linux/amd64 image, not linux/s390x" in res.stderr

    res = ctl("images", "import", str(safe_tmp / "missing.tar"), ok=False)
    assert "missing.tar" in res.stderr


def test_unmount_touches_only_the_target(ctl, safe_tmp):
    """`images unmount DIR` took every mount below DIR with it (a running
    container's rootfs, given its state dir; the whole host, given /).
    Like ctr, it now unmounts only what is stacked on DIR itself."""
    from pyrun.mount import mounts_under

    sub = safe_tmp / "dir" / "sub"
    sub.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(sub)], check=True)
    try:
        ctl("images", "unmount", str(safe_tmp / "dir"))
        assert mounts_under(str(safe_tmp / "dir")) == [str(sub)]
    finally:
        subprocess.run(["umount", str(sub)], check=True)
