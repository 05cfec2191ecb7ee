"""Network namespaces, links, addresses, routes and sysctls, checked with
iproute2 (``ip -j``) inside namespaces the tests create themselves.  The
host's addresses, routes and iptables rules are compared before and after."""
import os

import pytest

from network_helpers import host_untouched, ip_json, ns_root, nsfs_mounts, run_in_ns, wait_until  # noqa: F401
from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyrun.network import address, links, netns, route, sysctl

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("host_untouched")]


def names(ns):
    return sorted(l["ifname"] for l in ip_json(ns, "link"))


def link(ns, ifname):
    return ip_json(ns, "link", "show", "dev", ifname)[0]


def test_create_list_delete(ns_root):
    p = netns.create("a", ns_root)
    assert p == os.path.join(ns_root, "a") and p in nsfs_mounts()
    assert netns.list_names(ns_root) == ["a"]
    assert names(p) == ["lo"]
    netns.delete("a", ns_root)
    assert not os.path.exists(p) and p not in nsfs_mounts()
    assert netns.list_names(ns_root) == []


def test_namespace_errors(ns_root):
    netns.create("a", ns_root)
    before = nsfs_mounts(str(ns_root))
    with pytest.raises(AlreadyExists, match="'a' already exists"):
        netns.create("a", ns_root)
    for bad in ("", ".", "..", "x/y", "n" * 256):
        with pytest.raises(InvalidArgument):
            netns.create(bad, ns_root)
    with pytest.raises(NotFound):
        netns.delete("nope", ns_root)
    with pytest.raises(NotFound, match="not found"):
        links.list_links(os.path.join(ns_root, "nope"))
    with pytest.raises(NotFound, match="not a namespace"):
        netns.open_fd(__file__)
    assert nsfs_mounts(str(ns_root)) == before and os.listdir(ns_root) == ["a"]


def test_entered_and_run_in(ns_root):
    p = netns.create("a", ns_root)
    own = os.stat("/proc/thread-self/ns/net").st_ino
    with netns.entered(p):
        assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat(p).st_ino
    assert os.stat("/proc/thread-self/ns/net").st_ino == own
    assert netns.run_in(p, lambda: os.stat("/proc/thread-self/ns/net").st_ino) == os.stat(p).st_ino
    with netns.scratch() as s:
        assert names(s) == ["lo"]


def test_veth_into_container_renamed(ns_root):
    host = netns.create("host", ns_root)
    c = netns.create("c", ns_root)
    links.add_veth("vc0", "eth0", netns=host, peer_netns=c, mtu=1400)
    assert names(c) == ["eth0", "lo"] and "vc0" in names(host)
    inside = link(c, "eth0")
    assert inside["mtu"] == 1400 and inside["link_type"] == "ether"
    # One end moved later, renamed on the way.
    links.add_veth("va", "vb", netns=host)
    links.move("vb", c, netns=host, new_name="eth1")
    assert names(c) == ["eth0", "eth1", "lo"] and "vb" not in names(host)
    # Deleting the container's namespace takes the host end with it.
    netns.delete("c", ns_root)
    wait_until(lambda: names(host) == ["lo"])


def test_bridge_two_containers_ping(ns_root):
    host = netns.create("host", ns_root)
    links.add_bridge("br0", netns=host)
    address.add_address("br0", "10.77.0.1/24", netns=host)
    links.set_up("br0", netns=host)
    for i in (1, 2):
        c = netns.create(f"c{i}", ns_root)
        links.loopback_up(c)
        links.add_veth(f"veth{i}", "eth0", netns=host, peer_netns=c)
        links.attach_port("br0", f"veth{i}", netns=host)
        links.set_up(f"veth{i}", netns=host)
        address.add_address("eth0", f"10.77.0.{10 + i}/24", netns=c)
        links.set_up("eth0", netns=c)
        route.add_default_route("10.77.0.1", netns=c)
    c1, c2 = (netns.path(n, ns_root) for n in ("c1", "c2"))
    assert link(host, "veth1")["master"] == "br0"
    assert links.get("veth2", host).master == "br0"
    run_in_ns(c1, ["busybox", "ping", "-c", "1", "-W", "5", "10.77.0.12"])
    run_in_ns(c2, ["busybox", "ping", "-c", "1", "-W", "5", "10.77.0.11"])
    run_in_ns(c1, ["busybox", "ping", "-c", "1", "-W", "5", "127.0.0.1"])
    links.detach_port("veth2", netns=host)
    assert "master" not in link(host, "veth2")
    assert run_in_ns(c1, ["busybox", "ping", "-c", "1", "-W", "1", "10.77.0.12"], check=False).returncode != 0


