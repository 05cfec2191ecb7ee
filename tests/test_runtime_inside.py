"""What a process sees inside a pyrun container (as root, real namespaces)."""
import os

import pytest

from runtime_helpers import Pyrun, make_bundle

pytestmark = pytest.mark.root


@pytest.fixture
def pyrun(tmp_path):
    p = Pyrun(tmp_path / "state")
    yield p
    p.cleanup()


def run(pyrun, tmp_path, busybox_rootfs, script, **changes):
    bundle = tmp_path / "bundle"
    make_bundle(bundle, busybox_rootfs, ["/bin/sh", "-c", script], **changes)
    return pyrun("run", "-b", str(bundle), "c1", check=False)


def test_pid_one_hostname_and_only_lo(pyrun, tmp_path, busybox_rootfs):
    r = run(pyrun, tmp_path, busybox_rootfs, "echo $$; hostname; ls /sys/class/net",
            hostname="box1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "box1", "lo"]


def test_user_and_groups(pyrun, tmp_path, busybox_rootfs):
    r = run(pyrun, tmp_path, busybox_rootfs, "id -u; id -g; id -G",
            process_user={"uid": 1000, "gid": 1001, "additionalGids": [1002, 1003]})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1000", "1001", "1001", "1002", "1003"]


def test_capabilities_and_rlimits(pyrun, tmp_path, busybox_rootfs):
    caps = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    r = run(pyrun, tmp_path, busybox_rootfs,
            "grep ^Cap /proc/self/status; ulimit -Sn; ulimit -Hn",
            process_capabilities={"bounding": caps, "effective": caps, "permitted": caps,
                                  "inheritable": caps[:1], "ambient": caps[:1]},
            process_rlimits=[{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1000}])
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(":\t") for line in r.stdout.splitlines() if ":\t" in line)
    want = (1 << 0) | (1 << 5) | (1 << 10)
    assert int(lines["CapEff"], 16) == want
    assert int(lines["CapPrm"], 16) == want
    assert int(lines["CapBnd"], 16) == want
    assert int(lines["CapInh"], 16) == 1
    assert int(lines["CapAmb"], 16) == 1
    assert r.stdout.split()[-2:] == ["512", "1000"]


def test_masked_readonly_and_mount_options(pyrun, tmp_path, busybox_rootfs):
    from pyrun.oci.default import default_spec
    mounts = default_spec()["mounts"] + [
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["noexec", "nosuid", "size=1m"]}]
    r = run(pyrun, tmp_path, busybox_rootfs,
            "cat /proc/kcore | wc -c; ls /sys/firmware | wc -l;"
            "touch /proc/sys/kernel/x 2>/dev/null && echo writable || echo ro;"
            "touch /rootfile 2>/dev/null && echo writable || echo ro;"
            "grep ' /scratch ' /proc/mounts; grep ' /proc/sys ' /proc/mounts",
            mounts=mounts)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].strip() == "0"          # masked file reads as /dev/null
    assert out[1].strip() == "0"          # masked dir is an empty tmpfs
    assert out[2] == "ro" and out[3] == "ro"
    scratch = out[4].split()
    assert scratch[2] == "tmpfs" and {"noexec", "nosuid", "rw"} <= set(scratch[3].split(","))
    assert "ro" in out[5].split()[3].split(",")


def test_cwd_env_and_umask(pyrun, tmp_path, busybox_rootfs):
    r = run(pyrun, tmp_path, busybox_rootfs, "pwd; echo $FOO; umask",
            process_cwd="/tmp", process_env=["PATH=/bin", "FOO=bar baz"],
            process_user={"uid": 0, "gid": 0, "umask": 0o027})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["/tmp", "bar baz", "0027"]


def test_bind_mount_readonly_and_devices(pyrun, tmp_path, busybox_rootfs):
    from pyrun.oci.default import default_spec
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello").write_text("hi\n")
    mounts = default_spec()["mounts"] + [
        {"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind", "ro"]}]
    r = run(pyrun, tmp_path, busybox_rootfs,
            "cat /data/hello; touch /data/x 2>/dev/null && echo rw || echo ro;"
            "ls -l /dev/null /dev/fuse | cut -c1-10; readlink /dev/fd; readlink /dev/ptmx",
            mounts=mounts,
            linux_devices=[{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                            "fileMode": 0o600}])
    assert r.returncode == 0, r.stderr
    out = r.stdout.split()
    assert out[:2] == ["hi", "ro"]
    assert out[2:4] == ["crw-------", "crw-rw-rw-"]  # ls sorts: fuse, null
    assert out[4:] == ["/proc/self/fd", "pts/ptmx"]
    assert not os.path.exists(data / "x")


