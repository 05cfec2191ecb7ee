"""CNI with Debian's containernetworking-plugins, run from inside a network
namespace that plays the host (the bridge plugin makes its bridge, iptables
chains and ip_forward there), plus unit tests of the protocol pieces."""
import json
import os

import pytest

from network_helpers import (host_untouched, ip_json, iptables_save, ns_root, run_in_ns,  # noqa: F401
                             snapshot, wait_until)
from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from pyrun.network import cni, links, netns, sysctl
from pyrun.network.cni import chain, config, invoke, result

SUBNET = "10.99.0.0/24"


def bridge_conf(data, name="pyrun-test", subnet=SUBNET, extra=()):
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": "cni-pyrun0", "isGateway": True, "ipMasq": True,
         "ipam": {"type": "host-local", "dataDir": os.path.join(data, "ipam"),
                  "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "firewall", "backend": "iptables"},
        *extra]}


class Env:
    def __init__(self, root, data):
        self.root = root
        self.data = data
        self.host = netns.create("host", root)
        links.loopback_up(self.host)
        self.kw = {"cache_dir": os.path.join(data, "cache"), "host_netns": self.host}

    def container(self, name):
        p = netns.create(name, self.root)
        links.loopback_up(p)
        return p

    def reservations(self, network="pyrun-test"):
        d = os.path.join(self.data, "ipam", network)
        return sorted(f for f in os.listdir(d) if f not in ("lock",) and not f.startswith("last_reserved"))\
            if os.path.isdir(d) else []

    def cached(self):
        d = os.path.join(self.data, "cache", "results")
        return os.listdir(d) if os.path.isdir(d) else []

    def state(self):
        """What an attachment may change in the host: links, addresses,
        routes, iptables, the IPAM store and the cache."""
        return snapshot(self.host), self.reservations(), self.cached()

    def warm_up(self, conf):
        # The bridge and the plugins' shared chains (CNI-FORWARD,
        # CNI-HOSTPORT-*) stay after a DEL by design; make them first.
        c = self.container("warm")
        cni.attach(conf, "warm", c, capability_args={"portMappings": [
            {"hostPort": 9999, "containerPort": 80, "protocol": "tcp"}]}, **self.kw)
        cni.detach(conf, "warm", c, **self.kw)
        netns.delete("warm", self.root)


@pytest.fixture
def env(ns_root, tmp_path):
    return Env(ns_root, str(tmp_path / "cni"))


def ping(ns, ip):
    run_in_ns(ns, ["busybox", "ping", "-c", "1", "-W", "5", ip])


root_only = pytest.mark.usefixtures("host_untouched")


@pytest.mark.root
@root_only
@pytest.mark.parametrize("plugin", ["bridge", "host-local", "loopback", "portmap", "firewall"])
def test_version(plugin):
    info = cni.version(plugin)
    assert "1.0.0" in info.supported_versions and info.cni_version == "1.0.0"


