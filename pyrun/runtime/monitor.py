"""A detached task's monitor: the small process that stays the parent of
a container started in the background, so that its exit status is not
lost when the command that started it exits (containerd's shim, podman's
conmon).

:func:`start_detached` forks the monitor, which becomes a session leader
and a child subreaper, creates and starts the container with its stdout
and stderr going to a log file, reports the init's pid to the caller, and
then waits: when the init exits it writes ``exit.json`` (``{"status": N,
"exited_at": RFC 3339}``, N being the exit code or 128+signal) next to
the log, atomically, and leaves.  It holds an flock on ``monitor.lock``
for its whole life, so a reader that sees the init gone can wait for the
record instead of racing the monitor.  It needs a single-threaded caller (it
forks and runs Python in the child), which the CLI is.
"""
import fcntl
import os

from pyrun.errdefs import FailedPrecondition
from pyrun.fsutil import atomic_write
from pyrun.jsonio import dumps, loads

EXIT_FILE = "exit.json"
LOCK_FILE = "monitor.lock"  # held by the monitor while it lives


def _status_code(status):
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 255


def record_exit(task_dir, code):
    from pyrun.runtime.state import now_rfc3339
    atomic_write(os.path.join(task_dir, EXIT_FILE),
                 dumps({"status": code, "exited_at": now_rfc3339()}).encode(), 0o644)


def exit_status(task_dir, settled=False):
    """The recorded ``{"status", "exited_at"}`` of a task, or None.
    ``settled``: the task is known to have stopped; if its monitor has not
    written the record yet (it reaps the init, then writes), wait for the
    monitor to finish, or to be found dead (its lock is free)."""
    path = os.path.join(task_dir, EXIT_FILE)
    try:
        with open(path, "rb") as f:
            return loads(f.read())
    except FileNotFoundError:
        if not settled:
            return None
    try:
        fd = os.open(os.path.join(task_dir, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)
    return exit_status(task_dir)


def start_detached(backend, cid, bundle, task_dir, log_path, stdin_path="/dev/null",
                   on_created=None):
    """Create and start ``cid`` from ``bundle`` on ``backend`` (see
    :mod:`pyrun.runtime.backend`) under a monitor process.  Returns the
    init's pid.  ``on_created(pid)`` runs in the monitor between create and
    start (it must not use the caller's open files or database); what it
    raises deletes the container and is reported here.  Raises FailedPrecondition with the create/start error if
    the container could not start (nothing is left running)."""
    try:
        os.unlink(os.path.join(task_dir, EXIT_FILE))
    except FileNotFoundError:
        pass
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the monitor
        code = 1
        try:
            os.close(r)
            code = _monitor(backend, cid, bundle, task_dir, log_path, stdin_path, w, on_created)
        except BaseException as e:  # report to the caller, never return into its code
            try:
                os.write(w, b"E" + f"{e}".encode(errors="replace")[:4000])
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)  # the monitor forks once more and this one exits at once
    msg = b"".join(chunks)
    if msg.startswith(b"P"):
        return int(msg[1:])
    raise FailedPrecondition(msg[1:].decode(errors="replace") or "the task monitor died")


def _monitor(backend, cid, bundle, task_dir, log_path, stdin_path, report, on_created):
    from pyrun import linux

    # Leave the caller: a grandchild in its own session, not the caller's
    # child, so the caller's waitpid never sees the container.
    if os.fork() != 0:
        return 0
    os.setsid()
    linux.set_child_subreaper()
    lock = os.open(os.path.join(task_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)  # until this process ends
    stdin = os.open(stdin_path, os.O_RDONLY | os.O_CLOEXEC)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    init = backend.create(cid, bundle, stdio=(stdin, log, log))
    os.close(stdin)
    os.close(log)
    try:
        if on_created is not None:
            on_created(init)
        backend.start(cid)
    except BaseException:
        backend.delete(cid, force=True)
        raise
    os.write(report, b"P%d" % init)
    os.close(report)
    code = 255
    while True:  # reap everything re-parented to us; stop with the init
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == init:
            code = _status_code(status)
            break
    record_exit(task_dir, code)
    return 0
