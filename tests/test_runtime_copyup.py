"""tmpcopyup (runc's mount extension that podman's --tmpfs and --read-only
use): a tmpfs mounted over a directory starts with a copy of what it
covers."""
import os
import shutil

import pytest

from pyrun.errdefs import InvalidArgument
from pyrun.oci.default import default_spec
from runtime_helpers import make_bundle

MTIME = 1_500_000_000


def _tmpfs(dest, *options):
    return {"destination": dest, "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", *options]}


@pytest.mark.root
def test_tmpcopyup_copies_the_covered_tree(pyrun, tmp_path, busybox_rootfs):
    rootfs = str(tmp_path / "rootfs")
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    data = os.path.join(rootfs, "data")
    os.makedirs(os.path.join(data, "sub"))
    with open(os.path.join(data, "sub", "f"), "w") as f:
        f.write("covered content\n")
    os.chown(os.path.join(data, "sub", "f"), 1234, 5678)
    os.chmod(os.path.join(data, "sub", "f"), 0o604)
    os.chmod(os.path.join(data, "sub"), 0o2750)
    os.symlink("sub/f", os.path.join(data, "link"))
    os.mkfifo(os.path.join(data, "fifo"))
    os.utime(os.path.join(data, "sub", "f"), (MTIME, MTIME))
    bundle = tmp_path / "bundle"
    make_bundle(bundle, rootfs, ["/bin/sh", "-c",
                                 "cat /data/link; cd /data && stat -c '%n %u %g %a %F %Y' "
                                 "sub sub/f link fifo; grep ' /data ' /proc/mounts; "
                                 "echo new > /data/new && cat /etc/passwd >/dev/null && "
                                 "! touch /etc/new 2>/dev/null"],
                mounts=default_spec()["mounts"] + [_tmpfs("/data", "tmpcopyup"),
                                                   _tmpfs("/bin", "tmpcopyup"),
                                                   _tmpfs("/etc", "ro", "tmpcopyup")])
    r = pyrun("run", "-b", str(bundle), "c1", check=False)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "covered content"
    assert lines[1].startswith("sub 0 0 2750 directory ")
    assert lines[2] == f"sub/f 1234 5678 604 regular file {MTIME}"
    assert lines[3].startswith("link 0 0 777 symbolic link ")
    assert lines[4].startswith("fifo 0 0 644 fifo ")
    assert lines[5].startswith("tmpfs /data tmpfs ")
    # /bin/sh ran from the copy on the tmpfs; the rootfs itself is untouched.
    assert not os.path.exists(os.path.join(data, "new"))


def test_tmpcopyup_needs_tmpfs(tmp_path):
    from pyrun.oci import spec as ocispec
    from pyrun.runtime import plan as planner
    raw = default_spec()
    raw["mounts"].append({"destination": "/x", "type": "bind", "source": str(tmp_path),
                          "options": ["rbind", "tmpcopyup"]})
    inp = planner.Inputs(bundle=str(tmp_path), rootfs=str(tmp_path), fifo_fd=9,
                         container_id="c")
    with pytest.raises(InvalidArgument,
                       match=r"mounts\[\d+\].options: 'tmpcopyup' needs type tmpfs"):
        planner.build(ocispec.parse(raw), inp)
