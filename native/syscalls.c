/*
 * Thin wrappers over the Linux syscalls pyrun uses.
 *
 * Each wrapper is the raw syscall: it returns -1 and sets errno on failure,
 * and never allocates.  Python (pyrun/linux.py) turns the errno into an
 * OSError that names the call, its paths and its flags.  The container child
 * stage (container.c) calls the same wrappers after clone, where only
 * async-signal-safe work is allowed.
 */
#include "pyrun.h"

long pr_clone3(uint64_t flags, int *pidfd, int exit_signal, int cgroup_fd)
{
	/* Fork-like clone3: no new stack, so the child returns here as from
	 * fork().  cgroup_fd >= 0: born in that cgroup2 group
	 * (CLONE_INTO_CGROUP), which takes the global cgroup lock only for
	 * reading where a later write to cgroup.procs would wait for an RCU
	 * grace period.  Without it, falls back to clone(2) on kernels
	 * without clone3. */
	struct pr_clone_args args;
	long ret;

	memset(&args, 0, sizeof(args));
	args.flags = flags;
	args.pidfd = (uint64_t)(uintptr_t)pidfd;
	args.exit_signal = (uint64_t)exit_signal;
	if (cgroup_fd >= 0) {
		args.flags |= PR_CLONE_INTO_CGROUP;
		args.cgroup = (uint64_t)cgroup_fd;
	}
	ret = syscall(SYS_clone3, &args, sizeof(args));
	if (ret < 0 && errno == ENOSYS && cgroup_fd < 0) {
		if (flags & CLONE_PIDFD) {
			/* clone(2) puts the pidfd where parent_tid points. */
			ret = syscall(SYS_clone, (flags & ~0xffULL) | (uint64_t)exit_signal,
				      NULL, pidfd, NULL, 0);
		} else {
			ret = syscall(SYS_clone, (flags & ~0xffULL) | (uint64_t)exit_signal,
				      NULL, NULL, NULL, 0);
		}
	}
	return ret;
}

int pr_unshare(int flags) { return (int)syscall(SYS_unshare, flags); }
int pr_setns(int fd, int nstype) { return (int)syscall(SYS_setns, fd, nstype); }
int pr_pivot_root(const char *new_root, const char *put_old)
{
	return (int)syscall(SYS_pivot_root, new_root, put_old);
}
int pr_mount(const char *source, const char *target, const char *fstype,
	     unsigned long flags, const char *data)
{
	return (int)syscall(SYS_mount, source, target, fstype, flags, data);
}
int pr_umount2(const char *target, int flags) { return (int)syscall(SYS_umount2, target, flags); }
int pr_open_tree(int dfd, const char *path, unsigned int flags)
{
	return (int)syscall(SYS_open_tree, dfd, path, flags);
}
int pr_move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path,
		  unsigned int flags)
{
	return (int)syscall(SYS_move_mount, from_dfd, from_path, to_dfd, to_path, flags);
}
int pr_mount_setattr(int dfd, const char *path, unsigned int flags, uint64_t attr_set,
		     uint64_t attr_clr, uint64_t propagation, uint64_t userns_fd)
{
	struct pr_mount_attr a;

	a.attr_set = attr_set;
	a.attr_clr = attr_clr;
	a.propagation = propagation;
	a.userns_fd = userns_fd;
	return (int)syscall(SYS_mount_setattr, dfd, path, flags, &a, sizeof(a));
}
int pr_fsopen(const char *fsname, unsigned int flags) { return (int)syscall(SYS_fsopen, fsname, flags); }
int pr_fsconfig(int fd, unsigned int cmd, const char *key, const char *value, int aux)
{
	return (int)syscall(SYS_fsconfig, fd, cmd, key, value, aux);
}
int pr_fsmount(int fd, unsigned int flags, unsigned int attr_flags)
{
	return (int)syscall(SYS_fsmount, fd, flags, attr_flags);
}
int pr_openat2(int dfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve)
{
	struct pr_open_how how;

	how.flags = flags;
	how.mode = mode;
	how.resolve = resolve;
	return (int)syscall(SYS_openat2, dfd, path, &how, sizeof(how));
}
int pr_sethostname(const char *name, size_t len) { return (int)syscall(SYS_sethostname, name, len); }
int pr_setdomainname(const char *name, size_t len) { return (int)syscall(SYS_setdomainname, name, len); }
int pr_capget(int pid, uint32_t *data6)
{
	struct pr_cap_header h = { PR_CAP_VERSION_3, pid };
	return (int)syscall(SYS_capget, &h, data6);
}
int pr_capset(const uint32_t *data6)
{
	/* data6: effective, permitted, inheritable for the low 32 caps, then
	 * the same three for the high 32, as _LINUX_CAPABILITY_VERSION_3. */
	struct pr_cap_header h = { PR_CAP_VERSION_3, 0 };
	return (int)syscall(SYS_capset, &h, data6);
}
int pr_prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)
{
	return (int)syscall(SYS_prctl, option, a2, a3, a4, a5);
}
int pr_setresuid(uint32_t r, uint32_t e, uint32_t s) { return (int)syscall(SYS_setresuid, r, e, s); }
int pr_setresgid(uint32_t r, uint32_t e, uint32_t s) { return (int)syscall(SYS_setresgid, r, e, s); }
int pr_setgroups(size_t n, const uint32_t *gids) { return (int)syscall(SYS_setgroups, n, gids); }
int pr_personality(unsigned long persona) { return (int)syscall(SYS_personality, persona); }
int pr_mknodat(int dfd, const char *path, uint32_t mode, uint64_t dev)
{
	return (int)syscall(SYS_mknodat, dfd, path, mode, dev);
}
long pr_keyctl_join(const char *name)
{
	return syscall(SYS_keyctl, PR_KEYCTL_JOIN_SESSION_KEYRING, name, 0, 0, 0);
}
int pr_close_range(unsigned int first, unsigned int last, unsigned int flags)
{
	return (int)syscall(SYS_close_range, first, last, flags);
}
int pr_pidfd_open(int pid, unsigned int flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
int pr_pidfd_send_signal(int pidfd, int sig, unsigned int flags)
{
	return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, flags);
}
int pr_execve(const char *path, char *const argv[], char *const envp[])
{
	return (int)syscall(SYS_execve, path, argv, envp);
}
