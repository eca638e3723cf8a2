"""The bridge state machine without any IO."""
import json

import pytest

from gcs.protocol import hresult as hr
from gcs.protocol import jsoncodec
from gcs.protocol.framing import FramingError, encode_frame
from gcs.protocol.ids import RequestId
from gcs.protocol.replies import container_notification, error_response, response
from gcs.protocol.session import BridgeSession, ProtocolViolation

ZERO = "00000000-0000-0000-0000-000000000000"
NEGOTIATE = json.dumps({"ContainerId": "", "ActivityId": ZERO, "MinimumVersion": 4, "MaximumVersion": 4}).encode()


def replies(session):
    data = session.data_to_send()
    out = []
    while data:
        ident = int.from_bytes(data[0:4], "little")
        size = int.from_bytes(data[4:8], "little")
        seq = int.from_bytes(data[8:16], "little")
        out.append((ident, seq, json.loads(data[16:size])))
        data = data[size:]
    return out


def negotiated():
    s = BridgeSession()
    s.receive_data(encode_frame(RequestId.NEGOTIATE_PROTOCOL, 0, NEGOTIATE))
    replies(s)
    s.auto_replies.clear()
    return s


def test_requests_before_negotiation_are_not_implemented():
    s = BridgeSession()
    assert s.receive_data(encode_frame(RequestId.DUMP_STACKS, 3, b'{"ActivityId":"%s"}' % ZERO.encode())) == []
    [(ident, seq, body)] = replies(s)
    assert (ident, seq) == (0x20100C01, 3)
    assert body["Result"] == hr.to_int32(hr.E_NOTIMPL) and body["ActivityId"] == ZERO
    assert "function not supported" in body["ErrorMessage"]


def test_second_negotiation_is_not_implemented():
    s = negotiated()
    s.receive_data(encode_frame(RequestId.NEGOTIATE_PROTOCOL, 1, NEGOTIATE))
    [(_, seq, body)] = replies(s)
    assert seq == 1 and body["Result"] == hr.to_int32(hr.E_NOTIMPL)
    assert s.version == 4


@pytest.mark.parametrize("lo,hi", [(1, 3), (5, 6), (0, 0)])
def test_unsupported_versions(lo, hi):
    s = BridgeSession()
    s.receive_data(encode_frame(RequestId.NEGOTIATE_PROTOCOL, 0,
                                json.dumps({"MinimumVersion": lo, "MaximumVersion": hi}).encode()))
    [(_, _, body)] = replies(s)
    assert body["Result"] == hr.to_int32(hr.UNSUPPORTED_PROTOCOL_VERSION)
    assert not s.negotiated


def test_version_range_including_4():
    s = BridgeSession()
    s.receive_data(encode_frame(RequestId.NEGOTIATE_PROTOCOL, 0, b'{"MinimumVersion":2,"MaximumVersion":9}'))
    [(_, _, body)] = replies(s)
    assert body["Version"] == 4 and s.negotiated


@pytest.mark.parametrize("ident", [0x10100E01, 0x10100F01, 0x10200101, 0x10101001, 0x20100101, 0x30100101, 0x00000000])
def test_unknown_ids_get_e_notimpl_with_response_id(ident):
    s = negotiated()
    s.receive_data(encode_frame(ident, 42, b'{}'))
    [(rid, seq, body)] = replies(s)
    assert rid == 0x20000000 | (ident & 0x0FFFFFFF) and seq == 42
    assert body["Result"] == hr.to_int32(hr.E_NOTIMPL)


@pytest.mark.parametrize("payload", [b"\xff\xfe\xfd", b"{not json", b"[]", b'{"ProcessId": "x"}', b'{"ProcessId": -1}',
                                     b'{"ProcessId": 1.5}', b'{"TimeoutInMs": true}'])
def test_undecodable_requests_are_invalid_json(payload):
    s = negotiated()
    assert s.receive_data(encode_frame(RequestId.WAIT_FOR_PROCESS, 5, payload)) == []
    [(_, seq, body)] = replies(s)
    assert seq == 5 and body["Result"] == hr.to_int32(hr.INVALID_JSON)


