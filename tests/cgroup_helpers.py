"""Helpers shared by the real-cgroup tests (test_cgroups_real, test_cgroups_v2)."""
import os
import signal
import subprocess
import sys
import uuid

from pyrun.cgroups import fs


def new_parent_name():
    return f"/pyrun-test-{uuid.uuid4().hex[:10]}"


def pure_v2():
    """True on a pure cgroup v2 host (the vagrant/run-in-qemu guest)."""
    from pyrun.cgroups import detect
    try:
        return detect() == "v2"
    except Exception:
        return False


def hierarchies(root="/sys/fs/cgroup"):
    """Every hierarchy mounted under ``root`` (the unified one included),
    each once: aliases such as cpu -> cpu,cpuacct are skipped."""
    return [os.path.join(root, d) for d in os.listdir(root)
            if os.path.isdir(os.path.join(root, d)) and not os.path.islink(os.path.join(root, d))]


def remove_test_parent(hierarchy_roots, name):
    """Kill every process below the test parent ``name`` (only the tests'
    own) and remove the groups, in each hierarchy."""
    for hroot in hierarchy_roots:
        top = fs.join(hroot, name)
        if not os.path.isdir(top):
            continue
        for dirpath, _, _ in os.walk(top):
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        fs.remove_dir(hroot, name, attempts=50)


def spawn(code):
    """A Python child that waits for one byte on stdin, then runs ``code``:
    move it into a group first, then let it go."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(1)\n" + code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def go(proc, timeout=30):
    out, err = proc.communicate(b"g", timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


OPEN_DEVICES = (
    "import os, sys\n"
    "for dev in sys.argv[1:]:\n"
    "    try:\n"
    "        os.close(os.open(dev, os.O_RDONLY))\n"
    "        print(dev, 'opened')\n"
    "    except PermissionError:\n"
    "        print(dev, 'denied')\n")


def try_open(m, paths):
    """Open each device from a process in the group: {path: opened?}."""
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(1)\n" + OPEN_DEVICES,
                          *paths], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    m.apply(p.pid)
    rc, out, err = go(p)
    assert rc == 0, err
    return {line.split()[0]: line.split()[1] == "opened" for line in out.splitlines()}
