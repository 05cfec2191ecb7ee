"""Containers made from images, and their tasks, without a daemon: what
``pyrunctl containers``, ``tasks`` and ``run`` do (containerd's container
and task services, on the same store the daemon will use).

A *container* is a metadata record (image, spec, runtime, snapshot key)
plus an active snapshot of the image's top chainID.  Its *task* is the
running process: the snapshot mounted at ``<state>/bundles/<ns>/<id>/rootfs``,
a bundle with config.json next to it, and a container of the chosen
runtime (state in ``<state>/tasks/<ns>``).  A detached task runs under a
monitor (:mod:`pyrun.runtime.monitor`) that records its exit status, so
the next call sees it stopped with its exit code.  Tenant namespaces keep
everything apart: records, snapshots, bundles and runtime state.

A container on a CNI network (``net="cni:NAME"``) is attached between the
runtime's create and start and detached when its task is deleted
(:mod:`pyrun.runtime.cninet`; the result is kept on the record).
"""
import os
import _signal  # not signal: its enum import costs 7 ms

from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyrun.fsutil import remove_tree
from pyrun.jsonio import dumps
from pyrun.runtime import backend as backends
from pyrun.runtime import monitor


class Service:
    """Containers and tasks of one tenant ``namespace`` (``db``: a
    :class:`pyrun.metadata.DB`; ``state``: the runtime state root;
    ``cni``: a :class:`pyrun.runtime.cninet.Settings`, or a callable
    that makes one on the first use of CNI (the module costs tens of ms
    of imports), default ones if None)."""

    def __init__(self, db, namespace, state="/run/pyrunctl", cni=None):
        self.db = db
        self._cni = cni
        self.ns = namespace
        self.state = os.path.abspath(state)
        self.records = db.containers(namespace)

    # ---- paths and helpers ----

    def bundle(self, cid):
        return os.path.join(self.state, "bundles", self.ns, cid)

    def runtime(self, c):
        return backends.for_name(c.runtime.get("name", ""), os.path.join(self.state, "tasks", self.ns))

    def _snapshotter(self, c):
        return self.db.snapshotter(self.ns, c.snapshotter)

    # ---- containers ----

    def create(self, cid, image, *, snapshotter="overlayfs", runtime="pyrun", platform=None,
               labels=None, **spec_options):
        """Create container ``cid`` from ``image`` (a name in this
        namespace); ``spec_options`` are :func:`pyrun.oci.imagespec.
        image_spec`'s.  Raises NotFound (image), AlreadyExists (id),
        InvalidArgument (options, or an image without a command).  A failure
        leaves no record, snapshot or bundle."""
        from pyrun.images.store import ImageStore
        from pyrun.metadata import Container
        from pyrun.metadata.containers import validate_id
        from pyrun.mount import mount_all, unmount_all
        from pyrun.oci.imagespec import image_spec

        validate_id(cid)  # before it names a snapshot and a directory
        try:
            self.records.get(cid)
            raise AlreadyExists(f"container {cid!r} already exists in namespace {self.ns!r}")
        except NotFound:
            pass
        backends.for_name(runtime, self.state)  # a bad --runtime fails before any work
        extensions = self._new_net_extension(spec_options.get("net"))
        images = ImageStore(self.db, self.ns)
        image = self._image_name(images, image)
        config = images.config(image, platform)
        from pyrun.registry.manifest import host_platform, parse_platform, platform_matches
        want = parse_platform(platform) if platform else host_platform()
        if not platform_matches(want, config.platform):
            raise InvalidArgument(f"image {image!r} is for {config.platform}, not {want}: it "
                                  "cannot run here" + ("" if platform else
                                                       " (this host's platform)"))
        sn = self.db.snapshotter(self.ns, snapshotter)
        from pyrun.images.unpack import chain_ids
        chain = chain_ids(config.diff_ids)[-1] if config.diff_ids else ""
        try:
            sn.stat(chain)  # unpacked already: no need to load the unpacker
        except NotFound:
            chain = images.unpack(image, snapshotter, platform)
        bundle = self.bundle(cid)
        rootfs = os.path.join(bundle, "rootfs")
        made = []
        try:
            try:
                mounts = sn.prepare(cid, chain, labels={"containerd.io/gc.root": "container"})
            except AlreadyExists:
                raise AlreadyExists(f"container {cid!r} already exists in namespace {self.ns!r} "
                                    "(or is being created: its snapshot exists)") from None
            made.append("snapshot")
            os.makedirs(rootfs, exist_ok=True)
            made.append("bundle")
            user = spec_options.get("user") or config.user
            if user and user != "0" and user != "root":
                # Names (and a uid's group) come from the image's own
                # /etc/passwd: look through a temporary mount.
                mount_all(mounts, rootfs)
            try:
                spec = image_spec(cid, self.ns, config, rootfs,
                                  etc_dir=os.path.join(bundle, "etc"), **spec_options)
            finally:
                unmount_all(rootfs)
            c = Container(cid, image=image, runtime={"name": runtime, "options": {}}, spec=spec,
                          snapshotter=snapshotter, snapshot_key=cid, labels=dict(labels or {}),
                          extensions=extensions)
            return self.records.create(c)
        except BaseException:
            if "bundle" in made:
                remove_tree(bundle)
            if "snapshot" in made:
                sn.remove(cid)
            raise

    def _image_name(self, images, name):
        """The stored name of image ``name``: as given, or normalised
        (``busybox`` -> ``docker.io/library/busybox:latest``)."""
        from pyrun.registry.reference import parse_reference
        try:
            return images.get(name).name
        except NotFound:
            pass
        try:
            return images.get(str(parse_reference(name))).name
        except (NotFound, InvalidArgument):
            raise NotFound(f"image {name!r}: not found in namespace {self.ns!r} "
                           "(pull or import it first)") from None

    def get(self, cid):
        try:
            return self.records.get(cid)
        except NotFound:
            raise NotFound(f"container {cid!r}: not found in namespace {self.ns!r}") from None

    def list(self, filters=()):
        return self.records.list(filters)

    def remove(self, cid, force=False):
        """Remove container ``cid``: refuses while its task runs unless
        ``force`` (then kills and deletes it).  Removes the snapshot, the
        bundle and the record."""
        c = self.get(cid)
        status = self.task_status(cid)
        if status["status"] in ("running", "created", "paused"):
            if not force:
                raise FailedPrecondition(f"container {cid!r}: its task is {status['status']}; "
                                         "stop it first or use --force")
        if status["status"] != "none":
            self.delete_task(cid, force=True)
        self._detach_net(cid)  # a detach that failed before is retried
        try:
            self._snapshotter(c).remove(c.snapshot_key)
        except NotFound:
            pass  # removed behind our back (snapshots rm): the record still goes
        remove_tree(self.bundle(cid))
        self.records.delete(cid)

    def set_labels(self, cid, labels):
        c = self.get(cid)
        merged = dict(c.labels)
        for k, v in labels.items():
            if v:
                merged[k] = v
            else:
                merged.pop(k, None)
        import dataclasses
        return self.records.update(dataclasses.replace(c, labels=merged), ["labels"])

    # ---- CNI networks (pyrun.runtime.cninet) ----

    def _cni_settings(self):
        from pyrun.runtime import cninet
        if callable(self._cni):
            self._cni = self._cni()
        return self._cni or cninet.Settings()

    def _new_net_extension(self, net):
        from pyrun.oci.imagespec import cni_network
        name = cni_network(net)
        if name is None:
            return {}
        from pyrun.runtime import cninet
        return {cninet.EXTENSION: cninet.new_extension(self._cni_settings(), name)}

    def _net_hook(self, c, record):
        """The on_created hook attaching ``c`` to its CNI network (None if
        it has none); ``record``: also store the result (only in this
        process, never in the monitor)."""
        from pyrun.runtime import cninet
        if cninet.EXTENSION not in c.extensions:
            return None
        settings = self._cni_settings()

        def attach(pid):
            cninet.attach(settings, c, pid)
            if record:
                self._record_net_result(c)
        return attach

    def _update_net(self, c, **changes):
        import dataclasses
        from pyrun.runtime import cninet
        ext = {k: v for k, v in {**c.extensions[cninet.EXTENSION], **changes}.items()
               if v is not None}
        self.records.update(dataclasses.replace(
            c, extensions={**c.extensions, cninet.EXTENSION: ext}), ["extensions"])

    def _record_net_result(self, c):
        from pyrun.runtime import cninet
        if cninet.EXTENSION in c.extensions:
            self._update_net(c, result=cninet.cached_result(self._cni_settings(), c))

    def _detach_net(self, cid):
        """Detach ``cid`` from its CNI network if it is attached (its
        namespace is gone by now: the plugins get a stand-in)."""
        from pyrun.runtime import cninet
        c = self.get(cid)
        ext = c.extensions.get(cninet.EXTENSION)
        if ext and "result" in ext:
            cninet.detach(self._cni_settings(), c)
            self._update_net(c, result=None)

    # ---- tasks ----

    def _prepare_task(self, c):
        from pyrun.mount import mount_all
        bundle = self.bundle(c.id)
        rootfs = os.path.join(bundle, "rootfs")
        os.makedirs(rootfs, exist_ok=True)
        if not os.path.ismount(rootfs):
            mount_all(self._snapshotter(c).mounts(c.snapshot_key), rootfs)
        with open(os.path.join(bundle, "config.json"), "w") as f:
            f.write(dumps(c.spec))
        return bundle

    def _unmount(self, cid):
        from pyrun.mount import unmount_all
        unmount_all(os.path.join(self.bundle(cid), "rootfs"))

    def start(self, cid, detach=True):
        """Start ``cid``'s task.  Detached: under a monitor, output to the
        task's log; returns the init pid.  Otherwise the caller's stdio is
        the container's and this returns the exit status when it ends (the
        task is then deleted).  Raises FailedPrecondition if a task exists."""
        c = self.get(cid)
        status = self.task_status(cid)
        if status["status"] in ("running", "created", "paused"):
            raise FailedPrecondition(f"container {cid!r}: a task is already {status['status']}")
        if status["status"] == "stopped":
            self.delete_task(cid)
        bundle = self._prepare_task(c)
        rt = self.runtime(c)
        try:
            if detach:
                if c.spec.get("process", {}).get("terminal"):
                    raise InvalidArgument("a detached task cannot have a terminal (attach is not "
                                          "supported yet): drop -t or -d")
                pid = monitor.start_detached(rt, cid, bundle, bundle, self.log_path(cid),
                                             on_created=self._net_hook(c, record=False))
                self._record_net_result(c)
                return pid
            return self._foreground(rt, cid, bundle, self._net_hook(c, record=True))
        except BaseException:
            if detach:
                self._unmount(cid)
            raise
        finally:
            if not detach:
                self._cleanup_task(rt, cid)

    def _foreground(self, rt, cid, bundle, on_created):
        if isinstance(rt, backends.InProcess):
            from pyrun.runtime.run import run
            return run(rt.store, cid, bundle, keep=True, on_created=on_created)
        if on_created is not None:
            raise InvalidArgument(f"runtime {rt.path}: a container on a CNI network runs in the "
                                  "foreground with the pyrun runtime only; use -d")
        import subprocess
        r = subprocess.run([rt.path, "--root", rt.root, "run", "--bundle", bundle, cid])
        return r.returncode

    def _cleanup_task(self, rt, cid):
        try:
            rt.delete(cid, force=True)
        except NotFound:
            pass
        self._unmount(cid)
        self._prune_cgroup_parents()
        self._detach_net(cid)

    def _prune_cgroup_parents(self, root="/sys/fs/cgroup"):
        """Remove the ``/pyrun/<namespace>`` and ``/pyrun`` groups once no
        container uses them (the container's own group is gone with its
        task; rmdir refuses a group that still has children or tasks)."""
        try:
            hierarchies = [e.path for e in os.scandir(root) if e.is_dir() and not e.is_symlink()]
        except OSError:
            return
        for h in hierarchies + [root]:
            for group in (os.path.join(h, "pyrun", self.ns), os.path.join(h, "pyrun")):
                try:
                    os.rmdir(group)
                except OSError:
                    break

    def log_path(self, cid):
        return os.path.join(self.bundle(cid), "log")

    def task_status(self, cid):
        """``{"status": none|created|running|paused|stopped, "pid", "exit_status"}``."""
        c = self.get(cid)
        try:
            st = self.runtime(c).state(cid)
        except NotFound:
            return {"status": "none", "pid": 0, "exit_status": None}
        rec = monitor.exit_status(self.bundle(cid), settled=True) if st["status"] == "stopped" else None
        return {"status": st["status"], "pid": st.get("pid", 0),
                "exit_status": rec["status"] if rec else None}

    def delete_task(self, cid, force=False):
        """Delete ``cid``'s task (``force``: kill a live one).  Returns its
        exit status if known."""
        c = self.get(cid)
        rt = self.runtime(c)
        status = self.task_status(cid)
        if status["status"] == "none":
            raise NotFound(f"container {cid!r} has no task")
        rt.delete(cid, force=force)
        self._unmount(cid)
        self._prune_cgroup_parents()
        self._detach_net(cid)
        return status["exit_status"]

    def kill(self, cid, sig=_signal.SIGTERM, all=False):
        c = self.get(cid)
        self.runtime(c).kill(cid, sig, all=all)

    def wait(self, cid, poll=0.05):
        """Wait for ``cid``'s task to stop; returns its exit status, or
        None when it is not known (its monitor died).  NotFound when the
        container has no task and none ran (ctr: "no running task")."""
        import time
        while True:
            s = self.task_status(cid)
            if s["status"] in ("stopped", "none"):
                rec = monitor.exit_status(self.bundle(cid))
                if rec is None and s["status"] == "none":
                    raise NotFound(f"container {cid!r} has no task")
                return rec["status"] if rec else s["exit_status"]
            time.sleep(poll)

    def exec(self, cid, process, stdio=None, console_fd=None, exec_id=None):
        """Start ``process`` (a config.json process dict) in ``cid``'s
        task; returns its pid.  ``exec_id``: its name, unique among the
        task's exec processes still alive (ctr's --exec-id): AlreadyExists
        otherwise; :meth:`exec_done` forgets it.  Raises NotFound,
        InvalidArgument, FailedPrecondition and the runtime's errors."""
        from pyrun.runtime.state import proc_start_time
        c = self.get(cid)
        record = None
        if exec_id is not None:
            from pyrun.metadata.containers import validate_id
            validate_id(exec_id, "exec id")
            record = os.path.join(self.bundle(cid), "execs", exec_id)
            try:
                with open(record) as f:
                    pid, start = (int(x) for x in f.read().split())
                if proc_start_time(pid) == start:
                    raise AlreadyExists(f"exec {exec_id!r}: already exists in container {cid!r}")
            except (FileNotFoundError, ValueError):
                pass
        pid = self.runtime(c).exec(cid, process, stdio=stdio, console_fd=console_fd)
        if record is not None:
            from pyrun.fsutil import atomic_write
            os.makedirs(os.path.dirname(record), exist_ok=True)
            atomic_write(record, f"{pid} {proc_start_time(pid) or 0}".encode(), 0o644)
        return pid

    def exec_done(self, cid, exec_id):
        """Forget exec ``exec_id`` of ``cid`` (its process has ended)."""
        try:
            os.unlink(os.path.join(self.bundle(cid), "execs", exec_id))
        except FileNotFoundError:
            pass

    def pids(self, cid):
        c = self.get(cid)
        return self.runtime(c).pids(cid)

    def pause(self, cid):
        self.runtime(self.get(cid)).pause(cid)

    def resume(self, cid):
        self.runtime(self.get(cid)).resume(cid)

    def metrics(self, cid):
        return self.runtime(self.get(cid)).stats(cid)