def test_modify_seen_inside(ns_root):
    c = netns.create("c", ns_root)
    links.add_veth("eth0", "peer0", netns=c)
    links.set_mtu("eth0", 9000, netns=c)
    links.set_mac("eth0", "02:42:ac:11:00:02", netns=c)
    links.rename("eth0", "net0", netns=c)
    links.set_up("net0", netns=c)
    got = link(c, "net0")
    assert got["mtu"] == 9000 and got["address"] == "02:42:ac:11:00:02" and "UP" in got["flags"]
    links.set_down("net0", netns=c)
    assert "UP" not in link(c, "net0")["flags"]
    assert links.get("net0", c).mtu == 9000


def test_addresses_and_routes(ns_root):
    c = netns.create("c", ns_root)
    links.add_veth("eth0", "peer0", netns=c)
    links.set_up("peer0", netns=c)
    links.set_up("eth0", netns=c)
    address.add_address("eth0", "10.5.0.2/24", netns=c)
    address.add_address("eth0", "fd00:5::2/64", netns=c)
    got = {(a["local"], a["prefixlen"]) for a in ip_json(c, "addr", "show", "dev", "eth0")[0]["addr_info"]}
    assert {("10.5.0.2", 24), ("fd00:5::2", 64)} <= got
    route.add_default_route("10.5.0.1", netns=c)
    route.add_route("10.6.0.0/16", via="10.5.0.254", metric=50, netns=c)
    route.add_default_route("fd00:5::1", dev="eth0", netns=c)
    v4 = {(r["dst"], r.get("gateway")) for r in ip_json(c, "route")}
    assert {("default", "10.5.0.1"), ("10.6.0.0/16", "10.5.0.254")} <= v4
    assert ("default", "fd00:5::1") in {(r["dst"], r.get("gateway")) for r in ip_json(c, "-6", "route")}
    ours = route.list_routes(c, family=4)
    assert route.Route("10.6.0.0/16", "10.5.0.254", "eth0", 50, 4) in ours
    route.remove_default_route(netns=c)
    route.remove_route("10.6.0.0/16", via="10.5.0.254", metric=50, netns=c)
    route.remove_default_route(via="fd00:5::1", netns=c)
    assert [r["dst"] for r in ip_json(c, "route")] == ["10.5.0.0/24"]
    assert "default" not in [r["dst"] for r in ip_json(c, "-6", "route")]
    address.remove_address("eth0", "10.5.0.2/24", netns=c)
    assert [a.cidr for a in address.list_addresses("eth0", c, family=4)] == []
    with pytest.raises(NotFound):
        address.remove_address("eth0", "10.5.0.2/24", netns=c)
    with pytest.raises(NotFound):
        route.remove_default_route(netns=c)


def test_macvlan_vlan_ipvlan_into_container(ns_root):
    host = netns.create("host", ns_root)
    c = netns.create("c", ns_root)
    links.add_veth("up0", "up1", netns=host)
    links.add_macvlan("eth0", "up0", mode="bridge", netns=host, into=c)
    assert link(c, "eth0")["link_type"] == "ether" and names(host) == ["lo", "up0", "up1"]
    for make in (lambda: links.add_vlan("eth1", "up0", 100, netns=host, into=c),
                 lambda: links.add_ipvlan("eth2", "up0", "l3", netns=host, into=c)):
        try:
            make()
        except FailedPrecondition as e:  # the kernel may lack the driver
            assert "this kernel has no" in str(e)
    for n in ("eth1", "eth2"):
        if n in names(c):
            links.delete(n, netns=c)
    assert names(c) == ["eth0", "lo"] and names(host) == ["lo", "up0", "up1"]
    links.delete("eth0", netns=c)
    links.delete("up0", netns=host)
    assert names(c) == ["lo"] and names(host) == ["lo"]


