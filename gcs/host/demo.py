"""`make run`: boot a UVM under QEMU, run a container from a busybox image in it (layers on
vPMEM, scratch on SCSI), show what `hcsdiag console` would show, and shut it down. Where QEMU
cannot run, say why and run the local-mode demo instead."""
from __future__ import annotations

import os
import shutil
import signal
import time

from gcs.host.launcher import REPO_ROOT, LocalUvm
from gcs.protocol.ids import RequestId

DEMO_DIR = os.path.join(REPO_ROOT, "build", "demo")


def demo_image(directory: str = DEMO_DIR) -> str:
    """An OCI image of Debian's busybox with a second layer that replaces one file and
    deletes another (made once, then reused)."""
    from gcs.host.oci import write_image
    from gcs.host.samples import busybox_rootfs

    image = os.path.join(directory, "busybox-oci")
    if os.path.exists(os.path.join(image, "index.json")):
        return image
    staging = os.path.join(directory, "layers")
    shutil.rmtree(staging, ignore_errors=True)
    busybox_rootfs(os.path.join(staging, "base"))
    with open(os.path.join(staging, "base", "etc", "motd"), "w") as f:
        f.write("from the base layer\n")
    top = os.path.join(staging, "top")
    os.makedirs(os.path.join(top, "etc"))
    os.makedirs(os.path.join(top, "data"))
    with open(os.path.join(top, "etc", "motd"), "w") as f:
        f.write("hello from a container in a utility VM (this file comes from the top layer)\n")
    open(os.path.join(top, "data", ".wh.hello"), "w").close()  # the top layer deletes /data/hello
    write_image(image + ".tmp", [os.path.join(staging, "base"), top],
                {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"}, ref="pygcs/busybox:demo")
    os.replace(image + ".tmp", image)
    shutil.rmtree(staging)
    return image


def uvm_demo(uvm_dir: str | None = None) -> int:
    from gcs.host.broker import InProcessDeviceClient
    from gcs.host.qemu import IMAGE_DIR, QemuUvm, UvmError
    from gcs.host.run import ContainerRun, RunOptions, wait_notification

    if shutil.which("qemu-system-x86_64") is None:
        print("== QEMU is not installed here (qemu-system-x86_64): the local-mode demo instead")
        return local_demo()
    print("== building the UVM image (Debian kernel + initrd with the agent as /bin/gcs)", flush=True)
    from gcs.host.cli import CliError, ensure_image
    try:
        ensure_image(IMAGE_DIR)
    except CliError as err:
        print(f"== {err}: the local-mode demo instead")
        return local_demo()
    image = demo_image()
    uvm = QemuUvm(uvm_dir or os.path.join(DEMO_DIR, "uvm"))
    t0 = time.monotonic()
    try:
        uvm.start()
    except UvmError as err:
        print(f"== QEMU could not run the UVM here:\n{err}\n== the local-mode demo instead")
        return local_demo()
    try:
        print(f"== UVM booted under QEMU ({uvm.accel_used.upper()}), agent negotiated over vsock in "
              f"{time.monotonic() - t0:.1f} s")
        devices = InProcessDeviceClient(uvm, report=lambda *_, **__: None)
        command = ["sh", "-c", 'cat /etc/motd; test -e /data/hello && gone="still there" || gone=gone; '
                               'echo "hostname $(hostname), pid $$; /data/hello (deleted by the top layer): $gone"; '
                               'echo ready; exec sleep 600']
        run = ContainerRun(uvm.bridge, devices, uvm.dir, RunOptions(image, command), report=print)
        t1 = time.monotonic()
        try:
            run.create(run.prepare())
            assert uvm.client is not None
            init = uvm.client.exec([], container_id=run.id, stdout=True, stderr=True, init_process=True)
            out = b""
            while not out.endswith(b"ready\n"):
                chunk = init.stdout.recv(4096)
                if not chunk:
                    break
                out += chunk
            print(f"== container {run.id[:12]} from {os.path.relpath(image, REPO_ROOT)} (2 layers on vPMEM, "
                  f"scratch on SCSI), running after {time.monotonic() - t1:.1f} s:")
            print(out.decode().removesuffix("ready\n"), end="")
            out, _, _ = uvm.client.run(["sh", "-c", "mount | grep -E '^/dev/(pmem|sd)'; echo; ps -o pid,ppid,rss,args "
                                                    "| grep -v -e ' \\[' -e 'ps -o' -e grep"])
            print("== in the UVM (what `gcsctl console` shows): mount | grep /dev/(pmem|sd); ps")
            print(out.decode(), end="")
            uvm.bridge.call(RequestId.SHUTDOWN_FORCED, run.id)
            _, _, code = init.communicate()
            note = wait_notification(uvm.bridge, run.id)
            print(f"== container stopped: exit code {code} ({note['Type'] if note else 'no notification'})")
        finally:
            run.teardown()
        t2 = time.monotonic()
        uvm.bridge.call(RequestId.SHUTDOWN_GRACEFUL)
        code = uvm.wait(60)
        print(f"== UVM shut down by the agent (QEMU exit {code}) in {time.monotonic() - t2:.1f} s; "
              f"its logs: {uvm.dir}/gcs.log, console.log")
    finally:
        uvm.stop()
    return 0


def local_demo() -> int:
    """A local-mode agent on this machine: processes, a signal, a container from a pmem layer."""
    import json
    import tempfile

    from gcs.host.images import attach_loop, detach_loop, make_layer_image
    from gcs.host.samples import busybox_rootfs, default_spec

    with tempfile.TemporaryDirectory(prefix="gcs-demo-") as tmp:
        # A read-only layer image on a loop device stands in for the host's vPMEM device.
        busybox_rootfs(os.path.join(tmp, "rootfs"))
        make_layer_image(os.path.join(tmp, "rootfs"), os.path.join(tmp, "layer.img"))
        loop = attach_loop(os.path.join(tmp, "layer.img"))
        os.makedirs(os.path.join(tmp, "devroot", "dev"))
        os.symlink(loop, os.path.join(tmp, "devroot", "dev", "pmem0"))
        t0 = time.monotonic()
        uvm = LocalUvm(os.path.join(tmp, "uvm"), loglevel="info",
                       extra_args=["--dev-root", os.path.join(tmp, "devroot")]).start()
        try:
            print(f"== local-mode agent negotiated protocol v4 in {(time.monotonic() - t0) * 1000:.0f} ms")
            assert uvm.client is not None and uvm.bridge is not None
            out, err, code = uvm.client.run(["sh", "-c", "echo hello from the UVM: $(uname -sr), uid $(id -u)"])
            print(f"== exec in the UVM -> exit {code}\n{out.decode()}{err.decode()}", end="")
            sleeper = uvm.client.exec(["sleep", "30"])
            out, _, _ = uvm.client.run(["ps", "-o", "pid,ppid,stat,args"])
            print(f"== ps (sleep 30 is pid {sleeper.pid})\n{out.decode()}", end="")
            sleeper.signal(signal.SIGTERM)
            print(f"== SIGTERM to pid {sleeper.pid} -> exit code {sleeper.wait()}")

            def modify(resource: str, settings: dict, request: str = "Add") -> None:
                uvm.bridge.call(RequestId.MODIFY_SETTINGS, Request={
                    "RequestType": request, "ResourceType": resource, "Settings": settings})

            modify("VPMemDevice", {"DeviceNumber": 0, "MountPath": "/run/layers/p0"})
            rootfs = "/run/gcs/c/demo/rootfs"
            modify("CombinedLayers", {"ContainerID": "demo", "ContainerRootPath": rootfs,
                                      "Layers": [{"Path": "/run/layers/p0"}],
                                      "ScratchPath": "/run/gcs/c/demo/scratch/demo"})
            spec = default_spec(["sh", "-c", "echo hello from container $(hostname), pid $$; "
                                             "grep CapEff /proc/self/status; "
                                             "echo processes in its pid namespace: $(ls /proc | grep -c '^[0-9]')"],
                                 rootfs)
            config = {"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": "/run/gcs/c/demo",
                      "OciSpecification": spec, "ScratchDirPath": "/run/gcs/c/demo/scratch/demo"}
            uvm.bridge.known_containers.add("demo")
            t1 = time.monotonic()
            uvm.bridge.call(RequestId.CREATE, "demo", ContainerConfig=json.dumps(config))
            uvm.bridge.call(RequestId.START, "demo")
            init = uvm.client.exec([], container_id="demo", stdout=True, stderr=True, init_process=True)
            out, err, code = init.communicate()
            note = uvm.bridge.notifications.get(timeout=10)
            print(f"== container from a pmem layer + overlay, native runtime: exit {code} in "
                  f"{(time.monotonic() - t1) * 1000:.0f} ms, notification {note['Type']}\n{out.decode()}{err.decode()}",
                  end="")
            modify("CombinedLayers", {"ContainerRootPath": rootfs}, "Remove")
            uvm.bridge.call(RequestId.DELETE_CONTAINER_STATE, "demo")
            modify("VPMemDevice", {"DeviceNumber": 0, "MountPath": "/run/layers/p0"}, "Remove")
            uvm.bridge.call(RequestId.SHUTDOWN_GRACEFUL)
            assert uvm.proc is not None
            print(f"== shutdown -> agent exited with {uvm.proc.wait(10)}")
        finally:
            uvm.stop()
            detach_loop(loop)
    return 0
