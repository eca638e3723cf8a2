"""Containers created by the native runtime from pmem-layer overlays, over the bridge of a
real local-mode agent."""
import os
import signal
import time

import pytest

from gcs.host.bridge_client import RpcError
from gcs.protocol import hresult as hr
from gcs.protocol.ids import RequestId

from conftest import requires_root
from containers_env import busybox_layer, default_spec, local_host

pytestmark = requires_root


@pytest.fixture(scope="module")
def layer_image(tmp_path_factory):
    return busybox_layer(tmp_path_factory.mktemp("bb"))


@pytest.fixture(params=["native", "runc"])
def host(request, tmp_path, layer_image):
    with local_host(tmp_path, request.param, [layer_image]) as h:
        yield h


def run_container(host, cid, args, **process):
    root = host.layers(cid, ["/run/layers/p0"])
    host.create(cid, default_spec(args, root, **process))
    proc = host.start(cid)
    out, err, code = proc.communicate()
    note = host.notification()
    return out.decode(), err.decode(), code, note


def test_container_runs_and_exits_with_notification(host):
    out, err, code, note = run_container(host, "c1", ["sh", "-c", "echo $$; hostname; cat /data/hello; exit 3"])
    assert code == 3, err
    assert out == "1\nctr\nhello from the layer\n"
    assert note["ContainerId"] == "c1" and note["Type"] == "UnexpectedExit" and note["Operation"] == "None"
    host.remove("c1")
    assert "containers: 0" in host.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]


def test_isolation_from_the_agent(host):
    script = ("echo /proc/[0-9]*; awk '$5 ~ /^\\/run/' /proc/self/mountinfo | wc -l; "
              "cat /proc/self/status | grep CapEff; echo > /proc/sys/kernel/hostname 2>&1 && echo wrote || echo ro;"
              "mount -o remount,rw /proc/sys >/dev/null 2>&1 && echo remounted || echo denied")
    out, err, code, _ = run_container(host, "iso", ["sh", "-c", script])
    lines = out.split("\n")
    assert lines[0] == "/proc/1"            # only itself: nothing of the agent's
    assert lines[1] == "0"                  # the agent's mounts are invisible
    assert lines[2] == "CapEff:\t0000000020000420"  # KILL(5), NET_BIND_SERVICE(10), AUDIT_WRITE(29) only
    assert lines[3] == "ro" and lines[4] == "denied"


def test_exec_into_running_container(host):
    root = host.layers("c2", ["/run/layers/p0"])
    host.create("c2", default_spec(["sleep", "30"], root))
    init = host.start("c2", stdout=False, stderr=False)
    p = host.exec("c2", ["sh", "-c", "echo $$ $(cat /proc/1/cmdline | tr '\\0' ' '); id -u; pwd"], cwd="/tmp",
                  user={"uid": 1000, "gid": 1000})
    out, err, code = p.communicate()
    out = out.decode()
    assert code == 0, err
    pid_in_ns, *cmd = out.split("\n")[0].split()
    assert int(pid_in_ns) > 1 and cmd == ["sleep", "30"]
    assert out.split("\n")[1:3] == ["1000", "/tmp"]
    # exec with a pty, signals, waits
    t = host.exec("c2", ["sh", "-c", "read go; tty; stty size"], stdin=True, stderr=False, terminal=True)
    t.resize(24, 77)
    out, _, code = t.communicate(b"go\n")
    assert code == 0 and "/dev/pts/" in out.decode() and "24 77" in out.decode()
    init.signal(signal.SIGKILL)
    assert init.wait() == 137
    assert host.notification()["Type"] == "ForcedExit"
    with pytest.raises(RpcError) as info:
        host.exec("c2", ["true"])
    assert info.value.hresult == hr.SYSTEM_ALREADY_STOPPED
    with pytest.raises(RpcError) as info:
        init.signal(signal.SIGTERM)  # signal to an exited process
    assert info.value.hresult == hr.ERROR_NOT_FOUND
    assert init.wait() == 137  # the init stays reachable while the container exists
    host.remove("c2")
    with pytest.raises(RpcError) as info:
        init.wait()
    assert info.value.hresult == hr.SYSTEM_NOT_FOUND


def test_shutdown_graceful_and_process_list(host):
    root = host.layers("c3", ["/run/layers/p0"])
    host.create("c3", default_spec(["sh", "-c", "trap 'exit 0' TERM; sleep 30 & wait"], root))
    init = host.start("c3", stdout=False, stderr=False)
    time.sleep(0.3)
    props = host.bridge.call(RequestId.GET_PROPERTIES, container_id="c3", Query='{"PropertyTypes":["ProcessList"]}')
    import json
    pids = [p["ProcessId"] for p in json.loads(props["Properties"])["ProcessList"]]
    assert init.pid in pids and len(pids) == 2
    host.bridge.call(RequestId.SHUTDOWN_GRACEFUL, container_id="c3")
    assert init.wait() == 0
    assert host.notification()["Type"] == "GracefulExit"
    with pytest.raises(RpcError) as info:
        host.bridge.call(RequestId.SHUTDOWN_GRACEFUL, container_id="c3")
    assert info.value.hresult == hr.SYSTEM_ALREADY_STOPPED
    host.remove("c3")


