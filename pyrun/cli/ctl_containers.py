"""``pyrunctl run``, ``containers …`` and ``tasks …``: containers made
from images and their tasks (ctr's commands of the same names), over
:class:`pyrun.runtime.tasks.Service`."""
import os
import sys

from pyrun.cli.ctl import table
from pyrun.cli.ctl_storage import _fmt_labels, _labels
from pyrun.errdefs import InvalidArgument
from pyrun.jsonio import loads


def _service(ctx):
    from pyrun.runtime.tasks import Service
    return Service(ctx.db, ctx.namespace, ctx.args.state, cni=lambda: _cni_settings(ctx.args))


def _cni_settings(args):
    """CNI settings from the global flags; the results cache is
    ``<root>/cni``."""
    from pyrun.runtime.cninet import Settings
    host = None
    if args.cni_host_netns:
        from pyrun.cli.ctl_network import netns_path
        host = netns_path(args.cni_host_netns)
    return Settings(conf_dir=args.cni_conf_dir, cache_dir=os.path.join(args.root, "cni"),
                    host_netns=host)


def _mount_spec(text):
    """ctr's ``--mount type=bind,src=/a,dst=/b,options=rbind:ro``."""
    fields = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise InvalidArgument(f"--mount {text!r}: {part!r} is not KEY=VALUE")
        fields[key.strip()] = value
    src = fields.get("src") or fields.get("source")
    dst = fields.get("dst") or fields.get("destination") or fields.get("target")
    kind = fields.get("type", "bind")
    if not dst or not dst.startswith("/"):
        raise InvalidArgument(f"--mount {text!r}: needs an absolute dst")
    options = [o for o in fields.get("options", "").split(":") if o]
    if kind == "bind":
        if not src or not os.path.exists(src):
            raise InvalidArgument(f"--mount {text!r}: bind source {src!r} does not exist")
        src = os.path.abspath(src)
        if "bind" not in options and "rbind" not in options:
            options.append("rbind")
    return {"destination": dst, "type": kind, "source": src or kind, "options": options}


def _spec_options(args):
    env = list(args.env)
    if args.env_file:
        try:
            with open(args.env_file) as f:
                env = [line.strip() for line in f
                       if line.strip() and not line.lstrip().startswith("#")] + env
        except OSError as e:
            raise InvalidArgument(f"--env-file {args.env_file}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise InvalidArgument(f"--env-file {args.env_file}: not UTF-8 text (byte "
                                  f"{e.start})") from None
    memory = None
    if args.memory is not None:
        from pyrun.runtime.update import ram_in_bytes
        try:
            memory = ram_in_bytes(args.memory)
        except (InvalidArgument, ValueError):
            raise InvalidArgument(f"--memory {args.memory!r}: expected bytes or a size such as 64m") from None
    return dict(args=args.args or None, env=env, cwd=args.cwd, user=args.user,
                hostname=args.hostname, tty=args.tty, read_only=args.read_only, net=args.net,
                mounts=[_mount_spec(m) for m in args.mount], memory=memory, cpus=args.cpus,
                pids_limit=args.pids_limit, cap_add=args.cap_add, cap_drop=args.cap_drop,
                privileged=args.privileged)


def _create(ctx):
    a = ctx.args
    return _service(ctx).create(a.id, a.image, snapshotter=a.snapshotter, runtime=a.runtime,
                                platform=a.platform, labels=_labels(a.label),
                                **_spec_options(a))


def run(ctx):
    a = ctx.args
    svc = _service(ctx)
    _create(ctx)
    try:
        if a.detach:
            pid = svc.start(a.id, detach=True)
            print(pid)
            return 0
        return svc.start(a.id, detach=False)
    finally:
        if a.rm and not a.detach:
            svc.remove(a.id, force=True)


def containers_create(ctx):
    _create(ctx)


def containers_ls(ctx):
    cs = _service(ctx).list()
    if ctx.args.quiet:
        print("\n".join(c.id for c in cs))
        return
    table([("CONTAINER", "IMAGE", "RUNTIME")]
          + [(c.id, c.image or "-", c.runtime.get("name", "")) for c in cs])


def containers_info(ctx):
    import json  # here: the module costs every pyrunctl call 5 ms of imports
    c = _service(ctx).get(ctx.args.id)
    print(json.dumps({"ID": c.id, "Labels": c.labels, "Image": c.image, "Runtime": c.runtime,
                      "SnapshotKey": c.snapshot_key, "Snapshotter": c.snapshotter,
                      "CreatedAt": c.created_at.isoformat(), "UpdatedAt": c.updated_at.isoformat(),
                      "Extensions": c.extensions, "Spec": c.spec}, indent=4))


def containers_label(ctx):
    labels = {}
    for item in ctx.args.labels:
        key, _, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"label {item!r}: expected KEY=VALUE")
        labels[key] = value
    c = _service(ctx).set_labels(ctx.args.id, labels)
    print(_fmt_labels(c.labels))


def containers_rm(ctx):
    if not ctx.args.ids:
        raise InvalidArgument("containers rm: name at least one container")
    svc = _service(ctx)
    for cid in ctx.args.ids:
        svc.remove(cid, force=ctx.args.force)


