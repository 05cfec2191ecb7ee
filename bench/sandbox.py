"""Sandbox latency and throughput: ``pyrun.run(["true"])`` (the library
API with its default limits) against bubblewrap, runc and crun on the same
busybox rootfs, measured in the same run.

Latency: spawn to exit of ``true``, one at a time, interleaved
round-robin so every tool shares the machine's noise:

- ``pyrun.run``: new pid/net/ipc/uts/mount/cgroup namespaces, read-only
  rootfs, tmpfs /tmp, seccomp, no capabilities, cgroups (memory 256 MiB,
  pids 128), output captured through pipes, everything removed after;
- ``bwrap --unshare-all --ro-bind ROOTFS / --proc /proc --dev /dev true``
  (no cgroups, no seccomp: bubblewrap has no limits of its own);
- ``runc run`` and ``crun run`` (crun through the hybrid-cgroup wrapper of
  /work/shared/MACHINE.md) of a bundle with the same namespaces, limits
  and seccomp profile (pyrun/oci/seccomp_default.py), started with
  subprocess.run, each with its own cgroup.

Throughput: sandboxes per second with ``--threads`` workers (default 2,
one per core) running ``true`` back to back, for pyrun.run (threads in
this process) and for the crun CLI (threads each running ``crun run``),
with the same config and, to show what the profile costs crun (it
compiles it on every run; pyrun caches the compiled filter), without
seccomp.

Rerun, as root, from the checkout (after bash scripts/setup):
    .venv/bin/python bench/sandbox.py [--reps 100] [--count 200] [--threads 2]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))

from conftest import make_busybox_rootfs  # noqa: E402
from interleave import require, time_interleaved  # noqa: E402
from run_true import print_table, write_crun_wrapper  # noqa: E402
from runtime_helpers import make_bundle  # noqa: E402

import pyrun  # noqa: E402
from pyrun import sandbox  # noqa: E402
from pyrun.fsutil import remove_tree  # noqa: E402
from pyrun.oci.seccomp_default import default_profile  # noqa: E402

PARENT = "/pyrun-test-bench-sandbox"
LIMITS = {"memory": {"limit": 256 << 20, "swap": 256 << 20}, "pids": {"limit": 128}}


def cli(argv, root, bundle):
    def go(cid):
        return subprocess.run([*argv, "--root", root, "run", "-b", bundle, cid],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).returncode
    return go


def throughput(fn, count, threads):
    """Seconds to run ``fn(i)`` for i in range(count) on ``threads`` threads."""
    it = iter(range(count))
    lock = threading.Lock()
    failures = []

    def worker():
        while True:
            with lock:
                i = next(it, None)
            if i is None:
                return
            if fn(i) != 0:
                failures.append(i)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if failures:
        sys.exit(f"bench/sandbox: {len(failures)} runs failed")
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=100, help="latency runs per tool")
    ap.add_argument("--count", type=int, default=200, help="sandboxes per throughput run")
    ap.add_argument("--threads", type=int, default=2)
    opts = ap.parse_args()
    require("bench/sandbox", ("bwrap", "runc", "crun", "unshare"))

    tmp = tempfile.mkdtemp(prefix="pyrun-bench-sandbox-")
    wrapper = write_crun_wrapper(tmp)
    rootfs = os.path.join(tmp, "rootfs")
    make_busybox_rootfs(rootfs)
    ns = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]

    def bundle(name, cgpath, seccomp=True):
        path = os.path.join(tmp, name)
        extra = {"linux_seccomp": default_profile(compat_arches=False)} if seccomp else {}
        make_bundle(path, rootfs, ["true"], linux_cgroupsPath=cgpath, linux_resources=LIMITS,
                    linux_namespaces=ns, **extra)
        return path

    runc_root, crun_root = os.path.join(tmp, "runc"), os.path.join(tmp, "crun")
    lat_bundle = bundle("bundle", f"{PARENT}/latency")
    runners = {
        "pyrun.run": lambda cid: pyrun.run(["true"], rootfs=rootfs, cgroup_parent=PARENT).exit_code,
        "bwrap": lambda cid: subprocess.run(
            ["bwrap", "--unshare-all", "--ro-bind", rootfs, "/", "--proc", "/proc",
             "--dev", "/dev", "true"]).returncode,
        "runc run": cli(["runc"], runc_root, lat_bundle),
        "crun run": cli([wrapper], crun_root, lat_bundle),
    }
    try:
        times = time_interleaved(runners, opts.reps, "bench/sandbox")

        # Throughput: every crun worker needs its own bundle (cgroupsPath).
        def crun_runner(seccomp):
            bundles = [bundle(f"tp{k}-{seccomp}", f"{PARENT}/tp{k}", seccomp)
                       for k in range(opts.threads)]
            slot = threading.local()
            counter = iter(range(opts.threads))
            counter_lock = threading.Lock()

            def one(i):
                if not hasattr(slot, "b"):
                    with counter_lock:
                        slot.b = bundles[next(counter)]
                return subprocess.run([wrapper, "--root", crun_root, "run", "-b", slot.b,
                                       f"tp-{seccomp}-{i}"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL).returncode
            return one

        tp = {}
        tp["pyrun.run"] = opts.count / throughput(
            lambda i: pyrun.run(["true"], rootfs=rootfs, cgroup_parent=PARENT).exit_code,
            opts.count, opts.threads)
        tp["crun run"] = opts.count / throughput(crun_runner(True), opts.count, opts.threads)
        tp["crun, no seccomp"] = opts.count / throughput(crun_runner(False), opts.count,
                                                         opts.threads)
    finally:
        sandbox.remove_cgroup_parent(PARENT)
        for ctrl in os.listdir("/sys/fs/cgroup"):
            top = os.path.join("/sys/fs/cgroup", ctrl, PARENT.lstrip("/"))
            if os.path.isdir(top):
                for e in os.scandir(top):
                    if e.is_dir():
                        os.rmdir(e.path)
                os.rmdir(top)
        remove_tree(tmp)

    print_table(f"latency: spawn to exit of `true`, {opts.reps} runs each, interleaved (ms)",
                times, ["bwrap"], first="tool")
    print(f"\nthroughput: {opts.count} sandboxes on {opts.threads} threads (per second)")
    for n, v in tp.items():
        print(f"{n:<18}{v:8.1f}{v / tp['crun run']:9.2f} x crun run")
    print("\npyrun.run, runc and crun: same namespaces, memory/pids cgroup limits and seccomp "
          "profile;\nbwrap makes no cgroups and loads no seccomp filter.")
    print("rerun: as root, in the checkout: .venv/bin/python bench/sandbox.py")


if __name__ == "__main__":
    main()
