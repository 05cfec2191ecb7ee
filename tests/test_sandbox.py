"""The sandbox API (pyrun.sandbox): limits, timeouts, capture bounds,
concurrency, cleanup after errors, bad input.  Root, real cgroups.

After every test nothing may be left: no group under the test's cgroup
parent, no scratch directory, no mount below the scratch or the rootfs."""
import asyncio
import os
import signal
import threading
import uuid

import pytest

import pyrun
from pyrun import sandbox
from pyrun.errdefs import FailedPrecondition, InvalidArgument, NotFound
from pyrun.fsutil import mounts_under
from pyrun.runtime.spawn import StepError

CG = "/sys/fs/cgroup"


def hierarchies():
    """The cgroup hierarchies' roots: /sys/fs/cgroup on a pure v2 host,
    each controller's directory below it otherwise."""
    if os.path.exists(os.path.join(CG, "cgroup.controllers")):
        return [CG]
    return [os.path.join(CG, c) for c in os.listdir(CG)]
# A string that doubles until memory runs out.
HOG = ["awk", "BEGIN { s = \"x\"; while (1) s = s s }"]


@pytest.fixture
def sb(busybox_rootfs, tmp_path):
    """Keyword arguments for run/Sandbox with a private cgroup parent and
    scratch dir; checks for leaks afterwards and removes the parent."""
    parent = f"/pyrun-test-sandbox-{uuid.uuid4().hex[:8]}"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    kw = dict(rootfs=busybox_rootfs, cgroup_parent=parent, scratch=str(scratch))
    yield kw
    leaks = []
    for h in hierarchies():
        d = os.path.join(h, parent.lstrip("/"))
        if os.path.isdir(d):
            leaks += [os.path.join(d, e.name) for e in os.scandir(d) if e.is_dir()]
    leaks += [str(p) for p in scratch.iterdir()]
    leaks += mounts_under(str(scratch)) + mounts_under(busybox_rootfs)
    sandbox.remove_cgroup_parent(parent)
    assert not leaks, f"left behind: {leaks}"
    assert not any(os.path.isdir(os.path.join(h, parent.lstrip("/"))) for h in hierarchies())


def test_run_captures_and_isolates(sb):
    r = pyrun.run(["sh", "-c", "cat; echo out; echo err >&2; id -u; ls /sys | wc -l; "
                   "ip link 2>/dev/null | grep -c '^[0-9]'; touch /x 2>/dev/null || echo ro; "
                   "touch /tmp/x && echo tmp-ok; exit 3"], stdin=b"in\n", **sb)
    assert r.exit_code == 3 and r.signal is None
    assert r.stdout.split(b"\n")[:6] == [b"in", b"out", b"65534", b"0", b"1", b"ro"]
    assert b"tmp-ok" in r.stdout
    assert r.stderr == b"err\n"
    assert not (r.timed_out or r.oom_killed or r.truncated)
    assert r.wall_time > 0 and r.cpu_time >= 0 and r.peak_memory > 0


def test_no_capabilities_and_seccomp(sb):
    r = pyrun.run(["sh", "-c", "grep -E '^Cap(Eff|Bnd)|^NoNewPrivs|^Seccomp:' /proc/self/status"],
                  **sb)
    assert b"CapEff:\t0000000000000000" in r.stdout
    assert b"CapBnd:\t0000000000000000" in r.stdout
    assert b"NoNewPrivs:\t1" in r.stdout
    assert b"Seccomp:\t2" in r.stdout
    # unshare needs CAP_SYS_ADMIN, which the profile does not grant: EPERM.
    r = pyrun.run(["unshare", "-r", "true"], **sb)
    assert r.exit_code != 0


def test_memory_limit_ooms(sb):
    r = pyrun.run(HOG, memory=32 << 20, **sb)
    assert r.oom_killed
    assert r.peak_memory <= 33 << 20


def test_pids_limit_fork_fails(sb):
    r = pyrun.run(["sh", "-c", "for i in $(seq 30); do sleep 5 & done; wait; echo done"],
                  pids=10, timeout=20, **sb)
    assert b"can't fork" in r.stderr or b"Resource temporarily unavailable" in r.stderr
    assert not r.timed_out


def test_timeout_kills_everything(sb):
    r = pyrun.run(["sh", "-c", "sleep 1000 & sleep 1000 & while :; do :; done"], timeout=0.5, **sb)
    assert r.timed_out and r.signal == signal.SIGKILL and r.exit_code is None
    assert r.cpu_time > 0.1


