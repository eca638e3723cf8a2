"""Reading an OCI runtime spec: its shape and the sysctls it may ask for (checked before
anything is made), what the native runtime supports, mount options, capability and rlimit
names, and user/group resolution in the container's /etc files (read inside its rootfs)."""
from __future__ import annotations

import errno
import os
import stat

from gcs.mountflags import (MS_BIND, MS_DIRSYNC, MS_MANDLOCK, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC,
                            MS_NOSUID, MS_RDONLY, MS_REC, MS_RELATIME, MS_REMOUNT, MS_STRICTATIME, MS_SYNCHRONOUS,
                            PROPAGATION_FLAGS)
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
CAP_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

RLIMITS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}

# mount(2) flags by OCI option name: (set, flag) — set False clears the flag.
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


# --- the shape of a spec ---------------------------------------------------------------------
# Every member the agent, the spawner's children and the cgroup code read, with the JSON type
# it must have (as Go's decoder would insist for runc). A kind is "string", "boolean",
# "object" or "array" (any content), an integer range, ("list", kind), ("map", kind) or an
# object: (members, required names). Members not listed are left alone; null counts as absent.
def _obj(required: tuple = (), **members) -> tuple:
    return ("obj", members, required)


def _int(lo: int, hi: int, name: str) -> tuple:
    return ("int", lo, hi, name)


_U32 = _int(0, (1 << 32) - 1, "an unsigned 32-bit integer")
_U64 = _int(0, (1 << 64) - 1, "an unsigned 64-bit integer")
_I64 = _int(-(1 << 63), (1 << 63) - 1, "a 64-bit integer")
_STRS = ("list", "string")
_JSON_TYPES = {str: "string", bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}
_PY_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list}
_ARTICLE = {"string": "a string", "boolean": "a boolean", "object": "an object", "array": "an array"}

PROCESS = _obj(
    terminal="boolean", consoleSize=_obj(height=_U64, width=_U64),
    user=_obj(uid=_U32, gid=_U32, umask=_U32, additionalGids=("list", _U32), username="string"),
    args=_STRS, env=_STRS, cwd="string",
    capabilities=_obj(**{name: _STRS for name in CAP_SETS}),
    rlimits=("list", _obj(("type", "soft", "hard"), type="string", soft=_U64, hard=_U64)),
    noNewPrivileges="boolean", apparmorProfile="string", oomScoreAdj=_I64, selinuxLabel="string",
    ioPriority="object", scheduler="object", execCPUAffinity="object")
_U16 = _int(0, (1 << 16) - 1, "an unsigned 16-bit integer")
_THROTTLE = ("list", _obj(("major", "minor"), major=_I64, minor=_I64, rate=_U64))
BLOCK_IO = _obj(
    weight=_U16, leafWeight=_U16,
    weightDevice=("list", _obj(("major", "minor"), major=_I64, minor=_I64, weight=_U16, leafWeight=_U16)),
    throttleReadBpsDevice=_THROTTLE, throttleWriteBpsDevice=_THROTTLE,
    throttleReadIOPSDevice=_THROTTLE, throttleWriteIOPSDevice=_THROTTLE)
RESOURCES = _obj(
    devices=("list", _obj(allow="boolean", type="string", major=_I64, minor=_I64, access="string")),
    memory=_obj(limit=_I64, reservation=_I64, swap=_I64, kernel=_I64, kernelTCP=_I64, swappiness=_U64,
                disableOOMKiller="boolean", useHierarchy="boolean"),
    cpu=_obj(shares=_U64, quota=_I64, burst=_U64, period=_U64, realtimeRuntime=_I64, realtimePeriod=_U64,
             cpus="string", mems="string", idle=_I64),
    pids=_obj(limit=_I64), blockIO=BLOCK_IO, hugepageLimits="array", network="object", rdma="object",
    unified=("map", "string"))
SECCOMP = _obj(
    defaultAction="string", defaultErrnoRet=_U32, architectures=_STRS, flags=_STRS, listenerPath="string",
    listenerMetadata="string",
    syscalls=("list", _obj(names=_STRS, action="string", errnoRet=_U32,
                           args=("list", _obj(index=_U32, value=_U64, valueTwo=_U64, op="string")))))
