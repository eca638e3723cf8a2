"""seccomp in the native runtime: the compiler (gcs.containers.seccomp) run on a BPF
interpreter, bad profiles, and differential tests against runc (the oracle) with Docker's
default profile, containerd's RuntimeDefault and hand-made ones covering every action and
comparison: what each syscall returns inside, and /proc/self/status, must be identical."""
import copy
import json
import os
import platform
import shutil
import struct
import subprocess

import pytest

from gcs.containers import seccomp
from gcs.containers import seccomp_syscalls as tables
from gcs.host.images import make_layer_image
from gcs.protocol import hresult as hr

from conftest import requires_root
from containers_env import busybox_rootfs, default_spec, local_host

PROFILES = os.path.join(os.path.dirname(__file__), "seccomp_profiles")
# moby/profiles' seccomp/default.json (Docker's default) at moby 35797366d7cd, and
# containerd's contrib/seccomp DefaultProfile (containerd 301026e58c61) as built for amd64
# and a container without CAP_SYS_ADMIN: both data, as Docker and containerd hand them to runc.
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
               "CAP_KILL", "CAP_AUDIT_WRITE"]


def _kernel() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def docker_profile(caps=DOCKER_CAPS) -> dict:
    """Docker's default.json resolved as dockerd does for amd64 (moby/profiles seccomp
    setupSeccomp): its arch map, includes/excludes by arch, capability and kernel."""
    with open(os.path.join(PROFILES, "docker-default.json")) as f:
        raw = json.load(f)
    arches = next([a["architecture"]] + a["subArchitectures"] for a in raw["archMap"]
                  if a["architecture"] == "SCMP_ARCH_X86_64")
    kernel = _kernel()

    def version(text):
        return tuple(int(p) for p in text.split(".")[:2])

    out = []
    for call in raw["syscalls"]:
        inc, exc = call.get("includes") or {}, call.get("excludes") or {}
        if "amd64" in (exc.get("arches") or []) or any(c in caps for c in exc.get("caps") or []):
            continue
        if exc.get("minKernel") and kernel >= version(exc["minKernel"]):
            continue
        if inc.get("arches") and "amd64" not in inc["arches"]:
            continue
        if any(c not in caps for c in inc.get("caps") or []):
            continue
        if inc.get("minKernel") and kernel < version(inc["minKernel"]):
            continue
        entry = {"names": call["names"], "action": call["action"], "args": call.get("args") or []}
        if call.get("errnoRet") is not None:
            entry["errnoRet"] = call["errnoRet"]
        out.append(entry)
    return {"defaultAction": raw["defaultAction"], "defaultErrnoRet": raw.get("defaultErrnoRet"),
            "architectures": arches, "syscalls": out}


def containerd_profile() -> dict:
    with open(os.path.join(PROFILES, "containerd-runtime-default.json")) as f:
        return json.load(f)


NR = tables.X86_64
SAFE = ["getpid", "getppid", "getuid", "geteuid", "getgid", "getegid", "gettid", "getpgrp"]  # no args read


def rule(names, action, args=(), errno_ret=None):
    entry = {"names": list(names), "action": action, "args": [dict(zip(("index", "op", "value", "valueTwo"), a))
                                                              for a in args]}
    if errno_ret is not None:
        entry["errnoRet"] = errno_ret
    return entry


HI = 0x1_0000_0005  # a value whose high half matters


