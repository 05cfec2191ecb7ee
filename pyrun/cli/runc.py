"""``pyrun``: the runc-compatible command line.

Each verb parses its flags, calls one library function, and turns
exceptions into a message on stderr (and the ``--log`` file, as runc
writes it) and exit status 1, as runc does.  ``run`` exits with the
container's status (128+N for a signal).
"""
import os
import sys

from pyrun import __version__
from pyrun.errdefs import PyrunError

VERSION = f"pyrun version {__version__}\nspec: 1.2.0"


class _Log:
    def __init__(self, path, fmt):
        self.path = path
        self.fmt = fmt

    def error(self, msg):
        if self.path:
            if self.fmt == "json":
                from pyrun.jsonio import dumps
                from pyrun.runtime.state import now_rfc3339
                line = dumps({"level": "error", "msg": msg, "time": now_rfc3339()})
            else:
                line = f"pyrun: {msg}"
            try:
                with open(self.path, "a") as f:
                    f.write(line + "\n")
            except OSError:
                pass
        os.write(2, f"pyrun: {msg}\n".encode())


def main(argv=None):
    from pyrun.cli import runc_flags

    try:
        args = runc_flags.parse(sys.argv[1:] if argv is None else argv)
    except PyrunError as e:
        os.write(2, f"pyrun: {e}\n".encode())
        return 1
    if args.version:
        print(VERSION)
        return 0
    if args.help or args.verb is None:
        sys.stdout.write(runc_flags.usage(args.verb))
        return 0 if args.help else 1
    bad = _check_globals(args)
    if bad:
        os.write(2, f"pyrun: {bad}\n".encode())
        return 1
    log = _Log(args.log, args.log_format)
    if args.systemd_cgroup:
        log.error("--systemd-cgroup: systemd is not running on this host (PID 1 is not systemd)"
                  if not os.path.isdir("/run/systemd/system") else
                  "--systemd-cgroup: not supported by pyrun yet")
        return 1
    try:
        if args.trace or args.trace_format or os.environ.get("PYRUN_TRACE", "") not in ("", "0"):
            # Teaching mode (pyrun.trace); nothing of it is imported otherwise.
            from pyrun.trace import tracing
            from pyrun.trace.tracer import from_environ
            with tracing(from_environ(True, args.trace_format or None)):
                return VERBS[args.verb](args) or 0
        if args.debug:
            # --debug logs every kernel step (the teaching-mode trace) to
            # --log in --log-format, or to stderr without --log.
            from pyrun.trace import tracing
            from pyrun.trace.tracer import Tracer
            with tracing(Tracer(args.log_format, args.log or None)):
                return VERBS[args.verb](args) or 0
        return VERBS[args.verb](args) or 0
    except PyrunError as e:
        log.error(str(e))
        return _failed(args)
    except BrokenPipeError:
        return 0  # e.g. `| head`: the reader is gone
    except OSError as e:
        log.error(str(e))
        return _failed(args)
    except KeyboardInterrupt:
        return 130


def _failed(args):
    # runc's exec fails with 255, which no process status can be taken
    # for; every other verb with 1.
    return 255 if args.verb == "exec" else 1


def _check_globals(args):
    """runc refuses these before doing anything."""
    if not args.root:
        return "--root: must not be empty"
    if args.log_format not in ("text", "json"):
        return f"--log-format {args.log_format!r}: use text or json"
    if args.log:
        try:
            with open(args.log, "a"):
                pass
        except OSError as e:
            return f"--log {args.log}: {e.strerror}"
    if args.verb == "list" and args.format not in ("table", "json"):
        return f"list --format {args.format!r}: use table or json"
    if args.verb == "kill" and args.signal == "":
        return "kill: the signal must not be empty"
    return None


def _store(args):
    from pyrun.runtime.state import Store
    return Store(args.root)


# -- runc's cgroup verbs: pause, resume, ps, update, events ---------------

def cmd_pause(args):
    from pyrun.runtime.pause import pause
    pause(_store(args), args.id)


def cmd_resume(args):
    from pyrun.runtime.resume import resume
    resume(_store(args), args.id)


def cmd_ps(args):
    from pyrun.errdefs import InvalidArgument
    from pyrun.jsonio import dumps
    from pyrun.runtime import ps

    if args.format not in ("table", "json"):
        raise InvalidArgument(f"ps --format {args.format!r}: use table or json")
    pids = ps.pids(_store(args), args.id)
    if args.format == "json":
        print(dumps(pids))
    else:
        sys.stdout.write(ps.table(pids, args.ps_args))


def cmd_update(args):
    from pyrun.cli.runc_flags import UPDATE_FLAG_NAMES
    from pyrun.runtime import update

    if args.resources is not None:
        from pyrun.errdefs import InvalidArgument
        from pyrun.jsonio import loads
        where = "stdin" if args.resources == "-" else args.resources
        try:
            if args.resources == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(args.resources, "rb") as f:
                    data = f.read()
            resources = loads(data)
        except ValueError as e:
            raise InvalidArgument(f"update --resources {where}: not valid JSON: {e}") from None
        except OSError as e:
            raise InvalidArgument(f"update --resources {where}: {e.strerror}") from None
    else:
        given = {name: getattr(args, name.replace("-", "_")) for name in UPDATE_FLAG_NAMES}
        resources = update.resources_from_flags({k: v for k, v in given.items() if v is not None})
    update.update(_store(args), args.id, resources)


