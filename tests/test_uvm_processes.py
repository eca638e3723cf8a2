"""Processes in the UVM, driven over the bridge of a real local-mode agent (hybrid transport)."""
import json
import os
import signal
import threading
import time

import pytest

from gcs.host.bridge_client import RpcError
from gcs.protocol import hresult as hr
from gcs.protocol.ids import NULL_CONTAINER_ID, RequestId, request_name

from conftest import read_log, requires_root

pytestmark = requires_root


def test_exec_output_and_exit_code(uvm):
    out, err, code = uvm.client.run(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (out, err, code) == (b"out\n", b"err\n", 7)


def test_environment_is_exactly_what_was_given(uvm):
    out, _, code = uvm.client.run(["/usr/bin/env"], env={"A": "1", "B": "two words", "PATH": "/usr/bin:/bin"})
    assert code == 0
    assert sorted(out.decode().splitlines()) == ["A=1", "B=two words", "PATH=/usr/bin:/bin"]


def test_empty_environment(uvm):
    out, _, code = uvm.client.run(["/usr/bin/env"], env={})
    assert code == 0 and out == b""


def test_working_directory(uvm, tmp_path):
    out, _, _ = uvm.client.run(["pwd"], cwd=str(tmp_path))
    assert out.decode().strip() == str(tmp_path)


def test_bad_working_directory_is_an_error(uvm):
    with pytest.raises(RpcError) as info:
        uvm.client.exec(["true"], cwd="/does/not/exist")
    assert info.value.hresult == hr.E_FAIL
    assert "/does/not/exist" in str(info.value)


def test_command_line_is_split_with_shell_rules(uvm):
    proc = uvm.client.exec([], command_line="printf '%s|' 'a b' c\\ d \"e f\"", stdout=True)
    out, _, code = proc.communicate()
    assert code == 0 and out == b"a b|c d|e f|"


def test_missing_binary_is_an_error_and_agent_keeps_serving(uvm):
    with pytest.raises(RpcError) as info:
        uvm.client.exec(["/no/such/binary"])
    assert info.value.hresult == hr.E_FAIL
    assert uvm.client.run(["true"])[2] == 0


def test_stdin_is_relayed_and_eof_delivered(uvm):
    data = os.urandom(300_000)
    out, _, code = uvm.client.run(["cat"], data=data)
    assert code == 0 and out == data


def test_unrequested_streams_are_dev_null(uvm):
    proc = uvm.client.exec(["sh", "-c", "ls -l /proc/self/fd/0 /proc/self/fd/2; read x; echo $?"],
                           stdout=True)
    out, _, code = proc.communicate()
    text = out.decode()
    assert code == 0
    assert text.count("/dev/null") == 2
    assert text.strip().endswith("1")  # read hit EOF on /dev/null


def test_process_is_in_agent_pid_namespace(uvm):
    out, _, _ = uvm.client.run(["sh", "-c", "echo $PPID"])
    assert out.decode().strip() == "1"  # the agent is pid 1 of its namespace in local mode


def test_wait_timeout_then_signal(uvm):
    proc = uvm.client.exec(["sleep", "30"])
    with pytest.raises(RpcError) as info:
        proc.wait(timeout_ms=50)
    assert info.value.hresult == hr.VMCOMPUTE_TIMEOUT
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 128 + signal.SIGTERM


def test_kill_without_options_is_sigkill(uvm):
    proc = uvm.client.exec(["sleep", "30"])
    proc.kill()
    assert proc.wait() == 128 + signal.SIGKILL


def test_signal_zero_means_sigkill(uvm):
    proc = uvm.client.exec(["sleep", "30"])
    proc.signal(0)
    assert proc.wait() == 137


def test_signal_handled_by_process(uvm):
    proc = uvm.client.exec(["sh", "-c", "trap 'echo got-usr1; exit 5' USR1; echo ready; while :; do sleep 0.05; done"],
                           stdout=True)
    assert proc.stdout.recv(6) == b"ready\n"
    proc.signal(signal.SIGUSR1)
    out, _, code = proc.communicate()
    assert code == 5 and b"got-usr1" in out


def test_invalid_signal_number(uvm):
    proc = uvm.client.exec(["sleep", "30"])
    with pytest.raises(RpcError) as info:
        proc.signal(99)
    assert info.value.hresult == hr.E_INVALIDARG
    proc.kill()
    proc.wait()


def test_signal_to_exited_process_is_not_found(uvm):
    proc = uvm.client.exec(["true"])
    time.sleep(0.2)
    with pytest.raises(RpcError) as info:
        proc.signal(signal.SIGTERM)
    assert info.value.hresult == hr.ERROR_NOT_FOUND
    assert proc.wait() == 0


def test_several_waiters_and_release_after_first_wait(uvm):
    proc = uvm.client.exec(["sh", "-c", "sleep 0.3; exit 4"])
    bridge = uvm.bridge
    pending = [bridge.start_request(RequestId.WAIT_FOR_PROCESS, {
        "ContainerId": NULL_CONTAINER_ID, "ActivityId": NULL_CONTAINER_ID,
        "ProcessId": proc.pid, "TimeoutInMs": 0xFFFFFFFF})[1] for _ in range(3)]
    replies = [bridge.wait_reply(p) for p in pending]
    assert [r["ExitCode"] for r in replies] == [4, 4, 4]
    with pytest.raises(RpcError) as info:
        proc.wait()
    assert info.value.hresult == hr.ERROR_NOT_FOUND


def test_long_wait_does_not_block_other_requests(uvm):
    sleeper = uvm.client.exec(["sleep", "30"])
    _, pending = uvm.bridge.start_request(RequestId.WAIT_FOR_PROCESS, {
        "ContainerId": NULL_CONTAINER_ID, "ActivityId": NULL_CONTAINER_ID,
        "ProcessId": sleeper.pid, "TimeoutInMs": 0xFFFFFFFF})
    t0 = time.monotonic()
    for _ in range(5):
        assert uvm.client.run(["true"])[2] == 0
    assert time.monotonic() - t0 < 5
    assert not pending.event.is_set()  # replies come back out of order
    sleeper.kill()
    assert uvm.bridge.wait_reply(pending)["ExitCode"] == 137


def test_unknown_pid(uvm):
    for ident, fields in ((RequestId.WAIT_FOR_PROCESS, {"ProcessId": 999999, "TimeoutInMs": 10}),
                          (RequestId.SIGNAL_PROCESS, {"ProcessId": 999999}),
                          (RequestId.RESIZE_CONSOLE, {"ProcessId": 999999, "Height": 1, "Width": 1})):
        with pytest.raises(RpcError) as info:
            uvm.bridge.call(ident, **fields)
        assert info.value.hresult == hr.ERROR_NOT_FOUND


def test_tty_process_with_resize(uvm):
    proc = uvm.client.exec(["sh", "-c", "read line; stty size; tty; echo \"[$line]\""], tty=True,
                           stdin=True, stdout=True)
    proc.resize(33, 101)
    proc.stdin.sendall(b"hello\n")
    out, _, code = proc.communicate()
    text = out.decode().replace("\r", "")
    assert code == 0
    assert "33 101" in text
    assert "/dev/pts/" in text
    assert "[hello]" in text


def test_tty_has_controlling_terminal_and_job_signals(uvm):
    # ^C typed on the pty reaches the foreground process group as SIGINT.
    proc = uvm.client.exec(["sh", "-c", "echo ready; exec sleep 30"], tty=True, stdin=True, stdout=True)
    buf = b""
    while b"ready" not in buf:
        buf += proc.stdout.recv(100)
    time.sleep(0.1)
    proc.stdin.sendall(b"\x03")
    assert proc.wait() == 128 + signal.SIGINT
    proc.close()


def test_resize_of_a_non_tty_process_fails(uvm):
    proc = uvm.client.exec(["sleep", "30"])
    with pytest.raises(RpcError) as info:
        proc.resize(10, 10)
    assert info.value.hresult == hr.E_FAIL and "not a tty" in str(info.value)
    proc.kill()
    proc.wait()


def test_tty_output_drained_before_wait_reply(uvm):
    proc = uvm.client.exec(["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x"], tty=True, stdout=True)
    received = []
    reader = threading.Thread(target=lambda: received.append(_read_all(proc.stdout)))
    reader.start()
    code = proc.wait()
    # The reply came after the relay finished: the stream is complete and closed right away.
    reader.join(2)
    assert not reader.is_alive()
    assert code == 0 and received[0].count(b"x") == 200000


def _read_all(sock):
    data = b""
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return data
        data += chunk


def test_create_in_uvm_flag_with_other_container_id(uvm):
    params = {"CommandArgs": ["true"], "CreateInUtilityVM": True, "WorkingDirectory": "/"}
    reply = uvm.bridge.call(RequestId.EXECUTE_PROCESS, container_id="somecontainer",
                            Settings={"ProcessParameters": json.dumps(params)})
    assert reply["ProcessId"] > 0
    assert uvm.bridge.call(RequestId.WAIT_FOR_PROCESS, ProcessId=reply["ProcessId"],
                           TimeoutInMs=5000)["ExitCode"] == 0


def test_dump_stacks(uvm):
    proc = uvm.client.exec(["sleep", "30"])
    stacks = uvm.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]
    assert "thread MainThread" in stacks
    assert "uvm_processes: 1" in stacks
    assert "task exit-" in stacks
    proc.kill()
    proc.wait()