def handmade_profiles() -> dict:
    """Every action and comparison op, on syscalls that read no arguments (so any argument
    values are harmless), with a lenient default so that both runtimes can start."""
    cmp_rules = [
        rule(["getpid"], "SCMP_ACT_ERRNO", [(0, "SCMP_CMP_EQ", HI)], 101),
        rule(["getppid"], "SCMP_ACT_ERRNO", [(0, "SCMP_CMP_NE", 7)], 102),
        rule(["getuid"], "SCMP_ACT_ERRNO", [(1, "SCMP_CMP_LT", HI)], 103),
        rule(["geteuid"], "SCMP_ACT_ERRNO", [(1, "SCMP_CMP_LE", HI)], 104),
        rule(["getgid"], "SCMP_ACT_ERRNO", [(2, "SCMP_CMP_GE", HI)], 105),
        rule(["getegid"], "SCMP_ACT_ERRNO", [(2, "SCMP_CMP_GT", HI)], 106),
        rule(["gettid"], "SCMP_ACT_ERRNO", [(3, "SCMP_CMP_MASKED_EQ", 0xF0000000F0, 0x1000000010)], 107),
        # two conditions on different arguments: both must hold; on one argument: either
        rule(["getpgrp"], "SCMP_ACT_ERRNO", [(0, "SCMP_CMP_GT", 10), (5, "SCMP_CMP_LT", 20)], 108),
        rule(["sched_yield"], "SCMP_ACT_ERRNO", [(0, "SCMP_CMP_EQ", 1), (0, "SCMP_CMP_EQ", 1 << 40)], 109),
        rule(["getpgrp"], "SCMP_ACT_TRAP", [(4, "SCMP_CMP_EQ", 99)]),
    ]
    actions = [
        rule(["getpid"], "SCMP_ACT_KILL", [(0, "SCMP_CMP_EQ", 1)]),
        rule(["getpid"], "SCMP_ACT_KILL_PROCESS", [(0, "SCMP_CMP_EQ", 2)]),
        rule(["getpid"], "SCMP_ACT_KILL_THREAD", [(0, "SCMP_CMP_EQ", 3)]),
        rule(["getpid"], "SCMP_ACT_TRAP", [(0, "SCMP_CMP_EQ", 4)]),
        rule(["getpid"], "SCMP_ACT_TRACE", [(0, "SCMP_CMP_EQ", 5)]),
        rule(["getpid"], "SCMP_ACT_LOG", [(0, "SCMP_CMP_EQ", 6)]),
        rule(["getpid"], "SCMP_ACT_ERRNO", [(0, "SCMP_CMP_EQ", 7)]),
        rule(["getpid"], "SCMP_ACT_ERRNO", [(0, "SCMP_CMP_EQ", 8)], 4094),
        rule(["getpid"], "SCMP_ACT_ERRNO", [(0, "SCMP_CMP_EQ", 9)], 65536 + 21),  # the low 16 bits
        rule(["getppid"], "SCMP_ACT_ERRNO", [], 33),
        rule(["getppid"], "SCMP_ACT_KILL", []),  # the first unconditional rule wins
        rule(["getuid"], "SCMP_ACT_TRACE", [], 55),
        rule(["geteuid"], "SCMP_ACT_ALLOW", []),  # the default: dropped
        rule(["getgid", "no_such_syscall", "socketcall"], "SCMP_ACT_ERRNO", [], 44),
        rule(["getegid"], "SCMP_ACT_ERRNO", [(1, "SCMP_CMP_MASKED_EQ", 0, 5)], 45),  # a zero mask: no condition
        rule(["gettid"], "SCMP_ACT_ERRNO", [(0, "SCMP_CMP_EQ", 3)], 46),
        rule(["gettid"], "SCMP_ACT_ERRNO", [], 47),  # unconditional after conditional: replaces it
    ]
    return {
        "compare": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": cmp_rules},
        "compare-x86": {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                        "syscalls": cmp_rules},
        "actions": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": actions},
        "actions-x32": {"defaultAction": "SCMP_ACT_ALLOW",
                        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], "syscalls": actions},
        # an errno default: the -ENOSYS stub for syscalls above the profile's highest
        "errno-default": {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 88,
                          "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                          "syscalls": docker_profile()["syscalls"] + [rule(["getppid"], "SCMP_ACT_ERRNO", [], 88)]},
        "errno-no-arches": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": docker_profile()["syscalls"]},
        "log-default": {"defaultAction": "SCMP_ACT_LOG", "architectures": ["SCMP_ARCH_X86_64"],
                        "syscalls": [rule(["getpid"], "SCMP_ACT_ERRNO", [], 12)]},
    }


