"""Bad input against a real agent: each gets the right HRESULT, or a clean drop of the
connection where the byte stream cannot continue; the agent keeps serving and keeps
everything it tracks."""
import json
import struct
import time

import pytest

from gcs.host.bridge_client import BridgeClosed
from gcs.protocol import hresult as hr
from gcs.protocol.ids import NULL_CONTAINER_ID, RequestId

from conftest import read_log, requires_root

pytestmark = requires_root
ZERO = NULL_CONTAINER_ID


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def still_serving(uvm, keeper):
    """The agent answers and the process started before the bad input is still tracked."""
    assert uvm.client.run(["echo", "ok"])[0] == b"ok\n"
    stacks = uvm.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]
    assert "uvm_processes: 1" in stacks
    uvm.bridge.call(RequestId.SIGNAL_PROCESS, ProcessId=keeper.pid)  # the current bridge, not keeper's
    assert uvm.bridge.call(RequestId.WAIT_FOR_PROCESS, ProcessId=keeper.pid, TimeoutInMs=5000)["ExitCode"] == 137


@pytest.fixture
def keeper(uvm):
    return uvm.client.exec(["sleep", "300"])


def expect(uvm, ident, payload, hresult):
    reply = uvm.bridge.call_raw(ident, payload)
    assert reply["Result"] == hr.to_int32(hresult), reply
    return reply


def test_invalid_utf8(uvm, keeper):
    expect(uvm, RequestId.WAIT_FOR_PROCESS, b'{"ProcessId": "\xff\xfe"}', hr.INVALID_JSON)
    still_serving(uvm, keeper)


def test_invalid_json(uvm, keeper):
    for bad in (b"{", b"", b"null", b'["ContainerId"]', b'{"ContainerId": "x",}'):
        expect(uvm, RequestId.SIGNAL_PROCESS, bad, hr.INVALID_JSON)
    still_serving(uvm, keeper)


def test_invalid_nested_json(uvm, keeper):
    reply = expect(uvm, RequestId.EXECUTE_PROCESS,
                   {"ContainerId": ZERO, "ActivityId": ZERO, "Settings": {"ProcessParameters": "{oops"}},
                   hr.INVALID_JSON)
    assert "ProcessParameters" in reply["ErrorMessage"]
    expect(uvm, RequestId.GET_PROPERTIES, {"ContainerId": "c", "Query": "[1"}, hr.INVALID_JSON)
    still_serving(uvm, keeper)


def test_unknown_message_ids(uvm, keeper):
    for ident in (0x10100E01, 0x10100F01, 0x10200101, 0x10107701):
        reply = expect(uvm, ident, {"ContainerId": ZERO, "ActivityId": ZERO}, hr.E_NOTIMPL)
        assert reply["ActivityId"] == ZERO
    still_serving(uvm, keeper)


def test_request_before_negotiation(uvm, keeper):
    uvm.reconnect(negotiate=False)
    expect(uvm, RequestId.EXECUTE_PROCESS, {"ContainerId": ZERO, "Settings": {"ProcessParameters": "{}"}}, hr.E_NOTIMPL)
    uvm.bridge.negotiate()
    still_serving(uvm, keeper)


def test_second_negotiation(uvm, keeper):
    expect(uvm, RequestId.NEGOTIATE_PROTOCOL, {"MinimumVersion": 4, "MaximumVersion": 4}, hr.E_NOTIMPL)
    still_serving(uvm, keeper)


def test_unknown_process_id(uvm, keeper):
    expect(uvm, RequestId.WAIT_FOR_PROCESS, {"ContainerId": ZERO, "ProcessId": 424242, "TimeoutInMs": 1},
           hr.ERROR_NOT_FOUND)
    expect(uvm, RequestId.SIGNAL_PROCESS, {"ContainerId": ZERO, "ProcessId": 424242}, hr.ERROR_NOT_FOUND)
    still_serving(uvm, keeper)


