"""What runs in the processes the spawner clones: it turns a copy of the spawner into a
container process (namespaces, rootfs, mounts, devices, pivot_root, hostname, limits,
identity, capabilities) and execs the container's program. The spawner has already put
the clone in its pid namespace and left it default signal dispositions.

Everything is imported up front: after pivot_root the container's files are all there is.
Nothing here may return into the spawner's code: every path ends in exec or os._exit.
Failures are reported to the agent as one JSON line on the error pipe.
"""
from __future__ import annotations

import array
import ctypes  # loaded by gcs.linux already
import errno
import fcntl
import os
import resource
import stat
import struct
import termios

import _prctl  # python-prctl's C layer
import _socket  # not `socket`: its enums cost the spawner memory

from gcs import fdpass, linux
from gcs.containers import ocispec as oci
from gcs.mountflags import (MNT_DETACH, MS_BIND, MS_MANDLOCK, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC,
                            MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_RELATIME, MS_REMOUNT, MS_SLAVE,
                            MS_SYNCHRONOUS, PROPAGATION_FLAGS)
from gcs.protocol import jsoncodec

DEV_NULL = os.makedev(1, 3)
KEY_USR_SEARCH = 0x00080000  # runc's "newperms" for a container without a user namespace
TIOCSPTLCK, TIOCGPTN = 0x40045431, 0x80045430  # unlockpt / ptsname (not in Python's termios)
DEFAULT_DEVICES = [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]
PR_SET_SECCOMP, SECCOMP_MODE_FILTER, SECCOMP_SET_MODE_FILTER = 22, 2, 1
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}.get(os.uname().machine)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
DEV_SYMLINKS = [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")]


class ChildError(Exception):
    pass


def _fail(err_w: int, message: str, code: int = 1) -> None:
    try:
        os.write(err_w, (jsoncodec.dumps({"error": message}) + "\n").encode())
    finally:
        os._exit(code)


def _enter_namespaces(namespaces: list[tuple[str, str | None]]) -> None:
    # O_NONBLOCK: a FIFO given as a namespace path fails setns instead of hanging the open
    joined = [(kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)) for kind, path in namespaces if path]
    # The mount namespace last: after it, /proc paths would name the container's view.
    joined.sort(key=lambda item: item[0] == "mount")
    for kind, fd in joined:
        try:
            linux.setns(fd, oci.NAMESPACE_FLAGS[kind])
        except OSError as err:
            raise ChildError(f"join {kind} namespace: {err.strerror}") from None
        os.close(fd)
    flags = 0
    for kind, path in namespaces:
        if not path:
            flags |= oci.NAMESPACE_FLAGS[kind]
    if flags:
        linux.unshare(flags)


# --- rootfs ------------------------------------------------------------------------------------
def secure_join(root: str, unsafe: str) -> str:
    """root + unsafe with every symlink resolved as if root were '/' (no escape)."""
    parts = [p for p in unsafe.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 255:
                raise ChildError(f"too many symlinks resolving {unsafe}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _make_target(path: str, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(path, exist_ok=True)
    elif not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o755))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    try:
        linux.mount(source, target, fstype, flags, data or None)
    except OSError as err:
        raise ChildError(f"mount {fstype or 'bind'} {source or ''} on {target}: {os.strerror(err.errno)}") from None


def _mount_cgroup_v1(dest: str, flags: int, propagation: list[int], hierarchies: list, own_ns: bool) -> None:
    """runc's view of v1 cgroups: a tmpfs with the container's cgroup of every hierarchy
    bound under its name (or, in its own cgroup namespace, the hierarchy mounted afresh),
    symlinks for co-mounted controllers. A read-only mount makes the hierarchies read-only;
    the tmpfs itself stays writable, as runc 1.1 leaves it."""
    plain = MS_NOSUID | MS_NODEV | MS_NOEXEC
    _make_target(dest, True)
    _mount("tmpfs", dest, "tmpfs", plain, "mode=755")
    for prop in propagation:
        _mount(None, dest, None, prop, None)
    for name, source, subsystems in hierarchies:
        target = os.path.join(dest, name)
        os.makedirs(target, exist_ok=True)
        if own_ns:
            fs_source, data = ("systemd", "name=systemd") if name == "systemd" else ("cgroup", name)
            _mount(fs_source, target, "cgroup", plain | (flags & MS_RDONLY), data)
            continue
        _bind(source, target, flags | MS_REC, propagation)
    for name, _, _ in hierarchies:
        if "," in name:
            for part in name.split(","):
                try:
                    os.symlink(name, os.path.join(dest, part))
                except FileExistsError:
                    pass


