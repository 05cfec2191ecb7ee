"""``pyrunctl netns|network`` and ``pyrunctl run --net cni:NAME``: commands
checked with ``ip -j`` inside namespaces the tests make, containers
attached by Debian's CNI plugins run in a test-made "lab" namespace that
plays the host."""
import json
import os

import pytest

from network_helpers import host_untouched, ip_json, iptables_save, ns_root, wait_until  # noqa: F401
from pyrun.errdefs import NotFound
from pyrun.network import netns
from test_ctl_run import Ctl
from test_network_cni import Env, bridge_conf

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("host_untouched")]


@pytest.fixture
def ctl(tmp_path):
    return Ctl(tmp_path / "root", tmp_path / "state")


def fails(r, *words):
    assert r.returncode == 1 and all(w in r.stderr for w in words), r.stderr


def test_netns_link_addr_route_round_trip(ctl):
    name = f"pyrun-test-cli-{os.getpid()}"
    ctl("netns", "add", name)
    try:
        ns = netns.path(name)
        assert name in ctl("netns", "ls").stdout.split()
        ctl("network", "veth", "add", "va", "vb", "--netns", name, "--peer-netns", name)
        ctl("network", "bridge", "add", "br0", "--netns", ns)          # a path works too
        ctl("network", "bridge", "attach", "br0", "vb", "--netns", name)
        ctl("network", "link", "set", "va", "--up", "--mtu", "1400", "--mac", "02:00:00:00:00:01",
            "--netns", name)
        ctl("network", "link", "set", "vb", "--name", "vc", "--up", "--netns", name)
        ctl("network", "link", "set", "br0", "--up", "--netns", name)
        ctl("network", "addr", "add", "10.7.0.1/24", "--dev", "va", "--netns", name)
        ctl("network", "route", "add", "10.8.0.0/16", "--via", "10.7.0.2", "--netns", name)
        ctl("network", "route", "add", "default", "--via", "10.7.0.254", "--dev", "va",
            "--netns", name)
        link = {l["ifname"]: l for l in ip_json(ns, "link")}
        assert link["va"]["mtu"] == 1400 and link["va"]["address"] == "02:00:00:00:00:01"
        assert "UP" in link["va"]["flags"] and "UP" in link["vc"]["flags"]
        assert link["vc"]["master"] == "br0" and "vb" not in link
        addr = ip_json(ns, "addr", "show", "dev", "va")[0]["addr_info"]
        assert {"local": "10.7.0.1", "prefixlen": 24}.items() <= addr[0].items()
        routes = {r["dst"]: r for r in ip_json(ns, "route")}
        assert routes["10.8.0.0/16"]["gateway"] == "10.7.0.2"
        assert routes["default"]["gateway"] == "10.7.0.254"
        out = ctl("network", "link", "ls", "--netns", name).stdout
        assert "vc" in out and "br0" in out and "1400" in out
        assert "10.8.0.0/16" in ctl("network", "route", "ls", "--netns", name).stdout
        assert "10.7.0.1/24" in ctl("network", "addr", "ls", "--netns", name).stdout
        ctl("network", "route", "rm", "default", "--netns", name)
        ctl("network", "route", "rm", "10.8.0.0/16", "--via", "10.7.0.2", "--netns", name)
        ctl("network", "addr", "rm", "10.7.0.1/24", "--dev", "va", "--netns", name)
        ctl("network", "bridge", "detach", "vc", "--netns", name)
        assert [r for r in ip_json(ns, "route") if r["dst"] != "fe80::/64"] == []
        assert ip_json(ns, "-4", "addr", "show", "dev", "va") == []
        assert "master" not in {l["ifname"]: l for l in ip_json(ns, "link")}["vc"]
        ctl("network", "link", "rm", "--netns", name, "va", "br0")  # flags before the list
        assert {l["ifname"] for l in ip_json(ns, "link")} == {"lo"}
    finally:
        ctl("netns", "rm", name)
    assert name not in ctl("netns", "ls").stdout.split()


def test_bad_input(ctl):
    name = f"pyrun-test-cli-bad-{os.getpid()}"
    fails(ctl("network", "link", "ls", "--netns", "pyrun-no-such", check=False),
          "'pyrun-no-such' not found")
    fails(ctl("netns", "rm", "pyrun-no-such", check=False), "not found")
    fails(ctl("netns", "add", "a/b", check=False), "invalid network namespace name")
    ctl("netns", "add", name)
    try:
        fails(ctl("netns", "add", name, check=False), "already exists")
        ns = netns.path(name)
        # The peer's namespace is unknown: nothing is made.
        fails(ctl("network", "veth", "add", "va", "vb", "--netns", name, "--peer-netns",
                  "pyrun-no-such", check=False), "not found")
        ctl("network", "veth", "add", "va", "vb", "--netns", name, "--peer-netns", name)
        fails(ctl("network", "addr", "add", "10.7.0.300/24", "--dev", "va", "--netns", name,
                  check=False), "invalid CIDR '10.7.0.300/24'")
        fails(ctl("network", "addr", "add", "10.7.0.1", "--dev", "va", "--netns", name,
                  check=False), "invalid CIDR")
        fails(ctl("network", "addr", "add", "10.7.0.1/24", "--netns", name, check=False),
              "--dev NAME is required")
        fails(ctl("network", "route", "add", "10.8.0.0/16", "--via", "nope", "--netns", name,
                  check=False), "invalid gateway")
        # A bad value later in the list changes nothing before it.
        fails(ctl("network", "link", "set", "va", "--mtu", "1400", "--mac", "01:00:00:00:00:01",
                  "--netns", name, check=False), "multicast")
        fails(ctl("network", "link", "set", "nosuch", "--mtu", "1400", "--netns", name,
                  check=False), "nosuch")
        link = {l["ifname"]: l for l in ip_json(ns, "link")}
        assert set(link) == {"lo", "va", "vb"} and link["va"]["mtu"] == 1500
        assert ip_json(ns, "-4", "addr", "show", "dev", "va") == []
    finally:
        ctl("netns", "rm", name)


