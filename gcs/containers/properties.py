"""GetProperties (ProcessList, Statistics) and ContainerConstraints updates of a container
(protocol.md 3.9, 3.10)."""
from __future__ import annotations

import os

from gcs.containers import ocispec
from gcs.log import log
from gcs.protocol import hresult as hr
from gcs.protocol.replies import encode_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from gcs.containers.cgroups import Cgroups
    from gcs.containers.container import Container


def properties(c: Container, cgroups: Cgroups, cgroup: str, types: list[str]) -> str:
    props: dict = {}
    for kind in types:
        if kind == "ProcessList":
            props["ProcessList"] = [{"ProcessId": pid} for pid in pids(c, cgroups, cgroup)]
        elif kind == "Statistics":
            if not cgroup:
                raise hr.GcsError(hr.E_FAIL, "no cgroup hierarchy: statistics are not available")
            metrics = cgroups.stats(cgroup)
            if c.init is not None and not c.init.exited:  # upstream sends it empty
                from gcs.network import stats
                network = stats.of_process(c.init.pid)
                if network:
                    metrics["network"] = network
            props["LCOWMetrics"] = metrics
        else:
            log.warning("unknown property type ignored", type=kind)
    return encode_json(props)


def update_constraints(c: Container, cgroups: Cgroups, cgroup: str, settings) -> None:
    if not cgroup:
        raise hr.GcsError(hr.E_FAIL, "no cgroup hierarchy: constraints cannot be applied")
    linux = settings.obj("Linux") if settings is not None else None
    if linux is None:
        raise hr.GcsError(hr.E_INVALIDARG, "ContainerConstraints: missing Linux resources")
    problems = ocispec.unsupported_resources(linux.data, cgroup_v2=cgroups.v2)
    if problems:
        raise hr.GcsError(hr.E_NOTIMPL, "ContainerConstraints: not supported: " + ", ".join(problems))
    devices = None
    if linux.data.get("devices"):  # checked before anything changes
        devices = ocispec.device_rules({**c.spec, "linux": {**(c.spec.get("linux") or {}),
                                                            "resources": {"devices": linux.data["devices"]}}})
    cgroups.update(cgroup, linux.data)
    if devices is not None:
        cgroups.set_devices(cgroup, devices)
    log.info("updated container constraints", container=c.id)


def pids(c: Container, cgroups: Cgroups, cgroup: str) -> list[int]:
    """Every process of the container: its cgroup's, else its pid namespace's, else ours."""
    if cgroup and c.init is not None and not c.init.exited:
        return cgroups.pids(cgroup)
    found = []
    if c.init is not None and not c.init.exited and c.own_pid_namespace:
        try:
            ns = os.readlink(f"/proc/{c.init.pid}/ns/pid")
        except OSError:
            ns = None
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                        found.append(int(entry))
                except OSError:
                    continue
    else:
        found = [p.pid for p in [c.init, *c.execs.values()] if p is not None and not p.exited]
    return sorted(found)
