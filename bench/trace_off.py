"""Is teaching mode free when it is off?  Time ``run`` of /bin/true in a
busybox bundle with:

- base: the CLI of the commit this branch started from (no trace code at
  all), unpacked with ``git archive`` and built in a temp dir;
- off / on: this checkout's CLI with tracing off, and on (PYRUN_TRACE=json
  to /dev/null: the full cost of recording and formatting);
- the same two as a library call in this process (no interpreter start).

All runs interleave round-robin so that they share the machine's noise.

What "off" costs, by construction: in the child (C), ``trace_step`` is one
``trace_fd < 0`` test per step; in Python, one ``current()`` look-up (a
thread-local attribute) per verb and per traced call site, and an
``is None`` test; nothing of pyrun.trace beyond its 50-line switch module
(built-in imports only) is imported.

Rerun, as root, from the checkout (after bash scripts/setup):
    .venv/bin/python bench/trace_off.py [--reps N] [--base REF]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))

from conftest import make_busybox_rootfs  # noqa: E402
from interleave import require, time_interleaved  # noqa: E402
from run_true import library_runner  # noqa: E402
from runtime_helpers import make_bundle  # noqa: E402

from pyrun import trace  # noqa: E402
from pyrun.fsutil import remove_tree  # noqa: E402
from pyrun.trace.tracer import Tracer  # noqa: E402

CLI = "import sys; from pyrun.cli.runc import main; sys.exit(main())"


def build_base(ref, dest):
    """Unpack ``ref`` of this repository into ``dest`` and build its
    native extension in place."""
    os.makedirs(dest)
    archive = subprocess.run(["git", "-C", TOP, "archive", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    subprocess.run([sys.executable, "-W", "ignore", "setup.py", "-q", "build_ext", "--inplace"],
                   cwd=dest, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "compileall", "-q", "pyrun"], cwd=dest, check=True,
                   stdout=subprocess.DEVNULL)


def cli_runner(code_dir, root, bundle, env_extra=None):
    env = dict(os.environ, PYTHONPATH=code_dir)
    env.pop("PYRUN_TRACE", None)
    env.pop("PYRUN_TRACE_FILE", None)
    env.update(env_extra or {})

    def go(cid):
        return subprocess.run([sys.executable, "-c", CLI, "--root", root, "run", "-b", bundle, cid],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              env=env).returncode
    return go


def traced(runner):
    """``runner`` with tracing on (JSON lines to /dev/null)."""
    def go(cid):
        with trace.tracing(Tracer("json", path=os.devnull)):
            return runner(cid)
    return go


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=100, help="runs per variant (default 100)")
    ap.add_argument("--base", default=None,
                    help="commit without the trace code (default: merge-base of HEAD and main)")
    opts = ap.parse_args()
    require("trace_off")
    base = opts.base or subprocess.run(["git", "-C", TOP, "merge-base", "HEAD", "main"], check=True,
                                       capture_output=True, text=True).stdout.strip()
    tmp = tempfile.mkdtemp(prefix="pyrun-bench-trace-")
    try:
        base_dir = os.path.join(tmp, "base")
        build_base(base, base_dir)
        rootfs = os.path.join(tmp, "rootfs")
        make_busybox_rootfs(rootfs)
        bundle = os.path.join(tmp, "bundle")
        make_bundle(bundle, rootfs, ["/bin/true"])
        root = lambda name: os.path.join(tmp, "root-" + name)  # noqa: E731
        on = {"PYRUN_TRACE": "json", "PYRUN_TRACE_FILE": os.devnull}
        runners = {
            "CLI base (no trace code)": cli_runner(base_dir, root("base"), bundle),
            "CLI trace off": cli_runner(TOP, root("off"), bundle),
            "CLI trace on": cli_runner(TOP, root("on"), bundle, on),
            "library trace off": library_runner(root("liboff"), bundle),
            "library trace on": traced(library_runner(root("libon"), bundle)),
        }
        names = list(runners)
        times = time_interleaved(runners, opts.reps, "trace_off")
    finally:
        remove_tree(tmp)

    med = {name: statistics.median(t) for name, t in times.items()}
    ref = {"CLI": med["CLI base (no trace code)"], "library": med["library trace off"]}
    print(f"run of /bin/true in a busybox bundle, {opts.reps} runs each, interleaved (ms); "
          f"base = {base[:12]}")
    print(f"{'variant':<26}{'median':>8}{'min':>8}{'max':>8}{'ratio':>8}")
    for name in names:
        t = times[name]
        print(f"{name:<26}{med[name]:8.2f}{min(t):8.2f}{max(t):8.2f}"
              f"{med[name] / ref[name.split()[0]]:8.2f}")
    print("ratio: CLI rows against the base CLI, library rows against the library with tracing off")
    print("rerun: as root, in the checkout: .venv/bin/python bench/trace_off.py --reps 100")


if __name__ == "__main__":
    main()
