/*
 * The container child stage: everything that runs between clone() and
 * execve() of the container process.
 *
 * Python (pyrun/runtime/plan.py) turns config.json into a flat list of
 * steps, `struct pr_op`, in the order runc performs them.  pr_spawn() clones
 * and the child interprets that list here, in C, without ever returning to
 * Python.  Why C and not Python in the child: see native/README.md.  In
 * short, the caller may be multi-threaded (the daemon is), and after fork in
 * a threaded process only async-signal-safe code may run; Python code is not.
 *
 * Rules for this file: no malloc, no stdio, no locks, no Python.  Every
 * buffer comes preallocated in the plan.  Every failure is reported to the
 * parent over the sync socket as (step index, errno) and the child exits; the
 * parent turns it into a typed error that names the step.
 */
#include "pyrun.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <termios.h>

#define PR_O_PATH 010000000
#define PR_RESOLVE_NO_MAGICLINKS 0x02
#define PR_RESOLVE_IN_ROOT 0x10
#define PR_CLOSE_RANGE_CLOEXEC (1U << 2)
#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif
#define PR_MS_RDONLY 0x1
#define PR_MS_REMOUNT 0x20
#define PR_MS_BIND 0x1000
#define PR_MS_REC 0x4000
#define PR_MS_RELATIME 0x200000
#define PR_AT_RECURSIVE 0x8000
#define PR_AT_EMPTY_PATH 0x1000
#define PR_AT_SYMLINK_NOFOLLOW 0x100

static long raw_write(int fd, const void *buf, size_t n)
{
	return syscall(SYS_write, fd, buf, n);
}

static size_t pr_strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