@pytest.mark.root
@root_only
def test_two_containers_on_a_bridge(env):
    conf = cni.parse(json.dumps(bridge_conf(env.data)))
    host_forward = sysctl.get("net.ipv4.ip_forward")
    env.warm_up(conf)
    before = env.state()
    c1, c2 = env.container("c1"), env.container("c2")
    r1 = cni.attach(conf, "c1", c1, **env.kw)
    r2 = cni.attach(conf, "c2", c2, capability_args={"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}, **env.kw)
    assert isinstance(r1, cni.Result) and r1.cni_version == "1.0.0"
    ip1, ip2 = (r.ips[0] for r in (r1, r2))
    assert ip1.gateway == "10.99.0.1" and ip1.address.startswith("10.99.0.") and ip1.address != ip2.address
    assert r1.interfaces[ip1.interface] == cni.Interface("eth0", r1.interfaces[ip1.interface].mac, c1)
    assert r1.routes == (cni.RouteConfig("0.0.0.0/0", None),)
    # As configured, seen from inside.
    addr = {f"{a['local']}/{a['prefixlen']}" for a in ip_json(c1, "addr", "show", "dev", "eth0")[0]["addr_info"]}
    assert ip1.address in addr
    assert {"dst": "default", "gateway": "10.99.0.1"}.items() <= ip_json(c1, "route")[0].items()
    assert "cni-pyrun0" in {l["ifname"] for l in ip_json(env.host, "link")}
    ping(c1, ip2.address.split("/")[0])
    ping(c2, ip1.address.split("/")[0])
    ping(c1, "10.99.0.1")
    rules = iptables_save(env.host)
    assert any("--to-destination " + ip2.address.split("/")[0] + ":80" in r for r in rules)
    assert any('id: \\"c1\\"' in r and "MASQUERADE" in r for r in rules)
    assert sysctl.get("net.ipv4.ip_forward", env.host) == "1"
    assert sysctl.get("net.ipv4.ip_forward") == host_forward
    cni.check(conf, "c1", c1, **env.kw)
    assert cni.cached_result("pyrun-test", "c2", cache_dir=env.kw["cache_dir"]) == r2
    cni.detach(conf, "c1", c1, **env.kw)
    cni.detach(conf, "c2", c2, **env.kw)
    assert env.state() == before
    assert {l["ifname"] for l in ip_json(c1, "link")} == {"lo"}


@pytest.mark.root
@root_only
def test_check_notices_a_missing_interface(env):
    conf = bridge_conf(env.data)
    c = env.container("c")
    cni.attach(conf, "c", c, **env.kw)
    links.delete("eth0", netns=c)
    with pytest.raises(FailedPrecondition, match="CNI plugin bridge CHECK"):
        cni.check(conf, "c", c, **env.kw)
    cni.detach(conf, "c", c, **env.kw)
    assert env.cached() == [] and env.reservations() == []


@pytest.mark.root
@root_only
def test_loopback_plugin(env):
    c = netns.create("c", env.root)
    conf = {"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "loopback"}]}
    res = cni.attach(conf, "c", c, ifname="lo", **env.kw)
    assert "UP" in ip_json(c, "link", "show", "dev", "lo")[0]["flags"]
    assert res.interfaces[0].name == "lo"
    cni.detach(conf, "c", c, ifname="lo", **env.kw)


@pytest.mark.root
@root_only
def test_detach_when_netns_is_gone(env):
    conf = bridge_conf(env.data)
    env.warm_up(conf)
    before = env.state()
    c = env.container("c")
    cni.attach(conf, "c", c, capability_args={"portMappings": [
        {"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}]}, **env.kw)
    netns.delete("c", env.root)
    # The host end of the veth goes with the namespace, a moment later.
    wait_until(lambda: len(ip_json(env.host, "link")) == len(before[0]["addr"]))
    cni.detach(conf, "c", c, **env.kw)
    assert env.state() == before
    cni.detach(conf, "c", c, **env.kw)  # again: nothing cached, nothing left, no error
    assert env.state() == before


@pytest.mark.root
@root_only
def test_cni_args_pick_the_address(env):
    c = env.container("c")
    res = cni.attach(bridge_conf(env.data), "c", c, args={"IgnoreUnknown": "1", "IP": "10.99.0.77"}, **env.kw)
    assert res.ips[0].address == "10.99.0.77/24"
    cni.detach(bridge_conf(env.data), "c", c, **env.kw)  # CNI_ARGS come from the cache
    assert env.reservations() == []


@pytest.mark.root
@root_only
def test_failed_add_is_undone(env):
    good = bridge_conf(env.data)
    env.warm_up(good)
    before = env.state()
    c = env.container("c")
    bad = bridge_conf(env.data, extra=[{"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such": "1"}}])
    with pytest.raises(FailedPrecondition, match="CNI plugin tuning ADD on network pyrun-test.*no_such"):
        cni.attach(bad, "c", c, **env.kw)
    assert env.state() == before
    assert {l["ifname"] for l in ip_json(c, "link")} == {"lo"}


@pytest.mark.root
@root_only
def test_bad_input(env):
    c = env.container("c")
    conf = bridge_conf(env.data)
    before = env.state()
    # A missing plugin is found before any plugin runs: not even the bridge is made.
    missing = bridge_conf(env.data, extra=[{"type": "no-such-plugin"}])
    with pytest.raises(NotFound, match="CNI plugin 'no-such-plugin' not found in /usr/lib/cni"):
        cni.attach(missing, "c", c, **env.kw)
    assert env.state() == before
    # The bridge plugin makes its bridge before it asks IPAM for an address
    # (and never deletes it): start from a host that has it.
    env.warm_up(conf)
    before = env.state()
    with pytest.raises(NotFound, match="network namespace .* not found"):
        cni.attach(conf, "c", os.path.join(env.root, "gone"), **env.kw)
    with pytest.raises(InvalidArgument, match="invalid CNI container id"):
        cni.attach(conf, "bad id", c, **env.kw)
    with pytest.raises(InvalidArgument, match="invalid interface name"):
        cni.attach(conf, "c", c, ifname="eth0/x", **env.kw)
    with pytest.raises(InvalidArgument, match="cniVersion '9.9.9'"):
        cni.attach({**conf, "cniVersion": "9.9.9"}, "c", c, **env.kw)
    with pytest.raises(FailedPrecondition, match=r"CNI plugin bridge ADD .*invalid CIDR address: 10\.99\.0\.0/33"):
        cni.attach(bridge_conf(env.data, subnet="10.99.0.0/33"), "c", c, **env.kw)
    assert env.state() == before
    assert {l["ifname"] for l in ip_json(c, "link")} == {"lo"}
    cni.attach(conf, "c", c, **env.kw)
    with pytest.raises(AlreadyExists, match="already attached"):
        cni.attach(conf, "c", c, **env.kw)
    cni.detach(conf, "c", c, **env.kw)


# Unit tests: no root, no plugins.

def test_parse_conflist_and_single_conf():
    conf = cni.parse(json.dumps(bridge_conf("/x")))
    assert conf.name == "pyrun-test" and [p["type"] for p in conf.plugins] == ["bridge", "portmap", "firewall"]
    assert conf.plugin_config(1) == {"type": "portmap", "capabilities": {"portMappings": True},
                                     "name": "pyrun-test", "cniVersion": "1.0.0"}
    single = cni.parse({"cniVersion": "0.4.0", "name": "n", "type": "bridge", "bridge": "b"})
    assert single.plugins == ({"type": "bridge", "bridge": "b"},) and single.cni_version == "0.4.0"
    for bad, text in [("{", "not JSON"), ("[]", "JSON object"),
                      ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "non-empty"),
                      ({"cniVersion": "1.0.0", "name": "-n", "plugins": [{"type": "x"}]}, "network name"),
                      ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}, "plugin type"),
                      ({"name": "n", "plugins": [{"type": "x"}]}, "cniVersion None")]:
        with pytest.raises(InvalidArgument, match=text):
            cni.parse(bad)


def test_parse_result():
    doc = {"cniVersion": "1.0.0",
           "interfaces": [{"name": "br0", "mac": "aa:bb:cc:dd:ee:ff"},
                          {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/c"}],
           "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 1},
                   {"address": "fd00::5/64"}],
           "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
           "dns": {"nameservers": ["10.1.0.1"], "search": ["example.org"]},
           "extra": "kept"}
    r = result.parse(json.dumps(doc))
    assert r.ips[0] == cni.IPConfig("10.1.0.5/16", "10.1.0.1", 1)
    assert r.ips[1] == cni.IPConfig("fd00::5/64", None, None)
    assert r.routes[0] == cni.RouteConfig("0.0.0.0/0", "10.1.0.1")
    assert r.dns.nameservers == ("10.1.0.1",) and r.dns.search == ("example.org",)
    assert r.container_ips() == ["10.1.0.5/16"] and r.raw["extra"] == "kept"
    for bad, text in [({"ips": [{"address": "10.1.0.500/16"}]}, r"ips\[0\].address"),
                      ({"ips": [{"address": "10.1.0.5"}]}, "address/prefixlen"),
                      ({"ips": [{"address": "10.1.0.5/16", "interface": 3}]}, "interface"),
                      ({"routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}, "gw"),
                      ({"interfaces": [{}]}, "interfaces")]:
        with pytest.raises(InvalidArgument, match=text):
            result.parse(bad)


def test_environment_and_args():
    env = invoke.environment("ADD", "c1", "/run/netns/c1", "eth0", {"IgnoreUnknown": 1, "IP": "10.0.0.9"},
                             ["/usr/lib/cni", "/opt/cni/bin"])
    assert env == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/c1",
                   "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;IP=10.0.0.9",
                   "CNI_PATH": "/usr/lib/cni:/opt/cni/bin"}
    with pytest.raises(InvalidArgument, match="CNI_ARGS"):
        invoke.format_args({"A;B": "1"})


def test_plugin_stdin_runtime_config_and_prev_result():
    conf = cni.parse(bridge_conf("/x"))
    prev = {"cniVersion": "1.0.0", "ips": []}
    doc = chain._stdin(conf, 1, prev, {"portMappings": [{"hostPort": 1}], "bandwidth": {}})
    assert doc["prevResult"] == prev and doc["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    assert "runtimeConfig" not in chain._stdin(conf, 0, None, {"portMappings": []})


def test_plugin_errors_by_code():
    def err(code):
        return invoke.plugin_error("bridge", "ADD", "n", json.dumps(
            {"cniVersion": "1.0.0", "code": code, "msg": "boom", "details": "more"}).encode(), b"", 1)
    assert isinstance(err(7), InvalidArgument) and "code 7: Invalid network config" in str(err(7))
    assert isinstance(err(3), NotFound) and isinstance(err(11), Unavailable)
    e = err(999)
    assert isinstance(e, FailedPrecondition) and e.cni_code == 999 and "boom: more" in str(e)
    plain = invoke.plugin_error("bridge", "DEL", "n", b"", b"panic: x\n", 2)
    assert isinstance(plain, FailedPrecondition) and "panic: x" in str(plain)


def test_find_plugin(tmp_path):
    with pytest.raises(NotFound, match=f"in {tmp_path}:/nope"):
        config.find_plugin("bridge", [str(tmp_path), "/nope"])
