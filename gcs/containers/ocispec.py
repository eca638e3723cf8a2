"""Reading an OCI runtime spec: what the native runtime supports, mount options, capability
and rlimit names, and user/group resolution in the container's /etc files."""
from __future__ import annotations

import os

from gcs.protocol import hresult as hr

_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_REST = _ID_FIRST | frozenset("_.-")


def _valid_id(cid: str) -> bool:
    """[A-Za-z0-9][A-Za-z0-9_.-]{0,127}, without `re` (the spawner imports this module)."""
    return 0 < len(cid) <= 128 and cid[0] in _ID_FIRST and _ID_REST.issuperset(cid)

NAMESPACE_FLAGS = {
    "mount": 0x00020000, "uts": 0x04000000, "ipc": 0x08000000, "network": 0x40000000,
    "pid": 0x20000000, "cgroup": 0x02000000,
}
NAMESPACE_FILES = {"mount": "mnt", "uts": "uts", "ipc": "ipc", "network": "net", "pid": "pid", "cgroup": "cgroup"}

CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]
CAP_NUMBERS = {name: i for i, name in enumerate(CAPABILITIES)}

RLIMITS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}

# mount(2) flags by OCI option name: (set, flag) — set False clears the flag.
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_SYNCHRONOUS, MS_REMOUNT = 1, 2, 4, 8, 16, 32
MS_MANDLOCK, MS_DIRSYNC, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 64, 128, 1024, 2048, 4096, 0x4000
MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED, MS_RELATIME, MS_STRICTATIME = 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 21, 1 << 24
MOUNT_FLAGS = {
    "ro": (True, MS_RDONLY), "rw": (False, MS_RDONLY), "nosuid": (True, MS_NOSUID), "suid": (False, MS_NOSUID),
    "nodev": (True, MS_NODEV), "dev": (False, MS_NODEV), "noexec": (True, MS_NOEXEC), "exec": (False, MS_NOEXEC),
    "sync": (True, MS_SYNCHRONOUS), "async": (False, MS_SYNCHRONOUS), "dirsync": (True, MS_DIRSYNC),
    "remount": (True, MS_REMOUNT), "mand": (True, MS_MANDLOCK), "nomand": (False, MS_MANDLOCK),
    "atime": (False, MS_NOATIME), "noatime": (True, MS_NOATIME), "diratime": (False, MS_NODIRATIME),
    "nodiratime": (True, MS_NODIRATIME), "bind": (True, MS_BIND), "rbind": (True, MS_BIND | MS_REC),
    "relatime": (True, MS_RELATIME), "norelatime": (False, MS_RELATIME),
    "strictatime": (True, MS_STRICTATIME), "nostrictatime": (False, MS_STRICTATIME),
}
PROPAGATION_FLAGS = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC, "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC, "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}


def check_container_id(cid: str) -> None:
    if not _valid_id(cid or ""):
        raise hr.GcsError(hr.E_INVALIDARG, f"invalid container id {cid[:80]!r}: use 1-128 characters of "
                                           "[A-Za-z0-9_.-], starting with a letter or digit")


def parse_mount_options(options: list[str]) -> tuple[int, list[int], str]:
    """(flags, propagation flags, data) for a list of OCI mount options."""
    flags, propagation, data = 0, [], []
    for opt in options:
        if opt in MOUNT_FLAGS:
            set_it, flag = MOUNT_FLAGS[opt]
            flags = flags | flag if set_it else flags & ~flag
        elif opt in PROPAGATION_FLAGS:
            propagation.append(PROPAGATION_FLAGS[opt])
        else:
            data.append(opt)
    return flags, propagation, ",".join(data)


def unsupported_features(spec: dict) -> list[str]:
    """What the native runtime cannot honour; Create is refused when this is not empty."""
    problems = []
    linux = spec.get("linux") or {}
    process = spec.get("process") or {}
    for ns in linux.get("namespaces") or []:
        if ns.get("type") not in NAMESPACE_FLAGS:
            problems.append(f"{ns.get('type')} namespaces")
    if linux.get("seccomp"):
        problems.append("seccomp")
    if linux.get("uidMappings") or linux.get("gidMappings"):
        problems.append("user namespace id mappings")
    if linux.get("intelRdt"):
        problems.append("intelRdt")
    if linux.get("mountLabel") or process.get("selinuxLabel"):
        problems.append("SELinux labels")
    if process.get("apparmorProfile"):
        problems.append("AppArmor profiles")
    if any((spec.get("hooks") or {}).get(kind) for kind in (spec.get("hooks") or {})):
        problems.append("hooks")
    if linux.get("personality"):
        problems.append("personality")
    if process.get("ioPriority") or process.get("scheduler") or process.get("execCPUAffinity"):
        problems.append("process scheduling attributes")
    for cap_set in (process.get("capabilities") or {}).values():
        for name in cap_set or []:
            if name not in CAP_NUMBERS:
                problems.append(f"unknown capability {name}")
    problems += unsupported_resources(linux.get("resources") or {}, cgroup_v2=False)
    for rlimit in process.get("rlimits") or []:
        if rlimit.get("type") not in RLIMITS:
            problems.append(f"unknown rlimit {rlimit.get('type')}")
    return problems