def cmd_events(args):
    from pyrun.jsonio import dumps
    from pyrun.runtime import events

    if args.stats:
        print(dumps(events.stats(_store(args), args.id)), flush=True)
        return
    if args.interval <= 0:
        from pyrun.errdefs import InvalidArgument
        raise InvalidArgument(f"events --interval: {args.interval} s is not a positive duration")
    for event in events.events(_store(args), args.id, args.interval):
        print(dumps(event), flush=True)


def cmd_spec(args):
    from pyrun.errdefs import AlreadyExists
    from pyrun.oci.default import default_spec

    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        raise AlreadyExists(f"{path} exists; remove it first")
    import json
    with open(path, "w") as f:
        json.dump(default_spec(args.rootless), f, indent="\t")
        f.write("\n")


def _create(args):
    from pyrun.runtime.create import create
    return create(_store(args), args.id, args.bundle, console_socket=args.console_socket,
                  pid_file=args.pid_file, no_pivot=args.no_pivot,
                  no_new_keyring=args.no_new_keyring, preserve_fds=args.preserve_fds)


def cmd_create(args):
    _create(args)


def cmd_run(args):
    from pyrun.runtime.run import run
    return run(_store(args), args.id, args.bundle, console_socket=args.console_socket,
               pid_file=args.pid_file, no_pivot=args.no_pivot,
               no_new_keyring=args.no_new_keyring, preserve_fds=args.preserve_fds,
               detach=args.detach, keep=args.keep)


def cmd_exec(args):
    from pyrun.errdefs import InvalidArgument
    from pyrun.runtime import foreground
    from pyrun.runtime.exec import exec_process, process_for_exec

    if args.apparmor:
        raise InvalidArgument("--apparmor: AppArmor is not enabled on this host")
    store = _store(args)
    process_json = None
    if args.process:
        from pyrun.jsonio import loads
        try:
            with open(args.process, "rb") as f:
                process_json = loads(f.read())
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"--process {args.process}: {e}") from None
    if args.pid_file and not os.path.isdir(os.path.dirname(os.path.abspath(args.pid_file))):
        # Before the process starts, not after (as runc).
        raise InvalidArgument(f"--pid-file {args.pid_file}: no such directory")
    if args.cwd and not args.cwd.startswith("/"):
        raise InvalidArgument(f"--cwd {args.cwd!r}: must be an absolute path")
    proc = process_for_exec(store.load(args.id), args.args, process_json=process_json,
                            env=args.env, cwd=args.cwd, user=args.user,
                            additional_gids=args.additional_gids, caps=args.cap,
                            no_new_privs=args.no_new_privs, tty=args.tty)
    relay = theirs = None
    if proc.terminal and args.console_socket is None:
        if args.detach:
            raise InvalidArgument("a detached exec with a terminal needs --console-socket")
        relay, theirs = foreground.console_pair()
    try:
        pid = exec_process(store, args.id, proc, console_socket=args.console_socket,
                           console_fd=theirs.fileno() if theirs else None,
                           pid_file=args.pid_file, preserve_fds=args.preserve_fds)
    finally:
        if theirs is not None:
            theirs.close()
    if args.detach:
        return 0
    master = foreground.receive_master(relay) if relay is not None else None
    with foreground.forwarding(pid):
        return foreground.wait(pid, master)


def cmd_start(args):
    from pyrun.runtime.start import start
    start(_store(args), args.id)


def cmd_state(args):
    import json
    st = _store(args).load(args.id)
    print(json.dumps(st.oci(), indent="  "))


def cmd_kill(args):
    from pyrun.runtime.kill import kill, parse_signal
    kill(_store(args), args.id, parse_signal(args.signal or "SIGTERM"), all=args.all)


def cmd_delete(args):
    from pyrun.errdefs import NotFound
    from pyrun.runtime.delete import delete
    try:
        delete(_store(args), args.id, force=args.force)
    except NotFound:
        if not args.force:
            raise


def cmd_list(args):
    states = _store(args).list()
    if args.quiet:
        for st in states:
            print(st.id)
    elif args.format == "json":
        from pyrun.jsonio import dumps
        print(dumps([st.oci() for st in states]))
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        for st in states:
            o = st.oci()
            rows.append((st.id, str(o["pid"]), o["status"], st.bundle, st.created, st.owner or "root"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_features(args):
    import json
    from pyrun.runtime.features import features
    print(json.dumps(features(), indent="    "))


VERBS = {
    "spec": cmd_spec, "create": cmd_create, "run": cmd_run, "exec": cmd_exec, "start": cmd_start,
    "state": cmd_state, "kill": cmd_kill, "delete": cmd_delete, "list": cmd_list,
    "features": cmd_features,
}

VERBS.update({"pause": cmd_pause, "resume": cmd_resume, "ps": cmd_ps, "update": cmd_update,
              "events": cmd_events})

if __name__ == "__main__":
    sys.exit(main())