def _mount_entry(rootfs: str, m: dict, plan: dict) -> None:
    dest = secure_join(rootfs, m["destination"])
    kind = m.get("type") or ""
    options = m.get("options") or []
    flags, propagation, data = oci.parse_mount_options(options)
    source = m.get("source") or kind
    if kind == "bind" or flags & MS_BIND:
        if not os.path.exists(source):
            raise ChildError(f"bind mount source {source} does not exist")
        _make_target(dest, os.path.isdir(source))
        _bind(source, dest, flags, propagation)
        return
    if kind == "cgroup" and plan.get("cgroup_v1"):
        own_ns = any(k == "cgroup" and not p for k, p in plan["namespaces"])
        _mount_cgroup_v1(dest, flags, propagation, plan["cgroup_v1"], own_ns)
        return
    _make_target(dest, True)
    if kind == "cgroup":
        kind = "cgroup2"  # a v2 host: the container sees its cgroup namespace's view (the source: the spec's, as runc)
    _mount(source, dest, kind, flags, data)
    for prop in propagation:
        _mount(None, dest, None, prop, None)


def _bind(source: str, dest: str, flags: int, propagation: list[int]) -> None:
    """A bind mount; its other flags (ro, nosuid...) only take with a remount."""
    _mount(source, dest, None, MS_BIND | (flags & MS_REC), None)
    extra = flags & ~(MS_BIND | MS_REC | MS_REMOUNT)
    if extra:
        _mount(None, dest, None, MS_BIND | MS_REMOUNT | extra, None)
    for prop in propagation:
        _mount(None, dest, None, prop, None)


def _setup_dev(rootfs: str, devices: list[dict]) -> None:
    dev = os.path.join(rootfs, "dev")
    for name, major, minor in DEFAULT_DEVICES:
        _mknod(os.path.join(dev, name), stat.S_IFCHR | 0o666, major, minor, 0, 0)
    for d in devices:
        kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}.get(d.get("type"))
        if kind is None:
            raise ChildError(f"device {d.get('path')}: unknown type {d.get('type')!r}")
        path = secure_join(rootfs, d["path"])
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _mknod(path, kind | (d.get("fileMode") or 0o666), d.get("major", 0), d.get("minor", 0),
                   d.get("uid", 0), d.get("gid", 0))
        except OSError as err:
            raise ChildError(f"create device {d['path']}: {err.strerror}") from None
    for name, target in DEV_SYMLINKS:
        link = os.path.join(dev, name)
        if not os.path.lexists(link):
            os.symlink(target, link)


def _mknod(path: str, mode: int, major: int, minor: int, uid: int, gid: int) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.mknod(path, mode, os.makedev(major, minor))
    os.chmod(path, mode & 0o7777)
    os.chown(path, uid, gid)


def _pivot_root(rootfs: str) -> None:
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.chdir(rootfs)
        linux.pivot_root(".", ".")  # the old root is now stacked on top of the new one
        os.fchdir(old_root)  # so that "." names the old root, not the new one beneath it
    finally:
        os.close(old_root)
    _mount(None, ".", None, MS_SLAVE | MS_REC, None)  # keep the unmount below private
    linux.umount(".", MNT_DETACH)
    os.chdir("/")


def _mask(path: str) -> None:
    try:
        if os.path.isdir(path):
            linux.mount("tmpfs", path, "tmpfs", MS_RDONLY, None)
        else:
            linux.mount("/dev/null", path, None, MS_BIND, None)
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise ChildError(f"mask {path}: {os.strerror(err.errno)}") from None


def _mount_flags(path: str) -> int:
    """The flags a mount has now (statvfs), as mount(2) flags, so a remount keeps them."""
    st = os.statvfs(path).f_flag
    flags = st & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_SYNCHRONOUS | MS_MANDLOCK
                  | MS_NOATIME | MS_NODIRATIME)
    if st & 4096:  # ST_RELATIME
        flags |= MS_RELATIME
    return flags


def _read_only(path: str) -> None:
    try:
        linux.mount(path, path, None, MS_BIND | MS_REC, None)
        linux.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | _mount_flags(path), None)
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise ChildError(f"make {path} read-only: {os.strerror(err.errno)}") from None