# ---- run --net cni:NAME ----

@pytest.fixture
def lab(ns_root, tmp_path):
    """A "host" namespace for the plugins, a conf dir with the network
    "testnet", and pyrunctl with the flags to use both; warmed up so that
    what the bridge plugin keeps by design (bridge, shared chains) is
    there before the snapshot."""
    env = Env(ns_root, str(tmp_path / "cni"))
    confdir = tmp_path / "net.d"
    confdir.mkdir()
    conf = bridge_conf(env.data, name="testnet")
    (confdir / "10-testnet.conflist").write_text(json.dumps(conf))
    env.warm_up(conf)
    env.ctl_flags = ("--cni-conf-dir", str(confdir), "--cni-host-netns", env.host)
    env.confdir = confdir
    return env


def test_run_on_a_cni_network(ctl, lab, busybox_rootfs):
    c = lambda *a, **kw: ctl(*lab.ctl_flags, *a, **kw)  # noqa: E731
    c("images", "from-dir", busybox_rootfs, "busybox")
    before = lab.state()[0], lab.reservations("testnet")
    c("run", "-d", "--net", "cni:testnet", "busybox", "c1", "sleep", "100")
    c("run", "-d", "--net", "cni:testnet", "busybox", "c2", "sleep", "100")
    try:
        ips = []
        for cid in ("c1", "c2"):
            ext = json.loads(c("containers", "info", cid).stdout)["Extensions"]["pyrun.cni"]
            assert ext["network"] == "testnet" and ext["conflist"]["name"] == "testnet"
            ip = ext["result"]["ips"][0]["address"]
            assert ip.startswith("10.99.0.")
            out = c("tasks", "exec", "--exec-id", "ip", cid, "ip", "-o", "-4", "addr", "show", "eth0").stdout
            assert f"inet {ip}" in out
            ips.append(ip.split("/")[0])
        assert len(lab.reservations("testnet")) == 2
        c("tasks", "exec", "--exec-id", "p", "c1", "ping", "-c", "1", "-W", "5", ips[1])
        c("tasks", "exec", "--exec-id", "p", "c2", "ping", "-c", "1", "-W", "5", ips[0])
        # A dead container is detached too.
        c("tasks", "kill", "-s", "KILL", "c2")
        c("tasks", "wait", "c2", check=False)
    finally:
        c("containers", "rm", "--force", "c1", "c2")
    # Foreground, --rm: attached while it runs, detached at the end.
    out = c("run", "--rm", "--net", "cni:testnet", "busybox", "c3", "ip", "-o", "-4", "addr",
            "show", "eth0").stdout
    assert "inet 10.99.0." in out
    wait_until(lambda: (lab.state()[0], lab.reservations("testnet")) == before)
    assert os.listdir(os.path.join(ctl.root, "cni", "results")) == []


def test_run_cni_bad_input(ctl, lab, busybox_rootfs):
    c = lambda *a, **kw: ctl(*lab.ctl_flags, *a, **kw)  # noqa: E731
    c("images", "from-dir", busybox_rootfs, "busybox")
    before = lab.state()[0]
    fails(c("run", "--net", "cni:nope", "busybox", "x", "true", check=False),
          "CNI network 'nope'", str(lab.confdir))
    fails(c("run", "--net", "cni:", "busybox", "x", "true", check=False), "want cni:<network>")
    (lab.confdir / "20-broken.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "broken", "plugins": [{"type": "pyrun-no-such-plugin"}]}))
    fails(c("run", "--net", "cni:broken", "busybox", "x", "true", check=False),
          "'pyrun-no-such-plugin' not found")
    fails(c("--cni-host-netns", "pyrun-no-such", "run", "--net", "cni:testnet", "busybox", "x",
            "true", check=False), "not found")
    assert c("containers", "ls", "-q").stdout.split() == []
    assert c("snapshots", "ls").stdout.count("active") == 0
    assert lab.state()[0] == before


def test_find_conflist_order(tmp_path):
    from pyrun.runtime.cninet import find_conflist
    conf = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}
    (tmp_path / "a.json").write_text(json.dumps({**conf, "plugins": [{"type": "ptp"}]}))
    (tmp_path / "b.conflist").write_text(json.dumps(conf))
    (tmp_path / "0.conflist").write_text("{not json")      # skipped
    (tmp_path / "c.conf").write_text(json.dumps({"cniVersion": "1.0.0", "name": "single",
                                                 "type": "loopback"}))
    assert find_conflist(str(tmp_path), "n").plugins == ({"type": "bridge"},)
    assert find_conflist(str(tmp_path), "single").plugins == ({"type": "loopback"},)
    with pytest.raises(NotFound, match="no conflist"):
        find_conflist(str(tmp_path / "nowhere"), "n")
