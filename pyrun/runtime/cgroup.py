"""How the runtime uses :mod:`pyrun.cgroups`: one adapter that knows the
container's parsed resources, so create/kill/delete stay short.

When: a container gets cgroups when its spec has ``linux.resources`` or a
``linux.cgroupsPath`` (runc makes them always; pyrun skips the cost when
nothing asks for limits or a place in the tree).  Order, as runc: create the
groups, put the init in them before it execs (and before it unshares a
cgroup namespace), write the limits, remove the groups on delete.
"""
from pyrun import cgroups


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

    def apply(self, pid):
        self.manager.apply(pid)

    def set_resources(self):
        if self.resources is not None:
            self.manager.set(self.resources)

    def kill_all(self, sig):
        self.manager.kill_all(sig)

    def destroy(self):
        self.manager.destroy()


def wanted(spec):
    return spec.linux.resources is not None or bool(spec.linux.cgroups_path)


def manager_for(spec, cid, systemd=False):
    """The adapter for a new container.  Raises InvalidArgument naming the
    bad ``linux.resources`` field, or the cgroups errors (systemd, mode)."""
    res = cgroups.parse_resources(spec.linux.resources or {})
    res = res.with_devices(cgroups.devices.default_allowed([d.path for d in spec.linux.devices]))
    return ContainerCgroup(cgroups.new_manager(spec.linux.cgroups_path, cid, systemd=systemd), res)


def manager_from_state(st):
    """The adapter for an existing container, from its saved state."""
    return ContainerCgroup(cgroups.Manager.from_state(st.cgroup))
