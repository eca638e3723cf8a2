"""`python -m bench reference`: the fixed costs of pygcs and of Microsoft's Go GCS side by
side, measured by the same driver in one run, rounds alternating (issue 14).

The Go GCS is a binary you build yourself from hcsshim's `cmd/gcs`, outside this repository;
its path comes from PYGCS_REFERENCE_GCS. Without it, the section prints our figures alone
and says so.

How each agent runs (as in ../shared/reference-figures.md):
- ours: `python -S -m gcs --local --bridge-stdio -loglevel info` (local mode makes its own
  namespaces, and that is part of its start-up);
- Go: `gcs -use-inouterr -v4 -disable-time-sync -loglevel info -logfile F`, started by this
  driver inside fresh mount, pid and cgroup namespaces where /run is a private tmpfs and
  every /sys/fs/cgroup/<controller> is a throwaway directory under this process's own
  cgroups (it writes memory.use_hierarchy and makes gcs/ and pods/ at start-up: there they
  are harmless, and removed after). It is never sent a UVM shutdown (it would power off).
Both bridges run over a socketpair as stdin/stdout."""
from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Callable

from bench.syncbridge import SyncBridge
from gcs.protocol.ids import RequestId

Report = Callable[[str, float, str, str, str], None]
ENV = "PYGCS_REFERENCE_GCS"
ROUNDS = 3
ROUND_TRIPS = 2000
EXECS = 300
MEMORY_EXECS = 50
CONTAINERS = 15
CONTAINER_EXECS = 40


def _smaps_mib(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key] = int(rest.split()[0]) / 1024
    return values["Rss"], values["Pss"]


