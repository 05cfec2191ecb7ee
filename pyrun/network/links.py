"""Network interfaces (links): create, change and delete them over
rtnetlink, in any network namespace.

Every function takes ``netns`` (a path, an fd, or None for the calling
thread's namespace, see :mod:`pyrun.network.netns`).  Each change is one
rtnetlink request, so the kernel makes it whole or not at all: a veth whose
peer lands in another namespace under its final name, a move that renames,
a macvlan born inside the container's namespace.  Names are checked first,
so a clash names the interface that clashes.  Errors: InvalidArgument (bad
name, MTU, MAC, mode, id), AlreadyExists (a name in use), NotFound (no such
interface or namespace), FailedPrecondition (the kernel has no driver for
the kind, e.g. no CONFIG_IPVLAN).  Behaviour follows ip-link(8).
"""
import contextlib
import errno
import os

from pyroute2.netlink.exceptions import NetlinkError

from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument
from pyrun.network import netns as _netns
from pyrun.network.rtnl import errors, index, route_socket
from pyrun.record import Frozen

IFNAMSIZ = 16  # including the NUL: names are 1-15 bytes
MACVLAN_MODES = ("private", "vepa", "bridge", "passthru", "source")
IPVLAN_MODES = {"l2": 0, "l3": 1, "l3s": 2}
IFF_UP = 0x1
_CONFIG = {"vlan": "VLAN_8021Q", "veth": "VETH", "bridge": "BRIDGE"}


class Link(Frozen):
    """One interface as seen in its namespace.  ``kind`` is the rtnetlink
    kind ("veth", "bridge", "macvlan", ... or "" for a physical or loopback
    device), ``mtu`` in bytes, ``mac`` as ``aa:bb:cc:dd:ee:ff``, ``master``
    the name of the bridge it is a port of (or None)."""
    __slots__ = ("index", "name", "kind", "mtu", "mac", "up", "master")


def validate_ifname(name):
    """Check an interface name as the kernel's dev_valid_name() does: 1-15
    bytes, not ``.`` or ``..``, no ``/``, ``:`` or whitespace.  Raises
    InvalidArgument."""
    if not isinstance(name, str) or not name or len(os.fsencode(name)) >= IFNAMSIZ \
            or name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise InvalidArgument(f"invalid interface name {name!r}: want 1-15 bytes, "
                              "no '/', ':' or whitespace, not '.' or '..'")


def validate_mac(mac):
    """Check a unicast Ethernet address ``aa:bb:cc:dd:ee:ff``; returns it in
    lower case.  Raises InvalidArgument."""
    parts = mac.split(":") if isinstance(mac, str) else []
    try:
        octets = [int(p, 16) for p in parts if len(p) == 2]
    except ValueError:
        octets = []
    if len(octets) != 6:
        raise InvalidArgument(f"invalid MAC address {mac!r}: want six hex octets a:b:c:d:e:f")
    if octets[0] & 1:
        raise InvalidArgument(f"invalid MAC address {mac!r}: a multicast address cannot name an interface")
    return mac.lower()


def validate_mtu(mtu):
    """Check an MTU (bytes, 68-65535; the device may allow less).  Raises
    InvalidArgument."""
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535:
        raise InvalidArgument(f"invalid MTU {mtu!r}: want an integer 68-65535 (bytes)")
    return mtu


def _absent(ipr, name, netns):
    if ipr.link_lookup(ifname=name):
        where = "this namespace" if netns is None else f"netns {netns}"
        raise AlreadyExists(f"interface {name!r} already exists in {where}")


def _to_link(ipr, msg):
    info = msg.get("IFLA_LINKINFO")
    kind = (info.get("IFLA_INFO_KIND") if info else None) or ""
    master = msg.get("IFLA_MASTER")
    master_name = None
    if master:
        found = ipr.link("get", index=master)
        master_name = found[0].get("IFLA_IFNAME") if found else None
    return Link(msg["index"], msg.get("IFLA_IFNAME"), kind, msg.get("IFLA_MTU"),
                msg.get("IFLA_ADDRESS"), bool(msg["flags"] & IFF_UP), master_name)


def get(ifname, netns=None):
    """The :class:`Link` named ``ifname``.  Raises NotFound."""
    with route_socket(netns) as ipr:
        i = index(ipr, ifname, netns)
        with errors(f"get link {ifname}", netns):
            return _to_link(ipr, ipr.link("get", index=i)[0])