def test_fork_bomb_stays_inside(sb):
    r = pyrun.run(["sh", "-c", "f() { f | f & }; f; sleep 2"], pids=32, timeout=2, **sb)
    assert r.timed_out or r.exit_code is not None


def test_output_cap(sb):
    r = pyrun.run(["sh", "-c", "head -c 5000000 /dev/zero; echo tail >&2"], max_output=1000, **sb)
    assert r.truncated and len(r.stdout) == 1000
    assert r.stderr == b"tail\n" and r.exit_code == 0


def test_cpus_limit_and_big_stdin(sb):
    data = os.urandom(1 << 20)
    r = pyrun.run(["sh", "-c", "md5sum"], stdin=data, cpus=0.5, **sb)
    import hashlib
    assert r.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


def test_mounts_read_only_and_writable(sb, tmp_path):
    host = tmp_path / "data"
    host.mkdir()
    (host / "f").write_text("hello")
    os.chmod(host, 0o777)
    r = pyrun.run(["sh", "-c", "cat /mnt/f; echo x > /mnt/g || echo ro; echo y > /work/z && cat /work/z"],
                  mounts=[(str(host), "/mnt")], writable=["/work"], **sb)
    assert r.stdout == b"hello" + b"ro\ny\n"
    r = pyrun.run(["sh", "-c", "echo x > /mnt/g"], mounts=[sandbox.Bind(str(host), "/mnt", True)], **sb)
    assert r.exit_code == 0 and (host / "g").read_text() == "x\n"


def in_threads(worker, n=8):
    """Run worker(k) for k in range(n) on n threads; raise the first error."""
    errors = []

    def guarded(k):
        try:
            worker(k)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_concurrent_runs(sb):
    results = []
    lock = threading.Lock()

    def worker(k):
        for i in range(k, 100, 8):
            r = pyrun.run(["sh", "-c", f"echo {i}; cat"], stdin=str(i), **sb)
            with lock:
                results.append((i, r))

    in_threads(worker)
    assert len(results) == 100
    for i, r in results:
        assert r.exit_code == 0 and r.stdout == f"{i}\n{i}".encode()


def test_sandbox_several_commands(sb):
    with pyrun.Sandbox(**sb) as box:
        assert box.exec(["sh", "-c", "echo 1 > /tmp/a"]).exit_code == 0
        r = box.exec(["cat", "/tmp/a"])
        assert r.stdout == b"1\n"
        r = box.exec(["sh", "-c", "cat; id -u"], stdin=b"x", user=(1000, 1000))
        assert r.stdout == b"x1000\n"
        r = box.exec(["sh", "-c", "sleep 1000 & sleep 1000"], timeout=0.3)
        assert r.timed_out
        # the sandbox survives its commands' timeouts
        assert box.exec(["echo", "still"]).stdout == b"still\n"
        r = box.exec(HOG, timeout=10)
        assert r.oom_killed
    with pytest.raises(FailedPrecondition):
        box.exec(["true"])
    box.close()


def test_exception_inside_sandbox_cleans_up(sb):
    with pytest.raises(RuntimeError):
        with pyrun.Sandbox(**sb) as box:
            box.exec(["true"])
            raise RuntimeError("boom")


def test_dropped_sandbox_is_removed(sb):
    import gc
    box = pyrun.Sandbox(**sb)
    pid = box._ctr.pid
    del box
    gc.collect()
    assert not os.path.exists(f"/proc/{pid}")


OWNER = """
import sys, pyrun
kw = dict(rootfs=sys.argv[1], cgroup_parent=sys.argv[2])
if sys.argv[3] == "run":
    pyrun.run(["sleep", "1000"], timeout=None, **kw)
else:
    pyrun.Sandbox(**kw).exec(["sleep", "1000"], timeout=None)
"""


