"""The classic-BPF seccomp filter of host-bypass (x86_64), built by a tiny label assembler.

What it does, in order:

* an architecture check: the i386 entry points (``int 0x80`` from a 64-bit task,
  or a 32-bit program) may not use any socket call that could touch a host
  socket (``socketcall``, ``connect``, ``bind``, ``listen``, ``send*``) nor
  ``io_uring_setup``: ENOSYS. Any other architecture is killed.
* x32 (``nr | 0x40000000``): ENOSYS for everything.
* ``connect``, ``bind``, ``listen``: user notification (the supervisor decides).
* ``epoll_create``/``epoll_create1``: user notification, only so that the
  supervisor knows which epoll instances exist (it creates them itself and
  hands them over with ADDFD+SEND).
* ``sendto``/``sendmmsg``/``sendmsg`` with ``MSG_FASTOPEN``: EOPNOTSUPP (a
  fast-open send would connect a host socket behind the supervisor's back).
* ``io_uring_setup``: ENOSYS (io_uring's connect never passes through seccomp).
* everything else: allowed.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence

from .abi import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    MSG_FASTOPEN,
    NR_I386,
    NR_X86_64,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_USER_NOTIF,
    X32_SYSCALL_BIT,
)

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
SECCOMP_RET_KILL_PROCESS = 0x80000000

OFF_NR = 0
OFF_ARCH = 4


def off_arg_lo(index: int) -> int:
    """Offset of the low 32 bits of ``args[index]`` in ``struct seccomp_data`` (little endian)."""
    return 16 + 8 * index


Op = tuple  # ("label", name) | ("ld", off) | ("jeq"/"jge"/"jset", k, label) | ("ret", k)


def assemble(ops: Sequence[Op]) -> bytes:
    """Assemble ops; conditional jumps go to ``label`` when true and fall through when false."""
    labels: dict[str, int] = {}
    pc = 0
    for op in ops:
        if op[0] == "label":
            labels[op[1]] = pc
        else:
            pc += 1
    out = bytearray()
    pc = 0
    for op in ops:
        kind = op[0]
        if kind == "label":
            continue
        if kind == "ld":
            out += struct.pack("=HBBI", BPF_LD_W_ABS, 0, 0, op[1])
        elif kind == "ret":
            out += struct.pack("=HBBI", BPF_RET_K, 0, 0, op[1])
        else:
            code = {"jeq": BPF_JEQ_K, "jge": BPF_JGE_K, "jset": BPF_JSET_K}[kind]
            jt = labels[op[2]] - (pc + 1)
            if not 0 <= jt <= 255:
                raise ValueError(f"jump to {op[2]} out of range ({jt})")
            out += struct.pack("=HBBI", code, jt, 0, op[1])
        pc += 1
    return bytes(out)


def filter_ops() -> list[Op]:
    """The hardened filter as assembler ops (see the module docstring)."""
    ops: list[Op] = [
        ("ld", OFF_ARCH),
        ("jeq", AUDIT_ARCH_X86_64, "native"),
        ("jeq", AUDIT_ARCH_I386, "i386"),
        ("ret", SECCOMP_RET_KILL_PROCESS),
        ("label", "i386"),
        ("ld", OFF_NR),
    ]
    ops += [("jeq", nr, "enosys") for nr in sorted(set(NR_I386.values()))]
    ops += [
        ("ret", SECCOMP_RET_ALLOW),
        ("label", "native"),
        ("ld", OFF_NR),
        ("jge", X32_SYSCALL_BIT, "enosys"),
        ("jeq", NR_X86_64["connect"], "notify"),
        ("jeq", NR_X86_64["bind"], "notify"),
        ("jeq", NR_X86_64["listen"], "notify"),
        ("jeq", NR_X86_64["epoll_create1"], "notify"),
        ("jeq", NR_X86_64["epoll_create"], "notify"),
        ("jeq", NR_X86_64["io_uring_setup"], "enosys"),
        ("jeq", NR_X86_64["sendto"], "flags_a3"),
        ("jeq", NR_X86_64["sendmmsg"], "flags_a3"),
        ("jeq", NR_X86_64["sendmsg"], "flags_a2"),
        ("ret", SECCOMP_RET_ALLOW),
        ("label", "flags_a3"),
        ("ld", off_arg_lo(3)),
        ("jset", MSG_FASTOPEN, "eopnotsupp"),
        ("ret", SECCOMP_RET_ALLOW),
        ("label", "flags_a2"),
        ("ld", off_arg_lo(2)),
        ("jset", MSG_FASTOPEN, "eopnotsupp"),
        ("ret", SECCOMP_RET_ALLOW),
        ("label", "enosys"),
        ("ret", SECCOMP_RET_ERRNO | errno.ENOSYS),
        ("label", "eopnotsupp"),
        ("ret", SECCOMP_RET_ERRNO | errno.EOPNOTSUPP),
        ("label", "notify"),
        ("ret", SECCOMP_RET_USER_NOTIF),
    ]
    return ops


def build_filter() -> bytes:
    """The filter program as bytes of ``struct sock_filter``."""
    return assemble(filter_ops())


def run_filter(prog: bytes, nr: int, arch: int, args: Sequence[int] = (0,) * 6) -> int:
    """Interpret ``prog`` on one syscall (for unit tests of the filter logic)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    acc = 0
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == BPF_LD_W_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == BPF_RET_K:
            return k
        else:
            if code == BPF_JEQ_K:
                taken = acc == k
            elif code == BPF_JGE_K:
                taken = acc >= k
            elif code == BPF_JSET_K:
                taken = bool(acc & k)
            else:
                raise ValueError(f"unknown opcode {code:#x}")
            pc += 1 + (jt if taken else jf)
