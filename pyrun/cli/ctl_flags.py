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
    Flag(("--state",), "runtime state of containers (apart from pyrun's own --root, "
         "/run/pyrun, so that `pyrun list` shows only containers)", True, "/run/pyrunctl"),
    Flag(("--snapshotter",), "overlayfs or native", True, "overlayfs"),
    Flag(("--cni-conf-dir",), "where `run --net cni:NAME` finds the conflist NAME",
         True, "/etc/cni/net.d"),
    Flag(("--cni-host-netns",), "run CNI plugins in this network namespace (name or path; "
         "default: pyrunctl's own)", True, None),
    Flag(("--trace",), "print every kernel step of the containers' runtime (teaching mode)"),
    Flag(("--trace-format",), "text or json (with --trace)", True, ""),
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

# command words (or the group word) -> module with one function per
# sub-command (``images_pull``…)
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

# ---- images and content fetch (pyrun.cli.ctl_images) ----
_PLATFORM = Flag(("--platform",), "os/arch[/variant] (default: the host's)", True, None)
_ALL_PLATFORMS = Flag(("--all-platforms",), "every platform of an index")
_REGISTRY = [Flag(("--user", "-u"), "registry credentials USER:PASSWORD "
                  "(default: ~/.docker/config.json)", True, None),
             Flag(("--plain-http",), "speak plain HTTP to the registry"),
             Flag(("--skip-verify", "-k"), "do not verify the registry's TLS certificate")]
COMMANDS.update({
    ("images", "pull"): ("fetch an image, record it and unpack it", [("ref", True)],
                         [_PLATFORM, _ALL_PLATFORMS, *_REGISTRY,
                          Flag(("--no-unpack",), "fetch and record only"),
                          Flag(("--print-chainid",), "print the unpacked image's chain ID")]),
    ("images", "push"): ("push an image (LOCAL, default REMOTE) to REMOTE",
                         [("remote", True), ("local", False)], [_PLATFORM, *_REGISTRY]),
    ("images", "ls"): ("list images (FILTERS: containerd's, e.g. name~=busybox)",
                       [("filters", "rest")], [Flag(("--quiet", "-q"), "names only")]),
    ("images", "rm"): ("remove images (their content goes at the next gc)", [("refs", "rest")], []),
    ("images", "tag"): ("name SOURCE's target also TARGET...",
                        [("source", True), ("targets", "rest")],
                        [Flag(("--force",), "move a TARGET that exists")]),
    ("images", "inspect"): ("show an image as JSON: target, manifest, config, layers",
                            [("ref", True)], [_PLATFORM]),
    ("images", "check"): ("check that each image's content is complete and unpacked",
                          [("filters", "rest")], []),
    ("images", "import"): ("import an OCI layout (tar or dir) or docker-archive (- for stdin) "
                           "and unpack it",
                           [("file", True)],
                           [Flag(("--base-name",), "name for entries with a bare tag or none",
                                 True, None),
                            Flag(("--index-name",), "also record the layout's index as this image",
                                 True, None),
                            _PLATFORM, _ALL_PLATFORMS,
                            Flag(("--no-unpack",), "import only")]),
    ("images", "export"): ("export images to a tar (OCI layout or docker-archive; - for stdout)",
                           [("file", True), ("refs", "rest")],
                           [Flag(("--format",), "oci or docker", True, "oci"),
                            _PLATFORM, _ALL_PLATFORMS]),
    ("images", "mount"): ("mount an image's root filesystem at TARGET (under a 24h lease)",
                          [("ref", True), ("target", True)],
                          [_PLATFORM, Flag(("--rw",), "a writable snapshot")]),
    ("images", "unmount"): ("unmount TARGET; --rm also removes its snapshot and lease",
                            [("target", True)],
                            [Flag(("--rm",), "remove the snapshot and lease")]),
    ("content", "fetch"): ("fetch an image's content and record it, without unpacking",
                           [("ref", True)], [_PLATFORM, _ALL_PLATFORMS, *_REGISTRY]),
})
HANDLERS.update({"images": "pyrun.cli.ctl_images", "content fetch": "pyrun.cli.ctl_images"})

