"""CNI results (spec 1.0.0, "Success" result type), typed.

:func:`parse` checks a plugin's output and keeps the document itself in
``raw``, which is what the next plugin gets as ``prevResult`` and what the
cache stores: fields this module does not model survive unchanged.
"""
import ipaddress

from pyrun.errdefs import InvalidArgument
from pyrun.network.cni.config import json_object
from pyrun.record import Frozen


class Interface(Frozen):
    """``name``, ``mac`` (or None) and ``sandbox`` (the netns path for a
    container-side interface, None for a host one)."""
    __slots__ = ("name", "mac", "sandbox")


class IPConfig(Frozen):
    """``address`` (CIDR, ``10.88.0.2/16``), ``gateway`` (or None),
    ``interface`` (index into Result.interfaces, or None)."""
    __slots__ = ("address", "gateway", "interface")


class RouteConfig(Frozen):
    """``dst`` (CIDR) and ``gw`` (or None: the interface's gateway)."""
    __slots__ = ("dst", "gw")


class DNS(Frozen):
    __slots__ = ("nameservers", "domain", "search", "options")


class Result(Frozen):
    """``cni_version``, ``interfaces``, ``ips``, ``routes`` (tuples of the
    records above), ``dns`` (:class:`DNS`) and ``raw`` (the dict)."""
    __slots__ = ("cni_version", "interfaces", "ips", "routes", "dns", "raw")

    def container_ips(self):
        """The addresses (CIDR strings) on interfaces inside a sandbox."""
        return [ip.address for ip in self.ips
                if ip.interface is not None and self.interfaces[ip.interface].sandbox]


def _bad(what, value, why):
    raise InvalidArgument(f"CNI result: invalid {what} {value!r}: {why}")


def _cidr(what, v):
    try:
        ipaddress.ip_interface(v)
    except (ValueError, TypeError):
        _bad(what, v, "want address/prefixlen")
    if not isinstance(v, str) or "/" not in v:
        _bad(what, v, "want address/prefixlen")
    return v


def _ip(what, v):
    if v is None:
        return None
    try:
        ipaddress.ip_address(v)
    except (ValueError, TypeError):
        _bad(what, v, "not an IP address")
    return v


def _list(doc, key):
    v = doc.get(key) or []
    if not isinstance(v, list):
        _bad(key, v, "want a list")
    return v


def parse(data):
    """Parse a result from bytes, str or dict into a :class:`Result`.
    Raises InvalidArgument naming the bad field."""
    doc = json_object(data, "CNI result")
    interfaces = []
    for i, it in enumerate(_list(doc, "interfaces")):
        if not isinstance(it, dict) or not isinstance(it.get("name"), str):
            _bad(f"interfaces[{i}]", it, "want an object with a name")
        interfaces.append(Interface(it["name"], it.get("mac"), it.get("sandbox") or None))
    ips = []
    for i, ip in enumerate(_list(doc, "ips")):
        if not isinstance(ip, dict):
            _bad(f"ips[{i}]", ip, "want an object")
        idx = ip.get("interface")
        if idx is not None and (not isinstance(idx, int) or not 0 <= idx < len(interfaces)):
            _bad(f"ips[{i}].interface", idx, f"want an index below {len(interfaces)}")
        ips.append(IPConfig(_cidr(f"ips[{i}].address", ip.get("address")),
                            _ip(f"ips[{i}].gateway", ip.get("gateway")), idx))
    routes = []
    for i, r in enumerate(_list(doc, "routes")):
        if not isinstance(r, dict):
            _bad(f"routes[{i}]", r, "want an object")
        routes.append(RouteConfig(_cidr(f"routes[{i}].dst", r.get("dst")),
                                  _ip(f"routes[{i}].gw", r.get("gw"))))
    d = doc.get("dns") or {}
    if not isinstance(d, dict):
        _bad("dns", d, "want an object")
    dns = DNS(tuple(d.get("nameservers") or ()), d.get("domain"),
              tuple(d.get("search") or ()), tuple(d.get("options") or ()))
    return Result(doc.get("cniVersion"), tuple(interfaces), tuple(ips), tuple(routes), dns, doc)
