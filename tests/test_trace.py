"""Teaching mode (pyrun.trace): the steps of a known bundle in order, a
failing step with its errno, the CLI switches, and the generated doc."""
import json
import os

import pytest

from pyrun import trace
from pyrun.oci.default import default_spec
from pyrun.runtime import plan as planner
from pyrun.runtime.create import create
from pyrun.runtime.delete import delete
from pyrun.runtime.run import run
from pyrun.runtime.spawn import StepError
from pyrun.runtime.state import Store
from pyrun.trace import docs, steps
from pyrun.trace.tracer import Tracer
from runtime_helpers import Pyrun, make_bundle

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "how-a-container-starts.md")


def _calls(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _index(events, proc, prefix, start=0):
    for i in range(start, len(events)):
        e = events[i]
        if e["proc"] == proc and e["call"].startswith(prefix):
            return i
    raise AssertionError(f"no {proc} step {prefix!r} after #{start}: "
                         f"{[(e['proc'], e['call'][:60]) for e in events]}")


# ---- unit: the wording of planned steps (no root) ----

def test_child_calls_name_flags_and_capabilities():
    op = planner.Op(steps.lib.PR_OP_UNSHARE, "unshare", "namespaces", flags=0x20000 | 0x4000000)
    assert steps.child_calls(op) == ["unshare(CLONE_NEWNS|CLONE_NEWUTS)"]
    op = planner.Op(steps.lib.PR_OP_MOUNT, "m", "rootfs", s1="proc", s2="/proc", s3="proc",
                    flags=0x2 | 0x4 | 0x8)
    assert steps.child_calls(op) == ['mount("proc", "/proc", "proc", MS_NOSUID|MS_NODEV|MS_NOEXEC, NULL)']
    caps = {"bounding": 1 << 5, "effective": 1 << 5, "permitted": 1 << 5, "inheritable": 0,
            "ambient": 0, "last_cap": 40}
    op = planner.Op(steps.lib.PR_OP_CAPSET, "capset", "identity", caps=caps)
    assert steps.child_calls(op)[0] == "capset(effective=[CAP_KILL], permitted=[CAP_KILL], inheritable=[])"


def test_seccomp_summary():
    assert steps.seccomp_summary(docs.SECCOMP) == (
        "default SCMP_ACT_ALLOW, 1 rules over 4 syscalls, architectures X86_64")


def test_text_and_json_output(tmp_path):
    t = Tracer("text", path=str(tmp_path / "t"))
    t.call("rootfs", 'mount("a", "/b", NULL, MS_BIND, NULL)', err=2, step="bind a on /b")
    t.flush("create c")
    text = (tmp_path / "t").read_text()
    assert text.startswith("== pyrun create c\n-- rootfs: mount:")
    assert "= -1 ENOENT (No such file or directory)" in text and "failed step: bind a on /b" in text
    j = Tracer("json", path=str(tmp_path / "j"))
    j.call("cgroups", 'write("/x/pids.max", \'64\')')
    j.flush("create c")
    [e] = _calls(tmp_path / "j")
    assert e["verb"] == "create c" and e["proc"] == "runtime" and e["pid"] == os.getpid()
    assert e["result"] == "0" and e["errno"] is None and e["phase"] == "cgroups"


# ---- the real thing ----

@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "state"))
    yield s
    for st in s.list():
        delete(s, st.id, force=True)