def test_container_requests_for_unknown_containers(uvm):
    for ident in (RequestId.SHUTDOWN_GRACEFUL, RequestId.SHUTDOWN_FORCED, RequestId.DELETE_CONTAINER_STATE,
                  RequestId.GET_PROPERTIES, RequestId.WAIT_FOR_PROCESS, RequestId.SIGNAL_PROCESS):
        with pytest.raises(RpcError) as info:
            uvm.bridge.call(ident, container_id="nosuch", ProcessId=1)
        assert info.value.hresult == hr.SYSTEM_NOT_FOUND, request_name(ident)


def test_start_is_a_noop(uvm):
    assert uvm.bridge.call(RequestId.START, container_id="whatever")["Result"] == 0


def test_get_properties_on_uvm_fails(uvm):
    with pytest.raises(RpcError) as info:
        uvm.bridge.call(RequestId.GET_PROPERTIES, Query='{"PropertyTypes":["ProcessList"]}')
    assert info.value.hresult == hr.E_FAIL


def test_modify_settings_unknown_resource_type(uvm):
    with pytest.raises(RpcError) as info:
        uvm.bridge.call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "Bogus"})
    assert info.value.hresult == hr.E_FAIL and "ResourceType" in str(info.value)


def test_shutdown_ends_agent_and_its_processes(uvm):
    proc = uvm.client.exec(["sleep", "300"])
    host_pid = _host_pid_of(uvm, "sleep")
    uvm.bridge.call(RequestId.SHUTDOWN_GRACEFUL)
    assert uvm.proc.wait(10) == 0
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{host_pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{host_pid}")
    assert proc.pid > 0


def _host_pid_of(uvm, name, timeout=2.0):
    """The agent's child running `name` (its comm changes at exec: looked for a moment)."""
    agent = uvm.agent_pid
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{agent}/task/{agent}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/comm") as c:
                        if c.read().strip() == name:
                            return int(pid)
                except FileNotFoundError:
                    continue  # exited meanwhile
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} not found under the agent")
        time.sleep(0.02)


