"""``pyrunctl netns`` and ``pyrunctl network``: named network namespaces,
interfaces, addresses and routes (``ip netns``/``ip link``/``ip addr``/
``ip route`` in pyrun's words), each a thin call into :mod:`pyrun.network`.

``--netns`` takes the name of a namespace pinned by ``pyrunctl netns add``
(under /run/pyrun/netns) or a path (``/proc/<pid>/ns/net``, a file another
tool pinned); without it, the command acts in pyrunctl's own namespace."""

from pyrun.cli.ctl import table
from pyrun.errdefs import InvalidArgument, NotFound
from pyrun.network import address, links, netns, route


def netns_path(value):
    """A ``--netns`` value -> the path of a pinned namespace (None stays
    None).  Raises NotFound if nothing is pinned there."""
    if value is None:
        return None
    p = value if "/" in value else netns.path(value)
    if not netns.is_pinned(p):
        raise NotFound(f"network namespace {value!r} not found"
                       + ("" if "/" in value else f" (not pinned at {p}; see `pyrunctl netns ls`)"))
    return p


# ---- netns ----

def netns_add(ctx):
    print(netns.create(ctx.args.name))


def netns_ls(ctx):
    print("\n".join(netns.list_names()))


def netns_rm(ctx):
    if not ctx.args.names:
        raise InvalidArgument("netns rm: name at least one namespace")
    for name in ctx.args.names:
        netns.delete(name)
        print(name)


# ---- links ----

def network_veth_add(ctx):
    a = ctx.args
    links.add_veth(a.host, a.peer, netns=netns_path(a.netns), peer_netns=netns_path(a.peer_netns),
                   mtu=a.mtu)


def network_bridge_add(ctx):
    links.add_bridge(ctx.args.name, netns=netns_path(ctx.args.netns), mtu=ctx.args.mtu)


def network_bridge_attach(ctx):
    links.attach_port(ctx.args.bridge, ctx.args.port, netns=netns_path(ctx.args.netns))


def network_bridge_detach(ctx):
    links.detach_port(ctx.args.port, netns=netns_path(ctx.args.netns))


def network_link_set(ctx):
    """Changes in ip-link's order: MTU, MAC, name, namespace, then up/down
    (so ``--name new --up`` brings up the renamed link where it ends)."""
    a = ctx.args
    if a.up and a.down:
        raise InvalidArgument("network link set: --up and --down together")
    ns = netns_path(a.netns)
    to = netns_path(a.to_netns)
    if a.mtu is not None:
        links.validate_mtu(a.mtu)
    if a.mac is not None:
        links.validate_mac(a.mac)
    if a.name is not None:
        links.validate_ifname(a.name)
    links.get(a.ifname, ns)  # a missing link fails before any change
    name = a.ifname
    if a.mtu is not None:
        links.set_mtu(name, a.mtu, ns)
    if a.mac is not None:
        links.set_mac(name, a.mac, ns)
    if a.name is not None:
        links.rename(name, a.name, ns)
        name = a.name
    if to is not None:
        links.move(name, to, ns)
        ns = to
    if a.up:
        links.set_up(name, ns)
    elif a.down:
        links.set_down(name, ns)


def network_link_rm(ctx):
    for name in ctx.args.names:
        links.delete(name, netns_path(ctx.args.netns))
        print(name)


def network_link_ls(ctx):
    rows = [("INDEX", "NAME", "KIND", "MTU", "MAC", "STATE", "MASTER")]
    for link in links.list_links(netns_path(ctx.args.netns)):
        rows.append((link.index, link.name, link.kind or "-", link.mtu, link.mac or "-",
                     "UP" if link.up else "DOWN", link.master or "-"))
    table(rows)


# ---- addresses and routes ----

def network_addr_add(ctx):
    address.add_address(_dev(ctx), ctx.args.cidr, netns_path(ctx.args.netns))


def network_addr_rm(ctx):
    address.remove_address(_dev(ctx), ctx.args.cidr, netns_path(ctx.args.netns))


def network_addr_ls(ctx):
    rows = [("DEV", "ADDRESS")]
    for a in address.list_addresses(ctx.args.dev, netns_path(ctx.args.netns)):
        rows.append((a.ifname, a.cidr))
    table(rows)


def _dev(ctx):
    if not ctx.args.dev:
        raise InvalidArgument(f"{ctx.args.verb}: --dev NAME is required")
    return ctx.args.dev


def network_route_add(ctx):
    a = ctx.args
    route.add_route(a.dst, a.via, a.dev, a.metric, netns_path(a.netns))


def network_route_rm(ctx):
    a = ctx.args
    route.remove_route(a.dst, a.via, a.dev, a.metric, netns_path(a.netns))


def network_route_ls(ctx):
    rows = [("DST", "GATEWAY", "DEV", "METRIC")]
    for r in route.list_routes(netns_path(ctx.args.netns)):
        rows.append((r.dst, r.gateway or "-", r.dev or "-", "-" if r.metric is None else r.metric))
    table(rows)


