"""A busybox rootfs on a pmem layer, an overlay from the storage layer, and helpers to drive
containers over the bridge the way hcsshim's host does."""
import contextlib
import json
import os

from gcs.host.images import make_layer_image
from gcs.host.launcher import LocalUvm
from gcs.host.samples import busybox_rootfs, default_spec  # noqa: F401 - re-exported for the tests
from gcs.protocol.ids import RequestId

from storage_env import DeviceTree, Loops, agent_cgroups, host_mountinfo


class Host:
    """What hcsshim's host does for containers, over a LocalUvm's bridge."""

    def __init__(self, uvm):
        self.uvm = uvm

    @property
    def bridge(self):
        return self.uvm.bridge

    def modify(self, resource, settings, request_type="Add"):
        return self.bridge.call(RequestId.MODIFY_SETTINGS, Request={
            "RequestType": request_type, "ResourceType": resource, "Settings": settings})

    def layers(self, cid, layer_paths):
        root = f"/run/gcs/c/{cid}/rootfs"
        self.modify("CombinedLayers", {"ContainerID": cid, "ContainerRootPath": root,
                                       "Layers": [{"Path": p} for p in layer_paths],
                                       "ScratchPath": f"/run/gcs/c/{cid}/scratch/{cid}"})
        return root

    def create(self, cid, spec, bundle=None, timeout=30.0):
        bundle = bundle or f"/run/gcs/c/{cid}"
        config = {"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": bundle,
                  "OciSpecification": spec, "ScratchDirPath": f"{bundle}/scratch/{cid}"}
        self.bridge.known_containers.add(cid)
        try:
            return self.bridge.call(RequestId.CREATE, container_id=cid, timeout=timeout,
                                    ContainerConfig=json.dumps(config))
        except Exception:
            self.bridge.known_containers.discard(cid)
            raise

    def start(self, cid, stdin=False, stdout=True, stderr=True):
        self.bridge.call(RequestId.START, container_id=cid)
        return self.uvm.client.exec([], container_id=cid, stdin=stdin, stdout=stdout, stderr=stderr,
                                    init_process=True)

    def exec(self, cid, args, stdin=False, stdout=True, stderr=True, **process):
        proc = {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "cwd": "/"}
        proc.update(process)
        return self.uvm.client.exec([], container_id=cid, oci_process=proc, stdin=stdin, stdout=stdout, stderr=stderr)

    def notification(self, timeout=10):
        return self.bridge.notifications.get(timeout=timeout)

    def remove(self, cid):
        self.modify("CombinedLayers", {"ContainerRootPath": f"/run/gcs/c/{cid}/rootfs"}, "Remove")
        self.bridge.call(RequestId.DELETE_CONTAINER_STATE, container_id=cid)

    def in_uvm(self, path):
        """A path of the agent's (the UVM's) mount namespace, from here."""
        return f"/proc/{self.uvm.agent_pid}/root{path}"


# Sysctls runc refuses (libcontainer/configs/validate), with the namespaces the container has.
ALL_NAMESPACES = ("pid", "network", "ipc", "uts", "mount")
REFUSED_SYSCTLS = [
    ("kernel.core_pattern", ALL_NAMESPACES), ("kernel/core_pattern", ALL_NAMESPACES),
    ("vm.overcommit_memory", ALL_NAMESPACES), ("kernel.panic", ALL_NAMESPACES), ("kernel.hostname", ALL_NAMESPACES),
    ("kernel.domainname", ("pid", "network", "ipc", "mount")),
    ("kernel.msgmax", ("pid", "network", "uts", "mount")), ("fs.mqueue.msg_max", ("pid", "network", "uts", "mount")),
    ("net.ipv4.ip_forward", ("pid", "ipc", "uts", "mount")),
    ("net.ipv4.ip_forward", ("pid", "network:/proc/self/ns/net", "ipc", "uts", "mount")),  # the caller's own
]


def machine_sysctl(key):
    """This machine's value of a sysctl named either way ("kernel.panic", "kernel/panic")."""
    with open("/proc/sys/" + (key if "/" in key.split(".")[0] else key.replace(".", "/"))) as f:
        return f.read().strip()


def refused_sysctl_spec(key, kinds, rootfs):
    """A spec asking for the sysctl with this machine's own value, so that if anything ever
    wrote it, nothing would change. kinds: namespace types, "type:path" to join one."""
    spec = default_spec(["true"], rootfs)
    spec.pop("windows")
    spec["linux"]["namespaces"] = [dict(zip(("type", "path"), kind.split(":", 1))) for kind in kinds]
    if "uts" not in kinds:
        spec.pop("hostname")  # runc checks that first
    spec["linux"]["sysctl"] = {key: machine_sysctl(key)}
    return spec


def busybox_layer(directory) -> str:
    """A busybox rootfs made into an ext4 layer image in `directory`; returns its path."""
    busybox_rootfs(os.path.join(directory, "rootfs"))
    image = os.path.join(directory, "busybox.img")
    make_layer_image(os.path.join(directory, "rootfs"), image)
    return image


@contextlib.contextmanager
def local_host(tmp_path, runtime, layer_images):
    """A local-mode agent with `layer_images` on pmem devices 0.. mounted at /run/layers/pN,
    driven as a Host; afterwards nothing may be left: no agent, mount or cgroup."""
    loops = Loops()
    tree = DeviceTree(str(tmp_path), loops)
    try:
        for number, image in enumerate(layer_images):
            tree.add_pmem(number, image)
        uvm = LocalUvm(str(tmp_path / "uvm"), extra_args=tree.args() + ["--runtime", runtime]).start()
    except BaseException:
        loops.detach_all()
        raise
    agent, supervisor = uvm.agent_pid, uvm.proc.pid
    h = Host(uvm)
    h.runtime = runtime
    try:
        for number in range(len(layer_images)):
            h.modify("VPMemDevice", {"DeviceNumber": number, "MountPath": f"/run/layers/p{number}"})
        yield h
    finally:
        violations = list(uvm.bridge.violations)
        uvm.stop()
        loops.detach_all()
        assert violations == []
        assert not os.path.exists(f"/proc/{agent}")
        assert "/run/gcs" not in host_mountinfo()
        assert agent_cgroups(supervisor) == []
