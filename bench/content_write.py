"""Content store write throughput against dd(1) on the same disk.

Each run writes the same random bytes (read from a source file in the page
cache) three ways, into a fresh directory on the disk under test:

- ``dd``: ``dd if=SRC of=DST bs=1M conv=fsync`` (the peer: plain copy +
  fsync, no hashing);
- ``ContentStore``: ``write_blob`` into a local content store (copy,
  sha256, fsync, link into blobs/, fsync the directory);
- ``namespaced``: the same through ``pyrun.metadata`` (adds the SQLite
  transaction that records the blob for a tenant).

Times are wall-clock seconds per blob; the ratio is median time over dd's
median time from the same run (1.0 = as fast as dd).

Rerun:  /work/venv/bin/python bench/content_write.py [--size-mib 64]
        [--runs 7] [--dir /var/tmp]    (run from the repository root)
"""
import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyrun.content import ContentStore, write_blob  # noqa: E402
from pyrun.fsutil import remove_tree  # noqa: E402
from pyrun.metadata import DB  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--dir", default="/var/tmp", help="a directory on the disk under test")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="pyrun-bench-", dir=args.dir)
    try:
        src = os.path.join(work, "src")
        data = os.urandom(args.size_mib << 20)
        with open(src, "wb") as f:
            f.write(data)
        desc = {"digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}
        del data
        times = {"dd conv=fsync": [], "ContentStore": [], "namespaced": []}
        for run in range(args.runs):
            # Rotate the order so no method always runs right after another.
            order = list(times)[run % 3:] + list(times)[:run % 3]
            for method in order:
                dst = os.path.join(work, f"run{run}-{method.split()[0]}")
                os.sync()  # so one run's writeback does not slow the next
                t0 = time.perf_counter()
                if method.startswith("dd"):
                    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=fsync"],
                                   check=True, capture_output=True)
                elif method == "ContentStore":
                    with open(src, "rb") as f:
                        write_blob(ContentStore(dst), "bench", f, desc)
                else:
                    db = DB(dst)
                    with open(src, "rb") as f:
                        write_blob(db.content_store("bench"), "bench", f, desc)
                    db.close()
                times[method].append(time.perf_counter() - t0)
                remove_tree(dst)
        base = statistics.median(times["dd conv=fsync"])
        mib = args.size_mib
        print(f"content write of one {mib} MiB blob, {args.runs} runs, in {args.dir} "
              f"(seconds; MiB/s at the median)")
        print(f"{'method':<16}{'median':>9}{'min':>9}{'max':>9}{'MiB/s':>9}{'ratio':>8}")
        for method, ts in times.items():
            med = statistics.median(ts)
            print(f"{method:<16}{med:>9.3f}{min(ts):>9.3f}{max(ts):>9.3f}{mib / med:>9.0f}"
                  f"{med / base:>8.2f}")
        print("ratio = median time / dd's median time in this run.  Rerun: "
              "/work/venv/bin/python bench/content_write.py --size-mib N --runs N --dir DIR")
    finally:
        remove_tree(work)


if __name__ == "__main__":
    main()
