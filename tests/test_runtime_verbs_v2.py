"""pause, resume, update, events and OOM reporting on a pure cgroup v2
host: cgroup.freeze, memory.max/pids.max and memory.events (POLLPRI).

This host is hybrid (the container's memory and freezer are v1 there), so
these run in the qemu guest of ``vagrant/run-in-qemu`` (marked ``vm``):
``vagrant/run-in-qemu -m vm tests/test_runtime_verbs_v2.py``.  The guest
has no busybox, so the "container" is a plain process put in its groups
and given a saved state, and the verbs are called as library functions.
"""
import os
import signal
import threading
import time

import pytest

from pyrun.cgroups import new_manager
from pyrun.runtime import events, update
from pyrun.runtime.cgroup import ContainerCgroup
from pyrun.runtime.kill import kill
from pyrun.runtime.pause import pause
from pyrun.runtime.resume import resume
from pyrun.runtime.state import State, Status, Store, now_rfc3339, proc_start_time

from cgroup_helpers import go, new_parent_name, pure_v2, remove_test_parent, spawn

ROOT = "/sys/fs/cgroup"


pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 or not pure_v2(), reason="needs root on a pure "
                       "cgroup v2 host: vagrant/run-in-qemu tests/test_runtime_verbs_v2.py"),
]


@pytest.fixture
def container(tmp_path):
    """make(code, resources) -> (store, proc): a process that runs
    ``code`` once go(proc) is called, in groups under a test parent, saved
    as running container "c1"."""
    parent = new_parent_name()
    store = Store(str(tmp_path / "state"))
    procs = []

    def make(code, resources):
        m = new_manager(f"{parent}/c1", "c1")
        m.create()
        proc = spawn(code)
        procs.append(proc)
        m.apply(proc.pid)
        cg = ContainerCgroup(m)
        store.reserve("c1")
        store.save(State(id="c1", bundle=str(tmp_path), rootfs=str(tmp_path), pid=proc.pid,
                         start_time=proc_start_time(proc.pid), status=Status.RUNNING,
                         created=now_rfc3339(), config={"linux": {"resources": resources}},
                         cgroup=cg.describe(), oom=cg.oom_counter()))
        update.update(store, "c1", resources)
        return store, proc

    yield make
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    remove_test_parent([ROOT], parent)


def group_file(store, name):
    st = store.load("c1")
    with open(os.path.join(ROOT, st.cgroup["paths"][""].lstrip("/"), name)) as f:
        return f.read().strip()


def test_pause_resume_kill_v2(container):
    store, proc = container("import time\nwhile True: time.sleep(0.01)", {"pids": {"limit": 10}})
    pause(store, "c1")
    assert store.load("c1").status == Status.PAUSED
    assert group_file(store, "cgroup.freeze") == "1"
    assert "frozen 1" in group_file(store, "cgroup.events")
    resume(store, "c1")
    assert store.load("c1").status == Status.RUNNING
    assert group_file(store, "cgroup.freeze") == "0"
    pause(store, "c1")
    kill(store, "c1", signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    assert store.load("c1").status == Status.STOPPED


def test_update_and_stats_v2(container):
    store, _ = container("import time\ntime.sleep(100)", {"pids": {"limit": 10}})
    update.update(store, "c1", update.resources_from_flags({"memory": "64m", "pids-limit": "5",
                                                            "cpu-quota": "20000"}))
    assert group_file(store, "pids.max") == "5"
    assert group_file(store, "memory.max") == str(64 << 20)
    assert group_file(store, "cpu.max") == "20000 100000"
    update.update(store, "c1", {"cpu": {"period": 50000}})
    assert group_file(store, "cpu.max") == "20000 50000"
    ev = events.stats(store, "c1")
    assert ev["type"] == "stats" and ev["data"]["pids"] == {"current": 1, "limit": 5}
    assert ev["data"]["memory"]["usage"]["limit"] == 64 << 20


def test_oom_v2(container):
    store, proc = container("b = bytearray(256 << 20)",
                            {"memory": {"limit": 32 << 20, "swap": 32 << 20}})
    seen = []
    t = threading.Thread(target=lambda: seen.extend(events.events(store, "c1", interval=0.05)))
    t.start()
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen, "no stats event"
    go(proc)
    t.join(30)
    assert not t.is_alive()
    assert {"type": "oom", "id": "c1"} in seen
    assert proc.returncode == -signal.SIGKILL
    st = store.load("c1")
    assert st.status == Status.STOPPED and st.oci()["oomKilled"] is True
