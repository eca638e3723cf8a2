"""A busybox rootfs on a pmem layer, an overlay from the storage layer, and helpers to drive
containers over the bridge the way hcsshim's host does."""
import json

from gcs.host.samples import busybox_rootfs, default_spec  # noqa: F401 - re-exported for the tests
from gcs.protocol.ids import RequestId


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
