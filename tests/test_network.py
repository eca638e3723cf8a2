"""Networking over the bridge of a local-mode agent run in a network namespace of its own:
veth ends stand in for hot-added NICs (found by MAC), their peers sit in a namespace the test
made, and containers of both runtimes reach them (ping, TCP) through the pod namespace."""
import os
import re
import subprocess
import sys
import time

import pytest

from gcs.host.bridge_client import RpcError, counters
from gcs.host.launcher import LocalUvm
from gcs.network.netlink import Netlink
from gcs.protocol import hresult as hr
from gcs.protocol.ids import RequestId

from conftest import requires_root
from containers_env import Host, busybox_layer, default_spec
from network_env import EchoServer, Net, adapter, start_agent
from storage_env import DeviceTree, Loops

pytestmark = requires_root

NSID = "6F0E6C6B-5B7D-4B1A-9F0E-0123456789AB"   # as the host sends it: upper case
POD = [("10.250.0.2", 24), ("fd00:250::2", 64)]
PEER = [("10.250.0.1", 24), ("fd00:250::1", 64)]
ROUTES = [("0.0.0.0/0", "10.250.0.1", 0), ("::/0", "fd00:250::1", 0), ("10.251.0.0/16", "10.250.0.1", 7)]
DNS = {"DNSSuffix": "svc.cluster.local,Cluster.Local, svc.cluster.local", "DNSServerList": "10.250.0.10,10.250.0.11"}
ALL_CAPS = ["CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
VIEWS = {}  # runtime -> what a container saw, for the differential test


@pytest.fixture(scope="module")
def layer_image(tmp_path_factory):
    return busybox_layer(tmp_path_factory.mktemp("bbnet"))


@pytest.fixture
def net():
    n = Net()
    try:
        yield n
    finally:
        n.close()  # the namespaces go, and with them every veth the test made


def _agent(request_param, tmp_path, layer_image, net, monkeypatch):
    loops = Loops()
    tree = DeviceTree(str(tmp_path), loops)
    tree.add_pmem(0, layer_image)
    try:
        uvm = start_agent(net, str(tmp_path / "uvm"), tree.args() + ["--runtime", request_param, "--nic-wait", "1"])
    except BaseException:
        loops.detach_all()
        raise
    h = Host(uvm)
    h.net = net
    h.runtime = request_param
    h.modify("VPMemDevice", {"MountPath": "/run/layers/p0"})
    return h, loops


def _finish(h, loops):
    uvm = h.uvm
    try:
        netns_left = os.listdir(h.in_uvm("/run/netns")) if os.path.isdir(h.in_uvm("/run/netns")) else []
        violations = list(uvm.bridge.violations)
    finally:
        uvm.stop()
        loops.detach_all()
    assert violations == []
    assert netns_left == []


@pytest.fixture(params=["native", "runc"])
def host(request, tmp_path, layer_image, net, monkeypatch):
    h, loops = _agent(request.param, tmp_path, layer_image, net, monkeypatch)
    try:
        yield h
    finally:
        _finish(h, loops)


@pytest.fixture
def native(tmp_path, layer_image, net, monkeypatch):
    h, loops = _agent("native", tmp_path, layer_image, net, monkeypatch)
    try:
        yield h
    finally:
        _finish(h, loops)


def state(h):
    return counters(h.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"])


def sandbox_spec(h, cid, args=("sleep", "60"), nsid=NSID, **kw):
    root = h.layers(cid, ["/run/layers/p0"])
    spec = default_spec(list(args), root, **kw)
    spec["annotations"] = {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": cid}
    spec["windows"]["network"]["networkNamespace"] = nsid
    spec["hostname"] = "pod.example.test"
    return spec


def workload_spec(h, cid, sandbox, args):
    root = h.layers(cid, ["/run/layers/p0"])
    spec = default_spec(list(args), root)
    spec.pop("hostname")
    spec["annotations"] = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sandbox}
    return spec


def run(h, cid, script, caps=False):
    extra = {"capabilities": {k: ALL_CAPS for k in ("bounding", "effective", "permitted")}} if caps else {}
    out, err, code = h.exec(cid, ["sh", "-c", script], **extra).communicate()
    return out.decode(), err.decode(), code


VIEW_SCRIPT = ("cat /sys/class/net/{nic}/mtu /sys/class/net/{nic}/operstate; ip -o addr show dev {nic} | "
               "awk '{{print $3, $4}}' | grep -v fe80; ip route; ip -6 route show dev {nic} | grep -v fe80; ip rule; "
               "echo ---; cat /etc/resolv.conf; echo ---; cat /etc/hosts /etc/hostname; hostname; ls /sys/class/net")


def view(h, cid, nic):
    out, err, code = run(h, cid, VIEW_SCRIPT.format(nic=nic))
    assert code == 0, err
    return re.sub(r"\bexpires \d+sec\b|\bproto kernel\b *", "", out)


def traffic(h, cid, echo_port):
    """ping (v4 and v6) and a TCP echo from the container to the peer namespace."""
    script = (f"ping -c 1 -W 2 {PEER[0][0]} >/dev/null && echo ping4 ok; "
              f"for i in 1 2 3 4 5 6 7 8; do ping6 -c 1 -W 1 {PEER[1][0]} >/dev/null 2>&1 && echo ping6 ok && break; "
              f"sleep 0.5; done; echo hi | nc {PEER[0][0]} {echo_port}; echo; "
              f"echo hi6 | nc {PEER[1][0]} {echo_port + 1}")
    out, err, code = run(h, cid, script, caps=True)
    return out.split("\n")


def test_agent_loads_pyroute2_only_when_networking_is_used(native):
    assert state(native)["network_loaded"] == 0  # start-up, a pmem layer, DumpStacks: none of it
    native.modify("Network", {"NamespaceID": "aa", "ID": "bb"}, "Remove")
    assert state(native)["network_loaded"] == 0  # forgetting nothing needs no netlink
    mac, _ = native.net.veth()
    native.modify("Network", adapter("aa", mac, "bb", [("10.9.9.9", 24)]))
    assert state(native)["network_loaded"] == 1
    native.modify("Network", {"NamespaceID": "aa", "ID": "bb"}, "Remove")


def test_netlink_imports_iproute_without_pyroute2s_entry_points_and_mocking_hook():
    """What the agent's first network request loads: IPRoute, not NDB/IPDB (sqlite3), not
    importlib.metadata's scan of every distribution, not unittest.mock (and asyncio with it)."""
    script = ("import sys; import gcs.network.netlink as n; nl = n.Netlink(None); names = [l.name for l in nl.links()]; "
              "nl.close(); print('lo' in names, sorted(m for m in ('asyncio', 'sqlite3', 'unittest.mock', "
              "'importlib.metadata', 'pyroute2.ndb', 'pyroute2.ipdb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
    assert out.split("\n")[0] == "True []", out


def test_pyroute2_found_without_importing_it_even_sourceless(tmp_path, monkeypatch):
    """The UVM image has bytecode only (pyroute2/__init__.pyc): still found, still not imported."""
    from gcs import network
    monkeypatch.delitem(sys.modules, "pyroute2", raising=False)
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert not network.pyroute2_present()
    (tmp_path / "pyroute2").mkdir()
    (tmp_path / "pyroute2" / "__init__.pyc").write_bytes(b"")
    assert network.pyroute2_present() and "pyroute2" not in sys.modules


def test_negotiate_advertises_networking_only_where_it_works(net, tmp_path):
    uvm = start_agent(net, str(tmp_path / "own"), [], negotiate=False)
    try:
        caps = uvm.bridge.negotiate()["Capabilities"]["GuestDefinedCapabilities"]
        assert caps.get("NamespaceAddRequestSupported") is True
    finally:
        uvm.stop()
    # in the machine's own namespace a local-mode agent serves no networking, and says so
    machine = LocalUvm(str(tmp_path / "machine"))
    machine.start(negotiate=False)
    try:
        caps = machine.bridge.negotiate()["Capabilities"]["GuestDefinedCapabilities"]
        assert "NamespaceAddRequestSupported" not in caps and caps["SignalProcessSupported"] is True
        with pytest.raises(RpcError) as info:
            Host(machine).modify("Network", adapter(NSID, "02:00:00:00:00:01", "X", POD))
        assert info.value.hresult == hr.E_NOTIMPL and "own network namespace" in str(info.value)
    finally:
        machine.stop()


def test_adapter_added_before_create_moves_at_create(host):
    net = host.net
    mac, nic = net.veth(PEER)
    host.modify("Network", adapter(NSID, mac, "A1", POD, ROUTES, EncapOverhead=50, **DNS))
    assert nic in net.uvm_links()  # recorded, not moved yet
    host.create("sb", sandbox_spec(host, "sb"))
    assert nic not in net.uvm_links()  # moved into the pod namespace at Create
    init = host.start("sb", stdout=False, stderr=False)
    seen = view(host, "sb", nic)
    lines = seen.split("\n")
    assert lines[0] == "1450" and lines[1] in ("up", "unknown")
    assert "10.250.0.2/24" in seen and "fd00:250::2/64" in seen
    assert "default via 10.250.0.1 dev %s" % nic in seen and "10.251.0.0/16 via 10.250.0.1 dev %s" % nic in seen
    assert "metric 7" in seen and "default via fd00:250::1" in seen
    resolv = seen.split("---\n")[1]
    assert resolv == "search svc.cluster.local cluster.local\nnameserver 10.250.0.10\nnameserver 10.250.0.11\n"
    hosts = seen.split("---\n")[2]
    assert "127.0.0.1 pod.example.test pod\n" in hosts and hosts.endswith("pod.example.test\npod.example.test\n"
                                                                         + _ls_net(nic))
    VIEWS[host.runtime] = seen
    with EchoServer(net.peer, PEER[0][0], 7070) as _e4, EchoServer(net.peer, PEER[1][0], 7071) as _e6:
        out = traffic(host, "sb", 7070)
    assert "ping4 ok" in out and "ping6 ok" in out and "echo:hi" in out and "echo:hi6" in out, out
    # a workload shares the pod's network (its spec asks for a new namespace: it gets the pod's)
    host.create("wl", workload_spec(host, "wl", "sb", ["sleep", "60"]))
    wl = host.start("wl", stdout=False, stderr=False)
    seen_wl = view(host, "wl", nic)
    assert "10.250.0.2/24" in seen_wl and seen_wl.split("---\n")[1] == resolv
    out, err, code = run(host, "wl", "grep ' /etc/resolv.conf ' /proc/self/mountinfo | wc -l")
    assert out == "1\n"  # the pod's file, bind-mounted
    # statistics: the pod's interfaces with their counters
    props = host.bridge.call(RequestId.GET_PROPERTIES, container_id="sb",
                             Query='{"PropertyTypes":["Statistics"]}')["Properties"]
    import json
    network = {n["interface"]: n for n in json.loads(props)["LCOWMetrics"]["network"]}
    assert set(network) == {"lo", nic} and network[nic]["tx_packets"] >= 3 and network[nic]["rx_bytes"] > 0
    for proc, cid in ((wl, "wl"), (init, "sb")):
        proc.kill()
        proc.wait()
        host.notification()
        host.remove(cid)
    # the adapter went back to the UVM namespace, down and unconfigured; the record stays
    links = net.uvm_links()
    assert nic in links and not links[nic].up and net.uvm_addresses(nic) == [] or \
        all(a.startswith("fe80") for a, _ in net.uvm_addresses(nic))
    assert state(host)["network_adapters"] == 1
    host.modify("Network", {"NamespaceID": NSID, "ID": "a1"}, "Remove")  # its ID in another case
    assert state(host)["network_namespaces"] == 0


def _ls_net(nic):
    return "\n".join(sorted(["lo", nic])) + "\n"


def test_adapter_added_after_create_moves_at_once(host):
    net = host.net
    mac, nic = net.veth(PEER)
    host.create("sb2", sandbox_spec(host, "sb2"))
    init = host.start("sb2", stdout=False, stderr=False)
    out, _, _ = run(host, "sb2", "ls /sys/class/net; cat /etc/resolv.conf")
    assert out == "lo\n"
    warm_mac, _ = net.veth()
    t = time.monotonic()
    host.modify("Network", adapter("warm-up", warm_mac, "W", [("10.9.0.2", 24)]))  # loads pyroute2
    cold = time.monotonic() - t
    t = time.monotonic()
    host.modify("Network", adapter(NSID.lower(), mac, "A2", POD, ROUTES[:2], **DNS))
    took = time.monotonic() - t
    host.modify("Network", {"NamespaceID": "warm-up", "ID": "W"}, "Remove")
    assert nic not in net.uvm_links()
    seen = view(host, "sb2", nic)
    assert "10.250.0.2/24" in seen and "default via 10.250.0.1" in seen
    assert seen.split("---\n")[1].startswith("search svc.cluster.local cluster.local\n")  # rewritten in place
    with EchoServer(net.peer, PEER[0][0], 7072), EchoServer(net.peer, PEER[1][0], 7073):
        out = traffic(host, "sb2", 7072)
    assert "ping4 ok" in out and "echo:hi" in out and "echo:hi6" in out, out
    print(f"Add + configure one adapter over the bridge: {took * 1000:.1f} ms "
          f"(the first network request, pyroute2 loaded: {cold * 1000:.1f} ms)")
    end_pod(host, "sb2", init, nic, "A2")


def end_pod(h, cid, init, nic, adapter_id):
    """The sandbox ended and removed: its NIC is back in the UVM namespace; the adapter's record dropped."""
    init.kill()
    init.wait()
    h.notification()
    h.remove(cid)
    assert nic in h.net.uvm_links()
    h.modify("Network", {"NamespaceID": NSID, "ID": adapter_id}, "Remove")


def test_native_and_runc_give_the_same_network_view():
    if set(VIEWS) != {"native", "runc"}:
        pytest.skip("needs both runtimes' views (test_adapter_added_before_create_moves_at_create)")
    assert VIEWS["native"] == VIEWS["runc"]


def test_policy_routing_and_on_link_gateway(native):
    net = native.net
    mac1, nic1 = net.veth([("10.250.0.1", 24)])
    mac2, nic2 = net.veth([("10.252.0.1", 24)])
    native.modify("Network", adapter(NSID, mac1, "P1", [("10.250.0.2", 24)], [("0.0.0.0/0", "10.250.0.1", 0)],
                                     PolicyBasedRouting=True))
    # a gateway outside the adapter's subnet: added on-link (upstream's fallback)
    native.modify("Network", adapter(NSID, mac2, "P2", [("10.252.0.2", 24)], [("0.0.0.0/0", "10.253.0.1", 0)],
                                     PolicyBasedRouting=True))
    native.create("pbr", sandbox_spec(native, "pbr"))
    init = native.start("pbr", stdout=False, stderr=False)
    out, err, code = run(native, "pbr", f"ip rule; ip route show table 101; ip -o addr show dev {nic2}")
    assert code == 0, err
    assert "5:\tfrom 10.252.0.2 lookup 101" in out            # the second adapter's source rule
    assert f"default via 10.253.0.1 dev {nic2}" in out and "metric 500" in out
    assert "10.253.0.1/32" in out                              # the gateway made on-link
    assert "from 10.250.0.2" not in out                        # the first adapter keeps the main table
    init.kill()
    init.wait()
    native.notification()
    native.remove("pbr")
    for aid in ("P1", "P2"):
        native.modify("Network", {"NamespaceID": NSID, "ID": aid}, "Remove")


def expect_error(h, settings, hresult, request_type="Add"):
    with pytest.raises(RpcError) as info:
        h.modify("Network", settings, request_type)
    assert info.value.hresult == hresult, info.value
    return str(info.value)


def test_bad_input(native):
    net = native.net
    mac, nic = net.veth()
    # unknown adapter: a bounded wait (--nic-wait 1 here; 5 s by default), then a clear error
    t = time.monotonic()
    text = expect_error(native, adapter(NSID, "02:00:00:00:00:99", "missing", POD), hr.E_FAIL)
    assert 0.9 < time.monotonic() - t < 3 and "not found within 1 s" in text
    # invalid address or prefix, invalid route: refused before anything is touched
    expect_error(native, adapter(NSID, mac, "bad", [("10.0.0.300", 24)]), hr.E_INVALIDARG)
    expect_error(native, adapter(NSID, mac, "bad", [("10.0.0.3", 33)]), hr.E_INVALIDARG)
    expect_error(native, adapter(NSID, mac, "bad", [("fd00::3", 129)]), hr.E_INVALIDARG)
    expect_error(native, adapter(NSID, mac, "bad", POD, [("10.0.0.0/40", "10.0.0.1", 0)]), hr.E_INVALIDARG)
    expect_error(native, adapter(NSID, mac, "bad", POD, [("10.0.0.0/8", "fd00::1", 0)]), hr.E_INVALIDARG)
    expect_error(native, adapter(NSID, mac, "bad", POD, DNSSuffix="a,b,c,d,e,f,g"), hr.E_INVALIDARG)
    assert state(native)["network_namespaces"] == 0  # failed first Adds leave no record
    # a namespace id no container uses: recorded, the link stays in the UVM, untouched
    native.modify("Network", adapter("unused-ns", mac, "U1", [("10.9.0.2", 24)]))
    assert nic in net.uvm_links() and net.uvm_addresses(nic) == []
    expect_error(native, adapter("UNUSED-NS", mac, "u1", [("10.9.0.2", 24)]), hr.ALREADY_EXISTS)  # duplicate
    native.modify("Network", {"NamespaceID": "unused-ns", "ID": "never-added"}, "Remove")
    native.modify("Network", {"NamespaceID": "no-such-ns", "ID": "U1"}, "Remove")
    native.modify("Network", {"NamespaceID": "unused-ns", "ID": "U1"}, "Remove")
    assert state(native)["network_namespaces"] == 0
    expect_error(native, {"NamespaceID": NSID, "ID": "x"}, hr.E_FAIL, "Update")


def test_a_move_failing_half_way_leaves_nothing_configured(native):
    net = native.net
    mac, nic = net.veth(PEER)
    # after Create: the move succeeds, the MTU (1500 - 1490) is refused by the kernel
    native.create("hf", sandbox_spec(native, "hf"))
    init = native.start("hf", stdout=False, stderr=False)
    text = expect_error(native, adapter(NSID, mac, "H1", POD, ROUTES[:1], EncapOverhead=1490), hr.E_FAIL)
    assert "MTU" in text
    links = net.uvm_links()
    assert nic in links and not links[nic].up and links[nic].mtu == 1500 and net.uvm_addresses(nic) == []
    out, _, _ = run(native, "hf", "ls /sys/class/net")
    assert out == "lo\n"
    assert state(native)["network_adapters"] == 0
    # it can be added properly afterwards
    native.modify("Network", adapter(NSID, mac, "H1", POD, ROUTES[:1]))
    assert nic not in net.uvm_links()
    init.kill()
    init.wait()
    native.notification()
    native.remove("hf")
    native.modify("Network", {"NamespaceID": NSID, "ID": "H1"}, "Remove")
    # before Create: the failure fails the Create, which leaves nothing behind
    native.modify("Network", adapter(NSID, mac, "H2", POD, ROUTES[:1], EncapOverhead=1490))
    with pytest.raises(RpcError) as info:
        native.create("hf2", sandbox_spec(native, "hf2"))
    assert "MTU" in str(info.value)
    links = net.uvm_links()
    assert nic in links and not links[nic].up and net.uvm_addresses(nic) == []
    assert os.listdir(native.in_uvm("/run/netns")) == []
    native.modify("CombinedLayers", {"ContainerRootPath": "/run/gcs/c/hf2/rootfs"}, "Remove")
    native.modify("Network", {"NamespaceID": NSID, "ID": "H2"}, "Remove")


def test_host_network_configures_in_place(native):
    net = native.net
    mac, nic = net.veth(PEER)
    native.modify("Network", adapter(NSID, mac, "N1", [("10.250.0.2", 24)]))
    spec = sandbox_spec(native, "hn")
    spec["annotations"]["io.microsoft.virtualmachine.lcow.hostnetwork"] = "true"
    native.create("hn", spec)
    assert nic in net.uvm_links() and ("10.250.0.2", 24) in net.uvm_addresses(nic)
    init = native.start("hn", stdout=False, stderr=False)
    out, _, _ = run(native, "hn", "ls /sys/class/net")
    assert nic in out.split()
    init.kill()
    init.wait()
    native.notification()
    native.remove("hn")
    assert ("10.250.0.2", 24) not in net.uvm_addresses(nic)
    native.modify("Network", {"NamespaceID": NSID, "ID": "N1"}, "Remove")


def test_links_stacked_on_the_nic_are_passed_over(native):
    """A bridge and a macvlan with the NIC's MAC (found by ioctls, told apart by the driver
    ethtool names) stay in the UVM namespace; the NIC itself is the one moved, with its MTU
    and state set in the same message as the move."""
    net = native.net
    mac, nic = net.veth(PEER)
    with Netlink(net.uvm) as nl:
        index = nl.by_name(nic).index
        nl.ipr.link("add", ifname="tstackbr", kind="bridge", address=mac)
        nl.ipr.link("add", ifname="tstackmv", kind="macvlan", link=index, macvlan_mode="passthru")
    native.create("st", sandbox_spec(native, "st"))
    init = native.start("st", stdout=False, stderr=False)
    native.modify("Network", adapter(NSID, mac, "S1", POD[:1], ROUTES[:1], EncapOverhead=100))
    out, _, _ = run(native, "st", f"ls /sys/class/net; cat /sys/class/net/{nic}/mtu /sys/class/net/{nic}/operstate")
    assert out.split() == ["lo", nic, "1400", "up"] or out.split() == [nic, "lo", "1400", "up"], out
    links = net.uvm_links()
    assert "tstackbr" in links and "tstackmv" in links and nic not in links
    end_pod(native, "st", init, nic, "S1")


def test_dhcp_client_missing_is_not_implemented(monkeypatch, tmp_path):
    """Where neither udhcpc nor busybox can be found: E_NOTIMPL at Add, before any change."""
    from gcs.network import namespaces
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(hr.GcsError) as info:
        namespaces._dhcp_command("eth0")
    assert info.value.hresult == hr.E_NOTIMPL and "DHCP" in str(info.value) and "udhcpc" in str(info.value)


def udhcpd(net, tmp_path, peer):
    """busybox's DHCP server on the peer end `peer`, in the peer namespace."""
    conf = tmp_path / "udhcpd.conf"
    conf.write_text(f"start 10.254.0.50\nend 10.254.0.60\ninterface {peer}\noption subnet 255.255.255.0\n"
                    f"option router 10.254.0.1\noption dns 10.254.0.53\noption domain dhcp.test\n"
                    f"lease_file {tmp_path}/leases\npidfile {tmp_path}/udhcpd.pid\n")
    return subprocess.Popen(["nsenter", f"--net=/proc/self/fd/{net.peer}", "busybox", "udhcpd", "-f", str(conf)],
                            pass_fds=[net.peer], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_dhcp_when_the_adapter_has_no_ipconfigs(native, tmp_path):
    net = native.net
    mac, nic = net.veth([("10.254.0.1", 24)])
    native.create("dh", sandbox_spec(native, "dh"))
    init = native.start("dh", stdout=False, stderr=False)
    dhcp = adapter(NSID, mac, "D1", DNSSuffix="host.test")  # no IPConfigs, no Routes
    # no DHCP server yet: udhcpc gives up, and the link is back in the UVM namespace, bare
    text = expect_error(native, dhcp, hr.E_FAIL)
    assert "no DHCP lease" in text and nic in net.uvm_links() and net.uvm_addresses(nic) == [], text
    server = udhcpd(net, tmp_path, f"tpeer{net.count}")
    try:
        native.modify("Network", dhcp)
        out, err, code = run(native, "dh", f"ip -o -4 addr show dev {nic}; ip route; echo ---; cat /etc/resolv.conf; "
                                           "ping -c 1 -W 2 10.254.0.1 >/dev/null && echo ping ok", caps=True)
    finally:
        server.kill()
        server.wait()
    view, resolv = out.split("---\n")
    assert re.search(r"inet 10\.254\.0\.(5\d|60)/24", view) and f"default via 10.254.0.1 dev {nic}" in view, out + err
    assert resolv == "search host.test dhcp.test\nnameserver 10.254.0.53\nping ok\n", out + err
    init.kill()
    init.wait()
    native.notification()
    native.remove("dh")
    assert nic in net.uvm_links() and net.uvm_addresses(nic) == []  # the lease went with the pod
    native.modify("Network", {"NamespaceID": NSID, "ID": "D1"}, "Remove")
