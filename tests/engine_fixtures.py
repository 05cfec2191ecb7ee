"""containerd 1.6 and podman 4.3 (Debian's packages) with pyrun as their
OCI runtime, each on private sockets, roots and config files in a temp dir.

The runtime both engines are given is a small wrapper script that appends
its argv to ``argv.log`` and execs the venv's ``pyrun``: the log shows what
containerd-shim-runc-v2 and conmon actually call, and goes into assertion
messages.  Containers' cgroups go below a ``/pyrun-test-...`` parent
(ctr ``--cgroup``, podman ``--cgroup-parent``) that the fixtures remove.
"""
import contextlib
import os
import signal
import subprocess
import time

import pytest

from busybox_image import write_oci_archive
from cgroup_helpers import hierarchies, new_parent_name, remove_test_parent
from pyrun.fsutil import remove_tree
from runtime_helpers import PYRUN

IMAGE = "docker.io/library/pyrun-busybox:latest"
# Directories the engines make whatever their config says (containerd
# 1.6: the shims' sockets; podman 4.3: the network backend's run dir),
# innermost first.  The fixtures remove the ones they made, if empty.
_CONTAINERD_FIXED_DIRS = ("/run/containerd/s", "/run/containerd")
_PODMAN_FIXED_DIRS = ("/run/containers/networks", "/run/containers")


def _missing(dirs):
    return [d for d in dirs if not os.path.exists(d)]


def _remove_if_empty(dirs):
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            pass


def _write_wrapper(workdir):
    path = os.path.join(workdir, "pyrun-logged")
    log = os.path.join(workdir, "argv.log")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\necho "$*" >> {log}\nexec {PYRUN} "$@"\n')
    os.chmod(path, 0o755)
    return path, log


class Engine:
    """What the tests need of one engine: its command, the runtime wrapper
    and its argv log, the cgroup parent for containers.  ``runtime_flag``:
    the engine takes the runtime as a global flag (podman's --runtime);
    ctr takes it per ``run`` (--runc-binary)."""

    def __init__(self, workdir, cmd, env=None, runtime_flag=None):
        self.workdir = workdir
        self.cmd = cmd
        self.env = env
        self.runtime, self.argv_log = _write_wrapper(workdir)
        self.global_args = [runtime_flag, self.runtime] if runtime_flag else []
        self.cgroup_parent = new_parent_name()

    def argv(self, args, wrapped=True):
        return [*self.cmd, *(self.global_args if wrapped else []), *args]

    def __call__(self, *args, check=True, timeout=60, input=None, wrapped=True):
        """Run the engine; ``wrapped=False``: without the global runtime flag."""
        argv = self.argv(args, wrapped)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env,
                           input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr}\n"
                                 f"{self.calls()}")
        return r

    def calls(self):
        """The runtime calls so far, one argv string each."""
        try:
            with open(self.argv_log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def in_pty(self, *args, timeout=60):
        """Run the engine command with a terminal as its stdio (script(1))."""
        command = " ".join(_quote(a) for a in self.argv(args))
        return subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                              text=True, timeout=timeout, env=self.env, stdin=subprocess.DEVNULL)

    def remove_cgroups(self):
        remove_test_parent(hierarchies(), self.cgroup_parent)


def _quote(arg):
    return "'" + arg.replace("'", "'\\''") + "'"


@pytest.fixture(scope="session")
def busybox_archive(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("image") / "busybox-oci.tar")
    write_oci_archive(path, IMAGE)
    return path


