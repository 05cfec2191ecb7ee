"""Cost of wiring one container's network, pyrun.network against iproute2.

One cycle: create a named network namespace, a veth pair whose peer is
born in it as ``eth0``, add ``10.0.0.2/24`` to it, bring it up, delete the
namespace.  Three ways:

- ``pyrun``: pyrun.network (one rtnetlink socket per call, made by a
  thread inside the namespace), namespaces under a temp root;
- ``pyroute2-netns``: pyroute2's own ``IPRoute(netns=...)``, which forks a
  helper process to make each socket inside the namespace;
- ``iproute2`` (the peer): ``ip netns add``, ``ip link add ... netns``,
  ``ip -n`` twice, ``ip netns del`` -- five processes.

Everything runs inside a scratch namespace standing in for the host (the
veth host ends land there); iproute2 pins its namespaces in /run/netns
under names ``pyrun-bench-<pid>-<n>`` and deletes them.  Times are
milliseconds per cycle; the ratio is the median over iproute2's median
from the same run (below 1.0 = faster than iproute2).

Rerun:  .venv/bin/python bench/netns_veth.py [--runs 30]   (as root, from
the repository root)
"""
import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyroute2 import IPRoute  # noqa: E402

from pyrun import linux  # noqa: E402
from pyrun.fsutil import mount_points  # noqa: E402
from pyrun.network import address, links, netns  # noqa: E402


def cycle_pyrun(root, n):
    c = netns.create(f"c{n}", root)
    links.add_veth(f"v{n}", "eth0", peer_netns=c)
    address.add_address("eth0", "10.0.0.2/24", netns=c)
    links.set_up("eth0", netns=c)
    netns.delete(f"c{n}", root)


def cycle_pyroute2(root, n):
    c = netns.create(f"p{n}", root)
    with IPRoute() as ipr:
        fd = os.open(c, os.O_RDONLY)
        try:
            ipr.link("add", ifname=f"v{n}", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
        finally:
            os.close(fd)
    with IPRoute(netns=c) as ipr:
        i = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=i, address="10.0.0.2", prefixlen=24)
    with IPRoute(netns=c) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], state="up")
    netns.delete(f"p{n}", root)


def cycle_iproute2(root, n):
    name = f"pyrun-bench-{os.getpid()}-{n}"
    for argv in (["ip", "netns", "add", name],
                 ["ip", "link", "add", f"v{n}", "type", "veth", "peer", "name", "eth0", "netns", name],
                 ["ip", "-n", name, "addr", "add", "10.0.0.2/24", "dev", "eth0"],
                 ["ip", "-n", name, "link", "set", "eth0", "up"],
                 ["ip", "netns", "del", name]):
        subprocess.run(argv, check=True)


_serial = itertools.count()


def measure(fn, root, runs):
    # Fresh names every cycle: a deleted namespace takes its veth host end
    # along a moment later, in the kernel's cleanup work.
    times = []
    for _ in range(runs):
        n = next(_serial)
        t = time.perf_counter()
        fn(root, n)
        times.append((time.perf_counter() - t) * 1000)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    had_run_netns = "/run/netns" in mount_points()
    had_dir = os.path.exists("/run/netns")
    root = tempfile.mkdtemp(prefix="pyrun-bench-netns-", dir="/run")
    ways = {"pyrun": cycle_pyrun, "pyroute2-netns": cycle_pyroute2, "iproute2": cycle_iproute2}
    results = {}
    try:
        with netns.scratch() as host:
            for name, fn in ways.items():
                netns.run_in(host, measure, fn, root, 2)  # warm up
                results[name] = netns.run_in(host, measure, fn, root, args.runs)
    finally:
        for name in netns.list_names(root):
            netns.delete(name, root)
        if root in mount_points():  # the last netns.delete normally undoes it
            linux.umount2(root, linux.MNT_DETACH)
        os.rmdir(root)
        if not had_run_netns and "/run/netns" in mount_points() and not os.listdir("/run/netns"):
            # ip netns leaves /run/netns bound on itself; undo what we caused.
            linux.umount2("/run/netns", linux.MNT_DETACH)
        if not had_dir and os.path.isdir("/run/netns") and not os.listdir("/run/netns"):
            os.rmdir("/run/netns")
    peer = statistics.median(results["iproute2"])
    print(f"one container network (netns + veth + address + up + delete), {args.runs} runs, ms")
    print(f"{'way':16} {'median':>8} {'min':>8} {'max':>8} {'ratio':>6}")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:16} {med:8.2f} {min(times):8.2f} {max(times):8.2f} {med / peer:6.2f}")


if __name__ == "__main__":
    main()
