/*
 * bpf(2) for cgroup v2 device filters: load a BPF_PROG_TYPE_CGROUP_DEVICE
 * program, attach it to a cgroup directory fd, list and detach the programs
 * already there.  Raw syscalls, -1 and errno on failure; Python
 * (pyrun/linux.py) raises the errors.  The program itself is generated in
 * Python (pyrun/cgroups/devices.py).
 */
#include "pyrun.h"
#include <linux/bpf.h>

static long pr_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

int pr_bpf_prog_load_cgroup_device(const void *insns, unsigned int insn_cnt,
				   const char *license, char *log_buf, unsigned int log_size)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
	attr.insns = (uint64_t)(uintptr_t)insns;
	attr.insn_cnt = insn_cnt;
	attr.license = (uint64_t)(uintptr_t)license;
	if (log_buf && log_size) {
		/* The verifier explains a rejection here. */
		attr.log_buf = (uint64_t)(uintptr_t)log_buf;
		attr.log_size = log_size;
		attr.log_level = 1;
	}
	return (int)pr_bpf(BPF_PROG_LOAD, &attr);
}

int pr_bpf_prog_attach(int target_fd, int prog_fd, unsigned int attach_type, unsigned int flags)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.target_fd = target_fd;
	attr.attach_bpf_fd = prog_fd;
	attr.attach_type = attach_type;
	attr.attach_flags = flags;
	return (int)pr_bpf(BPF_PROG_ATTACH, &attr);
}

int pr_bpf_prog_detach(int target_fd, int prog_fd, unsigned int attach_type)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.target_fd = target_fd;
	attr.attach_bpf_fd = prog_fd;
	attr.attach_type = attach_type;
	return (int)pr_bpf(BPF_PROG_DETACH, &attr);
}

int pr_bpf_prog_query(int target_fd, unsigned int attach_type, uint32_t *prog_ids,
		      uint32_t *prog_cnt)
{
	union bpf_attr attr;
	int ret;

	memset(&attr, 0, sizeof(attr));
	attr.query.target_fd = target_fd;
	attr.query.attach_type = attach_type;
	attr.query.prog_ids = (uint64_t)(uintptr_t)prog_ids;
	attr.query.prog_cnt = *prog_cnt;
	ret = (int)pr_bpf(BPF_PROG_QUERY, &attr);
	/* The kernel reports the real count even when the array is too small
	 * (ENOSPC), so the caller can retry with room enough. */
	*prog_cnt = attr.query.prog_cnt;
	return ret;
}

int pr_bpf_prog_get_fd_by_id(uint32_t id)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.prog_id = id;
	return (int)pr_bpf(BPF_PROG_GET_FD_BY_ID, &attr);
}