def test_symlinked_mount_destination_stays_inside(pyrun, tmp_path, busybox_rootfs):
    """CVE-2021-30465 class: a destination whose path goes through a
    symlink pointing at the host's / must land inside the rootfs."""
    import shutil
    rootfs = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), rootfs / "escape")  # absolute link to a host dir
    from pyrun.oci.default import default_spec
    mounts = default_spec()["mounts"] + [
        {"destination": "/escape/sub", "type": "tmpfs", "source": "tmpfs", "options": []}]
    bundle = tmp_path / "bundle"
    make_bundle(bundle, str(rootfs), ["/bin/sh", "-c", f"grep -q ' {outside}/sub tmpfs' /proc/mounts"],
                mounts=mounts)
    r = pyrun("run", "-b", str(bundle), "c1", check=False)
    assert r.returncode == 0, r.stderr
    assert list(outside.iterdir()) == []          # nothing created on the host
    assert (rootfs / str(outside).lstrip("/") / "sub").is_dir()  # created inside instead


def test_proc_on_a_symlink_is_refused(pyrun, tmp_path, busybox_rootfs):
    """runc's CVE-2019-19921 guard: an image whose /proc is a symlink (to
    a directory it controls) gets no proc mount there; pyrun followed it,
    inside the rootfs."""
    import shutil
    rootfs = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    shutil.rmtree(rootfs / "proc")  # an empty directory of our own copy
    (rootfs / "fakeproc").mkdir()
    os.symlink("/fakeproc", rootfs / "proc")
    bundle = tmp_path / "bundle"
    make_bundle(bundle, str(rootfs), ["true"])
    r = pyrun("run", "-b", str(bundle), "c1", check=False)
    assert r.returncode == 1 and "mount proc on /proc" in r.stderr and "symlink" in r.stderr
    assert list((rootfs / "fakeproc").iterdir()) == []
    assert "c1" not in pyrun("list", "-q").stdout


def test_seccomp_errno_and_default_action(pyrun, tmp_path, busybox_rootfs):
    seccomp = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["no_such_syscall_anywhere"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 2, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
        ],
    }
    r = run(pyrun, tmp_path, busybox_rootfs,
            "mkdir /tmp/x 2>&1; touch /tmp/f; chmod 777 /tmp/f 2>&1; chmod 700 /tmp/f && echo ok",
            linux_seccomp=seccomp, process_noNewPrivileges=False,
            mounts=__import__("pyrun.oci.default", fromlist=["x"]).default_spec()["mounts"]
            + [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}])
    assert r.returncode == 0, r.stderr
    assert "Function not implemented" in r.stdout          # errnoRet 38 = ENOSYS
    assert "Operation not permitted" in r.stdout           # default errnoRet: EPERM
    assert r.stdout.rstrip().endswith("ok")


def test_seccomp_bad_input(pyrun, tmp_path, busybox_rootfs):
    r = run(pyrun, tmp_path, busybox_rootfs, "true",
            linux_seccomp={"defaultAction": "SCMP_ACT_BOGUS"})
    assert r.returncode == 1 and "linux.seccomp.defaultAction: unknown seccomp action" in r.stderr
    r = run(pyrun, tmp_path, busybox_rootfs, "true",
            linux_seccomp={"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x.sock"})
    assert r.returncode == 1 and "listenerPath" in r.stderr
    assert pyrun("list", "-q").stdout.split() == []


def test_seccomp_filters_cached_across_processes():
    """A compiled filter is kept in root's cache dir, keyed by the profile
    (and the loaded libseccomp), so the next pyrun process skips libseccomp."""
    import random
    from pyrun import seccomp

    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                             "errnoRet": random.randrange(1, 4000)}]}
    first = seccomp.compile_filter(profile)
    seccomp._cache.clear()
    import json
    assert seccomp._disk_load(json.dumps(profile, sort_keys=True)) == first
    assert seccomp.compile_filter(profile) == first
    st = os.stat(seccomp.DISK_CACHE)
    assert st.st_uid == 0 and not st.st_mode & 0o077


def test_signals_start_at_their_defaults(pyrun, tmp_path, busybox_rootfs):
    """The runtime is Python, which ignores SIGPIPE and SIGXFSZ; ignored
    signals stay ignored across execve, so the child stage resets every
    disposition and the mask (a bug: `yes | head -1` never ended by
    SIGPIPE in a pyrun container)."""
    bundle = tmp_path / "bundle"
    # grep itself, not through sh: busybox sh ignores SIGQUIT in its children.
    make_bundle(bundle, busybox_rootfs, ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"])
    r = pyrun("run", "-b", str(bundle), "c1", check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]