def _setup_rootfs(plan: dict) -> None:
    rootfs = plan["rootfs"]
    propagation = PROPAGATION_FLAGS.get(plan.get("rootfs_propagation") or "", MS_SLAVE | MS_REC)
    _mount(None, "/", None, propagation | MS_REC, None)
    _parent_mount_private(rootfs)
    _mount(rootfs, rootfs, None, MS_BIND | MS_REC, None)
    dev_is_tmpfs = False
    for m in plan["mounts"]:
        _mount_entry(rootfs, m, plan)
        if m.get("destination", "").rstrip("/") == "/dev" and m.get("type") == "tmpfs":
            dev_is_tmpfs = True
    if dev_is_tmpfs:
        _setup_dev(rootfs, plan.get("devices") or [])
    _pivot_root(rootfs)
    if plan["identity"]["cwd"] != "/":
        _make_cwd(plan["identity"]["cwd"])
    if plan.get("readonly_root"):
        _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)


def _make_cwd(cwd: str) -> None:
    """The process's cwd, made if missing, as runc does: after pivot_root, so that neither
    ".." nor a symlink in the image can lead out of the rootfs (the kernel resolves both
    inside the new root), with the mounts in place, before the root is made read-only."""
    try:
        os.makedirs(cwd, 0o755, exist_ok=True)
    except OSError as err:
        raise ChildError(f"mkdir cwd {cwd!r}: {err.strerror}") from None