# ---- containers, tasks and run (pyrun/cli/ctl_containers.py) ----
_RUN_FLAGS = [
    Flag(("--tty", "-t"), "give the process a terminal"),
    Flag(("--env", "-e"), "KEY=VALUE (repeatable)", multiple=True, default=[]),
    Flag(("--env-file",), "a file of KEY=VALUE lines", True, None),
    Flag(("--cwd", "-w"), "working directory", True, None),
    Flag(("--user", "-u"), "user[:group], names from the image's /etc/passwd", True, None),
    Flag(("--hostname",), "the container's hostname", True, None),
    Flag(("--mount",), "type=bind,src=PATH,dst=PATH,options=ro:rbind (repeatable)",
         multiple=True, default=[]),
    Flag(("--read-only",), "a read-only root filesystem"),
    Flag(("--net",), "host, none, or cni:NETWORK (a conflist in --cni-conf-dir)", True, "none"),
    Flag(("--memory",), "memory limit (bytes, or 64m, 1g)", True, None),
    Flag(("--cpus",), "CPU limit, e.g. 0.5", True, None, float),
    Flag(("--pids-limit",), "maximum number of processes", True, None, int),
    Flag(("--cap-add",), "add a capability (repeatable)", multiple=True, default=[]),
    Flag(("--cap-drop",), "drop a capability (repeatable)", multiple=True, default=[]),
    Flag(("--privileged",), "all capabilities and devices, no seccomp or masked paths"),
    Flag(("--label",), "KEY=VALUE (repeatable)", multiple=True, default=[]),
    Flag(("--runtime",), "pyrun (in-process), runc, crun, or a path", True, "pyrun"),
    Flag(("--platform",), "the image platform, e.g. linux/amd64", True, None),
]

COMMANDS.update({
    ("run",): ("run a container from an image (IMAGE ID [CMD...])",
               [("image", True), ("id", True), ("args", "rest")],
               _RUN_FLAGS + [Flag(("--rm",), "remove the container when it exits"),
                             Flag(("--detach", "-d"), "run in the background"),
                             Flag(("-i",), "accepted: stdin is passed through in the foreground")]),
    ("containers", "create"): ("create a container (IMAGE ID [CMD...])",
                               [("image", True), ("id", True), ("args", "rest")], _RUN_FLAGS),
    ("containers", "ls"): ("list containers", [], [Flag(("--quiet", "-q"), "ids only")]),
    ("containers", "info"): ("show a container as JSON", [("id", True)], []),
    ("containers", "label"): ("set labels (KEY=VALUE; empty VALUE removes)",
                              [("id", True), ("labels", "rest")], []),
    ("containers", "rm"): ("remove containers", [("ids", "rest")],
                           [Flag(("--force", "-f"), "kill a running task first")]),
    ("tasks", "start"): ("start a container's task", [("id", True)],
                         [Flag(("--detach", "-d"), "do not wait for it")]),
    ("tasks", "ls"): ("list tasks", [], [Flag(("--quiet", "-q"), "ids only")]),
    ("tasks", "kill"): ("signal a task", [("id", True)],
                        [Flag(("--signal", "-s"), "signal name or number", True, "SIGTERM"),
                         Flag(("--all", "-a"), "every process of the task")]),
    ("tasks", "rm"): ("delete stopped tasks", [("ids", "rest")],
                      [Flag(("--force", "-f"), "kill a running task first")]),
    ("tasks", "ps"): ("list a task's processes", [("id", True)], []),
    ("tasks", "exec"): ("run a process in a task (ID CMD...)", [("id", True), ("args", "rest")],
                        [Flag(("--exec-id",), "a name for the process", True, None),
                         Flag(("--tty", "-t"), "give the process a terminal"),
                         Flag(("--detach", "-d"), "do not wait for it"),
                         Flag(("--cwd",), "working directory", True, None),
                         Flag(("--user", "-u"), "uid[:gid]", True, None),
                         Flag(("--env", "-e"), "KEY=VALUE (repeatable)", multiple=True,
                              default=[])]),
    ("tasks", "pause"): ("freeze a task", [("id", True)], []),
    ("tasks", "resume"): ("thaw a task", [("id", True)], []),
    ("tasks", "metrics"): ("a task's cgroup statistics as JSON", [("id", True)], []),
    ("tasks", "wait"): ("wait for a task to stop; exit with its status", [("id", True)], []),
    ("tasks", "logs"): ("print a detached task's output", [("id", True)], []),
    ("tasks", "attach"): ("follow a detached task's output until it stops (stdin: none)",
                          [("id", True)], []),
})
HANDLERS.update({"run": "pyrun.cli.ctl_containers", "containers": "pyrun.cli.ctl_containers",
                 "tasks": "pyrun.cli.ctl_containers"})

