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
#include <stddef.h>
#include <string.h>
#include <time.h>
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
#define PR_CLONE_INTO_CGROUP 0x200000000ULL

long pr_clone3(uint64_t flags, int *pidfd, int exit_signal, int cgroup_fd);
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
/* ---- the container child stage (container.c) ---- */

/* Step kinds; see pyrun/runtime/plan.py for what each one's fields mean. */
#define PR_OP_SETNS 0
#define PR_OP_UNSHARE 1
#define PR_OP_SYNC 2
#define PR_OP_SETRESID0 3
#define PR_OP_SETHOSTNAME 4
#define PR_OP_SETDOMAINNAME 5
#define PR_OP_MOUNT 6
#define PR_OP_OPEN_ROOT 7
#define PR_OP_MKNOD 8
#define PR_OP_SYMLINK 9
#define PR_OP_HOOK 10
#define PR_OP_PIVOT_ROOT 11
#define PR_OP_MOVE_ROOT 12
#define PR_OP_MASK 13
#define PR_OP_READONLY 14
#define PR_OP_WRITE_FILE 15
#define PR_OP_CONSOLE 16
#define PR_OP_SETSID 17
#define PR_OP_RLIMIT 18
#define PR_OP_PERSONALITY 19
#define PR_OP_KEYRING 20
#define PR_OP_CAPBSET 21
#define PR_OP_IDENTITY 22
#define PR_OP_CAPSET 23
#define PR_OP_CHDIR 24
#define PR_OP_UMASK 25
#define PR_OP_NO_NEW_PRIVS 26
#define PR_OP_PDEATHSIG 27
#define PR_OP_RESOLVE_EXEC 28
#define PR_OP_CLOSE_FDS 29
#define PR_OP_WAIT_START 30
#define PR_OP_FORK 31
#define PR_OP_SECCOMP 32
#define PR_OP_EXEC 33
#define PR_OP_CHROOT 34
#define PR_OP_STDIO 35
#define PR_OP_MKDIR 36
#define PR_OP_DEVNULL 37
#define PR_OP_JOIN_CGROUP 38

/* Messages from the child on the sync socket. */
#define PR_MSG_SYNC 1	/* waiting for the parent (value: what for) */
#define PR_MSG_ERROR 2	/* step `op` failed with `err`; the child exits */
#define PR_MSG_READY 3	/* created: blocked on the exec fifo */
#define PR_MSG_PID 4	/* value: pid of the second stage (the init) */
#define PR_MSG_TRACE 5	/* trace record: step `op`, result `err`, time `value` ns */
#define PR_MSG_GO 6	/* parent -> child: carry on */

/* Flags of PR_OP_MOUNT (n1) and PR_OP_MKNOD (n1). */
#define PR_MNT_BIND_SOURCE 1	/* source is a host path to bind; target kind follows it */
#define PR_MNT_TARGET_FILE 2	/* create the target as a file */
#define PR_MNT_HOST_TARGET 4	/* target is a host path, not inside the root */
#define PR_MNT_COPYUP 8		/* tmpcopyup: copy the covered directory into the new tmpfs */
#define PR_MNT_NO_SYMLINK 16	/* the target itself must not be a symlink (proc, sysfs) */
#define PR_MKNOD_BIND 1		/* bind the host node instead of mknod (user ns) */

#define PR_MK_NONE 0
#define PR_MK_DIR 1
#define PR_MK_FILE 2
#define PR_PATH_MAX 4096

struct pr_caps {
	uint64_t bounding, effective, permitted, inheritable, ambient;
	int last_cap;
};

struct pr_op {
	int kind;
	int fd;
	uint64_t flags, flags2, flags3;
	int64_t n1, n2, n3;
	const char *s1, *s2, *s3, *s4;
	char *const *argv;
	char *const *envp;
	const uint32_t *ids;
	const struct pr_caps *caps;
};

struct pr_msg {
	int32_t type, op, err, pad;
	int64_t value;
};

struct pr_plan {
	int nops;
	struct pr_op *ops;
	int sync_fd;
	int close_fds[2];	/* the parent's fds the child closes first, or -1 */
	int trace_fd;
	int root_fd;
	char *state;
	size_t state_cap;
	size_t state_len;
	char *exec_path;
	char *path_buf;
	char *path_buf2;
	char *name_buf;
	char *link_buf;
	char *parent_buf;
};

long pr_spawn(struct pr_plan *p, uint64_t clone_flags, int *pidfd, int share_vm,
	      int cgroup_fd);
/* cgroup_bpf.c: cgroup v2 device filters. */
int pr_bpf_prog_load_cgroup_device(const void *insns, unsigned int insn_cnt,
				   const char *license, char *log_buf, unsigned int log_size);
int pr_bpf_prog_attach(int target_fd, int prog_fd, unsigned int attach_type, unsigned int flags);
int pr_bpf_prog_detach(int target_fd, int prog_fd, unsigned int attach_type);
int pr_bpf_prog_query(int target_fd, unsigned int attach_type, uint32_t *prog_ids,
		      uint32_t *prog_cnt);
int pr_bpf_prog_get_fd_by_id(uint32_t id);
#endif