def _tree(pid: int) -> list[int]:
    """pid and its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for path in (f"/proc/{p}/task/{t}/children" for t in os.listdir(f"/proc/{p}/task")):
            with open(path) as f:
                todo += [int(c) for c in f.read().split()]
    return found


def measure(argv: list[str], agent_pid: Callable[[subprocess.Popen], int], env: dict | None = None,
            containers: bool = False, ends_at_eof: bool = False) -> dict:
    """One fresh agent: start -> NegotiateProtocol answered, round trips (Start on the UVM
    id), ExecuteProcess + WaitForProcess of /bin/true in the UVM, memory after 50 execs;
    with `containers`, the busybox layer on /dev/pmem0: container create -> exit and exec."""
    host, guest = socket.socketpair()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=guest, stdout=guest, stderr=subprocess.DEVNULL, env=env)
    guest.close()
    try:
        bridge = SyncBridge(host)
        bridge.negotiate()
        result = {"start_ms": (time.perf_counter() - t0) * 1000}
        for _ in range(200):
            bridge.call(RequestId.START)
        samples = []
        for _ in range(ROUND_TRIPS):
            t = time.perf_counter()
            bridge.call(RequestId.START)
            samples.append(time.perf_counter() - t)
        result["round_trip_ms"] = statistics.median(samples) * 1000
        for _ in range(MEMORY_EXECS):
            assert bridge.wait(bridge.exec(["/bin/true"])) == 0
        result["rss_mib"], result["pss_mib"] = _smaps_mib(agent_pid(proc))
        samples = []
        for _ in range(EXECS):
            t = time.perf_counter()
            assert bridge.wait(bridge.exec(["/bin/true"])) == 0
            samples.append(time.perf_counter() - t)
        result["exec_ms"] = statistics.median(samples) * 1000
        if containers:
            result.update(_containers(bridge))
            # every container gone: what is left is the agent and its helpers (ours: the spawner)
            result["pss_after_containers_mib"] = sum(_smaps_mib(p)[1] for p in _tree(agent_pid(proc)))
        return result
    finally:
        host.close()
        try:  # ours ends at EOF (and its local-mode supervisor removes its cgroups)
            proc.wait(10 if ends_at_eof else 0)
        except subprocess.TimeoutExpired:
            proc.kill()  # the Go GCS serves stdin again after EOF, forever: it has to be killed
            proc.wait()


def _lifecycle(bridge: SyncBridge, cid: str, args: list[str]) -> tuple[float, int]:
    """CombinedLayers + Create + Start + init exec (+ Wait for /bin/true): (seconds, init pid)."""
    from gcs.host.samples import default_spec

    rootfs = f"/run/gcs/c/{cid}/rootfs"
    spec = default_spec(args, rootfs)
    spec["windows"]["network"]["networkNamespace"] = f"ref-{cid}"  # Go: one per standalone container
    config = {"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": f"/run/gcs/c/{cid}", "OciSpecification": spec}
    t = time.perf_counter()
    bridge.call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "CombinedLayers", "Settings": {
        "ContainerRootPath": rootfs, "Layers": [{"Path": "/run/layers/p0"}], "ScratchPath": f"/run/gcs/c/{cid}/scratch"}})
    bridge.call(RequestId.CREATE, cid, ContainerConfig=json.dumps(config))
    bridge.call(RequestId.START, cid)
    pid = bridge.call(RequestId.EXECUTE_PROCESS, cid, Settings={"ProcessParameters": "{}"})["ProcessId"]
    if args == ["/bin/true"]:
        assert bridge.call(RequestId.WAIT_FOR_PROCESS, cid, ProcessId=pid, TimeoutInMs=60000)["ExitCode"] == 0
    return time.perf_counter() - t, pid


def _remove(bridge: SyncBridge, cid: str) -> None:
    bridge.call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Remove", "ResourceType": "CombinedLayers",
                                                    "Settings": {"ContainerRootPath": f"/run/gcs/c/{cid}/rootfs"}})
    bridge.call(RequestId.DELETE_CONTAINER_STATE, cid)


def _containers(bridge: SyncBridge) -> dict:
    bridge.call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "VPMemDevice",
                                                    "Settings": {"DeviceNumber": 0, "MountPath": "/run/layers/p0"}})
    samples = []
    for i in range(CONTAINERS + 1):
        took, _ = _lifecycle(bridge, f"ref{i}", ["/bin/true"])
        if i:  # the first warms up (the native runtime's spawner starts)
            samples.append(took)
        _remove(bridge, f"ref{i}")
    result = {"container_ms": statistics.median(samples) * 1000}
    _, init = _lifecycle(bridge, "refexec", ["sleep", "600"])
    process = json.dumps({"OciProcess": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                                         "env": ["PATH=/bin"]}})
    samples = []
    for i in range(CONTAINER_EXECS + 1):
        t = time.perf_counter()
        pid = bridge.call(RequestId.EXECUTE_PROCESS, "refexec", Settings={"ProcessParameters": process})["ProcessId"]
        assert bridge.call(RequestId.WAIT_FOR_PROCESS, "refexec", ProcessId=pid, TimeoutInMs=60000)["ExitCode"] == 0
        if i:
            samples.append(time.perf_counter() - t)
    result["container_exec_ms"] = statistics.median(samples) * 1000
    bridge.call(RequestId.SHUTDOWN_FORCED, "refexec")
    bridge.call(RequestId.WAIT_FOR_PROCESS, "refexec", ProcessId=init, TimeoutInMs=60000)
    _remove(bridge, "refexec")
    return result


def _ours(devroot: str = "") -> dict:
    from gcs.host.launcher import agent_command, agent_env

    def agent_pid(proc: subprocess.Popen) -> int:  # local mode: the agent is the supervisor's child
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            return int(f.read().split()[0])

    extra = ["--dev-root", devroot] if devroot else []
    return measure(agent_command(["--local", "--bridge-stdio", "--exit-with-parent", "-loglevel", "info", *extra]),
                   agent_pid, agent_env(), containers=bool(devroot), ends_at_eof=True)


# --- the Go GCS's sandbox --------------------------------------------------------------------
def _cgroup_v1_mounts() -> list[tuple[str, str]]:
    """(mount point, this process's cgroup path) of every cgroup v1 hierarchy."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            number, controllers, path = line.rstrip("\n").split(":", 2)
            if number != "0":
                own[frozenset(controllers.split(","))] = path
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, options = right.split()[:3]
            if fstype != "cgroup":
                continue
            names = frozenset(o for o in options.split(",") if o not in ("rw", "ro") and "=" not in o or
                              o.startswith("name="))
            if names in own:
                found.append((left.split()[4], own[names]))
    return found


class Sandbox:
    """Throwaway cgroup directories (one per v1 hierarchy, under our own cgroups) and the
    command that runs a program in fresh namespaces with them as its /sys/fs/cgroup."""

    def __init__(self) -> None:
        self.dirs: list[tuple[str, str]] = []  # (mount point's basename, throwaway dir)
        tag = f"pygcs-ref-{os.getpid()}"
        try:
            for mount, path in _cgroup_v1_mounts():
                d = os.path.join(mount + path.rstrip("/"), tag)
                os.mkdir(d)
                self.dirs.append((os.path.basename(mount), d))
                if os.path.exists(os.path.join(d, "cpuset.cpus")):  # cpuset: empty until given its parent's
                    for key in ("cpuset.cpus", "cpuset.mems"):
                        with open(os.path.join(os.path.dirname(d), key)) as src, open(os.path.join(d, key), "w") as dst:
                            dst.write(src.read())
        except BaseException:
            self.close()
            raise
        if not self.dirs:
            raise RuntimeError("no cgroup v1 hierarchy found: the Go GCS sandbox is made for v1 here")

    def command(self, argv: list[str], pmem0: str = "") -> list[str]:
        """`pmem0`: a block device to appear as /dev/pmem0 (a private /dev then, with the host's
        usual nodes bound in)."""
        script = ["set -e", "mount --make-rprivate /", "mount -t tmpfs -o mode=755 pygcs-ref /run", "mkdir /run/stage"]
        if pmem0:
            rdev = os.stat(pmem0).st_rdev
            script += ["mkdir /run/dev", "mount --rbind /dev /run/dev", "mount -t tmpfs -o mode=755 pygcs-ref-dev /dev"]
            for node in ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "kmsg"):
                script += [f"touch /dev/{node}", f"mount --bind /run/dev/{node} /dev/{node}"]
            for sub in ("pts", "shm", "mqueue"):
                script.append(f"if [ -d /run/dev/{sub} ]; then mkdir /dev/{sub}; mount --rbind /run/dev/{sub} /dev/{sub}; fi")
            script += ["ln -s /proc/self/fd /dev/fd", f"mknod /dev/pmem0 b {os.major(rdev)} {os.minor(rdev)}"]
        for name, d in self.dirs:
            script += [f"mkdir /run/stage/{name}", f"mount --bind {d} /run/stage/{name}"]
        # a private tmpfs over /sys/fs/cgroup: the real hierarchies (and cgroup2's "unified")
        # are out of sight, each controller is its throwaway directory
        script.append("mount -t tmpfs -o mode=755 pygcs-ref-cgroup /sys/fs/cgroup")
        for name, _ in self.dirs:
            script += [f"mkdir /sys/fs/cgroup/{name}", f"mount --move /run/stage/{name} /sys/fs/cgroup/{name}"]
        script += ["rmdir /run/stage/* /run/stage", 'exec "$@"']
        if pmem0:
            script.insert(-1, "umount -l /run/dev && rmdir /run/dev")
        return ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--cgroup", "sh", "-c", "; ".join(script),
                "sh", *argv]

    def close(self) -> None:
        for _, d in reversed(self.dirs):
            for sub in ("gcs", "pods", ""):  # what the Go GCS made, then ours
                path = os.path.join(d, sub) if sub else d
                for _ in range(100):
                    try:
                        os.rmdir(path)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.02)  # its processes are still leaving
        self.dirs = []


