"""``run`` and ``Sandbox``: untrusted programs in throw-away containers,
through the in-process runtime's plan and child stage, safe to call from
many threads at once.

A sandbox's container lives in memory only: no bundle, no state directory.
Every call has a unique container id and its own cgroup; whatever happens
in the caller (an exception, KeyboardInterrupt, a cancelled task), the
``finally`` blocks kill every process of the container, reap, and remove
the cgroup (and an image's view snapshot).
"""
import os
import select
import signal
import tempfile
import threading
import time
import weakref

from pyrun.cgroups import fs
from pyrun.errdefs import FailedPrecondition, PyrunError
from pyrun.fsutil import remove_tree
from pyrun.runtime import plan as planner
from pyrun.runtime.spawn import Child, StepError
from pyrun.runtime.state import proc_start_time
from pyrun.sandbox import config as C
from pyrun.sandbox.image import ImageSource
from pyrun.sandbox.pump import Capture, pump


class Cancelled(PyrunError):
    """The command was killed because its caller cancelled it (an asyncio
    task awaiting :func:`pyrun.run_async` or ``AsyncSandbox.exec``)."""


class Result:
    """What a sandboxed command did.

    ``exit_code``: its exit status (None if a signal ended it); ``signal``:
    the signal number that ended it, or None; ``stdout``/``stderr``: bytes,
    at most ``max_output`` each; ``truncated``: output was dropped;
    ``oom_killed``: the kernel's OOM killer killed a process of the
    sandbox; ``timed_out``: the timeout ran out and everything was killed;
    ``wall_time``: seconds from its execve to its exit; ``cpu_time``: seconds of CPU
    used by all its processes (cgroup cpuacct.usage / cpu.stat
    usage_usec); ``peak_memory``: bytes, the group's high-water mark
    (memory.max_usage_in_bytes on v1, memory.peak on v2; for
    :meth:`Sandbox.exec` on cgroup v2, the sandbox's since it started).
    """
    __slots__ = ("exit_code", "signal", "stdout", "stderr", "oom_killed", "timed_out",
                 "truncated", "wall_time", "cpu_time", "peak_memory")

    def __init__(self, exit_code, signal, stdout, stderr, oom_killed, timed_out, truncated,
                 wall_time, cpu_time, peak_memory):
        for k, v in zip(self.__slots__, (exit_code, signal, stdout, stderr, oom_killed, timed_out,
                                         truncated, wall_time, cpu_time, peak_memory)):
            object.__setattr__(self, k, v)

    def __setattr__(self, k, v):
        raise AttributeError("Result is read-only")

    @property
    def ok(self):
        """Exit code 0, in time, without an OOM kill."""
        return self.exit_code == 0 and not self.timed_out and not self.oom_killed

    def __repr__(self):
        return "Result(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


_counter = iter(range(1 << 62))
_counter_lock = threading.Lock()


def _new_id():
    with _counter_lock:
        n = next(_counter)
    return f"sandbox-{os.getpid()}-{n}-{os.urandom(3).hex()}"


def _status(status):
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


def _reap(pid):
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None, signal.SIGKILL
    return _status(status)