@pytest.mark.parametrize("how", ["run", "Sandbox"])
def test_sandbox_ends_with_its_killed_owner(sb, how):
    """SIGKILL of the owning process leaves no process of the sandbox: a
    run's init has PR_SET_PDEATHSIG, a Sandbox's idle init reads EOF.
    (Its empty cgroups stay: nothing is left to remove them.)"""
    import subprocess
    import sys
    import time

    owner = subprocess.Popen([sys.executable, "-c", OWNER, sb["rootfs"], sb["cgroup_parent"], how])
    v2 = os.path.exists(os.path.join(CG, "cgroup.controllers"))
    top = os.path.join(CG, "" if v2 else "pids", sb["cgroup_parent"].lstrip("/"))
    want = 1 if how == "run" else 2  # sleep; cat and sleep
    pids = []
    try:
        for _ in range(500):
            groups = [e.path for e in os.scandir(top) if e.is_dir()] if os.path.isdir(top) else []
            pids = [int(p) for g in groups
                    for p in open(os.path.join(g, "cgroup.procs")).read().split()]
            if len(pids) >= want:
                break
            time.sleep(0.01)
        assert len(pids) == want, "the sandbox did not start"
        pidfds = [os.pidfd_open(p) for p in pids]
    finally:
        owner.kill()
        owner.wait()
    try:
        import select
        for fd in pidfds:
            assert select.select([fd], [], [], 10)[0], "a sandbox process outlived its owner"
    finally:
        for fd in pidfds:
            os.close(fd)
    for h in hierarchies():
        d = os.path.join(h, sb["cgroup_parent"].lstrip("/"))
        for g in (e.path for e in os.scandir(d) if e.is_dir()) if os.path.isdir(d) else ():
            for _ in range(100):
                try:
                    os.rmdir(g)
                    break
                except OSError:
                    time.sleep(0.02)
        if os.path.isdir(d):
            os.rmdir(d)  # the owner made the parent, not this process


def test_sandbox_outlives_the_thread_that_made_it(sb):
    boxes = []
    t = threading.Thread(target=lambda: boxes.append(pyrun.Sandbox(**sb)))
    t.start()
    t.join()
    with boxes[0] as box:
        assert box.exec(["echo", "alive"]).stdout == b"alive\n"