# --- a classic BPF interpreter, for the compiler's unit tests -----------------------------------
def run_bpf(prog: bytes, nr: int, arch: int = seccomp.AUDIT_ARCH_X86_64, args=(0,) * 6) -> int:
    data = struct.pack("<IIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:
            acc &= k
        elif code == 0x06:
            return k
        elif code == 0x05:
            pc += k
        else:
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf


def compiled(profile):
    return seccomp.plan_filter(profile)["prog"]


def test_docker_profile_compiles_with_docker_semantics():
    profile = docker_profile()
    prog = compiled(profile)
    assert len(prog) // 8 < 4096
    allow, eperm = seccomp.RET_ALLOW, seccomp.RET_ERRNO | 1
    assert run_bpf(prog, NR["read"]) == allow and run_bpf(prog, NR["mount"]) == eperm
    assert run_bpf(prog, NR["clone3"]) == seccomp.RET_ERRNO | 38
    assert run_bpf(prog, NR["clone"], args=[0x10000000]) == eperm  # CLONE_NEWUSER
    assert run_bpf(prog, NR["clone"], args=[0x1200011]) == allow
    assert run_bpf(prog, NR["personality"], args=[0xFFFFFFFF]) == allow
    assert run_bpf(prog, NR["personality"], args=[0x1_FFFFFFFF]) == eperm
    assert run_bpf(prog, NR["socket"], args=[38]) == eperm and run_bpf(prog, NR["socket"], args=[2]) == allow
    assert run_bpf(prog, NR["socket"], args=[41]) == allow and run_bpf(prog, NR["socket"], args=[39]) == allow
    top = max(NR[n] for r in profile["syscalls"] for n in r["names"] if n in NR)
    assert run_bpf(prog, top + 1) == seccomp.RET_ERRNO | 38  # runc's stub
    assert run_bpf(prog, tables.X32["read"]) == allow  # X32 is in Docker's arch list
    assert run_bpf(prog, tables.X86["socketcall"], arch=seccomp.AUDIT_ARCH_I386) == allow
    assert run_bpf(prog, 0, arch=0xC00000B7) == seccomp.RET_KILL_THREAD  # aarch64: not in the filter


def test_every_number_answers_as_its_rule_with_ranges_merged():
    """Runs of consecutive numbers with one action become ranges: each number of x86_64, x32
    and i386 (and the gaps between rules, and beyond them) still gets its own rule's action."""
    allow, eperm = seccomp.RET_ALLOW, seccomp.RET_ERRNO | 1
    names = sorted(NR, key=NR.get)
    allowed = set(names[5:60] + names[61:62] + names[64:140:3] + names[150:300])  # runs, singles, gaps
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
               "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
               "syscalls": [{"names": sorted(allowed), "action": "SCMP_ACT_ALLOW"},
                            {"names": [names[62]], "action": "SCMP_ACT_ERRNO", "errnoRet": 9}]}
    prog = compiled(profile)
    canon = seccomp.check(profile)
    top = {arch: max(rules) for arch in ("SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_X86")
           if (rules := seccomp.syscall_rules(canon, arch))}
    for arch, audit in (("SCMP_ARCH_X86_64", seccomp.AUDIT_ARCH_X86_64), ("SCMP_ARCH_X32", seccomp.AUDIT_ARCH_X86_64),
                        ("SCMP_ARCH_X86", seccomp.AUDIT_ARCH_I386)):
        rules = seccomp.syscall_rules(canon, arch)
        base = seccomp.X32_SYSCALL_BIT if arch == "SCMP_ARCH_X32" else 0
        for nr in range(base, base + 600):
            expected = rules[nr][0] if nr in rules else eperm if nr <= top[arch] else seccomp.RET_ERRNO | 38
            assert run_bpf(prog, nr, arch=audit) == expected, (arch, nr)
    assert run_bpf(prog, NR[names[62]]) == seccomp.RET_ERRNO | 9 and run_bpf(prog, NR[names[10]]) == allow
    # the profiles users run stay short (2,475 and 2,465 instructions with a test per number)
    assert len(compiled(docker_profile())) // 8 < 700
    assert len(compiled(containerd_profile())) // 8 < 700


