"""The agent's cgroups, v1 or v2 (whichever the kernel gives; a hybrid host uses its v1
controllers): `<base>/gcs` holds the agent, `<base>/pods/...` the containers, with the
pods' memory capped at RAM minus a reserve so a container can never starve the agent.

`base` is "" in a UVM. In local mode it is a dedicated subtree under the agent's own
cgroup (`/pygcs-<random>`), removed again at shutdown.
"""
from __future__ import annotations

import os
import time

from gcs import aio
from gcs.log import log
from gcs.protocol import hresult as hr

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids")
ROOT = "/sys/fs/cgroup"
DEFAULT_RESERVE = 75 * 1024 * 1024


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as err:
        raise hr.GcsError(hr.E_FAIL, f"cgroup write {path}={value!r}: {err.strerror}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out[key] = _int(value)
    return out


class Hierarchy:
    """One mounted cgroup hierarchy: v2's unified one, or a v1 one with its subsystems
    ("memory", "cpu,cpuacct", "name=systemd")."""

    def __init__(self, mount: str, subsystems: str) -> None:
        self.mount = mount
        self.subsystems = subsystems
        self.name = os.path.basename(mount)  # where a container sees it under /sys/fs/cgroup


class Cgroups:
    def __init__(self, base: str = "", reserve: int = DEFAULT_RESERVE) -> None:
        self.v2 = False
        self.mounts: dict[str, str] = {}  # controller -> hierarchy mount dir, for limits and stats
        self.hierarchies: list[Hierarchy] = []  # every hierarchy: a container gets a cgroup in each
        mounts = _cgroup_mounts()
        v1 = {c: d for c, d in mounts.items() if c in V1_CONTROLLERS}
        if v1:
            self.mounts = v1
            self.hierarchies = _v1_hierarchies()
        elif "" in mounts:
            self.v2 = True
            self.mounts = {"": mounts[""]}
            self.hierarchies = [Hierarchy(mounts[""], "")]
        self.base = base.rstrip("/")
        self.reserve = reserve
        self._device_progs: dict[str, int] = {}  # v2: cgroup -> its device program's fd

    @property
    def available(self) -> bool:
        return bool(self.mounts)

    def _rel(self, rel: str) -> str:
        return (self.base + "/" + rel.strip("/")).strip("/")

    def dirs(self, rel: str) -> dict[str, str]:
        """The cgroup's directory per limit controller."""
        return {c: os.path.join(d, self._rel(rel)) for c, d in self.mounts.items()}

    def hierarchy_dirs(self, rel: str) -> list[tuple[Hierarchy, str]]:
        """The cgroup's directory in every hierarchy."""
        return [(h, os.path.join(h.mount, self._rel(rel))) for h in self.hierarchies]

    def procs_files(self, rel: str) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for _, d in self.hierarchy_dirs(rel)]

    # --- layout -------------------------------------------------------------------------
    def setup(self) -> None:
        """Create /gcs (and move the agent there) and /pods with memory = RAM - reserve."""
        if not self.available:
            log.warning("no cgroup hierarchy found: containers run without limits")
            return
        self.create("/pods", {})
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.update("/pods", {"memory": {"limit": max(total - self.reserve, 64 << 20)}})
        self.create("/gcs", {})
        self.add_process("/gcs", os.getpid())

    def create(self, rel: str, resources: dict) -> None:
        for h, directory in self.hierarchy_dirs(rel):
            fresh = not os.path.isdir(directory)
            os.makedirs(directory, exist_ok=True)
            if "cpuset" in h.subsystems.split(",") and fresh:
                _inherit_cpuset(directory)
            if self.v2:
                self._enable_v2_controllers(directory)
        if resources:
            self.update(rel, resources)

    def add_process(self, rel: str, pid: int) -> None:
        for path in self.procs_files(rel):
            _write(path, str(pid))

    def set_devices(self, rel: str, rules: list[str]) -> None:
        """Device access: deny everything, then the rules in order ("allow c 1:3 rwm"). On v1
        the devices controller takes them as they are; on v2 they become a BPF program."""
        if self.v2:
            from gcs.containers import devicefilter

            try:
                prog = devicefilter.load(["deny a *:* rwm", *rules])
                devicefilter.attach(self.hierarchy_dirs(rel)[0][1], prog, self._device_progs.get(rel, -1))
            except OSError as err:
                raise hr.GcsError(hr.E_FAIL, f"device rules for cgroup {rel}: {err.strerror or err}") from None
            old = self._device_progs.pop(rel, -1)
            if old >= 0:
                os.close(old)
            self._device_progs[rel] = prog  # kept to replace it on an update; freed with the cgroup
            return
        directory = next((d for h, d in self.hierarchy_dirs(rel) if "devices" in h.subsystems.split(",")), None)
        if directory is None:
            return
        _write(f"{directory}/devices.deny", "a")
        for rule in rules:
            verb, _, spec = rule.partition(" ")
            _write(f"{directory}/devices.{verb}", spec)

    def _enable_v2_controllers(self, directory: str) -> None:
        # Enable along the path below the hierarchy root (never the root's own files).
        root = self.mounts[""]
        parent = os.path.dirname(directory)
        chain = []
        while parent.startswith(root + "/"):
            chain.append(parent)
            parent = os.path.dirname(parent)
        for d in reversed(chain):
            wanted = set(_read(os.path.join(d, "cgroup.controllers")).split()) & {"memory", "cpu", "cpuset", "pids", "io"}
            enabled = set(_read(os.path.join(d, "cgroup.subtree_control")).split())
            if wanted - enabled:
                _write(os.path.join(d, "cgroup.subtree_control"), " ".join(f"+{c}" for c in sorted(wanted - enabled)))

    def update(self, rel: str, resources: dict) -> None:
        """Apply OCI LinuxResources (memory, cpu, pids)."""
        dirs = self.dirs(rel)
        memory = resources.get("memory") or {}
        cpu = resources.get("cpu") or {}
        pids = resources.get("pids") or {}
        if self.v2:
            d = dirs[""]
            if memory.get("limit"):
                _write(f"{d}/memory.max", str(memory["limit"]) if memory["limit"] > 0 else "max")
            if memory.get("reservation"):
                _write(f"{d}/memory.low", str(memory["reservation"]))
            if memory.get("swap"):  # OCI's swap is memory + swap; v2 limits swap alone
                limit = memory.get("limit") or 0
                swap = memory["swap"]
                _write(f"{d}/memory.swap.max", "max" if swap < 0 else str(max(swap - limit, 0)))
            if cpu.get("shares"):
                _write(f"{d}/cpu.weight", str(1 + ((cpu["shares"] - 2) * 9999) // 262142))
            if cpu.get("quota") or cpu.get("period"):
                quota = cpu.get("quota") or -1
                _write(f"{d}/cpu.max", f"{quota if quota > 0 else 'max'} {cpu.get('period') or 100000}")
            for key in ("cpus", "mems"):
                if cpu.get(key):
                    _write(f"{d}/cpuset.{key}", cpu[key])
            if pids.get("limit"):
                _write(f"{d}/pids.max", str(pids["limit"]) if pids["limit"] > 0 else "max")
            _set_io(d, resources.get("blockIO") or {})
            return
        if memory.get("limit") and "memory" in dirs:
            _write(f"{dirs['memory']}/memory.limit_in_bytes", str(memory["limit"]))
        if memory.get("reservation") and "memory" in dirs:
            _write(f"{dirs['memory']}/memory.soft_limit_in_bytes", str(memory["reservation"]))
        if memory.get("swap") and "memory" in dirs:  # OCI's swap is memory + swap, as memsw is
            _write(f"{dirs['memory']}/memory.memsw.limit_in_bytes", str(memory["swap"]))
        if memory.get("swappiness") is not None and "memory" in dirs:
            _write(f"{dirs['memory']}/memory.swappiness", str(memory["swappiness"]))
        if memory.get("disableOOMKiller") and "memory" in dirs:
            _write(f"{dirs['memory']}/memory.oom_control", "1")
        if "cpu" in dirs:
            if cpu.get("shares"):
                _write(f"{dirs['cpu']}/cpu.shares", str(cpu["shares"]))
            if cpu.get("period"):
                _write(f"{dirs['cpu']}/cpu.cfs_period_us", str(cpu["period"]))
            if cpu.get("quota"):
                _write(f"{dirs['cpu']}/cpu.cfs_quota_us", str(cpu["quota"]))
        if "cpuset" in dirs:
            for key in ("cpus", "mems"):
                if cpu.get(key):
                    _write(f"{dirs['cpuset']}/cpuset.{key}", cpu[key])
        if pids.get("limit") and "pids" in dirs:
            _write(f"{dirs['pids']}/pids.max", str(pids["limit"]) if pids["limit"] > 0 else "max")

    # --- reading ------------------------------------------------------------------------
    def oom_kills(self, rel: str) -> int:
        dirs = self.dirs(rel)
        if self.v2:
            return _kv(_read(f"{dirs['']}/memory.events")).get("oom_kill", 0)
        if "memory" in dirs:
            return _kv(_read(f"{dirs['memory']}/memory.oom_control")).get("oom_kill", 0)
        return 0

    def pids(self, rel: str) -> list[int]:
        found: set[int] = set()
        for path in self.procs_files(rel):
            found.update(int(p) for p in _read(path).split() if p.isdigit())
        return sorted(found)

    def stats(self, rel: str) -> dict:
        """containerd's cgroup v1 Metrics shape (LCOWMetrics), zero values left out."""
        dirs = self.dirs(rel)
        if self.v2:
            d = dirs[""]
            cpu_stat = _kv(_read(f"{d}/cpu.stat"))
            mem = _kv(_read(f"{d}/memory.stat"))
            events = _kv(_read(f"{d}/memory.events"))
            limit = _read(f"{d}/memory.max")
            metrics = {
                "cpu": {"usage": {"total": cpu_stat.get("usage_usec", 0) * 1000,
                                  "kernel": cpu_stat.get("system_usec", 0) * 1000,
                                  "user": cpu_stat.get("user_usec", 0) * 1000},
                        "throttling": {"periods": cpu_stat.get("nr_periods", 0),
                                       "throttled_periods": cpu_stat.get("nr_throttled", 0),
                                       "throttled_time": cpu_stat.get("throttled_usec", 0) * 1000}},
                "memory": {"cache": mem.get("file", 0), "rss": mem.get("anon", 0),
                           "mapped_file": mem.get("file_mapped", 0), "dirty": mem.get("file_dirty", 0),
                           "writeback": mem.get("file_writeback", 0), "pg_fault": mem.get("pgfault", 0),
                           "pg_maj_fault": mem.get("pgmajfault", 0), "inactive_anon": mem.get("inactive_anon", 0),
                           "active_anon": mem.get("active_anon", 0), "inactive_file": mem.get("inactive_file", 0),
                           "active_file": mem.get("active_file", 0), "unevictable": mem.get("unevictable", 0),
                           "usage": {"usage": _int(_read(f"{d}/memory.current")),
                                     "limit": _int(limit) if limit != "max" else 0,
                                     "max": _int(_read(f"{d}/memory.peak"))}},
                "pids": {"current": _int(_read(f"{d}/pids.current")), "limit": _int(_read(f"{d}/pids.max"))},
                "memory_oom_control": {"oom_kill": events.get("oom_kill", 0)},
            }
        else:
            mem = _kv(_read(f"{dirs.get('memory', '')}/memory.stat")) if "memory" in dirs else {}
            acct = dirs.get("cpuacct", "")
            ticks = os.sysconf("SC_CLK_TCK") or 100
            cpu_times = _kv(_read(f"{acct}/cpuacct.stat")) if acct else {}
            throttling = _kv(_read(f"{dirs['cpu']}/cpu.stat")) if "cpu" in dirs else {}
            m = dirs.get("memory", "")
            metrics = {
                "cpu": {"usage": {"total": _int(_read(f"{acct}/cpuacct.usage")) if acct else 0,
                                  "kernel": cpu_times.get("system", 0) * 1_000_000_000 // ticks,
                                  "user": cpu_times.get("user", 0) * 1_000_000_000 // ticks,
                                  "per_cpu": [_int(x) for x in _read(f"{acct}/cpuacct.usage_percpu").split()] if acct else []},
                        "throttling": {"periods": throttling.get("nr_periods", 0),
                                       "throttled_periods": throttling.get("nr_throttled", 0),
                                       "throttled_time": throttling.get("throttled_time", 0)}},
                "memory": {**{k: mem.get(k, 0) for k in ("cache", "rss", "rss_huge", "mapped_file", "dirty", "writeback",
                                                         "inactive_anon", "active_anon", "inactive_file", "active_file",
                                                         "unevictable", "hierarchical_memory_limit",
                                                         "hierarchical_memsw_limit")},
                           "pg_fault": mem.get("pgfault", 0), "pg_maj_fault": mem.get("pgmajfault", 0),
                           "usage": {"usage": _int(_read(f"{m}/memory.usage_in_bytes")),
                                     "limit": _int(_read(f"{m}/memory.limit_in_bytes")),
                                     "max": _int(_read(f"{m}/memory.max_usage_in_bytes")),
                                     "failcnt": _int(_read(f"{m}/memory.failcnt"))}} if m else {},
                "pids": {"current": _int(_read(f"{dirs['pids']}/pids.current")),
                         "limit": _int(_read(f"{dirs['pids']}/pids.max"))} if "pids" in dirs else {},
                "memory_oom_control": {"oom_kill": _kv(_read(f"{m}/memory.oom_control")).get("oom_kill", 0)} if m else {},
            }
            if "hierarchical_memsw_limit" in metrics.get("memory", {}):
                metrics["memory"]["hierarchical_swap_limit"] = metrics["memory"].pop("hierarchical_memsw_limit")
        return _prune(metrics)

    # --- removal ------------------------------------------------------------------------
    def delete(self, rel: str, wait: float = 2.0) -> None:
        """Remove a container's cgroups, blocking (at shutdown; else `remove`)."""
        deadline = time.monotonic() + wait
        for _, directory in self.hierarchy_dirs(rel):
            remove_tree(directory, deadline)
        self._forget_devices(rel)

    async def remove(self, rel: str, wait: float = 2.0) -> None:
        """Remove a container's cgroups; busy ones are retried without stalling the loop."""
        deadline = time.monotonic() + wait
        for _, directory in self.hierarchy_dirs(rel):
            await remove_tree_async(directory, deadline)
        self._forget_devices(rel)

    def _forget_devices(self, rel: str) -> None:
        prefix = "/" + rel.strip("/")
        for key in [k for k in self._device_progs if ("/" + k.strip("/") + "/").startswith(prefix.rstrip("/") + "/")]:
            os.close(self._device_progs.pop(key))

    def teardown(self) -> None:
        """Local mode: remove the containers' cgroups. The agent stays in /gcs until it exits
        (moving it back would mean writing root cgroup files); the local-mode supervisor
        removes the rest of the subtree after it."""
        if self.base:
            self.delete("/pods", wait=2.0)


IO_THROTTLES = (("throttleReadBpsDevice", "rbps"), ("throttleWriteBpsDevice", "wbps"),
                ("throttleReadIOPSDevice", "riops"), ("throttleWriteIOPSDevice", "wiops"))


def _set_io(d: str, block_io: dict) -> None:
    """OCI blockIO on v2, as runc 1.1 writes it: the weight to BFQ's io.bfq.weight where the
    scheduler offers it, else to io.weight scaled from 10..1000 to 1..10000; per-device
    weights only with BFQ (leaf weights have no v2 file); throttles as io.max lines."""
    if not block_io:
        return
    bfq = os.path.exists(f"{d}/io.bfq.weight")
    weight = block_io.get("weight")
    if weight:
        if bfq:
            _write(f"{d}/io.bfq.weight", str(weight))
        else:
            _write(f"{d}/io.weight", str(1 + (weight - 10) * 9999 // 990))
    if bfq:
        for device in block_io.get("weightDevice") or []:
            _write(f"{d}/io.bfq.weight", f"{device['major']}:{device['minor']} {device.get('weight') or 0}")
    for key, name in IO_THROTTLES:
        for device in block_io.get(key) or []:
            _write(f"{d}/io.max", f"{device['major']}:{device['minor']} {name}={device.get('rate') or 0}")


def hierarchy_roots() -> list[str]:
    """Every mounted hierarchy: the v2 root, or each v1 controller's directory."""
    if os.path.exists(os.path.join(ROOT, "cgroup.procs")):
        return [ROOT]
    try:
        return [os.path.join(ROOT, d) for d in os.listdir(ROOT)]
    except OSError:
        return []


def remove_tree(top: str, deadline: float, quiet: bool = False) -> None:
    """rmdir a cgroup subtree, deepest first; a cgroup whose last processes are still
    exiting is busy for a moment, so retry that until `deadline` (time.monotonic). Blocks:
    for shutdown, when the event loop no longer runs (else `remove_tree_async`)."""
    for _ in _removal(top, deadline, quiet):
        time.sleep(0.01)


async def remove_tree_async(top: str, deadline: float, quiet: bool = False) -> None:
    """remove_tree, waiting between retries on the event loop instead of sleeping."""
    for _ in _removal(top, deadline, quiet):
        await aio.sleep(0.01)


def _removal(top: str, deadline: float, quiet: bool):
    """The removal, yielding each time it must wait before the busy cgroups are retried."""
    pending = _subtree(top)
    while pending:
        pending, err = _rmdirs(pending)
        if not pending or _past(deadline, pending, err, quiet):
            return
        yield


def _subtree(top: str) -> list[str]:
    return [dirpath for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/"))]


def _rmdirs(dirs: list[str]) -> tuple[list[str], OSError | None]:
    """rmdir each in order; returns those still there (busy) and the last error."""
    busy: list[str] = []
    last: OSError | None = None
    for directory in dirs:
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as err:
            busy.append(directory)
            last = err
    return busy, last


def _past(deadline: float, pending: list[str], err: OSError | None, quiet: bool) -> bool:
    if time.monotonic() <= deadline:
        return False
    if not quiet:
        log.warning("cgroup not removed", path=pending[0], error=err.strerror if err else "")
    return True


def _prune(value):
    if isinstance(value, dict):
        out = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (0, {}, [], None, "")}
    if isinstance(value, list):
        return value if any(value) else []
    return value


def _cgroup_mounts() -> dict[str, str]:
    mounts: dict[str, str] = {}
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.readlines()
    except OSError:
        return mounts
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields, tail_fields = head.split(), tail.split()
        if len(tail_fields) < 3:
            continue
        fstype, options = tail_fields[0], tail_fields[2].split(",")
        if fstype == "cgroup2" and fields[4] == ROOT:
            mounts[""] = fields[4]
        elif fstype == "cgroup":
            for controller in V1_CONTROLLERS:
                if controller in options:
                    mounts.setdefault(controller, fields[4])
    return mounts


def _v1_hierarchies() -> list[Hierarchy]:
    known = {line.split()[0] for line in _read("/proc/cgroups").splitlines()[1:] if line.split()}
    found: dict[str, Hierarchy] = {}
    for line in _read("/proc/self/mountinfo").splitlines():
        head, _, tail = line.partition(" - ")
        fields, tail_fields = head.split(), tail.split()
        if len(tail_fields) < 3 or tail_fields[0] != "cgroup" or fields[4] in found:
            continue
        subsystems = [o for o in tail_fields[2].split(",") if o in known or o.startswith("name=")]
        if subsystems:
            found[fields[4]] = Hierarchy(fields[4], ",".join(subsystems))
    return list(found.values())


def _inherit_cpuset(directory: str) -> None:
    """v1 cpuset cgroups start empty; copy the nearest configured ancestor's sets."""
    for key in ("cpuset.cpus", "cpuset.mems"):
        parent = os.path.dirname(directory)
        value = ""
        while parent and parent != "/" and not value:
            value = _read(os.path.join(parent, key))
            if not value:
                parent = os.path.dirname(parent)
        chain = []
        d = directory
        while d != parent and d.startswith(parent):
            chain.append(d)
            d = os.path.dirname(d)
        for d in reversed(chain):
            if not _read(os.path.join(d, key)):
                _write(os.path.join(d, key), value)