def test_seccomp_profile_by_capability():
    from pyrun.oci.seccomp_default import default_profile
    from pyrun.seccomp import compile_filter

    def allowed(p):
        return {n for r in p["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
                for n in r["names"]}
    plain = default_profile()
    admin = default_profile(["CAP_SYS_ADMIN"])
    assert "mount" not in allowed(plain) and "mount" in allowed(admin)
    assert "clone" in allowed(admin)
    clone3 = [r for r in plain["syscalls"] if r["names"] == ["clone3"]]
    assert clone3 and clone3[0]["errnoRet"] == 38
    assert "io_uring_setup" not in allowed(admin)
    assert len(plain["architectures"]) == 3 and default_profile(compat_arches=False)["architectures"] == []
    assert compile_filter(plain)[1] > compile_filter(default_profile(compat_arches=False))[1] > 0


def test_keyboard_interrupt_during_run_cleans_up(sb):
    # SIGINT arrives while run() waits on the container.
    t = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            pyrun.run(["sleep", "10"], **sb)
    finally:
        t.cancel()


def test_keyboard_interrupt_during_exec_cleans_up(sb):
    t = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        with pyrun.Sandbox(**sb) as box:
            t.start()
            box.exec(["sleep", "10"])


def test_async(sb):
    async def main():
        rs = await asyncio.gather(*(pyrun.run_async(["echo", str(i)], **sb) for i in range(10)))
        assert [r.stdout for r in rs] == [f"{i}\n".encode() for i in range(10)]
        task = asyncio.ensure_future(pyrun.run_async(["sleep", "10"], **sb))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with pyrun.AsyncSandbox(**sb) as box:
            assert (await box.exec(["echo", "a"])).stdout == b"a\n"
    asyncio.run(main())


@pytest.mark.parametrize("kw,err", [
    (dict(argv=[]), InvalidArgument),
    (dict(argv="echo hi"), InvalidArgument),
    (dict(argv=["echo", 3]), InvalidArgument),
    (dict(argv=[""]), InvalidArgument),
    (dict(memory=-1), InvalidArgument),
    (dict(pids=0), InvalidArgument),
    (dict(timeout=-2), InvalidArgument),
    (dict(cpus=0), InvalidArgument),
    (dict(max_output=-5), InvalidArgument),
    (dict(user=(-1, 0)), InvalidArgument),
    (dict(cwd="tmp"), InvalidArgument),
    (dict(env=["NOEQUALS"]), InvalidArgument),
    (dict(mounts=[("/no/such/dir", "/mnt")]), NotFound),
    (dict(cgroup_parent="/"), InvalidArgument),
    # Found by trying to break it (each once slipped through or raised a
    # bare Python error, or an error about the sandbox's internal spec):
    (dict(mounts=[sandbox.Bind("/tmp", "/b", writable="no")]), InvalidArgument),
    (dict(cwd="/tm\0p"), InvalidArgument),
    (dict(timeout=float("nan")), InvalidArgument),
    (dict(timeout=float("inf")), InvalidArgument),
    (dict(timeout=1e300), InvalidArgument),
    (dict(cpus=float("nan")), InvalidArgument),
    (dict(cpus=1e30), InvalidArgument),
    (dict(memory=1 << 70), InvalidArgument),
    (dict(pids=1 << 40), InvalidArgument),
    (dict(env={"A=B": "c"}), InvalidArgument),
    (dict(writable="/work"), InvalidArgument),
    (dict(mounts="/tmp:/x"), InvalidArgument),
    (dict(writable=["/"]), InvalidArgument),
    (dict(writable=["/dev"]), InvalidArgument),
    (dict(writable=["/proc"]), InvalidArgument),
    (dict(mounts=[("/tmp", "/dev/null")]), InvalidArgument),
    (dict(writable=["//"]), InvalidArgument),
    (dict(writable=["//proc"]), InvalidArgument),
    (dict(mounts=[("/tmp", "//dev/null")]), InvalidArgument),
    (dict(stdin="\udcff"), InvalidArgument),
])
def test_bad_input(sb, kw, err):
    argv = kw.pop("argv", ["true"])
    with pytest.raises(err) as e:
        pyrun.run(argv, **{**sb, **kw})
    if err is InvalidArgument and kw:
        # The message names the argument as the caller spelled it.
        assert str(e.value).startswith(next(iter(kw))), e.value


def test_missing_cwd_is_an_error_not_a_new_directory(sb):
    """run used to create a missing cwd in the (caller's, read-only)
    rootfs, as runc does for a bundle; exec refused it.  Both refuse."""
    with pytest.raises(StepError, match="chdir /nonexistent"):
        pyrun.run(["pwd"], cwd="/nonexistent", **sb)
    assert not os.path.exists(os.path.join(sb["rootfs"], "nonexistent"))
    with pyrun.Sandbox(**sb) as box:
        with pytest.raises(StepError, match="chdir /nonexistent"):
            box.exec(["pwd"], cwd="/nonexistent")


def test_timeout_holds_under_an_output_flood(sb):
    """A bug: the deadline was only checked when poll() had nothing to
    report, so `yes` with timeout=1 ran for 4-9 s."""
    r = pyrun.run(["yes"], max_output=100, timeout=0.5, **sb)
    assert r.timed_out and r.truncated and r.signal == signal.SIGKILL
    assert r.wall_time < 5  # the contract, with room for a loaded machine
    with pyrun.Sandbox(**sb) as box:
        r = box.exec(["sh", "-c", "yes & yes & yes"], max_output=5, timeout=0.5)
        assert r.timed_out and r.wall_time < 5


def test_interrupt_while_starting_leaves_nothing(sb):
    """A KeyboardInterrupt landing anywhere in the first milliseconds of
    run() or Sandbox() (between the clone and recording the pid, inside
    the cgroup set-up, ...) used to leave the process, a zombie or the
    cgroups; the fixture checks the cgroups, this the processes."""
    import time

    def children():
        out = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                            out.append(int(name))
                except (OSError, IndexError, ValueError):
                    pass
        return out

    before = children()
    for i in range(40):
        delay = 0.0002 * (i % 20)
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        try:
            timer.start()
            if i < 20:
                pyrun.run(["sleep", "30"], **sb)
            else:
                with pyrun.Sandbox(**sb) as box:
                    box.exec(["sleep", "30"])
        except KeyboardInterrupt:
            pass
        finally:
            timer.cancel()
            timer.join()
        assert children() == before, f"left behind after an interrupt at {delay * 1000:.1f} ms"


def test_bad_rootfs_and_program(sb, tmp_path):
    with pytest.raises(NotFound):
        pyrun.run(["true"], **{**sb, "rootfs": str(tmp_path / "nope")})
    with pytest.raises(InvalidArgument):
        pyrun.run(["true"], **{**sb, "bundle": str(tmp_path)})
    with pytest.raises(InvalidArgument, match="db="):
        pyrun.run(["true"], **{**sb, "rootfs": None, "image": "busybox:latest"})
    with pytest.raises(StepError, match="no-such-program"):
        pyrun.run(["no-such-program"], **sb)
    with pytest.raises(InvalidArgument, match="^rootfs"):
        pyrun.run(["true"], **{**sb, "rootfs": sb["rootfs"] + "\0"})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FailedPrecondition, match="needs `cat`"):
        pyrun.Sandbox(**{**sb, "rootfs": str(empty)})


