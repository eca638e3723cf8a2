"""`python -m bench network`: ModifySettings Network Add + configure in local mode, the agent
in a network namespace of its own (its "UVM" namespace) with veth ends as its NICs.

Printed beside the agent's figures: the kernel's own move of a link between two namespaces,
timed in the same run with the same netlink library. That move is most of an Add here
(~15-25 ms on this machine kind: the kernel waits for RCU), so the agent's share is the
difference, which is the figure to compare from run to run."""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable

from gcs.host.bridge_client import counters
from gcs.protocol.ids import RequestId

Report = Callable[[str, float, str, str, str], None]
NSID = "BE4C0000-0000-4000-8000-00000000BE4C"


def _veth(uvm_fd: int, peer_fd: int, n: int) -> str:
    """A NIC for the agent: one end of a veth pair in its namespace, the other in a peer
    namespace (so the agent's holds what a UVM's would: lo and the NICs not yet moved).
    Returns the MAC of the agent's end."""
    from gcs.network.netlink import Netlink
    mac = "02:be:4c:%02x:%02x:%02x" % (os.getpid() & 0xFF, n >> 8, n & 0xFF)
    with Netlink(uvm_fd) as nl:
        nl.ipr.link("add", ifname=f"bnic{n}", kind="veth", peer=f"bpeer{n}", address=mac)
        nl.move(nl.by_name(f"bpeer{n}").index, peer_fd)
    return mac


def _adapter(mac: str, n: int) -> dict:
    return {"NamespaceID": NSID, "ID": f"bench-{n}", "MacAddress": mac.replace(":", "-").upper(),
            "IPConfigs": [{"IPAddress": f"10.{100 + n // 250}.{n % 250}.2", "PrefixLength": 24}],
            "Routes": [{"DestinationPrefix": f"10.{200 + n // 250}.{n % 250}.0/24",
                        "NextHop": f"10.{100 + n // 250}.{n % 250}.1", "Metric": 0}]}


def _kernel_moves(rounds: int) -> list[float]:
    """The floor: one link moved between two fresh namespaces and back, netlink calls only."""
    from gcs.network.netlink import Netlink
    from gcs.network.netns import anonymous
    a, b = anonymous(), anonymous()
    samples = []
    try:
        with Netlink(a) as na, Netlink(b) as nb:
            na.ipr.link("add", ifname="kmove0", kind="veth", peer="kmove1")
            for _ in range(rounds):
                index = na.by_name("kmove0").index
                t0 = time.perf_counter()
                na.move(index, b)
                samples.append(time.perf_counter() - t0)
                nb.move(nb.by_name("kmove0").index, a)
    finally:
        os.close(a)
        os.close(b)
    return samples


def bench_network(tmp: str, report: Report, agent_class, rounds: int = 20) -> None:
    from gcs.host.images import attach_loop, detach_loop, make_layer_image
    from gcs.host.samples import busybox_rootfs, default_spec
    from gcs.network.netns import anonymous, entered

    root = os.path.join(tmp, "network")
    busybox_rootfs(os.path.join(root, "rootfs"))
    make_layer_image(os.path.join(root, "rootfs"), os.path.join(root, "busybox.img"))
    loop = attach_loop(os.path.join(root, "busybox.img"))
    uvm_fd, peer_fd = anonymous(), anonymous()
    os.makedirs(os.path.join(root, "devroot", "dev"))
    os.symlink(loop, os.path.join(root, "devroot", "dev", "pmem0"))
    os.makedirs(os.path.join(root, "uvm"))
    try:
        with entered(uvm_fd):  # the agent's namespace is the one its parent's thread is in
            agent = agent_class(os.path.join(root, "uvm"), ["--dev-root", os.path.join(root, "devroot")])
        call = agent.bridge.call
        try:
            before = agent.rss_mib()
            loaded = counters(agent.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"])["network_loaded"]
            t0 = time.perf_counter()
            call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "Network",
                                                     "Settings": _adapter(_veth(uvm_fd, peer_fd, 0), 0)})
            first = time.perf_counter() - t0
            report("pyroute2 loaded by start-up (DumpStacks network_loaded)", loaded, "", "0", "-")
            report("first Network Add (loads pyroute2 off the loop; before Create)", first * 1000, "ms", "-", "-")
            report("agent RSS: after start / after the first Network Add", before,
                   f"/ {agent.rss_mib():.1f} MiB", "-", "-")
            early = []
            for n in range(1, rounds + 1):
                settings = _adapter(_veth(uvm_fd, peer_fd, n), n)
                t0 = time.perf_counter()
                call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "Network",
                                                         "Settings": settings})
                early.append(time.perf_counter() - t0)
            call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "VPMemDevice",
                                                     "Settings": {"MountPath": "/run/layers/p0"}})
            call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "CombinedLayers",
                 "Settings": {"ContainerRootPath": "/run/gcs/c/pod/rootfs", "Layers": [{"Path": "/run/layers/p0"}],
                              "ScratchPath": "/run/gcs/c/pod/scratch"}})
            spec = default_spec(["sleep", "600"], "/run/gcs/c/pod/rootfs")
            spec["annotations"] = {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "pod"}
            spec["windows"]["network"]["networkNamespace"] = NSID
            config = {"SchemaVersion": {"Major": 2, "Minor": 1}, "OciBundlePath": "/run/gcs/c/pod",
                      "OciSpecification": spec}
            t0 = time.perf_counter()
            call(RequestId.CREATE, "pod", ContainerConfig=json.dumps(config))
            create = time.perf_counter() - t0
            call(RequestId.START, "pod")
            pid = call(RequestId.EXECUTE_PROCESS, "pod", Settings={"ProcessParameters": "{}"})["ProcessId"]
            late = []
            for n in range(rounds + 1, 2 * rounds + 1):
                settings = _adapter(_veth(uvm_fd, peer_fd, n), n)
                t0 = time.perf_counter()
                call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "Network",
                                                         "Settings": settings})
                late.append(time.perf_counter() - t0)
            call(RequestId.SIGNAL_PROCESS, "pod", ProcessId=pid, Options={"Signal": 9})
            call(RequestId.WAIT_FOR_PROCESS, "pod", ProcessId=pid, TimeoutInMs=30000)
            call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Remove", "ResourceType": "CombinedLayers",
                                                     "Settings": {"ContainerRootPath": "/run/gcs/c/pod/rootfs"}})
            call(RequestId.DELETE_CONTAINER_STATE, "pod")
        finally:
            agent.stop()
        kernel = statistics.median(_kernel_moves(rounds)) * 1000
        after = statistics.median(late) * 1000
        report("Network Add before Create (recorded; moved at Create)", statistics.median(early) * 1000, "ms",
               "-", "-")
        report(f"  sandbox Create moving and configuring those {rounds + 1} adapters", create * 1000, "ms", "-", "-")
        report("Network Add + configure one adapter after Create (moved at once)", after, "ms", "<= 20 ms", "-")
        report("  the kernel's move of one link alone (same run, no agent)", kernel, "ms", "-", "-")
        report("  the agent's share (Add - the kernel's move)", after - kernel, "ms", "-", "-")
    finally:
        os.close(uvm_fd)  # the namespaces go, and every veth in them
        os.close(peer_fd)
        detach_loop(loop)

