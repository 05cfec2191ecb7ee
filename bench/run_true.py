"""Time ``run`` of /bin/true in a busybox bundle: pyrun's CLI, pyrun as a
library (no new interpreter), runc and crun, measured in the same run and
interleaved round-robin so that all share the machine's noise.

Every runtime runs the same bundle (the host's static busybox; runc's
default spec as ``pyrun spec`` writes it, with terminal false, args
["/bin/true"], no linux.resources and a test-named linux.cgroupsPath) with
its own --root in a temp dir.  crun goes through the wrapper this
hybrid-cgroup host needs (a private mount namespace without the cgroup2
mount, see /work/shared/MACHINE.md), so its figure includes unshare and sh.

Every runtime puts each container in a cgroup (cgroupsPath below) and
removes it on delete.

Rerun, as root, from the checkout (after bash scripts/setup):
    .venv/bin/python bench/run_true.py [--reps N]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from conftest import make_busybox_rootfs  # noqa: E402
from interleave import require, time_interleaved  # noqa: E402
from runtime_helpers import make_bundle  # noqa: E402

from pyrun.fsutil import remove_tree  # noqa: E402
from pyrun.runtime.run import run  # noqa: E402
from pyrun.runtime.state import Store  # noqa: E402

# A cgroup named for pyrun tests, as the machine's rules ask.
CGROUPS_PATH = f"/pyrun-test-bench-{os.getpid()}"  # one per bench process
CGROUP_ROOT = "/sys/fs/cgroup"

CRUN_WRAPPER = """#!/bin/sh
# crun refuses hybrid cgroups; hide the cgroup2 mount in a private mount ns.
exec unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified; exec crun "$@"' crun "$@"
"""


def write_crun_wrapper(directory):
    """Write CRUN_WRAPPER into ``directory``; returns its path."""
    path = os.path.join(directory, "crun-wrapper")
    with open(path, "w") as f:
        f.write(CRUN_WRAPPER)
    os.chmod(path, 0o755)
    return path


def print_table(title, times, bases, first="runtime"):
    """Median, min and max of each variant (ms), and the ratio of its median
    to each of ``bases``' medians."""
    med = {n: statistics.median(t) for n, t in times.items()}
    print(title)
    print(f"{first:<17}{'median':>8}{'min':>8}{'max':>8}"
          + "".join(f"{'/' + b.split()[0]:>8}" for b in bases))
    for name, t in times.items():
        print(f"{name:<17}{med[name]:8.2f}{min(t):8.2f}{max(t):8.2f}"
              + "".join(f"{med[name] / med[b]:8.2f}" for b in bases))


def cli_runner(argv, root, bundle):
    """A runner that runs ``argv --root root run -b bundle ID`` and
    returns its exit status."""
    def go(cid):
        return subprocess.run([*argv, "--root", root, "run", "-b", bundle, cid],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).returncode
    return go


def library_runner(root, bundle):
    """A runner that calls pyrun.runtime.run.run in this process, with
    fd 1 on /dev/null around the call."""
    store = Store(root)
    devnull = os.open(os.devnull, os.O_WRONLY)

    def go(cid):
        saved = os.dup(1)
        os.dup2(devnull, 1)
        try:
            return run(store, cid, bundle)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
    return go


def cleanup_cli(argv, root):
    """Delete whatever containers a CLI runtime left under ``root``."""
    if not os.path.isdir(root):
        return
    r = subprocess.run([*argv, "--root", root, "list", "-q"], capture_output=True, text=True)
    for cid in r.stdout.split():
        subprocess.run([*argv, "--root", root, "delete", "--force", cid],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cleanup_cgroups():
    """Remove our cgroup wherever a peer left it (rmdir: only if empty)."""
    for ctrl in os.listdir(CGROUP_ROOT):
        path = os.path.join(CGROUP_ROOT, ctrl, CGROUPS_PATH.lstrip("/"))
        if os.path.isdir(path):
            try:
                os.rmdir(path)
            except OSError as e:
                print(f"warning: could not remove {path}: {e}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=100, help="runs per runtime (default 100)")
    opts = ap.parse_args()
    require("run_true", ("runc", "crun", "unshare"))
    pyrun_cli = os.path.join(os.path.dirname(sys.executable), "pyrun")
    if not os.access(pyrun_cli, os.X_OK):
        sys.exit(f"run_true: {pyrun_cli} is missing; run this with the venv's python "
                 "(.venv/bin/python) after bash scripts/setup")

    tmp = tempfile.mkdtemp(prefix="pyrun-bench-")
    wrapper = write_crun_wrapper(tmp)
    rootfs = os.path.join(tmp, "rootfs")
    make_busybox_rootfs(rootfs)
    bundle = os.path.join(tmp, "bundle")
    make_bundle(bundle, rootfs, ["/bin/true"], linux_cgroupsPath=CGROUPS_PATH)

    clis = {
        "pyrun (CLI)": [pyrun_cli],
        "runc": ["runc"],
        "crun (wrapper)": [wrapper],
    }
    roots = {name: os.path.join(tmp, "root-" + str(i)) for i, name in
             enumerate([*clis, "pyrun (library)"])}
    runners = {name: cli_runner(argv, roots[name], bundle) for name, argv in clis.items()}
    runners["pyrun (library)"] = library_runner(roots["pyrun (library)"], bundle)
    names = list(runners)
    try:
        times = time_interleaved(runners, opts.reps, "run_true")
    finally:
        for name, argv in clis.items():
            cleanup_cli(argv, roots[name])
        store = Store(roots["pyrun (library)"])
        from pyrun.runtime.delete import delete
        for st in store.list():
            delete(store, st.id, force=True)
        cleanup_cgroups()
        remove_tree(tmp)

    print_table(f"run of /bin/true in a busybox bundle, {opts.reps} runs each, interleaved (ms)",
                {name: times[name] for name in names}, ["runc", "crun (wrapper)"])
    print("crun runs through its hybrid-cgroup wrapper (unshare + sh included); "
          "each container gets a cgroup.")
    print("rerun: as root, in the checkout: .venv/bin/python bench/run_true.py --reps 100")


if __name__ == "__main__":
    main()
