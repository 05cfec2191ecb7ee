"""A one-layer image made from a directory on this machine, straight into
the local store: how the README's first command gets a busybox image with
no registry and no network.

The layer is an uncompressed tar written in sorted order (owners, modes,
symlinks, hardlinks, devices, mtimes kept; sockets skipped), so the same
directory gives the same digests.  Only reading the host's files is done
here: the tar is written with :mod:`tarfile`, then stored and unpacked
like any pulled layer.
"""
import io
import json
import os
import stat
import tarfile
import tempfile

from pyrun.content import write_blob
from pyrun.content.digest import digester
from pyrun.errdefs import NotFound

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _layer(rootfs, out):
    """Write ``rootfs`` as a tar into the file ``out``; returns its size."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        seen = {}
        for top, dirs, files in os.walk(rootfs):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(top, name)
                rel = os.path.relpath(path, rootfs)
                st = os.lstat(path)
                if stat.S_ISSOCK(st.st_mode):
                    continue
                info = tf.gettarinfo(path, arcname=rel)
                info.uname = info.gname = ""
                key = (st.st_dev, st.st_ino)
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in seen:
                    info.type, info.linkname, info.size = tarfile.LNKTYPE, seen[key], 0
                    tf.addfile(info)
                    continue
                seen.setdefault(key, rel)
                if info.isreg():
                    with open(path, "rb") as f:
                        tf.addfile(info, f)
                else:
                    tf.addfile(info)
    return out.tell()


def _blob(store, data, media_type):
    d = digester()
    d.update(data)
    desc = {"mediaType": media_type, "digest": "sha256:" + d.hexdigest(), "size": len(data)}
    write_blob(store, f"build-{desc['digest']}", data, desc)
    return desc


def image_from_dir(db, namespace, name, rootfs, *, cmd=("sh",), entrypoint=(), env=(DEFAULT_PATH,),
                   working_dir="", user="", labels=None):
    """Store ``rootfs`` (a directory) as image ``name`` in ``namespace``
    and return the image record.  Raises NotFound for a missing directory,
    InvalidArgument for a bad name."""
    from pyrun.images.store import ImageStore
    from pyrun.registry.manifest import host_platform
    from pyrun.registry.reference import parse_reference

    if not os.path.isdir(rootfs):
        raise NotFound(f"{rootfs}: no such directory")
    name = str(parse_reference(name))
    lease = db.leases(namespace).create(expire=None)
    try:
        store = db.content_store(namespace, lease=lease.id)
        with tempfile.TemporaryFile() as tmp:
            size = _layer(rootfs, tmp)
            tmp.seek(0)
            d = digester()
            while True:
                chunk = tmp.read(1 << 20)
                if not chunk:
                    break
                d.update(chunk)
            layer = {"mediaType": OCI_LAYER, "digest": "sha256:" + d.hexdigest(), "size": size}
            tmp.seek(0)
            write_blob(store, f"build-{layer['digest']}", tmp, layer)
        plat = host_platform()
        config = {"created": "1970-01-01T00:00:00Z", "architecture": plat.architecture,
                  "os": plat.os,
                  "config": {"Env": list(env), "Cmd": list(cmd), "Entrypoint": list(entrypoint) or None,
                             "WorkingDir": working_dir, "User": user, "Labels": dict(labels or {})},
                  "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
                  "history": [{"created_by": f"pyrun image_from_dir {os.path.abspath(rootfs)}"}]}
        if plat.variant:
            config["variant"] = plat.variant
        cfg = _blob(store, json.dumps(config, sort_keys=True).encode(), OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": [layer]}
        store_labels = {"containerd.io/gc.ref.content.config": cfg["digest"],
                        "containerd.io/gc.ref.content.l.0": layer["digest"]}
        data = json.dumps(manifest, sort_keys=True).encode()
        d = digester()
        d.update(data)
        mdesc = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + d.hexdigest(), "size": len(data)}
        write_blob(store, f"build-{mdesc['digest']}", io.BytesIO(data), mdesc, labels=store_labels)
        return ImageStore(db, namespace).set(name, mdesc)
    finally:
        db.leases(namespace).delete(lease.id)