class _Container:
    """One container of a sandbox, kept in memory: no bundle and no state
    directory, its init spawned straight to its execve (the runtime's plan
    and child stage, pyrun.runtime.plan and .spawn).  ``close()`` undoes
    all of it, whatever was reached, also after a KeyboardInterrupt that
    lands anywhere in between."""

    def __init__(self, opts, argv, env, cwd, stdio, scratch, need_freezer, pdeathsig=0):
        self.cid = _new_id()
        self.dir = None
        self.cg = None
        self.cg_made = False
        self.child = None
        self.reaped = False
        self.start_time = self.pidns = None  # set by Sandbox, which execs
        self.image = None
        self.lifeline = -1
        try:
            rootfs = opts.rootfs
            if isinstance(rootfs, ImageSource):
                # The view snapshot needs a mount point of its own.
                self.dir = tempfile.mkdtemp(prefix="pyrun-sandbox-", dir=scratch)
                path = os.path.join(self.dir, "rootfs")
                os.mkdir(path, 0o755)
                self.image = rootfs
                rootfs.mount(self.cid, path)
                rootfs = path
            self.spec = C.spec_for(opts, self.cid, argv, env, cwd, rootfs)
            self.cg = C.make_cgroup(opts, self.cid, need_freezer)
            self.cg.create()
            self.cg_made = True
            # Limits first: the init is born into capped groups.
            self.cg.set_resources()
            self._launch(rootfs, stdio, pdeathsig)
        except BaseException as e:
            _close_noting(self, e)
            raise

    def _launch(self, rootfs, stdio, pdeathsig):
        """Spawn the init straight to its execve: no exec fifo, no hooks,
        no wait for us, so the child stage runs in our memory until then
        (see pyrun.runtime.spawn).  Raises StepError naming the step that
        failed (the child is reaped)."""
        fds = []
        try:
            join = planner.high_join(self.cg.open_join(), 3, fds)
            stdio = planner.move_stdio(stdio, 3, fds)
            plan = planner.build(self.spec, planner.Inputs(
                bundle=rootfs, rootfs=rootfs, fifo_fd=None, container_id=self.cid,
                cgroup_join=join, stdio=stdio, pdeathsig=pdeathsig, make_cwd=False))
            self.child = Child(plan, None, until_exec=True)
            self.child.spawn()
        finally:
            for fd in fds:
                os.close(fd)

    @property
    def pid(self):
        return self.child.pid

    @property
    def pidfd(self):
        return self.child.pidfd

    def kill_all(self):
        try:
            self.cg.kill_all(signal.SIGKILL)
        except Exception:
            # Killing the init of the pid namespace takes everyone with it.
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close(self):
        try:
            if self.child is not None:
                if not self.reaped and self.child.pid is not None:
                    try:
                        self.kill_all()
                    except ProcessLookupError:
                        pass
                    self._await_init()
                self.child.kill()  # kills (by pidfd), reaps, closes
                self.child = None
            if self.lifeline >= 0:
                os.close(self.lifeline)
                self.lifeline = -1
            if self.cg is not None:
                self.cg.destroy()
                if not self.cg_made:
                    # What an interrupted create() made but had no time
                    # to record: the groups are this sandbox's alone.
                    m = self.cg.manager
                    for key, path in m.paths.items():
                        fs.remove_dir(m.hierarchy_root(key), path)
                self.cg = None
            if self.image is not None:
                self.image.unmount(self.cid, os.path.join(self.dir, "rootfs"))
                self.image = None
        finally:
            if self.dir is not None:
                # Only the emptied mount point is there: rmdir, which can
                # never cross a mount; the careful walk if something else is.
                try:
                    os.rmdir(os.path.join(self.dir, "rootfs"))
                    os.rmdir(self.dir)
                except FileNotFoundError:
                    pass
                except OSError:
                    remove_tree(self.dir)
                self.dir = None

    def _await_init(self):
        """Wait until the (killed) init has exited.  Its exit waits for
        every process of its pid namespace to be reaped, and the commands
        of Sandbox.exec are our children (the runtime's second stage is
        cloned with CLONE_PARENT): one that an interrupted exec left
        unreaped is reaped here, or the wait would never end (a test hung
        so)."""
        if self.pidns is None or self.pidfd < 0:
            return
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        me = str(os.getpid())
        while not poller.poll(50):
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                try:
                    with open(f"/proc/{name}/stat") as f:
                        state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
                    if state == "Z" and ppid == me and \
                            os.readlink(f"/proc/{name}/ns/pid") == self.pidns:
                        os.waitpid(int(name), os.WNOHANG)
                except (OSError, ValueError):
                    pass


def _close_noting(ctr, exc):
    """``ctr.close()`` while ``exc`` is on its way: a failure to clean up
    is added to it as a note, not raised in its place."""
    try:
        ctr.close()
    except Exception as e:
        exc.add_note(f"and removing the sandbox failed: {e}")