_ID_MAPS = ("list", _obj(containerID=_U32, hostID=_U32, size=_U32))
SPEC = _obj(
    ociVersion="string", process=PROCESS, root=_obj(path="string", readonly="boolean"),
    hostname="string", domainname="string",
    mounts=("list", _obj(("destination",), destination="string", type="string", source="string", options=_STRS)),
    hooks=("map", "array"), annotations=("map", "string"),
    linux=_obj(
        namespaces=("list", _obj(("type",), type="string", path="string")),
        uidMappings=_ID_MAPS, gidMappings=_ID_MAPS,
        devices=("list", _obj(("path", "type"), path="string", type="string", major=_U32, minor=_U32,
                              fileMode=_U32, uid=_U32, gid=_U32)),
        cgroupsPath="string", resources=RESOURCES, sysctl=("map", "string"), seccomp=SECCOMP,
        rootfsPropagation="string", maskedPaths=_STRS, readonlyPaths=_STRS, mountLabel="string",
        intelRdt="object", personality="object"))


DEVICE_TYPES = ("c", "b", "u", "p")
_MISSING = object()


def check_spec(spec: dict) -> None:
    """A spec the agent and the runtimes can take: its shape (INVALID_JSON), then what runc's
    validator would refuse among what we read (E_INVALIDARG). Runs before anything is made."""
    check_value(spec, SPEC, "")
    for i, device in enumerate((spec.get("linux") or {}).get("devices") or []):
        if device["type"] not in DEVICE_TYPES:
            raise hr.GcsError(hr.E_INVALIDARG, f"invalid OCI spec: linux.devices[{i}].type {device['type'][:40]!r}: "
                                               "expected one of c, b, u, p")
    check_sysctls(spec)


def _shape_error(path: str, expected: str, value) -> hr.GcsError:
    got = "nothing" if value is _MISSING else _JSON_TYPES.get(type(value), "null")
    if type(value) in (int, float):
        got += f" {value}"
    return hr.GcsError(hr.INVALID_JSON, f"invalid OCI spec: {path or 'the spec'}: expected {expected}, got {got}")


def _describe(kind) -> str:
    if isinstance(kind, str):
        return _ARTICLE[kind]
    if kind[0] == "int":
        return kind[3]
    return "an array" if kind[0] == "list" else "an object"


def check_value(value, kind, path: str) -> None:
    """Raise INVALID_JSON naming the first member of value that is not of kind (null
    members of objects are dropped: absent, as Go's decoder has them)."""
    if isinstance(kind, str):
        if type(value) is not _PY_TYPES[kind]:
            raise _shape_error(path, _ARTICLE[kind], value)
        if kind == "string" and "\x00" in value:
            raise hr.GcsError(hr.E_INVALIDARG, f"invalid OCI spec: {path}: a NUL character in {value[:80]!r}")
        return
    tag = kind[0]
    if tag == "int":
        if type(value) is not int or not kind[1] <= value <= kind[2]:
            raise _shape_error(path, kind[3], value)
    elif tag == "list":
        if type(value) is not list:
            raise _shape_error(path, "an array", value)
        if kind[1] == "string" and _plain_strings(value):
            return  # the common case, without a call per item
        for i, item in enumerate(value):
            check_value(item, kind[1], f"{path}[{i}]")
    elif tag == "map":
        if type(value) is not dict:
            raise _shape_error(path, "an object", value)
        if kind[1] == "string" and _plain_strings(value.values()) and _plain_strings(value):
            return
        for key, item in value.items():
            check_value(key, "string", f"{path} key {key[:80]!r}")
            check_value(item, kind[1], f"{path}[{key!r}]")
    else:
        if type(value) is not dict:
            raise _shape_error(path, "an object", value)
        _check_members(value, kind[1], kind[2], path)


def _plain_strings(items) -> bool:
    return all(type(item) is str and "\x00" not in item for item in items)


