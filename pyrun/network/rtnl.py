"""The rtnetlink edge of :mod:`pyrun.network`: pyroute2 sockets opened in a
given namespace, and pyroute2's errors turned into pyrun's error kinds."""
import contextlib
import errno
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyrun.network import netns as _netns

_KINDS = {
    errno.EEXIST: AlreadyExists,
    errno.ENODEV: NotFound,
    errno.ENOENT: NotFound,
    errno.ESRCH: NotFound,
    errno.EADDRNOTAVAIL: NotFound,
    errno.EINVAL: InvalidArgument,
    errno.ERANGE: InvalidArgument,
    errno.EOPNOTSUPP: InvalidArgument,
    errno.ENETUNREACH: InvalidArgument,
    errno.EAFNOSUPPORT: InvalidArgument,
    errno.EBUSY: FailedPrecondition,
}


def _where(netns):
    return "this namespace" if netns is None else f"netns {netns}"


@contextlib.contextmanager
def errors(what, netns=None):
    """Turn a pyroute2 NetlinkError raised in the block into NotFound,
    AlreadyExists, InvalidArgument or FailedPrecondition by its errno,
    naming ``what`` was being done and in which namespace.  Other errnos
    become an OSError with the same context."""
    try:
        yield
    except NetlinkError as e:
        msg = f"{what} in {_where(netns)}: {e.args[1] if len(e.args) > 1 else ''}".rstrip(": ")
        kind = _KINDS.get(e.code)
        if kind is None:
            raise OSError(e.code, msg) from e
        raise kind(f"{msg} [{errno.errorcode.get(e.code, e.code)}]") from e


def _netlink_socket():
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)  # NETLINK_ROUTE


@contextlib.contextmanager
def route_socket(netns=None):
    """An open pyroute2 ``IPRoute`` talking to ``netns`` (path, fd or None
    for the calling thread's namespace), closed when the block ends.

    The netlink socket is made by a thread inside ``netns`` (a socket stays
    bound to the namespace it was created in), rather than by pyroute2's
    own netns support, which forks a helper process per socket.  Raises
    NotFound for a namespace that does not exist.
    """
    if netns is None:
        ipr = IPRoute()
    else:
        sock = _netns.run_in(netns, _netlink_socket)
        try:
            ipr = IPRoute(fileno=sock.fileno())
        except BaseException:
            sock.close()
            raise
        sock.detach()
    try:
        yield ipr
    finally:
        ipr.close()


def index(ipr, ifname, netns=None):
    """The ifindex of ``ifname``; NotFound names the namespace."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NotFound(f"no interface {ifname!r} in {_where(netns)}")
    return found[0]
