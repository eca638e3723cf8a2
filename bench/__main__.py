"""Benchmarks of the agent in local mode (this machine) and in its UVM under QEMU, printed as
a table (`python -m bench uvm` for the UVM section alone).

Each figure is a median over repeated runs unless it says otherwise. Timings are noisy
(±30% run to run here): compare runs as ratios, side by side in one run.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench.syncbridge import SyncBridge
from gcs.host.launcher import agent_command, agent_env
from gcs.protocol.ids import BRIDGE_PORT, RequestId
from vmbus.hybrid import host_listen

# Targets from the GCS core issue; the Go GCS from shared/reference-figures.md (same machine kind).
ROWS: list[tuple[str, str, str, str]] = []


def report(name: str, value: float, unit: str, target: str, reference: str) -> None:
    shown = f"{value:.3f}" if value < 10 else f"{value:.1f}"
    ROWS.append((name, f"{shown} {unit}", target, reference))
    print(f"  {name}: {shown} {unit}", file=sys.stderr, flush=True)


class Agent:
    def __init__(self, directory: str, extra: list[str] | None = None) -> None:
        self.dir = directory
        self.vsock = os.path.join(directory, "vsock")
        self.listener = host_listen(self.vsock, BRIDGE_PORT)
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            agent_command(["--local", "--exit-with-parent", "--transport", f"hybrid:{self.vsock}",
                           "-loglevel", "warning", *(extra or [])]),
            env=agent_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(directory, "gcs.log"), "ab"))
        conn, _ = self.listener.accept()
        self.bridge = SyncBridge(conn)
        self.bridge.negotiate()
        self.startup = time.perf_counter() - t0

    @property
    def pid(self) -> int:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return int(f.read().split()[0])

    def rss_mib(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        try:
            self.bridge.call(RequestId.SHUTDOWN_GRACEFUL)
        except (OSError, EOFError, RuntimeError):
            pass
        self.bridge.sock.close()
        self.listener.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def bench_startup(tmp: str, runs: int = 15) -> None:
    samples = []
    for i in range(runs):
        d = os.path.join(tmp, f"start{i}")
        os.makedirs(d)
        agent = Agent(d)
        samples.append(agent.startup)
        agent.stop()
    report("agent start -> NegotiateProtocol answered", median_ms(samples), "ms", "<= 60 ms", "42 ms")


def bench_round_trip(agent: Agent, n: int = 3000) -> None:
    call = agent.bridge.call
    for _ in range(200):
        call(RequestId.START)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call(RequestId.START)
        samples.append(time.perf_counter() - t0)
    report("cheap request round trip (Start)", median_ms(samples), "ms", "<= 0.3 ms", "0.19 ms")


def bench_exec(agent: Agent, n: int = 1000) -> None:
    b = agent.bridge
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        code = b.wait(b.exec(["/bin/true"]))
        samples.append(time.perf_counter() - t0)
        assert code == 0
    report("exec+wait /bin/true in the UVM", median_ms(samples), "ms", "<= 2 ms", "1.6 ms")


def bench_stdout(agent: Agent, mib: int = 2048) -> None:
    port = 0x40000001 + 7
    listener = host_listen(agent.vsock, port, backlog=1)
    b = agent.bridge
    pp = {"CommandArgs": ["dd", "if=/dev/zero", "bs=1M", f"count={mib}", "status=none"],
          "WorkingDirectory": "/", "Environment": {"PATH": "/usr/bin:/bin"}, "CreateStdOutPipe": True}
    t0 = time.perf_counter()
    pid = b.call(RequestId.EXECUTE_PROCESS, Settings={"ProcessParameters": json.dumps(pp),
                                                      "VsockStdioRelaySettings": {"StdOut": port}})["ProcessId"]
    conn, _ = listener.accept()
    listener.close()
    os.unlink(f"{agent.vsock}_{port}")
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    while True:
        n = conn.recv_into(view)
        if not n:
            break
        total += n
    elapsed = time.perf_counter() - t0
    conn.close()
    assert b.wait(pid) == 0 and total == mib << 20
    report(f"stdout relay throughput ({mib} MiB, one run)", total / elapsed / 1e6, "MB/s", ">= 1000 MB/s", "-")


def bench_storage(tmp: str, layers: int = 10, rounds: int = 30) -> None:
    """pmem layer mount and a 10-layer overlay, on loop devices over real ext4 images."""
    from gcs.host.images import attach_loop, detach_loop, make_layer_image

    root = os.path.join(tmp, "storage")
    dev = os.path.join(root, "devroot", "dev")
    os.makedirs(dev)
    loops: list[str] = []
    try:
        for i in range(layers):
            src = os.path.join(root, f"l{i}")
            os.makedirs(os.path.join(src, "etc"))
            with open(os.path.join(src, "etc", f"layer{i}"), "w") as f:
                f.write(str(i))
            image = os.path.join(root, f"l{i}.img")
            make_layer_image(src, image)
            loop = attach_loop(image)
            loops.append(loop)
            os.symlink(loop, os.path.join(dev, f"pmem{i}"))
        os.makedirs(os.path.join(root, "uvm"))
        agent = Agent(os.path.join(root, "uvm"), ["--dev-root", os.path.join(root, "devroot")])
        call = agent.bridge.call

        def modify(kind: str, request: str, settings: dict) -> float:
            t0 = time.perf_counter()
            call(RequestId.MODIFY_SETTINGS, Request={"RequestType": request, "ResourceType": kind, "Settings": settings})
            return time.perf_counter() - t0

        try:
            mount_s, umount_s = [], []
            for _ in range(rounds):
                mount_s.append(modify("VPMemDevice", "Add", {"DeviceNumber": 0, "MountPath": "/run/layers/p0"}))
                umount_s.append(modify("VPMemDevice", "Remove", {"DeviceNumber": 0, "MountPath": "/run/layers/p0"}))
            report("VPMemDevice Add (mount one pmem layer)", median_ms(mount_s), "ms", "<= 5 ms", "-")
            report("VPMemDevice Remove", median_ms(umount_s), "ms", "-", "-")
            for i in range(layers):
                modify("VPMemDevice", "Add", {"DeviceNumber": i, "MountPath": f"/run/layers/p{i}"})
            spec = {"ContainerRootPath": "/run/gcs/c/b/rootfs", "ScratchPath": "/run/gcs/c/b/scratch",
                    "Layers": [{"Path": f"/run/layers/p{i}"} for i in range(layers)]}
            add_s, remove_s = [], []
            for _ in range(rounds):
                add_s.append(modify("CombinedLayers", "Add", spec))
                remove_s.append(modify("CombinedLayers", "Remove", {"ContainerRootPath": "/run/gcs/c/b/rootfs"}))
            report(f"CombinedLayers Add ({layers} layers + scratch)", median_ms(add_s), "ms", "-", "0.61 ms")
            report("CombinedLayers Remove", median_ms(remove_s), "ms", "-", "0.53 ms")
        finally:
            agent.stop()
    finally:
        for loop in loops:
            detach_loop(loop)


def _container_lifecycle(call, cid: str, args: list[str], seccomp: dict | None = None) -> tuple[float, float]:
    """Overlay + Create + Start + init exec + Wait + Remove + Delete: (lifecycle, full) seconds."""
    from gcs.host.samples import default_spec

    t0 = time.perf_counter()
    rootfs = f"/run/gcs/c/{cid}/rootfs"
    call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "CombinedLayers",
         "Settings": {"ContainerRootPath": rootfs, "Layers": [{"Path": "/run/layers/p0"}],
                      "ScratchPath": f"/run/gcs/c/{cid}/scratch/{cid}"}})
    t1 = time.perf_counter()
    config = {"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": f"/run/gcs/c/{cid}",
              "OciSpecification": default_spec(args, rootfs)}
    if seccomp is not None:
        config["OciSpecification"]["linux"]["seccomp"] = seccomp
    call(RequestId.CREATE, cid, ContainerConfig=json.dumps(config))
    call(RequestId.START, cid)
    pid = call(RequestId.EXECUTE_PROCESS, cid, Settings={"ProcessParameters": "{}"})["ProcessId"]
    if args == ["/bin/true"]:
        assert call(RequestId.WAIT_FOR_PROCESS, cid, ProcessId=pid, TimeoutInMs=0xFFFFFFFF)["ExitCode"] == 0
    t2 = time.perf_counter()
    if args != ["/bin/true"]:
        return t2 - t1, 0.0
    call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Remove", "ResourceType": "CombinedLayers",
                                             "Settings": {"ContainerRootPath": rootfs}})
    call(RequestId.DELETE_CONTAINER_STATE, cid)
    return t2 - t1, time.perf_counter() - t0


# Runs go in blocks per runtime, blocks alternating, so that drift of the machine hits both
# alike. Not one by one: each lifecycle leaves deferred kernel work (network namespace and
# cgroup teardown) that would land in the other runtime's next run. Not with pauses either:
# an idle vCPU here takes milliseconds to wake, which would swamp what is measured.
BLOCK = 10


def bench_containers(tmp: str, runs: int = 40, execs: int = 100) -> None:
    """Container create+start+exit and exec+wait, native and runc side by side: one agent
    each, runs interleaved so that the machine's drift hits both alike."""
    from gcs.host.images import attach_loop, detach_loop, make_layer_image
    from gcs.host.samples import busybox_rootfs

    root = os.path.join(tmp, "containers")
    busybox_rootfs(os.path.join(root, "rootfs"))
    image = os.path.join(root, "busybox.img")
    make_layer_image(os.path.join(root, "rootfs"), image)
    loop = attach_loop(image)
    runtimes = ("native", "runc")
    agents: dict[str, Agent] = {}
    samples: dict[str, dict[str, list[float]]] = {r: {"lifecycle": [], "full": [], "exec": [], "seccomp": []}
                                                  for r in runtimes}
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "seccomp_profiles",
                           "containerd-runtime-default.json")) as f:
        profile = json.load(f)
    try:
        for runtime in runtimes:
            devroot = os.path.join(root, runtime, "devroot")
            os.makedirs(os.path.join(devroot, "dev"))
            os.symlink(loop, os.path.join(devroot, "dev", "pmem0"))
            os.makedirs(os.path.join(root, runtime, "uvm"))
            agents[runtime] = Agent(os.path.join(root, runtime, "uvm"), ["--dev-root", devroot, "--runtime", runtime])
            agents[runtime].bridge.call(RequestId.MODIFY_SETTINGS, Request={
                "RequestType": "Add", "ResourceType": "VPMemDevice", "Settings": {"MountPath": "/run/layers/p0"}})
        for block in range(0, runs, BLOCK):
            for runtime in runtimes:
                for i in range(block, block + BLOCK + 1):
                    lifecycle, full = _container_lifecycle(agents[runtime].bridge.call, f"b{i}", ["/bin/true"])
                    if i > block:  # the first of a block warms up
                        samples[runtime]["lifecycle"].append(lifecycle)
                        samples[runtime]["full"].append(full)
                for i in range(block, block + BLOCK + 1):
                    lifecycle, _ = _container_lifecycle(agents[runtime].bridge.call, f"s{i}", ["/bin/true"], profile)
                    if i > block:
                        samples[runtime]["seccomp"].append(lifecycle)
        process = json.dumps({"OciProcess": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                                             "env": ["PATH=/bin"]}})
        for runtime in runtimes:
            _container_lifecycle(agents[runtime].bridge.call, "execs", ["sleep", "600"])
        for block in range(0, execs, BLOCK):
            for runtime in runtimes:
                call = agents[runtime].bridge.call
                for i in range(BLOCK + 1):
                    t0 = time.perf_counter()
                    pid = call(RequestId.EXECUTE_PROCESS, "execs", Settings={"ProcessParameters": process})["ProcessId"]
                    assert call(RequestId.WAIT_FOR_PROCESS, "execs", ProcessId=pid,
                                TimeoutInMs=0xFFFFFFFF)["ExitCode"] == 0
                    if i:
                        samples[runtime]["exec"].append(time.perf_counter() - t0)
        spawner = _memory_of_spawner(agents["native"].pid)
    finally:
        for agent in agents.values():
            agent.stop()
        detach_loop(loop)
    native = {k: median_ms(v) for k, v in samples["native"].items()}
    runc = {k: median_ms(v) for k, v in samples["runc"].items()}
    report("container Create+Start+init exec+Wait /bin/true (native)", native["lifecycle"], "ms", "<= 10 ms", "45 ms")
    report("  same with --runtime runc", runc["lifecycle"], "ms", "-", "45 ms")
    report("  native speed-up over runc", runc["lifecycle"] / native["lifecycle"], "x", ">= 4x", "-")
    report("same with containerd's RuntimeDefault seccomp profile (native)", native["seccomp"], "ms", "-", "-")
    report("  same with --runtime runc", runc["seccomp"], "ms", "-", "-")
    report("  the profile's added cost (native)", native["seccomp"] - native["lifecycle"], "ms", "<= 1 ms", "-")
    report("  native speed-up over runc with the profile", runc["seccomp"] / native["seccomp"], "x", ">= 4x", "-")
    report("full lifecycle incl. overlay + DeleteContainerState (native)", native["full"], "ms", "-", "55 ms")
    report("  same with --runtime runc", runc["full"], "ms", "-", "55 ms")
    report("exec+wait /bin/true in a running container (native)", native["exec"], "ms", "<= 4 ms", "18.6 ms")
    report("  same with --runtime runc", runc["exec"], "ms", "-", "18.6 ms")
    report("  native speed-up over runc", runc["exec"] / native["exec"], "x", "-", "-")
    if spawner:
        report("native runtime's spawner process RSS (PSS)", spawner[0], f"MiB ({spawner[1]:.1f})", "-", "-")