def test_activity_id_recovered_from_partially_bad_payload():
    s = negotiated()
    aid = "11111111-2222-3333-4444-555555555555"
    s.receive_data(encode_frame(RequestId.WAIT_FOR_PROCESS, 5, json.dumps({"ActivityId": aid, "ProcessId": "x"}).encode()))
    [(_, _, body)] = replies(s)
    assert body["ActivityId"] == aid


def test_exactly_one_reply_per_request():
    s = negotiated()
    [req] = s.receive_data(encode_frame(RequestId.START, 9, b'{"ContainerId":"x"}'))
    assert s.outstanding == 1
    s.respond(req, response(""))
    assert s.outstanding == 0
    with pytest.raises(ProtocolViolation):
        s.respond(req, response(""))
    [(ident, seq, _)] = replies(s)
    assert (ident, seq) == (0x20100201, 9)


def test_duplicate_live_sequence_id_is_refused_without_a_second_reply_later():
    s = negotiated()
    [req] = s.receive_data(encode_frame(RequestId.START, 9, b'{}'))
    assert s.receive_data(encode_frame(RequestId.START, 9, b'{}')) == []
    [(_, _, body)] = replies(s)
    assert body["Result"] == hr.to_int32(hr.E_INVALIDARG)
    s.respond(req, response(""))
    assert len(replies(s)) == 1


def test_framing_errors_raise():
    s = negotiated()
    with pytest.raises(FramingError):
        s.receive_data(b"\x01\x05\x10\x10" + (8).to_bytes(4, "little") + bytes(8))


def test_long_error_text_is_truncated_under_64k():
    s = negotiated()
    [req] = s.receive_data(encode_frame(RequestId.DUMP_STACKS, 1, b'{}'))
    s.respond(req, error_response("", hr.GcsError(hr.E_FAIL, "x" * 200_000)))
    data = s.data_to_send()
    assert len(data) <= 65536
    body = json.loads(data[16:])
    assert body["ErrorMessage"].endswith("[truncated]") and body["ErrorRecords"][0]["Message"].endswith("[truncated]")


def test_long_stacks_with_non_ascii_are_truncated_under_64k():
    s = negotiated()
    [req] = s.receive_data(encode_frame(RequestId.DUMP_STACKS, 1, b'{}'))
    s.respond(req, response("", GuestStacks="\u00e9\U0001F600" * 50_000))
    data = s.data_to_send()
    assert int.from_bytes(data[4:8], "little") == len(data) <= 65536
    assert json.loads(data[16:])["GuestStacks"].endswith("[truncated]")


def test_notifications_have_sequence_zero():
    s = negotiated()
    s.notify({"ContainerId": "c1", "ActivityId": ZERO, "Type": "UnexpectedExit", "Operation": "None", "Result": 0})
    [(ident, seq, body)] = replies(s)
    assert (ident, seq) == (0x30100101, 0) and body["ContainerId"] == "c1"


# --- no frame ends the bridge, every request gets one reply -------------------------------
DEEP = "[" * 5000 + "]" * 5000


def frames(*items):
    return b"".join(encode_frame(ident, seq, payload) for ident, seq, payload in items)


def test_deep_frames_get_invalid_json_and_the_rest_of_the_chunk_is_served():
    s = negotiated()
    pp = jsoncodec.dumps({"ContainerId": ZERO, "Settings": {"ProcessParameters": '{"CommandArgs":' + DEEP + "}"}})
    create = jsoncodec.dumps({"ContainerId": "c1", "ContainerConfig": '{"SchemaVersion":' + DEEP + "}"})
    query = jsoncodec.dumps({"ContainerId": "c1", "Query": '{"PropertyTypes":' + DEEP + "}"})
    settings = '{"ContainerId":"%s","Request":{"ResourceType":"Network","Settings":%s}}' % (ZERO, DEEP)
    requests = s.receive_data(frames(
        (RequestId.DUMP_STACKS, 1, b"{}"),
        (RequestId.WAIT_FOR_PROCESS, 2, DEEP.encode()),
        (RequestId.SIGNAL_PROCESS, 3, ('{"ContainerId":' + '{"a":' * 3000 + "1" + "}" * 3000 + "}").encode()),
        (RequestId.EXECUTE_PROCESS, 4, pp.encode()),
        (RequestId.CREATE, 5, create.encode()),
        (RequestId.GET_PROPERTIES, 6, query.encode()),
        (RequestId.MODIFY_SETTINGS, 7, settings.encode()),
        (RequestId.START, 8, b'{"ContainerId":"c1"}'),
    ))
    assert [r.seq for r in requests] == [1, 8]
    out = replies(s)
    assert [seq for _, seq, _ in out] == [2, 3, 4, 5, 6, 7]
    for _, _, body in out:
        assert body["Result"] == hr.to_int32(hr.INVALID_JSON)
        assert f"maximum nesting depth of {jsoncodec.MAX_DEPTH}" in body["ErrorMessage"]


