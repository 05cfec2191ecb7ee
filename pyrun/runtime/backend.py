"""The runtimes a container can run on: pyrun's own, in this process
(:class:`InProcess`), or any runc-compatible binary — runc, crun, or a
path — driven through its command line (:class:`Binary`).  Both give the
same small interface, used by :mod:`pyrun.runtime.monitor` and
``pyrunctl``: create, start, state, kill, delete, pids, pause, resume,
exec.  Status words and errors are runc's.
"""
import os

from pyrun.errdefs import FailedPrecondition, InvalidArgument, NotFound


def for_name(name, state_root):
    """``pyrun`` (or empty) -> :class:`InProcess`; ``runc``, ``crun`` or a
    path -> :class:`Binary`.  Raises InvalidArgument when no such binary
    exists."""
    if not name or name == "pyrun":
        return InProcess(state_root)
    import shutil  # only here: shutil and subprocess cost pyrunctl 8 ms of imports
    path = name if os.path.sep in name else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise InvalidArgument(f"--runtime {name!r}: no such executable")
    return Binary(path, os.path.join(state_root, "runtime-" + os.path.basename(path)))


class InProcess:
    """pyrun's runtime, run in this process (``pyrun.runtime``)."""

    name = "pyrun"

    def __init__(self, state_root):
        from pyrun.runtime.state import Store
        self.store = Store(state_root)

    def create(self, cid, bundle, stdio=None, console_fd=None):
        from pyrun.runtime.create import create
        return create(self.store, cid, bundle, stdio=stdio, console_fd=console_fd).pid

    def start(self, cid):
        from pyrun.runtime.start import start
        start(self.store, cid)

    def state(self, cid):
        """The runtime-spec state dict; NotFound."""
        return self.store.load(cid).oci()

    def kill(self, cid, sig, all=False):
        from pyrun.runtime.kill import kill
        kill(self.store, cid, sig, all=all)

    def delete(self, cid, force=False):
        from pyrun.runtime.delete import delete
        delete(self.store, cid, force=force)

    def pids(self, cid):
        from pyrun.runtime.ps import pids
        return pids(self.store, cid)

    def pause(self, cid):
        from pyrun.runtime.pause import pause
        pause(self.store, cid)

    def resume(self, cid):
        from pyrun.runtime.resume import resume
        resume(self.store, cid)

    def stats(self, cid):
        from pyrun.runtime.events import stats
        return stats(self.store, cid)["data"]

    def exec(self, cid, process, stdio=None, console_fd=None):
        """Start ``process`` (a dict, runtime-spec ``process``) in the
        container; returns its pid, a child of this process."""
        from pyrun.runtime.exec import exec_process, process_for_exec
        proc = process_for_exec(self.store.load(cid), process_json=process)
        return exec_process(self.store, cid, proc, stdio=stdio, console_fd=console_fd)


class Binary:
    """A runc-compatible runtime binary with its own ``--root``."""

    def __init__(self, path, root):
        self.path = path
        self.name = os.path.basename(path)
        self.root = root

    def _run(self, *args, stdio=None):
        """Run ``RUNTIME --root ROOT ARGS``.  With ``stdio`` (create, exec)
        the container inherits those fds, so errors are read from a
        ``--log`` file rather than a pipe the container would hold open."""
        import subprocess
        import tempfile
        with tempfile.NamedTemporaryFile(prefix="pyrun-runtime-log-") as log:
            cmd = [self.path, "--root", self.root, "--log", log.name, *args]
            if stdio is not None:
                r = subprocess.run(cmd, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
            else:
                r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
            if r.returncode == 0:
                return (r.stdout or b"").decode(errors="replace")
            err = ((r.stderr or b"") + log.read()).decode(errors="replace").strip()
        lowered = err.lower()
        if any(m in lowered for m in ("does not exist", "not found", "no such file")):
            raise NotFound(f"{self.name} {args[0]}: {err}")
        raise FailedPrecondition(f"{self.name} {args[0]} failed (exit {r.returncode}): {err}")

    def create(self, cid, bundle, stdio=None, console_fd=None):
        if console_fd is not None:
            raise InvalidArgument(f"a terminal with runtime {self.name} is not supported yet")
        pid_file = os.path.join(bundle, f"{self.name}.pid")
        self._run("create", "--bundle", bundle, "--pid-file", pid_file, cid, stdio=stdio)
        with open(pid_file) as f:
            return int(f.read().strip())

    def start(self, cid):
        self._run("start", cid)

    def state(self, cid):
        import json
        return json.loads(self._run("state", cid))

    def kill(self, cid, sig, all=False):
        self._run("kill", *(["--all"] if all else []), cid, str(sig))

    def delete(self, cid, force=False):
        self._run("delete", *(["--force"] if force else []), cid)

    def pids(self, cid):
        import json
        return json.loads(self._run("ps", "--format", "json", cid) or "[]")

    def pause(self, cid):
        self._run("pause", cid)

    def resume(self, cid):
        self._run("resume", cid)

    def stats(self, cid):
        import json
        return json.loads(self._run("events", "--stats", cid))["data"]

    def exec(self, cid, process, stdio=None, console_fd=None):
        import json
        import tempfile
        if console_fd is not None:
            raise InvalidArgument(f"a terminal with runtime {self.name} is not supported yet")
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(process, f)
            f.flush()
            pid_file = f.name + ".pid"
            self._run("exec", "--detach", "--pid-file", pid_file, "--process", f.name, cid,
                      stdio=stdio)
        try:
            with open(pid_file) as f:
                return int(f.read().strip())
        finally:
            os.unlink(pid_file)
