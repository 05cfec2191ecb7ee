"""Container state: the status machine and its atomic, minimal record.

A container's record lives in ``<root>/<id>/state.json`` (runc keeps its
own in ``/run/runc/<id>/state.json``), next to the ``exec.fifo`` that a
created container's init blocks on.  The status is refreshed from the
kernel on every load: a dead init (or a recycled pid, told apart by its
start time) means *stopped*.

Statuses and what they allow (runtime spec "Lifecycle"; runc semantics):

=========  =====  ====  =======  =====  ======
status     start  kill  delete   pause  resume
=========  =====  ====  =======  =====  ======
creating   no     no    yes      no     no
created    yes    yes   yes      yes    no
running    no     yes   --force  yes    no
paused     no     yes   --force  no     yes
stopped    no     no    yes      no     no
=========  =====  ====  =======  =====  ======

Deleting a created container kills its init.

*paused* is not a runtime-spec status, but runc reports it in ``state``
and ``list`` (its freezer is frozen); resume returns the container to
*created* or *running*, whichever it was (the exec fifo tells).
"""
import errno
import fcntl
import os
import time

from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyrun.fsutil import atomic_write
from pyrun.jsonio import dumps, loads
from pyrun.record import Record

OCI_VERSION = "1.2.0"
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+.-")


class Damaged(InvalidArgument):
    """A container's state file cannot be read back."""


class Status(str):
    """A container status (runtime spec "State": ``status``)."""

    def can_start(self):
        return self == Status.CREATED

    def can_kill(self):
        return self in (Status.CREATED, Status.RUNNING, Status.PAUSED)

    def can_pause(self):
        return self in (Status.CREATED, Status.RUNNING)

    def can_resume(self):
        return self == Status.PAUSED

    def can_delete(self, force=False):
        return force or self in (Status.CREATING, Status.CREATED, Status.STOPPED)


Status.CREATING = Status("creating")
Status.CREATED = Status("created")
Status.RUNNING = Status("running")
Status.PAUSED = Status("paused")
Status.STOPPED = Status("stopped")


def check_id(cid):
    """Container ids as runc accepts them: letters, digits, ``_+.-``, not
    ``.`` or ``..``.  Raises InvalidArgument."""
    if not cid or not _ID_CHARS.issuperset(cid) or cid in (".", "..") or len(cid) > 255:
        shown = cid if len(cid) <= 40 else cid[:37] + "..."
        raise InvalidArgument(f"invalid container id {shown!r}: use letters, digits and _+.- "
                              "only, at most 255 of them")


