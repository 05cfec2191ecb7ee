"""pyrun as the OCI runtime of the real engines: containerd 1.6 (through
containerd-shim-runc-v2, driven with ctr) and podman 4.3 (through conmon).
See engine_fixtures.py for how each engine is kept off the machine's own
state."""
import os

import pytest

from engine_fixtures import IMAGE, busybox_archive, containerd, podman  # noqa: F401
from runtime_helpers import PYRUN

pytestmark = [pytest.mark.engines, pytest.mark.root]


# ---- containerd ---------------------------------------------------------

def _ctr_run(ctr, cid, *args, options=(), pty=False):
    argv = ["run", "--fifo-dir", ctr.fifo_dir, "--runc-binary", ctr.runtime,
            "--runc-root", ctr.runc_root,
            "--cgroup", f"{ctr.cgroup_parent}/{cid}", *options, IMAGE, cid, *args]
    return ctr.in_pty(*argv) if pty else ctr(*argv, check=False)


def _task_status(ctr, cid):
    for line in ctr("tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields[0] == cid:
            return fields[2]
    return None


def test_ctr_run(containerd):
    r = _ctr_run(containerd, "run1", "echo", "hi", options=["--rm"])
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr + containerd.calls()
    # What containerd-shim-runc-v2 calls: runc's global flags, then the verb.
    calls = [c for c in containerd.calls().splitlines() if c.endswith(" run1")]
    verbs = [c.split(" --log-format json ")[1].split()[0] for c in calls]
    assert verbs[:3] == ["create", "start", "delete"], calls
    assert all(c.startswith(f"--root {containerd.runc_root}/default --log ") for c in calls), calls
    assert "--pid-file" in calls[0] and "--bundle" in calls[0]


def test_ctr_run_with_pyrun_itself(containerd):
    # The venv's pyrun as --runc-binary, no wrapper in between.
    r = containerd("run", "--rm", "--fifo-dir", containerd.fifo_dir, "--runc-binary", PYRUN,
                   "--runc-root", containerd.runc_root,
                   "--cgroup", f"{containerd.cgroup_parent}/run0", IMAGE, "run0", "echo", "hi")
    assert r.stdout == "hi\n"


def test_ctr_run_exit_status(containerd):
    r = _ctr_run(containerd, "run2", "sh", "-c", "exit 7", options=["--rm"])
    assert r.returncode == 7, r.stderr + containerd.calls()


def test_ctr_run_null_io(containerd):
    # The shim gives one read-only /dev/null fd as stdin, stdout and stderr.
    r = _ctr_run(containerd, "run5", "sh", "-c", "echo to-null", options=["--rm", "--null-io"])
    assert (r.returncode, r.stdout) == (0, ""), r.stderr + containerd.calls()


def test_ctr_run_tty(containerd):
    r = _ctr_run(containerd, "run3", "sh", "-c", "tty; echo tty-ok", options=["--rm", "-t"],
                 pty=True)
    assert r.returncode == 0, r.stdout + containerd.calls()
    assert "/dev/pts/0" in r.stdout and "tty-ok" in r.stdout
    assert "--console-socket" in containerd.calls().splitlines()[-4]


def test_ctr_run_error_reaches_ctr(containerd):
    # pyrun's error goes to the shim through --log (JSON), and on to ctr.
    r = _ctr_run(containerd, "run4", "/no/such/command", options=["--rm"])
    assert r.returncode != 0
    assert "/no/such/command" in r.stderr, r.stderr
    assert _task_status(containerd, "run4") is None
    containerd("containers", "delete", "run4", check=False)


def _ctr_exec(ctr, exec_id, *args, **kw):
    return ctr("tasks", "exec", "--fifo-dir", ctr.fifo_dir, "--exec-id", exec_id, "task1", *args,
               **kw)


def test_ctr_task_verbs(containerd):
    ctr = containerd
    r = _ctr_run(ctr, "task1", "sleep", "1000", options=["-d"])
    assert r.returncode == 0, r.stderr + ctr.calls()
    try:
        assert _task_status(ctr, "task1") == "RUNNING"
        r = _ctr_exec(ctr, "x1", "echo", "exec-ok")
        assert r.stdout == "exec-ok\n"
        r = _ctr_exec(ctr, "x2", "sh", "-c", "exit 3", check=False)
        assert r.returncode == 3, r.stderr
        r = ctr.in_pty("tasks", "exec", "--fifo-dir", ctr.fifo_dir, "-t", "--exec-id", "x3",
                       "task1", "sh", "-c", "tty; echo exec-tty-ok")
        assert "/dev/pts/0" in r.stdout and "exec-tty-ok" in r.stdout, r.stdout + ctr.calls()

        r = ctr("tasks", "ps", "task1")
        assert len(r.stdout.splitlines()) == 2, r.stdout  # header, the init

        ctr("tasks", "pause", "task1")
        assert _task_status(ctr, "task1") == "PAUSED"
        ctr("tasks", "resume", "task1")
        assert _task_status(ctr, "task1") == "RUNNING"

        ctr("tasks", "kill", "-s", "SIGKILL", "task1")
        r = ctr("tasks", "ls")
        for _ in range(100):
            if _task_status(ctr, "task1") == "STOPPED":
                break
            ctr("tasks", "ls")
        assert _task_status(ctr, "task1") == "STOPPED"
        ctr("tasks", "delete", "task1")
    finally:
        ctr("tasks", "delete", "-f", "task1", check=False)
        ctr("containers", "delete", "task1", check=False)
    verbs = [c.split(" --log-format json ")[1].split()[0] for c in ctr.calls().splitlines()
             if c.endswith(" task1") or " task1 " in c]
    for verb in ("exec", "ps", "pause", "resume", "kill", "delete"):
        assert verb in verbs, verbs
    assert any("exec --process " in c and " --detach " in c for c in ctr.calls().splitlines())


# ---- podman -------------------------------------------------------------

def _podman_run(pm, *args, options=(), pty=False):
    argv = ["run", "--cgroup-parent", pm.cgroup_parent, *options, IMAGE, *args]
    return pm.in_pty(*argv) if pty else pm(*argv, check=False)


def test_podman_run(podman):
    r = _podman_run(podman, "echo", "hi", options=["--rm"])
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr + podman.calls()
    # conmon calls runc's verbs with no global flags at all.
    last = podman.calls().splitlines()[-3:]
    assert [c.split()[0] for c in last] == ["create", "start", "delete"], last


def test_podman_run_with_pyrun_itself(podman):
    r = podman("--runtime", PYRUN, "run", "--rm", "--cgroup-parent", podman.cgroup_parent,
               IMAGE, "echo", "hi", wrapped=False)
    assert r.stdout == "hi\n"


def test_podman_run_exit_status_and_stdin(podman):
    r = _podman_run(podman, "sh", "-c", "exit 7", options=["--rm"])
    assert r.returncode == 7, r.stderr
    r = podman("run", "--rm", "-i", "--cgroup-parent", podman.cgroup_parent, IMAGE, "cat",
               input="from stdin\n")
    assert r.stdout == "from stdin\n"


def test_podman_run_tty(podman):
    r = _podman_run(podman, "sh", "-c", "tty; echo tty-ok", options=["--rm", "-t"], pty=True)
    assert r.returncode == 0, r.stdout + podman.calls()
    assert "/dev/pts/0" in r.stdout and "tty-ok" in r.stdout


def test_podman_run_error_reaches_podman(podman):
    # podman maps the runtime's error text to docker's exit statuses.
    r = _podman_run(podman, "/no/such/command", options=["--rm"])
    assert r.returncode == 127
    assert "/no/such/command" in r.stderr, r.stderr
    r = _podman_run(podman, "/etc/passwd", options=["--rm"])
    assert r.returncode == 126, r.stderr


def test_podman_privileged_and_cap_drop_all(podman):
    # --privileged: host devices with fileMode 0o20644; --cap-drop all: a
    # seccomp profile whose socket rules need socketcall on x86.
    r = _podman_run(podman, "sh", "-c", "test -c /dev/autofs && grep CapEff /proc/self/status",
                    options=["--rm", "--privileged"])
    assert r.returncode == 0, r.stderr
    r = _podman_run(podman, "sh", "-c", "id -u; grep CapEff /proc/self/status",
                    options=["--rm", "--cap-drop", "all", "--user", "65534"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["65534", "CapEff:", "0000000000000000"]


def test_podman_read_only_and_tmpfs(podman):
    # Both give tmpfs mounts with runc's "tmpcopyup" option.
    r = _podman_run(podman, "sh", "-c", "touch /tmp/x && ! touch /x 2>/dev/null && cat /etc/group",
                    options=["--rm", "--read-only", "--tmpfs", "/etc"])
    assert (r.returncode, r.stdout) == (0, "root:x:0:\nnogroup:x:65534:\n"), r.stderr


def test_podman_container_verbs(podman):
    pm = podman
    r = _podman_run(pm, "sleep", "1000", options=["-d", "--name", "c1"])
    assert r.returncode == 0, r.stderr + pm.calls()
    try:
        assert pm("exec", "c1", "echo", "exec-ok").stdout == "exec-ok\n"
        assert pm("exec", "c1", "sh", "-c", "exit 4", check=False).returncode == 4
        r = pm.in_pty("exec", "-t", "c1", "sh", "-c", "tty; echo exec-tty-ok")
        assert "/dev/pts/0" in r.stdout and "exec-tty-ok" in r.stdout, r.stdout + pm.calls()

        pm("pause", "c1")
        assert pm("inspect", "-f", "{{.State.Status}}", "c1").stdout.strip() == "paused"
        pm("unpause", "c1")
        assert pm("inspect", "-f", "{{.State.Status}}", "c1").stdout.strip() == "running"

        pm("stop", "-t", "1", "c1")  # sleep ignores SIGTERM as pid 1: SIGKILL after 1 s
        assert pm("inspect", "-f", "{{.State.Status}}", "c1").stdout.strip() == "exited"
        pm("rm", "c1")
    finally:
        pm("rm", "-f", "-t", "0", "c1", check=False)
    verbs = [c.split()[0] for c in pm.calls().splitlines()]
    for verb in ("exec", "pause", "resume", "kill", "delete"):
        assert verb in verbs, verbs
    assert any(c.startswith("exec ") and " --process " in c and " --tty " in c
               and " --console-socket " in c for c in pm.calls().splitlines())


def test_podman_update(podman):
    pm = podman
    r = _podman_run(pm, "sleep", "1000", options=["-d", "--name", "u1", "--memory", "32m"])
    assert r.returncode == 0, r.stderr + pm.calls()
    try:
        cid = pm("inspect", "-f", "{{.Id}}", "u1").stdout.strip()
        limit = f"/sys/fs/cgroup/memory{pm.cgroup_parent}/libpod-{cid}/memory.limit_in_bytes"
        with open(limit) as f:
            assert f.read().strip() == str(32 << 20)
        pm("update", "--memory", "64m", "u1")
        with open(limit) as f:
            assert f.read().strip() == str(64 << 20)
        assert any(c.startswith("update --resources") for c in pm.calls().splitlines())
    finally:
        pm("rm", "-f", "-t", "0", "u1", check=False)


def test_podman_pod_shares_the_infra_namespaces(podman):
    # The pod's containers join the infra container's namespaces by path.
    pm = podman
    pm("pod", "create", "--cgroup-parent", pm.cgroup_parent, "--name", "pod1")
    try:
        pm("pod", "start", "pod1")
        infra = pm("pod", "inspect", "-f", "{{.InfraContainerID}}", "pod1").stdout.strip()
        pid = pm("inspect", "-f", "{{.State.Pid}}", infra).stdout.strip()
        want = [os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("ipc", "uts", "net")]
        r = pm("run", "--rm", "--pod", "pod1", IMAGE, "sh", "-c",
               "for ns in ipc uts net; do readlink /proc/self/ns/$ns; done; hostname")
        assert r.stdout.split() == want + ["pod1"]
    finally:
        pm("pod", "rm", "-f", "pod1", check=False)