def test_sysctl_inside_only(ns_root):
    c = netns.create("c", ns_root)
    host_value = sysctl.get("net.ipv4.ip_forward")
    sysctl.set("net.ipv4.ip_forward", 1 - int(host_value), netns=c)
    assert sysctl.get("net.ipv4.ip_forward", netns=c) == str(1 - int(host_value))
    assert run_in_ns(c, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == str(1 - int(host_value))
    assert sysctl.get("net.ipv4.ip_forward") == host_value
    links.add_veth("eth0.7", "p", netns=c)
    sysctl.set("net/ipv6/conf/eth0.7/disable_ipv6", 1, netns=c)
    assert sysctl.get("net/ipv6/conf/eth0.7/disable_ipv6", netns=c) == "1"
    for bad in ("kernel.hostname", "net..x", "net/../../kernel/hostname", "net"):
        with pytest.raises(InvalidArgument):
            sysctl.set(bad, "x", netns=c)
    with pytest.raises(NotFound):
        sysctl.get("net.ipv4.nope", netns=c)
    with pytest.raises(InvalidArgument):
        sysctl.set("net.ipv4.ip_forward", "banana", netns=c)


def test_bad_input_leaves_nothing(ns_root):
    host = netns.create("host", ns_root)
    c = netns.create("c", ns_root)
    links.add_bridge("br0", netns=host)
    links.add_veth("v0", "eth0", netns=host, peer_netns=c)
    before = (names(host), names(c), ip_json(host, "addr"), ip_json(c, "addr"))
    cases = [
        (AlreadyExists, "'br0' already exists", lambda: links.add_bridge("br0", netns=host)),
        (AlreadyExists, "'eth0' already exists", lambda: links.add_veth("v9", "eth0", netns=host, peer_netns=c)),
        (AlreadyExists, "'v0' already exists", lambda: links.add_veth("v0", "x", netns=host, peer_netns=c)),
        (AlreadyExists, "'eth0' already exists", lambda: links.move("br0", c, netns=host, new_name="eth0")),
        (AlreadyExists, "'br0' already exists", lambda: links.rename("v0", "br0", netns=host)),
        (NotFound, "no interface 'nope'", lambda: links.set_up("nope", netns=host)),
        (NotFound, "not found", lambda: links.add_bridge("b1", netns=os.path.join(ns_root, "gone"))),
        (NotFound, "not found", lambda: links.add_veth("v5", "eth5", netns=host,
                                                       peer_netns=os.path.join(ns_root, "gone"))),
        (InvalidArgument, "invalid interface name", lambda: links.add_bridge("a-name-far-too-long", netns=host)),
        (InvalidArgument, "invalid interface name", lambda: links.add_bridge("a/b", netns=host)),
        (InvalidArgument, "invalid MTU", lambda: links.set_mtu("v0", 10, netns=host)),
        (InvalidArgument, "invalid MTU", lambda: links.set_mtu("lo", 70000, netns=c)),
        (InvalidArgument, "invalid MAC", lambda: links.set_mac("v0", "zz:00:00:00:00:00", netns=host)),
        (InvalidArgument, "multicast", lambda: links.set_mac("v0", "01:00:00:00:00:00", netns=host)),
        (InvalidArgument, "invalid CIDR", lambda: address.add_address("v0", "10.0.0.300/24", netns=host)),
        (InvalidArgument, "invalid CIDR", lambda: address.add_address("v0", "10.0.0.3/33", netns=host)),
        (InvalidArgument, "invalid CIDR", lambda: address.add_address("v0", "10.0.0.3", netns=host)),
        (InvalidArgument, "invalid route destination", lambda: route.add_route("10.0.0.1/8", dev="v0", netns=host)),
        (InvalidArgument, "invalid gateway", lambda: route.add_default_route("10.0.0.x", netns=host)),
        (InvalidArgument, "IPv6", lambda: route.add_route("10.0.0.0/8", via="fd00::1", netns=host)),
        (InvalidArgument, "ENETUNREACH", lambda: route.add_default_route("10.123.0.1", netns=host)),
        (InvalidArgument, "invalid mode", lambda: links.add_macvlan("m0", "v0", mode="weird", netns=host)),
        (InvalidArgument, "invalid VLAN id", lambda: links.add_vlan("v0.5000", "v0", 5000, netns=host)),
        (InvalidArgument, "is not a bridge", lambda: links.attach_port("v0", "br0", netns=host)),
    ]
    for kind, text, call in cases:
        with pytest.raises(kind, match=text):
            call()
    assert (names(host), names(c), ip_json(host, "addr"), ip_json(c, "addr")) == before
    assert sorted(os.listdir(ns_root)) == ["c", "host"]


def test_100_cycles_leak_nothing(ns_root):
    host = netns.create("host", ns_root)
    mounts = nsfs_mounts(str(ns_root))
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(100):
        c = netns.create("c", ns_root)
        links.add_veth("v0", "eth0", netns=host, peer_netns=c)
        address.add_address("eth0", "10.9.0.2/24", netns=c)
        links.set_up("eth0", netns=c)
        links.delete("v0", netns=host)
        netns.delete("c", ns_root)
    assert nsfs_mounts(str(ns_root)) == mounts
    assert names(host) == ["lo"] and os.listdir(ns_root) == ["host"]
    assert len(os.listdir("/proc/self/fd")) == fds


def test_last_delete_leaves_no_mount(ns_root):
    """The root's shared self-bind is undone with the last namespace (it
    stayed mounted once: /run/pyrun/netns after the README example)."""
    from pyrun.fsutil import mount_points
    netns.create("a", ns_root)
    netns.create("b", ns_root)
    netns.delete("a", ns_root)
    assert ns_root in mount_points()
    netns.delete("b", ns_root)
    assert ns_root not in mount_points()
    assert nsfs_mounts(str(ns_root)) == []
