#!/usr/bin/env python3
"""How long a snapshotter takes to prepare an active snapshot, and to mount
and unmount it, on top of a 1-layer and a 50-layer chain.

For overlayfs neither may grow with the chain: no data is copied, and only
the mount's lower dir list (and the kernel's lookups of it) grows.  native copies the
parent's tree, so it grows with the data in the chain: the "50 layers,
same data" row rewrites the same files in every layer, to show that chain
length alone costs native nothing either.

Rerun (as root, from the repo root):

    .venv/bin/python bench/snapshot_prepare.py            # 30 rounds each
    .venv/bin/python bench/snapshot_prepare.py --reps 100 --dir /var/tmp

Times are wall-clock milliseconds per operation; "50/1" is the median for
the 50-layer chain over the median for the 1-layer chain, measured in
alternating rounds so that both see the same machine load.  Unmounting an
overlay syncs its upper filesystem (ovl_sync_fs), so overlay figures depend
on the disk and on what else writes to it.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyrun import linux  # noqa: E402
from pyrun.fsutil import remove_tree  # noqa: E402
from pyrun.mount import mount_all, unmount_all  # noqa: E402
from pyrun.snapshots import registry  # noqa: E402

FILES_PER_LAYER = 10
FILE_SIZE = 4096


def build_chain(s, work, prefix, layers, distinct):
    """Commit ``layers`` layers of FILES_PER_LAYER files each, named
    ``<prefix>-<n>``; with ``distinct`` False every layer rewrites the same
    file names.  Returns the top layer's name."""
    mnt = os.path.join(work, "build")
    os.makedirs(mnt, exist_ok=True)
    parent = ""
    for i in range(layers):
        key = f"{prefix}-{i}-active"
        mount_all(s.prepare(key, parent), mnt)
        try:
            for j in range(FILES_PER_LAYER):
                name = f"f-{i}-{j}" if distinct else f"f-{j}"
                with open(os.path.join(mnt, name), "wb") as f:
                    f.write(os.urandom(FILE_SIZE))
        finally:
            unmount_all(mnt)
        s.commit(f"{prefix}-{i}", key)
        parent = f"{prefix}-{i}"
    return parent


def measure(s, tops, work, reps):
    """Per top: (prepare times, mount+unmount times) in ms.  Rounds
    alternate between the tops so that both see the same machine load."""
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt, exist_ok=True)
    out = {top: ([], []) for top in tops}
    for r in range(reps):
        for top in tops:
            key = f"bench-{r}"
            t0 = time.perf_counter()
            mounts = s.prepare(key, top)
            t1 = time.perf_counter()
            mount_all(mounts, mnt)
            unmount_all(mnt)
            t2 = time.perf_counter()
            s.remove(key)
            out[top][0].append((t1 - t0) * 1000)
            out[top][1].append((t2 - t1) * 1000)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--dir", default="/var/tmp", help="where the snapshotter roots go")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="pyrun-bench-snap-", dir=args.dir)
    cases = [("overlayfs", True), ("native", True), ("native", False)]
    rows = []
    try:
        for backend, distinct in cases:
            with registry.new(backend, os.path.join(work, f"{backend}-{distinct}")) as s:
                # Two chains side by side in one root: 1 layer, and 50.
                short = build_chain(s, work, "short", 1, distinct)
                long = build_chain(s, work, "long", 50, distinct)
                m = measure(s, (short, long), work, args.reps)
                results = {1: m[short], 50: m[long]}
            label = backend + ("" if distinct else " (same data)")
            for op, idx in (("prepare", 0), ("mount+unmount", 1)):
                for layers in (1, 50):
                    xs = results[layers][idx]
                    ratio = (statistics.median(xs) / statistics.median(results[1][idx])
                             if layers == 50 else None)
                    rows.append((label, op, layers, statistics.median(xs), min(xs), max(xs), ratio))
    finally:
        unmount_all(work, linux.MNT_DETACH)
        remove_tree(work)
    print(f"snapshot prepare, {args.reps} rounds, {FILES_PER_LAYER} x {FILE_SIZE} B files "
          f"per layer, kernel {os.uname().release}, under {args.dir}")
    print(f"{'backend':22} {'operation':14} {'layers':>6} {'median ms':>10} {'min ms':>8} "
          f"{'max ms':>8} {'50/1':>6}")
    for label, op, layers, med, lo, hi, ratio in rows:
        print(f"{label:22} {op:14} {layers:>6} {med:>10.3f} {lo:>8.3f} {hi:>8.3f} "
              f"{'' if ratio is None else f'{ratio:.2f}':>6}")


if __name__ == "__main__":
    main()
