"""The OCI linux.seccomp object compiled to a classic BPF seccomp filter, the way runc 1.1
(libseccomp 2.5 and its -ENOSYS stub) would build it, so that a process sees the same
answer to every syscall under either runtime.

Why not libseccomp through a binding: it is a C library plus a binding to carry in the UVM
image and load in the agent (or in every container process), and runc pays its filter
generation per container. Here the filter is ordinary data: compiled once per distinct
profile in the agent (cached by the profile's canonical JSON), sent in the plan as bytes,
and the container process only makes the seccomp(2) call (native/child.py).

The semantics kept, from runc's libcontainer/seccomp and libseccomp's db.c:
- a rule whose action is the default action is dropped; unknown syscall names are skipped;
  a name is resolved per architecture (absent there: no rule there);
- several conditions on one argument in an entry are separate rules (any may match),
  conditions on different arguments all have to match;
- an unconditional rule for a syscall overrides every conditional one, the first one wins;
  conditional rules are tried in the order given (libseccomp merges them into a tree: for
  rules that overlap with different actions the outcome may differ, see issue 13);
- 64-bit arguments are compared as unsigned 64-bit values (libseccomp's hi/lo halves),
  SCMP_ARCH_X86 compares the low 32 bits only; MASKED_EQ compares (arg & mask) with
  (value & mask); a MASKED_EQ with a zero mask (per half compared) is no condition;
- x86_64 without SCMP_ARCH_X32 sends x32 syscalls (nr >= 1<<30, but -1) to the bad-arch
  action, with X32 they are x32 rules; architectures not in the filter get KILL_THREAD;
- runc's stub: unless the default action is ALLOW, LOG or TRACE, a syscall numbered above
  the highest one the profile names for its architecture gets ENOSYS;
- i386's socketcall/ipc multiplexing is not rewritten (libseccomp adds socketcall(SYS_x)
  rules for "socket" etc.): there the multiplexer is matched by its own name only.
"""
from __future__ import annotations

import functools
import hashlib
import json
import struct

from gcs.containers import seccomp_syscalls as tables
from gcs.protocol import hresult as hr

AUDIT_ARCH_X86_64, AUDIT_ARCH_I386 = 0xC000003E, 0x40000003
X32_SYSCALL_BIT = 0x40000000
EPERM, ENOSYS, MAX_ERRNO = 1, 38, 4095

RET_KILL_PROCESS, RET_KILL_THREAD, RET_TRAP, RET_ERRNO = 0x80000000, 0x00000000, 0x00030000, 0x00050000
RET_TRACE, RET_LOG, RET_ALLOW = 0x7FF00000, 0x7FFC0000, 0x7FFF0000
ACTIONS = {"SCMP_ACT_KILL": RET_KILL_THREAD, "SCMP_ACT_KILL_THREAD": RET_KILL_THREAD,
           "SCMP_ACT_KILL_PROCESS": RET_KILL_PROCESS, "SCMP_ACT_TRAP": RET_TRAP, "SCMP_ACT_ERRNO": RET_ERRNO,
           "SCMP_ACT_TRACE": RET_TRACE, "SCMP_ACT_ALLOW": RET_ALLOW, "SCMP_ACT_LOG": RET_LOG}
NOT_IMPLEMENTED_ACTIONS = ("SCMP_ACT_NOTIFY",)
OPERATORS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
             "SCMP_CMP_MASKED_EQ")
# Every architecture runc knows; only the x86 family can occur on an x86_64 kernel, the
# others are accepted (a multi-arch profile) and left out: their sections are unreachable.
ARCHES = ("SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
          "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64",
          "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390",
          "SCMP_ARCH_S390X")
FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": 1, "SECCOMP_FILTER_FLAG_LOG": 2, "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4}
TABLES = {"SCMP_ARCH_X86_64": tables.X86_64, "SCMP_ARCH_X86": tables.X86, "SCMP_ARCH_X32": tables.X32}
U64 = (1 << 64) - 1


def _invalid(message: str) -> hr.GcsError:
    return hr.GcsError(hr.E_INVALIDARG, f"invalid OCI spec: linux.seccomp{message}")


