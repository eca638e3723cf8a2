"""`python -m bench uvm`: the agent in its UVM under QEMU (TCG on this project's machines:
every figure here is an emulated guest's, ~10x slower than KVM for Python).

Boot figures alternate the agent with a negotiate-only Python agent in the same image, so
the ratio between the two is what to compare from run to run."""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
import time
from typing import Callable

from gcs.host.launcher import REPO_ROOT
from gcs.protocol.ids import RequestId

Report = Callable[[str, float, str, str, str], None]
MINIMAL = "/opt/bench/minimal_agent.py"


def _boot_figures(vm) -> dict[str, float]:
    """QEMU start -> /init -> agent exec -> negotiated, from the host's clock and the guest's."""
    console = open(vm.console_log).read()
    init_up = float(re.search(r"kernel up ([\d.]+) s", console).group(1))
    exec_up = float(re.search(r"started \S+ \(pid \d+\) at uptime ([\d.]+) s", console).group(1))
    negotiated = vm.timings["negotiated"]
    figures = {"negotiated": negotiated, "init_to_exec": exec_up - init_up, "kernel": init_up}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        match = re.search(r'first negotiation answered","since_exec_ms":(\d+)', open(vm.log_path).read())
        if match:
            since_exec = int(match.group(1)) / 1000
            figures["agent"] = since_exec
            figures["qemu_to_init"] = negotiated - since_exec - (exec_up - init_up)
            break
        time.sleep(0.05)
    return figures


def _smaps_pss(vm, pid: int) -> tuple[float, float]:
    out, _, _ = vm.client.run(["sh", "-c", f"grep -E '^(Rss|Pss):' /proc/{pid}/smaps_rollup"])
    values = dict(line.split()[:2] for line in out.decode().splitlines())
    return int(values["Rss:"]) / 1024, int(values["Pss:"]) / 1024