def test_reconnect_keeps_processes(uvm):
    proc = uvm.client.exec(["sh", "-c", "sleep 0.5; exit 9"])
    uvm.reconnect()
    reply = uvm.bridge.call(RequestId.WAIT_FOR_PROCESS, ProcessId=proc.pid, TimeoutInMs=10000)
    assert reply["ExitCode"] == 9
    assert "bridge connected" in read_log(uvm)


def test_reconnect_requires_new_negotiation(uvm):
    uvm.reconnect(negotiate=False)
    with pytest.raises(RpcError) as info:
        uvm.bridge.call(RequestId.DUMP_STACKS)
    assert info.value.hresult == hr.E_NOTIMPL
    uvm.bridge.negotiate()
    assert uvm.bridge.call(RequestId.DUMP_STACKS)["Result"] == 0


def test_logs_are_json_lines_without_environment(uvm):
    secret = "s3cr3t-value-" + os.urandom(4).hex()
    uvm.client.run(["true"], env={"TOKEN": secret})
    text = read_log(uvm)
    assert secret not in text
    for line in text.splitlines():
        record = json.loads(line)
        assert {"time", "level", "msg"} <= record.keys()
        assert record["time"].endswith("Z")


def test_dump_stacks_fits_in_64k_with_many_tasks(uvm):
    procs = [uvm.client.exec(["sleep", "60"]) for _ in range(700)]
    reply = uvm.bridge.call(RequestId.DUMP_STACKS)
    assert reply["GuestStacks"].endswith("[truncated]")
    assert len(json.dumps(reply)) <= 65536 - 16
    assert uvm.bridge.violations == []
    for p in procs:
        p.kill()
    for p in procs:
        assert p.wait() == 137