def _memory_of_spawner(agent_pid: int) -> tuple[float, float] | None:
    """RSS and PSS of the native runtime's spawner (a child of the agent), in MiB."""
    with open(f"/proc/{agent_pid}/task/{agent_pid}/children") as f:
        children = f.read().split()
    for pid in children:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"gcs.containers.native.spawner" not in f.read():
                    continue
            with open(f"/proc/{pid}/smaps_rollup") as f:
                fields = {line.split(":")[0]: int(line.split()[1]) for line in f if line.endswith("kB\n")}
            return fields["Rss"] / 1024, fields["Pss"] / 1024
        except (OSError, KeyError, ValueError):
            continue
    return None


def bench_vsock(tmp: str, mib: int = 256) -> None:
    """The vhost-user-vsock back-end with the real guest driver, under TCG (QEMU, no KVM here)."""
    import re
    import shutil
    import threading

    from gcs.host.testguest import boot, build_image, connect_when_listening
    from vmbus.hybrid import host_listen

    if not shutil.which("qemu-system-x86_64"):
        print("  vsock: qemu-system-x86_64 not installed, skipped", file=sys.stderr)
        return
    image = build_image()
    # guest -> host: the host side times the stream and samples the back-end's CPU time over it
    from gcs.host.testguest import qemu_argv, start_backend

    d = os.path.join(tmp, "vs1")
    os.makedirs(d)
    listener = host_listen(os.path.join(d, "vsock"), 5000)
    timing: dict[str, float] = {}
    backend = start_backend(d)

    def cpu_seconds(pid: int) -> float:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def sink() -> None:
        conn, _ = listener.accept()
        total, t0, c0 = 0, 0.0, 0.0
        while chunk := conn.recv(1 << 20):
            if not t0:
                t0, c0 = time.perf_counter(), cpu_seconds(backend.pid)
            total += len(chunk)
        elapsed = time.perf_counter() - t0
        timing["g2h"] = total / elapsed / 1e6
        timing["cpu"] = (cpu_seconds(backend.pid) - c0) / elapsed * 100
        conn.sendall(b"done")
        conn.close()

    threading.Thread(target=sink, daemon=True).start()
    subprocess.run(qemu_argv(image, d, f"bulk 5000 {mib}"),
                   capture_output=True, timeout=600)
    backend.wait(10)
    listener.close()
    if "g2h" in timing:
        report(f"vsock guest->host throughput ({mib} MiB, TCG)", timing["g2h"], "MB/s", "-", "-")
        report("  back-end CPU while the guest streams", timing["cpu"], "% of a core", "< 50%", "-")
    # host -> guest
    d = os.path.join(tmp, "vs2")
    os.makedirs(d)

    def source() -> None:
        sock = connect_when_listening(os.path.join(d, "vsock"), 6000)
        if sock is None:
            return
        chunk = bytes(1 << 20)
        t0 = time.perf_counter()
        for _ in range(mib):
            sock.sendall(chunk)
        sock.shutdown(1)
        sock.recv(1)
        timing["h2g"] = mib * (1 << 20) / (time.perf_counter() - t0) / 1e6
        sock.close()

    threading.Thread(target=source, daemon=True).start()
    out, _, _ = boot(image, d, "sink 6000", timeout=600)
    if "h2g" in timing:
        report(f"vsock host->guest throughput ({mib} MiB, TCG)", timing["h2g"], "MB/s", "-", "-")
    # connect latency, measured in the guest
    d = os.path.join(tmp, "vs3")
    os.makedirs(d)
    listener = host_listen(os.path.join(d, "vsock"), 5001, backlog=64)

    def accept_all() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=accept_all, daemon=True).start()
    out, _, _ = boot(image, d, "latency 5001 50")
    listener.close()
    match = re.search(r"connect median ([0-9.]+) ms", out)
    if match:
        report("vsock guest connect latency (TCG)", float(match.group(1)), "ms", "-", "-")