@pytest.mark.root
def test_run_traces_every_step_in_order(tmp_path, busybox_rootfs, store):
    b = str(tmp_path / "bundle")
    make_bundle(b, busybox_rootfs, ["true"], hostname="traced",
                hooks={"createRuntime": [{"path": "/bin/true", "args": ["true", "hook"]}]})
    out = str(tmp_path / "trace.jsonl")
    with trace.tracing(Tracer("json", path=out)):
        assert run(store, "t1", b) == 0
    ev = _calls(out)
    assert [e["verb"] for e in ev if e["verb"] != ev[0]["verb"]][:1] == ["start t1"]
    i = _index(ev, "runtime", "mkfifo(")
    i = _index(ev, "runtime", "clone3(CLONE_PIDFD|CLONE_NEWNS|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWPID", i)
    init_pid = int(ev[i]["result"].split()[0])
    i = _index(ev, "init", 'sethostname("traced")', i)
    i = _index(ev, "init", 'mount(NULL, "/", NULL, MS_REC|MS_SLAVE, NULL)', i)
    i = _index(ev, "init", 'mount("proc", "/proc", "proc"', i)
    i = _index(ev, "init", 'mknodat("/dev/null", S_IFCHR|0666, makedev(1, 3))', i)
    i = _index(ev, "runtime", "fork + execve('/bin/true', ['true', 'hook'])", i)
    assert ev[i]["result"] == "exit status 0" and ev[i]["phase"] == "hooks"
    i = _index(ev, "init", 'pivot_root(".", ".")', i)
    assert any("umount2" in c for c in ev[i]["then"])
    i = _index(ev, "init", "keyctl(KEYCTL_JOIN_SESSION_KEYRING", i)
    i = _index(ev, "init", "prlimit64(0, RLIMIT_NOFILE", i)
    i = _index(ev, "init", "close_range(", i)
    i = _index(ev, "init", "prctl(PR_CAPBSET_DROP", i)
    i = _index(ev, "init", "prctl(PR_SET_KEEPCAPS, 1)", i)
    assert "setresuid(0, 0, 0)" in ev[i]["then"]
    i = _index(ev, "init", "capset(effective=[CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE]", i)
    i = _index(ev, "init", "prctl(PR_SET_NO_NEW_PRIVS, 1)", i)
    i = _index(ev, "runtime", "write(exec.fifo", i)
    i = _index(ev, "init", "read(exec.fifo)", i)
    i = _index(ev, "init", "execve(\"true\" (found in PATH), ['true']", i)
    i = _index(ev, "runtime", f"wait4({init_pid})", i)
    assert ev[i]["result"] == "exit status 0" and ev[i]["verb"] == "run t1"
    i = _index(ev, "runtime", "unlink + rmdir(", i)
    for e in ev:
        assert e["errno"] is None, e
        if e["proc"] == "init":
            assert e["pid"] == init_pid and e["ns_pid"] == 1
        else:
            assert e["pid"] == os.getpid() and e["ns_pid"] is None
    assert [e["t_us"] for e in ev if e["verb"].startswith("create")] == sorted(
        e["t_us"] for e in ev if e["verb"].startswith("create"))


@pytest.mark.root
def test_unknown_fstype_shows_the_failed_mount_with_its_errno(tmp_path, busybox_rootfs, store):
    b = str(tmp_path / "bundle")
    mounts = default_spec()["mounts"] + [{"destination": "/mnt", "type": "nosuchfs", "source": "none"}]
    make_bundle(b, busybox_rootfs, ["true"], mounts=mounts)
    out = str(tmp_path / "trace.txt")
    with trace.tracing(Tracer("text", path=out)):
        with pytest.raises(StepError):
            create(store, "bad", b)
    text = open(out).read()
    assert 'mount("none", "/mnt", "nosuchfs", 0, NULL) = -1 ENODEV (No such device)' in text
    assert "failed step: mount nosuchfs on /mnt" in text
    assert "execve" not in text and not store.list()


