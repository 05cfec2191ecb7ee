"""Run a :class:`~pyrun.runtime.plan.Plan`: clone the child stage and talk
to it over the sync socket until it is created (blocked on the exec fifo).

The child reports failures as (step index, errno); :class:`StepError` names
the step in words.  Everything here is safe to call from a multi-threaded
process: after clone only C runs in the child (native/container.c).
"""
import errno
import os
import _signal as signal
import _socket
import struct

from pyrun import trace
from pyrun._native import ffi, lib
from pyrun.linux import CLONE_NEWTIME
from pyrun.runtime.plan import high_fd

_MSG = struct.Struct("iiiiq")
# Steps that wait for the parent or fork a stage that reports to it.
_WAITS = (lib.PR_OP_SYNC, lib.PR_OP_WAIT_START, lib.PR_OP_FORK)
# CLONE_NEWTIME does not fit in the flags of clone(2).
_NO_VM_FLAGS = CLONE_NEWTIME
_STATE_CAP = 1 << 16


def _kill_reap(pidfd):
    """SIGKILL and reap our child ``pidfd`` (already gone: no error)."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    except ChildProcessError:
        pass


class StepError(OSError):
    """A step of the child stage failed.  ``errno`` is the kernel's;
    ``step`` describes what was being done (e.g. ``mount proc on /proc``)."""

    def __init__(self, err, step, phase="", kind=None):
        self.step = step
        self.phase = phase
        reason = os.strerror(err)
        if kind == lib.PR_OP_HOOK:
            # The child stage reports a hook's failure with these two.
            reason = {errno.ECHILD: "it failed (exit status not 0, or it could not be run)",
                      errno.ETIMEDOUT: "it timed out"}.get(err, reason)
        elif kind == lib.PR_OP_MOUNT and err == errno.ELOOP and step.startswith(("mount proc",
                                                                                  "mount sysfs")):
            reason = ("the destination in the rootfs is a symlink; proc and sysfs are only "
                      "mounted on an ordinary directory (as runc: CVE-2019-19921)")
        super().__init__(err, f"{step}: {reason}")

    def __str__(self):
        return self.strerror


class _Keep:
    """Holds the cffi objects the plan's pointers refer to."""

    def __init__(self):
        self.refs = []

    def str(self, s):
        if s is None:
            return ffi.NULL
        b = ffi.new("char[]", s if isinstance(s, bytes) else os.fsencode(s))
        self.refs.append(b)
        return b

    def strv(self, items):
        if items is None:
            return ffi.NULL
        cs = [self.str(x) for x in items]
        arr = ffi.new("char *[]", cs + [ffi.NULL])
        self.refs.append(arr)
        return arr


def _build(plan, sync_fd, close_fds, trace_fd):
    keep = _Keep()
    ops = ffi.new("struct pr_op[]", len(plan.ops))
    keep.refs.append(ops)
    for c, op in zip(ops, plan.ops):
        c.kind = op.kind
        c.fd = op.fd
        c.flags = op.flags
        c.flags2 = op.flags2
        c.flags3 = op.flags3
        c.n1 = op.n1
        c.n2 = op.n2
        c.n3 = op.n3
        c.s1 = keep.str(op.s1)
        c.s2 = keep.str(op.s2)
        c.s3 = keep.str(op.s3)
        c.s4 = keep.str(op.s4)
        c.argv = keep.strv(op.argv)
        c.envp = keep.strv(op.envp)
        if op.ids is not None:
            ids = ffi.new("uint32_t[]", op.ids or [0])
            keep.refs.append(ids)
            c.ids = ids
        if op.caps is not None:
            caps = ffi.new("struct pr_caps *", op.caps)
            keep.refs.append(caps)
            c.caps = caps
    p = ffi.new("struct pr_plan *")
    keep.refs.append(p)
    p.nops = len(plan.ops)
    p.ops = ops
    p.sync_fd = sync_fd
    p.close_fds = list(close_fds) + [-1] * (2 - len(close_fds))
    p.trace_fd = trace_fd
    p.root_fd = -1
    bufs = {name: ffi.new("char[]", size) for name, size in
            (("state", _STATE_CAP), ("exec_path", 4096), ("path_buf", 4096),
             ("path_buf2", 4096), ("name_buf", 4096), ("link_buf", 4096),
             ("parent_buf", 4096))}
    keep.refs.extend(bufs.values())
    p.state = bufs["state"]
    p.state_cap = _STATE_CAP
    p.exec_path = bufs["exec_path"]
    p.path_buf = bufs["path_buf"]
    p.path_buf2 = bufs["path_buf2"]
    p.name_buf = bufs["name_buf"]
    p.link_buf = bufs["link_buf"]
    p.parent_buf = bufs["parent_buf"]
    return p, keep