def list_links(netns=None):
    """Every interface in ``netns`` as a :class:`Link`, by ifindex."""
    with route_socket(netns) as ipr:
        with errors("list links", netns):
            return sorted((_to_link(ipr, m) for m in ipr.link("dump")), key=lambda l: l.index)


@contextlib.contextmanager
def _ns_fd(ns, name=None):
    # An fd for ``ns`` (None stays None) after checking that ``name`` is
    # free there; closed afterwards unless the caller passed an fd.
    if ns is None:
        yield None
        return
    if name is not None:
        with route_socket(ns) as there:
            _absent(there, name, ns)
    if isinstance(ns, int):
        yield ns
        return
    fd = _netns.open_fd(ns)
    try:
        yield fd
    finally:
        os.close(fd)


def _create(what, name, netns, into, attrs):
    # ``into``: the namespace the new link lands in (IFLA_NET_NS_FD on the
    # creating request), for links whose parent stays behind.
    validate_ifname(name)
    with route_socket(netns) as ipr, _ns_fd(into, name) as fd:
        if fd is None:
            _absent(ipr, name, netns)
        else:
            attrs = {**attrs, "net_ns_fd": fd}
        with errors(f"create {what} {name}", netns):
            try:
                ipr.link("add", ifname=name, **attrs)
            except NetlinkError as e:
                # rtnl_newlink answers EOPNOTSUPP for a kind no driver registered.
                if e.code != errno.EOPNOTSUPP:
                    raise
                raise FailedPrecondition(f"create {what} {name}: this kernel has no {what} "
                                         f"driver (CONFIG_{_CONFIG.get(what, what.upper())})") from e


def _opt_mtu(attrs, mtu):
    if mtu is not None:
        attrs["mtu"] = validate_mtu(mtu)
    return attrs


def add_veth(name, peer, netns=None, peer_netns=None, mtu=None):
    """Create the veth pair ``name`` (in ``netns``) <-> ``peer`` (in
    ``peer_netns``, default the same namespace), both down.  The peer is
    created directly in its namespace under its final name (e.g. ``eth0``
    in a container), in one request.  ``mtu`` (bytes) applies to both."""
    validate_ifname(name)
    validate_ifname(peer)
    if peer_netns is None:
        if peer == name:
            raise InvalidArgument(f"veth {name}: both ends cannot have the same name in one namespace")
        with route_socket(netns) as ipr:
            _absent(ipr, peer, netns)
    with _ns_fd(peer_netns, peer) as fd:
        peer_attrs = _opt_mtu({"ifname": peer}, mtu)
        if fd is not None:
            peer_attrs["net_ns_fd"] = fd
        _create("veth", name, netns, None, _opt_mtu({"kind": "veth", "peer": peer_attrs}, mtu))


def add_bridge(name, netns=None, mtu=None):
    """Create the Linux bridge ``name`` (down, no ports)."""
    _create("bridge", name, netns, None, _opt_mtu({"kind": "bridge"}, mtu))


def add_macvlan(name, parent, mode="bridge", netns=None, into=None, mtu=None):
    """Create a macvlan ``name`` on ``parent`` (in ``netns``); it lands in
    ``into`` (e.g. a container's namespace) if given.  ``mode`` is one of
    private, vepa, bridge, passthru, source (ip-link(8) MACVLAN)."""
    if mode not in MACVLAN_MODES:
        raise InvalidArgument(f"macvlan {name}: invalid mode {mode!r}, want one of {', '.join(MACVLAN_MODES)}")
    _create("macvlan", name, netns, into,
            _opt_mtu({"kind": "macvlan", "link": _parent(parent, netns), "macvlan_mode": mode}, mtu))


def add_ipvlan(name, parent, mode="l2", netns=None, into=None, mtu=None):
    """Create an ipvlan ``name`` on ``parent`` (in ``netns``), landing in
    ``into`` if given.  ``mode`` is l2, l3 or l3s (ip-link(8) IPVLAN)."""
    if mode not in IPVLAN_MODES:
        raise InvalidArgument(f"ipvlan {name}: invalid mode {mode!r}, want one of {', '.join(IPVLAN_MODES)}")
    _create("ipvlan", name, netns, into,
            _opt_mtu({"kind": "ipvlan", "link": _parent(parent, netns),
                      "ipvlan_mode": IPVLAN_MODES[mode]}, mtu))