def test_compare_ops_on_64_bit_halves():
    prog = compiled(handmade_profiles()["compare"])
    err = seccomp.RET_ERRNO

    def res(name, **args):
        a = [0] * 6
        for k, v in args.items():
            a[int(k[1:])] = v
        return run_bpf(prog, NR[name], args=a)

    assert res("getpid", a0=HI) == err | 101 and res("getpid", a0=5) == seccomp.RET_ALLOW
    assert res("getppid", a0=7) == seccomp.RET_ALLOW and res("getppid", a0=7 | 1 << 32) == err | 102
    for value, lt, le, ge, gt in ((HI - 1, 1, 1, 0, 0), (HI, 0, 1, 1, 0), (HI + 1, 0, 0, 1, 1),
                                  (5, 1, 1, 0, 0), (1 << 33, 0, 0, 1, 1), (0x2_0000_0000 - 1, 0, 0, 1, 1)):
        assert (res("getuid", a1=value) == err | 103) == bool(lt), hex(value)
        assert (res("geteuid", a1=value) == err | 104) == bool(le), hex(value)
        assert (res("getgid", a2=value) == err | 105) == bool(ge), hex(value)
        assert (res("getegid", a2=value) == err | 106) == bool(gt), hex(value)
    assert res("gettid", a3=0x1F000000_1F) == err | 107 and res("gettid", a3=0x10) == seccomp.RET_ALLOW
    assert res("getpgrp", a0=11, a5=19) == err | 108 and res("getpgrp", a0=11, a5=20) == seccomp.RET_ALLOW
    assert res("getpgrp", a4=99) == seccomp.RET_TRAP
    assert res("sched_yield", a0=1) == err | 109 and res("sched_yield", a0=1 << 40) == err | 109
    assert res("sched_yield", a0=2) == seccomp.RET_ALLOW


def test_x32_and_bad_arch():
    actions = handmade_profiles()["actions"]
    prog = compiled(actions)  # no architectures: x86_64 only
    assert run_bpf(prog, tables.X32["getpid"]) == seccomp.RET_KILL_THREAD
    assert run_bpf(prog, 0xFFFFFFFF) == seccomp.RET_ALLOW  # a tracer's -1 is let through to the rules
    assert run_bpf(prog, 20, arch=seccomp.AUDIT_ARCH_I386) == seccomp.RET_KILL_THREAD
    prog = compiled(handmade_profiles()["actions-x32"])
    assert run_bpf(prog, tables.X32["getppid"]) == seccomp.RET_ERRNO | 33
    assert run_bpf(prog, tables.X86["getppid"], arch=seccomp.AUDIT_ARCH_I386) == seccomp.RET_ERRNO | 33
    assert run_bpf(prog, tables.X86["socketcall"], arch=seccomp.AUDIT_ARCH_I386) == seccomp.RET_ERRNO | 44