def bench_soak(seconds: float = 60.0, seed: int = 1) -> None:
    """The soak with chaos (tests/soak.py) for a minute, the same seed each time: ops/s,
    latencies, RSS over time (build/soak.svg). `make soak` runs ten minutes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "tests"))
    import soak

    os.makedirs(os.path.join(root, "build"), exist_ok=True)
    result = soak.soak(seconds, seed, svg=os.path.join(root, "build", "soak.svg"))
    report(f"soak with chaos ({seconds:.0f} s, seed {seed}): operations", result.steps / result.seconds, "ops/s",
           "-", "-")
    for action in ("create", "exec", "stop"):
        values = sorted(result.latencies.get(action) or [0.0])
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        report(f"  {action}: p50 / p99", statistics.median(values) * 1000, f"/ {p99 * 1000:.1f} ms", "-", "-")
    report("  agent RSS growth over the soak (build/soak.svg)", result.rss_growth(), "MiB", "flat", "-")
    report("  violations (leaks, lost or repeated notifications)", len(result.violations), "", "0", "-")


def bench_core(tmp: str) -> None:
    bench_startup(tmp)
    os.makedirs(os.path.join(tmp, "main"))
    agent = Agent(os.path.join(tmp, "main"))
    try:
        report("agent RSS after start", agent.rss_mib(), "MiB", "-", "12.8 MB")
        bench_round_trip(agent)
        bench_exec(agent)
        report("agent RSS after 1,000 execs", agent.rss_mib(), "MiB", "<= 25 MiB", "16.6 MB after 50 execs")
        bench_stdout(agent)
    finally:
        agent.stop()


def main() -> int:
    if os.geteuid() != 0:
        print("make bench needs root (local mode uses namespaces)", file=sys.stderr)
        return 1
    print(f"benchmarks: local mode, {os.cpu_count()} cores, {sys.executable} -S", file=sys.stderr)
    known = ("core", "reference", "storage", "containers", "network", "soak", "vsock", "uvm")
    sections = set(sys.argv[1:]) or set(known)
    unknown = sections - set(known)
    if unknown:
        print(f"unknown sections {sorted(unknown)}: choose from {' '.join(known)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gcs-bench-") as tmp:
        if "core" in sections:
            bench_core(tmp)
        if "reference" in sections:  # side by side with the Go GCS when PYGCS_REFERENCE_GCS names it
            from bench.reference import bench_reference
            bench_reference(tmp, report)
        if "storage" in sections:
            bench_storage(tmp)
        if "containers" in sections:
            bench_containers(tmp)
        if "network" in sections:
            from bench.network import bench_network
            bench_network(tmp, report, Agent)
        if "soak" in sections:
            bench_soak()
        if "vsock" in sections:
            bench_vsock(tmp)
        if "uvm" in sections:
            from bench.uvm import bench_uvm
            bench_uvm(tmp, report)
    width = [max(len(r[i]) for r in ROWS + [("measure", "pygcs", "target", "Go GCS (reference)")])
             for i in range(4)]
    header = ("measure", "pygcs", "target", "Go GCS (reference)")
    print(" | ".join(h.ljust(w) for h, w in zip(header, width)))
    print("-|-".join("-" * w for w in width))
    for row in ROWS:
        print(" | ".join(c.ljust(w) for c, w in zip(row, width)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
