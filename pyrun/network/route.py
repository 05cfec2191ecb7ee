"""Routes, including default routes (``ip route add/del``, ip-route(8)), in
any namespace (``netns`` as in :mod:`pyrun.network.netns`).

A destination is ``default`` (0.0.0.0/0, or ::/0 with ``family=6`` or an
IPv6 gateway) or a network in CIDR form whose host bits are zero
(``10.1.0.0/16``).  Errors: InvalidArgument (bad destination or gateway,
families that differ, a gateway not reachable on a link), NotFound (no such
interface, namespace or route), AlreadyExists (the route exists).
"""
import ipaddress
import socket

from pyrun.errdefs import InvalidArgument
from pyrun.network.links import validate_ifname
from pyrun.network.rtnl import errors, index, route_socket
from pyrun.record import Frozen

RT_TABLE_MAIN = 254


class Route(Frozen):
    """A route of the main table: ``dst`` (``default`` or a CIDR),
    ``gateway`` (an address or None), ``dev`` (interface name or None),
    ``metric`` (int or None), ``family`` (4 or 6)."""
    __slots__ = ("dst", "gateway", "dev", "metric", "family")


def _parse(dst, via, family):
    gw = None
    if via is not None:
        try:
            gw = ipaddress.ip_address(via)
        except ValueError:
            raise InvalidArgument(f"invalid gateway {via!r}: not an IP address") from None
    if dst == "default":
        fam = family or (gw.version if gw else 4)
        net = ipaddress.ip_network("0.0.0.0/0" if fam == 4 else "::/0")
    else:
        if not isinstance(dst, str) or "/" not in dst:
            raise InvalidArgument(f"invalid route destination {dst!r}: want 'default' or a network "
                                  "in CIDR form, e.g. 10.1.0.0/16")
        try:
            net = ipaddress.ip_network(dst)
        except ValueError as e:
            raise InvalidArgument(f"invalid route destination {dst!r}: {e}") from None
    if gw is not None and gw.version != net.version:
        raise InvalidArgument(f"route {dst}: gateway {via} is IPv{gw.version}, destination IPv{net.version}")
    if family is not None and family != net.version:
        raise InvalidArgument(f"route {dst}: family {family} does not match IPv{net.version}")
    return net, gw


def _change(op, dst, via, dev, metric, netns, family):
    net, gw = _parse(dst, via, family)
    if op == "add" and via is None and dev is None:
        raise InvalidArgument(f"route {dst}: give a gateway (via) or a device (dev)")
    attrs = {"dst": str(net.network_address), "dst_len": net.prefixlen,
             "family": socket.AF_INET if net.version == 4 else socket.AF_INET6,
             "table": RT_TABLE_MAIN}
    if gw is not None:
        attrs["gateway"] = str(gw)
    if metric is not None:
        if not isinstance(metric, int) or isinstance(metric, bool) or metric < 0:
            raise InvalidArgument(f"route {dst}: invalid metric {metric!r}, want an integer >= 0")
        attrs["priority"] = metric
    with route_socket(netns) as ipr:
        if dev is not None:
            validate_ifname(dev)
            attrs["oif"] = index(ipr, dev, netns)
        what = f"{op} route {dst}" + (f" via {via}" if via else "") + (f" dev {dev}" if dev else "")
        with errors(what, netns):
            ipr.route(op, **attrs)


def add_route(dst, via=None, dev=None, metric=None, netns=None, family=None):
    """Add a route to ``dst`` through the gateway ``via`` and/or out of the
    interface ``dev``.  InvalidArgument if the gateway is not on a
    connected network (ENETUNREACH)."""
    _change("add", dst, via, dev, metric, netns, family)


def remove_route(dst, via=None, dev=None, metric=None, netns=None, family=None):
    """Remove the route to ``dst`` (matching ``via``/``dev``/``metric`` if
    given; with none of them, the first route to ``dst``, as ``ip route
    del``).  NotFound (ESRCH) if there is none."""
    _change("del", dst, via, dev, metric, netns, family)


def add_default_route(via, dev=None, metric=None, netns=None):
    """Add the default route through ``via`` (IPv4 or IPv6)."""
    add_route("default", via, dev, metric, netns)


def remove_default_route(via=None, dev=None, metric=None, netns=None, family=4):
    """Remove the default route of ``family`` (the family of ``via`` if
    given), matching ``via``/``dev``/``metric`` if given."""
    remove_route("default", via, dev, metric, netns, None if via else family)


def list_routes(netns=None, family=None):
    """The main table's routes in ``netns`` (of ``family`` 4 or 6 if given)
    as :class:`Route`."""
    fam = {None: socket.AF_UNSPEC, 4: socket.AF_INET, 6: socket.AF_INET6}[family]
    with route_socket(netns) as ipr:
        names = {m["index"]: m.get("IFLA_IFNAME") for m in ipr.link("dump")}
        with errors("list routes", netns):
            msgs = [m for m in ipr.route("dump", family=fam) if m.get("RTA_TABLE") == RT_TABLE_MAIN]
    out = []
    for m in msgs:
        dst = m.get("RTA_DST")
        v = 4 if m["family"] == socket.AF_INET else 6
        out.append(Route(f"{dst}/{m['dst_len']}" if dst is not None else "default",
                         m.get("RTA_GATEWAY"), names.get(m.get("RTA_OIF")),
                         m.get("RTA_PRIORITY"), v))
    return out
