"""`gcsctl run IMAGE -- CMD`: a container from an OCI image in a QEMU UVM, driven the way
hcsshim's host drives a Linux GCS (protocol.md 6.10): every layer on a vPMEM device (a
read-only SCSI disk once the pmem slots are taken), a blank scratch disk formatted by the
guest (EnsureFilesystem), CombinedLayers, Create, Start, the init's ExecuteProcess and its
WaitForProcess; then the teardown in reverse order and DeleteContainerState.

Layer images are made once per layer digest and cached (`$GCSCTL_CACHE`, default
~/.cache/pygcs/layers); the scratch disk lives in the UVM directory for the container's life.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from gcs.host.bridge_client import HostBridge, RpcError
from gcs.host.broker import DeviceClient
from gcs.host.layers import layer_image
from gcs.host.oci import ImageConfig, ImageError, open_image, process_args
from gcs.host.progress import Progress
from gcs.host.samples import default_spec
from gcs.protocol.ids import RequestId

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SCRATCH_SIZE = 1 << 30


def cache_dir() -> str:
    return os.environ.get("GCSCTL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pygcs", "layers")


@dataclass
class RunOptions:
    image: str
    command: list[str]
    tty: bool = False
    interactive: bool = False
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    hostname: str = ""
    scratch_size: int = SCRATCH_SIZE
    name: str = ""  # the container's id (docker run --name); random when empty


def container_spec(config: ImageConfig, opts: RunOptions, rootfs: str) -> dict[str, Any]:
    """The OCI spec from the image config, as `docker run` fills it."""
    args = process_args(config, opts.command)
    env = list(config.env) or [DEFAULT_PATH]
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    for item in opts.env:
        key = item.partition("=")[0]
        env = [e for e in env if e.partition("=")[0] != key] + [item]
    if opts.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=" + os.environ.get("TERM", "xterm"))
    spec = default_spec(args, rootfs, env=env, cwd=opts.workdir or config.working_dir or "/", terminal=opts.tty)
    spec["hostname"] = opts.hostname or "ctr"
    user = opts.user or config.user
    if user:
        spec["process"]["user"] = {"uid": 0, "gid": 0, "username": user}
    return spec


class Steps:
    """What was done, so a failure (or the end) undoes exactly that, newest first."""

    def __init__(self) -> None:
        self.undo: list[tuple[str, Callable[[], Any]]] = []

    def did(self, what: str, undo: Callable[[], Any]) -> None:
        self.undo.append((what, undo))

    def unwind(self, report: Callable[[str], None]) -> None:
        while self.undo:
            what, fn = self.undo.pop()
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - go on undoing the rest
                report(f"gcsctl run: cleanup of {what} failed: {err}")


class ContainerRun:
    """One container's life in a UVM (the parts of hcsshim's shim that talk to the guest)."""

    def __init__(self, bridge: HostBridge, devices: DeviceClient, uvm_dir: str, opts: RunOptions,
                 report: Callable[[str], None], progress: Optional[Progress] = None) -> None:
        self.bridge, self.devices, self.uvm_dir, self.opts = bridge, devices, uvm_dir, opts
        self.report = report
        self.progress = progress  # layer conversion shows how far it is there
        self.id = opts.name or secrets.token_hex(16)
        self.bundle = f"/run/gcs/c/{self.id}"
        self.rootfs = f"{self.bundle}/rootfs"
        self.steps = Steps()
        self.timings: dict[str, float] = {}

    def modify(self, resource: str, settings: dict[str, Any], request: str = "Add") -> None:
        self.bridge.call(RequestId.MODIFY_SETTINGS, timeout=300, Request={
            "RequestType": request, "ResourceType": resource, "Settings": settings})

    def prepare(self) -> dict[str, Any]:
        """Layers, scratch and rootfs; returns the OCI spec. Raises with a clear message."""
        t0 = time.monotonic()
        image = open_image(self.opts.image)
        paths = [layer_image(layer, cache_dir(), self.progress) for layer in image.layers]
        self.timings["layers"] = time.monotonic() - t0
        mounted = [self._attach_layer(path, i) for i, path in enumerate(paths)]
        self._attach_scratch()
        combined = {"ContainerID": self.id, "ContainerRootPath": self.rootfs,
                    "Layers": [{"Path": p} for p in reversed(mounted)],  # top-most first
                    "ScratchPath": f"{self.bundle}/scratch/{self.id}"}
        self.modify("CombinedLayers", combined)
        self.steps.did("the rootfs", lambda: self.modify("CombinedLayers", {"ContainerRootPath": self.rootfs},
                                                         "Remove"))
        self.timings["storage"] = time.monotonic() - t0
        return container_spec(image.config, self.opts, self.rootfs)

    def _attach_layer(self, path: str, index: int) -> str:
        try:
            number = self.devices.call("pmem-add", image=path)["device_number"]
        except RuntimeError as err:
            if "slots are in use" not in str(err):
                raise
            return self._attach_scsi_layer(path, index)
        mount = f"/run/layers/p{number}"
        try:
            self.modify("VPMemDevice", {"DeviceNumber": number, "MountPath": mount})
        finally:
            self.devices.call("pmem-settled")
        # the device stays plugged (virtio-pmem cannot be unplugged): only the mount goes
        self.steps.did(f"layer {mount}", lambda: self.modify(
            "VPMemDevice", {"DeviceNumber": number, "MountPath": mount}, "Remove"))
        return mount

    def _attach_scsi_layer(self, path: str, index: int) -> str:
        disk = self.devices.call("scsi-add", image=path, read_only=True)
        c, lun = disk["controller"], disk["lun"]
        self.steps.did(f"SCSI layer {c}:{lun}", lambda: self._unplug(c, lun))
        mount = f"/run/mounts/scsi/{c}_{lun}_0"
        self.modify("MappedVirtualDisk", {"MountPath": mount, "Lun": lun, "Controller": c, "ReadOnly": True})
        self.steps.did(f"layer {mount}", lambda: self.modify(
            "MappedVirtualDisk", {"MountPath": mount, "Lun": lun, "Controller": c}, "Remove"))
        return mount

    def _attach_scratch(self) -> None:
        scratch = os.path.join(self.uvm_dir, "scratch", f"{self.id}.img")
        os.makedirs(os.path.dirname(scratch), exist_ok=True)
        with open(scratch, "wb") as f:
            f.truncate(self.opts.scratch_size)  # blank and sparse: the guest formats it
        self.steps.did("the scratch image", lambda: os.unlink(scratch))
        disk = self.devices.call("scsi-add", image=scratch, read_only=False)
        c, lun = disk["controller"], disk["lun"]
        self.steps.did(f"scratch disk {c}:{lun}", lambda: self._unplug(c, lun))
        self.modify("MappedVirtualDisk", {"MountPath": self.bundle, "Lun": lun, "Controller": c,
                                          "ReadOnly": False, "EnsureFilesystem": True, "Filesystem": "ext4"})
        self.steps.did("the scratch mount", lambda: self.modify(
            "MappedVirtualDisk", {"MountPath": self.bundle, "Lun": lun, "Controller": c}, "Remove"))

    def _unplug(self, controller: int, lun: int) -> None:
        self.modify("SCSIDevice", {"Controller": controller, "Lun": lun}, "Remove")
        self.devices.call("scsi-remove", controller=controller, lun=lun)

    def create(self, spec: dict[str, Any]) -> None:
        config = {"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": self.bundle,
                  "OciSpecification": spec, "ScratchDirPath": f"{self.bundle}/scratch/{self.id}"}
        self.bridge.known_containers.add(self.id)
        # DeleteContainerState comes last of all, after the storage is gone (protocol.md 6.10)
        self.steps.undo.insert(0, ("the container state",
                                   lambda: self.bridge.call(RequestId.DELETE_CONTAINER_STATE, self.id)))
        self.bridge.call(RequestId.CREATE, self.id, timeout=120, ContainerConfig=json.dumps(config))
        self.bridge.call(RequestId.START, self.id)

    def stop(self) -> None:
        """Make sure the container is down (the host's ShutdownForced on teardown)."""
        try:
            self.bridge.call(RequestId.SHUTDOWN_FORCED, self.id)
        except RpcError:
            pass  # already stopped: 0xC0370110

    def teardown(self) -> None:
        self.steps.unwind(self.report)


def describe_error(err: Exception) -> str:
    if isinstance(err, ImageError):
        return f"image: {err}"
    return str(err)


def wait_notification(bridge: HostBridge, container_id: str, timeout: float = 10.0) -> Optional[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            note = bridge.notifications.get(timeout=max(0.01, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - queue.Empty
            return None
        if note.get("ContainerId") == container_id:
            return note
    return None
