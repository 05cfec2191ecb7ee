"""``events``: a container's resource usage and OOM notifications as
JSON events (runc's ``events``).

Event shapes, as runc prints them one per line:
``{"type": "stats", "id": ID, "data": STATS}`` where STATS is
Manager.stats() (cpu, memory, pids, blkio, hugetlb; runc's types.Stats),
and ``{"type": "oom", "id": ID}`` each time the OOM killer strikes in the
container's memory group: cgroup v1's memory.oom_control eventfd fires,
or the ``oom_kill`` count in cgroup v2's memory.events grows (watched
with POLLPRI).  The stream ends when the container's init exits (after a
last check for OOM events) or its groups are removed.
"""
import os
import select
import time

from pyrun.errdefs import FailedPrecondition
from pyrun.runtime.state import Status


def _load(store, cid):
    from pyrun.runtime.cgroup import manager_from_state

    st = store.load(cid)
    if st.status in (Status.STOPPED, Status.CREATING):
        raise FailedPrecondition(f"cannot watch container {cid!r}: it is {st.status}")
    return st, manager_from_state(st, "watch").manager


def stats(store, cid):
    """One stats event of container ``cid``.  Raises NotFound,
    FailedPrecondition (stopped, or no cgroups)."""
    st, manager = _load(store, cid)
    return {"type": "stats", "id": st.id, "data": manager.stats()}


class _OOMWatch:
    """What wakes the loop on an OOM: the v1 eventfd, or an open
    memory.events (v2) that polls POLLPRI when it changes."""

    def __init__(self, manager):
        self.manager = manager
        self.fd = self.events_file = None
        try:
            self.fd = manager.oom_eventfd()
            self.mask = select.POLLIN
            if self.fd is None:
                _, g = manager.backend("memory")
                self.count = manager.oom_kill_count()
                self.events_file = os.path.join(g.dir, "memory.events")
                self.fd = os.open(self.events_file, os.O_RDONLY | os.O_CLOEXEC)
                self.mask = select.POLLPRI
        except (FailedPrecondition, FileNotFoundError):
            self.fd = None          # no memory group: no OOM to report

    def fired(self):
        """How many OOM events are pending (0 if none); never blocks."""
        if self.fd is None:
            return 0
        p = select.poll()
        p.register(self.fd, self.mask)
        if not p.poll(0):
            return 0
        if self.events_file is None:
            os.read(self.fd, 8)     # the eventfd counter; reading resets it
            # The eventfd also fires when the group is removed.
            return 1 if os.path.isdir(self.manager.group("memory").dir) else 0
        os.pread(self.fd, 4096, 0)  # re-arms POLLPRI
        try:
            count = self.manager.oom_kill_count()
        except FileNotFoundError:
            return 0
        new, self.count = count - self.count, count
        return max(new, 0)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)


def events(store, cid, interval=5.0):
    """Yield event dicts for container ``cid``: stats every ``interval``
    seconds (the first after one interval, as runc) and OOM events as
    they happen, until the container stops.  Raises NotFound,
    FailedPrecondition (stopped, or no cgroups)."""
    from pyrun import linux

    st, manager = _load(store, cid)
    try:
        pidfd = linux.pidfd_open(st.pid)
    except OSError:
        return
    watch = _OOMWatch(manager)
    try:
        if not st.alive():
            return
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if watch.fd is not None:
            poller.register(watch.fd, watch.mask)
        due = time.monotonic() + interval
        while True:
            ready = poller.poll(max(due - time.monotonic(), 0) * 1000)
            exited = any(fd == pidfd for fd, _ in ready)
            for _ in range(watch.fired()):
                yield {"type": "oom", "id": st.id}
            if exited or not os.path.isdir(manager.group(next(iter(manager.paths))).dir):
                return
            if time.monotonic() >= due:
                due += interval
                try:
                    data = manager.stats()
                except FileNotFoundError:
                    return
                yield {"type": "stats", "id": st.id, "data": data}
    finally:
        watch.close()
        os.close(pidfd)