def test_bad_container_input(host):
    root = host.layers("good", ["/run/layers/p0"])
    for bad in ("a/b", "..", "", "x" * 200, "-lead", "a b"):
        with pytest.raises(RpcError) as info:
            host.create(bad, default_spec(["true"], root))
        assert info.value.hresult == hr.E_INVALIDARG, bad
    with pytest.raises(RpcError) as info:
        host.create("evil", default_spec(["true"], root), bundle="/etc/evil")
    assert info.value.hresult == hr.E_INVALIDARG and "/etc/evil" in str(info.value)
    assert not os.path.exists("/etc/evil")
    with pytest.raises(RpcError) as info:
        host.create("evil2", default_spec(["true"], "/run/gcs/c/good/rootfs/../../../../etc"))
    assert info.value.hresult == hr.E_INVALIDARG
    host.create("good", default_spec(["true"], root))
    with pytest.raises(RpcError) as info:
        host.create("good", default_spec(["true"], root))
    assert info.value.hresult == hr.ALREADY_EXISTS
    with pytest.raises(RpcError) as info:
        host.create("nofs", default_spec(["true"], "/run/gcs/c/nofs/rootfs"))
    assert info.value.hresult == hr.E_FAIL and "rootfs" in str(info.value)
    with pytest.raises(RpcError) as info:
        host.bridge.call(RequestId.CREATE, container_id="badjson", ContainerConfig="{not json")
    assert info.value.hresult == hr.INVALID_JSON
    spec = default_spec(["true"], root)
    spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW"}
    runc = "runc" in host.uvm.extra_args
    host.create("seccomp", spec)  # both runtimes apply seccomp profiles (tests/test_seccomp.py)
    host.bridge.call(RequestId.DELETE_CONTAINER_STATE, container_id="seccomp")
    if not runc:  # the native runtime refuses what it does not implement: a seccomp notify listener
        spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/listener.sock"}
        with pytest.raises(RpcError) as info:
            host.create("seccomp", spec)
        assert info.value.hresult == hr.E_NOTIMPL and "seccomp" in str(info.value)
    with pytest.raises(RpcError) as info:
        host.create("nouser", default_spec(["true"], root, user={"uid": 0, "gid": 0, "username": "ghost"}))
    assert info.value.hresult == hr.E_INVALIDARG and "ghost" in str(info.value)
    spec = default_spec(["true"], root)
    spec["linux"]["resources"] = {"blockIO": {"weight": 10}}
    if not runc:
        with pytest.raises(RpcError) as info:
            host.create("blkio", spec)
        assert info.value.hresult == hr.E_NOTIMPL and "blockIO" in str(info.value)
    spec["linux"]["resources"] = {"devices": [{"allow": True, "type": "x", "access": "rwm"}]}
    with pytest.raises(RpcError) as info:
        host.create("baddev", spec)
    assert info.value.hresult == hr.E_INVALIDARG and "device rule" in str(info.value)
    for bad, code in (({"blockIO": {"weight": 10}}, hr.E_NOTIMPL),
                      ({"devices": [{"allow": True, "type": "c", "major": -5, "access": "r"}]}, hr.E_INVALIDARG)):
        with pytest.raises(RpcError) as info:
            host.bridge.call(RequestId.MODIFY_SETTINGS, container_id="good", Request={
                "RequestType": "Update", "ResourceType": "ContainerConstraints", "Settings": {"Linux": bad}})
        assert info.value.hresult == code, bad
    stacks = host.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]
    assert "containers: 1" in stacks  # only "good" was created
    out, _, _ = host.uvm.client.run(["sh", "-c", "ls /run/gcs/c/seccomp /run/gcs/c/nouser /run/gcs/c/baddev 2>&1; "
                                                "ls /run/gcs/c"])
    assert b"config.json" not in out and b"hostname" not in out  # failed Creates left no files


def test_missing_binary_reports_and_cleans_up(host):
    root = host.layers("nobin", ["/run/layers/p0"])
    with pytest.raises(RpcError) as info:
        host.create("nobin", default_spec(["/no/such/program"], root))
    assert info.value.hresult == hr.E_FAIL and "/no/such/program" in str(info.value)
    with pytest.raises(RpcError) as info:
        host.create("nobin", default_spec(["no-such-command"], root))
    assert "no-such-command" in str(info.value)
    stacks = host.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]
    assert "containers: 0" in stacks
    host.create("nobin", default_spec(["true"], root))  # the id is free again
    assert host.start("nobin").communicate()[2] == 0
    assert host.notification()["ContainerId"] == "nobin"
    host.remove("nobin")


