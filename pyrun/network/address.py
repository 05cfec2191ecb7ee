"""IPv4 and IPv6 addresses on interfaces (``ip address add/del``,
ip-address(8)), in any namespace (``netns`` as in :mod:`pyrun.network.netns`).

An address is given in CIDR form, ``10.88.0.2/16`` or ``fd00::2/64``: the
host address and the prefix length of its subnet.  Errors: InvalidArgument
(bad CIDR or interface name), NotFound (no such interface, namespace or
address), AlreadyExists (the address is already on the interface).
"""
import ipaddress
import socket

from pyrun.errdefs import InvalidArgument
from pyrun.network.links import validate_ifname
from pyrun.network.rtnl import errors, index, route_socket
from pyrun.record import Frozen


class Address(Frozen):
    """An address on an interface: ``ifname``, ``cidr`` (``10.0.0.2/24``),
    ``family`` (4 or 6)."""
    __slots__ = ("ifname", "cidr", "family")


def parse_cidr(cidr):
    """Parse ``addr/prefixlen`` into an ``ipaddress`` interface object.
    Raises InvalidArgument naming the bad value (no prefix length, a prefix
    too long for the family, a malformed address)."""
    if not isinstance(cidr, str) or "/" not in cidr:
        raise InvalidArgument(f"invalid CIDR {cidr!r}: want address/prefixlen, e.g. 10.0.0.2/24")
    try:
        return ipaddress.ip_interface(cidr)
    except ValueError as e:
        raise InvalidArgument(f"invalid CIDR {cidr!r}: {e}") from None


def _change(op, ifname, cidr, netns):
    validate_ifname(ifname)
    iface = parse_cidr(cidr)
    with route_socket(netns) as ipr:
        i = index(ipr, ifname, netns)
        with errors(f"{op} address {cidr} on {ifname}", netns):
            ipr.addr(op, index=i, address=str(iface.ip), prefixlen=iface.network.prefixlen)


def add_address(ifname, cidr, netns=None):
    """Add ``cidr`` (e.g. ``10.0.0.2/24``) to ``ifname``; the kernel adds the
    subnet route once the link is up."""
    _change("add", ifname, cidr, netns)


def remove_address(ifname, cidr, netns=None):
    """Remove ``cidr`` from ``ifname``.  NotFound if it is not there."""
    _change("del", ifname, cidr, netns)


def list_addresses(ifname=None, netns=None, family=None):
    """The addresses in ``netns`` (only those of ``ifname`` if given; only
    ``family`` 4 or 6 if given) as :class:`Address`, in kernel order."""
    fam = {None: socket.AF_UNSPEC, 4: socket.AF_INET, 6: socket.AF_INET6}[family]
    with route_socket(netns) as ipr:
        names = {m["index"]: m.get("IFLA_IFNAME") for m in ipr.link("dump")}
        kw = {}
        if ifname is not None:
            validate_ifname(ifname)
            kw["index"] = index(ipr, ifname, netns)
        with errors("list addresses", netns):
            msgs = ipr.addr("dump", family=fam, **kw)
            return [Address(names.get(m["index"]), f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}",
                            4 if m["family"] == socket.AF_INET else 6) for m in msgs]
