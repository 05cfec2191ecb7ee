"""The main job: ``pyrunctl`` builds an image from the host's busybox into
its store and runs containers from it, with tenants, detached tasks and
``run``'s flags checked from inside the container."""
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from pyrun.fsutil import mounts_under

pytestmark = pytest.mark.root

PYRUNCTL = os.path.join(os.path.dirname(sys.executable), "pyrunctl")


class Ctl:
    def __init__(self, root, state, namespace="default"):
        self.root, self.state, self.namespace = str(root), str(state), namespace

    def __call__(self, *args, check=True, ns=None, timeout=60):
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            r = subprocess.run([PYRUNCTL, "--root", self.root, "--state", self.state,
                                "-n", ns or self.namespace, *args],
                               stdout=out, stderr=err, stdin=subprocess.DEVNULL, timeout=timeout)
            out.seek(0)
            err.seek(0)
            r.stdout, r.stderr = out.read().decode(), err.read().decode()
        if check and r.returncode != 0:
            raise AssertionError(f"pyrunctl {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r


@pytest.fixture(scope="module")
def ctl(tmp_path_factory, busybox_rootfs):
    base = tmp_path_factory.mktemp("ctl")
    c = Ctl(base / "root", base / "state")
    c("images", "from-dir", busybox_rootfs, "busybox")
    c("images", "from-dir", busybox_rootfs, "busybox", ns="team-b")
    yield c
    for ns in ("default", "team-b"):
        for cid in c("containers", "ls", "-q", ns=ns, check=False).stdout.split():
            c("containers", "rm", "--force", cid, ns=ns, check=False)
    assert mounts_under(str(base)) == []
    for ctrl in ("pids", "memory", "cpu"):
        for ns in ("default", "team-b"):
            group = f"/sys/fs/cgroup/{ctrl}/pyrun/{ns}"
            left = [e.name for e in os.scandir(group) if e.is_dir()] if os.path.isdir(group) else []
            assert left == [], f"cgroups left in {group}: {left}"


def inside(ctl, *args, cid="t", **kw):
    r = ctl("run", "--rm", *args, "busybox", cid, "sh", "-c", kw.pop("script"), check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_run_rm_exit_code_and_nothing_left(ctl):
    r = ctl("run", "--rm", "busybox", "c1", "sh", "-c", "echo hi; exit 7", check=False)
    assert r.returncode == 7 and r.stdout == "hi\n"
    assert ctl("containers", "ls", "-q").stdout.split() == []
    assert not os.path.exists(os.path.join(ctl.state, "bundles", "default", "c1"))
    assert ctl("snapshots", "ls").stdout.count("active") == 0


def test_run_flags_seen_inside(ctl, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("bound\n")
    envfile = tmp_path / "env"
    envfile.write_text("FROMFILE=yes\n")
    out = inside(ctl, "-e", "A=1", "--env-file", str(envfile), "-w", "/tmp", "-u", "nobody",
                 "--hostname", "box", "--mount", f"type=bind,src={data},dst=/data,options=rbind:ro",
                 "--read-only", "--memory", "64m", "--cpus", "0.5", "--pids-limit", "30",
                 "--cap-drop", "CAP_CHOWN", "--label", "k=v",
                 script="echo $A $FROMFILE; pwd; id -u; hostname; cat /data/f;"
                        "touch /data/x 2>/dev/null || echo data-ro; touch /x 2>/dev/null || echo root-ro;"
                        "cat /sys/fs/cgroup/pids/pids.max; cat /sys/fs/cgroup/memory/memory.limit_in_bytes;"
                        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us; grep CapBnd /proc/self/status;"
                        "ls /sys/class/net")
    lines = out.split("\n")
    assert lines[:5] == ["1 yes", "/tmp", "65534", "box", "bound"]
    assert lines[5:10] == ["data-ro", "root-ro", "30", str(64 << 20), "50000"]
    assert not int(lines[10].split()[1], 16) & 1      # CAP_CHOWN dropped
    assert lines[11] == "lo"


def test_default_spec_like_containerd(ctl):
    out = inside(ctl, script="grep -E 'Seccomp:|NoNewPrivs' /proc/self/status; cat /etc/hostname;"
                             "ulimit -n; grep -c . /etc/hosts")
    assert "Seccomp:\t2" in out          # the default profile is in force
    assert out.split("\n")[2] == "t" and out.split("\n")[3] == "1024"


def test_net_host_and_privileged(ctl):
    out = inside(ctl, "--net", "host", "--privileged",
                 script="ls /sys/class/net | grep -c .; grep CapEff /proc/self/status")
    assert int(out.split()[0]) >= 1
    assert int(out.split()[2], 16) != 0


def test_detached_task_outlives_pyrunctl(ctl):
    ctl("run", "-d", "busybox", "d1", "sh", "-c", "echo started; sleep 0.5; exit 4")
    tasks = ctl("tasks", "ls").stdout
    assert "d1" in tasks and ("RUNNING" in tasks or "STOPPED" in tasks)
    assert ctl("tasks", "wait", "d1", check=False).returncode == 4
    assert "STOPPED (exit 4)" in ctl("tasks", "ls").stdout
    assert ctl("tasks", "logs", "d1").stdout == "started\n"
    r = ctl("tasks", "attach", "d1", check=False)       # stopped: prints the output, exits 4
    assert r.returncode == 4 and r.stdout == "started\n"
    r = ctl("tasks", "start", "-d", "d1")              # a stopped task starts again
    assert int(r.stdout) > 0
    ctl("tasks", "wait", "d1", check=False)
    ctl("containers", "rm", "d1")
    assert "d1" not in ctl("containers", "ls", "-q").stdout


def test_tasks_exec_ps_kill_pause(ctl):
    ctl("run", "-d", "busybox", "e1", "sleep", "100")
    r = ctl("tasks", "exec", "--exec-id", "x", "e1", "sh", "-c", "hostname; exit 3", check=False)
    assert r.returncode == 3 and r.stdout == "e1\n"
    assert len(ctl("tasks", "ps", "e1").stdout.split()) == 2   # header + sleep
    ctl("tasks", "pause", "e1")
    assert "PAUSED" in ctl("tasks", "ls").stdout
    ctl("tasks", "resume", "e1")
    metrics = json.loads(ctl("tasks", "metrics", "e1").stdout)
    assert metrics["pids"]["current"] == 1
    r = ctl("containers", "rm", "e1", check=False)
    assert r.returncode == 1 and "running" in r.stderr
    ctl("tasks", "kill", "-s", "KILL", "e1")
    assert ctl("tasks", "wait", "e1", check=False).returncode == 137
    ctl("containers", "rm", "e1")


def test_tenants_are_apart(ctl):
    ctl("containers", "create", "busybox", "same", "true")
    ctl("containers", "create", "busybox", "same", "true", ns="team-b")
    assert ctl("containers", "ls", "-q").stdout.split() == ["same"]
    ctl("containers", "rm", "same", ns="team-b")
    assert ctl("containers", "ls", "-q", ns="team-b").stdout.split() == []
    assert ctl("containers", "ls", "-q").stdout.split() == ["same"]
    ctl("containers", "rm", "same")
    r = ctl("namespaces", "rm", "team-b", check=False)
    assert r.returncode == 1 and "image" in r.stderr     # it still holds its image


CRUN_WRAPPER = """#!/bin/sh
# crun refuses hybrid cgroups (MACHINE.md): hide the cgroup2 mount from it.
exec unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified; exec crun "$@"' crun "$@"
"""


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_other_runtime_backends(ctl, runtime, tmp_path):
    if runtime == "crun":
        wrapper = tmp_path / "crun-hybrid"
        wrapper.write_text(CRUN_WRAPPER)
        wrapper.chmod(0o755)
        runtime = str(wrapper)
    r = ctl("run", "--rm", "--runtime", runtime, "busybox", "rt1", "sh", "-c", "echo via; exit 2",
            check=False)
    assert r.returncode == 2 and r.stdout == "via\n", r.stderr
    ctl("run", "-d", "--runtime", runtime, "busybox", "rt2", "sh", "-c", "echo bg; exit 5")
    assert ctl("tasks", "wait", "rt2", check=False).returncode == 5
    assert ctl("tasks", "logs", "rt2").stdout == "bg\n"
    ctl("containers", "rm", "rt2")


def test_bad_input(ctl, tmp_path):
    cases = [
        (("run", "--rm", "nosuchimage", "b1", "true"), "image 'nosuchimage': not found"),
        (("run", "--rm", "UPPER/bad::ref", "b1", "true"), "not found"),
        (("run", "--rm", "--mount", f"type=bind,src={tmp_path}/missing,dst=/m", "busybox", "b1",
          "true"), "bind source"),
        (("run", "--rm", "--cap-add", "CAP_FLY", "busybox", "b1", "true"), "unknown capability"),
        (("run", "--rm", "--runtime", "/no/runtime", "busybox", "b1", "true"), "no such executable"),
        (("run", "--rm", "busybox", "b1", "/no/such/program"), "No such file"),
        (("run", "--rm", "--memory", "lots", "busybox", "b1", "true"), "--memory"),
        (("run", "--rm", "--platform", "linux/arm64", "busybox", "b1", "true"), "not linux/arm64"),
        # Found by trying to break it: tracebacks, or a snapshot left behind.
        (("run", "--rm", "--cpus", "nan", "busybox", "b1", "true"), "--cpus"),
        (("run", "--rm", "--cpus", "inf", "busybox", "b1", "true"), "--cpus"),
        (("run", "--rm", "busybox", "..", "true"), "invalid container id"),
        (("run", "--rm", "busybox", "a" * 300, "true"), "invalid container id"),
        (("images", "bogus"), "unknown command 'images bogus'"),
        (("--bogus", "images", "ls"), "pyrunctl: unknown flag"),
    ]
    bad_env = tmp_path / "env"
    bad_env.write_bytes(b"A=1\n\xff=2\n")
    cases.append((("run", "--rm", "--env-file", str(bad_env), "busybox", "b1", "true"), "UTF-8"))
    for args, message in cases:
        r = ctl(*args, check=False)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and "pyrunctl: pyrunctl" not in r.stderr
        assert ctl("containers", "ls", "-q").stdout.split() == []
        assert ctl("snapshots", "ls").stdout.splitlines()[1:] == [] or \
            all(line.startswith("sha256:") for line in ctl("snapshots", "ls").stdout.splitlines()[1:])
    ctl("containers", "create", "busybox", "dup", "true")
    r = ctl("containers", "create", "busybox", "dup", "true", check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    ctl("containers", "rm", "dup")
    assert mounts_under(ctl.state) == []


def test_tty_and_native_snapshotter(ctl):
    """``-t`` gives the process a terminal (pyrunctl itself on a pty, as a
    user's shell is); ``--snapshotter native`` runs from a copied rootfs."""
    cmd = (f"{PYRUNCTL} --root {ctl.root} --state {ctl.state} run -t --rm busybox tt1 "
           "sh -c 'tty; exit 3'")
    r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, timeout=60)
    assert r.returncode == 3
    assert b"/dev/pts/0" in r.stdout
    r = ctl("--snapshotter", "native", "run", "--rm", "busybox", "nt1", "sh", "-c", "echo native")
    assert r.stdout == "native\n"


def test_trace_through_pyrunctl(ctl):
    r = ctl("--trace", "run", "--rm", "busybox", "tr1", "true")
    assert "== pyrun create tr1" in r.stderr and "pivot_root" in r.stderr and r.stdout == ""


def test_exit_status_waits_for_a_monitor_still_writing(tmp_path):
    """A bug: `tasks wait` saw the init gone before the monitor, which had
    just reaped it, wrote exit.json, and answered "unknown".  A reader
    that knows the task stopped now waits on the monitor's lock."""
    import fcntl
    import threading

    from pyrun.runtime import monitor

    lock = os.open(tmp_path / monitor.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)

    def finish():
        monitor.record_exit(str(tmp_path), 4)
        os.close(lock)  # the monitor exits

    t = threading.Timer(0.2, finish)
    t.start()
    try:
        assert monitor.exit_status(str(tmp_path)) is None  # not settled: no wait
        assert monitor.exit_status(str(tmp_path), settled=True)["status"] == 4
    finally:
        t.join()
    os.unlink(tmp_path / monitor.EXIT_FILE)
    # A monitor that died without a record: its lock is free, no wait.
    assert monitor.exit_status(str(tmp_path), settled=True) is None


def test_run_path_does_not_load_pyroute2():
    """pyroute2 takes over 100 ms to import: `pyrunctl run` loaded it for
    every container through the CNI settings (ctl_run bench: 256 ms, more
    than twice ctr's), although only --net cni needs it."""
    code = ("import sys\n"
            "import pyrun.cli.ctl, pyrun.cli.ctl_containers, pyrun.runtime.tasks\n"
            "import pyrun.runtime.cninet\n"
            "print('pyroute2' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_removed_snapshot_and_exec_ids(ctl):
    """`snapshots rm` of a container's rootfs is refused (it used to go,
    and the container could never be removed after); an exec id is
    unique while its process lives (ctr's "already exists"); `tasks wait`
    never reports success for an unknown exit status."""
    ctl("run", "-d", "busybox", "s1", "sleep", "1000")
    try:
        r = ctl("snapshots", "rm", "s1", check=False)
        assert r.returncode == 1 and "root filesystem of container 's1'" in r.stderr
        first = subprocess.Popen([PYRUNCTL, "--root", ctl.root, "--state", ctl.state, "tasks",
                                  "exec", "--exec-id", "e1", "s1", "sleep", "30"])
        try:
            for _ in range(200):
                if os.path.exists(os.path.join(ctl.state, "bundles", "default", "s1", "execs", "e1")):
                    break
                time.sleep(0.02)
            r = ctl("tasks", "exec", "--exec-id", "e1", "s1", "true", check=False)
            assert r.returncode == 1 and "exec 'e1': already exists" in r.stderr
        finally:
            first.kill()
            first.wait()
        ctl("tasks", "kill", "-s", "KILL", "s1")
    finally:
        ctl("containers", "rm", "--force", "s1")
    assert "s1" not in ctl("containers", "ls", "-q").stdout



def test_export_and_wait_errors(ctl, tmp_path):
    """Found by trying to break it: an export into a missing directory
    named the internal temp file; a docker-archive export dropped names it
    could not write as RepoTags and still exited 0; `tasks wait` on a
    container without a task exited 0."""
    r = ctl("images", "export", str(tmp_path / "no" / "e.tar"), "busybox", check=False)
    assert r.returncode == 1 and "no such directory" in r.stderr and ".tmp-" not in r.stderr
    ctl("images", "tag", "busybox", "a/../b")
    try:
        r = ctl("images", "export", "--format", "docker", str(tmp_path / "d.tar"), "a/../b",
                check=False)
        assert r.returncode == 1 and "a/../b" in r.stderr
        assert not os.path.exists(tmp_path / "d.tar")
    finally:
        ctl("images", "rm", "a/../b")
    ctl("containers", "create", "busybox", "w1", "true")
    try:
        r = ctl("tasks", "wait", "w1", check=False)
        assert r.returncode == 1 and "has no task" in r.stderr
    finally:
        ctl("containers", "rm", "w1")