def _action(name, errno_ret, where: str) -> int:
    if name in NOT_IMPLEMENTED_ACTIONS:
        raise hr.GcsError(hr.E_NOTIMPL, f"the native runtime does not support seccomp action {name} ({where})")
    if name is None or name == "":
        raise _invalid(f"{where}: missing (an action is required)")
    if name not in ACTIONS:
        raise _invalid(f"{where}: unknown action {str(name)[:60]!r}")
    value = ACTIONS[name]
    if value in (RET_ERRNO, RET_TRACE):  # libseccomp keeps the low 16 bits (runc's int16)
        data = (EPERM if errno_ret is None else errno_ret) & 0xFFFF
        if value == RET_ERRNO and data >= MAX_ERRNO:  # libseccomp refuses it: runc fails Create
            raise _invalid(f"{where}: errnoRet {errno_ret} (as 16 bits: {data}): not below {MAX_ERRNO}")
        value |= data
    return value


def _uint(value, bits: int, where: str) -> int:
    if type(value) is not int or not 0 <= value < (1 << bits):
        raise _invalid(f"{where}: expected an unsigned {bits}-bit integer, got {value!r:.60}")
    return value


def _kind(value, kind: type, where: str):
    if type(value) is not kind:
        raise _invalid(f"{where}: expected {'an array' if kind is list else 'a string'}, got {value!r:.60}")
    return value


def check(profile: dict) -> dict:
    """The profile in a canonical form (defaultAction, errnos, arches, flags, rules as
    (names, action value, [(index, op, value, valueTwo)])); E_INVALIDARG for what runc would
    refuse at create, E_NOTIMPL for the seccomp agent (notify, listenerPath)."""
    if type(profile) is not dict:
        raise _invalid(": expected an object")
    if profile.get("listenerPath"):
        raise hr.GcsError(hr.E_NOTIMPL, "the native runtime does not support seccomp listenerPath (SCMP_ACT_NOTIFY)")
    errno_ret = profile.get("defaultErrnoRet")
    if errno_ret is not None:
        _uint(errno_ret, 32, ".defaultErrnoRet")
    default = _action(profile.get("defaultAction"), errno_ret, ".defaultAction")
    arches = [_kind(a, str, ".architectures[]") for a in _kind(profile.get("architectures") or [], list,
                                                                ".architectures")]
    for arch in arches:
        if arch not in ARCHES:
            raise _invalid(f".architectures: unknown architecture {arch[:60]!r}")
    flags = 0
    for flag in _kind(profile.get("flags") or [], list, ".flags"):
        if flag not in FLAGS:
            raise _invalid(f".flags: unknown flag {str(flag)[:60]!r}")
        flags |= FLAGS[flag]
    rules = []
    for i, entry in enumerate(_kind(profile.get("syscalls") or [], list, ".syscalls")):
        where = f".syscalls[{i}]"
        if type(entry) is not dict:
            raise _invalid(f"{where}: expected an object")
        names = [_kind(n, str, f"{where}.names[]") for n in _kind(entry.get("names") or [], list, f"{where}.names")]
        if "" in names:
            raise _invalid(f"{where}.names: an empty syscall name")
        entry_errno = entry.get("errnoRet")
        if entry_errno is not None:
            _uint(entry_errno, 32, f"{where}.errnoRet")
        action = _action(entry.get("action"), entry_errno, f"{where}.action")
        args = []
        for j, arg in enumerate(_kind(entry.get("args") or [], list, f"{where}.args")):
            at = f"{where}.args[{j}]"
            if type(arg) is not dict:
                raise _invalid(f"{at}: expected an object")
            index = _uint(arg.get("index"), 32, f"{at}.index")
            if index > 5:
                raise _invalid(f"{at}.index: {index}: a syscall has arguments 0 to 5")
            if arg.get("op") not in OPERATORS:
                raise _invalid(f"{at}.op: unknown operator {str(arg.get('op'))[:60]!r}")
            args.append((index, arg["op"], _uint(arg.get("value", 0), 64, f"{at}.value"),
                         _uint(arg.get("valueTwo", 0), 64, f"{at}.valueTwo")))
        rules.append((names, action, args))
    return {"default": default, "default_errno": errno_ret, "default_name": profile.get("defaultAction"),
            "arches": arches, "flags": flags, "rules": rules}