def test_import_pyrun_is_lazy():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import sys, pyrun; print('pyrun.sandbox' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_concurrent_sandboxes_and_shared_exec(sb):
    with pyrun.Sandbox(**sb) as shared:
        def worker(k):
            with pyrun.Sandbox(**sb) as own:
                for i in range(3):
                    assert own.exec(["echo", f"{k}-{i}"]).stdout == f"{k}-{i}\n".encode()
                    assert shared.exec(["cat"], stdin=f"{k}{i}").stdout == f"{k}{i}".encode()

        in_threads(worker)


def test_every_exec_lands_in_the_sandbox_cgroup(sb):
    # Regression: exec's second stage could ask to be put in the cgroup
    # before the first stage reported its pid, and stay outside.
    with pyrun.Sandbox(**sb) as box:
        for _ in range(40):
            r = box.exec(["cat", "/proc/self/cgroup"])
            assert r.exit_code == 0 and b".." not in r.stdout, r.stdout


def test_image_from_the_store(sb, busybox_rootfs, tmp_path):
    from pyrun.fsutil import remove_tree
    from pyrun.images.build import image_from_dir
    from pyrun.metadata import DB
    from pyrun.snapshots import registry

    where = tmp_path / "store"
    backend = registry.new("overlayfs", str(where / "snapshots"))
    db = DB(str(where / "meta"), snapshotters={"overlayfs": backend})
    try:
        image_from_dir(db, "default", "sandbox-test/busybox:1", busybox_rootfs)
        kw = {**sb, "rootfs": None, "image": "sandbox-test/busybox:1", "db": db}
        r = pyrun.run(["sh", "-c", "cat /etc/passwd | head -1; touch /x || echo ro"], **kw)
        assert r.stdout == b"root:x:0:0:root:/root:/bin/sh\nro\n", r
        with pyrun.Sandbox(**kw) as box:
            assert box.exec(["echo", "hi"]).stdout == b"hi\n"
        with pytest.raises(NotFound):
            pyrun.run(["true"], **{**kw, "image": "sandbox-test/nope:1"})
        # only the image's committed layer is left: every view is gone
        kinds = []
        db.snapshotter("default", "overlayfs").walk(lambda info: kinds.append(str(info.kind)))
        assert len(kinds) == 1 and "committed" in kinds[0].lower()
        assert not mounts_under(str(where))
    finally:
        db.close()
        backend.close()
        remove_tree(str(where))


def test_close_from_another_thread_ends_a_running_exec(sb):
    """close() used to wait for the running command (forever with
    timeout=None) before it killed anything."""
    box = pyrun.Sandbox(**sb)
    results = []
    t = threading.Thread(target=lambda: results.append(box.exec(["sleep", "1000"], timeout=None)))
    t.start()
    for _ in range(500):
        if len(box._ctr.cg.manager.pids()) >= 2:  # the init and sleep
            break
        threading.Event().wait(0.01)
    box.close()
    t.join()
    assert results[0].signal == signal.SIGKILL


def test_close_while_execs_start_and_queue(sb):
    """close() racing execs from other threads: each gets a Result killed
    by SIGKILL or FailedPrecondition, never a raw error from a half-dead
    container (FileNotFoundError on /proc/N/ns/..., ENOMEM from fork)."""
    for delay in (0, 0.001, 0.003, 0.3):
        box = pyrun.Sandbox(**sb)
        out = []

        def ex():
            try:
                out.append(box.exec(["sleep", "100"], timeout=None).signal)
            except FailedPrecondition:
                out.append("closed")
            except Exception as e:  # noqa: BLE001 - the test reports it
                out.append(repr(e))

        ts = [threading.Thread(target=ex) for _ in range(4)]
        for t in ts:
            t.start()
        threading.Event().wait(delay)
        box.close()
        for t in ts:
            t.join()
        assert all(o in (signal.SIGKILL, "closed") for o in out), out

