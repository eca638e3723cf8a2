"""A bounded soak with chaos against a local-mode agent (native runtime): containers come
and go while execs run in them, and at random a process or a container init is killed,
the host connection drops, or a container's scratch disk is full when it is created.

After every step: no zombie left under the agent (a moment to reap allowed). At every
quiet point (all containers gone, every few dozen steps) what the agent holds is back
to where it started: fds, tasks, containers, execs, mounts, overlays, cgroups, network
namespaces. At the end: every container created got exactly one exit notification, and
the agent's RSS is flat (the last fifth of the samples against the first, after warm-up).

    python3 tests/soak.py [--seconds N] [--seed S] [--svg FILE] [--json FILE]   (root)

It prints ops/s and p50/p99 latency per operation, and writes RSS and latency over time
as an SVG (`make soak`: ten minutes, build/soak.svg)."""
from __future__ import annotations

import glob
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)

from containers_env import busybox_layer, default_spec  # noqa: E402
from gcs.host.bridge_client import RpcError, counters  # noqa: E402
from gcs.host.launcher import LocalUvm  # noqa: E402
from gcs.protocol.hresult import VMCOMPUTE_TIMEOUT  # noqa: E402
from gcs.protocol.ids import RequestId  # noqa: E402
from storage_env import DeviceTree, Loops, agent_cgroups  # noqa: E402

SLOTS = 3            # containers alive at once at most
MAX_POINTS = 1500    # per panel of the SVG
QUIET_EVERY = 40     # steps between quiet points
DISK_LUN, DISK_HOST = 1, 0
HELD = ("open_fds", "tasks", "containers", "container_execs", "storage_mounts", "overlays", "uvm_processes",
        "reaper_watches", "network_namespaces")
ACTIONS = (("create", 4), ("exec", 8), ("kill_exec", 2), ("stop", 3), ("kill_init", 1), ("disconnect", 1),
           ("full_disk", 1))
ZERO = "00000000-0000-0000-0000-000000000000"
# A container's init: pid 1 of its namespace ignores signals it has no handler for, so it
# traps SIGTERM (exit 3); SIGKILL from outside ends it anyway (137).
INIT = ["sh", "-c", "trap 'exit 3' TERM; sleep 600 & wait"]