def test_long_jumps_are_relayed():
    """Hundreds of rules on one syscall: conditional jumps beyond 255 go through ja."""
    rules = [rule(["getpid"], "SCMP_ACT_ERRNO", [(0, "SCMP_CMP_EQ", i)], i + 1) for i in range(300)]
    rules += [rule(["read"], "SCMP_ACT_ERRNO", [], 999)]
    prog = compiled({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
    for i in (0, 150, 299):
        assert run_bpf(prog, NR["getpid"], args=[i]) == seccomp.RET_ERRNO | (i + 1)
    assert run_bpf(prog, NR["getpid"], args=[300]) == seccomp.RET_ALLOW
    assert run_bpf(prog, NR["read"]) == seccomp.RET_ERRNO | 999


def test_compile_is_cached_per_profile():
    a, b = docker_profile(), docker_profile()
    assert seccomp.plan_filter(a) is seccomp.plan_filter(b)
    assert seccomp.plan_filter({}) is None and seccomp.plan_filter({"architectures": ["SCMP_ARCH_X86"]}) is None
    assert seccomp.plan_filter({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG",
                                "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"]})["flags"] == 7


BAD = [
    ({"defaultAction": "SCMP_ACT_NOPE"}, hr.E_INVALIDARG, "unknown action 'SCMP_ACT_NOPE'"),
    ({"syscalls": [rule(["read"], "SCMP_ACT_ALLOW")]}, hr.E_INVALIDARG, ".defaultAction: missing"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule(["read"], "SCMP_ACT_BOGUS")]}, hr.E_INVALIDARG,
     "syscalls[0].action: unknown action"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule(["read"], "SCMP_ACT_ERRNO", [(0, "SCMP_CMP_ABOUT", 1)])]},
     hr.E_INVALIDARG, "syscalls[0].args[0].op: unknown operator 'SCMP_CMP_ABOUT'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule(["read"], "SCMP_ACT_ERRNO", [(6, "SCMP_CMP_EQ", 1)])]},
     hr.E_INVALIDARG, "args[0].index: 6"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}, hr.E_INVALIDARG,
     "unknown architecture 'SCMP_ARCH_Z80'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW"]}, hr.E_INVALIDARG, "unknown flag"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule([""], "SCMP_ACT_ERRNO")]}, hr.E_INVALIDARG,
     "an empty syscall name"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule(["read"], "SCMP_ACT_NOTIFY")]}, hr.E_NOTIMPL,
     "SCMP_ACT_NOTIFY"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}, hr.E_NOTIMPL, "listenerPath"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, hr.E_NOTIMPL, "SCMP_ACT_NOTIFY"),
    # libseccomp takes errno values below 4095 only (of their low 16 bits): runc fails Create
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 4095}, hr.E_INVALIDARG, "errnoRet 4095"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule(["read"], "SCMP_ACT_ERRNO", [], 70000)]},
     hr.E_INVALIDARG, "errnoRet 70000 (as 16 bits: 4464)"),
]


@pytest.mark.parametrize("profile,code,words", BAD)
def test_bad_profiles_are_refused(profile, code, words):
    with pytest.raises(hr.GcsError) as info:
        seccomp.plan_filter(profile)
    assert info.value.hresult == code and words in str(info.value), str(info.value)


def test_wrong_types_are_invalid_json():
    from gcs.containers import ocispec
    for bad in ({"defaultAction": 3}, {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "read"}]},
                {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                                  "args": [{"index": -1, "op": "SCMP_CMP_EQ"}]}]},
                {"defaultAction": "SCMP_ACT_ALLOW", "architectures": "SCMP_ARCH_X86"}):
        spec = default_spec(["true"], "/nonexistent")
        spec["linux"]["seccomp"] = bad
        with pytest.raises(hr.GcsError) as info:
            ocispec.check_spec(spec)
        assert info.value.hresult == hr.INVALID_JSON and "linux.seccomp" in str(info.value)


# --- differential: native vs runc -------------------------------------------------------------
PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile long *slot;

static long call(int arch, unsigned long nr, unsigned long *a) {
    long ret;
    if (arch == 32) {  /* the i386 ABI from a 64-bit process: seccomp sees AUDIT_ARCH_I386 */
        unsigned int r = nr;  /* ebp (the sixth) zeroed around the call: built with -mno-red-zone */
        __asm__ volatile("push %%rbp\n\txor %%ebp, %%ebp\n\tint $0x80\n\tpop %%rbp"
                         : "+a"(r) : "b"((unsigned)a[0]), "c"((unsigned)a[1]), "d"((unsigned)a[2]),
                         "S"((unsigned)a[3]), "D"((unsigned)a[4]) : "memory");
        return (long)(int)r;
    }
    register long r10 __asm__("r10") = a[3];
    register long r8 __asm__("r8") = a[4];
    register long r9 __asm__("r9") = a[5];
    if (arch == 'x') nr |= 0x40000000UL;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a[0]), "S"(a[1]), "d"(a[2]), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

static void on_sigsys(int sig) { (void)sig; slot[0] = 2; syscall(SYS_exit, 0); }