@pytest.mark.root
def test_bind_source_gone_after_planning_shows_enoent(tmp_path, busybox_rootfs, store, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    b = str(tmp_path / "bundle")
    mounts = default_spec()["mounts"] + [{"destination": "/mnt", "type": "bind", "source": str(src),
                                          "options": ["rbind", "ro"]}]
    make_bundle(b, busybox_rootfs, ["true"], mounts=mounts)
    real = planner.build

    def build_then_remove(spec, inp):
        plan = real(spec, inp)
        src.rmdir()   # the planned bind now names a source that is gone
        return plan

    monkeypatch.setattr(planner, "build", build_then_remove)
    out = str(tmp_path / "trace.jsonl")
    with trace.tracing(Tracer("json", path=out)):
        with pytest.raises(StepError) as e:
            create(store, "gone", b)
    assert e.value.errno == 2
    [failed] = [x for x in _calls(out) if x["errno"]]
    assert failed["errno"] == "ENOENT" and failed["proc"] == "init" and failed["phase"] == "rootfs"
    assert failed["call"].startswith(f'mount("{src}", "/mnt", NULL, MS_BIND|MS_REC')


@pytest.mark.root
def test_cli_trace_goes_to_stderr_or_file_never_stdout(tmp_path, busybox_rootfs):
    b = str(tmp_path / "bundle")
    make_bundle(b, busybox_rootfs, ["echo", "hello"])
    p = Pyrun(tmp_path / "state")
    r = p("--trace", "run", "-b", b, "c1")
    assert r.stdout == "hello\n"
    assert "== pyrun create c1" in r.stderr and "-- pivot: pivot_root: swap the root" in r.stderr
    assert 'execve("echo"' in r.stderr
    out = tmp_path / "trace.jsonl"
    env = dict(os.environ, PYRUN_TRACE="json", PYRUN_TRACE_FILE=str(out))
    r = p("run", "-b", b, "c2", env=env)
    assert r.stdout == "hello\n" and r.stderr == ""
    verbs = {e["verb"] for e in _calls(out)}
    assert verbs == {"create c2", "start c2", "run c2", "delete c2"}


@pytest.mark.root
def test_cli_create_and_start_in_two_processes(tmp_path, busybox_rootfs):
    b = str(tmp_path / "bundle")
    make_bundle(b, busybox_rootfs, ["sleep", "100"])
    p = Pyrun(tmp_path / "state")
    try:
        r = p("--trace", "--trace-format", "json", "create", "-b", b, "c1")
        created = [json.loads(x) for x in r.stderr.splitlines()]
        assert created[-1]["call"].startswith("prctl(PR_SET_NO_NEW_PRIVS")
        r = p("--trace", "start", "c1")
        assert "read(exec.fifo) returns" in r.stderr and 'execve("sleep"' in r.stderr
        r = p("--trace", "kill", "c1", "KILL")
        assert "pidfd_send_signal(pidfd of" in r.stderr and "SIGKILL" in r.stderr
        # A traced create with an untraced start: the init must still exec.
        p("--trace", "create", "-b", b, "c2")
        p("start", "c2")
        assert p.state("c2")["status"] == "running"
    finally:
        p.cleanup()


@pytest.mark.root
def test_doc_matches_a_fresh_trace(tmp_path):
    """docs/how-a-container-starts.md is stale: regenerate it with
    ``python -m pyrun.trace.docs > docs/how-a-container-starts.md``."""
    with open(DOC) as f:
        documented = docs.doc_steps(f.read())
    fresh = docs.trace_steps(docs.trace_lifecycle(str(tmp_path)))
    assert documented, "no steps found in the document"
    assert documented == fresh


@pytest.mark.root
def test_delete_without_mount_namespace_traces_its_unmounts(tmp_path, busybox_rootfs):
    import shutil

    from pyrun.fsutil import mounts_under
    rootfs = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    b = tmp_path / "bundle"
    make_bundle(b, str(rootfs), ["sleep", "100"], linux_namespaces=[{"type": "pid"}], hostname="",
                root={"path": str(rootfs), "readonly": False})
    p = Pyrun(tmp_path / "state")
    try:
        r = p("--trace", "create", "-b", str(b), "c1")
        assert f'chroot("{rootfs}")' in r.stderr and "pivot_root(" not in r.stderr
        r = p("--trace", "delete", "c1")
        assert f'umount2("{rootfs}/proc", MNT_DETACH) = 0' in r.stderr
    finally:
        p.cleanup()
    assert mounts_under(str(rootfs)) == []


def test_exec_is_traced(tmp_path, busybox_rootfs):
    """exec's steps: the joins of the init's namespaces (the mount
    namespace last), the fork into its pid namespace, then execve."""
    from runtime_helpers import Pyrun, make_bundle
    p = Pyrun(tmp_path / "state")
    make_bundle(tmp_path / "bundle", busybox_rootfs, ["sleep", "100"])
    p("run", "-d", "-b", str(tmp_path / "bundle"), "c1")
    try:
        r = p("--trace", "exec", "c1", "true")
        lines = r.stderr.splitlines()
        assert lines[0] == "== pyrun exec c1"
        calls = [line for line in lines if "setns(" in line or "execve(" in line]
        assert [c.split("setns(")[1].split(")")[0].split(", ")[-1] for c in calls[:-1]][-1] \
            == "CLONE_NEWNS"
        assert "execve(" in calls[-1] and "= 0" in calls[-1]
    finally:
        p.cleanup()