def unsupported_resources(resources: dict, cgroup_v2: bool) -> list[str]:
    """LinuxResources the agent's cgroup code cannot apply (Create and ContainerConstraints)."""
    problems = [name for name in ("blockIO", "hugepageLimits", "network", "rdma", "unified") if resources.get(name)]
    memory, cpu = resources.get("memory") or {}, resources.get("cpu") or {}
    problems += [f"memory.{k}" for k in ("kernel", "kernelTCP") if memory.get(k)]
    problems += [f"cpu.{k}" for k in ("realtimeRuntime", "realtimePeriod", "idle") if cpu.get(k)]
    if cgroup_v2:
        problems += [f"memory.{k} on cgroup v2" for k in ("swappiness", "disableOOMKiller") if memory.get(k)]
    return problems


# runc appends these to every container's device rules (libcontainer/specconv AllowedDevices):
# (path or None, rule). A rule for a path the spec lists among its devices is left out.
DEFAULT_DEVICE_RULES = [
    (None, "allow c *:* m"), (None, "allow b *:* m"),
    ("/dev/null", "allow c 1:3 rwm"), ("/dev/random", "allow c 1:8 rwm"), ("/dev/full", "allow c 1:7 rwm"),
    ("/dev/tty", "allow c 5:0 rwm"), ("/dev/zero", "allow c 1:5 rwm"), ("/dev/urandom", "allow c 1:9 rwm"),
    (None, "allow c 136:* rwm"), (None, "allow c 5:2 rwm"), ("/dev/net/tun", "allow c 10:200 rwm"),
]


def device_rule(rule: dict) -> str:
    """An OCI LinuxDeviceCgroup as a v1 rule: "allow c 1:3 rwm"; E_INVALIDARG if malformed."""
    kind = rule.get("type") or "a"
    access = rule.get("access") or ""
    invalid = hr.GcsError(hr.E_INVALIDARG, f"invalid device rule {rule!r}")
    if kind not in ("a", "b", "c") or not isinstance(access, str) or not access or set(access) - set("rwm"):
        raise invalid

    def number(value) -> str:
        if value is None or value == -1:
            return "*"
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise invalid
        return str(value)

    return f"{'allow' if rule.get('allow') else 'deny'} {kind} {number(rule.get('major'))}:{number(rule.get('minor'))} {access}"


def device_rules(spec: dict) -> list[str]:
    """The spec's device rules followed by runc's defaults, in the order they apply."""
    linux = spec.get("linux") or {}
    rules = [device_rule(r) for r in (linux.get("resources") or {}).get("devices") or []]
    listed = {d.get("path") for d in linux.get("devices") or []}
    return rules + [rule for path, rule in DEFAULT_DEVICE_RULES if path is None or path not in listed]


def kernel_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return len(CAPABILITIES) - 1


def identity(process: dict, last_cap: int) -> dict:
    """What a container process becomes, worked out here so that the process itself only
    makes the calls: every object it builds after the clone costs it copy-on-write faults."""
    user = process.get("user") or {}
    known = range(min(len(CAPABILITIES) - 1, last_cap) + 1)  # what this list and the kernel both know
    caps = process.get("capabilities")
    capsets = None
    if caps is not None:
        wanted = {name: {CAP_NUMBERS[c] for c in caps.get(name) or []}
                  for name in ("bounding", "effective", "permitted", "inheritable")}
        capsets = {
            "drop": [c for c in known if c not in wanted["bounding"]],
            "set": [[c for c in known if c in wanted[n]] for n in ("effective", "permitted", "inheritable")],
            "clear": [[c for c in known if c not in wanted[n]] for n in ("effective", "permitted", "inheritable")],
            "ambient": sorted(CAP_NUMBERS[c] for c in caps.get("ambient") or []),
        }
    env = {}
    for item in process.get("env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    return {"rlimits": [[RLIMITS[r["type"]], r["soft"], r["hard"]] for r in process.get("rlimits") or []],
            "uid": user.get("uid", 0), "gid": user.get("gid", 0), "groups": list(user.get("additionalGids") or []),
            "umask": user.get("umask"), "caps": capsets, "no_new_privs": bool(process.get("noNewPrivileges")),
            "cwd": process.get("cwd") or "/", "env": env, "args": process.get("args") or []}


# --- users and groups in the container's rootfs --------------------------------------------
def _read_db(rootfs: str, name: str) -> list[list[str]]:
    try:
        with open(os.path.join(rootfs, "etc", name), errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def resolve_user(rootfs: str, user: str) -> tuple[int, int, list[int]]:
    """'user[:group]' (names or numbers) -> (uid, gid, additional gids) from /etc/passwd, /etc/group."""
    name, _, group = user.partition(":")
    passwd = _read_db(rootfs, "passwd")
    groups = _read_db(rootfs, "group")
    if name.isdigit():
        uid = int(name)
        entry = next((e for e in passwd if len(e) > 3 and e[2] == name), None)
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
        login = entry[0] if entry else None
    else:
        matches = [e for e in passwd if e[0] == name and len(e) > 3]
        if len(matches) != 1:
            raise hr.GcsError(hr.E_INVALIDARG, f"user {name!r} not found in the container's /etc/passwd"
                              if not matches else f"user {name!r} is ambiguous in /etc/passwd")
        uid, gid, login = int(matches[0][2]), int(matches[0][3]), name
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = [e for e in groups if e[0] == group and len(e) > 2]
            if len(found) != 1:
                raise hr.GcsError(hr.E_INVALIDARG, f"group {group!r} not found in the container's /etc/group")
            gid = int(found[0][2])
    extra = []
    if login is not None:
        extra = [int(e[2]) for e in groups if len(e) > 3 and login in e[3].split(",") and e[2].isdigit()]
    return uid, gid, [g for g in extra if g != gid]
