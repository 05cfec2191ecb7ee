"""runc's command-line flags and verbs as data (as youki's liboci-cli),
apart from the verbs that use them (pyrun/cli/runc.py).  The parser is
:mod:`pyrun.cli.flags`."""
from pyrun.cli import flags as _flags
from pyrun.cli.flags import Flag

GLOBAL = [
    Flag(("--root",), "state directory", True, "/run/pyrun"),
    Flag(("--log",), "log file (errors are also written to stderr)", True, ""),
    Flag(("--log-format",), "log format: text or json", True, "text"),
    Flag(("--debug",), "log every kernel step (the --trace output) to --log, or stderr"),
    Flag(("--trace",), "teaching mode: print every kernel step to stderr (also PYRUN_TRACE=1)"),
    Flag(("--trace-format",), "trace format: text or json (also PYRUN_TRACE=json)", True, ""),
    Flag(("--systemd-cgroup",), "manage cgroups through systemd (needs a running systemd)"),
    Flag(("--rootless",), "accepted for runc compatibility", True, "auto"),
    Flag(("--criu",), "accepted for runc compatibility", True, ""),
    Flag(("--help", "-h"), "show help"),
    Flag(("--version", "-v"), "print the version"),
]

CREATE = [
    Flag(("--bundle", "-b"), "path to the bundle", True, "."),
    Flag(("--console-socket",), "unix socket that receives the pty master", True, None),
    Flag(("--pid-file",), "write the container init's pid to this file", True, None),
    Flag(("--no-pivot",), "use MS_MOVE and chroot instead of pivot_root"),
    Flag(("--no-new-keyring",), "keep the caller's session keyring"),
    Flag(("--preserve-fds",), "pass N extra fds (from fd 3) to the container", True, 0, int),
]

# verb -> (summary, positionals [(name, required)], flags)
VERBS = {k if isinstance(k, tuple) else (k,): v for k, v in {
    "spec": ("write a default config.json", [],
             [Flag(("--bundle", "-b"), "where to write config.json", True, "."),
              Flag(("--rootless",), "a spec for a rootless container")]),
    "create": ("create a container", [("id", True)], CREATE),
    "run": ("create and start a container, wait for it, delete it", [("id", True)],
            CREATE + [Flag(("--detach", "-d"), "do not wait for the container"),
                      Flag(("--keep",), "do not delete the container after it exits")]),
    "exec": ("run a new process in a running container", [("id", True), ("args", "rest")],
             [Flag(("--process", "-p"), "a process.json to run instead of ARGS", True, None),
              Flag(("--tty", "-t"), "give the process a terminal"),
              Flag(("--console-socket",), "unix socket that receives the pty master", True, None),
              Flag(("--detach", "-d"), "do not wait for the process"),
              Flag(("--pid-file",), "write the process's pid to this file", True, None),
              Flag(("--cwd",), "working directory in the container", True, None),
              Flag(("--env", "-e"), "set KEY=VALUE (repeatable)", multiple=True, default=[]),
              Flag(("--user", "-u"), "uid[:gid]", True, None),
              Flag(("--additional-gids", "-g"), "an additional gid (repeatable)", multiple=True,
                   default=[]),
              Flag(("--cap", "-c"), "add a capability (repeatable)", multiple=True, default=[]),
              Flag(("--no-new-privs",), "set no_new_privs"),
              Flag(("--preserve-fds",), "pass N extra fds (from fd 3)", True, 0, int),
              Flag(("--cgroup",), "accepted for runc compatibility (the container's cgroup is used)",
                   True, None),
              Flag(("--process-label",), "accepted; no effect without SELinux", True, None),
              Flag(("--apparmor",), "AppArmor profile (refused: not enabled here)", True, None)]),
    "start": ("start a created container", [("id", True)], []),
    "state": ("print a container's state JSON", [("id", True)], []),
    "kill": ("send a signal (default SIGTERM) to a container",
             [("id", True), ("signal", False)],
             [Flag(("--all", "-a"), "signal every process of the container")]),
    "delete": ("delete a container", [("id", True)],
               [Flag(("--force", "-f"), "kill a running container first")]),
    "list": ("list containers", [],
             [Flag(("--format", "-f"), "table or json", True, "table"),
              Flag(("--quiet", "-q"), "print ids only")]),
    "features": ("print what this runtime supports (JSON)", [], []),
}.items()}