COMMANDS.update({
    ("images", "from-dir"): ("store a directory as a one-layer image (DIR NAME), e.g. a busybox "
                             "rootfs: no registry needed",
                             [("dir", True), ("name", True)],
                             [Flag(("--cmd",), "the image's Cmd, as a JSON array or one word", True,
                                   '["sh"]'),
                              Flag(("--env", "-e"), "KEY=VALUE (repeatable; PATH by default)",
                                   multiple=True, default=[])]),
})
HANDLERS["images from-dir"] = "pyrun.cli.ctl_containers"

# ---- network namespaces, links, addresses, routes (pyrun/cli/ctl_network.py) ----
_NETNS = Flag(("--netns",), "act in this network namespace (a name from `netns ls`, or a path)",
              True, None)
_MTU = Flag(("--mtu",), "MTU in bytes", True, None, int)
_DEV = Flag(("--dev",), "the interface", True, None)
_ROUTE = [Flag(("--via",), "gateway address", True, None), _DEV,
          Flag(("--metric",), "route priority", True, None, int), _NETNS]
COMMANDS.update({
    ("netns", "add"): ("create and pin a network namespace (/run/pyrun/netns/NAME)",
                       [("name", True)], []),
    ("netns", "ls"): ("list pinned network namespaces", [], []),
    ("netns", "rm"): ("unpin network namespaces", [("names", "rest")], []),
    ("network", "veth", "add"): ("create a veth pair HOST <-> PEER",
                                 [("host", True), ("peer", True)],
                                 [_NETNS, Flag(("--peer-netns",), "put PEER in this namespace",
                                               True, None), _MTU]),
    ("network", "bridge", "add"): ("create a bridge", [("name", True)], [_NETNS, _MTU]),
    ("network", "bridge", "attach"): ("make PORT a port of BRIDGE",
                                      [("bridge", True), ("port", True)], [_NETNS]),
    ("network", "bridge", "detach"): ("take PORT off its bridge", [("port", True)], [_NETNS]),
    ("network", "link", "set"): ("change an interface", [("ifname", True)],
                                 [Flag(("--up",), "bring it up"), Flag(("--down",), "take it down"),
                                  _MTU, Flag(("--mac",), "MAC address aa:bb:cc:dd:ee:ff", True, None),
                                  Flag(("--name",), "rename it", True, None),
                                  Flag(("--to-netns",), "move it to this namespace", True, None),
                                  _NETNS]),
    ("network", "link", "rm"): ("delete interfaces", [("names", "rest")], [_NETNS]),
    ("network", "link", "ls"): ("list interfaces", [], [_NETNS]),
    ("network", "addr", "add"): ("add an address (CIDR) to --dev", [("cidr", True)], [_DEV, _NETNS]),
    ("network", "addr", "rm"): ("remove an address (CIDR) from --dev", [("cidr", True)],
                                [_DEV, _NETNS]),
    ("network", "addr", "ls"): ("list addresses", [], [_DEV, _NETNS]),
    ("network", "route", "add"): ("add a route to DST (CIDR or default)", [("dst", True)], _ROUTE),
    ("network", "route", "rm"): ("remove a route to DST (CIDR or default)", [("dst", True)], _ROUTE),
    ("network", "route", "ls"): ("list the main table's routes", [], [_NETNS]),
})
HANDLERS.update({"netns": "pyrun.cli.ctl_network", "network": "pyrun.cli.ctl_network"})
