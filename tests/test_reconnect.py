"""Host disconnects while containers run and exit (issue 15's reconnect acceptance, local
mode): the agent redials each time, every container's exit notification reaches the host
exactly once over whichever bridge is up, and outstanding waits can be asked again."""
import time

import pytest

from gcs.host.bridge_client import ZERO_GUID
from gcs.protocol.ids import NULL_CONTAINER_ID, RequestId

from conftest import requires_root
from containers_env import busybox_layer, default_spec, local_host

pytestmark = requires_root
CONTAINERS = 8
DISCONNECTS = 20


@pytest.fixture(scope="module")
def layer_image(tmp_path_factory):
    return busybox_layer(str(tmp_path_factory.mktemp("reconnect-layer")))


def test_twenty_disconnects_while_containers_exit(tmp_path, layer_image):
    with local_host(tmp_path, "native", [layer_image]) as host:
        inits = {}
        for i in range(CONTAINERS):
            cid = f"rc{i}"
            # exits staggered across the disconnects, 0.3 s apart; the exit status is the index
            host.create(cid, default_spec(["sh", "-c", f"sleep {0.3 * i + 0.2:.1f}; exit {i}"],
                                          host.layers(cid, ["/run/layers/p0"])))
            inits[cid] = host.start(cid, stdout=False, stderr=False)
        bridges = [host.bridge]
        for n in range(DISCONNECTS):
            # the host's waits on every init, as hcsshim keeps them, lost with each connection
            for cid, init in inits.items():
                host.bridge.start_request(RequestId.WAIT_FOR_PROCESS, {
                    "ContainerId": cid, "ActivityId": ZERO_GUID, "ProcessId": init.pid, "TimeoutInMs": 60000})
            if n % 2:  # and a request just sent when the host goes away
                host.bridge.start_request(RequestId.DUMP_STACKS, {"ContainerId": NULL_CONTAINER_ID,
                                                                  "ActivityId": ZERO_GUID})
            time.sleep(0.1)
            host.uvm.reconnect()
            bridges.append(host.bridge)
        # asked again on the last bridge: every exit status, then each notification once
        for i, (cid, init) in enumerate(inits.items()):
            reply = host.bridge.call(RequestId.WAIT_FOR_PROCESS, container_id=cid, ProcessId=init.pid,
                                     TimeoutInMs=10000)
            assert reply["ExitCode"] == i, (cid, reply)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(b.notifications.qsize() for b in bridges) < CONTAINERS:
            time.sleep(0.05)
        time.sleep(0.5)  # a duplicate would arrive meanwhile
        seen = [b.notifications.get_nowait()["ContainerId"] for b in bridges for _ in range(b.notifications.qsize())]
        assert sorted(seen) == sorted(inits), seen
        for b in bridges:
            assert b.violations == [], b.violations
        for cid, init in inits.items():
            init.close()
            host.remove(cid)
        assert host.uvm.client.run(["echo", "ok"])[0] == b"ok\n"