def test_missing_fields(uvm, keeper):
    expect(uvm, RequestId.EXECUTE_PROCESS, {"ContainerId": ZERO}, hr.INVALID_JSON)          # no Settings
    expect(uvm, RequestId.EXECUTE_PROCESS, {"ContainerId": ZERO, "Settings": {}}, hr.INVALID_JSON)
    expect(uvm, RequestId.EXECUTE_PROCESS, {"ContainerId": ZERO,                              # nothing to run
                                            "Settings": {"ProcessParameters": "{}"}}, hr.E_INVALIDARG)
    expect(uvm, RequestId.EXECUTE_PROCESS, {"ContainerId": ZERO, "Settings": {                # pipe without port
        "ProcessParameters": json.dumps({"CommandArgs": ["true"], "CreateStdOutPipe": True})}}, hr.E_INVALIDARG)
    expect(uvm, RequestId.WAIT_FOR_PROCESS, {"ContainerId": ZERO}, hr.ERROR_NOT_FOUND)        # pid 0
    expect(uvm, RequestId.MODIFY_SETTINGS, {"ContainerId": ZERO}, hr.E_FAIL)                  # no Request
    expect(uvm, RequestId.WAIT_FOR_PROCESS, {}, hr.SYSTEM_NOT_FOUND)                          # no ContainerId
    still_serving(uvm, keeper)


def test_wrong_types(uvm, keeper):
    cases = [
        (RequestId.WAIT_FOR_PROCESS, {"ContainerId": ZERO, "ProcessId": "12"}),
        (RequestId.WAIT_FOR_PROCESS, {"ContainerId": ZERO, "ProcessId": -5}),
        (RequestId.WAIT_FOR_PROCESS, {"ContainerId": ZERO, "ProcessId": 1, "TimeoutInMs": 1.5}),
        (RequestId.SIGNAL_PROCESS, {"ContainerId": ZERO, "ProcessId": 1, "Options": {"Signal": "TERM"}}),
        (RequestId.SIGNAL_PROCESS, {"ContainerId": ZERO, "ProcessId": 1, "Options": 15}),
        (RequestId.RESIZE_CONSOLE, {"ContainerId": ZERO, "ProcessId": 1, "Height": 70000}),
        (RequestId.EXECUTE_PROCESS, {"ContainerId": ZERO, "Settings": {"ProcessParameters": {"CommandArgs": ["x"]}}}),
        (RequestId.EXECUTE_PROCESS, {"ContainerId": ZERO, "Settings": {"ProcessParameters": '{"CommandArgs": "ls"}'}}),
        (RequestId.EXECUTE_PROCESS, {"ContainerId": ZERO, "Settings": {"ProcessParameters": '{"Environment": ["A=1"]}'}}),
        (RequestId.EXECUTE_PROCESS, {"ContainerId": ZERO, "Settings": {"ProcessParameters": '{"EmulateConsole": 1}'}}),
        (RequestId.EXECUTE_PROCESS, {"ContainerId": 5}),
        (RequestId.MODIFY_SETTINGS, {"ContainerId": ZERO, "Request": "Add"}),
        (RequestId.CREATE, {"ContainerId": "c1", "ContainerConfig": {"SchemaVersion": {}}}),
    ]
    for ident, payload in cases:
        expect(uvm, ident, payload, hr.INVALID_JSON)
    still_serving(uvm, keeper)


def test_keys_are_case_insensitive_over_the_wire(uvm):
    proc = uvm.client.exec(["sh", "-c", "exit 3"])
    reply = uvm.bridge.call_raw(RequestId.WAIT_FOR_PROCESS, {"containerid": ZERO, "PROCESSID": proc.pid,
                                                             "timeoutinms": 5000})
    assert reply["ExitCode"] == 3


def test_nul_bytes_in_arguments(uvm, keeper):
    expect(uvm, RequestId.EXECUTE_PROCESS, {"ContainerId": ZERO, "Settings": {
        "ProcessParameters": json.dumps({"CommandArgs": ["echo", "a\u0000b"]})}}, hr.E_INVALIDARG)
    still_serving(uvm, keeper)


def _dropped(uvm):
    assert uvm.bridge.closed.wait(5), "the agent should drop a connection it cannot parse"


def test_truncated_header_then_close(uvm, keeper):
    uvm.bridge.send_bytes(struct.pack("<IIQ", RequestId.DUMP_STACKS, 100, 1)[:10])
    uvm.reconnect()
    assert "closed in the middle of a message" in read_log(uvm)
    still_serving(uvm, keeper)