@dataclass
class Report:
    seed: int
    seconds: float = 0.0
    steps: int = 0
    latencies: dict = field(default_factory=dict)      # action -> [seconds]
    samples: list = field(default_factory=list)        # (t, rss MiB, exec latency ms or None)
    violations: list = field(default_factory=list)
    created: int = 0
    notified: int = 0
    quiet_points: int = 0

    def ok(self) -> bool:
        return not self.violations

    def rss_growth(self) -> float:
        """MiB: the median RSS of the last fifth of the run minus that of the first fifth
        (after the first 10% as warm-up)."""
        rss = [s[1] for s in self.samples]
        rss = rss[len(rss) // 10:]
        if len(rss) < 10:
            return 0.0
        fifth = len(rss) // 5
        return statistics.median(rss[-fifth:]) - statistics.median(rss[:fifth])

    def summary(self) -> str:
        lines = [f"soak: seed={self.seed} {self.seconds:.0f} s, {self.steps} steps "
                 f"({self.steps / max(self.seconds, 1e-9):.1f} ops/s), {self.created} containers, "
                 f"{self.notified} notifications, {self.quiet_points} quiet points, "
                 f"RSS growth {self.rss_growth():+.2f} MiB, violations {len(self.violations)}"]
        for action, values in sorted(self.latencies.items()):
            values = sorted(values)
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            lines.append(f"  {action:10} n={len(values):5} p50 {statistics.median(values) * 1000:7.2f} ms"
                         f"  p99 {p99 * 1000:7.2f} ms")
        return "\n".join(lines + [f"  violation: {v}" for v in self.violations[:10]])


class Soak:
    def __init__(self, tmp: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.loops = Loops()
        self.uvm: LocalUvm | None = None
        self.live: dict[str, int] = {}     # container id -> init pid
        self.created: list[str] = []
        self.serial = 0
        self.t0 = time.monotonic()
        try:
            self._setup(tmp)
        except BaseException:
            self.close()
            raise

    def _setup(self, tmp: str) -> None:
        self.tree = DeviceTree(tmp, self.loops)
        self.tree.add_pmem(0, busybox_layer(os.path.join(tmp, "layer")))
        self.tree.add_controller(0, DISK_HOST)
        self.tree.add_scsi_disk(DISK_HOST, DISK_LUN, self.tree.scratch("disk", size=24 << 20))
        self.uvm = LocalUvm(os.path.join(tmp, "uvm"), loglevel="info", extra_args=self.tree.args()).start()
        self.bridges = [self.uvm.bridge]
        self.call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "VPMemDevice",
                                                      "Settings": {"DeviceNumber": 0, "MountPath": "/run/layers/p0"}})
        # Warm-up: the first container starts the native runtime's spawner (its socket, pidfd
        # and reaper watch stay): the baseline is what the agent holds after it.
        self._start(self._new_id())
        self.stop()
        self.baseline = self.held()

    # --- the host's side -----------------------------------------------------------------
    def call(self, ident: int, container_id: str = ZERO, **fields):
        return self.uvm.bridge.call(ident, container_id, **fields)

    def modify(self, resource: str, settings: dict, request_type: str = "Add") -> None:
        self.call(RequestId.MODIFY_SETTINGS, Request={"RequestType": request_type, "ResourceType": resource,
                                                      "Settings": settings})

    def held(self) -> dict[str, int]:
        found = counters(self.call(RequestId.DUMP_STACKS)["GuestStacks"])
        return {k: found.get(k, 0) for k in HELD}

    def exec(self, cid: str, args: list[str]) -> int:
        reply = self.call(RequestId.EXECUTE_PROCESS, cid, Settings={"ProcessParameters": json.dumps({
            "OciProcess": {"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]}})})
        return reply["ProcessId"]

    def wait(self, cid: str, pid: int, timeout_ms: int = 20000) -> int:
        return self.call(RequestId.WAIT_FOR_PROCESS, cid, ProcessId=pid, TimeoutInMs=timeout_ms)["ExitCode"]

    def signal(self, cid: str, pid: int, signum: int) -> None:
        self.call(RequestId.SIGNAL_PROCESS, cid, ProcessId=pid, Options={"Signal": signum})

    # --- actions ------------------------------------------------------------------------------
    def _new_id(self) -> str:
        self.serial += 1
        return f"soak{self.serial}"

    def _start(self, cid: str, bundle: str = "", scratch: str = "") -> None:
        bundle = bundle or f"/run/gcs/c/{cid}"
        rootfs = f"{bundle}/rootfs"
        self.modify("CombinedLayers", {"ContainerID": cid, "ContainerRootPath": rootfs,
                                       "Layers": [{"Path": "/run/layers/p0"}],
                                       "ScratchPath": scratch or f"{bundle}/scratch/{cid}"})
        config = {"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": bundle,
                  "OciSpecification": default_spec(INIT, rootfs)}
        self.uvm.bridge.known_containers.add(cid)
        try:
            self.call(RequestId.CREATE, cid, ContainerConfig=json.dumps(config))
        except RpcError:
            self.uvm.bridge.known_containers.discard(cid)
            self.modify("CombinedLayers", {"ContainerRootPath": rootfs}, "Remove")
            raise
        self.created.append(cid)
        self.call(RequestId.START, cid)
        pid = self.call(RequestId.EXECUTE_PROCESS, cid, Settings={"ProcessParameters": "{}"})["ProcessId"]
        self.live[cid] = pid

    def create(self) -> None:
        if len(self.live) >= SLOTS:
            return self.stop()
        self._start(self._new_id())

    def _end(self, cid: str, signum: int, expected: int) -> None:
        pid = self.live.pop(cid)
        self.signal(cid, pid, signum)
        try:
            code = self.wait(cid, pid, 2000)
        except RpcError as err:
            if err.hresult != VMCOMPUTE_TIMEOUT or signum == 9:
                raise
            # SIGTERM before the shell set its trap (pid 1 ignores it then): forced, as a host would
            self.signal(cid, pid, 9)
            code, expected = self.wait(cid, pid), 137
        if code != expected:
            self.violate(f"{cid}: init exit code {code} after signal {signum}, expected {expected}")
        bundle = "/run/gcs/disk" if cid.endswith("-disk") else f"/run/gcs/c/{cid}"
        self.modify("CombinedLayers", {"ContainerRootPath": f"{bundle}/rootfs"}, "Remove")
        self.call(RequestId.DELETE_CONTAINER_STATE, cid)
        if cid.endswith("-disk"):  # the host drops a container's scratch: emptied here, the disk is reused
            self.uvm.client.run(["rm", "-rf", "/run/gcs/disk/scratch"])
            self.modify("MappedVirtualDisk", {"MountPath": "/run/gcs/disk", "Lun": DISK_LUN}, "Remove")

    def stop(self) -> None:
        if self.live:
            self._end(self.rng.choice(sorted(self.live)), 15, 3)

    def kill_init(self) -> None:
        if self.live:
            self._end(self.rng.choice(sorted(self.live)), 9, 137)

    def exec_(self) -> None:
        if not self.live:
            return self.create()
        cid = self.rng.choice(sorted(self.live))
        t = time.monotonic()
        code = self.wait(cid, self.exec(cid, ["/bin/true"]))
        self.report.samples.append((time.monotonic() - self.t0, self.rss(), (time.monotonic() - t) * 1000))
        if code != 0:
            self.violate(f"exec /bin/true in {cid}: exit code {code}")

    def kill_exec(self) -> None:
        if not self.live:
            return self.create()
        cid = self.rng.choice(sorted(self.live))
        pid = self.exec(cid, ["sleep", "60"])
        self.signal(cid, pid, 9)
        code = self.wait(cid, pid)
        if code != 137:
            self.violate(f"exec sleep in {cid} killed: exit code {code}")

    def disconnect(self) -> None:
        self.uvm.reconnect()  # a new bridge and process client; the agent redials
        self.bridges.append(self.uvm.bridge)

    def full_disk(self) -> None:
        """A container whose scratch disk is full when it is made: the Create (or the overlay)
        fails cleanly, leaving nothing; with room made, the same container runs."""
        if any(c.endswith("-disk") for c in self.live) or len(self.live) >= SLOTS:
            return self.exec_()
        cid = self._new_id() + "-disk"
        self.modify("MappedVirtualDisk", {"MountPath": "/run/gcs/disk", "Lun": DISK_LUN,
                                          "EnsureFilesystem": True, "Filesystem": "ext4"})
        _, _, code = self.uvm.client.run(["sh", "-c", "dd if=/dev/zero of=/run/gcs/disk/fill bs=64k 2>/dev/null; "
                                          "test -s /run/gcs/disk/fill"])
        if code != 0:
            self.violate("could not fill the scratch disk")
        try:  # the overlay's directories and the bundle's files need room: a clean failure, or it fits
            self._start(cid, "/run/gcs/disk", f"/run/gcs/disk/scratch/{cid}")
        except RpcError as err:
            if "no space" not in str(err).lower():
                self.violate(f"{cid} on a full disk: {err}")
        self.uvm.client.run(["rm", "-f", "/run/gcs/disk/fill"])
        if cid not in self.live:
            self.uvm.client.run(["rm", "-rf", f"/run/gcs/disk/scratch/{cid}", "/run/gcs/disk/rootfs"])
            self._start(cid, "/run/gcs/disk", f"/run/gcs/disk/scratch/{cid}")

    # --- checks -------------------------------------------------------------------------------
    def violate(self, what: str) -> None:
        self.report.violations.append(f"step {self.report.steps}: {what}")

    def rss(self) -> float:
        with open(f"/proc/{self.uvm.agent_pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def zombies(self) -> list[int]:
        agent = self.uvm.agent_pid
        found = []
        for task in glob.glob(f"/proc/{agent}/task/*/children"):
            with open(task) as f:
                for pid in f.read().split():
                    try:
                        with open(f"/proc/{pid}/stat") as s:
                            if s.read().rsplit(")", 1)[1].split()[0] == "Z":
                                found.append(int(pid))
                    except OSError:
                        continue
        return found

    def check_step(self) -> None:
        deadline = time.monotonic() + 2
        while self.zombies() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.zombies():
            self.violate(f"zombies under the agent: {self.zombies()}")

    def quiet_point(self) -> None:
        while self.live:
            self.stop()
        self.report.quiet_points += 1
        deadline = time.monotonic() + 5
        while (held := self.held()) != self.baseline and time.monotonic() < deadline:
            time.sleep(0.05)
        if held != self.baseline:
            self.violate(f"held {held} at a quiet point, {self.baseline} at the start")
        with open(f"/proc/{self.uvm.agent_pid}/mountinfo") as f:
            mounts = [line.split()[4] for line in f if "/run/gcs/" in line.split()[4]]
        if mounts:
            self.violate(f"mounts left at a quiet point: {mounts}")
        cgroups = [d for base in agent_cgroups(self.uvm.proc.pid) for d in glob.glob(f"{base}/pods/*")
                   if os.path.isdir(d)]
        if cgroups:
            self.violate(f"cgroups left at a quiet point: {cgroups}")

    # --- the run --------------------------------------------------------------------------------
    def run(self, seconds: float) -> Report:
        actions = [name for name, weight in ACTIONS for _ in range(weight)]
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                action = self.rng.choice(actions)
                t = time.monotonic()
                try:
                    getattr(self, action if action != "exec" else "exec_")()
                except (RpcError, OSError, TimeoutError) as err:
                    self.violate(f"{action}: {type(err).__name__}: {err}")
                    break
                self.report.latencies.setdefault(action, []).append(time.monotonic() - t)
                self.report.steps += 1
                if action != "exec":
                    self.report.samples.append((time.monotonic() - self.t0, self.rss(), None))
                self.check_step()
                if self.report.steps % QUIET_EVERY == 0:
                    self.quiet_point()
            if self.ok_so_far():
                self.quiet_point()
                self.count_notifications()
        finally:
            self.report.seconds = time.monotonic() - self.t0
            self.report.created = len(self.created)
        return self.report

    def ok_so_far(self) -> bool:
        """False after a failed request: the state is then unknown, and the report says why."""
        return not any(": " in v and v.split(": ", 2)[1] in dict(ACTIONS) for v in self.report.violations)

    def count_notifications(self) -> None:
        deadline = time.monotonic() + 5
        while sum(b.notifications.qsize() for b in self.bridges) < len(self.created) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        seen = [b.notifications.get_nowait()["ContainerId"] for b in self.bridges
                for _ in range(b.notifications.qsize())]
        self.report.notified = len(seen)
        if sorted(seen) != sorted(self.created):
            missing = sorted(set(self.created) - set(seen))[:5]
            twice = sorted({c for c in seen if seen.count(c) > 1})[:5]
            self.violate(f"notifications: {len(seen)} for {len(self.created)} containers "
                         f"(missing {missing}, more than once {twice})")
        for b in self.bridges:
            if b.violations:
                self.violate(f"host-side protocol checks: {b.violations[:3]}")

    def close(self) -> None:
        try:
            if self.uvm is not None:
                self.uvm.stop()
        finally:
            self.loops.detach_all()


def write_svg(report: Report, path: str) -> None:
    """RSS (MiB) and exec+wait latency (ms) over time, two panels, no plotting library."""
    width, height, pad = 900, 260, 50
    t_max = max((s[0] for s in report.samples), default=1.0) or 1.0

    def panel(y0: int, title: str, points: list[tuple[float, float]], unit: str, dots: bool) -> str:
        if not points:
            return ""
        points = points[::max(1, len(points) // MAX_POINTS)]  # a small file: one point a pixel or so
        v_max = max(v for _, v in points) * 1.1 or 1.0
        xy = [(pad + t / t_max * (width - 2 * pad), y0 + height - pad - v / v_max * (height - 2 * pad))
              for t, v in points]
        marks = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.2"/>' for x, y in xy) if dots else \
            f'<polyline fill="none" stroke="black" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in xy)}"/>'
        return (f'<g font-family="sans-serif" font-size="12"><text x="{pad}" y="{y0 + 20}">{title}</text>'
                f'<rect x="{pad}" y="{y0 + pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" '
                f'fill="none" stroke="#999"/>'
                f'<text x="5" y="{y0 + pad + 4}">{v_max:.1f} {unit}</text><text x="5" y="{y0 + height - pad}">0</text>'
                f'<text x="{width - pad - 40}" y="{y0 + height - pad + 16}">{t_max:.0f} s</text>{marks}</g>')

    body = panel(0, f"agent RSS over the soak (seed {report.seed}, {report.steps} steps)",
                 [(t, r) for t, r, _ in report.samples], "MiB", dots=False)
    body += panel(height, "exec + wait /bin/true in a running container",
                  [(t, ms) for t, _, ms in report.samples if ms is not None], "ms", dots=True)
    with open(path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * height}">{body}</svg>\n')


def soak(seconds: float, seed: int, svg: str = "", json_path: str = "") -> Report:
    with tempfile.TemporaryDirectory(prefix="pygcs-soak-") as tmp:
        s = Soak(tmp, seed)
        try:
            report = s.run(seconds)
        finally:
            s.close()
    if svg:
        write_svg(report, svg)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"seed": seed, "seconds": report.seconds, "steps": report.steps,
                       "latencies_ms": {k: [v * 1000 for v in vs] for k, vs in report.latencies.items()},
                       "samples": report.samples, "violations": report.violations}, f)
    return report


def main() -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("PYGCS_SOAK_SECONDS", 600)))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("PYGCS_SOAK_SEED", "0") or 0) or None)
    parser.add_argument("--svg", default="")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    report = soak(args.seconds, seed, args.svg, args.json)
    print(report.summary())
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