def _go_inside(binary: str, containers: bool) -> None:
    """In the sandbox (pid 1 of its namespace): measure the Go GCS once, print JSON."""
    log = "/run/gcs-reference.log"
    argv = [binary, "-use-inouterr", "-v4", "-disable-time-sync", "-loglevel", "info", "-logfile", log]
    print(json.dumps(measure(argv, lambda proc: proc.pid, containers=containers)))


def _go(binary: str, sandbox: Sandbox, pmem0: str = "") -> dict:
    inner = [sys.executable, "-S", "-m", "bench.reference", "--inside", binary] + (["--containers"] if pmem0 else [])
    out = subprocess.run(sandbox.command(inner, pmem0),
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    if out.returncode != 0:
        raise RuntimeError(f"the Go GCS's run failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# (key, name, unit, the target ratio from issue 14)
MEASURES = (("start_ms", "agent start -> NegotiateProtocol answered (stdio)", "ms", "<= 1.0x"),
            ("round_trip_ms", "round trip: Start on the UVM id", "ms", "<= 1.0x"),
            ("exec_ms", "ExecuteProcess + WaitForProcess /bin/true in the UVM", "ms", "<= 1.0x"),
            ("pss_mib", "agent PSS after 50 UVM execs", "MiB", "<= 1.0x"),
            ("rss_mib", "agent RSS after 50 UVM execs", "MiB", "-"),
            ("container_ms", "container CombinedLayers+Create+Start+init+Wait /bin/true (Go: runc)", "ms",
             "<= 0.25x"),
            ("container_exec_ms", "exec /bin/true into a running container + Wait", "ms", "<= 0.2x"),
            ("pss_after_containers_mib", "PSS of the agent and its helpers (ours: + the spawner) after that", "MiB",
             "<= 1.0x"))


def bench_reference(tmp: str, report: Report) -> None:
    from gcs.host.images import attach_loop, detach_loop, make_layer_image
    from gcs.host.samples import busybox_rootfs

    binary = os.environ.get(ENV, "")
    if binary and not (os.access(binary, os.X_OK) and shutil.which("unshare")):
        raise RuntimeError(f"{ENV}={binary}: not an executable (or no unshare on this machine)")
    root = os.path.join(tmp, "reference")
    busybox_rootfs(os.path.join(root, "rootfs"))
    make_layer_image(os.path.join(root, "rootfs"), os.path.join(root, "busybox.img"))
    loop = attach_loop(os.path.join(root, "busybox.img"))
    devroot = os.path.join(root, "devroot")
    os.makedirs(os.path.join(devroot, "dev"))
    os.symlink(loop, os.path.join(devroot, "dev", "pmem0"))
    containers = bool(shutil.which("runc"))  # the Go GCS runs containers with runc
    ours: list[dict] = []
    go: list[dict] = []
    sandbox = Sandbox() if binary else None
    try:
        for _ in range(ROUNDS):  # alternating: the machine's drift hits both alike
            ours.append(_ours(devroot if containers else ""))
            if sandbox is not None:
                go.append(_go(binary, sandbox, loop if containers else ""))
    finally:
        if sandbox is not None:
            sandbox.close()
        detach_loop(loop)
    for key, name, unit, target in MEASURES:
        if key not in ours[0]:
            continue
        mine = statistics.median(r[key] for r in ours)
        if not go:
            report(name, mine, unit, "-", f"no reference: set {ENV}")
            continue
        theirs = statistics.median(r[key] for r in go)
        ratios = [o[key] / g[key] for o, g in zip(ours, go)]
        report(name, mine, unit, "-", f"{theirs:.3f} {unit}" if theirs < 10 else f"{theirs:.1f} {unit}")
        report("  ours / Go, per round", statistics.median(ratios),
               "x (" + ", ".join(f"{r:.2f}" for r in ratios) + ")", target, "-")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inside"]:
        _go_inside(sys.argv[2], "--containers" in sys.argv[3:])
    else:
        import tempfile

        from bench.__main__ import ROWS, report
        with tempfile.TemporaryDirectory(prefix="gcs-bench-") as tmp:
            bench_reference(tmp, report)
        for row in ROWS:
            print(" | ".join(row))
