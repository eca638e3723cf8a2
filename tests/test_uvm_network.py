"""Networking end to end in a real QEMU guest (TCG here): a virtio-net NIC on QEMU user
networking with `restrict=on` (no tap, no bridge; the guest reaches nothing but the one
forward below), found by MAC, moved into a pod network namespace and configured as slirp
expects (10.0.2.15/24 via 10.0.2.2); a container of the pod reaches a TCP echo listener of
this machine on 127.0.0.1 through `guestfwd` (10.0.2.100:1234 -> a relay -> 127.0.0.1:PORT).

One UVM serves the module: a NIC present at boot (Add before Create), then one hot-plugged
over QMP (Add after Create), each moved back to the UVM namespace at DeleteContainerState
and nothing of them left.
"""
import json
import os
import sys
import textwrap
import threading
import time

import pytest

from gcs.host.bridge_client import counters
from gcs.host.launcher import REPO_ROOT
from gcs.host.qemu import UserNic
from gcs.host.run import ContainerRun, RunOptions
from gcs.protocol.ids import RequestId

from network_env import EchoServer
from uvm_env import (IMAGE_DIR, TEST_INIT_ARGS, build_image, busybox_oci_image, device_client, guest, requires_qemu,
                     running_vm)

pytestmark = requires_qemu

NSID = "0C5E7F4A-2B9D-4E61-8F3A-00000000A001"
BOOT_MAC, HOT_MAC = "02:51:00:00:00:0b", "02:51:00:00:00:0c"
GUEST_IP, GATEWAY, DNS = "10.0.2.15", "10.0.2.2", "10.0.2.3"  # slirp's defaults
FWD_IP, FWD_PORT = "10.0.2.100", 1234
RELAY = textwrap.dedent('''\
    import os, socket, sys, threading
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    def up():
        while data := os.read(0, 65536):
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    threading.Thread(target=up, daemon=True).start()
    while data := s.recv(65536):
        os.write(1, data)
''')


@pytest.fixture(scope="module")
def echo():
    e = EchoServer(None, "127.0.0.1")
    yield e
    e.close()


@pytest.fixture(scope="module")
def vm(tmp_path_factory, echo):
    build_image()
    d = tmp_path_factory.mktemp("uvmnet")
    relay = d / "relay.py"
    relay.write_text(RELAY)
    fwd = f"tcp:{FWD_IP}:{FWD_PORT}-cmd:{sys.executable} {relay} {echo.port}"
    with running_vm(d / "uvm", init_args=TEST_INIT_ARGS, loglevel="debug",
                    nics=[UserNic(BOOT_MAC, id="net0", guestfwd=(fwd,))], nic_slots=1) as u:
        u.fwd = fwd
        yield u


@pytest.fixture(scope="module")
def oci_image(tmp_path_factory):
    with busybox_oci_image(str(tmp_path_factory.mktemp("netimage"))) as image:
        yield image


@pytest.fixture
def devices(vm):
    with device_client(vm) as d:
        yield d


def state(vm):
    return counters(vm.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"])


def network(vm, request, settings):
    vm.bridge.call(RequestId.MODIFY_SETTINGS, timeout=60, Request={
        "RequestType": request, "ResourceType": "Network", "Settings": settings})


def adapter(aid, mac, dhcp=False):
    """The host's LCOWNetworkAdapter for slirp's network (static, or none: DHCP from slirp)."""
    return {"NamespaceID": NSID, "ID": aid, "MacAddress": mac.replace(":", "-").upper(),
            "IPConfigs": [] if dhcp else [{"IPAddress": GUEST_IP, "PrefixLength": 24}],
            "Routes": [] if dhcp else [{"DestinationPrefix": "0.0.0.0/0", "NextHop": GATEWAY, "Metric": 0}],
            "DNSServerList": DNS, "DNSSuffix": "example.test"}


def sandbox(vm, devices, image, name, annotations=None):
    """A pod sandbox container in the NSID network namespace; returns (run, its init)."""
    run = ContainerRun(vm.bridge, devices, vm.dir, RunOptions(image, ["sh", "-c", "echo up; exec sleep 1000"],
                                                              name=name), report=print)
    try:
        spec = run.prepare()
        spec["annotations"] = {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": name,
                               **(annotations or {})}
        spec["windows"]["network"]["networkNamespace"] = NSID
        run.create(spec)
        init = vm.client.exec([], container_id=run.id, stdout=True, stderr=True, init_process=True)
        assert init.stdout.recv(10) == b"up\n"
    except BaseException:
        run.teardown()
        raise
    return run, init


def in_container(vm, run, script):
    proc = vm.client.exec([], container_id=run.id, stdout=True, stderr=True, oci_process={
        "args": ["sh", "-c", script], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}})
    out, err, code = proc.communicate()
    return out.decode(), err.decode(), code


