#!/usr/bin/env python3
"""Cold pull + unpack from a loopback docker-registry: pyrun's
``pull_image`` (metadata DB, overlayfs snapshots) against containerd 1.6's
``ctr images pull --plain-http`` (which unpacks into its overlayfs
snapshotter) and ``skopeo copy docker://… oci:DIR`` + ``umoci unpack``.

Images (pushed once to a docker-registry this script starts on 127.0.0.1
with temporary storage, stopped at the end):

- "5 layers": a busybox layer and four layers of random and text files,
  about 20 MB gzipped in all;
- "debian": a Debian bookworm minbase rootfs from ``debootstrap
  --variant=minbase`` (without the downloaded .debs and apt lists) in one
  gzipped layer.  debootstrap runs once (it needs
  Debian's archive); the layer is cached in /var/tmp/pyrun-bench-cache.  If
  debootstrap fails, this image is skipped with a message.

Every round is cold for every tool: a fresh pyrun root, a fresh containerd
(own root, state dir and socket in a temp dir, CRI plugin disabled; started
before the timer) and fresh skopeo/umoci directories.  Rounds alternate
between the tools.  pyrun runs in-process; ctr, skopeo and umoci are
commands, so their figures include process starts (a few ms each).

Rerun (from the repo root, as root; needs docker-registry, containerd,
skopeo, umoci, debootstrap):

    .venv/bin/python bench/pull_unpack.py            # 5 rounds each
    .venv/bin/python bench/pull_unpack.py --reps 9 --only "5 layers"

Times are wall-clock milliseconds; "ratio" is pyrun's median over the
tool's median (below 1: pyrun is faster).
"""
import argparse
import gzip
import hashlib
import io
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from interleave import require  # noqa: E402
from pyrun.fsutil import remove_tree  # noqa: E402
from pyrun.images.store import pull_image  # noqa: E402
from pyrun.metadata import DB  # noqa: E402
from pyrun.registry import Client, Hosts  # noqa: E402
from pyrun.snapshots import registry as snapshotters  # noqa: E402
from registry_fixtures import start_registry, stop_registry  # noqa: E402
from registry_pull import push_layers  # noqa: E402

CACHE = "/var/tmp/pyrun-bench-cache"
DEBIAN_LAYER = os.path.join(CACHE, "bookworm-minbase.tar.gz")
GZ_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
BUSYBOX = "/bin/busybox"


# --- images ------------------------------------------------------------------------


def _add(tf, name, data=None, mode=0o644, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, 1700000000, link
    if data is not None:
        info.size = len(data)
    tf.addfile(info, io.BytesIO(data) if data is not None else None)


def synthetic_layers(seed=1):
    """Five uncompressed layer tars: busybox with its applet links, then
    four of random (incompressible) and text (compressible) files."""
    rnd = random.Random(seed)
    layers = []
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("bin", "etc", "tmp", "usr", "usr/bin", "usr/sbin", "sbin"):
            _add(tf, d, mode=0o755, kind=tarfile.DIRTYPE)
        with open(BUSYBOX, "rb") as f:
            _add(tf, "bin/busybox", f.read(), 0o755)
        applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for a in applets:
            if a != "bin/busybox":
                _add(tf, a, kind=tarfile.SYMTYPE, link="/bin/busybox")
    layers.append(buf.getvalue())
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
             for _ in range(2000)]
    for n in range(1, 5):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            _add(tf, f"data{n}", mode=0o755, kind=tarfile.DIRTYPE)
            for i in range(80):
                size = rnd.randint(16 << 10, 160 << 10)
                if i % 2:
                    data = rnd.randbytes(size)
                else:
                    data = b" ".join(rnd.choice(words) for _ in range(size // 6))
                _add(tf, f"data{n}/f{i:03d}", data)
        layers.append(buf.getvalue())
    return layers


def debian_layer():
    """The gzipped minbase rootfs tar, made with debootstrap once and
    cached; None (after a message) if debootstrap fails."""
    if os.path.exists(DEBIAN_LAYER):
        return DEBIAN_LAYER
    os.makedirs(CACHE, exist_ok=True)
    work = tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE)
    rootfs = os.path.join(work, "rootfs")
    try:
        print("making the Debian minbase rootfs with debootstrap (once; a few minutes)...",
              file=sys.stderr)
        res = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", rootfs,
                              "http://deb.debian.org/debian"], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"skipping the debian image: debootstrap failed:\n{res.stderr[-2000:]}",
                  file=sys.stderr)
            return None
        tmp = DEBIAN_LAYER + ".tmp"
        # Without the downloaded .debs and apt lists, as Debian's own
        # container images are made.
        subprocess.run(f"tar --numeric-owner --xattrs --exclude='./var/cache/apt/archives/*.deb' "
                       f"--exclude='./var/lib/apt/lists/*' -C {rootfs} -cf - . "
                       f"| gzip -6 > {tmp}", shell=True, check=True)
        os.rename(tmp, DEBIAN_LAYER)
        return DEBIAN_LAYER
    finally:
        remove_tree(work)