class Child:
    """The cloned child stage, from the parent's side."""

    def __init__(self, plan, on_sync, low_fd=3, trace_fd=-1, until_exec=False, lock_fd=-1):
        """``until_exec``: the plan ends in execve with no exec fifo (exec);
        the sync socket closing without an error message means the execve
        happened.  ``lock_fd``: a lock of the caller's that the child must
        not hold (closed first thing in the child)."""
        self.plan = plan
        self.until_exec = until_exec
        self.on_sync = on_sync
        self.pid = None
        self.pidfd = -1
        # The kernel writes the child's pidfd here during the clone, so a
        # KeyboardInterrupt that lands before spawn() has stored the pid
        # still finds the child to kill (see kill()).
        self._box = ffi.new("int *", -1)
        self._stage1 = None
        parent, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        self.sock = parent
        self._child_fd = high_fd(child.detach(), low_fd)
        os.set_inheritable(self._child_fd, False)
        self._cplan, self._keep = _build(plan, self._child_fd, (parent.fileno(), lock_fd),
                                         trace_fd)

    def spawn(self):
        """Clone the child and drive it to READY (or, ``until_exec``, to
        its execve).  Returns the init pid.  Raises StepError (after
        reaping the child) if a step fails.

        A plan in which the child never waits for us (no sync, no exec
        fifo, no second stage, not traced) is spawned posix_spawn's way:
        the child shares our memory until its execve (CLONE_VM |
        CLONE_VFORK), which spares copying the interpreter's page tables
        (about 0.8 ms for 20 MB); this call returns once it has exec'd or
        failed.  As the dumpable flag belongs to the shared memory, the
        calling process is non-dumpable from then on (PR_SET_DUMPABLE 0,
        see native/container.c)."""
        tr = trace.current()
        t0 = tr.now() if tr is not None else 0
        try:
            pid = lib.pr_spawn(self._cplan, self.plan.clone_flags, self._box, self._share_vm(tr),
                               self.plan.cgroup_fd)
            err = ffi.errno if pid < 0 else 0
            self._own()
            if pid > 0:
                self.pid = pid
        finally:
            os.close(self._child_fd)
        if tr is not None:
            from pyrun.linux import CLONE_INTO_CGROUP, CLONE_PIDFD
            from pyrun.trace.steps import clone_flags
            flags = self.plan.clone_flags | CLONE_PIDFD
            into = ""
            if self.plan.cgroup_fd >= 0:
                flags |= CLONE_INTO_CGROUP
                into = f", cgroup={os.readlink(f'/proc/self/fd/{self.plan.cgroup_fd}')}"
            tr.call("namespaces", f"clone3({clone_flags(flags)}, exit_signal=SIGCHLD{into})",
                    f"{pid} (the child's pid on the host)", err, t0)
        if pid < 0:
            raise StepError(err, f"clone {self.plan.clone_flags:#x}", "namespaces")
        try:
            self._converse()
        except BaseException:
            self.kill()
            raise
        return self.pid

    def _own(self):
        if self.pidfd < 0 and self._box[0] >= 0:
            self.pidfd, self._box[0] = self._box[0], -1

    def _share_vm(self, tr):
        if not self.until_exec or tr is not None or self.plan.clone_flags & _NO_VM_FLAGS:
            return 0
        return 0 if any(o.kind in _WAITS for o in self.plan.ops) else 1

    def _converse(self):
        fork_at = next((i for i, o in enumerate(self.plan.ops) if o.kind == lib.PR_OP_FORK), None)
        forked = False
        pending = None
        while True:
            data = self.sock.recv(_MSG.size)
            if not data:
                if self.until_exec and self.pid is not None:
                    return
                status = self._reap_any()
                raise StepError(errno.EPIPE,
                                f"the container init exited during create (status {status})")
            kind, op, err, _, value = _MSG.unpack(data)
            if kind == lib.PR_MSG_SYNC:
                if fork_at is not None and op > fork_at and not forked:
                    # The second stage can reach its sync before the first
                    # stage has reported its pid: acting now would, e.g.,
                    # put the first stage into the cgroup and leave the
                    # real process outside.  Answer once the pid is known.
                    pending = value
                    continue
                self._answer(value)
            elif kind == lib.PR_MSG_PID:
                # Second stage: the first one reported the init and exits.
                first = self.pid
                os.waitpid(first, 0)
                new = os.pidfd_open(value)
                old, self.pid, self.pidfd = self.pidfd, value, new
                os.close(old)
                forked = True
                if pending is not None:
                    self._answer(pending)
                    pending = None
            elif kind == lib.PR_MSG_ERROR:
                self._reap_any()
                step = self.plan.ops[op] if op < len(self.plan.ops) else None
                raise StepError(err, step.what if step else "the child stage",
                                step.phase if step else "", step.kind if step else None)
            elif kind == lib.PR_MSG_READY:
                return

    def _answer(self, sync):
        payload = self.on_sync(sync, self.pid) or b""
        self.sock.send(_MSG.pack(lib.PR_MSG_GO, 0, 0, 0, len(payload)) + payload)

    def _reap_any(self):
        try:
            _, status = os.waitpid(self.pid, 0)
            return status
        except ChildProcessError:
            return None

    def kill(self):
        """Kill and reap the child, through its pidfd (a failed create must
        leave no process; a pid could have been recycled); then close.

        Also a second stage we were interrupted before hearing of: it is
        our child too (CLONE_PARENT), and as its zombie is ours to reap,
        the container's init, which waits for every process of its pid
        namespace when it exits, would otherwise never finish (a test hung
        so: a KeyboardInterrupt during a Sandbox.exec, then close())."""
        self._own()
        for attempt in (0, 1):
            # Before and after the first stage is gone: it may report the
            # second one as it dies.
            second = self._unheard_second_stage()
            if second is not None:
                _kill_reap(second)
                os.close(second)
            if attempt == 0 and self.pidfd >= 0:
                _kill_reap(self.pidfd)
        self.close()

    def _unheard_second_stage(self):
        """A pidfd of a second stage whose PR_MSG_PID is still unread."""
        if self.sock.fileno() < 0:
            return None
        while True:
            try:
                data = self.sock.recv(_MSG.size, _socket.MSG_DONTWAIT)
            except OSError:
                return None
            if not data:
                return None
            kind, _, _, _, value = _MSG.unpack(data)
            if kind == lib.PR_MSG_PID:
                try:
                    return os.pidfd_open(value)
                except OSError:
                    return None

    def close(self):
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.sock.close()

    def exec_result(self):
        """After ``start``: wait for the init's execve.  Returns when the
        sync socket closes (execve succeeded); raises StepError if a step
        after the start failed (a startContainer hook, seccomp, execve)."""
        data = self.sock.recv(_MSG.size)
        if not data:
            return
        kind, op, err, _, _ = _MSG.unpack(data)
        if kind == lib.PR_MSG_ERROR:
            step = self.plan.ops[op] if op < len(self.plan.ops) else None
            raise StepError(err, step.what if step else "the child stage", step.phase if step else "",
                            step.kind if step else None)
