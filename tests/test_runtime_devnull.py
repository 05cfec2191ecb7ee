"""stdio that is /dev/null becomes the container's /dev/null, read-write
(runc's reOpenDevNull): containerd's --null-io hands the runtime one
read-only /dev/null fd as stdin, stdout and stderr."""
import os
import subprocess

import pytest

from runtime_helpers import PYRUN, Pyrun, make_bundle

pytestmark = pytest.mark.root


def test_read_only_dev_null_stdio_is_reopened(tmp_path, busybox_rootfs):
    bundle = tmp_path / "bundle"
    make_bundle(bundle, busybox_rootfs, ["/bin/sh", "-c", "echo out && echo err >&2 && "
                                         "cat /proc/self/fdinfo/0 | grep -q '^flags:.*2$'"])
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        r = subprocess.run([PYRUN, "--root", str(tmp_path / "state"), "run", "-b", str(bundle),
                            "c1"], stdin=fd, stdout=fd, stderr=fd, timeout=30)
    finally:
        os.close(fd)
        Pyrun(tmp_path / "state").cleanup()
    assert r.returncode == 0