@pytest.mark.parametrize("exc,hresult", [(RecursionError("deep"), hr.INVALID_JSON), (ValueError("bad"), hr.INVALID_JSON),
                                         (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), hr.INVALID_JSON),
                                         (KeyError("type"), hr.E_FAIL), (AttributeError("no get"), hr.E_FAIL)])
def test_any_exception_while_decoding_is_that_frames_error(monkeypatch, exc, hresult):
    import gcs.protocol.messages as messages
    real = messages.parse_request

    def parse(ident, payload):
        if payload == b'{"boom":1}':
            raise exc
        return real(ident, payload)

    monkeypatch.setattr(messages, "parse_request", parse)
    s = negotiated()
    requests = s.receive_data(frames((RequestId.START, 1, b'{"boom":1}'), (RequestId.START, 2, b"{}")))
    assert [r.seq for r in requests] == [2]
    [(ident, seq, body)] = replies(s)
    assert (ident, seq) == (0x20100201, 1)
    assert body["Result"] == hr.to_int32(hresult)
    assert "message START" in body["ErrorMessage"]
    if hresult == hr.E_FAIL:
        assert type(exc).__name__ in body["ErrorMessage"]
    assert s.outstanding == 1


def test_a_reply_over_64k_becomes_one_error_reply():
    s = negotiated()
    aid = "11111111-2222-3333-4444-555555555555"
    [req] = s.receive_data(encode_frame(RequestId.GET_PROPERTIES, 7, b'{"ActivityId":"%s"}' % aid.encode()))
    big = jsoncodec.dumps({"ProcessList": [{"ProcessId": i} for i in range(8000)]})
    assert len(big) > 100 * 1024
    size = len(jsoncodec.dumps(response(aid, Properties=big)))
    s.respond(req, response(aid, Properties=big))
    assert s.outstanding == 0
    data = s.data_to_send()
    assert int.from_bytes(data[4:8], "little") == len(data) <= 65536
    body = json.loads(data[16:])
    assert int.from_bytes(data[8:16], "little") == 7
    assert body["Result"] == hr.to_int32(hr.INSUFFICIENT_BUFFER) and body["ActivityId"] == aid
    assert f"reply of {size} bytes" in body["ErrorMessage"] and "65520" in body["ErrorMessage"]
    assert "Properties" not in body
    [auto] = s.auto_replies
    assert (auto.seq, auto.result) == (7, hr.INSUFFICIENT_BUFFER)


@pytest.mark.parametrize("bad", [{"Result": 0, "X": object()}, {"Result": 0, "X": float("nan")}, ["not", "a dict"],
                                 None])
def test_an_unencodable_reply_becomes_one_error_reply(bad):
    s = negotiated()
    [req] = s.receive_data(encode_frame(RequestId.DUMP_STACKS, 3, b"{}"))
    s.respond(req, bad)
    assert s.outstanding == 0
    [(_, seq, body)] = replies(s)
    assert seq == 3 and body["Result"] == hr.to_int32(hr.E_FAIL)
    assert "could not be encoded" in body["ErrorMessage"]


def test_an_error_whose_str_raises_still_gets_a_reply():
    class Broken(Exception):
        def __str__(self):
            raise RuntimeError("no text")

    s = negotiated()
    [req] = s.receive_data(encode_frame(RequestId.DUMP_STACKS, 3, b"{}"))
    s.respond_error(req, Broken())
    [(_, _, body)] = replies(s)
    assert body["Result"] == hr.to_int32(hr.E_FAIL) and "Broken" in body["ErrorMessage"]


