"""``pyrun exec``: a new process in a running container."""
import json
import os
import socket
import time

import pytest

from runtime_helpers import Pyrun, make_bundle
from test_runtime_lifecycle import _recv_fd

pytestmark = pytest.mark.root


@pytest.fixture
def running(tmp_path, busybox_rootfs):
    p = Pyrun(tmp_path / "state")
    cgpath = f"/pyrun-test-exec-{os.getpid()}/c1"
    make_bundle(tmp_path / "bundle", busybox_rootfs, ["sleep", "100"], hostname="box",
                process_env=["PATH=/bin:/sbin", "A=1"],
                linux_cgroupsPath=cgpath, linux_resources={"pids": {"limit": 64}})
    p("run", "-d", "-b", str(tmp_path / "bundle"), "c1")
    yield p
    p.cleanup()
    assert not os.path.exists(f"/sys/fs/cgroup/pids{cgpath}")


def test_exec_joins_namespaces_and_cgroup(running):
    init = running.state("c1")["pid"]
    r = running("exec", "c1", "sh", "-c",
                "hostname; echo $A; grep pids /proc/self/cgroup; ls /sys/class/net; "
                "readlink /proc/1/exe")
    out = r.stdout.split()
    assert out[:2] == ["box", "1"]
    assert out[2].endswith(f"/pyrun-test-exec-{os.getpid()}/c1")
    assert out[3] == "lo"
    for ns in ("pid", "mnt", "net", "uts", "ipc"):
        with open(f"/proc/{init}/ns/{ns}") as _:
            pass


def test_exec_user_env_cwd_and_exit_code(running):
    before = os.stat("/dev/null")
    r = running("exec", "-u", "1000:1001", "-g", "1002", "-e", "B=2", "--cwd", "/tmp", "c1",
                "sh", "-c", "id -u; id -g; id -G; echo $A$B; pwd; exit 5", check=False)
    assert r.returncode == 5, r.stderr
    assert r.stdout.split() == ["1000", "1001", "1001", "1002", "12", "/tmp"]
    after = os.stat("/dev/null")
    # exec --user must never change anything on the host (a peer once
    # chowned the host's /dev/null).
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)


def test_exec_process_json_and_caps(running, tmp_path):
    proc = {"args": ["sh", "-c", "grep CapEff /proc/self/status"], "cwd": "/",
            "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                             "permitted": ["CAP_KILL"]}}
    (tmp_path / "p.json").write_text(json.dumps(proc))
    r = running("exec", "--process", str(tmp_path / "p.json"), "c1")
    assert int(r.stdout.split()[1], 16) == 1 << 5


def test_exec_detach_pid_file_and_tty(running, tmp_path):
    pidfile = tmp_path / "exec.pid"
    running("exec", "-d", "--pid-file", str(pidfile), "c1", "sleep", "50")
    pid = int(pidfile.read_text())
    assert open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"sleep")
    sock_path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    running("exec", "-t", "-d", "--console-socket", sock_path, "c1", "sh", "-c", "tty; sleep 1")
    conn, _ = srv.accept()
    _, master = _recv_fd(conn)
    out = b""
    deadline = time.monotonic() + 5
    while b"/dev/pts/" not in out and time.monotonic() < deadline:
        out += os.read(master, 1024)
    os.close(master)
    conn.close()
    srv.close()
    assert b"/dev/pts/" in out


def test_exec_bad_input(running):
    """exec fails with 255, as runc's does (no process status is taken for it)."""
    r = running("exec", "c1", "/no/such", check=False)
    assert r.returncode == 255 and "No such file" in r.stderr
    r = running("exec", "c1", check=False)
    assert r.returncode == 255 and "no command" in r.stderr
    r = running("exec", "-u", "bob", "c1", "true", check=False)
    assert r.returncode == 255 and "--user 'bob'" in r.stderr
    r = running("exec", "nope", "true", check=False)
    assert r.returncode == 255 and "does not exist" in r.stderr
    running("kill", "c1", "KILL")
    deadline = time.monotonic() + 5
    while running.state("c1")["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.02)
    r = running("exec", "c1", "true", check=False)
    assert r.returncode == 255 and "stopped" in r.stderr


def test_runtime_binary_unreachable_from_container(tmp_path, busybox_rootfs):
    """CVE-2019-5736: while a container is created, its pid 1 is still an
    image of pyrun's interpreter.  A process exec'd into the container (as
    root, default capabilities) must not reach /proc/1/exe."""
    p = Pyrun(tmp_path / "state")
    make_bundle(tmp_path / "bundle", busybox_rootfs, ["true"])
    p("create", "-b", str(tmp_path / "bundle"), "c1")
    try:
        r = p("exec", "c1", "sh", "-c",
              "cat /proc/1/exe > /dev/null && echo READ; echo x >> /proc/1/exe && echo WROTE;"
              "ls /proc/1/root/ >/dev/null && echo ROOT; true", check=False)
        assert "READ" not in r.stdout and "WROTE" not in r.stdout and "ROOT" not in r.stdout, r.stdout
    finally:
        p.cleanup()


def test_library_stdio(tmp_path, busybox_rootfs):
    """create(stdio=...) gives the container other fds than the caller's
    0/1/2 (what a threaded library caller needs)."""
    from pyrun.runtime.run import run
    from pyrun.runtime.state import Store

    make_bundle(tmp_path / "bundle", busybox_rootfs, ["sh", "-c", "read x; echo out:$x; echo err >&2"])
    rin, win = os.pipe()
    rout, wout = os.pipe()
    rerr, werr = os.pipe()
    os.write(win, b"hello\n")
    os.close(win)
    status = run(Store(str(tmp_path / "state")), "c1", str(tmp_path / "bundle"),
                 stdio=(rin, wout, werr))
    for fd in (rin, wout, werr):
        os.close(fd)
    assert status == 0
    assert os.read(rout, 100) == b"out:hello\n"
    assert os.read(rerr, 100) == b"err\n"
    os.close(rout)
    os.close(rerr)