/* One call in a child of its own: a kill or a trap ends only the child. */
static void run(const char *label, int arch, unsigned long nr, unsigned long *a) {
    slot[0] = 0;
    pid_t pid = fork();
    if (pid == 0) {
        struct itimerval t = {{0, 0}, {0, 100000}};  /* a blocking call ends with SIGALRM */
        signal(SIGSYS, on_sigsys);
        setitimer(ITIMER_REAL, &t, NULL);
        long r = call(arch, nr, a);
        slot[1] = r;
        slot[0] = 1;
        syscall(SYS_exit, 0);
        for (;;) pause();
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (slot[0] == 1) {
        long r = slot[1];
        if (r < 0 && r >= -4095) printf("%s errno %ld\n", label, -r);
        else printf("%s ok\n", label);
    } else if (slot[0] == 2) printf("%s trap\n", label);
    else if (WIFSIGNALED(status)) printf("%s signal %d\n", label, WTERMSIG(status));
    else printf("%s exit %d\n", label, WEXITSTATUS(status));
}

/* Arguments: scan:<arch>:<first>:<last>[:<skip,...>] or <arch>:<nr>[:<arg>...], arch 64, 32 or x. */
int main(int argc, char **argv) {
    slot = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        char *p = argv[i];
        int scan = !strncmp(p, "scan:", 5);
        if (scan) p += 5;
        int arch = *p == 'x' ? 'x' : atoi(p);
        const char *name = arch == 'x' ? "x32" : arch == 32 ? "i386" : "x86_64";
        p = strchr(p, ':') + 1;
        if (scan) {
            unsigned long first = strtoul(p, &p, 0), last = strtoul(p + 1, &p, 0);
            char list[4096], key[32], label[64];
            snprintf(list, sizeof list, ",%s,", *p ? p + 1 : "");
            for (unsigned long nr = first; nr <= last; nr++) {
                unsigned long a[6] = {0};
                snprintf(key, sizeof key, ",%lu,", nr);
                if (strstr(list, key)) continue;
                snprintf(label, sizeof label, "%s/%lu", name, nr);
                run(label, arch, nr, a);
            }
            continue;
        }
        unsigned long nr = strtoul(p, &p, 0), a[6] = {0};
        for (int k = 0; k < 6 && *p == ':'; k++) a[k] = strtoull(p + 1, &p, 0);
        run(argv[i], arch, nr, a);
    }
    return 0;
}
"""

# Calls a scan must not make with zero arguments: new processes that would run the probe's
# own code, a tracer, a sigreturn. (Blocking ones end on the child's timer.)
# sync and syncfs take as long as the disk does: not within the child's timer.
SKIP_64 = [NR[n] for n in ("fork", "vfork", "clone", "ptrace", "rt_sigreturn", "sync", "syncfs")]
SKIP_32 = [tables.X86[n] for n in ("fork", "vfork", "clone", "ptrace", "sigreturn", "rt_sigreturn", "sync", "syncfs")]
TOP = 470  # past everything this kernel has


def probe_args() -> list[str]:
    args = [f"scan:64:0:{TOP}:{','.join(map(str, SKIP_64))}", f"scan:32:0:{TOP}:{','.join(map(str, SKIP_32))}",
            f"scan:x:0:{TOP}:{','.join(map(str, SKIP_64))}", "scan:x:512:547", "64:1000", "64:4294967295"]
    values = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 19, 20, 99, 7 | 1 << 32, HI - 1, HI, HI + 1, 1 << 33, 1 << 40,
              0x1F000000_1F, 0x10_00000010, 0xFFFFFFFF, 0xFFFFFFFF_FFFFFFFF]
    for name in SAFE + ["sched_yield"]:
        for index in range(6):
            for v in values:
                a = [0] * 6
                a[index] = v
                args.append(f"64:{NR[name]}:" + ":".join(map(str, a)))
        args.append(f"32:{tables.X86[name]}:{HI}:5:{HI}:{0x1F000000_1F}:99")
        args.append(f"x:{NR[name]}")
    args += [f"64:{NR['getpgrp']}:11:0:0:0:0:19", f"64:{NR['getpgrp']}:11:0:0:0:99:20"]
    for family in (0, 1, 2, 10, 16, 38, 39, 41, 44):  # never 40: no AF_VSOCK socket on this machine
        args.append(f"64:{NR['socket']}:{family}:1:0")
    for flags in (0x11, 0x10000000, 0x20000000, 0x1_00000000):
        # CLONE_SIGHAND without CLONE_VM: EINVAL if allowed, never a new process
        args.append(f"64:{NR['clone']}:{flags | 0x800}")
    return args


STATUS = "grep -E '^(Seccomp|Seccomp_filters|NoNewPrivs):' /proc/self/status"


@pytest.fixture(scope="module")
def probe_image(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed for the syscall probe")
    base = tmp_path_factory.mktemp("seccomp")
    busybox_rootfs(str(base / "rootfs"))
    (base / "probe.c").write_text(PROBE_C)
    subprocess.run(["gcc", "-O2", "-static", "-mno-red-zone", "-o", str(base / "rootfs" / "probe"), str(base / "probe.c")], check=True)
    image = str(base / "probe.img")
    make_layer_image(str(base / "rootfs"), image)
    return image


def scenarios() -> dict:
    out = {"docker": (docker_profile(), True), "docker-nnp-false": (docker_profile(), False),
           "containerd": (containerd_profile(), True)}
    for name, profile in handmade_profiles().items():
        out[name] = (profile, True)
    return out


def run_probe(host, cid, profile, nnp, args) -> tuple:
    root = host.layers(cid, ["/run/layers/p0"])
    spec = default_spec(args, root, noNewPrivileges=nnp)
    spec["linux"]["seccomp"] = copy.deepcopy(profile)
    host.create(cid, spec)
    out, err, code = host.start(cid).communicate()
    host.notification()
    host.remove(cid)
    return code, out.decode(), err.decode()


@pytest.fixture(scope="module")
def observed(tmp_path_factory, probe_image):
    if not requires_root.args[0] is False and os.geteuid() != 0:
        pytest.skip("local mode needs root")
    results = {}
    args = probe_args()
    for runtime in ("native", "runc"):
        with local_host(tmp_path_factory.mktemp(runtime), runtime, [probe_image]) as host:
            results[runtime] = {}
            for name, (profile, nnp) in scenarios().items():
                cid = f"{name}-{runtime}"
                results[runtime][name] = run_probe(host, cid, profile, nnp, ["/probe"] + args)
                results[runtime][name + ":status"] = run_probe(host, cid + "-st", profile, nnp,
                                                               ["sh", "-c", STATUS])
    return results


@requires_root
@pytest.mark.parametrize("scenario", list(scenarios()) + [s + ":status" for s in scenarios()])
def test_syscalls_answer_as_under_runc(observed, scenario):
    native, runc = observed["native"][scenario], observed["runc"][scenario]
    assert runc[0] == 0, runc[2]
    assert native[0] == 0, native[2]
    import difflib
    diff = list(difflib.unified_diff(runc[1].splitlines(), native[1].splitlines(), "runc", "native", lineterm="", n=0))
    assert not diff, "\n".join(diff[:80])


@requires_root
def test_observations_are_meaningful(observed):
    runc = {name: out for name, (_, out, _) in observed["runc"].items()}
    docker = runc["docker"]
    assert f"x86_64/{NR['getpid']} ok" in docker and f"x86_64/{NR['mount']} errno 1" in docker
    assert f"x86_64/{NR['clone3']} errno 38" in docker and "64:1000 errno 38" in docker
    assert f"64:{NR['clone']}:{0x10000000 | 0x800} errno 1" in docker  # a new user namespace: refused
    assert f"64:{NR['clone']}:{0x11 | 0x800} errno 22" in docker
    assert f"64:{NR['socket']}:38:1:0 errno 1" in docker
    assert "Seccomp:\t2" in runc["docker:status"] and "Seccomp_filters:\t1" in runc["docker:status"]
    actions = runc["actions"]
    call = f"64:{NR['getpid']}:"
    assert f"{call}1:0:0:0:0:0 signal 31" in actions and f"{call}2:0:0:0:0:0 signal 31" in actions
    assert f"{call}4:0:0:0:0:0 trap" in actions and f"{call}5:0:0:0:0:0 errno 38" in actions
    assert f"{call}8:0:0:0:0:0 errno 4094" in actions and f"{call}9:0:0:0:0:0 errno 21" in actions
    assert f"x32/{NR['getpid']} signal 31" in actions and f"i386/{tables.X86['getpid']} signal 31" in actions
    assert f"x86_64/{NR['getppid']} errno 33" in actions
    assert f"64:{NR['getpid']}:{HI}:0:0:0:0:0 errno 101" in runc["compare"]


@requires_root
def test_flags_natively(tmp_path, probe_image):
    """runc 1.1 refuses linux.seccomp.flags; the native runtime passes them to seccomp(2)."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                                                              "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
               "syscalls": [rule(["getppid"], "SCMP_ACT_ERRNO", [], 61)]}
    with local_host(tmp_path, "native", [probe_image]) as host:
        code, out, err = run_probe(host, "flags", profile, True, ["sh", "-c", f"{STATUS}; /probe 64:{NR['getppid']}"])
    assert code == 0, err
    assert "Seccomp:\t2" in out and f"64:{NR['getppid']} errno 61" in out