def add_vlan(name, parent, vlan_id, netns=None, into=None, mtu=None):
    """Create the 802.1Q VLAN ``name`` with id ``vlan_id`` (1-4094) on
    ``parent`` (in ``netns``), landing in ``into`` if given."""
    if not isinstance(vlan_id, int) or isinstance(vlan_id, bool) or not 1 <= vlan_id <= 4094:
        raise InvalidArgument(f"vlan {name}: invalid VLAN id {vlan_id!r}, want 1-4094")
    _create("vlan", name, netns, into,
            _opt_mtu({"kind": "vlan", "link": _parent(parent, netns), "vlan_id": vlan_id}, mtu))


def _parent(parent, netns):
    validate_ifname(parent)
    with route_socket(netns) as ipr:
        return index(ipr, parent, netns)


def _set(name, netns, what, /, **attrs):
    validate_ifname(name)
    with route_socket(netns) as ipr:
        i = index(ipr, name, netns)
        if "ifname" in attrs:
            _absent(ipr, attrs["ifname"], netns)
        with errors(f"{what} {name}", netns):
            ipr.link("set", index=i, **attrs)


def set_up(ifname, netns=None):
    """Bring ``ifname`` up (``ip link set IF up``)."""
    _set(ifname, netns, "set up", state="up")


def set_down(ifname, netns=None):
    """Bring ``ifname`` down."""
    _set(ifname, netns, "set down", state="down")


def loopback_up(netns=None):
    """Bring ``lo`` up: 127.0.0.1/8 and ::1 become usable (the kernel adds
    them itself), as the CNI loopback plugin does."""
    set_up("lo", netns)


def set_mtu(ifname, mtu, netns=None):
    """Set the MTU of ``ifname`` (bytes).  InvalidArgument if out of range
    for the device."""
    _set(ifname, netns, f"set mtu {mtu} on", mtu=validate_mtu(mtu))


def set_mac(ifname, mac, netns=None):
    """Set the hardware address of ``ifname`` (``aa:bb:cc:dd:ee:ff``)."""
    _set(ifname, netns, f"set address {mac} on", address=validate_mac(mac))


def rename(ifname, new_name, netns=None):
    """Rename ``ifname`` to ``new_name``.  Kernels before 6.2 refuse (EBUSY,
    raised as FailedPrecondition) while the interface is up."""
    validate_ifname(new_name)
    _set(ifname, netns, f"rename to {new_name}", ifname=new_name)


def move(ifname, to_netns, netns=None, new_name=None):
    """Move ``ifname`` from ``netns`` into ``to_netns``, renaming it to
    ``new_name`` on the way if given (one request: it never shows up in the
    target under its old name).  AlreadyExists if the name is taken there."""
    validate_ifname(ifname)
    if to_netns is None:
        raise InvalidArgument(f"move {ifname}: no target namespace given")
    target = new_name or ifname
    validate_ifname(target)
    with route_socket(netns) as ipr, _ns_fd(to_netns, target) as fd:
        i = index(ipr, ifname, netns)
        attrs = {"net_ns_fd": fd}
        if new_name:
            attrs["ifname"] = new_name
        with errors(f"move {ifname} to netns {to_netns} as {target}", netns):
            ipr.link("set", index=i, **attrs)


def attach_port(bridge, port, netns=None):
    """Make ``port`` a port of the bridge ``bridge`` (``ip link set PORT
    master BRIDGE``).  InvalidArgument if ``bridge`` is not a bridge."""
    validate_ifname(bridge)
    with route_socket(netns) as ipr:
        b = index(ipr, bridge, netns)
        link = _to_link(ipr, ipr.link("get", index=b)[0])
        if link.kind != "bridge":
            raise InvalidArgument(f"{bridge!r} is not a bridge (kind {link.kind or 'none'!r})")
    _set(port, netns, f"attach to bridge {bridge}:", master=b)


def detach_port(port, netns=None):
    """Take ``port`` off its bridge (``ip link set PORT nomaster``); a
    no-op if it has none."""
    _set(port, netns, "detach from its bridge:", master=0)


def delete(ifname, netns=None):
    """Delete ``ifname``; deleting one end of a veth deletes both.  Raises
    NotFound."""
    validate_ifname(ifname)
    with route_socket(netns) as ipr:
        i = index(ipr, ifname, netns)
        with errors(f"delete link {ifname}", netns):
            ipr.link("del", index=i)