def _pipes():
    """Three pipes: (ours, theirs) for stdin, stdout, stderr."""
    fds = []
    try:
        for _ in range(3):
            fds.append(os.pipe2(os.O_CLOEXEC))
    except BaseException:
        for r, w in fds:
            os.close(r)
            os.close(w)
        raise
    (in_r, in_w), (out_r, out_w), (err_r, err_w) = fds
    return (in_w, out_r, err_r), (in_r, out_w, err_w)


def _close(fds):
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _check_stdin(stdin):
    if isinstance(stdin, str):
        try:
            return stdin.encode()
        except UnicodeEncodeError as e:
            from pyrun.errdefs import InvalidArgument
            raise InvalidArgument(f"stdin: a str must encode as UTF-8 ({e.reason} at "
                                  f"{e.start}); pass bytes") from None
    if not isinstance(stdin, (bytes, bytearray, memoryview)):
        from pyrun.errdefs import InvalidArgument
        raise InvalidArgument(f"stdin: expected bytes or str, got {type(stdin).__name__}")
    return bytes(stdin)


def run(argv, *, rootfs=None, bundle=None, image=None, db=None, namespace="default",
        snapshotter="overlayfs", stdin=b"", env=None, cwd="/",
        user=C.NOBODY, timeout=C.DEFAULT_TIMEOUT, memory=C.DEFAULT_MEMORY, cpus=None,
        pids=C.DEFAULT_PIDS, network=False, mounts=(), writable=(),
        max_output=C.DEFAULT_MAX_OUTPUT, tmp_size=C.DEFAULT_TMP_SIZE,
        cgroup_parent=C.DEFAULT_CGROUP_PARENT, scratch=None, _cancel_fd=-1):
    """Run ``argv`` in a new sandbox and return its :class:`Result`.

    The root filesystem is one of ``rootfs`` (a directory, used read-only
    in place), ``bundle`` (an OCI bundle: only its ``root.path`` is used)
    or ``image`` (a name in the image store ``db``, a
    :class:`pyrun.metadata.DB`, tenant ``namespace``: a read-only view
    snapshot from ``snapshotter`` is mounted for the sandbox and removed
    after).
    ``stdin``: bytes (or str, UTF-8) fed to the process.  ``env``: a dict
    or ``KEY=VALUE`` list added to a default PATH/HOME/LANG.  ``cwd``:
    absolute path inside.  ``user``: (uid, gid), default nobody.
    ``timeout``: seconds of wall time (None: no limit) after which every
    process of the sandbox is killed.  ``memory``: bytes (no swap);
    ``cpus``: CPUs' worth of time (1.5 = 150 ms per 100 ms); ``pids``: at
    most this many processes and threads; None lifts a limit.
    ``network``: True shares the host's network (default: a new namespace
    with only ``lo``).  ``mounts``: :class:`Bind` or (source, target)
    host paths, read-only unless ``Bind(..., writable=True)``.
    ``writable``: paths inside that get a tmpfs of ``tmp_size`` bytes (as
    /tmp always does).  ``max_output``: bytes kept per stream; the rest is
    read and dropped.  ``cgroup_parent``: the absolute cgroup under which
    the sandbox's group is made (default /pyrun).  ``scratch``: where
    an ``image``'s view snapshot is mounted (default: the temp dir);
    nothing else of a sandbox is on disk.

    Raises InvalidArgument (naming the bad argument), NotFound (rootfs,
    mount source, image), and what the runtime raises
    when the container cannot be made (StepError naming the step, e.g. a
    program that does not exist in the rootfs).  Nothing is left behind
    in any case.
    """
    argv = C.check_argv(argv)
    env = C.check_env(env)
    cwd = C.check_cwd(cwd)
    timeout = C.check_timeout(timeout)
    max_output = C.check_max_output(max_output)
    data = _check_stdin(stdin)
    opts = C.Options(C.resolve_rootfs(rootfs, bundle, image, db, namespace, snapshotter),
                     user=user, memory=memory, cpus=cpus, pids=pids, network=network, mounts=mounts, writable=writable,
                     cgroup_parent=cgroup_parent, tmp_size=tmp_size)
    ours, theirs = _pipes()
    ctr = None
    try:
        try:
            # The calling thread waits in here until the end: if it dies
            # with its process (SIGKILL), so does the sandbox.
            ctr = _Container(opts, argv, env, cwd, theirs, scratch, need_freezer=False,
                             pdeathsig=signal.SIGKILL)
        finally:
            _close(theirs)
        # The init has exec'd: its clock starts now.
        t0 = time.monotonic()
        out, err = Capture(max_output), Capture(max_output)
        deadline = None if timeout is None else t0 + timeout
        in_fd, out_fd, err_fd = ours
        ours = ()  # pump closes them
        reason = pump(ctr.pidfd, in_fd, data, out_fd, err_fd, out, err, deadline, ctr.kill_all,
                      _cancel_fd)
        code, sig = _reap(ctr.pid)
        ctr.reaped = True
        wall = time.monotonic() - t0
        cpu, peak, ooms = C.read_usage(ctr.cg)
        if reason == "cancelled":
            raise Cancelled()
    except BaseException as e:
        _close(ours)
        if ctr is not None:
            _close_noting(ctr, e)
        raise
    ctr.close()
    return Result(code, sig, out.value(), err.value(), ooms > 0, reason == "timeout",
                  out.truncated or err.truncated, wall, cpu / 1e9, peak)


