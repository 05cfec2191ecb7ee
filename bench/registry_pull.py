#!/usr/bin/env python3
"""Cold pull from a loopback docker-registry: pyrun's ``pull`` into an empty
content store against ``skopeo copy docker://… oci:DIR`` (the peer; it too
downloads, checks digests and writes each blob once).

Two images: five 4 MiB layers, and one 64 MiB layer (random bytes, so
nothing compresses).  Rounds alternate between pyrun and skopeo so both see
the same machine load; pyrun runs in-process (no interpreter start), skopeo
as a command, so its figure includes its process start (~20 ms).

Rerun (from the repo root; needs docker-registry and skopeo):

    .venv/bin/python bench/registry_pull.py             # 7 rounds each
    .venv/bin/python bench/registry_pull.py --reps 15

Times are wall-clock milliseconds; "ratio" is pyrun's median over skopeo's.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from pyrun.content import ContentStore, write_blob  # noqa: E402
from pyrun.content.digest import digest_bytes  # noqa: E402
from pyrun.fsutil import remove_tree  # noqa: E402
from pyrun.registry import Client, Descriptor, Hosts, pull, push  # noqa: E402
from pyrun.registry.manifest import OCI_MANIFEST  # noqa: E402
from registry_fixtures import start_registry, stop_registry  # noqa: E402

IMAGES = {"5 x 4 MiB": [4 << 20] * 5, "1 x 64 MiB": [64 << 20]}


def push_layers(reg, client, work, name, layers, media_type):
    """Push an image whose layers are ``layers`` ([(blob bytes, diffID)],
    blobs of ``media_type``) to ``reg``; returns (its reference, the
    layers' total size in bytes)."""
    store = ContentStore(os.path.join(work, f"src-{name}"))
    descs = []
    for i, (data, _) in enumerate(layers):
        d = {"mediaType": media_type, "digest": digest_bytes(data), "size": len(data)}
        write_blob(store, f"l{i}", data, d)
        descs.append(d)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [diff_id for _, diff_id in layers]}}).encode()
    cd = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_bytes(config),
          "size": len(config)}
    write_blob(store, "c", config, cd)
    man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cd,
                      "layers": descs}).encode()
    md = {"mediaType": OCI_MANIFEST, "digest": digest_bytes(man), "size": len(man)}
    write_blob(store, "m", man, md)
    ref = f"{reg.host}/bench/{name}:1"
    push(ref, store, Descriptor(OCI_MANIFEST, md["digest"], md["size"]), client=client)
    remove_tree(store.root)
    return ref, sum(d["size"] for d in descs)


def make_image(reg, client, work, name, sizes):
    """Push an image of random uncompressed layers of ``sizes`` bytes;
    return its ref."""
    layers = []
    for size in sizes:
        data = os.urandom(size)
        layers.append((data, digest_bytes(data)))
    return push_layers(reg, client, work, name, layers,
                       "application/vnd.oci.image.layer.v1.tar")[0]


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="pyrun-bench-pull-", dir=args.dir)
    reg = start_registry(os.path.join(work, "registry"))
    try:
        hosts = Hosts.plain_http(reg.host)
        rows = []
        for label, sizes in IMAGES.items():
            ref = make_image(reg, Client(hosts=hosts, credentials=lambda h: None), work,
                             label.replace(" ", "").replace("x", "-").lower(), sizes)
            ours, peer = [], []
            for r in range(args.reps):
                dest = os.path.join(work, f"pyrun-{r}")
                ours.append(timed(lambda: pull(ref, ContentStore(dest), client=Client(
                    hosts=hosts, credentials=lambda h: None))))
                remove_tree(dest)
                dest = os.path.join(work, f"skopeo-{r}")
                peer.append(timed(lambda: subprocess.run(
                    ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:1"],
                    check=True)))
                remove_tree(dest)
            rows.append((label, ours, peer))
    finally:
        stop_registry(reg)
        remove_tree(work)
    print(f"cold pull from a loopback docker-registry, {args.reps} rounds, ms")
    print(f"{'image':<12} {'tool':<7} {'median':>8} {'min':>8} {'max':>8} {'ratio':>7}")
    for label, ours, peer in rows:
        ratio = statistics.median(ours) / statistics.median(peer)
        for tool, xs in (("pyrun", ours), ("skopeo", peer)):
            print(f"{label:<12} {tool:<7} {statistics.median(xs):>8.1f} {min(xs):>8.1f} {max(xs):>8.1f}"
                  f" {(f'{ratio:.2f}' if tool == 'pyrun' else ''):>7}")


if __name__ == "__main__":
    main()