def start_blocked(host, cid, action):
    root = host.layers(cid, ["/run/layers/p0"])
    spec = default_spec(["/probe"], root)
    spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule(["execve"], action)]}
    host.create(cid, spec)
    try:
        out, err, code = host.start(cid).communicate()
        host.notification()
        return code, err.decode()
    finally:
        host.remove(cid)


@requires_root
@pytest.mark.parametrize("runtime", ["native", "runc"])
def test_profile_blocking_execve(tmp_path, probe_image, runtime):
    """A profile refusing the runtime's own final execve: Create succeeds (the filter goes
    in at start, just before exec, with no_new_privs) and so does Start; the process ends
    with status 1 and runc's words on its stderr."""
    with local_host(tmp_path, runtime, [probe_image]) as host:
        assert start_blocked(host, "noexec", "SCMP_ACT_ERRNO") == (1, "exec /probe: operation not permitted\n")


@requires_root
def test_profile_killing_execve(tmp_path, probe_image):
    """KILL on execve: the native container process dies of SIGSYS. (runc 1.1 is no oracle:
    KILL_THREAD takes only the thread of its Go init that calls execve, and the container
    hangs half-started; `runc run` never returns.)"""
    with local_host(tmp_path, "native", [probe_image]) as host:
        assert start_blocked(host, "killexec", "SCMP_ACT_KILL") == (128 + 31, "")


