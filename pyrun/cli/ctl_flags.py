"""``pyrunctl``'s global flags and commands as data (ctr's shape).  The
parser is :mod:`pyrun.cli.flags`; the handlers live in the ``ctl_*``
modules named in :data:`HANDLERS`."""
import os

from pyrun.cli import flags as _flags
from pyrun.cli.flags import Flag

GLOBAL = [
    Flag(("--namespace", "-n"), "tenant namespace (env PYRUN_NAMESPACE)", True,
         os.environ.get("PYRUN_NAMESPACE") or "default"),
    Flag(("--root",), "where images, content, snapshots and metadata live", True, "/var/lib/pyrun"),
    Flag(("--state",), "runtime state of containers", True, "/run/pyrun"),
    Flag(("--snapshotter",), "overlayfs or native", True, "overlayfs"),
    Flag(("--help", "-h"), "show help"),
    Flag(("--version", "-v"), "print the version"),
]

_LABEL = Flag(("--label",), "KEY=VALUE (repeatable)", multiple=True, default=[])

# (words) -> (summary, positionals, flags)
COMMANDS = {
    ("namespaces", "ls"): ("list namespaces", [], [Flag(("--quiet", "-q"), "names only")]),
    ("namespaces", "create"): ("create a namespace", [("name", True), ("labels", "rest")], []),
    ("namespaces", "rm"): ("remove empty namespaces", [("names", "rest")], []),
    ("namespaces", "label"): ("set labels (KEY=VALUE; empty VALUE removes)",
                              [("name", True), ("labels", "rest")], []),
    ("content", "ls"): ("list blobs of this namespace", [],
                        [Flag(("--quiet", "-q"), "digests only")]),
    ("content", "get"): ("write a blob to stdout", [("digest", True)], []),
    ("content", "rm"): ("remove blobs from this namespace", [("digests", "rest")], []),
    ("snapshots", "ls"): ("list snapshots", [], []),
    ("snapshots", "info"): ("show a snapshot as JSON", [("key", True)], []),
    ("snapshots", "rm"): ("remove snapshots", [("keys", "rest")], []),
    ("snapshots", "usage"): ("disk use of snapshots", [("keys", "rest")], []),
    ("snapshots", "tree"): ("show snapshots as a tree of parents", [], []),
    ("leases", "ls"): ("list leases", [], [Flag(("--quiet", "-q"), "ids only")]),
    ("leases", "create"): ("create a lease", [],
                           [Flag(("--id",), "lease id (default: random)", True, None),
                            Flag(("--expires", "-x"), "expire after this long (e.g. 30m, 24h; "
                                 "0 never)", True, "24h"), _LABEL]),
    ("leases", "rm"): ("remove leases", [("ids", "rest")], []),
    ("gc",): ("remove everything no image, container or lease references", [], []),
    ("check",): ("check the store for corruption (exit 1 when problems are found)", [],
                 [Flag(("--quick",), "do not re-hash blobs")]),
}

# group word -> module with one function per sub-command (``images_pull``…)
HANDLERS = {
    "namespaces": "pyrun.cli.ctl_storage", "content": "pyrun.cli.ctl_storage",
    "snapshots": "pyrun.cli.ctl_storage", "leases": "pyrun.cli.ctl_storage",
    "gc": "pyrun.cli.ctl_storage", "check": "pyrun.cli.ctl_storage",
}


def parse(argv):
    return _flags.parse(argv, "pyrunctl", GLOBAL, COMMANDS)


def usage(verb=None):
    return _flags.usage("pyrunctl", "pyrunctl: images, containers and tasks, with tenants",
                        GLOBAL, COMMANDS, verb)
