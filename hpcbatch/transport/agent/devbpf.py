"""cgroup v2's device control: a small BPF program that hides the other jobs' GPUs.

Why it exists: cgroup v1 has a `devices.deny` file (gpus.py's `deny_rules`);
cgroup v2 has none. There the kernel asks each open of a device file of a
process in the group a BPF program of type BPF_PROG_TYPE_CGROUP_DEVICE
attached to the group, which answers allow (1) or deny (0). runc and systemd
generate such a program from their device rules; hpcbatch needs only one rule,
"deny these character devices, allow the rest", so the program is assembled
here, a dozen eBPF instructions, and loaded and attached with the `bpf(2)`
system call through ctypes (no compiler, no library on the host).

The program, for the denied (major, minor) pairs:

    r2 = ctx->access_type & 0xffff     # the device type: 2 = character
    r3 = ctx->major; r4 = ctx->minor
    if r2 != 2: allow
    for each denied pair: if r3 == major and r4 == minor: return 0
    allow: return 1

It is attached with BPF_F_ALLOW_MULTI, so the programs of the groups above
(systemd's) still run and must allow too; it stays attached until the group
is removed. Loading and attaching need CAP_BPF or CAP_SYS_ADMIN: a root agent.

Standard library only (uploaded with the agent).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
BPF_DEVCG_DEV_CHAR = 2
SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}

# eBPF opcodes (linux/bpf_common.h, linux/bpf.h)
_LDX_MEM_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
_AND64_K = 0x57  # BPF_ALU64 | BPF_AND | BPF_K
_MOV64_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K
_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K
_EXIT = 0x95  # BPF_JMP | BPF_EXIT


class DeviceBpfError(OSError):
    """The kernel refused to load or attach the program (errno and the verifier's log)."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(deny: list[tuple[int, int]]) -> bytes:
    """The eBPF instructions that deny the character devices `deny` (major, minor)."""
    body = [
        _insn(_LDX_MEM_W, dst=2, src=1, off=0),  # access_type
        _insn(_AND64_K, dst=2, imm=0xFFFF),  # its low half: the device type
        _insn(_LDX_MEM_W, dst=3, src=1, off=4),  # major
        _insn(_LDX_MEM_W, dst=4, src=1, off=8),  # minor
    ]
    rules = [
        [
            _insn(_JNE_K, dst=3, off=3, imm=major),  # not this major: the next rule
            _insn(_JNE_K, dst=4, off=2, imm=minor),
            _insn(_MOV64_K, dst=0, imm=0),  # this device: deny
            _insn(_EXIT),
        ]
        for major, minor in deny
    ]
    to_allow = sum(len(r) for r in rules)  # a block device, or none of the rules: allow
    body.append(_insn(_JNE_K, dst=2, off=to_allow, imm=BPF_DEVCG_DEV_CHAR))
    for rule in rules:
        body.extend(rule)
    body += [_insn(_MOV64_K, dst=0, imm=1), _insn(_EXIT)]
    return b"".join(body)


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    number = SYS_BPF.get(platform.machine())
    if number is None:
        raise DeviceBpfError(0, f"bpf(2): unknown system call number on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    ret = int(libc.syscall(number, cmd, attr, len(attr)))
    if ret < 0:
        errno = ctypes.get_errno()
        raise DeviceBpfError(errno, os.strerror(errno))
    return ret


def load(deny: list[tuple[int, int]]) -> int:
    """The loaded program's file descriptor (the caller closes it)."""
    code = program(deny)
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = ctypes.create_string_buffer(128)
    # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
    # log_size, log_buf (the rest stays zero)
    struct.pack_into(
        "<IIQQIIQ", attr, 0, BPF_PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
        ctypes.addressof(insns), ctypes.addressof(license), 1, len(log), ctypes.addressof(log),
    )  # fmt: skip
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except DeviceBpfError as exc:
        why = log.value.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise DeviceBpfError(exc.errno, f"loading the device program: {exc.strerror}"
                             + (f" ({why[0]})" if why[0] else "")) from None  # fmt: skip


def restrict(cgroup_dir: str, deny: list[tuple[int, int]]) -> None:
    """Attach a program denying `deny` to the cgroup v2 directory `cgroup_dir`; raises
    DeviceBpfError (an OSError) where the kernel refuses."""
    prog = load(deny)
    try:
        target = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            attr = ctypes.create_string_buffer(128)
            # BPF_PROG_ATTACH: target_fd, attach_bpf_fd, attach_type, attach_flags
            struct.pack_into("<IIII", attr, 0, target, prog, BPF_CGROUP_DEVICE,
                             BPF_F_ALLOW_MULTI)  # fmt: skip
            try:
                _bpf(BPF_PROG_ATTACH, attr)
            except DeviceBpfError as exc:
                raise DeviceBpfError(
                    exc.errno, f"attaching the device program to {cgroup_dir}: {exc.strerror}"
                ) from None
        finally:
            os.close(target)
    finally:
        os.close(prog)


def usable() -> str | None:
    """None where this process may load device programs, else why not."""
    try:
        os.close(load([]))
    except DeviceBpfError as exc:
        return str(exc)
    return None
