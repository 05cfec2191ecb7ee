"""Device access rules: cgroup v1 semantics, v1 writes and the v2 BPF program.

The OCI ``linux.resources.devices`` list is applied in order to a model of
the cgroup v1 devices controller (runc's devices emulator, restated):

- The state is a default (allow or deny) plus a set of exceptions
  ``(type, major, minor) -> access``; ``None`` is the ``*`` wildcard.
- A rule of type ``a`` resets the state: default = its ``allow``, no
  exceptions.  So ``{"allow": false, "access": "rwm"}`` first means deny all.
- A rule whose action differs from the default adds an exception (access is
  merged); a rule equal to the default removes access from an exception.
  Removing access that a wildcard exception grants cannot be expressed in v1
  (no holes in wildcards): that is an InvalidArgument, as in runc.

Two renderings of the final state:

- :func:`v1_transition` gives the devices.allow / devices.deny writes that
  take a group from its current devices.list to the target state.
- :func:`bpf_program` gives a BPF_PROG_TYPE_CGROUP_DEVICE program (raw
  instructions) for cgroup v2, which has no devices files: the kernel runs it
  on every device open/mknod in the group (include/uapi/linux/bpf.h,
  ``struct bpf_cgroup_dev_ctx``; Documentation/admin-guide/cgroup-v2.rst,
  "Device controller").
"""
import struct
from pyrun.record import Frozen, Record

from pyrun.errdefs import InvalidArgument
from pyrun.cgroups.resources import DeviceRule

RWM = "rwm"


def _perms(s):
    return "".join(c for c in RWM if c in s)


def _sort_key(meta):
    t, major, minor = meta
    return (-1 if major is None else major, -1 if minor is None else minor, t)


class DeviceState(Record):
    """The v1 devices controller state: a default and exceptions."""
    __slots__ = ("default_allow", "exceptions")
    _defaults = {"default_allow": False, "exceptions": dict}

    def apply(self, rule):
        """Apply one DeviceRule; InvalidArgument if it would punch a hole
        in a wildcard exception."""
        if rule.type == "a":
            self.default_allow, self.exceptions = rule.allow, {}
            return
        meta = (rule.type, rule.major, rule.minor)
        if rule.allow != self.default_allow:
            self.exceptions[meta] = _perms(self.exceptions.get(meta, "") + rule.access)
            return
        for wider in ((rule.type, None, rule.minor), (rule.type, rule.major, None),
                      (rule.type, None, None)):
            if wider != meta and set(self.exceptions.get(wider, "")) & set(rule.access):
                raise InvalidArgument(
                    f"device rule {rule.cgroup_string()!r} ({'allow' if rule.allow else 'deny'}) "
                    f"cannot be applied: it would punch a hole in the wildcard rule "
                    f"{DeviceRule(True, *wider, self.exceptions[wider]).cgroup_string()!r}, "
                    f"which cgroup v1 cannot express")
        left = _perms(set(self.exceptions.get(meta, "")) - set(rule.access))
        if left:
            self.exceptions[meta] = left
        else:
            self.exceptions.pop(meta, None)

    def sorted_exceptions(self):
        return sorted(self.exceptions.items(), key=lambda kv: _sort_key(kv[0]))

# The devices every runc container may use besides its spec's rules
# (runc 1.1 specconv AllowedDevices): mknod of anything, the standard
# character devices, ptys and /dev/net/tun.  (path or None, rule).
DEFAULT_ALLOWED = (
    (None, DeviceRule(True, "c", None, None, "m")),
    (None, DeviceRule(True, "b", None, None, "m")),
    ("/dev/null", DeviceRule(True, "c", 1, 3, RWM)),
    ("/dev/random", DeviceRule(True, "c", 1, 8, RWM)),
    ("/dev/full", DeviceRule(True, "c", 1, 7, RWM)),
    ("/dev/tty", DeviceRule(True, "c", 5, 0, RWM)),
    ("/dev/zero", DeviceRule(True, "c", 1, 5, RWM)),
    ("/dev/urandom", DeviceRule(True, "c", 1, 9, RWM)),
    (None, DeviceRule(True, "c", 136, None, RWM)),   # /dev/pts/*
    (None, DeviceRule(True, "c", 5, 2, RWM)),        # /dev/ptmx
    (None, DeviceRule(True, "c", 10, 200, RWM)),     # /dev/net/tun
)


def default_allowed(spec_device_paths=()):
    """The default allow rules to append after the spec's
    ``linux.resources.devices``.  Like runc, a default whose path is also
    in the spec's ``linux.devices`` is left out (the spec's entry wins)."""
    skip = set(spec_device_paths)
    return tuple(rule for path, rule in DEFAULT_ALLOWED if path is None or path not in skip)


def target_state(rules):
    """The state after applying ``rules`` to a deny-all start (runc starts
    every container from deny-all, then the spec's rules, then defaults)."""
    state = DeviceState()
    for rule in rules:
        state.apply(rule)
    return state


def parse_devices_list(text):
    """The state a v1 ``devices.list`` describes (each line is an allow
    exception; ``a *:* rwm`` means allow all)."""
    state = DeviceState()
    for line in text.splitlines():
        if not line.strip():
            continue
        t, numbers, access = line.split()
        major, minor = (None if n == "*" else int(n) for n in numbers.split(":"))
        state.apply(DeviceRule(True, t, major, minor, access))
    return state