def test_an_oversized_notification_loses_its_result_info():
    s = negotiated()
    s.notify(container_notification("c1", ZERO, "UnexpectedExit", {"Detail": "x" * 100_000}))
    [(ident, seq, body)] = replies(s)
    assert (ident, seq) == (0x30100101, 0) and "ResultInfo" not in body and body["ContainerId"] == "c1"
    [auto] = s.auto_replies
    assert auto.kind == "notification" and "ResultInfo left out" in auto.message


def test_a_notification_that_cannot_be_sent_is_held_back():
    s = negotiated()
    s.notify({"ContainerId": "c" * 70_000, "ActivityId": ZERO, "Type": "UnexpectedExit"})
    s.notify({"ContainerId": "c1", "ActivityId": ZERO, "Type": object()})
    assert s.data_to_send() == b""
    assert [a.kind for a in s.auto_replies] == ["notification", "notification"]
    assert all("not sent" in a.message for a in s.auto_replies)


# --- the IO layer (gcs.bridge.server) keeps the session's promise -------------------------
def _serve_one_connection(handler, requests):
    """Run a Bridge over a socketpair, send `requests` in one write, return the replies."""
    import socket

    from gcs import aio
    from gcs.bridge.connection import Conn
    from gcs.bridge.server import Bridge

    ours, theirs = socket.socketpair()
    conns = iter([Conn.from_socket(ours, "pair")])

    async def connect():
        return next(conns)

    bridge = Bridge(handler, connect, reconnect=False)
    theirs.sendall(encode_frame(RequestId.NEGOTIATE_PROTOCOL, 0, NEGOTIATE) + frames(*requests))
    got = []

    async def main():
        runner = aio.spawn(bridge.run())
        await aio.sleep(0.3)
        got.append(bridge.session.outstanding)
        theirs.shutdown(socket.SHUT_WR)
        await runner

    loop = aio.get_loop()
    task = aio.spawn(main())
    timer = loop.call_later(10, task.cancel)
    try:
        loop.run_until_complete(task)
    finally:
        timer.cancel()
    theirs.settimeout(5)
    data = b""
    while True:
        chunk = theirs.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    theirs.close()
    out = []
    while data:
        size = int.from_bytes(data[4:8], "little")
        assert size <= 65536
        out.append((int.from_bytes(data[8:16], "little"), json.loads(data[16:size])))
        data = data[size:]
    return got[0], out


def test_server_answers_once_whatever_the_reply():
    big = jsoncodec.dumps({"ProcessList": [{"ProcessId": i} for i in range(8000)]})

    async def handler(req):
        return {
            1: response(ZERO, Properties=big),     # over 64 KiB, nothing to cut
            2: {"Result": 0, "X": {1, 2}},          # not JSON
            3: None,                                # not a reply
            4: response(ZERO),                      # fine
        }[req.seq]

    outstanding, out = _serve_one_connection(handler, [(RequestId.GET_PROPERTIES, seq, b"{}") for seq in (1, 2, 3, 4)])
    assert outstanding == 0
    by_seq = {seq: body for seq, body in out}
    assert sorted(seq for seq, _ in out) == [0, 1, 2, 3, 4]  # one reply each, negotiation included
    assert by_seq[1]["Result"] == hr.to_int32(hr.INSUFFICIENT_BUFFER)
    assert by_seq[2]["Result"] == by_seq[3]["Result"] == hr.to_int32(hr.E_FAIL)
    assert by_seq[4]["Result"] == 0


def test_server_answers_once_when_responding_raises(monkeypatch):
    real = BridgeSession.respond
    calls = []

    def respond(self, req, reply):
        calls.append(req.seq)
        if len(calls) == 1:
            raise RuntimeError("encoder exploded")
        real(self, req, reply)

    monkeypatch.setattr(BridgeSession, "respond", respond)

    async def handler(req):
        return response(ZERO)

    outstanding, out = _serve_one_connection(handler, [(RequestId.DUMP_STACKS, 5, b"{}")])
    assert outstanding == 0
    [(seq, body)] = [item for item in out if item[0] == 5]
    assert body["Result"] == hr.to_int32(hr.E_FAIL) and "encoder exploded" in body["ErrorMessage"]
