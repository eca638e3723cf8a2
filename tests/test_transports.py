"""The agent over each transport it can use on this machine: hybrid (dial and listen) and
--bridge-stdio. (AF_VSOCK is only ever used inside a VM.)"""
import os
import signal
import subprocess

import pytest

from gcs.host.bridge_client import HostBridge
from gcs.host.launcher import agent_command, agent_env
from gcs.host.processes import ProcessClient
from gcs.protocol.ids import RequestId
from vmbus.hybrid import host_connect, host_listen

from conftest import requires_root

pytestmark = requires_root


def test_bridge_over_stdio(uvm_stdio):
    out, err, code = uvm_stdio.client.run(["sh", "-c", "echo via-stdio; exit 2"])
    assert (out, code) == (b"via-stdio\n", 2)
    proc = uvm_stdio.client.exec(["cat"], tty=True, stdin=True, stdout=True)
    proc.resize(20, 30)
    proc.signal(signal.SIGKILL)
    assert proc.wait() == 137
    proc.close()


def test_bridge_stdio_ends_agent_on_eof(uvm_stdio):
    uvm_stdio.bridge.close()
    assert uvm_stdio.proc.wait(10) == 0


def test_bridge_listen_with_connect_handshake(tmp_path):
    path = str(tmp_path / "vsock")
    proc = subprocess.Popen(agent_command(["--local", "--transport", f"hybrid:{path}",
                                           "--bridge-listen", str(0x40000000)]),
                            env=agent_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "gcs.log", "wb"))
    try:
        # A wrong port is refused; the right one is answered with "OK <port>".
        with pytest.raises((ConnectionError, OSError)):
            host_connect(path, 1234, timeout=1).close()
        sock = host_connect(path, 0x40000000)
        bridge = HostBridge.over_socket(sock)
        bridge.negotiate()
        client = ProcessClient(bridge, path)
        assert client.run(["echo", "listened"])[0] == b"listened\n"
        # Dropping the bridge: the agent accepts the next connection.
        bridge.close()
        bridge = HostBridge.over_socket(host_connect(path, 0x40000000))
        bridge.negotiate()
        assert ProcessClient(bridge, path).run(["true"])[2] == 0
        bridge.call(RequestId.SHUTDOWN_GRACEFUL)
        assert proc.wait(10) == 0
        bridge.close()
        assert bridge.violations == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_hybrid_dial_reaches_host_socket(tmp_path):
    """The guest side of the convention: port P -> PATH_P."""
    from gcs import aio
    from vmbus.hybrid import HybridTransport

    path = str(tmp_path / "v")
    listener = host_listen(path, 77)
    transport = HybridTransport(path)

    async def main():
        sock = await transport.dial(77)
        await aio.sock_sendall(sock, b"ping")
        sock.close()

    try:
        aio.get_loop().run_until_complete(aio.spawn(main()))
        conn, _ = listener.accept()
        assert conn.recv(4) == b"ping"
        conn.close()
    finally:
        listener.close()


def test_local_mode_refuses_vsock():
    proc = subprocess.run(agent_command(["--local", "--transport", "vsock"]), env=agent_env(),
                          capture_output=True, timeout=30)
    assert proc.returncode == 2 and b"vsock" in proc.stderr


def test_local_mode_private_run(uvm):
    # The agent's /run is its own tmpfs: files made there are not visible here.
    marker = f"gcs-test-{os.getpid()}"
    out, _, code = uvm.client.run(["sh", "-c", f"mkdir -p /run/gcs/c && touch /run/{marker} && "
                                               "stat -f -c %T /run && ls /run"])
    assert code == 0
    assert b"tmpfs" in out and marker.encode() in out
    assert not os.path.exists(f"/run/{marker}")


def test_every_transport_spec_parses_to_its_transport(tmp_path):
    """Parsing builds the transport without opening anything: `vsock` (what /bin/gcs uses in
    a UVM) included, so an import error in it can never hide again."""
    from vmbus.af_vsock import VsockTransport
    from vmbus.hybrid import HybridTransport
    from vmbus.transport import parse_transport

    vsock = parse_transport("vsock")
    assert isinstance(vsock, VsockTransport) and vsock.cid == 2 and vsock.name == "vsock"
    assert parse_transport("vsock:5").cid == 5
    hybrid = parse_transport(f"hybrid:{tmp_path}/vsock")
    assert isinstance(hybrid, HybridTransport) and hybrid.path == f"{tmp_path}/vsock"
    for bad in ("hybrid:", "vsock:x", "tcp:1234", ""):
        with pytest.raises(ValueError):
            parse_transport(bad)


def test_agent_refuses_vsock_in_local_mode():
    proc = subprocess.run(agent_command(["--local", "--transport", "vsock"]), env=agent_env(), capture_output=True,
                          timeout=30)
    assert proc.returncode == 2 and b"--local refuses --transport vsock" in proc.stderr
