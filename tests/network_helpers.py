"""Shared pieces of the network tests: namespaces of our own under a temp
root, commands run inside them, and the host-safety snapshot."""
import json
import os
import re
import subprocess
import tempfile
import time

import pytest

from pyrun import linux
from pyrun.fsutil import remove_tree
from pyrun.network import netns


def run_in_ns(ns, argv, check=True):
    """Run ``argv`` with its network namespace set to ``ns`` (a path), by a
    thread inside it (nothing else of the process changes)."""
    proc = netns.run_in(ns, subprocess.run, argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} in {ns}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def ip_json(ns, *args):
    """``ip -j ARGS`` inside ``ns`` (or on the host for None), parsed."""
    argv = ["ip", "-j", *args]
    out = run_in_ns(ns, argv).stdout if ns else subprocess.run(argv, capture_output=True,
                                                                text=True, check=True).stdout
    return json.loads(out or "[]")


def iptables_save(ns=None):
    """``iptables-save`` (IPv4 and IPv6) without comments and counters."""
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        text = run_in_ns(ns, [tool]).stdout if ns else \
            subprocess.run([tool], capture_output=True, text=True, check=True).stdout
        out += [re.sub(r" \[\d+:\d+\]$", "", line) for line in text.splitlines()
                if not line.startswith("#")]
    return out


# Kernel-managed, time-dependent state is left out: address lifetimes and
# DAD flags, a route's linkdown flag (carrier), and a bridge's MAC (it
# follows its ports).
_VOLATILE = ("valid_life_time", "preferred_life_time", "tentative", "optimistic", "dadfailed")


def _addrs(ns):
    keep = []
    for link in ip_json(ns, "addr"):
        infos = [{k: v for k, v in a.items() if k not in _VOLATILE}
                 for a in link.get("addr_info", [])]
        keep.append((link["ifname"], link["mtu"], json.dumps(infos, sort_keys=True)))
    return keep


def _routes(ns, *args):
    return [{k: v for k, v in r.items() if k != "flags"} for r in ip_json(ns, *args, "route")]


def snapshot(ns=None):
    """Links with their addresses, routes and iptables rules of ``ns``
    (None: the host)."""
    return {"addr": _addrs(ns), "route": _routes(ns), "route6": _routes(ns, "-6"),
            "iptables": iptables_save(ns)}


def wait_until(cond, timeout=10.0):
    """Poll ``cond`` until true: the kernel tears a namespace down in a
    work queue after its last reference goes, not within the unmount."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"still not true after {timeout} s: {cond}")
        time.sleep(0.02)


def nsfs_mounts(under=""):
    """Namespace pins in this mount namespace (below ``under``: other test
    sessions on the machine pin their own)."""
    with open("/proc/self/mountinfo") as f:
        return sorted(p for p in (line.split()[4] for line in f if " nsfs " in line)
                      if p.startswith(under))


@pytest.fixture(scope="session")
def host_untouched():
    """Fails the session if the host's addresses, routes or iptables rules
    differ at the end from the start."""
    before = snapshot()
    yield
    assert snapshot() == before, "the tests changed the host's network configuration"


@pytest.fixture
def ns_root():
    """A root directory for named namespaces; at the end every namespace
    left in it is deleted and its shared mount undone.  It lives in /run,
    not in pytest's temp dir: other pytest sessions on the machine detach
    every mount below /tmp/pytest-of-root when they start (conftest.py)."""
    root = tempfile.mkdtemp(prefix="pyrun-test-netns-", dir="/run")
    yield root
    for name in netns.list_names(root):
        netns.delete(name, root)
    if os.path.isdir(root):
        for entry in os.listdir(root):  # stale files of failed tests
            try:
                linux.umount2(os.path.join(root, entry), linux.MNT_DETACH)
            except OSError:
                pass
        try:
            linux.umount2(root, linux.MNT_DETACH)
        except OSError:
            pass
        remove_tree(root)