def _check_members(value: dict, members: dict, required: tuple, path: str) -> None:
    prefix = path + "." if path else ""
    for name in [name for name, item in value.items() if item is None]:
        del value[name]  # null: absent, so that `.get(name) or default` holds downstream
    for name, item in value.items():  # what is there (fewer than what could be)
        sub = members.get(name)
        if sub is not None:
            check_value(item, sub, prefix + name)
    for name in required:
        if name not in value:
            raise _shape_error(prefix + name, _describe(members[name]), _MISSING)


# --- sysctls: only the namespaced ones, as runc's validator (libcontainer/configs/validate) ---
_IPC_SYSCTLS = frozenset(("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                          "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"))
_SWAP_SEPARATORS = str.maketrans("./", "/.")


def sysctl_name(key: str) -> str:
    """runc's convertSysctlVariableToDotsSeparator: "kernel/core_pattern" is
    "kernel.core_pattern" (a name whose first separator is "/" has the two swapped)."""
    for ch in key:
        if ch == ".":
            return key
        if ch == "/":
            return key.translate(_SWAP_SEPARATORS)
    return key


def sysctl_namespace(name: str) -> str | None:
    """The namespace (its /proc/self/ns name) a sysctl runc may allow belongs to, or None."""
    if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
        return "ipc"
    if name.startswith("net."):
        return "net"
    return "uts" if name == "kernel.domainname" else None


def check_sysctls(spec: dict) -> None:
    """E_INVALIDARG, naming the sysctl, for one that is not in a namespace of the container's
    own: /proc/sys is not namespaced as a whole, and a write there (kernel.core_pattern,
    vm.*) would change the whole UVM. runc's rules and messages."""
    linux = spec.get("linux") or {}
    sysctl = linux.get("sysctl") or {}
    if not sysctl:
        return
    namespaces = {ns["type"]: ns.get("path") or "" for ns in linux.get("namespaces") or []}
    host_net = None
    for key in sysctl:
        name = sysctl_name(key)
        if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
            if "ipc" in namespaces:
                continue
            raise _refused(f'sysctl "{name}" is not allowed in the hosts ipc namespace')
        if name.startswith("net."):
            if host_net is None:
                host_net = _joins_host_netns(namespaces)
            if host_net:
                raise _refused(f'sysctl "{name}" not allowed in host network namespace')
            continue
        if "uts" in namespaces:
            if name == "kernel.domainname":
                continue
            if name == "kernel.hostname":
                raise _refused(f'sysctl "{name}" is not allowed as it conflicts with the OCI "hostname" field')
        raise _refused(f'sysctl "{name}" is not in a separate kernel namespace')


def _refused(message: str) -> hr.GcsError:
    return hr.GcsError(hr.E_INVALIDARG, message)


def _joins_host_netns(namespaces: dict[str, str]) -> bool:
    """No network namespace, or a path naming the agent's own ("host" is ours, as for runc).
    A path that cannot be read is left to the join, which fails on it."""
    if "network" not in namespaces:
        return True
    path = namespaces["network"]
    if not path:
        return False
    try:
        theirs, ours = os.stat(path), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def unsupported_features(spec: dict) -> list[str]:
    """What the native runtime cannot honour in a checked spec (check_spec); Create is
    refused when this is not empty."""
    problems = []
    linux = spec.get("linux") or {}
    process = spec.get("process") or {}
    for ns in linux.get("namespaces") or []:
        if ns.get("type") not in NAMESPACE_FLAGS:
            problems.append(f"{ns.get('type')} namespaces")
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
    caps = process.get("capabilities") or {}
    for cap_set in (caps.get(kind) for kind in CAP_SETS):
        for name in cap_set or []:
            if name not in CAP_NUMBERS:
                problems.append(f"unknown capability {name}")
    for rlimit in process.get("rlimits") or []:
        if rlimit.get("type") not in RLIMITS:
            problems.append(f"unknown rlimit {rlimit.get('type')}")
    return problems


def unsupported_resources(resources: dict, cgroup_v2: bool) -> list[str]:
    """LinuxResources the agent's cgroup code cannot apply (Create and ContainerConstraints);
    INVALID_JSON, the member named, for resources it could not even read."""
    check_value(resources, RESOURCES, "LinuxResources")
    problems = [name for name in ("hugepageLimits", "network", "rdma", "unified") if resources.get(name)]
    if resources.get("blockIO") and not cgroup_v2:
        problems.append("blockIO on cgroup v1")
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
    """A checked spec's (check_spec) device rules followed by runc's defaults, in the order
    they apply."""
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
    check_value(process, PROCESS, "process")
    user = process.get("user") or {}
    known = range(min(len(CAPABILITIES) - 1, last_cap) + 1)  # what this list and the kernel both know
    caps = process.get("capabilities")
    capsets = None
    if caps is not None:
        # A name this list does not know is left out, as runc 1.1 does (with a warning); the
        # native runtime has refused the container's own (unsupported_features).
        wanted = {name: {CAP_NUMBERS[c] for c in caps.get(name) or [] if c in CAP_NUMBERS}
                  for name in ("bounding", "effective", "permitted", "inheritable")}
        capsets = {
            "drop": [c for c in known if c not in wanted["bounding"]],
            "set": [[c for c in known if c in wanted[n]] for n in ("effective", "permitted", "inheritable")],
            "clear": [[c for c in known if c not in wanted[n]] for n in ("effective", "permitted", "inheritable")],
            "ambient": sorted(CAP_NUMBERS[c] for c in caps.get("ambient") or [] if c in CAP_NUMBERS),
        }
    env = {}
    for item in process.get("env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    return {"rlimits": _rlimits(process.get("rlimits") or []),
            "uid": user.get("uid", 0), "gid": user.get("gid", 0), "groups": list(user.get("additionalGids") or []),
            "umask": user.get("umask"), "caps": capsets, "no_new_privs": bool(process.get("noNewPrivileges")),
            "cwd": process.get("cwd") or "/", "env": env, "args": process.get("args") or []}


def _rlimits(rlimits: list[dict]) -> list[list[int]]:
    """[resource, soft, hard] for setrlimit; E_INVALIDARG for what it would refuse."""
    out = []
    for i, r in enumerate(rlimits):
        if r["type"] not in RLIMITS:
            raise hr.GcsError(hr.E_INVALIDARG, f"invalid OCI spec: process.rlimits[{i}]: unknown rlimit {r['type'][:40]!r}")
        if r["soft"] > r["hard"]:
            raise hr.GcsError(hr.E_INVALIDARG, f"invalid OCI spec: process.rlimits[{i}]: {r['type']} soft limit "
                                               f"{r['soft']} above its hard limit {r['hard']}")
        out.append([RLIMITS[r["type"]], _rlim(r["soft"]), _rlim(r["hard"])])
    return out


def _rlim(value: int) -> int:
    """An OCI (uint64) limit as Python's setrlimit takes it: a C long long, so the upper
    half of the range by its bit pattern (18446744073709551615, RLIM_INFINITY, is -1)."""
    return value - (1 << 64) if value >= 1 << 63 else value


# --- users and groups in the container's rootfs --------------------------------------------
IMAGE_FILE_LIMIT = 4 << 20  # bytes: more than any real /etc/passwd, little to read on the loop


def _read_db(rootfs: str, name: str) -> list[list[str]]:
    data = read_image_file(rootfs, "etc/" + name)
    if data is None:
        return []
    return [line.rstrip("\r").split(":") for line in data.decode("utf-8", "replace").split("\n")
            if line.strip() and not line.startswith("#")]


def read_image_file(rootfs: str, path: str, limit: int = IMAGE_FILE_LIMIT) -> bytes | None:
    """A regular file of a container image, by its path inside the image: symlinks and ".."
    resolve as if rootfs were "/" (never to the agent's files), a FIFO or a device is never
    opened (no hang, no side effect of an open), at most `limit` bytes. None, logged, when it
    is absent or not a readable regular file: runc reads these files only for what it can
    find in them, and a missing one means defaults."""
    try:
        fd = _open_path_in_root(rootfs, path)
    except OSError as err:
        if err.errno != errno.ENOENT:
            _log_unreadable(rootfs, path, err.strerror or str(err))
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _log_unreadable(rootfs, path, "not a regular file")
            return None
        if st.st_size > limit:
            _log_unreadable(rootfs, path, f"larger than {limit} bytes")
            return None
        # Opened for reading through the O_PATH descriptor: the very inode just checked.
        reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        _log_unreadable(rootfs, path, err.strerror or str(err))
        return None
    finally:
        os.close(fd)
    try:
        return os.read(reader, limit)
    except OSError as err:
        _log_unreadable(rootfs, path, err.strerror or str(err))
        return None
    finally:
        os.close(reader)


def _log_unreadable(rootfs: str, path: str, why: str) -> None:
    from gcs.log import log  # not at import: the spawner imports this module

    log.warning("container image file ignored", rootfs=rootfs, path="/" + path.lstrip("/"), reason=why)


def _open_path_in_root(rootfs: str, path: str) -> int:
    """An O_PATH descriptor of path resolved inside rootfs: openat2(RESOLVE_IN_ROOT), or on
    kernels without it a walk of one component at a time that does the same."""
    from gcs import linux  # ctypes: loaded only when an image file is read

    root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            return linux.openat2(root, path.lstrip("/") or ".", os.O_PATH | os.O_CLOEXEC,
                                 linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS)
        except OSError as err:
            if err.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter refusing it
                raise
        return _walk_in_root(root, path)
    finally:
        os.close(root)


def _walk_in_root(root: int, path: str) -> int:
    """openat(O_PATH|O_NOFOLLOW) one component at a time from root; a symlink's target is
    walked in its place (an absolute one from root), ".." never above root."""
    parts = [p for p in path.split("/") if p and p != "."]
    chain = [os.dup(root)]  # the directories walked through, root first
    links = 0
    try:
        while parts:
            part = parts.pop(0)
            if part == "..":
                if len(chain) > 1:
                    os.close(chain.pop())
                continue
            fd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=chain[-1])
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                target = os.readlink(part, dir_fd=chain[-1])
                os.close(fd)
                links += 1
                if links > 40:  # the kernel's limit
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                if target.startswith("/"):
                    while len(chain) > 1:
                        os.close(chain.pop())
                parts = [p for p in target.split("/") if p and p != "."] + parts
                continue
            chain.append(fd)
            if parts and not stat.S_ISDIR(mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        return os.dup(chain[-1])
    finally:
        for fd in chain:
            os.close(fd)


def resolve_user(rootfs: str, user: str) -> tuple[int, int, list[int]]:
    """'user[:group]' (names or numbers) -> (uid, gid, additional gids) from /etc/passwd, /etc/group."""
    name, _, group = user.partition(":")
    passwd = _read_db(rootfs, "passwd")
    groups = _read_db(rootfs, "group")
    if _is_id(name):
        uid = _id(name, "user", user)
        entry = next((e for e in passwd if len(e) > 3 and e[2] == name), None)
        gid = int(entry[3]) if entry and _is_id(entry[3]) else 0
        login = entry[0] if entry else None
    else:
        matches = [e for e in passwd if e[0] == name and len(e) > 3]
        if len(matches) != 1:
            raise hr.GcsError(hr.E_INVALIDARG, f"user {name!r} not found in the container's /etc/passwd"
                              if not matches else f"user {name!r} is ambiguous in /etc/passwd")
        uid = _id(matches[0][2], "uid in the container's /etc/passwd", name)
        gid = _id(matches[0][3], "gid in the container's /etc/passwd", name)
        login = name
    if group:
        if _is_id(group):
            gid = _id(group, "group", user)
        else:
            found = [e for e in groups if e[0] == group and len(e) > 2]
            if len(found) != 1:
                raise hr.GcsError(hr.E_INVALIDARG, f"group {group!r} not found in the container's /etc/group")
            gid = _id(found[0][2], "gid in the container's /etc/group", group)
    extra = []
    if login is not None:
        extra = [int(e[2]) for e in groups if len(e) > 3 and login in e[3].split(",") and _is_id(e[2])]
    return uid, gid, [g for g in extra if g != gid]


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) < 1 << 32


def _id(text: str, what: str, whose: str) -> int:
    """A uid or gid (0 to 2^32-1); E_INVALIDARG naming it otherwise."""
    if not _is_id(text):
        raise hr.GcsError(hr.E_INVALIDARG, f"{what} for {whose[:80]!r} is not a 32-bit id: {text[:40]!r}")
    return int(text)
