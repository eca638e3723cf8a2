"""Device access on cgroup v2: the v1 rules ("allow c 1:3 rwm", in order) compiled to a
BPF_PROG_TYPE_CGROUP_DEVICE program and attached to the container's cgroup.

v1 semantics are kept by emulating them first (as runc does): "a" rules set the default
and clear the exceptions, other rules add or remove access on exact (type, major, minor)
exceptions. The program then checks each exception (a request must be covered by one
exception entirely) and answers the default otherwise.
"""
from __future__ import annotations

import ctypes
import os
import struct

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
BPF_PROG_LOAD, BPF_PROG_ATTACH, BPF_PROG_DETACH = 5, 8, 9
BPF_PROG_TYPE_CGROUP_DEVICE, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI = 15, 6, 2
DEV_TYPES = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR
ACCESS_BITS = {"m": 1, "r": 2, "w": 4}  # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def emulate(rules: list[str]) -> tuple[bool, list[tuple[str, int, int, int]]]:
    """(allowed by default, exceptions as (type, major or -1, minor or -1, access bits))."""
    default_allow = True  # a new cgroup allows everything until told otherwise
    exceptions: dict[tuple[str, int, int], int] = {}
    for rule in rules:
        verb, kind, numbers, access = rule.split()
        allow = verb == "allow"
        if kind == "a":
            default_allow, exceptions = allow, {}
            continue
        major, minor = (-1 if n == "*" else int(n) for n in numbers.split(":"))
        bits = sum(ACCESS_BITS[c] for c in set(access))
        key = (kind, major, minor)
        if allow != default_allow:  # an exception to the default: add these accesses
            exceptions[key] = exceptions.get(key, 0) | bits
        elif key in exceptions:  # back to the default for these accesses
            exceptions[key] &= ~bits
            if not exceptions[key]:
                del exceptions[key]
    return default_allow, [(k[0], k[1], k[2], bits) for k, bits in exceptions.items()]


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


LDXW, MOV_K, MOV_X, AND_K, RSH_K, JNE_K, EXIT = 0x61, 0xB7, 0xBF, 0x57, 0x77, 0x55, 0x95


def compile_rules(rules: list[str]) -> bytes:
    """The program: r2 = device type, r3 = requested access, r4 = major, r5 = minor."""
    default_allow, exceptions = emulate(rules)
    prog = [_insn(LDXW, 2, 1, 0), _insn(MOV_X, 3, 2), _insn(AND_K, 2, imm=0xFFFF), _insn(RSH_K, 3, imm=16),
            _insn(LDXW, 4, 1, 4), _insn(LDXW, 5, 1, 8)]
    for kind, major, minor, bits in exceptions:
        checks = [[_insn(JNE_K, 2, imm=DEV_TYPES[kind])]]
        if bits != 7:  # any requested access outside the exception's: not this one
            checks.append([_insn(MOV_X, 1, 3), _insn(AND_K, 1, imm=~bits & 7), _insn(JNE_K, 1, imm=0)])
        if major >= 0:
            checks.append([_insn(JNE_K, 4, imm=major)])
        if minor >= 0:
            checks.append([_insn(JNE_K, 5, imm=minor)])
        body = [i for group in checks for i in group] + [_insn(MOV_K, 0, imm=int(not default_allow)), _insn(EXIT)]
        for index, raw in enumerate(body):  # every failed check jumps past this exception's block
            if raw[0] == JNE_K:
                code, regs, _, imm = struct.unpack("<BBhi", raw)
                body[index] = struct.pack("<BBhi", code, regs, len(body) - index - 1, imm)
        prog += body
    prog += [_insn(MOV_K, 0, imm=int(default_allow)), _insn(EXIT)]
    return b"".join(prog)


def _bpf(cmd: int, attr: bytes) -> int:
    if _SYS_BPF is None:
        raise OSError(38, f"bpf: not wired for {os.uname().machine}")
    buf = ctypes.create_string_buffer(attr, len(attr))
    result = _libc.syscall(_SYS_BPF, cmd, buf, len(attr))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf: {os.strerror(err)}")
    return result


def load(rules: list[str]) -> int:
    """A program fd for these rules."""
    prog = compile_rules(rules)
    insns = ctypes.create_string_buffer(prog, len(prog))
    license = ctypes.create_string_buffer(b"GPL")

    def attr(log_level: int, log) -> bytes:
        return struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_CGROUP_DEVICE, len(prog) // 8, ctypes.addressof(insns),
                           ctypes.addressof(license), log_level, len(log) if log else 0,
                           ctypes.addressof(log) if log else 0, 0, 0, b"gcs_devices", 0, BPF_CGROUP_DEVICE)

    try:
        return _bpf(BPF_PROG_LOAD, attr(0, None))
    except OSError as err:  # again with the verifier's log, for the reason
        log = ctypes.create_string_buffer(1 << 16)
        try:
            _bpf(BPF_PROG_LOAD, attr(1, log))
        except OSError:
            pass
        detail = log.value.decode(errors="replace").strip().splitlines()
        raise OSError(err.errno, f"{err.strerror}{': ' + detail[-1] if detail else ''}") from None


def attach(cgroup_dir: str, prog_fd: int, replace_fd: int = -1) -> None:
    """Attach prog_fd to the cgroup (alongside its ancestors' programs), then detach the
    program it replaces, so that the cgroup is never without one."""
    dirfd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _bpf(BPF_PROG_ATTACH, struct.pack("<IIIII", dirfd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI, 0))
        if replace_fd >= 0:
            _bpf(BPF_PROG_DETACH, struct.pack("<IIIII", dirfd, replace_fd, BPF_CGROUP_DEVICE, 0, 0))
    finally:
        os.close(dirfd)