def duration(text):
    """A Go duration as runc's --interval takes it (``5s``, ``500ms``,
    ``1m30s``, ``1h``), or plain seconds (``2``, ``0.5``) -> seconds."""
    units = (("ms", 0.001), ("us", 1e-6), ("ns", 1e-9), ("h", 3600.0), ("m", 60.0), ("s", 1.0))
    rest = text.strip()
    try:
        return float(rest)
    except ValueError:
        pass
    total = 0.0
    while rest:
        i = 0
        while i < len(rest) and (rest[i].isdigit() or rest[i] == "."):
            i += 1
        unit = next((u for u in units if rest[i:].startswith(u[0])), None)
        if i == 0 or unit is None:
            raise ValueError(text)
        total += float(rest[:i]) * unit[1]
        rest = rest[i + len(unit[0]):]
    if not text.strip():
        raise ValueError(text)
    return total


# runc's cgroup verbs: pause, resume, ps, update, events.
_UPDATE_FLAGS = [
    ("--blkio-weight", "per-cgroup block IO weight, 10 to 1000"),
    ("--cpu-period", "CPU CFS period (microseconds)"),
    ("--cpu-quota", "CPU CFS quota per period (microseconds, -1 for none)"),
    ("--cpu-share", "CPU shares (relative weight)"),
    ("--cpu-rt-period", "CPU realtime period (microseconds)"),
    ("--cpu-rt-runtime", "CPU realtime runtime per period (microseconds)"),
    ("--cpuset-cpus", "CPUs to use (0-3,5)"),
    ("--cpuset-mems", "memory nodes to use (0-1)"),
    ("--memory", "memory limit (bytes, or with a k/m/g/t/p suffix; -1 for none)"),
    ("--memory-reservation", "memory soft limit (bytes or suffixed size)"),
    ("--memory-swap", "memory+swap limit (bytes or suffixed size; -1 for unlimited swap)"),
    ("--kernel-memory", "kernel memory limit (ignored by the kernel, as in runc)"),
    ("--kernel-memory-tcp", "kernel TCP buffer limit (bytes or suffixed size)"),
    ("--pids-limit", "maximum number of pids (-1 for none)"),
    ("--l3-cache-schema", "Intel RDT L3 cache schema (not supported)"),
    ("--mem-bw-schema", "Intel RDT memory bandwidth schema (not supported)"),
]
UPDATE_FLAG_NAMES = [name[2:] for name, _ in _UPDATE_FLAGS]

VERBS.update({(k,): v for k, v in {
    "pause": ("freeze all processes of a container", [("id", True)], []),
    "resume": ("thaw a paused container", [("id", True)], []),
    "ps": ("list a container's processes (ps options after the id; default -ef)",
           [("id", True), ("ps_args", "rest")],
           [Flag(("--format", "-f"), "table or json", True, "table")]),
    "update": ("change a container's cgroup limits", [("id", True)],
               [Flag(("--resources", "-r"), "linux.resources JSON file, or - for stdin "
                     "(the other flags are then ignored)", True, None)]
               + [Flag((name,), help, True, None) for name, help in _UPDATE_FLAGS]),
    "events": ("print a container's stats and OOM events as JSON lines", [("id", True)],
               [Flag(("--interval",), "stats interval (5s, 500ms, or seconds)", True, 5.0, duration),
                Flag(("--stats",), "print the stats once and exit")]),
}.items()})




def parse(argv):
    """Parse ``pyrun``'s argv (without the program name)."""
    return _flags.parse(argv, "pyrun", GLOBAL, VERBS)


def usage(verb=None):
    return _flags.usage("pyrun", "pyrun: an OCI runtime with runc's command line", GLOBAL, VERBS,
                        verb)
