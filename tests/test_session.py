"""The bridge state machine without any IO."""
import json

import pytest

from gcs.protocol import hresult as hr
from gcs.protocol.framing import FramingError, encode_frame
from gcs.protocol.ids import RequestId
from gcs.protocol.replies import error_response, response
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
