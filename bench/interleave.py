"""Shared by the bench scripts: the check that they can run here, and
the timing (every variant in turn, round-robin, so that all share the
machine's noise)."""
import os
import shutil
import sys
import time


def require(tag, tools=(), root=True):
    """Exit, naming what is missing, unless we are root (``root``) and
    every one of ``tools`` is on PATH (scripts/setup installs them)."""
    if root and os.geteuid() != 0:
        sys.exit(f"{tag}: needs root")
    for tool in tools:
        if shutil.which(tool) is None:
            sys.exit(f"{tag}: {tool} is not installed (bash scripts/setup installs it)")


def time_interleaved(runners, reps, tag):
    """``runners``: {name: callable(container_id) -> exit status}.  One
    warm-up each (page cache, .pyc files), then ``reps`` rounds in a
    rotating order.  Returns {name: [ms]}; exits naming the variant and
    run that failed.  ``tag`` prefixes the messages."""
    names = list(runners)
    times = {name: [] for name in names}
    for name in names:
        if runners[name]("warmup") != 0:
            sys.exit(f"{tag}: {name} failed to run /bin/true")
    for i in range(reps):
        # Rotate the order so that no variant always follows the same one.
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            status = runners[name](f"bench-{i}")
            times[name].append((time.perf_counter() - t0) * 1000)
            if status != 0:
                sys.exit(f"{tag}: {name} exited {status} on run {i}")
    return times
