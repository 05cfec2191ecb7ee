"""Time the container lifecycle through the runc command line: a
create + start + delete cycle (pyrun, runc, crun) and ``exec`` of
/bin/true into a running container (pyrun, runc), interleaved in the same
run.  The bundle, cgroup and crun wrapper are bench/run_true.py's.

Rerun, as root, from the checkout (after bash scripts/setup):
    .venv/bin/python bench/lifecycle.py [--reps N]
"""
import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from conftest import make_busybox_rootfs  # noqa: E402
from interleave import require, time_interleaved  # noqa: E402
from run_true import (CGROUPS_PATH, cleanup_cgroups, cleanup_cli, print_table,  # noqa: E402
                      write_crun_wrapper)
from runtime_helpers import make_bundle  # noqa: E402

from pyrun.fsutil import remove_tree  # noqa: E402


def _call(argv, root, *args):
    return subprocess.run([*argv, "--root", root, *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def cycle_runner(argv, root, bundle):
    def go(cid):
        return (_call(argv, root, "create", "--bundle", bundle, cid)
                or _call(argv, root, "start", cid)
                or _call(argv, root, "delete", "--force", cid))
    return go


def exec_runner(argv, root, cid):
    def go(_):
        return _call(argv, root, "exec", cid, "/bin/true")
    return go


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=50, help="runs per runtime (default 50)")
    opts = ap.parse_args()
    require("lifecycle", ("runc", "crun", "unshare"))
    pyrun_cli = os.path.join(os.path.dirname(sys.executable), "pyrun")
    tmp = tempfile.mkdtemp(prefix="pyrun-bench-")
    wrapper = write_crun_wrapper(tmp)
    rootfs = os.path.join(tmp, "rootfs")
    make_busybox_rootfs(rootfs)
    short = os.path.join(tmp, "short")
    make_bundle(short, rootfs, ["/bin/true"], linux_cgroupsPath=CGROUPS_PATH)
    clis = {"pyrun (CLI)": [pyrun_cli], "runc": ["runc"], "crun (wrapper)": [wrapper]}
    roots = {name: os.path.join(tmp, f"root-{i}") for i, name in enumerate(clis)}
    try:
        cycles = time_interleaved({n: cycle_runner(a, roots[n], short) for n, a in clis.items()},
                                  opts.reps, "lifecycle")
        execs = {}
        for name in ("pyrun (CLI)", "runc"):
            long = os.path.join(tmp, "long-" + name.split()[0])
            make_bundle(long, rootfs, ["sleep", "100000"],
                        linux_cgroupsPath=f"{CGROUPS_PATH}-{name.split()[0]}")
            if _call(clis[name], roots[name], "run", "-d", "--bundle", long, "target") != 0:
                sys.exit(f"lifecycle: {name} could not start the exec target")
            execs[name] = exec_runner(clis[name], roots[name], "target")
        exec_times = time_interleaved(execs, opts.reps, "lifecycle")
    finally:
        for name, argv in clis.items():
            cleanup_cli(argv, roots[name])
        cleanup_cgroups()
        for suffix in ("pyrun", "runc"):
            for ctrl in os.listdir("/sys/fs/cgroup"):
                path = os.path.join("/sys/fs/cgroup", ctrl, f"{CGROUPS_PATH}-{suffix}".lstrip("/"))
                if os.path.isdir(path):
                    try:
                        os.rmdir(path)
                    except OSError:
                        pass
        remove_tree(tmp)
    print_table(f"create + start + delete of /bin/true, {opts.reps} cycles each (ms)", cycles, ["runc"])
    print_table(f"exec of /bin/true into a running container, {opts.reps} each (ms)", exec_times,
                ["runc"])
    print("rerun: as root, in the checkout: .venv/bin/python bench/lifecycle.py --reps 50")


if __name__ == "__main__":
    main()