@pytest.mark.parametrize("size", [0, 15])
def test_size_below_header_drops_connection(uvm, keeper, size):
    uvm.bridge.send_bytes(struct.pack("<IIQ", RequestId.DUMP_STACKS, size, 1))
    _dropped(uvm)
    uvm.reconnect()
    still_serving(uvm, keeper)


def test_huge_size_no_allocation_then_drop(uvm, keeper):
    agent = uvm.agent_pid
    before = rss_kb(agent)
    # 60 MB announced, 1 KB sent: nothing is allocated for the bytes that never came.
    uvm.bridge.send_bytes(struct.pack("<IIQ", RequestId.DUMP_STACKS, 60_000_000, 1) + b"x" * 1024)
    time.sleep(0.2)
    assert rss_kb(agent) - before < 8 * 1024
    uvm.reconnect()
    uvm.bridge.send_bytes(struct.pack("<IIQ", RequestId.DUMP_STACKS, 0xFFFFFFF0, 1))
    _dropped(uvm)
    assert rss_kb(agent) - before < 8 * 1024
    uvm.reconnect()
    still_serving(uvm, keeper)


def test_pending_requests_fail_cleanly_when_bridge_drops(uvm, keeper):
    _, pending = uvm.bridge.start_request(RequestId.WAIT_FOR_PROCESS, {
        "ContainerId": ZERO, "ProcessId": keeper.pid, "TimeoutInMs": 0xFFFFFFFF})
    uvm.bridge.send_bytes(struct.pack("<IIQ", 0, 3, 0))
    with pytest.raises(BridgeClosed):
        uvm.bridge.wait_reply(pending, 5)
    uvm.reconnect()
    still_serving(uvm, keeper)


def _deep_requests(depth=3000):
    """Over-deep JSON at the top level, in a field, and in every JSON-in-string field."""
    deep = "[" * depth + "]" * depth
    return [
        (RequestId.WAIT_FOR_PROCESS, deep.encode()),
        (RequestId.SIGNAL_PROCESS, ('{"ContainerId":' + '{"a":' * depth + "1" + "}" * depth + "}").encode()),
        (RequestId.CREATE, json.dumps({"ContainerId": "c1", "ActivityId": ZERO,
                                       "ContainerConfig": '{"SchemaVersion":' + deep + "}"}).encode()),
        (RequestId.EXECUTE_PROCESS, json.dumps({"ContainerId": ZERO, "ActivityId": ZERO, "Settings": {
            "ProcessParameters": '{"CommandArgs":' + deep + "}"}}).encode()),
        (RequestId.GET_PROPERTIES, json.dumps({"ContainerId": "c1", "Query": '{"PropertyTypes":' + deep + "}"}).encode()),
        (RequestId.MODIFY_SETTINGS, ('{"ContainerId":"%s","Request":{"ResourceType":"Network","Settings":%s}}'
                                     % (ZERO, deep)).encode()),
    ]


def _send_deep_chunk(bridge):
    """The deep requests between two good ones, all in one write: each gets its own reply."""
    from fuzz_bridge import send_batch
    good = (RequestId.DUMP_STACKS, json.dumps({"ContainerId": ZERO, "ActivityId": ZERO}).encode())
    sent = send_batch(bridge, [good, *_deep_requests(), good])
    results = []
    for _, _, pending, _ in sent:
        assert pending.event.wait(10) and pending.reply is not None, bridge.close_reason
        results.append(pending.reply["Result"])
    bad = hr.to_int32(hr.INVALID_JSON)
    assert results == [0] + [bad] * (len(sent) - 2) + [0]
    assert "nesting depth" in sent[1][2].reply["ErrorMessage"]


def test_deep_nesting_is_invalid_json(uvm, keeper):
    _send_deep_chunk(uvm.bridge)
    assert not uvm.bridge.closed.is_set()
    still_serving(uvm, keeper)


def test_deep_nesting_over_stdio_keeps_the_agent(uvm_stdio):
    _send_deep_chunk(uvm_stdio.bridge)
    assert uvm_stdio.proc.poll() is None
    proc = uvm_stdio.client.exec(["true"])
    assert proc.wait() == 0
