"""Network sysctls of one namespace (``net.*`` under /proc/sys/net).

The files under /proc/sys/net belong to the namespace of the thread that
opens them, so reads and writes happen from a thread inside ``netns``
(:func:`pyrun.network.netns.run_in`).  Keys outside ``net.`` are refused:
they are not per network namespace, and writing them would change the
host.  Keys use sysctl(8)'s dotted form (``net.ipv4.ip_forward``) or the
slash form (``net/ipv4/conf/eth0/forwarding``, needed when a name holds a
dot, like ``eth0.100``).
"""
import os

from pyrun.errdefs import InvalidArgument, NotFound
from pyrun.network.netns import run_in


def _path(key):
    parts = key.split("/") if "/" in key else key.split(".")
    if not isinstance(key, str) or parts[0] != "net" or len(parts) < 2 \
            or any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument(f"invalid network sysctl {key!r}: want net.<...> (or net/<...>)")
    return os.path.join("/proc/sys", *parts)


def get(key, netns=None):
    """The value of ``key`` in ``netns`` as a string, stripped.  Raises
    InvalidArgument (not a net.* key), NotFound (no such sysctl)."""
    p = _path(key)

    def read():
        try:
            with open(p) as f:
                return f.read().strip()
        except FileNotFoundError:
            raise NotFound(f"no sysctl {key} (in netns {netns})") from None
    return run_in(netns, read)


def set(key, value, netns=None):
    """Write ``value`` (str or int) to ``key`` in ``netns``.  Raises
    InvalidArgument (not a net.* key, or a value the kernel rejects),
    NotFound (no such sysctl)."""
    p = _path(key)

    def write():
        try:
            with open(p, "w") as f:
                f.write(str(value))
        except FileNotFoundError:
            raise NotFound(f"no sysctl {key} (in netns {netns})") from None
        except OSError as e:
            raise InvalidArgument(f"sysctl {key}={value!r} in netns {netns}: {e.strerror}") from None
    run_in(netns, write)
