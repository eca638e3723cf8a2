"""The three kinds of container a host creates and how each one's spec is adjusted before
it runs (hcsshim's sandbox, workload and standalone container specs, protocol.md 6.7):
where its hostname/hosts/resolv.conf come from and which cgroup it gets."""
from __future__ import annotations

import enum

from gcs.containers import hostfiles
from gcs.protocol import hresult as hr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional

    from gcs.containers.container import Container

ANNOTATION_TYPE = "io.kubernetes.cri.container-type"
ANNOTATION_SANDBOX = "io.kubernetes.cri.sandbox-id"
ANNOTATION_RLIMIT_CORE = "io.microsoft.lcow.rlimitcore"


class Kind(str, enum.Enum):
    STANDALONE = "standalone"  # neither: its own pod of one
    SANDBOX = "sandbox"        # a pod's first container: owns the pod's host files
    WORKLOAD = "workload"      # a container of a pod: shares its sandbox's files

    def __str__(self) -> str:
        return self.value


def kind_of(annotations: dict) -> Kind:
    cri = annotations.get(ANNOTATION_TYPE, "")
    return Kind.SANDBOX if cri == "sandbox" else Kind.WORKLOAD if cri == "container" else Kind.STANDALONE


def adjust_for_kind(c: Container, spec: dict, find: Callable[[str], Optional[Container]], resolv: str = "") -> None:
    """Host files and cgroup path by kind; `find` looks up another container by id, `resolv`
    is the resolv.conf of the pod's network namespace."""
    annotations = spec.get("annotations") or {}
    linux = spec.setdefault("linux", {})
    if c.kind is Kind.WORKLOAD:
        c.sandbox_id = annotations.get(ANNOTATION_SANDBOX, "")
        sandbox = find(c.sandbox_id)
        if sandbox is None or sandbox.kind is not Kind.SANDBOX:
            raise hr.GcsError(hr.SYSTEM_NOT_FOUND, f"sandbox {c.sandbox_id!r} of workload {c.id!r} not found")
        if spec.get("hostname"):
            raise hr.GcsError(hr.E_INVALIDARG, "workload containers must not set a hostname")
        hostfiles.add_mounts(spec, sandbox.bundle)
        linux["cgroupsPath"] = f"/pods/{c.sandbox_id}/{c.id}"
        return
    spec["hostname"] = hostfiles.write_files(c.bundle, spec.get("hostname") or "", resolv)
    hostfiles.add_mounts(spec, c.bundle)
    linux["cgroupsPath"] = f"/pods/{c.id}" if c.kind is Kind.STANDALONE else f"/pods/{c.id}/{c.id}"


ANNOTATION_HOST_NETWORK = "io.microsoft.virtualmachine.lcow.hostnetwork"


def network_namespace_id(spec: dict) -> str:
    """The pod network namespace the host names (`Windows.Network.NetworkNamespace`)."""
    windows = spec.get("windows") or {}
    network = windows.get("network") if isinstance(windows, dict) else None
    nsid = network.get("networkNamespace") if isinstance(network, dict) else None
    return nsid if isinstance(nsid, str) else ""


def host_network(spec: dict, sandbox: Optional[Container] = None) -> bool:
    """The host-network annotation, from the sandbox's spec for a workload (upstream's)."""
    annotations = (sandbox.spec if sandbox is not None else spec).get("annotations") or {}
    return str(annotations.get(ANNOTATION_HOST_NETWORK, "")).lower() == "true"


def apply_annotations(process: dict, annotations: dict) -> None:
    """LCOW annotations that change the process (hcsshim's rlimit-core one)."""
    core = annotations.get(ANNOTATION_RLIMIT_CORE)
    if core:
        soft, _, hard = core.partition(";")
        try:
            limit = {"type": "RLIMIT_CORE", "soft": int(soft), "hard": int(hard)}
        except ValueError:
            raise hr.GcsError(hr.E_INVALIDARG, f"annotation {ANNOTATION_RLIMIT_CORE}: {core!r} is not 'soft;hard'") from None
        process.setdefault("rlimits", []).append(limit)