def uvm_link(vm, mac):
    """(name, operstate, IPv4 addresses) of the UVM-namespace link with `mac`, or None."""
    out, _, _ = guest(vm, f"for d in /sys/class/net/*; do grep -qx {mac} $d/address && "
                          "{ n=${d##*/}; echo $n $(cat $d/operstate); ip -o -4 addr show dev $n; }; done")
    if not out.strip():
        return None
    first, *rest = out.splitlines()
    return first.split()[0], first.split()[1], [line.split()[3] for line in rest]


def wait_uvm_link(vm, mac, timeout=60):
    """virtio_net loads in the background while the agent starts: the NIC shows up a moment later."""
    deadline = time.monotonic() + timeout
    while (link := uvm_link(vm, mac)) is None:
        assert time.monotonic() < deadline, f"no link with MAC {mac} in the UVM"
        time.sleep(0.5)
    return link


TRAFFIC = (f"ip -o -4 addr show; ip route; ls /sys/class/net; echo ---; cat /etc/resolv.conf; echo ---; "
           f"echo hi from the pod | nc {FWD_IP} {FWD_PORT}")


def check_pod_view(out, nic, default_route=True):
    view, resolv, reply = out.split("---\n")
    assert f"inet {GUEST_IP}/24" in view and f"10.0.2.0/24 dev {nic}" in view, view
    assert (f"default via {GATEWAY} dev {nic}" in view) == default_route, view
    assert view.split()[-2:] == sorted(["lo", nic]), view  # ls /sys/class/net: the pod's links only
    assert resolv == f"search example.test\nnameserver {DNS}\n", resolv
    assert reply.strip() == "echo:hi from the pod", reply


# --- the image ---------------------------------------------------------------------------------
def test_the_image_has_pyroute2s_iproute_and_only_the_stdlib_it_needs():
    if os.path.join(REPO_ROOT, "initrd") not in sys.path:
        sys.path.insert(0, os.path.join(REPO_ROOT, "initrd"))
    import cpio

    build_image()
    names = {name for name, _, _ in cpio.read(os.path.join(IMAGE_DIR, "initrd.img"))}
    site, stdlib = "usr/lib/python3/dist-packages/pyroute2", "usr/lib/python3.11"
    assert {f"{site}/__init__.pyc", f"{site}/iproute/linux.pyc", f"{site}/netlink/rtnl/ifinfmsg/__init__.pyc"} <= names
    # no NDB/IPDB/CLI, and no dist-info: `import pyroute2` loads no entry points
    unwanted = (f"{site}/ndb", f"{site}/ipdb", f"{site}/cli", f"{site}-")
    assert not any(n.startswith(unwanted) for n in names)
    kept = ("asyncio/__init__", "email/message", "multiprocessing/context", "unittest/mock", "concurrent/__init__",
            "difflib", "zipfile")
    assert all(f"{stdlib}/{m}.pyc" in names for m in kept)
    assert not any(n.startswith((f"{stdlib}/sqlite3", f"{stdlib}/http", f"{stdlib}/email/mime", f"{stdlib}/ssl"))
                   for n in names)


# --- start-up --------------------------------------------------------------------------------
def test_the_agent_starts_without_pyroute2_and_the_image_has_it(vm):
    assert state(vm)["network_loaded"] == 0  # start-up, negotiation, DumpStacks: no netlink
    # what the first network request pays, under TCG (figures for the report)
    out, err, code = guest(vm, "cd /tmp && python3 -S -E -X importtime -c 'import sys; "
                               "sys.path[:0] = [\"/opt/pygcs\", \"/usr/lib/python3/dist-packages\"]; "
                               "import gcs.network.netlink' 2>&1 | tail -1")
    assert code == 0 and "gcs.network.netlink" in out, out + err
    print("pyroute2 import in the guest (us, self | cumulative):", out.strip())
    log = [json.loads(line) for line in open(vm.log_path)]
    first = next(r for r in log if r.get("msg") == "first negotiation answered")
    print(f"agent exec -> first negotiation answered: {first['since_exec_ms']} ms")


