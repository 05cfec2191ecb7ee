"""Helpers for the runtime tests: bundles from the busybox rootfs and a
``pyrun`` runner with a private --root."""
import copy
import json
import os
import subprocess
import sys
import tempfile

from pyrun.oci.default import default_spec

PYRUN = os.path.join(os.path.dirname(sys.executable), "pyrun")


def make_bundle(path, rootfs, args, **changes):
    """Write a bundle at ``path`` whose rootfs is ``rootfs`` (shared,
    used by absolute path) and whose config is runc's default spec with
    ``args``, no terminal, and the given top-level/process changes."""
    spec = copy.deepcopy(default_spec())
    spec["root"] = {"path": rootfs, "readonly": True}
    spec["process"]["terminal"] = False
    spec["process"]["args"] = list(args)
    spec["linux"].pop("resources", None)
    for key, value in changes.items():
        if key.startswith("process_"):
            spec["process"][key[len("process_"):]] = value
        elif key.startswith("linux_"):
            spec["linux"][key[len("linux_"):]] = value
        else:
            spec[key] = value
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(spec, f, indent=1)
    return spec


class Pyrun:
    """Runs the pyrun CLI with its own state root."""

    def __init__(self, root):
        self.root = str(root)

    def __call__(self, *args, check=True, timeout=30, **kw):
        # Files, not pipes: a created container inherits pyrun's stdio (as
        # with runc) and would hold a pipe open for as long as it lives.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            r = subprocess.run([PYRUN, "--root", self.root, *args], stdout=out, stderr=err,
                               timeout=timeout, **kw)
            out.seek(0)
            err.seek(0)
            r.stdout = out.read().decode()
            r.stderr = err.read().decode()
        if check and r.returncode != 0:
            raise AssertionError(f"pyrun {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def state(self, cid):
        return json.loads(self("state", cid).stdout)

    def cleanup(self):
        for cid in self("list", "-q", check=False).stdout.split():
            self("delete", "--force", cid, check=False)