def _wait_for(what, check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stop(proc, timeout=20):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def containerd(tmp_path_factory, busybox_archive):
    """The containerd engine described at ``containerd_engine``."""
    with containerd_engine(str(tmp_path_factory.mktemp("containerd")), busybox_archive) as ctr:
        yield ctr


@contextlib.contextmanager
def containerd_engine(workdir, busybox_archive):
    """A containerd with its own root, state, opt dir and sockets; the
    busybox image imported.  ``ctr(...)`` runs ctr against it.
    ``workdir``: an existing, empty dir, removed on exit."""
    sock = os.path.join(workdir, "containerd.sock")
    config = os.path.join(workdir, "config.toml")
    with open(config, "w") as f:
        f.write(f'''version = 2
root = "{workdir}/root"
state = "{workdir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{workdir}/opt"
''')
    log = open(os.path.join(workdir, "containerd.log"), "w")
    proc = subprocess.Popen(["containerd", "--config", config], stdout=log, stderr=log,
                            start_new_session=True)
    ctr = Engine(workdir, ["ctr", "--address", sock])
    ctr.runc_root = os.path.join(workdir, "runc")
    ctr.fifo_dir = os.path.join(workdir, "fifo")  # ctr's default: /run/containerd/fifo
    made = _missing(_CONTAINERD_FIXED_DIRS)
    try:
        _wait_for("containerd's socket", lambda: proc.poll() is not None or (
            os.path.exists(sock) and ctr("version", check=False).returncode == 0))
        assert proc.poll() is None, f"containerd exited: {open(log.name).read()}"
        ctr("images", "import", busybox_archive)
        yield ctr
    finally:
        for task in ctr("tasks", "ls", "-q", check=False).stdout.split():
            ctr("tasks", "kill", "-a", "-s", "SIGKILL", task, check=False)
            ctr("tasks", "delete", "-f", task, check=False)
        for c in ctr("containers", "ls", "-q", check=False).stdout.split():
            ctr("containers", "delete", c, check=False)
        _stop(proc)
        log.close()
        ctr.remove_cgroups()
        remove_tree(workdir)
        _remove_if_empty(made)


@pytest.fixture(scope="module")
def podman(tmp_path_factory, busybox_archive):
    """The podman engine described at ``podman_engine``."""
    with podman_engine(str(tmp_path_factory.mktemp("podman")), busybox_archive) as pm:
        yield pm


@contextlib.contextmanager
def podman_engine(workdir, busybox_archive):
    """podman with containers.conf, storage.conf and registries.conf of
    its own (CONTAINERS_CONF, ...): vfs storage, file events and file
    locks in the temp dir, cgroupfs, no network, and the ulimits this host
    allows (CAP_SYS_RESOURCE is missing here).  The busybox image loaded.
    The runtime's state is pyrun's default --root: podman's exit command
    (``podman container cleanup``) does not pass --runtime-flag on.
    ``workdir``: an existing, empty dir, removed on exit."""
    files = {
        "containers.conf": f'''[containers]
default_ulimits = ["nofile=1024:20000", "nproc=32768:32768"]
netns = "none"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{workdir}/events.log"
lock_type = "file"
tmp_dir = "{workdir}/tmp"
image_copy_tmp_dir = "{workdir}/tmp"
static_dir = "{workdir}/storage/libpod"
volume_path = "{workdir}/storage/volumes"
[network]
network_config_dir = "{workdir}/net"
''',
        "storage.conf": f'''[storage]
driver = "vfs"
graphroot = "{workdir}/storage"
runroot = "{workdir}/run"
''',
        "registries.conf": "unqualified-search-registries = []\n",
    }
    for name, text in files.items():
        with open(os.path.join(workdir, name), "w") as f:
            f.write(text)
    env = dict(os.environ, CONTAINERS_CONF=os.path.join(workdir, "containers.conf"),
               CONTAINERS_STORAGE_CONF=os.path.join(workdir, "storage.conf"),
               CONTAINERS_REGISTRIES_CONF=os.path.join(workdir, "registries.conf"))
    env["TMPDIR"] = os.path.join(workdir, "tmp")  # podman update's resources file
    os.makedirs(env["TMPDIR"])
    env.pop("XDG_RUNTIME_DIR", None)
    pm = Engine(workdir, ["podman"], env=env, runtime_flag="--runtime")
    made = _missing(_PODMAN_FIXED_DIRS)
    try:
        pm("load", "-i", busybox_archive)
        yield pm
    finally:
        pm("pod", "rm", "--all", "--force", check=False)
        pm("rm", "--all", "--force", "--time", "0", check=False)
        pm.remove_cgroups()
        remove_tree(workdir)
        _remove_if_empty(made)