# --- rules per architecture ------------------------------------------------------------------
def _conditions(args: list, arch: str) -> list[list[tuple]]:
    """One entry's conditions as rules (lists of (index, op, value, valueTwo)): several on
    one argument are separate rules, as runc adds them."""
    counts = [0] * 6
    for index, *_ in args:
        counts[index] += 1
    groups = [[a] for a in args] if max(counts, default=0) > 1 else [args]
    width = U64 if arch != "SCMP_ARCH_X86" else 0xFFFFFFFF
    out = []
    for group in groups:
        conds = []
        for index, op, value, two in group:
            if op == "SCMP_CMP_MASKED_EQ" and not value & width:
                continue  # libseccomp: a no-op comparison
            conds.append((index, op, value & width, two & width))
        out.append(sorted(conds))  # libseccomp's chain is in argument order
    return out


def syscall_rules(canon: dict, arch: str) -> dict[int, tuple]:
    """{syscall number: (unconditional action or None, [(conditions, action)])} for arch."""
    table = TABLES[arch]
    result: dict[int, list] = {}
    for names, action, args in canon["rules"]:
        if action == canon["default"]:
            continue  # runc: redundant, skipped
        for name in names:
            nr = table.get(name)
            if nr is None:
                continue
            entry = result.setdefault(nr, [None, []])
            if entry[0] is not None:
                continue  # an unconditional rule is there already: it covers this one
            for conds in _conditions(args, arch):
                if not conds:
                    entry[0], entry[1] = action, []
                    break
                entry[1].append((conds, action))
    return {nr: (e[0], e[1]) for nr, e in result.items()}


def _last_syscall(canon: dict, arch: str) -> int:
    """runc's -ENOSYS stub bound: the highest number the profile names (any rule) for arch."""
    table = TABLES[arch]
    return max((table[n] for names, _, _ in canon["rules"] for n in names if n in table), default=0)


# --- classic BPF -----------------------------------------------------------------------------
LD_W_ABS, JMP_JA, RET_K = 0x20, 0x05, 0x06
JEQ, JGT, JGE, JSET = 0x15, 0x25, 0x35, 0x45
OFF_NR, OFF_ARCH, OFF_ARGS = 0, 4, 16


class Asm:
    """Forward-only code with labels; conditional jumps farther than 255 instructions go
    through an unconditional one (assembled from the end, where distances are final)."""

    def __init__(self) -> None:
        self.items: list[tuple] = []
        self.count = 0

    def label(self) -> int:
        self.count += 1
        return self.count

    def place(self, label: int) -> None:
        self.items.append(("label", label))

    def ld(self, offset: int) -> None:
        self.items.append(("insn", LD_W_ABS, offset))

    def ret(self, value: int) -> None:
        self.items.append(("insn", RET_K, value))

    def ja(self, target: int) -> None:
        self.items.append(("ja", target))

    def jump(self, op: int, k: int, true: int | None, false: int | None) -> None:
        """None: the next instruction."""
        self.items.append(("jmp", op, k & 0xFFFFFFFF, true, false))

    def assemble(self) -> bytes:
        out: list[bytes] = []  # reversed
        where: dict[int, int] = {}  # label -> index from the end

        def distance(label: int) -> int:
            return len(out) - where[label] - 1

        for item in reversed(self.items):
            if item[0] == "label":
                where[item[1]] = len(out) - 1
            elif item[0] == "insn":
                out.append(struct.pack("<HBBI", item[1], 0, 0, item[2]))
            elif item[0] == "ja":
                out.append(struct.pack("<HBBI", JMP_JA, 0, 0, distance(item[1])))
            else:
                _, op, k, true, false = item
                where[0] = len(out) - 1  # label 0: the next instruction, before any trampoline
                offsets = []
                for target in (true or 0, false or 0):
                    if distance(target) > 255:
                        out.append(struct.pack("<HBBI", JMP_JA, 0, 0, distance(target)))
                        target = -len(out)
                        where[target] = len(out) - 1
                    offsets.append(target)
                jt, jf = distance(offsets[0]), distance(offsets[1])
                out.append(struct.pack("<HBBI", op, jt, jf, k))
        if len(out) > 4096:
            raise hr.GcsError(hr.E_INVALIDARG, f"seccomp profile: {len(out)} BPF instructions, the kernel takes 4096")
        return b"".join(reversed(out))


def _arg_offsets(index: int) -> tuple[int, int]:
    """(hi, lo) offsets of an argument in struct seccomp_data (little-endian)."""
    lo = OFF_ARGS + 8 * index
    return lo + 4, lo


