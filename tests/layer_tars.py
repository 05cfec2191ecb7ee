"""Build layer tars in memory for the apply tests (tarfile writing only)."""
import hashlib
import io
import os
import stat
import tarfile

MTIME = 1_600_000_000


def entry(name, type=tarfile.REGTYPE, data=b"", mode=None, uid=0, gid=0, mtime=MTIME,
          linkname="", pax=None, major=0, minor=0):
    ti = tarfile.TarInfo(name)
    ti.type = type
    ti.size = len(data) if type == tarfile.REGTYPE else 0
    ti.mode = (0o755 if type == tarfile.DIRTYPE else 0o644) if mode is None else mode
    ti.uid, ti.gid, ti.mtime, ti.linkname = uid, gid, mtime, linkname
    ti.devmajor, ti.devminor = major, minor
    ti.pax_headers = dict(pax or {})
    return ti, data


def file(name, data=b"", **kw):
    return entry(name, tarfile.REGTYPE, data, **kw)


def dir(name, **kw):
    return entry(name, tarfile.DIRTYPE, **kw)


def symlink(name, target, **kw):
    return entry(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **kw)


def hardlink(name, target, **kw):
    return entry(name, tarfile.LNKTYPE, linkname=target, **kw)


def node(name, type, major=0, minor=0, **kw):
    return entry(name, type, major=major, minor=minor, **kw)


def whiteout(path):
    head, _, base = path.rpartition("/")
    return file(f"{head}/.wh.{base}" if head else f".wh.{base}")


def opaque(dirpath):
    return file(f"{dirpath}/.wh..wh..opq")


def tar(*entries, fmt=tarfile.PAX_FORMAT, end=True):
    """The tar stream of ``entries``; ``end=False`` leaves out the
    end-of-archive blocks (as ``umoci insert`` does)."""
    buf = io.BytesIO()
    tf = tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape")
    for ti, data in entries:
        tf.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)
    body = buf.getvalue()
    tf.close()
    return buf.getvalue() if end else body


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tree(root):
    """Everything observable about the tree at ``root`` except hard-link
    identity and directory mtimes: {relpath: (...)}."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                for x in os.listxattr(p, follow_symlinks=False):
                    if not x.startswith("trusted.overlay."):
                        xattrs[x] = os.getxattr(p, x, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body = f.read()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            else:
                body = st.st_rdev
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, body, tuple(sorted(xattrs.items())), mtime)
    return out
