"""Time running /bin/true from an image: ``pyrunctl run --rm``, containerd's
``ctr run --rm`` (its default runtime, runc through
containerd-shim-runc-v2) and ``podman --runtime runc run --rm`` (its default, crun, refuses this
hybrid-cgroup host, /work/shared/MACHINE.md),
measured in the same run and interleaved round-robin so that all share
the machine's noise.

All three run the same one-layer busybox image (tests/busybox_image.py's
oci-archive, imported into each).  containerd and podman are the test
fixtures' private instances (tests/engine_fixtures.py: own config, roots
and sockets in a temp dir, CRI disabled, cgroupfs, file events); pyrunctl
has its own --root and --state there too.  Each tool puts the container
in a cgroup: ctr and podman below a ``/pyrun-test-...`` parent, pyrunctl
below ``/pyrun/<namespace>`` with a ``pyrun-test-...`` namespace; all are
removed at the end.  The figures are wall-clock times of the client
command, daemons already running.

Rerun, as root, from the checkout (after bash scripts/setup):
    .venv/bin/python bench/ctl_run.py [--reps N]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from busybox_image import write_oci_archive  # noqa: E402
from cgroup_helpers import hierarchies, new_parent_name, remove_test_parent  # noqa: E402
from engine_fixtures import IMAGE, containerd_engine, podman_engine  # noqa: E402
from interleave import require, time_interleaved  # noqa: E402

from pyrun.fsutil import remove_tree  # noqa: E402
from pyrun.mount import unmount_all  # noqa: E402


def runner(argv_for, env=None):
    """A runner that runs ``argv_for(cid)`` with null stdio and returns
    its exit status."""
    def go(cid):
        return subprocess.run(argv_for(cid), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              env=env).returncode
    return go


class Pyrunctl:
    """pyrunctl with --root and --state under ``workdir`` and a test-named
    namespace (its containers' cgroups: /pyrun/<namespace>/<id>)."""

    def __init__(self, workdir):
        self.argv = [os.path.join(os.path.dirname(sys.executable), "pyrunctl"),
                     "--root", os.path.join(workdir, "root"),
                     "--state", os.path.join(workdir, "state"),
                     "-n", new_parent_name().lstrip("/")]
        self.cgroup_parent = "/pyrun/" + self.argv[-1]

    def __call__(self, *args):
        subprocess.run([*self.argv, *args], check=True, stdout=subprocess.DEVNULL)

    def cleanup(self):
        """Remove leftover containers, then our namespace's cgroups."""
        r = subprocess.run([*self.argv, "containers", "ls", "-q"], capture_output=True, text=True)
        for cid in r.stdout.split():
            subprocess.run([*self.argv, "containers", "rm", "--force", cid],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        remove_test_parent(hierarchies(), self.cgroup_parent)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=30, help="runs per tool (default 30)")
    opts = ap.parse_args()
    require("ctl_run", ("containerd", "ctr", "podman", "runc"))

    tmp = tempfile.mkdtemp(prefix="pyrun-bench-ctl-")
    pyrun_parents = [h for h in hierarchies() if not os.path.isdir(os.path.join(h, "pyrun"))]
    try:
        archive = os.path.join(tmp, "busybox-oci.tar")
        write_oci_archive(archive, IMAGE)
        dirs = {}
        for name in ("containerd", "podman", "pyrunctl"):
            dirs[name] = os.path.join(tmp, name)
            os.mkdir(dirs[name])
        ctl = Pyrunctl(dirs["pyrunctl"])
        ctl("images", "import", archive)
        with containerd_engine(dirs["containerd"], archive) as ctr, \
                podman_engine(dirs["podman"], archive) as pm:
            ctr_run = ["run", "--rm", "--fifo-dir", ctr.fifo_dir, "--runc-root", ctr.runc_root]
            pm_run = ["--runtime", "runc", "run", "--rm", "--cgroup-parent", pm.cgroup_parent]
            runners = {
                "pyrunctl": runner(lambda cid: [*ctl.argv, "run", "--rm", IMAGE, cid, "true"]),
                "ctr (runc)": runner(lambda cid: ctr.argv(
                    [*ctr_run, "--cgroup", f"{ctr.cgroup_parent}/{cid}", IMAGE, cid, "true"])),
                "podman (runc)": runner(
                    lambda cid: pm.argv([*pm_run, IMAGE, "true"], wrapped=False), env=pm.env),
            }
            try:
                times = time_interleaved(runners, opts.reps, "ctl_run")
            finally:
                ctl.cleanup()
    finally:
        unmount_all(tmp)
        remove_tree(tmp)
        for h in pyrun_parents:  # /pyrun, if this run made it and it is empty
            try:
                os.rmdir(os.path.join(h, "pyrun"))
            except OSError:
                pass

    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"run --rm of true in a busybox image, {opts.reps} runs each, interleaved (ms)")
    print(f"{'tool':<14}{'median':>8}{'min':>8}{'max':>8}{'/ctr':>8}")
    for name, t in times.items():
        print(f"{name:<14}{med[name]:8.1f}{min(t):8.1f}{max(t):8.1f}"
              f"{med[name] / med['ctr (runc)']:8.2f}")
    print("pyrunctl runs the container in-process (its default --runtime pyrun); ctr through "
          "containerd + shim + runc; podman through conmon + runc.")
    print("rerun: as root, in the checkout: .venv/bin/python bench/ctl_run.py --reps 30")


if __name__ == "__main__":
    main()
