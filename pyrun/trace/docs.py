"""Write docs/how-a-container-starts.md from a real trace.

    python -m pyrun.trace.docs > docs/how-a-container-starts.md

(as root, with the host's static busybox at /bin/busybox).  It builds a
busybox bundle in a temporary directory, runs create, start, kill and
delete on it with tracing on, and prints every step with a note on why it
is there.  tests/test_trace.py checks that the committed document's steps
still match a fresh trace (:func:`doc_steps` against :func:`trace_lifecycle`),
ignoring pids and times.
"""
import os
import re
import shutil
import sys
import tempfile

from pyrun.trace.steps import PHASES, seccomp_summary
from pyrun.trace.tracer import Tracer

BUSYBOX = "/bin/busybox"
CID = "demo"
# A cgroup named for pyrun tests, as this project's machines require.
CGROUPS_PATH = "/pyrun-test-trace-doc/demo"
SECCOMP = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
           "syscalls": [{"names": ["reboot", "kexec_load", "swapon", "swapoff"],
                         "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}

# (text in the step's call, why it is there).  The first match explains a
# step; each note is shown once, at the first step it explains.
NOTES = [
    ("mkfifo(", "The exec fifo is what splits `create` from `start`: the container's init will "
                "block reading it until `start` writes one byte."),
    ("mkdir(\"/sys/fs/cgroup", "The container's cgroups are made before the process exists, "
                               "one directory per controller."),
    ("clone3(", "One `clone3` creates the container's init and all its new namespaces at once. "
                "`CLONE_PIDFD` hands back a pidfd, so that later signals can never hit a recycled pid; "
                "`CLONE_INTO_CGROUP` has it born in its cgroup2 group."),
    ("tasks\", \"0\")", "The init joins its v1 groups itself, first thing: writing `0` to "
                        "`tasks` moves the writing thread, its only one, without the global "
                        "cgroup lock that a write to `cgroup.procs` takes (whose first use after "
                        "a quiet spell waits for an RCU grace period, 5-15 ms).  The runtime "
                        "opened these files before the clone; the kernel checks the opener's "
                        "rights."),
    ("write(\"/sys/fs/cgroup/", "Each limit is one write to one cgroup file."),
    ("sethostname(", "The UTS namespace is new, so the hostname can change without touching the host's."),
    ("MS_REC|MS_SLAVE", "First make every mount in the new namespace a slave: mounts made from now on "
                        "cannot propagate back to the host."),
    ("rootfs\", NULL, MS_BIND|MS_REC", "pivot_root needs the new root to be a mount point: the "
                                        "rootfs is bound onto itself."),
    ("O_DIRECTORY", "The runtime keeps the root open as a directory fd; every later path is resolved "
                    "beneath it (openat2 with RESOLVE_IN_ROOT), so a symlink in the image cannot "
                    "point a mount outside the rootfs (CVE-2021-30465)."),
    ("\"proc\", 0", "A new proc instance: it shows only the processes of the container's pid namespace."),
    ("\"/dev\", \"tmpfs\"", "/dev is a small tmpfs, filled below with only the allowed device nodes."),
    ("devpts", "A private devpts instance (`newinstance`): the container's ptys are its own."),
    ("\"sysfs\"", "sysfs read-only: the container can read its network devices, not reconfigure the host."),
    ("/sys/fs/cgroup\", \"tmpfs\"", "The cgroup tree is a tmpfs with one read-only bind per "
                                    "hierarchy, each of the container's own group only."),
    ("mknodat(", "Device nodes are made, not bound from the host: only the six that every "
                 "container gets (null, zero, full, random, urandom, tty), owner and mode exact."),
    ("symlinkat(\"/proc/self/fd\"", "The usual /dev links to the process's own fds."),
    ("pivot_root(", "pivot_root makes the rootfs the new `/`; the old root, the host's whole tree, is "
                    "then made a slave and detached: nothing of the host's filesystem is reachable."),
    ("\"/\", NULL, MS_REMOUNT", "`root.readonly`: the container's / becomes read-only."),
    ("\"/proc/bus\"", "`linux.readonlyPaths`: parts of /proc that could change the host's kernel "
                      "state are bound onto themselves read-only."),
    ("mask /proc", "`linux.maskedPaths`: files and directories of /proc that leak host information "
                   "are covered by /dev/null or an empty read-only tmpfs."),
    ("keyctl(", "A new session keyring: the host's kernel keys are not reachable."),
    ("prlimit64(", "`process.rlimits`, set in the init so that the container's program inherits them."),
    ("chdir(", "`process.cwd`, entered before the identity changes (a non-root user may lack the rights)."),
    ("find ", "The program is looked up in the container's PATH now, so that `create` (not `start`) "
              "fails for a missing executable."),
    ("close_range(", "Every fd of the runtime above stdio is marked close-on-exec: none may leak into "
                     "the container (CVE-2024-21626)."),
    ("PR_CAPBSET_DROP", "The bounding set is cut to the spec's list first, while the process still "
                        "holds CAP_SETPCAP, which the drop needs."),
    ("PR_SET_KEEPCAPS", "The user and groups of `process.user`; KEEPCAPS keeps the permitted set across "
                        "setresuid so the capset below can still choose from it."),
    ("capset(", "The spec's capabilities, set by set. root in the container now holds only these."),
    ("PR_SET_NO_NEW_PRIVS", "`process.noNewPrivileges`: no setuid binary or file capability can ever "
                            "raise the process's privileges again."),
    ("open(\"", "`start` opens the exec fifo; the init holds the other end, so this open succeeds "
                "only while the init is alive and waiting."),
    ("write(exec.fifo", "One byte lets the init go on."),
    ("read(exec.fifo)", "The init wakes up in the same state `create` left it in."),
    ("seccomp(", "The seccomp filter is loaded last, so that the runtime's own remaining steps "
                 "need not be allowed by it."),
    ("execve(", "The runtime's code is replaced by the container's program; the trace pipe, "
                "close-on-exec, closes here."),
    ("pidfd_open(", "`kill` opens a pidfd and checks the process's start time, so a pid reused by "
                    "another process is never signalled."),
    ("pidfd_send_signal(", ""),
    ("poll(pidfd", "`delete` waits for the init to be gone before it removes anything."),
    ("rmdir(\"/sys/fs/cgroup", "The container's cgroups are removed (they must be empty)."),
    ("unlink + rmdir(", "Last, the state directory. The mounts need no unmount: they lived only in the "
                        "container's mount namespace, which the kernel tore down with its last process."),
]


class _Collect(Tracer):
    """A tracer that keeps each verb's events instead of writing them."""

    def __init__(self):
        super().__init__()
        self.verbs = []

    def flush(self, verb):
        self.verbs.append((verb, sorted(self.events, key=lambda e: e.t_ns)))
        self.events = []


def make_bundle(path):
    """A bundle at ``path``: a rootfs with the host's static busybox, and
    runc's default spec with a pids limit, a seccomp filter and
    ``busybox sleep 30`` as the process."""
    from pyrun.jsonio import dumps
    from pyrun.oci.default import default_spec

    rootfs = os.path.join(path, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy2(BUSYBOX, os.path.join(rootfs, "bin", "busybox"))
    spec = default_spec()
    spec["root"] = {"path": "rootfs", "readonly": True}
    spec["hostname"] = CID
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/busybox", "sleep", "30"]
    spec["linux"]["resources"] = {"pids": {"limit": 64}}
    spec["linux"]["cgroupsPath"] = CGROUPS_PATH
    spec["linux"]["seccomp"] = SECCOMP
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(dumps(spec))
    return path


def trace_lifecycle(workdir):
    """create, start, kill (SIGKILL), wait, delete the busybox bundle in
    ``workdir`` with tracing on.  Returns [(verb, [Event])] with
    ``workdir`` and the pids in the calls replaced by placeholders."""
    from pyrun.runtime.create import create
    from pyrun.runtime.delete import delete
    from pyrun.runtime.kill import kill
    from pyrun.runtime.start import start
    from pyrun.runtime.state import Store
    from pyrun.trace import tracing

    bundle = make_bundle(os.path.join(workdir, "bundle"))
    store = Store(os.path.join(workdir, "state"))
    tracer = _Collect()
    with tracing(tracer):
        st = create(store, CID, bundle)
        try:
            start(store, CID)
            kill(store, CID, 9)
            os.waitpid(st.pid, 0)
        finally:
            delete(store, CID, force=True)
    pid = re.compile(rf"\b{st.pid}\b")

    def clean(text):
        return pid.sub("<init-pid>", text.replace(workdir, "<tmp>"))

    for _, events in tracer.verbs:
        for e in events:
            e.calls = [clean(c) for c in e.calls]
            e.result = clean(e.result)
    return tracer.verbs


def step_key(verb, proc, call):
    """What must match between the document and a fresh trace: the verb,
    the process, and the call with every number (pids, modes, sizes, CPU
    lists, instruction counts) left out."""
    return (verb.split()[0], proc, re.sub(r"\d+", "N", call))


_STEP = re.compile(r"^\d+\. `(.*)` = ")
_VERB = re.compile(r"^## `pyrun (\w+)")
_WHO = re.compile(r"^   \*(\w+), ")


def doc_steps(text):
    """The :func:`step_key` of each step of a document this module wrote."""
    out = []
    verb = call = None
    for line in text.splitlines():
        m = _VERB.match(line)
        if m:
            verb = m.group(1)
            continue
        m = _STEP.match(line)
        if m:
            call = m.group(1)
            continue
        m = _WHO.match(line)
        if m and call is not None:
            out.append(step_key(verb, m.group(1), call))
            call = None
    return out


def trace_steps(verbs):
    """The :func:`step_key` of each step of :func:`trace_lifecycle`'s result."""
    return [step_key(verb, e.proc, e.calls[0]) for verb, events in verbs for e in events]


def _who(e):
    if e.ns_pid is None:
        return f"{e.proc}, host pid {e.pid}"
    return f"{e.proc}, host pid {e.pid}, pid {e.ns_pid} in the container"


def render(verbs):
    """The markdown document for [(verb, [Event])]."""
    seccomp = seccomp_summary(SECCOMP)
    lines = [
        "# How a container starts",
        "",
        "<!-- Generated by `python -m pyrun.trace.docs > docs/how-a-container-starts.md` (as root);",
        "     tests/test_trace.py checks that its steps match a fresh trace. -->",
        "",
        "This is a real trace of pyrun creating, starting, killing and deleting a container, every",
        "kernel-level step in order, with a note on why it is there.  `pyrun run` is",
        "`create` + `start` + wait + `delete`.  Get the same for any bundle with",
        "`pyrun --trace run ID` (or `PYRUN_TRACE=1`, `--trace-format json`).",
        "",
        "The bundle: runc's default `config.json` (`pyrun spec`) over a rootfs holding only a static",
        f"busybox, with `busybox sleep 30` as the process, hostname `{CID}`, a pids limit of 64 in",
        f"the cgroup `{CGROUPS_PATH}`, and a small seccomp profile ({seccomp}).",
        "",
        "Two processes make the calls: the **runtime** (pyrun itself, in the host's namespaces) and",
        "the container's **init**, which pyrun clones and which runs a list of steps planned in",
        "Python (`pyrun/runtime/plan.py`) in C (`native/container.c`) until it execs the container's",
        "program.  Its pid is shown both as the host sees it and inside the container, where it is 1.",
        "Times are microseconds since the verb's first step; paths under the temporary directory",
        "are shown as `<tmp>`.",
        "",
    ]
    for verb, events in verbs:
        lines += [f"## `pyrun {verb}`", ""]
        if not events:
            continue
        t0 = events[0].t_ns
        phase = None
        n = 0
        used = set()
        for e in events:
            if e.phase != phase:
                phase = e.phase
                lines += [f"### {phase}", "", f"> {PHASES.get(phase, '')}", ""]
            n += 1
            lines.append(f"{n}. `{e.calls[0]}` = {e.outcome()}")
            # Two trailing spaces: a markdown line break.
            lines.append(f"   *{_who(e)}, +{(e.t_ns - t0) // 1000} µs*  ")
            for c in e.calls[1:]:
                lines.append(f"   then `{c}`  ")
            for i, (needle, note) in enumerate(NOTES):
                if needle in e.calls[0]:
                    if note and i not in used:
                        lines += ["", f"   {note}"]
                    used.add(i)
                    break
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main():
    if not os.path.exists(BUSYBOX):
        sys.exit(f"{BUSYBOX} is missing (Debian package busybox-static)")
    workdir = tempfile.mkdtemp(prefix="pyrun-trace-doc-")
    try:
        text = render(trace_lifecycle(workdir))
    finally:
        from pyrun.fsutil import remove_tree
        remove_tree(workdir)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