def test_load_hundred_containers_ten_execs_each(host):
    count, execs = int(os.environ.get("LOAD_CONTAINERS", 100)), 10
    inits = []
    for i in range(count):
        cid = f"load{i}"
        root = host.layers(cid, ["/run/layers/p0"])
        host.create(cid, default_spec(["sleep", "60"], root))
        inits.append(host.start(cid, stdout=False, stderr=False))
    for i in range(count):
        for j in range(execs):
            p = host.exec(f"load{i}", ["sh", "-c", f"echo {i}-{j}"], stderr=False)
            out, _, code = p.communicate()
            assert (out, code) == (f"{i}-{j}\n".encode(), 0)
    for i in range(count):
        host.bridge.call(RequestId.SHUTDOWN_FORCED, container_id=f"load{i}")
    for init in inits:
        assert init.wait(timeout_ms=10000) == 137
    seen = {host.notification()["ContainerId"] for _ in range(count)}
    assert seen == {f"load{i}" for i in range(count)}
    for i in range(count):
        host.remove(f"load{i}")
    stacks = host.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]
    for line in ("containers: 0", "container_execs: 0", "overlays: 0", "uvm_processes: 0"):
        assert line in stacks
    code = host.uvm.client.run(["sh", "-c", "ls /run/gcs/c | wc -l; grep -c overlay /proc/mounts"])
    assert code[0].split() == [b"0", b"0"]
    agent = host.uvm.agent_pid
    with open(f"/proc/{agent}/task/{agent}/children") as f:
        children = f.read().split()
    # no process left behind but the native runtime's spawner
    assert [pid for pid in children if b"gcs.containers.native.spawner" not in _cmdline(pid)] == []


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""



def test_cgroup_limits_statistics_constraints_and_oom(host):
    import json
    root = host.layers("cg", ["/run/layers/p0"])
    spec = default_spec(["sleep", "60"], root)
    spec["linux"]["resources"] = {"memory": {"limit": 64 << 20}, "pids": {"limit": 50}, "cpu": {"shares": 512}}
    host.create("cg", spec)
    init = host.start("cg", stdout=False, stderr=False)

    def stats():
        reply = host.bridge.call(RequestId.GET_PROPERTIES, container_id="cg", Query='{"PropertyTypes":["Statistics"]}')
        return json.loads(reply["Properties"])["LCOWMetrics"]

    s = stats()
    assert s["memory"]["usage"]["limit"] == 64 << 20 and s["pids"]["limit"] == 50 and s["pids"]["current"] >= 1
    assert s["memory"]["usage"]["usage"] > 0
    # ContainerConstraints update the live limits
    host.bridge.call(RequestId.MODIFY_SETTINGS, container_id="cg", Request={
        "RequestType": "Update", "ResourceType": "ContainerConstraints",
        "Settings": {"Windows": {}, "Linux": {"memory": {"limit": 32 << 20}}}})
    assert stats()["memory"]["usage"]["limit"] == 32 << 20
    # a process that outgrows the limit is OOM-killed; the exit notification says so
    _, err, code = host.exec("cg", ["sh", "-c", "head -c 200000000 /dev/zero | tail > /dev/null"]).communicate()
    assert code != 0, err
    init.signal(signal.SIGKILL)
    assert init.wait() == 137
    note = host.notification()
    assert note["Type"] == "ForcedExit" and json.loads(note["ResultInfo"])["OomKilled"] is True
    host.remove("cg")


def test_pids_limit(host):
    root = host.layers("pl", ["/run/layers/p0"])
    spec = default_spec(["sh", "-c", "for i in 1 2 3 4 5 6; do sleep 1 & done; wait"], root)
    spec["linux"]["resources"] = {"pids": {"limit": 4}}
    host.create("pl", spec)
    out, err, code = host.start("pl").communicate()
    assert b"can't fork" in err
    host.notification()
    host.remove("pl")