class Sandbox:
    """A long-lived sandbox: one container whose init idles (``cat``,
    reading a pipe that only this process can write to, so that the
    sandbox ends with this process however it ends), in which
    :meth:`exec` runs commands one at a time (calls from several threads
    queue on a lock).  Use it as a context manager, or call :meth:`close`.

    Takes the container-level arguments of :func:`run` (rootfs/bundle/
    image with db/namespace/snapshotter, user, memory, cpus, pids, network, mounts, writable, tmp_size,
    cgroup_parent, scratch); limits apply to the sandbox as a whole.  The
    idle init does not reap orphans: processes that commands leave behind
    in the background stay zombies (counted against ``pids``) until
    :meth:`close`.

    Raises what :func:`run` raises for bad arguments or a failed create,
    and FailedPrecondition when the root filesystem has no ``cat``.
    """

    def __init__(self, *, rootfs=None, bundle=None, image=None, db=None, namespace="default",
                 snapshotter="overlayfs", user=C.NOBODY,
                 memory=C.DEFAULT_MEMORY, cpus=None, pids=C.DEFAULT_PIDS, network=False,
                 mounts=(), writable=(), tmp_size=C.DEFAULT_TMP_SIZE,
                 cgroup_parent=C.DEFAULT_CGROUP_PARENT, scratch=None):
        self._opts = C.Options(C.resolve_rootfs(rootfs, bundle, image, db, namespace, snapshotter),
                               user=user, memory=memory,
                               cpus=cpus, pids=pids, network=network, mounts=mounts,
                               writable=writable, cgroup_parent=cgroup_parent, tmp_size=tmp_size)
        self._lock = threading.Lock()
        self._ctr = None
        # The idle init is `cat` reading a pipe whose only write end we
        # hold: when this process ends, even by SIGKILL, it reads EOF and
        # exits, and with it every process of the sandbox (the threads
        # that could carry a PR_SET_PDEATHSIG come and go).
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            self._ctr = _Container(self._opts, ["cat"], C.check_env(None), "/",
                                   (r, null, null), scratch, need_freezer=True)
            self._ctr.lifeline, w = w, -1
            # What exec (and, for strays, close) need of the init.
            ctr = self._ctr
            ctr.start_time = proc_start_time(ctr.pid)
            ctr.pidns = os.readlink(f"/proc/{ctr.pid}/ns/pid")
        except StepError as e:
            if e.step.startswith("find 'cat'"):
                raise FailedPrecondition(f"a Sandbox needs `cat` in its root filesystem for its "
                                         f"idle init: {e}") from None
            raise
        except BaseException:
            if self._ctr is not None:
                self._ctr.close()
                self._ctr = None
            raise
        finally:
            _close((null, r, w))
        # A sandbox dropped without close() is still removed: when it is
        # collected, or at interpreter exit.
        self._finalizer = weakref.finalize(self, self._ctr.close)

    @property
    def id(self):
        """The container id (unique per process and call)."""
        return self._ctr.cid if self._ctr else None

    def exec(self, argv, *, stdin=b"", env=None, cwd="/", user=None, timeout=C.DEFAULT_TIMEOUT,
             max_output=C.DEFAULT_MAX_OUTPUT, _cancel_fd=-1):
        """Run ``argv`` in the sandbox (runtime ``exec``: it joins the
        sandbox's namespaces and cgroup, with the same seccomp profile,
        capabilities and no_new_privs) and return its :class:`Result`.
        Arguments as for :func:`run`; ``user`` defaults to the sandbox's.
        On timeout every process of the sandbox but its init is killed.

        Raises InvalidArgument, FailedPrecondition (closed, or its init
        died: e.g. killed by the OOM killer), StepError.
        """
        from pyrun.runtime.exec import exec_in

        argv = C.check_argv(argv)
        env = C.check_env(env)
        cwd = C.check_cwd(cwd)
        timeout = C.check_timeout(timeout)
        max_output = C.check_max_output(max_output)
        u = self._opts.user if user is None else C.check_user(user)
        data = _check_stdin(stdin)
        with self._lock:
            ctr = self._ctr
            if ctr is None:
                raise FailedPrecondition("the sandbox is closed")
            cpu0, _, ooms0 = C.read_usage(ctr.cg)
            self._reset_peak(ctr)
            process = C.process_for(u, argv, env, cwd)
            ours, theirs = _pipes()
            try:
                try:
                    pid = exec_in(ctr.cid, ctr.pid, ctr.start_time, ctr.spec, process,
                                  stdio=theirs, cgroup_manager=ctr.cg)
                except OSError:  # StepError too
                    if self._ctr is None:
                        raise FailedPrecondition("the sandbox was closed while the command "
                                                 "started") from None
                    raise
                finally:
                    _close(theirs)
                pidfd = os.pidfd_open(pid)
                try:
                    out, err = Capture(max_output), Capture(max_output)
                    t0 = time.monotonic()
                    deadline = None if timeout is None else t0 + timeout
                    in_fd, out_fd, err_fd = ours
                    ours = ()
                    try:
                        reason = pump(pidfd, in_fd, data, out_fd, err_fd, out, err, deadline,
                                      lambda: self._kill_all_but_init(ctr, pid), _cancel_fd)
                    except BaseException:
                        self._kill_all_but_init(ctr, pid)
                        raise
                    finally:
                        code, sig = _reap(pid)
                    wall = time.monotonic() - t0
                finally:
                    os.close(pidfd)
            finally:
                _close(ours)
            cpu, peak, ooms = C.read_usage(ctr.cg)
        if reason == "cancelled":
            raise Cancelled()
        return Result(code, sig, out.value(), err.value(), ooms > ooms0, reason == "timeout",
                      out.truncated or err.truncated, wall, (cpu - cpu0) / 1e9, peak)

    @staticmethod
    def _reset_peak(ctr):
        b = ctr.cg.manager.backend("memory")
        if b is not None and b[0] == "v1":
            b[1].write("memory.max_usage_in_bytes", 0)

    @staticmethod
    def _kill_all_but_init(ctr, pid):
        """SIGKILL the command ``pid`` (our child) and, with the group
        frozen so that no fork escapes, every process but the init."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        m = ctr.cg.manager
        m.freeze()
        try:
            for other in m.pids():
                if other != ctr.pid:
                    try:
                        os.kill(other, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        finally:
            m.thaw()

    def close(self):
        """Kill everything in the sandbox and remove it; safe to call
        twice, and from another thread while :meth:`exec` runs (which then
        returns the command killed by SIGKILL)."""
        # Closed from now on for every exec not yet under way; one that
        # runs holds its own reference, and ends with the kill below.
        ctr, self._ctr = self._ctr, None
        if ctr is None:
            return
        if ctr.cg is not None:
            try:
                ctr.kill_all()  # now, not after the running command
            except Exception:
                pass  # the finalizer kills again, or says why it cannot
        with self._lock:  # the running exec has returned
            self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