def proc_start_time(pid):
    """Start time of ``pid`` in clock ticks since boot (field 22 of
    /proc/pid/stat), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data[data.rindex(b")") + 2:].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


class State(Record):
    """What later commands need to know about a container: ``start_time``
    in clock ticks since boot (tells a recycled pid apart), ``created`` in
    RFC 3339 UTC, ``config`` the raw config.json (for poststop hooks),
    ``cgroup`` what the cgroup manager needs to find its groups again;
    ``host_mounts``, for a container without its own mount namespace, the
    mount points under the rootfs that were there before it (the others
    are its own, unmounted on delete); ``oom`` [path of the memory group's
    file with the ``oom_kill`` counter, its value at create] (empty without
    a memory group); ``oom_kills`` how many of the container's processes
    the kernel's OOM killer has killed since create (refreshed on load);
    ``traced`` whether create left a trace pipe for start (pyrun.trace)."""
    __slots__ = ("id", "bundle", "rootfs", "pid", "start_time", "status", "created",
                 "annotations", "config", "cgroup", "owner", "host_mounts", "oom", "oom_kills",
                 "traced")
    _defaults = {"pid": 0, "start_time": 0, "status": Status.CREATING, "created": "",
                 "annotations": dict, "config": dict, "cgroup": dict, "owner": "",
                 "host_mounts": None, "oom": list, "oom_kills": 0, "traced": False}

    def alive(self):
        return bool(self.pid) and proc_start_time(self.pid) == self.start_time

    def oci(self):
        """The runtime-spec state object (runtime.md "State"), with the
        fields runc's ``state`` adds (rootfs, created, owner), and
        ``"oomKilled": true`` (pyrun's own, present only then) once the OOM
        killer has killed a process of the container."""
        out = {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": self.pid if self.status in (Status.CREATED, Status.RUNNING, Status.PAUSED) else 0,
            "status": str(self.status),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
        }
        if self.annotations:
            out["annotations"] = self.annotations
        if self.oom_kills:
            out["oomKilled"] = True
        return out


def read_oom_kills(path):
    """The ``oom_kill`` counter of a memory group's memory.oom_control
    (cgroup v1) or memory.events (v2) at ``path``; None if it is gone.
    Read here, not through pyrun.cgroups, to keep ``state`` and ``list``
    from importing the cgroup managers."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except FileNotFoundError:
        return None
    return 0


def unmount_own(st):
    """Detach the mounts a container without a mount namespace made in
    the caller's namespace under its rootfs, deepest first."""
    if st.host_mounts is None:
        return
    from pyrun import linux, trace
    from pyrun.fsutil import mounts_under

    tr = trace.current()
    keep = set(st.host_mounts)
    for m in mounts_under(st.rootfs):
        if m not in keep:
            try:
                with (trace.NO_SPAN if tr is None else
                      tr.span("cleanup", f"umount2(\"{m}\", MNT_DETACH)")):
                    linux.umount2(m, linux.MNT_DETACH)
            except OSError:
                pass


def now_rfc3339():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


class Store:
    """The state directory of all containers under ``root`` (runc's
    ``--root``, default /run/pyrun)."""

    def __init__(self, root="/run/pyrun"):
        self.root = os.path.abspath(root)

    def dir(self, cid):
        return os.path.join(self.root, cid)

    def fifo(self, cid):
        return os.path.join(self.root, cid, "exec.fifo")

    def reserve(self, cid):
        """Create the container's directory; AlreadyExists if the id is
        taken."""
        check_id(cid)
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        try:
            os.mkdir(self.dir(cid), 0o711)
        except FileExistsError:
            raise AlreadyExists(f"container {cid!r} already exists") from None

    def lock(self, cid):
        """An exclusive flock on the container's directory (held until
        the returned fd is closed)."""
        try:
            fd = os.open(self.dir(cid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"container {cid!r} does not exist") from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def save(self, st):
        data = st.asdict()
        data["status"] = str(st.status)
        # No fsync: a container's runtime state does not outlive a reboot
        # (runc does not sync its state either); the rename keeps it atomic.
        atomic_write(os.path.join(self.dir(st.id), "state.json"), dumps(data).encode(),
                     durable=False)

    def load(self, cid):
        """Load and refresh a container's state.  NotFound if unknown."""
        check_id(cid)
        try:
            with open(os.path.join(self.dir(cid), "state.json"), "rb") as f:
                data = loads(f.read())
        except FileNotFoundError:
            if os.path.isdir(self.dir(cid)):
                # Reserved but never saved: a create that is under way or died.
                return State(id=cid, bundle="", rootfs="", status=Status.CREATING)
            raise NotFound(f"container {cid!r} does not exist") from None
        except (ValueError, OSError) as e:
            raise Damaged(f"container {cid!r}: its state file is damaged ({e}); "
                          "`delete --force` removes it") from None
        try:
            data["status"] = Status(data["status"])
            st = State(**data)
        except (KeyError, TypeError) as e:
            raise Damaged(f"container {cid!r}: its state file is damaged ({e!r}); "
                          "`delete --force` removes it") from None
        self.refresh(st)
        return st

    def refresh(self, st):
        if st.status in (Status.CREATED, Status.RUNNING, Status.PAUSED):
            if not st.alive():
                st.status = Status.STOPPED
            elif st.status == Status.CREATED and not os.path.exists(self.fifo(st.id)):
                st.status = Status.RUNNING
        if st.oom:
            count = read_oom_kills(st.oom[0])
            if count is not None:
                st.oom_kills = max(st.oom_kills, count - st.oom[1])
        return st

    def unpaused_status(self, st):
        """The status a paused container returns to once thawed: created
        while its init still waits on the exec fifo, else running."""
        return Status.CREATED if os.path.exists(self.fifo(st.id)) else Status.RUNNING

    def list(self):
        """All containers' states, sorted by id."""
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if not os.path.isdir(os.path.join(self.root, name)):
                continue  # not ours (runc skips such entries too)
            try:
                out.append(self.load(name))
            except (NotFound, InvalidArgument, ValueError):
                continue
        return out

    def remove(self, cid):
        """Remove the container's directory (state.json, exec.fifo, and
        the trace files of a traced create)."""
        d = self.dir(cid)
        for name in ("exec.fifo", "state.json", "trace.fifo", "trace.json"):
            try:
                os.unlink(os.path.join(d, name))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:
                raise
            from pyrun.fsutil import remove_tree
            remove_tree(d)


def require(st, verb, ok):
    if not ok:
        raise FailedPrecondition(f"cannot {verb} container {st.id!r}: it is {st.status}")
