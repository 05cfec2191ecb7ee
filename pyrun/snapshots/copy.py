"""Copy a directory tree with everything a container image layer holds
(containerd's ``continuity/fs.CopyDir``, which the native snapshotter uses).

Kept: file types (regular, dir, symlink, char/block device, FIFO, socket),
owners, modes (setuid/setgid/sticky), every xattr the kernel lets root read
(``user.*``, ``trusted.*``, ``security.*``, including file capabilities),
hard links (within the tree), atime/mtime in ns, and holes in sparse files.
File data is reflinked (FICLONE) where the filesystem can, and otherwise
copied data extent by data extent (SEEK_DATA/SEEK_HOLE, lseek(2)) with
copy_file_range(2), or sendfile(2) where that is refused.
"""
import errno
import fcntl
import os
import stat

# <linux/fs.h>: _IOW(0x94, 9, int)
FICLONE = 0x40049409
_NO_REFLINK = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
               errno.EBADF)
_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


def copy_tree(src, dst):
    """Copy the directory ``src`` to ``dst`` (which must not exist, or be
    an empty directory) with all metadata.  Raises OSError naming the path
    that failed; the caller removes a partial ``dst``."""
    if not os.path.isdir(dst):
        os.mkdir(dst, 0o700)
    links = {}
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    dfd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _copy_dir(sfd, dfd, dfd, "", src, links)
        _copy_meta(sfd, dfd, None, os.fstat(sfd))
    finally:
        os.close(sfd)
        os.close(dfd)


def _copy_dir(sfd, dfd, rootfd, rel, where, links):
    # rel: this dir's path below the destination root (rootfd); a hard link
    # is made from the first copy's root-relative path.
    for name in os.listdir(sfd):
        path = f"{where}/{name}"
        st = os.lstat(name, dir_fd=sfd)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=dfd)
            sub_s = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=sfd)
            try:
                sub_d = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=dfd)
                try:
                    _copy_dir(sub_s, sub_d, rootfd, f"{rel}{name}/", path, links)
                    # After the contents: creating entries changes the mtime.
                    _copy_meta(sub_s, sub_d, None, st)
                finally:
                    os.close(sub_d)
            finally:
                os.close(sub_s)
            continue
        if st.st_nlink > 1:
            first = links.get((st.st_dev, st.st_ino))
            if first is not None:
                os.link(first, name, src_dir_fd=rootfd, dst_dir_fd=dfd, follow_symlinks=False)
                continue
        if stat.S_ISREG(mode):
            _copy_file(sfd, dfd, name, st, path)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
        else:  # devices, FIFOs, sockets: mknod keeps the type and rdev
            os.mknod(name, mode, st.st_rdev, dir_fd=dfd)
        _copy_meta(sfd, dfd, name, st)
        if st.st_nlink > 1:
            links[(st.st_dev, st.st_ino)] = rel + name


def _copy_file(sfd, dfd, name, st, path):
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
    try:
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            try:
                fcntl.ioctl(dst, FICLONE, src)
                return
            except OSError as e:
                if e.errno not in _NO_REFLINK:
                    raise OSError(e.errno, f"reflink {path}: {e.strerror}") from None
            _copy_extents(src, dst, st.st_size, path)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_extents(src, dst, size, path):
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = os.lseek(src, start, os.SEEK_HOLE)
        _copy_range(src, dst, start, end - start, path)
        offset = end
    # Extends the file over a trailing hole without allocating it.
    os.ftruncate(dst, size)


def _copy_range(src, dst, offset, count, path):
    use_sendfile = False
    while count > 0:
        if not use_sendfile:
            try:
                n = os.copy_file_range(src, dst, count, offset, offset)
            except OSError as e:
                if e.errno not in _NO_COPY_RANGE:
                    raise OSError(e.errno, f"copy_file_range {path}: {e.strerror}") from None
                use_sendfile = True
                continue
        else:
            os.lseek(dst, offset, os.SEEK_SET)
            n = os.sendfile(dst, src, offset, count)
        if n == 0:  # the file shrank under us
            break
        offset += n
        count -= n


def _copy_meta(sfd, dfd, name, st):
    """Owner, then xattrs (chown drops security.capability), then mode
    (chown drops setuid bits), then times.  ``name`` None: the fds
    themselves."""
    target = dfd if name is None else name
    kw = {} if name is None else {"dir_fd": dfd, "follow_symlinks": False}
    os.chown(target, st.st_uid, st.st_gid, **kw)
    _copy_xattrs(sfd, dfd, name)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(target, stat.S_IMODE(st.st_mode), **({} if name is None else {"dir_fd": dfd}))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), **kw)


def _copy_xattrs(sfd, dfd, name):
    # The *xattr calls take no dir_fd; /proc/self/fd/N/name reaches the
    # entry without following a symlink in its last component.
    if name is None:
        s, d, kw = sfd, dfd, {}
    else:
        s, d = f"/proc/self/fd/{sfd}/{name}", f"/proc/self/fd/{dfd}/{name}"
        kw = {"follow_symlinks": False}
    try:
        keys = os.listxattr(s, **kw)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for key in keys:
        os.setxattr(d, key, os.getxattr(s, key, **kw), **kw)