def _parent_mount_private(rootfs: str) -> None:
    """pivot_root refuses a new root whose parent mount is shared (rootfsPropagation
    "shared"/"rshared"), and a shared parent would carry the rootfs bind back to the agent:
    make the mount holding the rootfs private if it is shared, as runc does."""
    best, shared = "", False
    for line in _read_file("/proc/self/mountinfo").decode("utf-8", "surrogateescape").splitlines():
        fields = line.split(" - ")[0].split()
        point = fields[4].replace("\\040", " ")
        if (rootfs == point or rootfs.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, shared = point, any(f.startswith("shared:") for f in fields[6:])
    if shared:
        _mount(None, best, None, MS_PRIVATE, None)


def _protect_paths(plan: dict) -> None:
    """After sysctls are written (runc's order): read-only paths, then masked ones."""
    for path in plan.get("readonly_paths") or []:
        _read_only(path)
    for path in plan.get("masked_paths") or []:
        _mask(path)


def _namespace_ids() -> dict[str, int]:
    """The ipc, net and uts namespaces this process is in (what sysctls can be written in)."""
    return {kind: os.stat(f"/proc/self/ns/{kind}").st_ino for kind in ("ipc", "net", "uts")}


def _apply_sysctl(sysctl: dict, uvm_namespaces: dict[str, int]) -> None:
    """uvm_namespaces: the spawner's, the UVM's own. The agent has refused what runc refuses
    (ocispec.check_sysctls); this is the last line before a write that would change the
    whole UVM (kernel.core_pattern, vm.*, a net.* one in the UVM's network namespace)."""
    for key, value in sysctl.items():
        kind = oci.sysctl_namespace(oci.sysctl_name(key))
        if kind is None or os.stat(f"/proc/self/ns/{kind}").st_ino == uvm_namespaces[kind]:
            raise ChildError(f"sysctl {key}: not in a namespace of the container's own")
        path = "/proc/sys/" + key.replace(".", "/")  # no ".." can be left: every "." is gone
        try:
            _write_file(path, str(value))
        except OSError as err:
            raise ChildError(f"sysctl {key}: {err.strerror}") from None


# --- stdio and the process itself ----------------------------------------------------------
def _setup_stdio(stdio: dict, console: bool = False) -> None:
    sock_fd = stdio.get("console_socket")
    if sock_fd is not None:
        _setup_terminal(sock_fd, console)
        return
    null = None
    for target, fd in enumerate((stdio.get("stdin"), stdio.get("stdout"), stdio.get("stderr"))):
        if fd is None:
            if null is None:
                null = os.open("/dev/null", os.O_RDWR)
            fd = null
        os.dup2(fd, target)
    if null is not None and null > 2:
        os.close(null)


def _open_console(sock_fd: int) -> str:
    """A pty from the container's own devpts; the master goes to the agent over the console
    socket (as runc's --console-socket does). Returns the slave's path."""
    # O_NONBLOCK: an image's FIFO at /dev/ptmx fails the ioctl instead of hanging (the agent
    # makes the master non-blocking anyway)
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    fcntl.ioctl(master, TIOCSPTLCK, array.array("i", [0]))
    number = array.array("I", [0])
    fcntl.ioctl(master, TIOCGPTN, number)
    slave_path = f"/dev/pts/{number[0]}"
    sock = _socket.socket(fileno=sock_fd)
    fdpass.send_fds(sock, b"pty", [master])
    sock.close()
    os.close(master)
    return slave_path


def _setup_terminal(sock_fd: int, console: bool) -> None:
    """The container's pty as our controlling terminal and stdio."""
    slave_path = _open_console(sock_fd)
    fd = os.open(slave_path, os.O_RDWR)
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
    if console and os.path.isdir("/dev"):
        _make_target("/dev/console", False)
        _mount(slave_path, "/dev/console", None, MS_BIND, None)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def _lookup(program: str, env: dict[str, str]) -> str:
    if "/" in program:
        return program
    for directory in (env.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
        candidate = os.path.join(directory or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ChildError(f"exec: {program!r}: executable file not found in $PATH")


def _exec(program: tuple[str, list[str], dict[str, str]], err_w: int, filtered: bool = False) -> None:
    """Never returns."""
    path, args, env = program
    try:
        os.execve(path, args, env)
    except OSError as err:
        if filtered:  # as runc's init, started already: its words on the process's stderr, status 1
            message = err.strerror[:1].lower() + err.strerror[1:]
            try:
                os.write(2, f"exec {path}: {message}\n".encode())
            finally:
                os._exit(1)
        _fail(err_w, f"exec {args[0]!r}: {err.strerror}", 127)


class LoadableFilter:
    """A compiled filter ready for the kernel: its sock_fprog and the call's arguments, built
    by the spawner before the clone. Built in the container process instead, the ctypes
    objects cost ~0.3 ms of copy-on-write faults there, ten times the seccomp(2) call."""

    def __init__(self, filt: dict) -> None:
        prog = filt["prog"]
        self.insns = ctypes.create_string_buffer(prog, len(prog))
        self.fprog = ctypes.create_string_buffer(struct.pack("@H6xQ", len(prog) // 8, ctypes.addressof(self.insns)), 16)
        self.flags = filt["flags"]
        if self.flags:  # flags need seccomp(2); prctl takes none (runc's order of preference)
            self.call = _libc.syscall
            self.args = (ctypes.c_long(_SYS_SECCOMP or -1), ctypes.c_long(SECCOMP_SET_MODE_FILTER),
                         ctypes.c_long(self.flags), self.fprog)
        else:
            self.call = _libc.prctl
            self.args = (PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), self.fprog, ctypes.c_ulong(0),
                         ctypes.c_ulong(0))


def prepare_seccomp(plan: dict, cache: dict) -> None:
    """In the spawner: the plan's filter replaced by its LoadableFilter, one per distinct
    program (a few profiles serve every container)."""
    filt = plan.get("seccomp")
    if filt and not isinstance(filt, LoadableFilter):
        loadable = cache.get(filt["prog"])
        if loadable is None:
            if len(cache) >= 16:
                cache.clear()
            loadable = cache[filt["prog"]] = LoadableFilter(filt)
        plan["seccomp"] = loadable


def _install_seccomp(filt: LoadableFilter) -> None:
    """The agent's compiled filter (gcs.containers.seccomp), as runc loads one. Needs
    no_new_privs or CAP_SYS_ADMIN."""
    if filt.flags and _SYS_SECCOMP is None:
        raise ChildError(f"seccomp flags: not wired for {os.uname().machine}")
    if filt.call(*filt.args) != 0:  # TSYNC: a thread id, never here (this process has one thread)
        raise ChildError(f"error loading seccomp filter into kernel: {os.strerror(ctypes.get_errno())}")


def _set_oom_score(proc: dict) -> None:
    if proc.get("oomScoreAdj") is not None:
        _write_file("/proc/self/oom_score_adj", str(proc["oomScoreAdj"]))


def _become(ident: dict, seccomp: LoadableFilter | None) -> tuple[str, list[str], dict[str, str]]:
    """rlimits, groups, user, capabilities, no_new_privs, cwd (all worked out by the agent,
    see ocispec.identity); returns what to exec. python-prctl's C layer is called directly:
    its Python wrappers would cost this process page faults."""
    for res, soft, hard in ident["rlimits"]:
        try:
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError) as err:  # e.g. a hard limit above the kernel's nr_open
            raise ChildError(f"setrlimit {res} ({soft}, {hard}): {err}") from None
    if seccomp and not ident["no_new_privs"]:
        # As runc: without no_new_privs loading a filter takes CAP_SYS_ADMIN, so it goes in
        # before the user and capabilities change (with it: at start, just before exec).
        _install_seccomp(seccomp)
    caps = ident["caps"]
    if caps is not None:
        for cap in caps["drop"]:
            _prctl.prctl(_prctl.PR_CAPBSET_DROP, cap)
    # The cwd first, while still root (a directory the user cannot enter may still be its
    # cwd, as with runc); again after the user is taken on if root was refused.
    cwd_pending = _chdir(ident["cwd"], final=False)
    _prctl.prctl(_prctl.PR_SET_KEEPCAPS, 1)
    uid, gid = ident["uid"], ident["gid"]
    env, args = ident["env"], ident["args"]
    if "HOME" not in env:  # as runc does: the user's home from the container's passwd, read as root
        env["HOME"] = _home_of(uid)
    _fix_stdio_owner(uid)
    os.setgroups(ident["groups"])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if ident["umask"] is not None:
        os.umask(ident["umask"])
    if caps is not None:
        try:
            _prctl.set_caps(*caps["set"], *caps["clear"])
        except OSError as err:  # e.g. an effective capability that is not permitted
            raise ChildError(f"unable to apply caps: {os.strerror(err.errno)}") from None
        linux.ambient_caps(caps["ambient"])
    _prctl.prctl(_prctl.PR_SET_KEEPCAPS, 0)
    if ident["no_new_privs"]:
        _prctl.prctl(_prctl.PR_SET_NO_NEW_PRIVS, 1)
    if cwd_pending:
        _chdir(ident["cwd"], final=True)
    if not args:
        raise ChildError("process has no args")
    return _lookup(args[0], env), args, env


def _fix_stdio_owner(uid: int) -> None:
    """runc's fixStdioPermissions: stdio other than /dev/null goes to the user the process
    becomes (the uid only; the gid stays, a devpts gid= option may have chosen it), so that
    it can reopen /dev/stdout. The pipes and ptys are the agent's making, root's."""
    for fd in (0, 1, 2):
        st = os.fstat(fd)
        if st.st_uid == uid or (stat.S_ISCHR(st.st_mode) and st.st_rdev == DEV_NULL):
            continue
        try:
            os.fchown(fd, uid, st.st_gid)
        except OSError as err:  # as runc: an owner or a gid we cannot map, a read-only /dev
            if err.errno not in (errno.EINVAL, errno.EPERM, errno.EROFS):
                raise ChildError(f"chown stdio fd {fd}: {err.strerror}") from None


def _join_session_keyring(cid: str, init: bool) -> None:
    """As runc: not the agent's session keyring, but one of the container's, "_ses.<id>". Its
    init makes it and adds search permission for its owner (root: the process joining it
    is still root) so that the container's execs can find it by name and join it too."""
    try:
        serial = linux.join_session_keyring("_ses." + cid)
        if init:
            linux.set_key_perm(serial, linux.key_perm(serial) | KEY_USR_SEARCH)
    except OSError as err:
        if err.errno != errno.ENOSYS:  # a kernel without keyrings: best effort, as runc
            raise ChildError(f"unable to join session keyring: {os.strerror(err.errno)}") from None


def _chdir(cwd: str, final: bool) -> bool:
    """True if it should be tried again (refused for permissions, not final yet)."""
    try:
        os.chdir(cwd)
        return False
    except PermissionError:
        if not final:
            return True
        raise ChildError(f"chdir to cwd {cwd!r}: permission denied") from None
    except OSError as err:
        raise ChildError(f"chdir to cwd {cwd!r}: {err.strerror}") from None


def _home_of(uid: int) -> str:
    # Raw reads, no text layer: every object this process creates costs copy-on-write faults.
    data = _read_regular("/etc/passwd")
    if data is None:
        return "/"
    wanted = str(uid).encode()
    for line in data.split(b"\n"):
        fields = line.split(b":")
        if len(fields) > 5 and fields[2] == wanted:
            return fields[5].decode("utf-8", "surrogateescape") or "/"
    return "/"


def _write_file(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_regular(path: str) -> bytes | None:
    """An image's file, if it is a regular one: a FIFO there would hang us, a device's open
    may have side effects (we are root, perhaps not yet in the device cgroup). Checked on an
    O_PATH descriptor, then opened through it: the inode checked is the one read."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > oci.IMAGE_FILE_LIMIT:
            return None
        try:
            reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:  # no /proc in this container: by path, and the same inode
            reader = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
            again = os.fstat(reader)
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                os.close(reader)
                return None
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return os.read(reader, oci.IMAGE_FILE_LIMIT)
    except OSError:
        return None
    finally:
        os.close(reader)


def _check_program(proc: dict) -> None:
    env = dict(item.partition("=")[::2] for item in proc.get("env") or [])
    args = proc.get("args") or []
    if not args:
        raise ChildError("process has no args")
    path = _lookup(args[0], env)
    if not os.path.exists(path):
        raise ChildError(f"exec: {args[0]!r}: no such file or directory")


def _join_cgroups(plan: dict) -> None:
    for path in plan.get("cgroup_procs") or []:
        try:
            _write_file(path, "0")  # "0": the writing process itself
        except OSError as err:
            raise ChildError(f"join cgroup {os.path.dirname(path)}: {err.strerror}") from None


def _run(fds: dict, setup, plan: dict) -> None:
    """A container process's whole life: setup() gets it ready and returns the program; then
    the go from the agent, then exec. Failures go to the agent on the error pipe."""
    err_w, start_r = fds["err"], fds["start"]
    seccomp = plan.get("seccomp")
    try:
        program = setup()
        if os.read(start_r, 1) != b"S":
            os._exit(0)  # never started (deleted, or the agent gave up on it)
        os.close(start_r)
        if seccomp and plan["identity"]["no_new_privs"]:
            _install_seccomp(seccomp)  # the last step: only execve runs under it here
        _exec(program, err_w, filtered=bool(seccomp))
    except ChildError as err:
        _fail(err_w, str(err))
    except BaseException as err:  # noqa: BLE001
        _fail(err_w, f"{type(err).__name__}: {err}")
    os._exit(1)


def init_main(plan: dict, fds: dict) -> None:
    """Container init, already in its pid namespace: set everything up, report ready, wait
    for start, exec."""
    def setup() -> tuple[str, list[str], dict[str, str]]:
        _join_cgroups(plan)
        uvm_namespaces = _namespace_ids() if plan.get("sysctl") else {}
        _enter_namespaces([(k, p) for k, p in plan["namespaces"] if k != "pid"])
        _join_session_keyring(plan["id"], init=True)
        if ["network", None] in plan["namespaces"] and not plan.get("loopback_up"):
            linux.loopback_up()  # a new network namespace starts with lo down; runc brings it up
        os.setsid()
        if any(kind == "mount" for kind, _ in plan["namespaces"]):
            _setup_rootfs(plan)
        if plan.get("hostname") and any(k == "uts" and not p for k, p in plan["namespaces"]):
            _socket.sethostname(plan["hostname"])
        _apply_sysctl(plan.get("sysctl") or {}, uvm_namespaces)
        _protect_paths(plan)
        _check_program(plan["process"])  # fail at create, as runc does, not at start
        _setup_stdio(plan["stdio"], console=True)
        _set_oom_score(plan["process"])
        program = _become(plan["identity"], plan.get("seccomp"))  # before start, as runc: its errors fail Create
        os.write(fds["err"], b"R")
        return program

    _run(fds, setup, plan)


def exec_main(plan: dict, fds: dict) -> None:
    """A process in a running container, already in its pid namespace: join the other
    namespaces, take on the process's identity and limits (the agent puts it in the
    container's cgroups meanwhile), wait for the go, exec."""
    def setup() -> tuple[str, list[str], dict[str, str]]:
        _set_oom_score(plan["process"])  # through the agent's /proc, before the mount ns changes
        _join_cgroups(plan)
        _enter_namespaces([(k, p) for k, p in plan["namespaces"] if k != "pid"])
        _join_session_keyring(plan["id"], init=False)
        os.setsid()
        os.chdir("/")
        _setup_stdio(plan["stdio"])
        return _become(plan["identity"], plan.get("seccomp"))

    _run(fds, setup, plan)