/* Decimal rendering into a caller buffer; returns the length. */
static int fmt_int(char *out, long v)
{
	char tmp[24];
	int n = 0, len = 0;
	unsigned long u = v < 0 ? (unsigned long)-v : (unsigned long)v;

	do {
		tmp[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		out[len++] = '-';
	while (n)
		out[len++] = tmp[--n];
	out[len] = 0;
	return len;
}

static void fd_path(char *out, int fd)
{
	static const char pre[] = "/proc/self/fd/";
	memcpy(out, pre, sizeof(pre) - 1);
	fmt_int(out + sizeof(pre) - 1, fd);
}

/* ---- messages to the parent ---- */

static void send_msg(struct pr_plan *p, int type, int op, int err, int64_t value)
{
	struct pr_msg m = { type, op, err, 0, value };
	while (raw_write(p->sync_fd, &m, sizeof(m)) < 0 && errno == EINTR)
		;
}

static void trace_step(struct pr_plan *p, int op, int err)
{
	/* One fixed-size record per step, read by the parent when tracing. */
	struct pr_msg m;
	struct timespec ts;

	if (p->trace_fd < 0)
		return;
	syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
	m.type = PR_MSG_TRACE;
	m.op = op;
	m.err = err;
	m.pad = (int32_t)syscall(SYS_getpid);
	m.value = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
	raw_write(p->trace_fd, &m, sizeof(m));
}

static __attribute__((noreturn)) void fail(struct pr_plan *p, int op, int err)
{
	trace_step(p, op, err);
	send_msg(p, PR_MSG_ERROR, op, err, 0);
	syscall(SYS_exit_group, 127);
	__builtin_unreachable();
}

/* Wait for the parent's go-ahead after a PR_MSG_SYNC.  The reply is a
 * pr_msg whose value is the length of a payload (the container state JSON)
 * that follows in the same datagram. */
static int wait_parent(struct pr_plan *p)
{
	struct pr_msg m;
	struct iovec iov[2] = {
		{ &m, sizeof(m) },
		{ p->state, p->state_cap },
	};
	struct msghdr mh;
	long n;

	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = iov;
	mh.msg_iovlen = 2;
	do {
		n = syscall(SYS_recvmsg, p->sync_fd, &mh, 0);
	} while (n < 0 && errno == EINTR);
	if (n < (long)sizeof(m))
		return n < 0 ? -errno : -EPIPE;
	if (m.type != PR_MSG_GO)
		return -ECANCELED;
	p->state_len = (size_t)(n - (long)sizeof(m));
	return 0;
}

/* ---- resolving paths inside the root ---- */

/*
 * Open `path` (relative to the container root) with every component
 * resolved inside the root, as if the root were "/": symlinks (absolute or
 * relative), "..", and magic links cannot leave it.  Missing components are
 * created as directories, the last one as `last_kind` (PR_MK_DIR,
 * PR_MK_FILE, or PR_MK_NONE to fail with ENOENT), following symlinks inside
 * the root as runc's MkdirAllInRoot does.  Returns an O_PATH fd or -errno.
 *
 * Each step opens the resolved prefix (which holds no symlinks) with
 * openat2(RESOLVE_IN_ROOT), so even a symlink swapped in during the walk is
 * resolved inside the root.  This closes the class of CVE-2021-30465.
 */
static int open_in_root(struct pr_plan *p, int rootfd, const char *path, int last_kind)
{
	char *todo = p->path_buf, *done = p->path_buf2, *link = p->link_buf;
	size_t tlen = pr_strlen(path), dlen = 0, i = 0;
	int links = 0, fd;

	if (tlen >= PR_PATH_MAX)
		return -ENAMETOOLONG;
	fd = pr_openat2(rootfd, path, PR_O_PATH | O_CLOEXEC, 0,
			PR_RESOLVE_IN_ROOT | PR_RESOLVE_NO_MAGICLINKS);
	if (fd >= 0 || errno != ENOENT || last_kind == PR_MK_NONE)
		return fd >= 0 ? fd : -errno;

	memcpy(todo, path, tlen + 1);
	done[0] = 0;
	while (i < tlen) {
		size_t start, clen;
		int is_last, r;
		struct stat st;

		while (i < tlen && todo[i] == '/')
			i++;
		if (i >= tlen)
			break;
		start = i;
		while (i < tlen && todo[i] != '/')
			i++;
		clen = i - start;
		{
			size_t j = i;
			while (j < tlen && todo[j] == '/')
				j++;
			is_last = (j >= tlen);
		}
		if (clen == 1 && todo[start] == '.')
			continue;
		if (clen == 2 && todo[start] == '.' && todo[start + 1] == '.') {
			while (dlen > 0 && done[dlen - 1] != '/')
				dlen--;
			if (dlen > 0)
				dlen--;
			done[dlen] = 0;
			continue;
		}
		if (dlen + 1 + clen >= PR_PATH_MAX)
			return -ENAMETOOLONG;
		done[dlen] = '/';
		memcpy(done + dlen + 1, todo + start, clen);
		done[dlen + 1 + clen] = 0;

		fd = pr_openat2(rootfd, done, PR_O_PATH | O_NOFOLLOW | O_CLOEXEC, 0,
				PR_RESOLVE_IN_ROOT | PR_RESOLVE_NO_MAGICLINKS);
		if (fd >= 0) {
			if (syscall(SYS_fstat, fd, &st) < 0) {
				r = -errno;
				syscall(SYS_close, fd);
				return r;
			}
			if (S_ISLNK(st.st_mode)) {
				/* Splice the link's target in front of what is left. */
				long n = syscall(SYS_readlinkat, fd, "", link, PR_PATH_MAX - 1);
				size_t rest = tlen - i;
				syscall(SYS_close, fd);
				if (n < 0)
					return -errno;
				if (++links > 40)
					return -ELOOP;
				if ((size_t)n + 1 + rest >= PR_PATH_MAX)
					return -ENAMETOOLONG;
				memmove(link + n, todo + i, rest + 1);
				memcpy(todo, link, (size_t)n + rest + 1);
				tlen = (size_t)n + rest;
				i = 0;
				if (link[0] == '/')
					dlen = 0;	/* absolute: from the root */
				done[dlen] = 0;
				continue;
			}
			syscall(SYS_close, fd);
			dlen += 1 + clen;
			continue;
		}
		if (errno != ENOENT)
			return -errno;
		/* Create the missing entry relative to its resolved parent. */
		done[dlen] = 0;
		fd = pr_openat2(rootfd, dlen ? done : ".", PR_O_PATH | O_CLOEXEC, 0,
				PR_RESOLVE_IN_ROOT | PR_RESOLVE_NO_MAGICLINKS);
		done[dlen] = '/';
		if (fd < 0)
			return -errno;
		if (is_last && last_kind == PR_MK_FILE) {
			int f = (int)syscall(SYS_openat, fd, done + dlen + 1,
					     O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
			r = f < 0 ? -errno : 0;
			if (f >= 0)
				syscall(SYS_close, f);
		} else {
			r = syscall(SYS_mkdirat, fd, done + dlen + 1, 0755) < 0 ? -errno : 0;
		}
		syscall(SYS_close, fd);
		if (r < 0 && r != -EEXIST)
			return r;
		dlen += 1 + clen;
	}
	fd = pr_openat2(rootfd, dlen ? done : ".", PR_O_PATH | O_CLOEXEC, 0,
			PR_RESOLVE_IN_ROOT | PR_RESOLVE_NO_MAGICLINKS);
	return fd < 0 ? -errno : fd;
}

/* Open the parent directory of `path` inside the root (creating it) and
 * return its fd; *name points at the last component inside p->name_buf. */
static int open_parent_in_root(struct pr_plan *p, int rootfd, const char *path, const char **name)
{
	size_t len = pr_strlen(path), cut;
	int fd;

	if (len >= PR_PATH_MAX)
		return -ENAMETOOLONG;
	while (len > 1 && path[len - 1] == '/')
		len--;
	cut = len;
	while (cut > 0 && path[cut - 1] != '/')
		cut--;
	memcpy(p->name_buf, path + cut, len - cut);
	p->name_buf[len - cut] = 0;
	*name = p->name_buf;
	if (cut == 0) {
		fd = pr_openat2(rootfd, ".", PR_O_PATH | O_CLOEXEC, 0, PR_RESOLVE_IN_ROOT);
		return fd < 0 ? -errno : fd;
	}
	memcpy(p->parent_buf, path, cut);
	p->parent_buf[cut] = 0;
	fd = open_in_root(p, rootfd, p->parent_buf, PR_MK_DIR);
	return fd;
}

/* Flags a bind remount must keep: the ones the kernel locks on mounts
 * inherited into a user namespace.  statfs f_flags -> MS_* flags. */
static unsigned long locked_flags(int fd)
{
	struct statfs st;
	unsigned long f = 0;

	if (syscall(SYS_fstatfs, fd, &st) < 0)
		return 0;
	f = (unsigned long)st.f_flags & (0x1 | 0x2 | 0x4 | 0x8 | 0x400 | 0x800);
	if (st.f_flags & 4096 /* ST_RELATIME */)
		f |= PR_MS_RELATIME;
	return f;
}

/* ---- the steps ---- */

/* Reopen a mount target by walking its path again.  The fd we mounted on
 * still names the covered directory (following /proc/self/fd/N does not
 * cross into the mount stacked on it); a path walk does. */
static int reopen_target(struct pr_plan *p, struct pr_op *o)
{
	int fd;

	if (o->n1 & PR_MNT_HOST_TARGET) {
		fd = (int)syscall(SYS_openat, AT_FDCWD, o->s2, PR_O_PATH | O_CLOEXEC);
		return fd < 0 ? -errno : fd;
	}
	return open_in_root(p, p->root_fd, o->s2, PR_MK_NONE);
}

/* tmpcopyup (runc and crun's extension): copy what a tmpfs was just mounted
 * over into it.  `from` reads the covered directory, `to` is the new tmpfs
 * (or a directory in it).  Modes, owners and times are kept; no xattrs, as
 * runc.  Raw syscalls, a stack buffer per level, symlink targets in
 * p->link_buf: nothing here may allocate (see the top of this file). */
struct pr_dirent64 {
	uint64_t d_ino;
	int64_t d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

static int copy_tree(struct pr_plan *p, int from, int to, int depth);

static int copy_entry(struct pr_plan *p, int from, int to, const char *name, int depth)
{
	struct stat st;
	struct timespec times[2];
	int f = -1, t = -1, r = 0;

	if (syscall(SYS_newfstatat, from, name, &st, PR_AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	switch (st.st_mode & S_IFMT) {
	case S_IFDIR:
		if (syscall(SYS_mkdirat, to, name, 0700) < 0)
			return -errno;
		f = (int)syscall(SYS_openat, from, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		t = f < 0 ? -1 : (int)syscall(SYS_openat, to, name,
					      O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		r = t < 0 ? -errno : copy_tree(p, f, t, depth + 1);
		break;
	case S_IFREG:
		f = (int)syscall(SYS_openat, from, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		t = f < 0 ? -1 : (int)syscall(SYS_openat, to, name,
					      O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (t < 0)
			r = -errno;
		while (r == 0) {
			long n = syscall(SYS_sendfile, t, f, NULL, 1 << 30);
			if (n < 0)
				r = -errno;
			if (n <= 0)
				break;
		}
		break;
	case S_IFLNK: {
		long n = syscall(SYS_readlinkat, from, name, p->link_buf, PR_PATH_MAX - 1);
		if (n < 0)
			return -errno;
		p->link_buf[n] = 0;
		if (syscall(SYS_symlinkat, p->link_buf, to, name) < 0)
			return -errno;
		break;
	}
	default:	/* fifos, sockets, device nodes */
		if (syscall(SYS_mknodat, to, name, st.st_mode, st.st_rdev) < 0)
			return -errno;
	}
	if (f >= 0)
		syscall(SYS_close, f);
	if (t >= 0)
		syscall(SYS_close, t);
	if (r < 0)
		return r;
	/* chown before chmod: chown clears the set-id bits. */
	if (syscall(SYS_fchownat, to, name, st.st_uid, st.st_gid, PR_AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (!S_ISLNK(st.st_mode) && syscall(SYS_fchmodat, to, name, st.st_mode & 07777) < 0)
		return -errno;
	times[0] = st.st_atim;
	times[1] = st.st_mtim;
	if (syscall(SYS_utimensat, to, name, times, PR_AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return 0;
}

static int copy_tree(struct pr_plan *p, int from, int to, int depth)
{
	char buf[1024];

	if (depth > 128)
		return -ELOOP;
	for (;;) {
		long n = syscall(SYS_getdents64, from, buf, sizeof buf), off;
		if (n <= 0)
			return n < 0 ? -errno : 0;
		for (off = 0; off < n;) {
			struct pr_dirent64 *d = (struct pr_dirent64 *)(buf + off);
			int r;
			off += d->d_reclen;
			if (d->d_name[0] == '.' && (!d->d_name[1] || (d->d_name[1] == '.' && !d->d_name[2])))
				continue;
			r = copy_entry(p, from, to, d->d_name, depth);
			if (r < 0)
				return r;
		}
	}
}

/* After a tmpfs is mounted on the directory `covered` (an O_PATH fd taken
 * before the mount, so it still names the directory underneath), copy that
 * directory's content into the tmpfs. */
static int copy_up(struct pr_plan *p, struct pr_op *o, int covered)
{
	int from, to, r;

	from = (int)syscall(SYS_openat, covered, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (from < 0)
		return -errno;
	to = reopen_target(p, o);
	r = to < 0 ? to : copy_tree(p, from, to, 0);
	syscall(SYS_close, from);
	if (to >= 0)
		syscall(SYS_close, to);
	return r;
}

/* Point *fd (and its /proc/self/fd path in `target`) at the mount just
 * made on the target instead of the directory it covers. */
static int reopen_mounted(struct pr_plan *p, struct pr_op *o, int *fd, char *target)
{
	int nfd = reopen_target(p, o);

	if (nfd < 0)
		return nfd;
	syscall(SYS_close, *fd);
	*fd = nfd;
	fd_path(target, nfd);
	return 0;
}

static int do_mount(struct pr_plan *p, struct pr_op *o)
{
	char target[40];
	int fd, r = 0, kind = PR_MK_DIR;
	unsigned long flags = o->flags;

	if (o->n1 & PR_MNT_TARGET_FILE)
		kind = PR_MK_FILE;
	else if ((o->n1 & PR_MNT_BIND_SOURCE) && o->s1) {
		struct stat st;
		if (syscall(SYS_newfstatat, AT_FDCWD, o->s1, &st, 0) < 0)
			return -errno;
		if (!S_ISDIR(st.st_mode))
			kind = PR_MK_FILE;
	}
	if (o->n1 & PR_MNT_HOST_TARGET) {
		/* A path the runtime chose (/, the rootfs): used as it is, so
		 * that no /proc is needed (the container may not mount one). */
		fd = (int)syscall(SYS_openat, AT_FDCWD, o->s2, PR_O_PATH | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		if (pr_mount(o->s1, o->s2, o->s3, flags, o->s4) < 0)
			r = -errno;
		else if (o->flags2 || o->flags3 || o->n2 || o->n3)
			r = -EINVAL;	/* the plan never asks for more on a host path */
		goto out;
	} else {
		if (o->n1 & PR_MNT_NO_SYMLINK) {
			/* runc's CVE-2019-19921 guard: proc or sysfs goes on an
			 * ordinary directory, never where a symlink of the image
			 * would send it (even inside the root). */
			struct stat st;
			const char *rel = o->s2;
			while (*rel == '/')
				rel++;
			if (*rel && syscall(SYS_newfstatat, p->root_fd, rel, &st,
					    PR_AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
				return -ELOOP;
		}
		fd = open_in_root(p, p->root_fd, o->s2, kind);
		if (fd < 0)
			return fd;
	}
	fd_path(target, fd);
	/* A read-only tmpfs is filled first and made read-only after (runc). */
	if (o->n1 & PR_MNT_COPYUP)
		flags &= ~(unsigned long)PR_MS_RDONLY;
	if (flags || o->s3 || o->s1) {
		if (pr_mount(o->s1, target, o->s3, flags, o->s4) < 0) {
			r = -errno;
			goto out;
		}
	}
	if (o->n1 & PR_MNT_COPYUP) {
		r = copy_up(p, o, fd);
		if (r < 0)
			goto out;
		if (o->flags & PR_MS_RDONLY) {
			r = reopen_mounted(p, o, &fd, target);
			if (r < 0)
				goto out;
			if (pr_mount(NULL, target, NULL, o->flags | PR_MS_REMOUNT, o->s4) < 0) {
				r = -errno;
				goto out;
			}
		}
	}
	/* A bind mount ignores every flag but MS_BIND|MS_REC on the first
	 * call; the rest need a remount of the new mount (mount(8) does the
	 * same).  Reopen: the fd still points at the covered directory. */
	if ((o->n1 & PR_MNT_BIND_SOURCE) && o->flags2) {
		r = reopen_mounted(p, o, &fd, target);
		if (r < 0)
			goto out;
		if (pr_mount(NULL, target, NULL, o->flags2 | locked_flags(fd) | PR_MS_REMOUNT | PR_MS_BIND,
			     NULL) < 0) {
			r = -errno;
			goto out;
		}
	}
	if (o->flags3) {	/* propagation: MS_SHARED, MS_SLAVE, … (+MS_REC) */
		int nfd = reopen_target(p, o);
		if (nfd >= 0) {
			syscall(SYS_close, fd);
			fd = nfd;
			fd_path(target, fd);
		}
		if (pr_mount(NULL, target, NULL, o->flags3, NULL) < 0) {
			r = -errno;
			goto out;
		}
	}
	if (o->n2 || o->n3) {	/* recursive attributes (rro, rnosuid, …) */
		int nfd = reopen_target(p, o);
		if (nfd < 0) {
			r = nfd;
			goto out;
		}
		if (pr_mount_setattr(nfd, "", PR_AT_EMPTY_PATH | PR_AT_RECURSIVE,
				     (uint64_t)o->n2, (uint64_t)o->n3, 0, 0) < 0)
			r = -errno;
		syscall(SYS_close, nfd);
	}
out:
	syscall(SYS_close, fd);
	return r;
}

static int do_mknod(struct pr_plan *p, struct pr_op *o)
{
	const char *name;
	int dfd = open_parent_in_root(p, p->root_fd, o->s2, &name), r = 0;

	if (dfd < 0)
		return dfd;
	/* mknodat needs a real directory fd, not O_PATH. */
	{
		char path[40];
		int real;
		fd_path(path, dfd);
		real = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		syscall(SYS_close, dfd);
		if (real < 0)
			return -errno;
		dfd = real;
	}
	syscall(SYS_unlinkat, dfd, name, 0);
	if (o->n1 & PR_MKNOD_BIND) {
		/* In a user namespace mknod is not allowed: bind the host's
		 * device node onto an empty file instead, as runc does. */
		char target[40];
		int f = (int)syscall(SYS_openat, dfd, name, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0);
		if (f < 0) {
			r = -errno;
			goto out;
		}
		syscall(SYS_close, f);
		f = (int)syscall(SYS_openat, dfd, name, PR_O_PATH | O_CLOEXEC | O_NOFOLLOW);
		if (f < 0) {
			r = -errno;
			goto out;
		}
		fd_path(target, f);
		if (pr_mount(o->s1, target, "bind", PR_MS_BIND, NULL) < 0)
			r = -errno;
		syscall(SYS_close, f);
		goto out;
	}
	if (pr_mknodat(dfd, name, (uint32_t)o->n2, (uint64_t)o->n3) < 0) {
		r = -errno;
		goto out;
	}
	if (syscall(SYS_fchownat, dfd, name, (uid_t)o->flags, (gid_t)o->flags2, PR_AT_SYMLINK_NOFOLLOW) < 0)
		r = -errno;
	/* mknod applies the umask; the spec's mode is exact. */
	else if (syscall(SYS_fchmodat, dfd, name, (mode_t)(o->n2 & 07777), 0) < 0)
		r = -errno;
out:
	syscall(SYS_close, dfd);
	return r;
}

static int do_symlink(struct pr_plan *p, struct pr_op *o)
{
	const char *name;
	int dfd = open_parent_in_root(p, p->root_fd, o->s2, &name), r = 0;
	char path[40];
	int real;

	if (dfd < 0)
		return dfd;
	fd_path(path, dfd);
	real = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	syscall(SYS_close, dfd);
	if (real < 0)
		return -errno;
	if (o->n1)	/* replace what is there (e.g. /dev/ptmx) */
		syscall(SYS_unlinkat, real, name, 0);
	if (syscall(SYS_symlinkat, o->s1, real, name) < 0 && errno != EEXIST)
		r = -errno;
	syscall(SYS_close, real);
	return r;
}

static int do_pivot_root(struct pr_plan *p, struct pr_op *o)
{
	int oldroot, newroot, r = 0;

	(void)p;
	oldroot = (int)syscall(SYS_openat, AT_FDCWD, "/", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (oldroot < 0)
		return -errno;
	newroot = (int)syscall(SYS_openat, AT_FDCWD, o->s1, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (newroot < 0) {
		r = -errno;
		goto out_old;
	}
	/* pivot_root(".", ".") stacks the old root on top of the new one, so no
	 * put_old directory is needed inside the rootfs (runc does the same). */
	if (syscall(SYS_fchdir, newroot) < 0 || pr_pivot_root(".", ".") < 0) {
		r = -errno;
		goto out;
	}
	if (syscall(SYS_fchdir, oldroot) < 0) {
		r = -errno;
		goto out;
	}
	/* Make the old root a slave so the unmount below does not propagate
	 * back to the host, then detach it. */
	if (pr_mount(NULL, ".", NULL, 0x80000 | PR_MS_REC, NULL) < 0 ||
	    pr_umount2(".", 2 /* MNT_DETACH */) < 0) {
		r = -errno;
		goto out;
	}
	if (syscall(SYS_chdir, "/") < 0)
		r = -errno;
out:
	syscall(SYS_close, newroot);
out_old:
	syscall(SYS_close, oldroot);
	return r;
}

static int do_move_root(struct pr_op *o)
{
	/* --no-pivot: move the rootfs over / and chroot into it. */
	if (syscall(SYS_chdir, o->s1) < 0)
		return -errno;
	if (pr_mount(o->s1, "/", NULL, 0x2000 /* MS_MOVE */, NULL) < 0)
		return -errno;
	if (syscall(SYS_chroot, ".") < 0 || syscall(SYS_chdir, "/") < 0)
		return -errno;
	return 0;
}

static int do_mask(struct pr_plan *p, struct pr_op *o)
{
	char target[40];
	struct stat st;
	int fd = open_in_root(p, p->root_fd, o->s1, PR_MK_NONE), r = 0;

	if (fd == -ENOENT)
		return 0;	/* runc: a masked path that does not exist is fine */
	if (fd < 0)
		return fd;
	fd_path(target, fd);
	if (syscall(SYS_fstat, fd, &st) < 0) {
		r = -errno;
	} else if (S_ISDIR(st.st_mode)) {
		if (pr_mount("tmpfs", target, "tmpfs", PR_MS_RDONLY, NULL) < 0)
			r = -errno;
	} else if (pr_mount("/dev/null", target, NULL, PR_MS_BIND, NULL) < 0) {
		r = -errno;
	}
	syscall(SYS_close, fd);
	return r;
}

static int do_readonly(struct pr_plan *p, struct pr_op *o)
{
	char target[40];
	int fd = open_in_root(p, p->root_fd, o->s1, PR_MK_NONE), nfd, r = 0;

	if (fd == -ENOENT)
		return 0;
	if (fd < 0)
		return fd;
	fd_path(target, fd);
	if (o->n1 & 1) {
		/* The root itself: by path, no /proc needed. */
		if (pr_mount(NULL, "/", NULL, PR_MS_REMOUNT | PR_MS_BIND | PR_MS_RDONLY |
			     locked_flags(fd), NULL) < 0)
			r = -errno;
		goto out;
	}
	if (pr_mount(target, target, NULL, PR_MS_BIND | PR_MS_REC, NULL) < 0) {
		r = -errno;
		goto out;
	}
	nfd = open_in_root(p, p->root_fd, o->s1, PR_MK_NONE);	/* see reopen_target */
	if (nfd < 0) {
		r = nfd;
		goto out;
	}
	syscall(SYS_close, fd);
	fd = nfd;
	fd_path(target, fd);
	if (pr_mount(NULL, target, NULL, PR_MS_REMOUNT | PR_MS_BIND | PR_MS_RDONLY | locked_flags(fd),
		     NULL) < 0)
		r = -errno;
out:
	syscall(SYS_close, fd);
	return r;
}

static int do_write_file(struct pr_plan *p, struct pr_op *o)
{
	/* sysctl and oom_score_adj: write a value to a /proc file. */
	int fd = (int)syscall(SYS_openat, AT_FDCWD, o->s1, O_WRONLY | O_CLOEXEC | O_TRUNC);
	long n;

	(void)p;
	if (fd < 0)
		return -errno;
	n = raw_write(fd, o->s2, pr_strlen(o->s2));
	syscall(SYS_close, fd);
	return n < 0 ? -errno : 0;
}

static int do_console(struct pr_plan *p, struct pr_op *o)
{
	int master, peer, unlock = 0, ptn = 0;
	struct winsize ws;
	char name[32] = "/dev/pts/";
	struct msghdr mh;
	struct iovec iov;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct cmsghdr *c;

	(void)p;
	master = (int)syscall(SYS_openat, AT_FDCWD, "/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (master < 0)
		return -errno;
	if (ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &ptn) < 0)
		goto err;
	peer = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY);
	if (peer < 0)
		goto err;
	/* n3: the process's uid, which owns its terminal (runc's tty owner
	 * tests); the group stays devpts' gid= option, tty. */
	if (o->n3 >= 0 && syscall(SYS_fchown, peer, (unsigned int)o->n3, (unsigned int)-1) < 0)
		goto err;
	if (o->n1 > 0 && o->n2 > 0) {
		memset(&ws, 0, sizeof(ws));
		ws.ws_row = (unsigned short)o->n1;
		ws.ws_col = (unsigned short)o->n2;
		ioctl(peer, TIOCSWINSZ, &ws);
	}
	/* Send the master to the console socket with SCM_RIGHTS; the payload
	 * is the pty's name, as runc sends it. */
	fmt_int(name + 9, ptn);
	memset(&mh, 0, sizeof(mh));
	iov.iov_base = name;
	iov.iov_len = pr_strlen(name);
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = u.buf;
	mh.msg_controllen = sizeof(u.buf);
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &master, sizeof(int));
	if (syscall(SYS_sendmsg, o->fd, &mh, 0) < 0)
		goto err;
	syscall(SYS_close, master);
	syscall(SYS_close, o->fd);
	if (syscall(SYS_setsid) < 0 || ioctl(peer, TIOCSCTTY, 0) < 0)
		return -errno;
	if (syscall(SYS_dup3, peer, 0, 0) < 0 && peer != 0)
		return -errno;
	syscall(SYS_dup3, peer, 1, 0);
	syscall(SYS_dup3, peer, 2, 0);
	if (peer > 2)
		syscall(SYS_close, peer);
	return 0;
err:
	{
		int e = -errno;
		syscall(SYS_close, master);
		return e;
	}
}

static int do_caps(struct pr_op *o)
{
	/* n1: bounding set as a bit mask; the sets' masks in the op's
	 * cap_* fields.  Order matters: the bounding set needs CAP_SETPCAP, so
	 * it is dropped while we still hold everything. */
	const struct pr_caps *c = o->caps;
	int i;

	for (i = 0; i <= c->last_cap; i++) {
		if (!(c->bounding & (1ULL << i)) &&
		    pr_prctl(24 /* PR_CAPBSET_DROP */, (unsigned long)i, 0, 0, 0) < 0 && errno != EINVAL)
			return -errno;
	}
	return 0;
}

static int do_capset(struct pr_op *o)
{
	const struct pr_caps *c = o->caps;
	uint32_t d[6];
	int i;

	d[0] = (uint32_t)c->effective;
	d[1] = (uint32_t)c->permitted;
	d[2] = (uint32_t)c->inheritable;
	d[3] = (uint32_t)(c->effective >> 32);
	d[4] = (uint32_t)(c->permitted >> 32);
	d[5] = (uint32_t)(c->inheritable >> 32);
	if (pr_capset(d) < 0)
		return -errno;
	if (pr_prctl(47 /* PR_CAP_AMBIENT */, 4 /* CLEAR_ALL */, 0, 0, 0) < 0 && errno != EINVAL)
		return -errno;
	/* The kernel raises an ambient capability only if it is permitted and
	 * inheritable.  runc's default spec lists ambient caps that are not
	 * inheritable and runc ignores the refusal; so do we (EPERM). */
	for (i = 0; i <= c->last_cap; i++) {
		if ((c->ambient & (1ULL << i)) &&
		    pr_prctl(47, 2 /* RAISE */, (unsigned long)i, 0, 0) < 0 && errno != EPERM)
			return -errno;
	}
	return 0;
}

static int do_identity(struct pr_op *o)
{
	/* Keep the permitted set across setresuid; capset follows. */
	if (pr_prctl(8 /* PR_SET_KEEPCAPS */, 1, 0, 0, 0) < 0)
		return -errno;
	if (pr_setgroups((size_t)o->n2, o->ids) < 0)
		return -errno;
	if (pr_setresgid((uint32_t)o->flags2, (uint32_t)o->flags2, (uint32_t)o->flags2) < 0)
		return -errno;
	if (pr_setresuid((uint32_t)o->flags, (uint32_t)o->flags, (uint32_t)o->flags) < 0)
		return -errno;
	return 0;
}

static int do_chdir(struct pr_op *o)
{
	char cwd[64];
	long n;

	if (syscall(SYS_chdir, o->s1) < 0)
		return -errno;
	/* CVE-2024-21626: a cwd reached through a leaked host fd shows up as
	 * "(unreachable)/…"; refuse anything that is not a plain path. */
	n = syscall(SYS_getcwd, cwd, sizeof(cwd));
	if (n < 0 && errno != ERANGE)
		return -errno;
	if (n > 0 && cwd[0] != '/')
		return -ENOENT;
	return 0;
}

/* PATH lookup with the container's PATH, before the container is reported
 * ready, so that `create` (not `start`) fails for a missing executable, as
 * runc's does. */
static int do_resolve_exec(struct pr_plan *p, struct pr_op *o)
{
	const char *file = o->s1, *path = o->s2;
	size_t flen = pr_strlen(file);
	int last = -ENOENT;

	if (flen == 0)
		return -ENOENT;
	for (size_t i = 0; i < flen; i++) {
		if (file[i] == '/') {
			struct stat st;
			if (flen >= PR_PATH_MAX)
				return -ENAMETOOLONG;
			if (syscall(SYS_newfstatat, AT_FDCWD, file, &st, 0) < 0)
				return -errno;
			if (!S_ISREG(st.st_mode))
				return -EACCES;	/* as execve would say */
			/* As runc (Go's exec.LookPath): refuse at create time, so
			 * engines can tell "not executable" (podman: exit 126)
			 * from a failing program. */
			if (syscall(SYS_faccessat, AT_FDCWD, file, X_OK, 0) < 0)
				return -errno;
			memcpy(p->exec_path, file, flen + 1);
			return 0;
		}
	}
	while (path && *path) {
		const char *end = path;
		size_t dlen;
		struct stat st;

		while (*end && *end != ':')
			end++;
		dlen = (size_t)(end - path);
		if (dlen == 0) {
			p->exec_path[0] = '.';
			dlen = 1;
		} else {
			if (dlen + flen + 2 >= PR_PATH_MAX)
				return -ENAMETOOLONG;
			memcpy(p->exec_path, path, dlen);
		}
		p->exec_path[dlen] = '/';
		memcpy(p->exec_path + dlen + 1, file, flen + 1);
		if (syscall(SYS_newfstatat, AT_FDCWD, p->exec_path, &st, 0) == 0) {
			if (S_ISREG(st.st_mode)) {
				if (syscall(SYS_faccessat, AT_FDCWD, p->exec_path, X_OK, 0) == 0)
					return 0;
				last = -EACCES;
			}
		} else if (errno != ENOENT && errno != ENOTDIR && last == -ENOENT) {
			/* e.g. ELOOP: a broken rootfs, which "not found" would hide */
			last = -errno;
		}
		path = *end ? end + 1 : end;
	}
	return last;
}

/* Run one hook from the child (createContainer, startContainer: they run
 * in the container's namespaces).  The state JSON goes to its stdin. */
static int do_hook(struct pr_plan *p, struct pr_op *o)
{
	int pipefd[2], pidfd = -1;
	long pid;
	int status = 0;

	if (syscall(SYS_pipe2, pipefd, O_CLOEXEC) < 0)
		return -errno;
	/* clone(2), not clone3: a seccomp profile already in force may refuse
	 * clone3 (Docker's does) but allow a plain fork-like clone. */
	pid = syscall(SYS_clone, CLONE_PIDFD | SIGCHLD, NULL, &pidfd, NULL, 0);
	if (pid < 0) {
		int e = -errno;
		syscall(SYS_close, pipefd[0]);
		syscall(SYS_close, pipefd[1]);
		return e;
	}
	if (pid == 0) {
		syscall(SYS_dup3, pipefd[0], 0, 0);
		pr_execve(o->s1, o->argv, o->envp);
		syscall(SYS_exit_group, 127);
	}
	syscall(SYS_close, pipefd[0]);
	{
		size_t off = 0;
		while (off < p->state_len) {
			long n = raw_write(pipefd[1], p->state + off, p->state_len - off);
			if (n <= 0)
				break;
			off += (size_t)n;
		}
	}
	syscall(SYS_close, pipefd[1]);
	if (o->n1 > 0) {
		struct pollfd pfd = { pidfd, POLLIN, 0 };
		struct timespec ts = { (time_t)o->n1, 0 };
		long r = syscall(SYS_ppoll, &pfd, 1, &ts, NULL, 8);
		if (r == 0) {
			pr_pidfd_send_signal(pidfd, SIGKILL, 0);
			syscall(SYS_wait4, (pid_t)pid, &status, 0, NULL);
			syscall(SYS_close, pidfd);
			return -ETIMEDOUT;
		}
	}
	while (syscall(SYS_wait4, (pid_t)pid, &status, 0, NULL) < 0 && errno == EINTR)
		;
	syscall(SYS_close, pidfd);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	return -ECHILD;	/* the parent reports the hook by name */
}

static int do_wait_start(struct pr_plan *p, struct pr_op *o)
{
	char c;
	long n;

	/* Tell the parent we are created, then block until `start` writes a
	 * byte into the exec fifo (we hold it O_RDWR, so the read blocks rather
	 * than seeing EOF, and `start`'s open for writing finds a reader). */
	send_msg(p, PR_MSG_READY, 0, 0, 0);
	do {
		n = syscall(SYS_read, o->fd, &c, 1);
	} while (n < 0 && errno == EINTR);
	if (n != 1)
		return n < 0 ? -errno : -EPIPE;
	syscall(SYS_close, o->fd);
	return 0;
}

static int run_op(struct pr_plan *p, struct pr_op *o)
{
	switch (o->kind) {
	case PR_OP_SETNS:
		return pr_setns(o->fd, (int)o->flags) < 0 ? -errno : 0;
	case PR_OP_UNSHARE:
		return pr_unshare((int)o->flags) < 0 ? -errno : 0;
	case PR_OP_SYNC:
		send_msg(p, PR_MSG_SYNC, (int)(o - p->ops), 0, o->n1);
		return wait_parent(p);
	case PR_OP_SETRESID0:
		if (pr_setresgid(0, 0, 0) < 0 || pr_setresuid(0, 0, 0) < 0)
			return -errno;
		return 0;
	case PR_OP_SETHOSTNAME:
		return pr_sethostname(o->s1, pr_strlen(o->s1)) < 0 ? -errno : 0;
	case PR_OP_SETDOMAINNAME:
		return pr_setdomainname(o->s1, pr_strlen(o->s1)) < 0 ? -errno : 0;
	case PR_OP_MOUNT:
		return do_mount(p, o);
	case PR_OP_OPEN_ROOT: {
		int fd = (int)syscall(SYS_openat, AT_FDCWD, o->s1, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		if (p->root_fd >= 0)
			syscall(SYS_close, p->root_fd);
		p->root_fd = fd;
		return 0;
	}
	case PR_OP_MKNOD:
		return do_mknod(p, o);
	case PR_OP_SYMLINK:
		return do_symlink(p, o);
	case PR_OP_HOOK:
		return do_hook(p, o);
	case PR_OP_PIVOT_ROOT:
		return do_pivot_root(p, o);
	case PR_OP_STDIO: {
		/* The container's stdin, stdout, stderr (n1, n2, n3; -1 keeps
		 * ours).  The plan put them above 2, so no dup3 clobbers another. */
		int64_t fds[3] = { o->n1, o->n2, o->n3 };
		for (int i = 0; i < 3; i++) {
			if (fds[i] >= 0 && syscall(SYS_dup3, (int)fds[i], i, 0) < 0)
				return -errno;
		}
		return 0;
	}
	case PR_OP_MKDIR: {	/* a directory inside the root (process.cwd, as runc) */
		int fd = open_in_root(p, p->root_fd, o->s1, PR_MK_DIR);
		if (fd < 0)
			return fd;
		syscall(SYS_close, fd);
		return 0;
	}
	case PR_OP_DEVNULL: {
		/* stdin, stdout, stderr that are /dev/null (the host's, maybe
		 * opened read-only: containerd's --null-io gives all three as
		 * one O_RDONLY fd) become the container's /dev/null opened
		 * read-write, as runc does after pivot_root. */
		struct stat null_st, st;
		int fd = (int)syscall(SYS_openat, AT_FDCWD, "/dev/null", O_RDWR | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		if (syscall(SYS_fstat, fd, &null_st) < 0) {
			int r = -errno;
			syscall(SYS_close, fd);
			return r;
		}
		for (int i = 0; i < 3; i++) {
			if (syscall(SYS_fstat, i, &st) == 0 && S_ISCHR(st.st_mode) &&
			    st.st_rdev == null_st.st_rdev && syscall(SYS_dup3, fd, i, 0) < 0) {
				int r = -errno;
				syscall(SYS_close, fd);
				return r;
			}
		}
		syscall(SYS_close, fd);
		return 0;
	}
	case PR_OP_CHROOT:
		/* No mount namespace: pivot_root would swap the root of every
		 * process sharing this namespace, so only chroot (as runc). */
		if (syscall(SYS_chdir, o->s1) < 0 || syscall(SYS_chroot, ".") < 0 ||
		    syscall(SYS_chdir, "/") < 0)
			return -errno;
		return 0;
	case PR_OP_MOVE_ROOT:
		return do_move_root(o);
	case PR_OP_MASK:
		return do_mask(p, o);
	case PR_OP_READONLY:
		return do_readonly(p, o);
	case PR_OP_WRITE_FILE:
		return do_write_file(p, o);
	case PR_OP_CONSOLE:
		return do_console(p, o);
	case PR_OP_SETSID:
		return syscall(SYS_setsid) < 0 ? -errno : 0;
	case PR_OP_RLIMIT: {
		struct rlimit rl = { (rlim_t)o->flags, (rlim_t)o->flags2 };
		return syscall(SYS_prlimit64, 0, (int)o->n1, &rl, NULL) < 0 ? -errno : 0;
	}
	case PR_OP_PERSONALITY:
		return pr_personality((unsigned long)o->flags) < 0 ? -errno : 0;
	case PR_OP_KEYRING:
		return pr_keyctl_join(o->s1) < 0 ? -errno : 0;
	case PR_OP_CAPBSET:
		return do_caps(o);
	case PR_OP_IDENTITY:
		return do_identity(o);
	case PR_OP_CAPSET:
		return do_capset(o);
	case PR_OP_CHDIR:
		return do_chdir(o);
	case PR_OP_UMASK:
		syscall(SYS_umask, (mode_t)o->n1);
		return 0;
	case PR_OP_NO_NEW_PRIVS:
		return pr_prctl(38 /* PR_SET_NO_NEW_PRIVS */, 1, 0, 0, 0) < 0 ? -errno : 0;
	case PR_OP_PDEATHSIG: {
		/* fd: a pidfd of the runtime's process.  Readable means it has
		 * exited before the prctl could take effect: give up. */
		struct pollfd pfd = { o->fd, POLLIN, 0 };
		struct timespec now = { 0, 0 };
		if (pr_prctl(1 /* PR_SET_PDEATHSIG */, (unsigned long)o->n1, 0, 0, 0) < 0)
			return -errno;
		if (o->fd >= 0 && syscall(SYS_ppoll, &pfd, 1, &now, NULL, 8) > 0)
			return -ESRCH;
		return 0;
	}
	case PR_OP_RESOLVE_EXEC:
		return do_resolve_exec(p, o);
	case PR_OP_CLOSE_FDS:
		/* Nothing of the runtime's may reach the container (CVE-2024-21626):
		 * every fd from n1 up is marked close-on-exec. */
		return pr_close_range((unsigned int)o->n1, ~0U, PR_CLOSE_RANGE_CLOEXEC) < 0 ? -errno : 0;
	case PR_OP_WAIT_START:
		return do_wait_start(p, o);
	case PR_OP_JOIN_CGROUP:
		/* Join a cgroup by writing "0" (ourselves) to its cgroup.procs,
		 * opened by the parent: no round trip to the parent, and never a
		 * task still being forked (EINVAL) as a write of our pid might
		 * meet. */
		return raw_write(o->fd, "0", 1) < 0 ? -errno : 0;
	case PR_OP_FORK: {
		/* Second stage: the new process becomes our parent's child
		 * (CLONE_PARENT) and, after unshare(CLONE_NEWPID), pid 1 of the
		 * new pid namespace; fd: a cgroup2 group to be born in.  We
		 * report its pid and leave. */
		long pid = pr_clone3(o->flags | 0x00008000 /* CLONE_PARENT */, NULL, 0, o->fd);
		if (pid < 0)
			return -errno;
		if (pid > 0) {
			send_msg(p, PR_MSG_PID, (int)(o - p->ops), 0, pid);
			syscall(SYS_exit_group, 0);
		}
		return 0;
	}
	case PR_OP_SECCOMP: {
		/* The filter was compiled by the parent (pyrun/seccomp.py, with
		 * libseccomp); loading it is one syscall. */
		struct { unsigned short len; const void *filter; } prog = {
			(unsigned short)o->n1, o->s1 };
		return syscall(SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */,
			       (unsigned int)o->flags, &prog) < 0 ? -errno : 0;
	}
	case PR_OP_EXEC:
		pr_execve(p->exec_path, o->argv, o->envp);
		return -errno;
	}
	return -EINVAL;
}

/* The child's main loop: run every step; on failure report and exit. */
static __attribute__((noreturn)) void child_main(struct pr_plan *p)
{
	int i;

	for (i = 0; i < p->nops; i++) {
		int r = run_op(p, &p->ops[i]);
		if (r < 0)
			fail(p, i, -r);
		trace_step(p, i, 0);
	}
	fail(p, p->nops, EINVAL);
}

/* Signal dispositions and mask as a fresh process has them: the caller's
 * handlers (Python's) are code the child must never run, and what the
 * caller ignores (Python ignores SIGPIPE and SIGXFSZ) would stay ignored
 * across execve.  runc's container processes start the same way. */
static void reset_signals(void)
{
	struct { void *handler; unsigned long flags; void *restorer; uint64_t mask; } dfl = {
		SIG_DFL, 0, NULL, 0 };
	uint64_t none = 0;

	for (int sig = 1; sig <= 64; sig++) {
		if (sig != SIGKILL && sig != SIGSTOP)
			syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8);
	}
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, 8);
}

static __attribute__((noreturn)) void child_start(struct pr_plan *p)
{
	/* Our copies of what is the parent's alone: its end of the sync
	 * socket (without it, the parent's death is an EOF on ours, and a
	 * child waiting for it ends: a SIGKILLed `pyrun create` left its init
	 * waiting for good) and the container's state lock (an flock belongs
	 * to the open file, which the copy would hold until our execve). */
	for (int i = 0; i < 2; i++) {
		if (p->close_fds[i] >= 0)
			syscall(SYS_close, p->close_fds[i]);
	}
	reset_signals();
	/* CVE-2019-5736: until execve this process is an image of the
	 * runtime's interpreter.  Not dumpable, its /proc/<pid>/exe and
	 * memory can only be reached with CAP_SYS_PTRACE, which containers
	 * do not get; execve makes the new program dumpable again.  With a
	 * shared address space the flag (it belongs to the mm) is the
	 * caller's too, which stays so. */
	pr_prctl(4 /* PR_SET_DUMPABLE */, 0, 0, 0, 0);
	child_main(p);
}

static int vm_child(void *arg)
{
	child_start(arg);
}

#define PR_VM_STACK (1UL << 20)

#if defined(__x86_64__)
/* clone3 with a stack of its own, which libc does not offer: the child
 * starts on the new stack with no frame to return to, so it must not come
 * back from C here; it calls fn(arg), which never returns. */
static long clone3_on_stack(struct pr_clone_args *args, int (*fn)(void *), void *arg)
{
	long ret = SYS_clone3;
	register void *r12 __asm__("r12") = (void *)fn;
	register void *r13 __asm__("r13") = arg;

	__asm__ __volatile__(
		"syscall\n\t"
		"testq %%rax, %%rax\n\t"
		"jnz 1f\n\t"
		"xorl %%ebp, %%ebp\n\t"
		"movq %%r13, %%rdi\n\t"
		"callq *%%r12\n\t"
		"movl $60, %%eax\n\t"	/* SYS_exit, should fn return */
		"xorl %%edi, %%edi\n\t"
		"syscall\n\t"
		"1:\n\t"
		: "+a"(ret)
		: "D"(args), "S"(sizeof(*args)), "r"(r12), "r"(r13)
		: "rcx", "r11", "memory");
	if (ret < 0) {
		errno = (int)-ret;
		return -1;
	}
	return ret;
}
#define PR_HAVE_CLONE3_ON_STACK 1
#else
#define PR_HAVE_CLONE3_ON_STACK 0
#endif

/* Clone the child stage.  share_vm: posix_spawn's way (CLONE_VM |
 * CLONE_VFORK on a stack of its own), which copies no page tables of the
 * (large) caller and returns once the child has exec'd or exited; only for
 * plans in which the child never waits for the parent (no PR_OP_SYNC,
 * PR_OP_WAIT_START, PR_OP_FORK, no trace).  cgroup_fd >= 0: the child is
 * born in that cgroup2 group (see pr_clone3).  All signals are blocked
 * around the clone so that no handler of the caller runs in the child. */
long pr_spawn(struct pr_plan *p, uint64_t clone_flags, int *pidfd, int share_vm, int cgroup_fd)
{
	uint64_t all = ~0ULL, old;
	void *stack = NULL;
	long pid;
	int err;

	if (share_vm && cgroup_fd >= 0 && !PR_HAVE_CLONE3_ON_STACK)
		share_vm = 0;	/* clone(2) cannot place it in a cgroup */
	if (share_vm) {
		stack = mmap(NULL, PR_VM_STACK, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
		if (stack == MAP_FAILED)
			return -1;
	}
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, 8);
	if (share_vm) {
#if PR_HAVE_CLONE3_ON_STACK
		struct pr_clone_args args;

		memset(&args, 0, sizeof(args));
		args.flags = clone_flags | CLONE_VM | CLONE_VFORK | CLONE_PIDFD;
		args.pidfd = (uint64_t)(uintptr_t)pidfd;
		args.exit_signal = SIGCHLD;
		args.stack = (uint64_t)(uintptr_t)stack;
		args.stack_size = PR_VM_STACK;
		if (cgroup_fd >= 0) {
			args.flags |= PR_CLONE_INTO_CGROUP;
			args.cgroup = (uint64_t)cgroup_fd;
		}
		pid = clone3_on_stack(&args, vm_child, p);
#else
		pid = clone(vm_child, (char *)stack + PR_VM_STACK,
			    (int)clone_flags | CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, p,
			    pidfd);
#endif
	} else {
		pid = pr_clone3(clone_flags | CLONE_PIDFD, pidfd, SIGCHLD, cgroup_fd);
		if (pid == 0)
			child_start(p);
	}
	err = errno;
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, 8);
	if (stack)
		munmap(stack, PR_VM_STACK);
	errno = err;
	return pid;
}