def push_image(reg, work, name, blobs):
    """Push an image whose layers are ``blobs`` (list of (gzipped bytes or
    a path, diffID)); return (its reference, the layers' size in bytes)."""
    layers = []
    for blob, diff_id in blobs:
        if not isinstance(blob, bytes):
            with open(blob, "rb") as f:
                blob = f.read()
        layers.append((blob, diff_id))
    return push_layers(reg, Client(hosts=Hosts.plain_http(reg.host), credentials=lambda h: None),
                       work, name, layers, GZ_LAYER)


def gz_diff_id(path):
    h = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# --- the tools ---------------------------------------------------------------------


def run_pyrun(ref, reg, where):
    backend = snapshotters.new("overlayfs", os.path.join(where, "snapshots"))
    db = DB(os.path.join(where, "meta"), snapshotters={"overlayfs": backend})
    try:
        t0 = time.perf_counter()
        pull_image(db, "bench", ref, snapshotter="overlayfs",
                   client=Client(hosts=Hosts.plain_http(reg.host), credentials=lambda h: None))
        return (time.perf_counter() - t0) * 1000
    finally:
        db.close()
        backend.close()


class Containerd:
    """containerd with a private config, root, state dir and socket."""

    def __init__(self, where):
        self.where = where
        os.makedirs(where)
        self.sock = os.path.join(where, "containerd.sock")
        cfg = os.path.join(where, "config.toml")
        with open(cfg, "w") as f:
            f.write(f'version = 2\nroot = "{where}/root"\nstate = "{where}/state"\n'
                    f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    f'[grpc]\n  address = "{self.sock}"\n'
                    f'[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
                    f'[debug]\n  address = ""\n')
        self.log = open(os.path.join(where, "containerd.log"), "wb")
        self.proc = subprocess.Popen(["containerd", "-c", cfg], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while subprocess.run(["ctr", "-a", self.sock, "version"], capture_output=True).returncode:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"containerd did not start; see {where}/containerd.log")
            time.sleep(0.05)

    def pull(self, ref):
        t0 = time.perf_counter()
        res = subprocess.run(["ctr", "-a", self.sock, "-n", "bench", "images", "pull",
                              "--plain-http", ref], capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"ctr images pull failed: {res.stderr}")
        return (time.perf_counter() - t0) * 1000

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def run_containerd(ref, where):
    c = Containerd(where)
    try:
        return c.pull(ref)
    finally:
        c.stop()


def run_skopeo_umoci(ref, where):
    os.makedirs(where)
    t0 = time.perf_counter()
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}",
                    f"oci:{where}/layout:1"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{where}/layout:1", f"{where}/bundle"],
                   check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t0) * 1000


# --- main --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default=None, help='one image: "5 layers" or "debian"')
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir in /var/tmp)")
    args = ap.parse_args()
    require("pull_unpack", ("docker-registry", "containerd", "ctr", "skopeo", "umoci"), root=False)
    work = tempfile.mkdtemp(prefix="pyrun-bench-unpack-", dir=args.dir or "/var/tmp")
    reg = start_registry(os.path.join(work, "registry"))
    rows = []
    try:
        images = []
        if args.only in (None, "5 layers"):
            tars = synthetic_layers()
            blobs = [(gzip.compress(t, 6, mtime=0), "sha256:" + hashlib.sha256(t).hexdigest())
                     for t in tars]
            images.append(("5 layers",) + push_image(reg, work, "layers", blobs))
        if args.only in (None, "debian"):
            path = debian_layer()
            if path:
                images.append(("debian",) + push_image(reg, work, "debian",
                                                       [(path, gz_diff_id(path))]))
        for label, ref, size in images:
            times = {"pyrun": [], "containerd": [], "skopeo+umoci": []}
            for r in range(args.reps):
                for tool, fn in (("pyrun", lambda w: run_pyrun(ref, reg, w)),
                                 ("containerd", lambda w: run_containerd(ref, w)),
                                 ("skopeo+umoci", lambda w: run_skopeo_umoci(ref, w))):
                    where = os.path.join(work, f"{tool}-{r}")
                    try:
                        times[tool].append(fn(where))
                    finally:
                        remove_tree(where)
            rows.append((f"{label} ({size / 1e6:.0f} MB)", times))
    finally:
        stop_registry(reg)
        remove_tree(work)
    print(f"cold pull + unpack from a loopback docker-registry, {args.reps} rounds, ms")
    print(f"{'image':<18} {'tool':<13} {'median':>8} {'min':>8} {'max':>8} {'ratio':>7}")
    for label, times in rows:
        ours = statistics.median(times["pyrun"])
        for tool, xs in times.items():
            ratio = "" if tool == "pyrun" else f"{ours / statistics.median(xs):.2f}"
            print(f"{label:<18} {tool:<13} {statistics.median(xs):>8.1f} {min(xs):>8.1f} "
                  f"{max(xs):>8.1f} {ratio:>7}")
    print("ratio = pyrun's median / the tool's median (below 1: pyrun is faster)")


if __name__ == "__main__":
    main()