def bench_uvm(tmp: str, report: Report, rounds: int = 3) -> None:
    from gcs.host.broker import InProcessDeviceClient
    from gcs.host.cli import ensure_image
    from gcs.host.demo import demo_image
    from gcs.host.qemu import IMAGE_DIR, INIT_ARGS, QemuUvm, image_with_extras
    from gcs.host.run import ContainerRun, RunOptions

    if not shutil.which("qemu-system-x86_64"):
        print("  uvm: qemu-system-x86_64 not installed, skipped", file=sys.stderr)
        return
    ensure_image(IMAGE_DIR, quiet=True)
    with open(os.path.join(IMAGE_DIR, "manifest.json")) as f:
        manifest = json.load(f)
    minimal_image = image_with_extras(IMAGE_DIR, os.path.join(tmp, "minimal"),
                                      {MINIMAL: os.path.join(REPO_ROOT, "bench", "minimal_agent.py")})
    minimal_args = INIT_ARGS.split(" /bin/gcs")[0] + f" /usr/bin/python3.11 -S {MINIMAL}"

    ours: list[dict[str, float]] = []
    floor: list[dict[str, float]] = []
    for i in range(rounds):  # alternating, so both see the same machine
        for kind in ("ours", "minimal"):
            directory = os.path.join(tmp, f"{kind}{i}")
            vm = QemuUvm(directory) if kind == "ours" else QemuUvm(directory, image_dir=minimal_image,
                                                                     init_args=minimal_args)
            try:
                vm.start()
                (ours if kind == "ours" else floor).append(_boot_figures(vm))
            finally:
                vm.stop()

    def med(rows: list[dict[str, float]], key: str) -> float:
        values = [r[key] for r in rows if key in r]
        return statistics.median(values) if values else float("nan")

    report("UVM boot, QEMU start -> /init (TCG)", med(ours, "qemu_to_init"), "s", "-", "-")
    report("  of which the kernel (its uptime at /init)", med(ours, "kernel"), "s", "-", "-")
    report("  /init -> agent exec (mounts, vsock modules, entropy)", med(ours, "init_to_exec") * 1000, "ms", "-", "-")
    report("  agent exec -> NegotiateProtocol answered (in the UVM)", med(ours, "agent"), "s", "<= 0.6 s",
           "0.35 s (Go)")
    report("QEMU start -> negotiated (host clock)", med(ours, "negotiated"), "s", "<= 3.5 s", "2.89 s (Go)")
    report("  negotiate-only Python agent, same run", med(floor, "negotiated"), "s", "-", "3.25 s")
    report("  ours / negotiate-only", med(ours, "negotiated") / med(floor, "negotiated"), "x", "-", "-")

    # one UVM for the rest: exec, stdout, a container from a cached image, memory
    vm = QemuUvm(os.path.join(tmp, "work"))
    vm.start()
    try:
        assert vm.client is not None and vm.bridge is not None
        t0 = time.perf_counter()
        vm.client.run(["true"])
        report("first exec+wait /bin/true right after negotiation", (time.perf_counter() - t0) * 1000, "ms",
               "no warm-up stall", "-")
        time.sleep(5)  # warm-up and background modules done
        samples = []
        for _ in range(30):
            t0 = time.perf_counter()
            vm.client.run(["true"])
            samples.append(time.perf_counter() - t0)
        report("exec+wait /bin/true over vsock (pipes)", statistics.median(samples) * 1000, "ms", "-",
               "28-35 ms before")
        mib = 128
        for block in ("64k", "4k"):  # a UVM process writes to the vsock socket itself (protocol.md 5.4)
            proc = vm.client.exec(["dd", "if=/dev/zero", f"bs={block}", f"count={(mib << 20) // (int(block[:-1]) << 10)}"],
                                  stdout=True)
            total, t0 = 0, time.perf_counter()
            while chunk := proc.stdout.recv(1 << 20):
                total += len(chunk)
            elapsed = time.perf_counter() - t0
            proc.communicate()
            report(f"stdout over vsock, {block} writes ({mib} MiB)", total / elapsed / 1e6, "MB/s", "-", "-")

        devices = InProcessDeviceClient(vm, report=lambda *_, **__: None)
        image = demo_image(os.path.join(tmp, "demo"))
        os.environ.setdefault("GCSCTL_CACHE", os.path.join(tmp, "layers"))
        runs = []
        for i in range(4):
            t0 = time.perf_counter()
            run = ContainerRun(vm.bridge, devices, vm.dir, RunOptions(image, ["/bin/true"]), report=print)
            try:
                run.create(run.prepare())
                init = vm.client.exec([], container_id=run.id, stdout=True, stderr=True, init_process=True)
                init.communicate()
            finally:
                run.teardown()
            runs.append(time.perf_counter() - t0)
        report("container from a cached image, /bin/true (layers, scratch, create, run, teardown)",
               statistics.median(runs[1:]), "s", "-", "-")
        out, _, _ = vm.client.run(["sh", "-c", "ps -o pid,args | grep -e 'SE /bin/gc[s]' -e 'native.spawne[r]'"])
        pids = {("agent" if "/bin/gcs" in line else "spawner"): int(line.split()[0])
                for line in out.decode().splitlines()}
        agent_rss, agent_pss = _smaps_pss(vm, pids["agent"])
        spawner_rss, spawner_pss = _smaps_pss(vm, pids["spawner"]) if "spawner" in pids else (0.0, 0.0)
        report("agent RSS (PSS) in the UVM", agent_rss, f"MiB ({agent_pss:.1f})", "-", "-")
        report("spawner RSS (PSS) in the UVM", spawner_rss, f"MiB ({spawner_pss:.1f})", "-", "-")
        report("agent + spawner PSS in the UVM", agent_pss + spawner_pss, "MiB", "< 16.6 MB", "16.6 MB RSS (Go)")
    finally:
        vm.bridge.call(RequestId.SHUTDOWN_GRACEFUL)
        vm.wait(30)
        vm.stop()
    report("initrd.img (uncompressed cpio)", manifest["initrd_bytes"] / 2**20, "MiB", "<= 30 MiB", "25.8 MB (Go + runc)")