# --- a NIC present at boot, Add before Create --------------------------------------------------
def test_boot_nic_moves_into_the_pod_and_reaches_the_host(vm, devices, oci_image, echo):
    nic, _, addrs = wait_uvm_link(vm, BOOT_MAC)
    assert addrs == []
    # the first network request loads pyroute2 (~2 s under TCG) off the event loop: a request
    # sent meanwhile is answered before it ends
    done, errors = threading.Event(), []

    def add():
        try:
            network(vm, "Add", adapter("boot-nic", BOOT_MAC))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
        finally:
            done.set()

    t0 = time.monotonic()
    adder = threading.Thread(target=add, daemon=True)
    adder.start()
    time.sleep(0.3)
    t1 = time.monotonic()
    state(vm)
    answered, answered_first = time.monotonic() - t1, not done.is_set()
    adder.join(60)
    took = time.monotonic() - t0
    assert not errors and done.is_set(), errors
    print(f"first Network Add (pyroute2 loaded in the guest): {took * 1000:.0f} ms; "
          f"DumpStacks meanwhile: {answered * 1000:.0f} ms")
    if took > 1.0:  # under TCG (a KVM guest may load it within the 0.3 s)
        assert answered_first
    assert state(vm)["network_loaded"] == 1
    assert uvm_link(vm, BOOT_MAC) is not None  # recorded; it moves at the sandbox's Create
    run, init = sandbox(vm, devices, oci_image, "netpod1")
    try:
        assert uvm_link(vm, BOOT_MAC) is None  # in the pod namespace now
        before = len(echo.peers)
        out, err, code = in_container(vm, run, TRAFFIC)
        assert code == 0, err
        check_pod_view(out, nic)
        assert len(echo.peers) == before + 1  # it really came through the relay to 127.0.0.1
        out, _, _ = in_container(vm, run, "ls /sys/class/net")
        assert out.split() == sorted(["lo", nic])
        out, _, _ = guest(vm, "ls /run/netns")
        assert len(out.split()) == 1
    finally:
        run.stop()
        init.close()
        run.teardown()  # ... DeleteContainerState last
    # back in the UVM namespace: down, no address; the record stays until Remove
    name, oper, addrs = uvm_link(vm, BOOT_MAC)
    assert name == nic and oper == "down" and addrs == []
    assert state(vm)["network_adapters"] == 1
    network(vm, "Remove", {"NamespaceID": NSID, "ID": "boot-nic"})
    check_nothing_left(vm)


def check_nothing_left(vm):
    s = state(vm)
    assert s["network_namespaces"] == 0 and s["network_adapters"] == 0, s
    out, _, _ = guest(vm, "ls /run/netns 2>/dev/null; grep -c netns /proc/mounts; ip -o -4 addr show | grep -v ' lo '")
    assert out.split() == ["0"], out


# --- a NIC hot-plugged over QMP, Add after Create, its address from slirp's DHCP ----------------
def test_hot_plugged_nic_moves_at_once_leased_by_dhcp_and_reaches_the_host(vm, devices, oci_image, echo):
    run, init = sandbox(vm, devices, oci_image, "netpod2")
    try:
        out, _, _ = in_container(vm, run, "ls /sys/class/net")
        assert out == "lo\n"
        vm.hotplug.add_nic(UserNic(HOT_MAC, id="net1", guestfwd=(vm.fwd,)))
        nic, _, _ = wait_uvm_link(vm, HOT_MAC)
        network(vm, "Add", adapter("hot-nic", HOT_MAC, dhcp=True))  # udhcpc in the pod namespace
        assert uvm_link(vm, HOT_MAC) is None  # moved at once
        out, err, code = in_container(vm, run, TRAFFIC)
        assert code == 0, err
        # slirp's lease under restrict=on names no router (nor DNS: these are the host's). The
        # "echo:" reply can only come from the echo server on 127.0.0.1 (the connection count is
        # not checked here: once, in CI, it stayed put although the reply came; not understood).
        check_pod_view(out, nic, default_route=False)
    finally:
        run.stop()
        init.close()
        run.teardown()
    name, oper, addrs = uvm_link(vm, HOT_MAC)
    assert name == nic and oper == "down" and addrs == []
    network(vm, "Remove", {"NamespaceID": NSID, "ID": "hot-nic"})
    check_nothing_left(vm)
    vm.hotplug.remove_nic("net1")  # the guest lets go of the device: unplugged
    assert uvm_link(vm, HOT_MAC) is None and not vm.hotplug.nics
    # the boot NIC is still there, untouched
    assert uvm_link(vm, BOOT_MAC) is not None


# --- host network: the boot NIC configured in the UVM's own namespace -----------------------
def test_host_network_configures_the_uvm_namespace_and_its_resolv_conf(vm, devices, oci_image, echo):
    nic, _, _ = wait_uvm_link(vm, BOOT_MAC)
    network(vm, "Add", adapter("boot-nic", BOOT_MAC))
    run, init = sandbox(vm, devices, oci_image, "hostpod",
                        annotations={"io.microsoft.virtualmachine.lcow.hostnetwork": "true"})
    try:
        name, oper, addrs = uvm_link(vm, BOOT_MAC)
        assert name == nic and oper == "up" and addrs == [f"{GUEST_IP}/24"]
        out, _, _ = guest(vm, f"cat /etc/resolv.conf; echo hi from the uvm | nc {FWD_IP} {FWD_PORT}")
        assert out == f"search example.test\nnameserver {DNS}\necho:hi from the uvm\n", out
    finally:
        run.stop()
        init.close()
        run.teardown()
    assert uvm_link(vm, BOOT_MAC)[2] == []
    network(vm, "Remove", {"NamespaceID": NSID, "ID": "boot-nic"})
    check_nothing_left(vm)
