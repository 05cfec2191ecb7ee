"""How the runtime uses :mod:`pyrun.cgroups`: one adapter that knows the
container's parsed resources, so create/kill/delete stay short.

When: a container gets cgroups when its spec has ``linux.resources`` or a
``linux.cgroupsPath`` (runc makes them always; pyrun skips the cost when
nothing asks for limits or a place in the tree).  Order, as runc: create the
groups, the init joins them before it execs (and before it unshares a
cgroup namespace), write the limits, remove the groups on delete.
"""
import os

from pyrun import cgroups
from pyrun.errdefs import FailedPrecondition


class ContainerCgroup:
    """The container's groups plus its resources (``pyrun.cgroups``)."""

    def __init__(self, manager, resources=None):
        self.manager = manager
        self.resources = resources

    def create(self):
        self.manager.create()

    def describe(self):
        return self.manager.describe()

    def mount_sources(self):
        return self.manager.mount_sources()

    def open_join(self):
        return self.manager.open_join()

    def set_resources(self):
        if self.resources is not None:
            self.manager.set(self.resources)

    def kill_all(self, sig):
        self.manager.kill_all(sig)

    def oom_counter(self):
        """[path of the file holding the memory group's ``oom_kill``
        counter, its value now] for the container's saved state, or []
        when it has no memory group (see state.read_oom_kills)."""
        b = self.manager.backend("memory")
        if b is None:
            return []
        kind, g = b
        path = os.path.join(g.dir, "memory.oom_control" if kind == "v1" else "memory.events")
        if not os.path.exists(path):
            return []
        return [path, self.manager.oom_kill_count()]

    def destroy(self):
        self.manager.destroy()


def wanted(spec):
    return spec.linux.resources is not None or bool(spec.linux.cgroups_path)


def manager_for(spec, cid, systemd=False):
    """The adapter for a new container.  Raises InvalidArgument naming the
    bad ``linux.resources`` field, or the cgroups errors (systemd, mode)."""
    from pyrun import cgroups  # only when a container has cgroups: it is a costly import
    res = cgroups.parse_resources(spec.linux.resources or {})
    res = res.with_devices(cgroups.devices.default_allowed([d.path for d in spec.linux.devices]))
    return ContainerCgroup(cgroups.new_manager(spec.linux.cgroups_path, cid, systemd=systemd), res)


def manager_from_state(st, verb=None):
    """The adapter for an existing container, from its saved state.  With
    ``verb``, a container without cgroups is a FailedPrecondition naming
    the verb (pause, update, events need them)."""
    if verb is not None and not st.cgroup:
        raise FailedPrecondition(f"cannot {verb} container {st.id!r}: it has no cgroups (its "
                                 f"config.json has neither linux.resources nor linux.cgroupsPath)")
    return ContainerCgroup(cgroups.Manager.from_state(st.cgroup))
