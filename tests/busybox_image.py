"""A one-layer OCI image of the host's static busybox, written as an
oci-archive (a tar of an OCI image layout) that ``ctr images import`` and
``podman load`` both read.

The layer holds bin/busybox and its applet symlinks (``busybox
--list-full``) plus /etc/passwd and /etc/group; the config runs ``sh``
with a PATH.  The tar is deterministic (fixed mtimes, sorted entries).
"""
import hashlib
import io
import json
import os
import subprocess
import tarfile

from conftest import BUSYBOX

MTIME = 1_600_000_000
REF_NAME = "latest"


def _add(tar, name, type=tarfile.REGTYPE, data=b"", mode=0o644, linkname=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.linkname = type, mode, MTIME, linkname
    ti.size = len(data) if type == tarfile.REGTYPE else 0
    tar.addfile(ti, io.BytesIO(data) if data else None)


def layer_tar():
    """The layer as uncompressed tar bytes."""
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    applets = subprocess.run([BUSYBOX, "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = {"bin", "etc", "proc", "sys", "dev", "tmp", "root"}
        dirs |= {os.path.dirname(a) for a in applets}
        for d in sorted(dirs):
            _add(tar, d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        _add(tar, "bin/busybox", data=busybox, mode=0o755)
        for a in sorted(set(applets) - {"bin/busybox"}):
            _add(tar, a, tarfile.SYMTYPE, mode=0o777, linkname="/bin/busybox")
        _add(tar, "etc/passwd",
             data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        _add(tar, "etc/group", data=b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def _blob(blobs, media_type, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def write_oci_archive(path, name):
    """Write the image as an oci-archive tar at ``path``.  ``name`` (a full
    reference such as ``docker.io/library/pyrun-busybox:latest``) goes in
    the index's ``io.containerd.image.name`` annotation, which ``ctr images
    import`` uses; ``org.opencontainers.image.ref.name`` is the tag."""
    layer = layer_tar()
    blobs = {}
    layer_desc = _blob(blobs, "application/vnd.oci.image.layer.v1.tar", layer)
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = _blob(blobs, "application/vnd.oci.image.config.v1+json",
                        json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = _blob(blobs, "application/vnd.oci.image.manifest.v1+json",
                          json.dumps(manifest).encode())
    manifest_desc["annotations"] = {"io.containerd.image.name": name,
                                    "org.opencontainers.image.ref.name": name.rpartition(":")[2]}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "index.json", data=json.dumps(index).encode())
        for d in ("blobs", "blobs/sha256"):
            _add(tar, d, tarfile.DIRTYPE, mode=0o755)
        for digest, data in sorted(blobs.items()):
            _add(tar, "blobs/sha256/" + digest.split(":")[1], data=data)
    return manifest_desc["digest"]