def _emit_condition(asm: Asm, cond: tuple, wide: bool, fail: int) -> None:
    """Fall through when cond holds, jump to fail otherwise."""
    index, op, value, two = cond
    hi_off, lo_off = _arg_offsets(index)
    if op == "SCMP_CMP_MASKED_EQ":
        mask, value = value, two & value
    else:
        mask = U64
    vh, vl, mh, ml = value >> 32, value & 0xFFFFFFFF, mask >> 32, mask & 0xFFFFFFFF
    ok = asm.label()
    if op in ("SCMP_CMP_EQ", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"):
        miss, hit = (fail, ok) if op != "SCMP_CMP_NE" else (ok, fail)
        for offset, v, m, used in ((hi_off, vh, mh, wide), (lo_off, vl, ml, True)):
            if not used:
                continue
            asm.ld(offset)
            if m != 0xFFFFFFFF:
                asm.items.append(("insn", 0x54, m))  # BPF_ALU|BPF_AND|BPF_K
            asm.jump(JEQ, v, None, miss)
        asm.ja(hit)
    else:
        # a > v: hi > vh, or hi == vh and lo > vl (>= for GE); LT/LE are not GE/GT
        strict = op in ("SCMP_CMP_GT", "SCMP_CMP_LE")
        holds, fails = (ok, fail) if op in ("SCMP_CMP_GT", "SCMP_CMP_GE") else (fail, ok)
        if wide:
            asm.ld(hi_off)
            low = asm.label()
            asm.jump(JGT, vh, holds, None)
            asm.jump(JEQ, vh, low, fails)
            asm.place(low)
        asm.ld(lo_off)
        asm.jump(JGT if strict else JGE, vl, holds, fails)
    asm.place(ok)


def _emit_syscalls(asm: Asm, rules: dict[int, tuple], default: int, wide: bool) -> None:
    """With the syscall number in A: each syscall's rules, then the default action. Runs of
    consecutive numbers with the same unconditional action are one range, and the ranges are
    searched as a binary tree: the kernel runs the filter for every syscall number when it is
    loaded (its action cache), and then on every call, so its length is paid twice."""
    shared: dict[int, int] = {}  # one `ret` per unconditional action, for all its syscalls
    blocks = {}
    for nr in sorted(rules):
        unconditional = rules[nr][0]
        if unconditional is not None and unconditional not in shared:
            shared[unconditional] = asm.label()
        blocks[nr] = (shared[unconditional] if unconditional is not None else asm.label(), rules[nr])
    otherwise = asm.label()
    ranges: list[list[int]] = []  # [first, last, target]
    for nr in sorted(blocks):
        target = blocks[nr][0]
        if ranges and ranges[-1][1] == nr - 1 and ranges[-1][2] == target and blocks[nr][1][0] is not None:
            ranges[-1][1] = nr
        else:
            ranges.append([nr, nr, target])

    def search(part: list[list[int]], low: int, high: int) -> None:
        """`part` holds every range that meets [low, high], where A is known to be."""
        if len(part) == 1 and part[0][0] <= low and part[0][1] >= high:
            asm.ja(part[0][2])
            return
        if len(part) <= 3:
            for first, last, target in part:
                if first == last:
                    asm.jump(JEQ, first, target, None)
                    continue
                beyond = asm.label()
                if last < high:
                    asm.jump(JGT, last, beyond, None)
                if first > low:
                    asm.jump(JGE, first, target, beyond)
                else:
                    asm.ja(target)
                asm.place(beyond)
            asm.ja(otherwise)
            return
        upper = asm.label()
        middle = len(part) // 2
        pivot = part[middle][0]
        asm.jump(JGE, pivot, upper, None)
        search(part[:middle], low, pivot - 1)
        asm.place(upper)
        search(part[middle:], pivot, high)

    if ranges:
        search(ranges, 0, 0xFFFFFFFF)
    asm.place(otherwise)
    asm.ret(default)
    for action, target in shared.items():
        asm.place(target)
        asm.ret(action)
    for target, (unconditional, conditional) in blocks.values():
        if unconditional is not None:
            continue
        asm.place(target)
        for conds, action in conditional:
            nxt = asm.label()
            for cond in conds:
                _emit_condition(asm, cond, wide, nxt)
            asm.ret(action)
            asm.place(nxt)
        asm.ret(default)


def _enosys_stub(asm: Asm, canon: dict, into_filter: int) -> None:
    """runc's patchbpf stub, before the filter: ENOSYS for syscalls newer than the profile."""
    enosys = RET_ERRNO | ENOSYS
    if canon["default_name"] in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE"):
        return
    if canon["default_errno"] == enosys:  # sic: runc compares errnoRet with the action value
        return
    arches = set(canon["arches"])
    last = {a: _last_syscall(canon, a) for a in ("SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_X86")
            if a in arches}
    last = {a: n for a, n in last.items() if n}
    if not last:
        return
    ret_enosys = asm.label()
    asm.ld(OFF_ARCH)
    sections = []
    if "SCMP_ARCH_X86_64" in last or "SCMP_ARCH_X32" in last:
        sections.append((AUDIT_ARCH_X86_64, asm.label()))
    if "SCMP_ARCH_X86" in last:
        sections.append((AUDIT_ARCH_I386, asm.label()))
    for audit, label in sections:
        asm.jump(JEQ, audit, label, None)
    asm.ja(into_filter)
    for audit, label in sections:
        asm.place(label)
        asm.ld(OFF_NR)
        if audit == AUDIT_ARCH_I386:
            asm.jump(JGT, last["SCMP_ARCH_X86"], ret_enosys, into_filter)
            continue
        x64, x32 = last.get("SCMP_ARCH_X86_64"), last.get("SCMP_ARCH_X32")
        x32_part = asm.label()
        asm.jump(JSET, X32_SYSCALL_BIT, x32_part, None)
        if x64:
            asm.jump(JGT, x64, ret_enosys, into_filter)
        else:
            asm.ja(into_filter)
        asm.place(x32_part)
        if x32:
            asm.jump(JGT, x32, ret_enosys, into_filter)
        else:
            asm.ja(into_filter)
    asm.place(ret_enosys)
    asm.ret(enosys)


def compile_canonical(canon: dict) -> bytes:
    asm = Asm()
    start = asm.label()
    _enosys_stub(asm, canon, start)
    asm.place(start)
    default, arches = canon["default"], set(canon["arches"])
    has_x32 = "SCMP_ARCH_X32" in arches
    x86_64, i386 = asm.label(), asm.label()
    asm.ld(OFF_ARCH)
    asm.jump(JEQ, AUDIT_ARCH_X86_64, x86_64, None)  # the native arch is always in the filter
    if "SCMP_ARCH_X86" in arches:
        asm.jump(JEQ, AUDIT_ARCH_I386, i386, None)
    asm.ret(RET_KILL_THREAD)  # libseccomp's default bad-arch action
    bad_arch = asm.label()  # the same, for x32 calls: at the end (BPF only jumps forward)
    asm.place(x86_64)
    asm.ld(OFF_NR)
    rules = syscall_rules(canon, "SCMP_ARCH_X86_64")
    if has_x32:
        rules.update(syscall_rules(canon, "SCMP_ARCH_X32"))
    else:
        native = asm.label()
        asm.jump(JGE, X32_SYSCALL_BIT, None, native)
        asm.jump(JEQ, 0xFFFFFFFF, native, bad_arch)  # -1: a tracer skipping the syscall
        asm.place(native)
    _emit_syscalls(asm, rules, default, wide=True)
    if "SCMP_ARCH_X86" in arches:
        asm.place(i386)
        asm.ld(OFF_NR)
        _emit_syscalls(asm, syscall_rules(canon, "SCMP_ARCH_X86"), default, wide=False)
    asm.place(bad_arch)
    asm.ret(RET_KILL_THREAD)
    return asm.assemble()


@functools.lru_cache(maxsize=32)
def _compiled(key: str) -> dict:
    canon = check(json.loads(key))
    return {"prog": compile_canonical(canon), "flags": canon["flags"]}


def profile_key(profile: dict) -> str:
    return json.dumps(profile, sort_keys=True, separators=(",", ":"))


def plan_filter(profile) -> dict | None:
    """What a container process installs for its spec's linux.seccomp: {"prog": the BPF
    program (struct sock_filter array), "flags": seccomp(2) flags}, or None for no filter
    (absent, or no defaultAction and no syscalls: runc's "seccomp disabled")."""
    if not profile or (not profile.get("defaultAction") and not profile.get("syscalls")):
        return None
    return _compiled(profile_key(profile))


def digest(profile: dict) -> str:
    return hashlib.sha256(profile_key(profile).encode()).hexdigest()[:16]
