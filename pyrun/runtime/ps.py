"""``ps``: the processes of a container (runc's ``ps``).

The pids are those in the container's cgroup and its child groups; a
container without cgroups has those of its pid namespace (none once it
has stopped).  The table is the host's ``ps`` (default ``-ef``) cut down
to those pids, as runc prints it.
"""
from pyrun.errdefs import InvalidArgument


def pids(store, cid):
    """Sorted host pids of container ``cid``'s processes.  Raises
    NotFound."""
    st = store.load(cid)
    if st.cgroup:
        from pyrun.runtime.cgroup import manager_from_state
        try:
            return manager_from_state(st).manager.pids()
        except FileNotFoundError:
            return []
    if not st.alive():
        return []
    from pyrun.runtime.kill import same_pidns
    return sorted(same_pidns(st.pid))


def table(pid_list, ps_args=()):
    """Run ``ps ps_args`` (``-ef`` when empty) and keep its header and
    the lines of ``pid_list``, found through the header's PID column.
    Returns the text.  Raises InvalidArgument when ps fails or prints no
    PID column (e.g. ``-o comm``)."""
    import subprocess

    args = list(ps_args) or ["-ef"]
    r = subprocess.run(["ps", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = r.stdout.decode(errors="replace")
    if r.returncode != 0:
        raise InvalidArgument(f"ps {' '.join(args)} failed (exit {r.returncode}): {out.strip()}")
    lines = out.split("\n")
    header = lines[0].split()
    if "PID" not in header:
        raise InvalidArgument(f"ps {' '.join(args)}: its output has no PID column")
    col = header.index("PID")
    wanted = set(pid_list)
    keep = [lines[0]]
    for line in lines[1:]:
        fields = line.split()
        if len(fields) <= col:
            continue
        try:
            pid = int(fields[col])
        except ValueError:
            raise InvalidArgument(f"ps {' '.join(args)}: cannot read a pid in {line!r}") from None
        if pid in wanted:
            keep.append(line)
    return "\n".join(keep) + "\n"