def test_pod_workload_joins_the_sandbox(host):
    import json
    sb_root = host.layers("sb", ["/run/layers/p0"])
    sb_spec = default_spec(["sleep", "60"], sb_root)
    sb_spec["hostname"] = "podhost"
    sb_spec["annotations"] = {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "sb"}
    host.create("sb", sb_spec)
    sb_init = host.start("sb", stdout=False, stderr=False)
    wl_root = host.layers("wl", ["/run/layers/p0"])
    wl_spec = default_spec(["sh", "-c", "hostname; cat /etc/hostname; echo /proc/[0-9]*; cat /proc/1/cmdline"], wl_root)
    wl_spec.pop("hostname")
    wl_spec["annotations"] = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "sb"}
    wl_spec["linux"]["namespaces"] = [{"type": t, "path": f"/proc/{sb_init.pid}/ns/{f}"}
                                      for t, f in (("pid", "pid"), ("ipc", "ipc"), ("uts", "uts"), ("network", "net"))]
    wl_spec["linux"]["namespaces"].append({"type": "mount"})
    host.create("wl", wl_spec)
    out, err, code = host.start("wl").communicate()
    assert code == 0, err
    lines = out.decode().split("\n")
    assert lines[0] == "podhost" and lines[1] == "podhost"  # the sandbox's uts ns and hostname file
    assert lines[2].split()[0] == "/proc/1" and len(lines[2].split()) >= 2  # the sandbox's pid ns
    assert lines[3].startswith("sleep")
    assert host.notification()["ContainerId"] == "wl"
    props = host.bridge.call(RequestId.GET_PROPERTIES, container_id="sb", Query='{"PropertyTypes":["ProcessList"]}')
    assert [p["ProcessId"] for p in json.loads(props["Properties"])["ProcessList"]] == [sb_init.pid]
    host.remove("wl")
    sb_init.kill()
    assert sb_init.wait() == 137
    assert host.notification()["ContainerId"] == "sb"
    host.remove("sb")
    with pytest.raises(RpcError) as info:  # a workload needs its sandbox
        host.create("orphan", dict(wl_spec, root={"path": host.layers("orphan", ["/run/layers/p0"])}))
    assert info.value.hresult == hr.SYSTEM_NOT_FOUND


def test_concurrent_creates_and_execs(host):
    """Eight containers created, started and exec'd into at once: the native runtime's one
    spawner serialises clones, the cgroup placements and start gates interleave."""
    import threading
    errors, outputs = [], {}

    def lifecycle(i):
        cid = f"par{i}"
        try:
            root = host.layers(cid, ["/run/layers/p0"])
            spec = default_spec(["sh", "-c", f"echo init{i}; read x; exit 0"], root)  # until its stdin closes
            spec["linux"]["resources"] = {"pids": {"limit": 20 + i}}
            host.create(cid, spec)
            init = host.start(cid, stdin=True, stderr=False)
            got = [host.exec(cid, ["sh", "-c", f"echo exec{i}-{j}; cat /proc/self/cgroup | grep pids"],
                             stderr=False).communicate()[0].decode() for j in range(3)]
            out, _, code = init.communicate()  # closes its stdin
            outputs[i] = (out.decode(), code, got)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(f"{cid}: {err!r}")

    threads = [threading.Thread(target=lifecycle, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    for i in range(8):
        out, code, got = outputs[i]
        assert (out, code) == (f"init{i}\n", 0)
        for j, text in enumerate(got):
            assert text.startswith(f"exec{i}-{j}\n") and f"/pods/par{i}" in text, text
    seen = {host.notification()["ContainerId"] for _ in range(8)}
    assert seen == {f"par{i}" for i in range(8)}
    for i in range(8):
        host.remove(f"par{i}")
    stacks = host.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]
    assert "containers: 0" in stacks and "overlays: 0" in stacks


def test_a_second_concurrent_init_is_refused(host):
    import threading
    root = host.layers("twice", ["/run/layers/p0"])
    host.create("twice", default_spec(["sh", "-c", "echo once"], root))
    host.bridge.call(RequestId.START, container_id="twice")
    results, gate = [], threading.Barrier(2)

    def start():
        gate.wait()
        try:
            proc = host.uvm.client.exec([], container_id="twice", init_process=True, stdout=True, stderr=True)
            results.append(("ok", proc.communicate()))
        except RpcError as err:
            results.append(("refused", err.hresult))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(kind for kind, _ in results) == ["ok", "refused"], results
    assert dict(results)["refused"] == hr.INVALID_STATE
    out, err, code = dict(results)["ok"]
    assert (out, code) == (b"once\n", 0), err
    assert host.notification()["ContainerId"] == "twice"
    host.remove("twice")
    stacks = host.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]
    assert "containers: 0" in stacks and "open_fds" in stacks


def test_a_tty_container_whose_runtime_fails_early_gets_an_error_not_a_hang(host):
    # runc refuses the spec before it dials --console-socket; the agent used to wait forever.
    root = host.layers("ttyfail", ["/run/layers/p0"])
    spec = default_spec(["true"], root, terminal=True, cwd="relative/dir")
    with pytest.raises(RpcError) as info:
        host.create("ttyfail", spec, timeout=20)
    assert "cwd" in str(info.value).lower() or "absolute" in str(info.value).lower()
    assert host.uvm.client.run(["echo", "ok"])[0] == b"ok\n"
    stacks = host.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]
    assert "containers: 0" in stacks
    host.modify("CombinedLayers", {"ContainerRootPath": root}, "Remove")
