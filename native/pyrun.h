/* Shared declarations of pyrun's native layer. */
#ifndef PYRUN_H
#define PYRUN_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Kernel ABI structs, spelled out so that no <linux/mount.h> (which clashes
 * with glibc's <sys/mount.h>) is needed. */
struct pr_clone_args {
	uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack,
		stack_size, tls, set_tid, set_tid_size, cgroup;
};
struct pr_mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };
struct pr_open_how { uint64_t flags, mode, resolve; };
struct pr_cap_header { uint32_t version; int pid; };

#define PR_CAP_VERSION_3 0x20080522
#define PR_KEYCTL_JOIN_SESSION_KEYRING 1
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

long pr_clone3(uint64_t flags, int *pidfd, int exit_signal);
int pr_unshare(int flags);
int pr_setns(int fd, int nstype);
int pr_pivot_root(const char *new_root, const char *put_old);
int pr_mount(const char *source, const char *target, const char *fstype,
	     unsigned long flags, const char *data);
int pr_umount2(const char *target, int flags);
int pr_open_tree(int dfd, const char *path, unsigned int flags);
int pr_move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path,
		  unsigned int flags);
int pr_mount_setattr(int dfd, const char *path, unsigned int flags, uint64_t attr_set,
		     uint64_t attr_clr, uint64_t propagation, uint64_t userns_fd);
int pr_fsopen(const char *fsname, unsigned int flags);
int pr_fsconfig(int fd, unsigned int cmd, const char *key, const char *value, int aux);
int pr_fsmount(int fd, unsigned int flags, unsigned int attr_flags);
int pr_openat2(int dfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);
int pr_sethostname(const char *name, size_t len);
int pr_setdomainname(const char *name, size_t len);
int pr_capget(int pid, uint32_t *data6);
int pr_capset(const uint32_t *data6);
int pr_prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5);
int pr_setresuid(uint32_t r, uint32_t e, uint32_t s);
int pr_setresgid(uint32_t r, uint32_t e, uint32_t s);
int pr_setgroups(size_t n, const uint32_t *gids);
int pr_personality(unsigned long persona);
int pr_mknodat(int dfd, const char *path, uint32_t mode, uint64_t dev);
long pr_keyctl_join(const char *name);
int pr_close_range(unsigned int first, unsigned int last, unsigned int flags);
int pr_pidfd_open(int pid, unsigned int flags);
int pr_pidfd_send_signal(int pidfd, int sig, unsigned int flags);
int pr_execve(const char *path, char *const argv[], char *const envp[]);
/* cgroup_bpf.c: cgroup v2 device filters. */
int pr_bpf_prog_load_cgroup_device(const void *insns, unsigned int insn_cnt,
				   const char *license, char *log_buf, unsigned int log_size);
int pr_bpf_prog_attach(int target_fd, int prog_fd, unsigned int attach_type, unsigned int flags);
int pr_bpf_prog_detach(int target_fd, int prog_fd, unsigned int attach_type);
int pr_bpf_prog_query(int target_fd, unsigned int attach_type, uint32_t *prog_ids,
		      uint32_t *prog_cnt);
int pr_bpf_prog_get_fd_by_id(uint32_t id);
#endif
