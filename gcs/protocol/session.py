"""The bridge's connection state machine, sans-IO (in the manner of h11/h2).

Bytes from the host go in through `receive_data`; it returns the requests the
application must handle and answers by itself everything the protocol decides alone:
NegotiateProtocol, requests before negotiation, unknown message ids and undecodable
payloads. Replies and notifications come out as bytes from `data_to_send`.

Invariants kept here: exactly one reply per request, reply id = request id with type 2,
sequence id echoed, every outbound frame under 64 KiB. No frame can break them: whatever
decoding one raises becomes that frame's error reply, and a reply that cannot be encoded
or cannot fit becomes an error reply saying why.
"""
from __future__ import annotations

from . import hresult as hr
from .fields import Obj, peek_envelope
from .framing import DEFAULT_MAX_INBOUND, Frame, FrameDecoder, encode_frame
from .ids import (HANDLED_REQUESTS, NOTIFICATION_CONTAINER, PROTOCOL_VERSION, TYPE_MASK, TYPE_REQUEST,
                  RequestId, request_name, response_id)
from .replies import encode_notification, error_response, fit_reply, negotiate_response

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

    from .messages import Request


class IncomingRequest:
    """A decoded request the application must answer (exactly once)."""

    __slots__ = ("seq", "ident", "request")

    def __init__(self, seq: int, ident: int, request: "Request") -> None:
        self.seq, self.ident, self.request = seq, ident, request

    @property
    def name(self) -> str:
        return request_name(self.ident)


class AutoReply:
    """A reply the session produced by itself, or a message it had to change or hold back
    (for logging by the IO layer)."""

    __slots__ = ("seq", "ident", "result", "message", "kind")

    def __init__(self, seq: int, ident: int, result: int, message: str, kind: str = "reply") -> None:
        self.seq, self.ident, self.result, self.message = seq, ident, result, message
        self.kind = kind  # "reply" or "notification"


class ProtocolViolation(Exception):
    """The application tried to break an invariant (for example a second reply)."""


class BridgeSession:
    def __init__(self, max_inbound: int = DEFAULT_MAX_INBOUND) -> None:
        self._decoder = FrameDecoder(max_inbound)
        self.version = 0  # 0 until NegotiateProtocol succeeds
        self._outstanding: dict[int, int] = {}  # seq -> request id awaiting its reply
        self._out: list[bytes] = []
        self.auto_replies: list[AutoReply] = []

    @property
    def negotiated(self) -> bool:
        return self.version != 0

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def at_boundary(self) -> bool:
        return self._decoder.at_boundary()

    # --- inbound ------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[IncomingRequest]:
        """Raises FramingError when the stream cannot continue."""
        requests: list[IncomingRequest] = []
        for frame in self._decoder.feed(data):
            req = self._on_frame(frame)
            if req is not None:
                requests.append(req)
        return requests

    def _on_frame(self, frame: Frame) -> Optional[IncomingRequest]:
        ident = frame.ident
        known = (ident & TYPE_MASK) == TYPE_REQUEST and ident in HANDLED_REQUESTS
        if not known or (ident == RequestId.NEGOTIATE_PROTOCOL) == self.negotiated:
            _, activity = peek_envelope(frame.payload)
            self._auto_error(frame, activity, hr.GcsError(
                hr.E_NOTIMPL, f"bridge: function not supported, header type: 0x{ident:08x}"))
            return None
        try:
            return self._decode(frame)
        except Exception as err:  # noqa: BLE001 - one bad frame gets an error reply, never ends the bridge
            _, activity = peek_envelope(frame.payload)
            self._auto_error(frame, activity, _decode_error(ident, err))
            return None

    def _decode(self, frame: Frame) -> Optional[IncomingRequest]:
        """Everything that may raise comes before the frame is answered or registered."""
        ident = frame.ident
        if ident == RequestId.NEGOTIATE_PROTOCOL:
            self._negotiate(frame, Obj.parse(frame.payload, "message NegotiateProtocol"))
            return None
        from .messages import parse_request  # loaded after negotiation: see messages.py
        request = parse_request(ident, frame.payload)
        if frame.seq in self._outstanding:
            # The host never reuses a live id; answering both would make it drop the bridge.
            self._auto_error(frame, request.activity_id, hr.GcsError(
                hr.E_INVALIDARG, f"sequence id {frame.seq} is already in use"))
            return None
        self._outstanding[frame.seq] = ident
        return IncomingRequest(frame.seq, ident, request)

    def _negotiate(self, frame: Frame, req: Obj) -> None:
        activity = req.str("ActivityId")
        lo, hi = req.uint("MinimumVersion"), req.uint("MaximumVersion")
        if hi < PROTOCOL_VERSION or lo > PROTOCOL_VERSION:
            self._auto_error(frame, activity, hr.GcsError(
                hr.UNSUPPORTED_PROTOCOL_VERSION,
                f"protocol version range [{lo}, {hi}] does not include {PROTOCOL_VERSION}"))
            return
        self.version = PROTOCOL_VERSION
        self._emit(frame.ident, frame.seq, negotiate_response(activity, self.version))
        self.auto_replies.append(AutoReply(frame.seq, frame.ident, 0, "negotiated"))

    def _auto_error(self, frame: Frame, activity: str, err: hr.GcsError) -> None:
        self._emit(frame.ident, frame.seq, error_response(activity, err))
        self.auto_replies.append(AutoReply(frame.seq, frame.ident, err.hresult, err.message))

    # --- outbound -----------------------------------------------------------------------
    def is_outstanding(self, seq: int) -> bool:
        return seq in self._outstanding

    def respond(self, req: IncomingRequest, reply: dict[str, Any]) -> None:
        """Queue the one reply to `req`: an error reply instead if this one cannot be sent."""
        ident = self._outstanding.get(req.seq)
        if ident is None:
            raise ProtocolViolation(f"request {req.seq} has no reply outstanding")
        self._emit(ident, req.seq, reply, req.request.activity_id)
        del self._outstanding[req.seq]

    def respond_error(self, req: IncomingRequest, err: BaseException) -> None:
        self.respond(req, error_response(req.request.activity_id, err))

    def notify(self, notification: dict[str, Any]) -> None:
        payload, problem = encode_notification(notification)
        if problem:
            self.auto_replies.append(AutoReply(0, NOTIFICATION_CONTAINER, hr.E_FAIL, problem, "notification"))
        if payload is not None:
            self._out.append(encode_frame(NOTIFICATION_CONTAINER, 0, payload))

    def _emit(self, ident: int, seq: int, reply: dict[str, Any], activity_id: str = "") -> None:
        payload, failure = fit_reply(reply, activity_id=activity_id)
        if failure is not None:
            self.auto_replies.append(AutoReply(seq, ident, failure.hresult,
                                               f"reply replaced by an error: {failure.message}"))
        self._out.append(encode_frame(response_id(ident), seq, payload))

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data


def _decode_error(ident: int, err: Exception) -> hr.GcsError:
    """What a frame whose decoding raised `err` is answered with."""
    if isinstance(err, hr.GcsError):
        return err
    name = request_name(ident)
    if isinstance(err, (ValueError, RecursionError)):  # UnicodeError is a ValueError
        return hr.invalid_json(f"failed to unmarshal JSON in message {name}: {err}")
    return hr.GcsError(hr.E_FAIL, f"failed to decode message {name}: {type(err).__name__}: {err}")
