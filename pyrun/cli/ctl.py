"""``pyrunctl``: images, containers and tasks with tenant namespaces, in
ctr's shape; works without a daemon on the same store the daemon uses.

Each command parses its flags (:mod:`pyrun.cli.ctl_flags`), calls the
library through one handler, and turns errors into a message on stderr
and exit status 1, as ctr does.
"""
import importlib
import os
import sys
from collections.abc import Mapping

from pyrun import __version__
from pyrun.errdefs import PyrunError


class Context:
    """What handlers need: the parsed args, the tenant namespace, and the
    store opened on first use (``db``: :class:`pyrun.metadata.DB` with
    every built-in snapshotter under ``<root>/snapshots/<name>``)."""

    def __init__(self, args):
        self.args = args
        self.namespace = args.namespace
        self._db = None

    @property
    def db(self):
        if self._db is None:
            from pyrun.metadata import DB
            self._snapshotters = _Snapshotters(self.args.root)
            self._db = DB(self.args.root, self._snapshotters)
        return self._db

    def snapshotter(self):
        return self.db.snapshotter(self.namespace, self.args.snapshotter)

    def close(self):
        if self._db is not None:
            self._db.close()
            self._snapshotters.close()


class _Snapshotters(Mapping):
    """Every built-in snapshotter under ``<root>/snapshots/<name>``, each
    opened on first use: a command that touches one opens one database
    (GC, which walks them all, opens them all)."""

    def __init__(self, root):
        from pyrun.snapshots import registry
        self._registry = registry
        self._root = root
        self._open = {}

    def __getitem__(self, name):
        if name not in self._registry.BUILTINS:
            raise KeyError(name)
        if name not in self._open:
            self._open[name] = self._registry.new(name, os.path.join(self._root, "snapshots", name))
        return self._open[name]

    def __iter__(self):
        return iter(self._registry.BUILTINS)

    def __len__(self):
        return len(self._registry.BUILTINS)

    def close(self):
        for sn in self._open.values():
            sn.close()


def table(rows):
    """Print rows (first one the header) in aligned columns, as ctr does."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def main(argv=None):
    from pyrun.cli import ctl_flags

    try:
        args = ctl_flags.parse(sys.argv[1:] if argv is None else argv)
    except PyrunError as e:
        os.write(2, f"pyrunctl: {e}\n".encode())
        return 1
    if args.version:
        print(f"pyrunctl version {__version__}")
        return 0
    if args.help or args.verb is None:
        sys.stdout.write(ctl_flags.usage(args.verb))
        return 0 if args.help else 1
    words = args.verb.split()
    module = importlib.import_module(ctl_flags.HANDLERS.get(args.verb)
                                     or ctl_flags.HANDLERS[words[0]])
    handler = getattr(module, "_".join(words).replace("-", "_"))
    ctx = Context(args)
    try:
        if args.trace or args.trace_format or os.environ.get("PYRUN_TRACE", "") not in ("", "0"):
            from pyrun.trace import tracing
            from pyrun.trace.tracer import from_environ
            with tracing(from_environ(True, args.trace_format or None)):
                return handler(ctx) or 0
        return handler(ctx) or 0
    except PyrunError as e:
        os.write(2, f"pyrunctl: {e}\n".encode())
        return 1
    except BrokenPipeError:
        return 0  # e.g. `| head`: the reader is gone
    except OSError as e:
        os.write(2, f"pyrunctl: {e}\n".encode())
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