def tasks_start(ctx):
    svc = _service(ctx)
    if ctx.args.detach:
        print(svc.start(ctx.args.id, detach=True))
        return 0
    return svc.start(ctx.args.id, detach=False)


def tasks_ls(ctx):
    svc = _service(ctx)
    rows = [("TASK", "PID", "STATUS")]
    for c in svc.list():
        s = svc.task_status(c.id)
        if s["status"] == "none":
            continue
        status = s["status"].upper()
        if s["status"] == "stopped" and s["exit_status"] is not None:
            status += f" (exit {s['exit_status']})"
        rows.append((c.id, s["pid"], status))
    if ctx.args.quiet:
        print("\n".join(r[0] for r in rows[1:]))
        return
    table(rows)


def tasks_kill(ctx):
    from pyrun.runtime.kill import parse_signal
    _service(ctx).kill(ctx.args.id, parse_signal(ctx.args.signal), all=ctx.args.all)


def tasks_rm(ctx):
    svc = _service(ctx)
    for cid in ctx.args.ids:
        status = svc.delete_task(cid, force=ctx.args.force)
        print(f"{cid}" + (f" (exit {status})" if status is not None else ""))


def tasks_ps(ctx):
    pids = _service(ctx).pids(ctx.args.id)
    table([("PID",)] + [(p,) for p in pids])


def tasks_exec(ctx):
    a = ctx.args
    svc = _service(ctx)
    c = svc.get(a.id)
    if not a.args:
        raise InvalidArgument("tasks exec: give a command")
    if not a.exec_id:
        raise InvalidArgument("tasks exec: --exec-id is required (as in ctr)")
    proc = dict(c.spec.get("process") or {})
    proc["args"] = list(a.args)
    proc["terminal"] = bool(a.tty)
    env = {e.split("=", 1)[0]: e for e in list(proc.get("env") or []) + list(a.env)}
    proc["env"] = list(env.values())
    if a.cwd:
        proc["cwd"] = a.cwd
    if a.user:
        from pyrun.oci.imagespec import resolve_user
        uid, gid, extra = resolve_user(os.path.join(svc.bundle(a.id), "rootfs"), a.user)
        proc["user"] = {"uid": uid, "gid": gid, "additionalGids": extra}
    from pyrun.runtime import foreground
    relay = theirs = None
    if a.tty:
        if a.detach:
            raise InvalidArgument("tasks exec: -t with -d needs attach, which is not supported yet")
        relay, theirs = foreground.console_pair()
    try:
        pid = svc.exec(a.id, proc, console_fd=theirs.fileno() if theirs else None,
                       exec_id=a.exec_id)
    finally:
        if theirs is not None:
            theirs.close()
    if a.detach:
        print(pid)
        return 0
    try:
        master = foreground.receive_master(relay) if relay is not None else None
        with foreground.forwarding(pid):
            return foreground.wait(pid, master)
    finally:
        svc.exec_done(a.id, a.exec_id)


def tasks_pause(ctx):
    _service(ctx).pause(ctx.args.id)


def tasks_resume(ctx):
    _service(ctx).resume(ctx.args.id)


def tasks_metrics(ctx):
    import json
    print(json.dumps(_service(ctx).metrics(ctx.args.id), indent=4))


def tasks_wait(ctx):
    status = _service(ctx).wait(ctx.args.id)
    if status is None:
        # Its monitor died, or it ran in the foreground of a pyrunctl that
        # was killed: containerd's UnknownExitStatus, never success.
        print("unknown")
        return 255
    print(status)
    return status


def tasks_logs(ctx):
    svc = _service(ctx)
    svc.get(ctx.args.id)
    try:
        with open(svc.log_path(ctx.args.id), "rb") as f:
            sys.stdout.buffer.write(f.read())
    except FileNotFoundError:
        pass


def tasks_attach(ctx):
    """Follow a detached task's output (stdout and stderr, from its log)
    until it stops; exits with its status.  Its stdin stays /dev/null: a
    detached task has no terminal or stdin to attach to."""
    import time
    svc = _service(ctx)
    svc.get(ctx.args.id)
    out = sys.stdout.buffer
    pos = 0
    while True:
        status = svc.task_status(ctx.args.id)
        try:
            with open(svc.log_path(ctx.args.id), "rb") as f:
                f.seek(pos)
                data = f.read()
        except FileNotFoundError:
            data = b""
        if data:
            out.write(data)
            out.flush()
            pos += len(data)
        if status["status"] in ("stopped", "none"):
            code = svc.wait(ctx.args.id)
            return code if isinstance(code, int) else 255  # unknown: never success
        time.sleep(0.1)


def images_from_dir(ctx):
    from pyrun.images.build import DEFAULT_PATH, image_from_dir

    cmd = ctx.args.cmd
    if cmd.startswith("["):
        try:
            cmd = loads(cmd)
        except ValueError:
            raise InvalidArgument(f"--cmd {ctx.args.cmd!r}: not a JSON array") from None
    else:
        cmd = [cmd]
    env = list(ctx.args.env) or [DEFAULT_PATH]
    image = image_from_dir(ctx.db, ctx.namespace, ctx.args.name, ctx.args.dir, cmd=cmd, env=env)
    print(f"{image.name} {image.target['digest']}")
