"""The container lifecycle from outside: create, start, state, kill,
delete, exit codes, signals, the terminal, hooks and bad input."""
import array
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pyrun.fsutil import mounts_under
from runtime_helpers import PYRUN, Pyrun, make_bundle

pytestmark = pytest.mark.root


@pytest.fixture
def pyrun(tmp_path):
    p = Pyrun(tmp_path / "state")
    yield p
    p.cleanup()


@pytest.fixture
def bundle(tmp_path, busybox_rootfs):
    def make(args, **changes):
        path = tmp_path / "bundle"
        make_bundle(path, busybox_rootfs, args, **changes)
        return str(path)
    return make


def wait_status(pyrun, cid, status, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pyrun.state(cid)["status"] == status:
            return
        time.sleep(0.02)
    raise AssertionError(f"{cid} never became {status}: {pyrun.state(cid)}")


def test_create_start_state_kill_delete(pyrun, bundle):
    b = bundle(["sleep", "100"])
    pyrun("create", "-b", b, "c1")
    st = pyrun.state("c1")
    assert st["status"] == "created" and st["pid"] > 0 and st["bundle"] == b
    assert st["ociVersion"] and st["id"] == "c1"
    with open(f"/proc/{st['pid']}/cmdline", "rb") as f:
        assert b"sleep" not in f.read()     # the init has not exec'd yet
    pyrun("start", "c1")
    assert pyrun.state("c1")["status"] == "running"
    with open(f"/proc/{st['pid']}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == b"sleep"
    r = pyrun("start", "c1", check=False)
    assert r.returncode == 1 and "running" in r.stderr
    r = pyrun("delete", "c1", check=False)
    assert r.returncode == 1 and "running" in r.stderr
    pyrun("kill", "c1", "KILL")
    wait_status(pyrun, "c1", "stopped")
    r = pyrun("kill", "c1", check=False)
    assert r.returncode == 1 and "stopped" in r.stderr
    r = pyrun("start", "c1", check=False)
    assert r.returncode == 1 and "stopped" in r.stderr
    pyrun("delete", "c1")
    r = pyrun("state", "c1", check=False)
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert not os.path.exists(os.path.join(pyrun.root, "c1"))


def test_list_and_delete_force(pyrun, bundle):
    b = bundle(["sleep", "100"])
    pyrun("run", "-d", "-b", b, "c1")
    pyrun("create", "-b", b, "c2")
    assert pyrun("list", "-q").stdout.split() == ["c1", "c2"]
    rows = json.loads(pyrun("list", "--format", "json").stdout)
    assert [(r["id"], r["status"]) for r in rows] == [("c1", "running"), ("c2", "created")]
    pid = pyrun.state("c1")["pid"]
    pyrun("delete", "--force", "c1")
    pyrun("delete", "c2")       # a created container can be deleted
    assert pyrun("list", "-q").stdout.split() == []
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_exit_code_and_signal_status(pyrun, bundle):
    r = pyrun("run", "-b", bundle(["sh", "-c", "exit 7"]), "c1", check=False)
    assert r.returncode == 7
    r = pyrun("run", "-b", bundle(["sh", "-c", "kill -9 $$"]), "c2", check=False)
    # pid 1 of a namespace ignores its own signals unless handled: use a child
    assert r.returncode in (0, 137)
    r = pyrun("run", "-b", bundle(["sh", "-c", "sh -c 'kill -9 $$'; exit $?"]), "c3", check=False)
    assert r.returncode == 137
    assert pyrun("list", "-q").stdout.split() == []


def test_run_forwards_signals(pyrun, bundle, tmp_path):
    b = bundle(["sh", "-c", "trap 'exit 42' TERM; echo ready; while true; do sleep 0.05; done"])
    p = subprocess.Popen([PYRUN, "--root", pyrun.root, "run", "-b", b, "c1"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 42
    assert pyrun("list", "-q").stdout.split() == []


def test_kill_all_and_pid_file(pyrun, bundle, tmp_path):
    pidfile = tmp_path / "pid"
    b = bundle(["sh", "-c", "sleep 100 & sleep 100"])
    pyrun("run", "-d", "--pid-file", str(pidfile), "-b", b, "c1")
    pid = int(pidfile.read_text())
    assert pid == pyrun.state("c1")["pid"]
    pyrun("kill", "--all", "c1", "KILL")
    wait_status(pyrun, "c1", "stopped")
    pyrun("delete", "c1")


def _recv_fd(conn):
    fds = array.array("i")
    msg, anc, _, _ = conn.recvmsg(256, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:fds.itemsize])
    return msg, fds[0]


def _console_output(pyrun, b, tmp_path, cid):
    """Create ``cid`` from bundle ``b`` with a console socket, start it and
    read its terminal until "done"."""
    sock_path = str(tmp_path / f"{cid}.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    pyrun("create", "--console-socket", sock_path, "-b", b, cid)
    conn, _ = srv.accept()
    name, master = _recv_fd(conn)
    assert name.startswith(b"/dev/pts/")
    pyrun("start", cid)
    out = b""
    deadline = time.monotonic() + 10
    while b"done" not in out and time.monotonic() < deadline:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    conn.close()
    srv.close()
    return out.decode().replace("\r", "")


def test_terminal_through_console_socket(pyrun, bundle, tmp_path):
    b = bundle(["sh", "-c", "tty; stty size; echo done"], process_terminal=True,
               process_consoleSize={"height": 30, "width": 100})
    text = _console_output(pyrun, b, tmp_path, "c1")
    assert "/dev/pts/0" in text and "30 100" in text and "done" in text


def test_terminal_belongs_to_the_process_user(pyrun, bundle, tmp_path):
    """runc's "tty owner" tests: the process's uid, devpts' tty group (5).
    pyrun left it root's, so a non-root process could not, e.g., chmod it."""
    b = bundle(["sh", "-c", "stat -c %u:%g $(tty); echo done"], process_terminal=True,
               process_user={"uid": 1000, "gid": 100})
    assert "1000:5" in _console_output(pyrun, b, tmp_path, "c2")


HOOK = """#!/bin/sh
cat > {dir}/{name}.json
echo {name} >> {dir}/order
"""


def test_hooks_order_and_state(pyrun, tmp_path, busybox_rootfs):
    hookdir = tmp_path / "hooks"
    hookdir.mkdir()
    hooks = {}
    for name in ("prestart", "createRuntime", "createContainer", "poststart", "poststop"):
        script = tmp_path / f"{name}.sh"
        script.write_text(HOOK.format(dir=hookdir, name=name))
        script.chmod(0o755)
        hooks[name] = [{"path": "/bin/sh", "args": ["sh", str(script)]}]
    # startContainer runs inside the container after pivot_root: use the
    # container's sh and a bind-mounted directory.
    hooks["startContainer"] = [{"path": "/bin/sh", "args": [
        "sh", "-c", "cat > /hooks/startContainer.json; echo startContainer >> /hooks/order"]}]
    from pyrun.oci.default import default_spec
    mounts = default_spec()["mounts"] + [
        {"destination": "/hooks", "type": "bind", "source": str(hookdir), "options": ["rbind"]}]
    b = tmp_path / "bundle"
    make_bundle(b, busybox_rootfs, ["true"], hooks=hooks, mounts=mounts,
                annotations={"org.example": "yes"})
    pyrun("create", "-b", str(b), "c1")
    pid = pyrun.state("c1")["pid"]
    order = (hookdir / "order").read_text().split()
    assert order == ["prestart", "createRuntime", "createContainer"]
    pyrun("start", "c1")
    deadline = time.monotonic() + 5
    while "poststart" not in (hookdir / "order").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    pyrun("delete", "--force", "c1")
    order = (hookdir / "order").read_text().split()
    assert order == ["prestart", "createRuntime", "createContainer", "startContainer",
                     "poststart", "poststop"]
    for name in order:
        st = json.loads((hookdir / f"{name}.json").read_text())
        assert st["id"] == "c1" and st["bundle"] == str(b)
        assert st["annotations"] == {"org.example": "yes"}
        if name != "poststop":
            assert st["pid"] == pid
    assert json.loads((hookdir / "poststop.json").read_text())["status"] == "stopped"


def test_failing_prestart_hook_cleans_up(pyrun, tmp_path, busybox_rootfs):
    b = tmp_path / "bundle"
    make_bundle(b, busybox_rootfs, ["true"],
                hooks={"prestart": [{"path": "/bin/false"}]})
    r = pyrun("create", "-b", str(b), "c1", check=False)
    assert r.returncode == 1 and "prestart hook 0" in r.stderr
    assert pyrun("list", "-q").stdout.split() == []
    assert mounts_under(busybox_rootfs) == []


# ---- bad input ----

def _assert_nothing_left(pyrun, rootfs):
    assert pyrun("list", "-q").stdout.split() == []
    assert not os.path.exists(os.path.join(pyrun.root, "c1"))
    assert mounts_under(rootfs) == []


def test_missing_bundle(pyrun, tmp_path, busybox_rootfs):
    r = pyrun("create", "-b", str(tmp_path / "nope"), "c1", check=False)
    assert r.returncode == 1 and "no such directory" in r.stderr
    _assert_nothing_left(pyrun, busybox_rootfs)


def test_malformed_config(pyrun, tmp_path, busybox_rootfs):
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "config.json").write_text('{"ociVersion": "1.0.2", "root": ')
    r = pyrun("create", "-b", str(b), "c1", check=False)
    assert r.returncode == 1 and "config.json: not valid JSON" in r.stderr
    (b / "config.json").write_text('{"ociVersion": "1.0.2", "root": {"path": 5}}')
    r = pyrun("create", "-b", str(b), "c1", check=False)
    assert r.returncode == 1 and "root.path: expected a string" in r.stderr
    _assert_nothing_left(pyrun, busybox_rootfs)


def test_unknown_namespace_type(pyrun, tmp_path, busybox_rootfs):
    b = tmp_path / "bundle"
    make_bundle(b, busybox_rootfs, ["true"], linux_namespaces=[{"type": "mount"}, {"type": "bogus"}])
    r = pyrun("create", "-b", str(b), "c1", check=False)
    assert r.returncode == 1 and "linux.namespaces[1].type: unknown namespace type 'bogus'" in r.stderr
    _assert_nothing_left(pyrun, busybox_rootfs)


def test_duplicate_id(pyrun, bundle, busybox_rootfs):
    b = bundle(["sleep", "100"])
    pyrun("create", "-b", b, "c1")
    r = pyrun("create", "-b", b, "c1", check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    assert pyrun.state("c1")["status"] == "created"   # the first one is untouched
    pyrun("delete", "c1")
    _assert_nothing_left(pyrun, busybox_rootfs)


def test_invalid_id_and_failed_step(pyrun, bundle, busybox_rootfs):
    b = bundle(["sleep", "100"])
    r = pyrun("create", "-b", b, "../x", check=False)
    assert r.returncode == 1 and "invalid container id" in r.stderr
    b = bundle(["/no/such/program"])
    r = pyrun("create", "-b", b, "c1", check=False)
    assert r.returncode == 1 and "find '/no/such/program'" in r.stderr and "No such file" in r.stderr
    _assert_nothing_left(pyrun, busybox_rootfs)


def test_spec_and_features(tmp_path):
    r = subprocess.run([PYRUN, "spec", "-b", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0
    spec = json.loads((tmp_path / "config.json").read_text())
    assert spec["process"]["args"] == ["sh"] and spec["root"]["path"] == "rootfs"
    r = subprocess.run([PYRUN, "spec", "-b", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and "exists" in r.stderr
    feats = json.loads(subprocess.run([PYRUN, "features"], capture_output=True, text=True).stdout)
    assert "user" in feats["linux"]["namespaces"] and "rbind" in feats["mountOptions"]


def test_no_mount_namespace(pyrun, tmp_path, busybox_rootfs):
    """Without a mount namespace (runtime-tools linux_ns_itype): chroot, not
    pivot_root; the mounts made in our namespace go away on delete."""
    import shutil
    rootfs = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    b = tmp_path / "bundle"
    make_bundle(b, str(rootfs), ["sh", "-c", "ls /proc/self/ns >/dev/null; sleep 100"],
                linux_namespaces=[{"type": "pid"}, {"type": "network"}], hostname="",
                root={"path": str(rootfs), "readonly": False})
    pyrun("create", "-b", str(b), "c1")
    pid = pyrun.state("c1")["pid"]
    assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{pid}/root") == str(rootfs)
    assert f"{rootfs}/proc" in mounts_under(str(rootfs))
    pyrun("delete", "c1")
    assert mounts_under(str(rootfs)) == []
    r = pyrun("create", "-b", str(b), "c2", check=False)
    assert r.returncode == 0
    pyrun("delete", "c2")
    make_bundle(b, str(rootfs), ["true"], linux_namespaces=[{"type": "pid"}], hostname="")
    r = pyrun("create", "-b", str(b), "c3", check=False)
    assert r.returncode == 1 and "root.readonly: needs a mount namespace" in r.stderr
    assert mounts_under(str(rootfs)) == []


def test_cli_paths_import_no_heavy_modules():
    """Start-up is most of a `pyrun run`: the modules of the runtime verbs
    must not pull in threading, signal (enum), subprocess, shutil or json,
    each several ms (threading alone came back once and cost 8 ms)."""
    code = ("import sys\n"
            "import pyrun.cli.runc, pyrun.runtime.run, pyrun.runtime.create, pyrun.runtime.start\n"
            "import pyrun.runtime.delete, pyrun.runtime.exec, pyrun.runtime.kill\n"
            "import pyrun.runtime.state, pyrun.runtime.cgroup, pyrun.cgroups\n"
            "heavy = ('threading', 'signal', 'enum', 'subprocess', 'shutil', 'json')\n"
            "print(' '.join(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def test_create_killed_midway_leaves_nothing_after_delete(pyrun, bundle, tmp_path):
    """A SIGKILLed `pyrun create` (here during a createRuntime hook) left
    its init waiting for good, with no pid on record and its cgroups in
    every hierarchy.  The init now sees its parent go (its copy of the
    parent's socket end is closed), and `delete` undoes the rest."""
    parent = f"/pyrun-test-killed-create-{os.getpid()}"
    hook = {"path": "/bin/sleep", "args": ["sleep", "5"]}
    b = bundle(["true"], hooks={"createRuntime": [hook]}, linux_cgroupsPath=f"{parent}/k1")
    create = subprocess.Popen([PYRUN, "--root", pyrun.root, "create", "-b", b, "k1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = f"/sys/fs/cgroup/pids{parent}/k1/cgroup.procs"
    try:
        init = None
        for _ in range(500):
            if os.path.exists(procs) and open(procs).read().split():
                init = int(open(procs).read().split()[0])
                break
            time.sleep(0.01)
        assert init is not None, "the init never joined its cgroup"
        pidfd = os.pidfd_open(init)
    finally:
        create.kill()
        create.wait()
    try:
        import select
        assert select.select([pidfd], [], [], 10)[0], "the init outlived its create"
    finally:
        os.close(pidfd)
    assert pyrun.state("k1")["status"] == "creating"
    pyrun("delete", "k1")
    assert "k1" not in pyrun("list", "-q").stdout
    left = [d for d in os.listdir("/sys/fs/cgroup")
            if os.path.exists(f"/sys/fs/cgroup/{d}{parent}/k1")]
    for d in os.listdir("/sys/fs/cgroup"):
        if os.path.isdir(f"/sys/fs/cgroup/{d}{parent}"):
            os.rmdir(f"/sys/fs/cgroup/{d}{parent}")
    assert left == []


def test_cli_error_cases_like_runc(pyrun, bundle, tmp_path):
    """exec fails with 255 as runc's; --pid-file into a missing directory
    starts nothing; a relative --cwd, a symlinked rootfs and a bad
    --preserve-fds are named; signal 0 only asks whether the init lives."""
    b = bundle(["sleep", "100"])
    pyrun("run", "-d", "-b", b, "e1", stdin=subprocess.DEVNULL)
    marker = tmp_path / "ran"
    r = pyrun("exec", "--pid-file", str(tmp_path / "no" / "p"), "e1", "sh", "-c", "echo x",
              check=False)
    assert r.returncode == 255 and "no such directory" in r.stderr
    assert not marker.exists()
    r = pyrun("exec", "--cwd", "rel", "e1", "pwd", check=False)
    assert r.returncode == 255 and "--cwd 'rel'" in r.stderr
    r = pyrun("exec", "--preserve-fds", "100000", "e1", "true", check=False)
    assert r.returncode == 255 and "--preserve-fds 100000" in r.stderr
    assert pyrun("kill", "e1", "0").returncode == 0
    pyrun("delete", "--force", "e1")
    link = tmp_path / "linked"
    os.makedirs(link)
    os.symlink("/", link / "rootfs")
    with open(os.path.join(b, "config.json")) as f:
        config = json.load(f)
    config["root"] = {"path": "rootfs", "readonly": True}
    with open(link / "config.json", "w") as f:
        json.dump(config, f)
    r = pyrun("run", "-b", str(link), "e2", check=False)
    assert r.returncode == 1 and "is a symlink" in r.stderr
    assert "e2" not in pyrun("list", "-q").stdout


def test_delete_of_a_dead_create_kills_what_is_in_its_groups(pyrun, tmp_path):
    """A create that died after its init was cloned but before it recorded
    the pid leaves state "creating" with cgroups only: delete kills what is
    in them instead of failing on a busy group."""
    from pyrun.cgroups import new_manager
    from pyrun.runtime.state import State, Status, Store

    parent = f"/pyrun-test-dead-create-{os.getpid()}"
    m = new_manager(f"{parent}/d1", "d1")
    m.create()
    proc = subprocess.Popen(["sleep", "100"])
    try:
        m.apply(proc.pid)
        store = Store(pyrun.root)
        store.reserve("d1")
        store.save(State(id="d1", bundle=str(tmp_path), rootfs=str(tmp_path),
                         status=Status.CREATING, cgroup=m.describe()))
        pyrun("delete", "d1")
        assert proc.wait(timeout=10) == -9
        assert "d1" not in pyrun("list", "-q").stdout
        assert not any(os.path.isdir(os.path.join(m.hierarchy_root(k), p.lstrip("/")))
                       for k, p in m.paths.items())
    finally:
        proc.kill()
        proc.wait()
        for d in os.listdir("/sys/fs/cgroup"):
            for path in (f"/sys/fs/cgroup/{d}{parent}/d1", f"/sys/fs/cgroup/{d}{parent}"):
                if os.path.isdir(path):
                    os.rmdir(path)
