"""compile_filter against profile shapes the engines send (unit level:
libseccomp only, nothing is loaded)."""
from pyrun.seccomp import compile_filter

MULTI_ARCH = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


def _profile(*rules):
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
            "architectures": MULTI_ARCH, "syscalls": list(rules)}


def test_syscalls_of_another_arch_are_kept():
    # socketcall does not exist on x86_64: libseccomp resolves it to a
    # negative pseudo-syscall number, which is a real rule on x86.
    without = compile_filter(_profile({"names": ["read"], "action": "SCMP_ACT_ALLOW"}))
    with_it = compile_filter(_profile({"names": ["read", "socketcall"],
                                       "action": "SCMP_ACT_ALLOW"}))
    assert with_it[1] > without[1]


def test_unknown_syscall_names_are_skipped():
    a = compile_filter(_profile({"names": ["read"], "action": "SCMP_ACT_ALLOW"}))
    b = compile_filter(_profile({"names": ["read", "no_such_syscall"], "action": "SCMP_ACT_ALLOW"}))
    assert a == b


def test_podman_profile_with_cap_drop_all():
    # The socket rules of podman 4.3's default profile for `--cap-drop all`
    # (AF_VSOCK refused, NETLINK_AUDIT refused).  Without socketcall in the
    # x86 filter, libseccomp answered EEXIST to the third rule.
    compile_filter(_profile(
        {"names": ["read", "write", "socketcall"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
         "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"},
                  {"index": 2, "value": 9, "op": "SCMP_CMP_EQ"}]},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 2, "value": 9, "op": "SCMP_CMP_NE"}]},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_NE"}]},
    ))