EXEC_VIEWS = {}


@requires_root
@pytest.mark.parametrize("runtime", ["native", "runc"])
def test_execs_get_the_containers_filter(tmp_path, probe_image, runtime):
    """An exec into a container with a profile runs under the same filter, with
    no_new_privs or without it (then loaded while the process still has CAP_SYS_ADMIN)."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule(["getppid"], "SCMP_ACT_ERRNO", [], 61)]}
    with local_host(tmp_path, runtime, [probe_image]) as host:
        root = host.layers("ex", ["/run/layers/p0"])
        spec = default_spec(["sleep", "60"], root)
        spec["linux"]["seccomp"] = profile
        host.create("ex", spec)
        init = host.start("ex", stdout=False, stderr=False)
        try:
            for nnp in (True, False):
                out, err, code = host.exec("ex", ["sh", "-c", f"{STATUS}; /probe 64:{NR['getppid']}"],
                                           noNewPrivileges=nnp).communicate()
                EXEC_VIEWS.setdefault(runtime, []).append((code, out.decode(), err.decode()))
        finally:
            init.kill()
            init.wait()
            host.notification()
            host.remove("ex")
    for code, out, err in EXEC_VIEWS[runtime]:
        assert code == 0 and "Seccomp:\t2" in out and f"64:{NR['getppid']} errno 61" in out, (out, err)


def test_execs_see_the_same_filter_under_both_runtimes():
    if set(EXEC_VIEWS) != {"native", "runc"}:
        pytest.skip("needs both runtimes' views (test_execs_get_the_containers_filter)")
    assert EXEC_VIEWS["native"] == EXEC_VIEWS["runc"]