def v1_transition(current, target):
    """The DeviceRules to write (allow -> devices.allow, deny ->
    devices.deny), in order, to move a v1 group from ``current`` to
    ``target`` (runc's devices emulator Transition, restated).  A change of default (or an allow-all start, whose
    exceptions v1 cannot list) starts with an ``a *:* rwm`` reset."""
    out = []
    old = current.exceptions
    if current.default_allow or current.default_allow != target.default_allow:
        out.append(DeviceRule(target.default_allow, "a", None, None, RWM))
        old = {}
    for meta, perms in sorted(old.items(), key=lambda kv: _sort_key(kv[0])):
        dropped = _perms(set(perms) - set(target.exceptions.get(meta, "")))
        if dropped:
            out.append(DeviceRule(target.default_allow, *meta, dropped))
    # Exceptions keep the order in which the rules first named them, so
    # devices.list (which lists in insertion order) follows the spec's
    # order: "the runtime MUST apply entries in the listed order".  runc
    # sorts them here; crun keeps the spec's order, which is what the
    # runtime-tools validation checks.
    for meta, perms in target.exceptions.items():
        gained = _perms(set(perms) - set(old.get(meta, "")))
        if gained:
            out.append(DeviceRule(not target.default_allow, *meta, gained))
    return out


# --- cgroup v2: the BPF program -------------------------------------------

BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
_ACCESS_BITS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
_TYPE = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}

# Opcodes (include/uapi/linux/bpf_common.h, bpf.h).
LDX_MEM_W = 0x61     # BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
ALU32_AND_K = 0x54   # BPF_ALU | BPF_AND | BPF_K
ALU32_RSH_K = 0x74   # BPF_ALU | BPF_RSH | BPF_K
ALU32_MOV_K = 0xb4   # BPF_ALU | BPF_MOV | BPF_K
ALU32_MOV_X = 0xbc   # BPF_ALU | BPF_MOV | BPF_X
JNE_K = 0x55         # BPF_JMP | BPF_JNE | BPF_K: if dst != imm goto pc+off
JNE_X = 0x5d         # BPF_JMP | BPF_JNE | BPF_X: if dst != src goto pc+off
EXIT = 0x95          # BPF_JMP | BPF_EXIT

LICENSE = "Apache"  # any string works for a program that calls no GPL helpers


class Insn(Frozen):
    """One ``struct bpf_insn``."""
    __slots__ = ("code", "dst", "src", "off", "imm")
    _defaults = {"dst": 0, "src": 0, "off": 0, "imm": 0}

    def encode(self):
        return struct.pack("<BBhi", self.code, self.dst | (self.src << 4), self.off, self.imm)


def _rule_block(meta, access, allow):
    """Instructions for one exception; the last jump targets are patched by
    the caller (``off`` holds the distance to the block's end for now)."""
    t, major, minor = meta
    for name, n in (("major", major), ("minor", minor)):
        if n is not None and not 0 <= n < 1 << 31:
            raise InvalidArgument(f"device rule {t} {major}:{minor}: {name} {n} is out of range")
    checks = [Insn(JNE_K, dst=2, imm=_TYPE[t])]
    bits = sum(_ACCESS_BITS[c] for c in access)
    if access != RWM:
        # Match only if every requested access bit is granted by the rule:
        # (request & rule) == request.
        checks += [Insn(ALU32_MOV_X, dst=1, src=3), Insn(ALU32_AND_K, dst=1, imm=bits),
                   Insn(JNE_X, dst=1, src=3)]
    if major is not None:
        checks.append(Insn(JNE_K, dst=4, imm=major))
    if minor is not None:
        checks.append(Insn(JNE_K, dst=5, imm=minor))
    tail = [Insn(ALU32_MOV_K, dst=0, imm=int(allow)), Insn(EXIT)]
    block = checks + tail
    out = []
    for i, insn in enumerate(block):
        if insn.code in (JNE_K, JNE_X):
            # Jump past the end of this block, to the next rule.
            insn = Insn(insn.code, insn.dst, insn.src, len(block) - i - 1, insn.imm)
        out.append(insn)
    return out


def bpf_program(rules):
    """The cgroup v2 device filter for the DeviceRules ``rules`` (same
    semantics as v1, see the module docstring), as a list of Insn.

    The context (R1) is ``struct bpf_cgroup_dev_ctx {u32 access_type; u32
    major; u32 minor;}``, with the device type in the low 16 bits of
    access_type and the access bits in the high 16.  Registers: R2 type, R3
    access, R4 major, R5 minor.  Each exception is a block that falls through
    to the next when it does not match; the end returns the default.  The
    program returns 1 to allow, 0 to deny (the caller gets EPERM).
    """
    state = target_state(rules)
    insns = [
        Insn(LDX_MEM_W, dst=2, src=1, off=0), Insn(ALU32_AND_K, dst=2, imm=0xFFFF),
        Insn(LDX_MEM_W, dst=3, src=1, off=0), Insn(ALU32_RSH_K, dst=3, imm=16),
        Insn(LDX_MEM_W, dst=4, src=1, off=4),
        Insn(LDX_MEM_W, dst=5, src=1, off=8),
    ]
    for meta, access in state.sorted_exceptions():
        insns += _rule_block(meta, access, not state.default_allow)
    insns += [Insn(ALU32_MOV_K, dst=0, imm=int(state.default_allow)), Insn(EXIT)]
    return insns


def encode(insns):
    """The program as the bytes BPF_PROG_LOAD takes."""
    return b"".join(i.encode() for i in insns)
