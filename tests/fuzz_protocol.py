"""A coverage-guided fuzzer (atheris/libFuzzer) of the sans-IO bridge core, in-process:
bytes in -> frames -> the session's decoding -> a parsed request or the session's own
error reply -> the dispatch layer's decoding of nested settings -> the reply bytes.

One input is a control byte, then either payloads (framed here: bytes 1-4 the message id,
5-12 the sequence id of the first, the rest up to MAX_PAYLOADS payloads split at SEPARATOR,
one frame each with the next sequence id) or a raw byte stream fed to the session as it
comes. Control bits: 0x01 raw stream; 0x02 start unnegotiated (otherwise the session
starts negotiated); 0x1C the chunk size it is fed in (the first MAX_CHUNKS chunks, then the
rest); 0x20 answer every request only at the end (more outstanding, so duplicate sequence
ids); 0x40 a 4 KiB inbound limit (so the size check is reachable with small inputs).

The invariant, checked on every input (`_Checker.run`): every frame the stream holds is decoded
exactly as framed, and gets either one parsed request or exactly one error reply with the
response id, its own sequence id and the HRESULT its case calls for (E_NOTIMPL for unknown
ids and ids in the wrong negotiation state; 0xC037010D for undecodable payloads, always
when Python's strict `json` rejects the payload too; 0xC037010C for a version range
without 4; E_INVALIDARG only for a sequence id still outstanding). Every parsed request gets
exactly one reply through the dispatch path. A bad header (size < 16 or over the limit) is
a FramingError (a clean drop) exactly when the stream reaches one; a partial last frame
leaves the session off a boundary. Every reply passes the host's strict checks
(gcs/host/strict.py) and fits 64 KiB. Any other exception, or an input taking longer than
HANG_SECONDS, is a violation; libFuzzer's -timeout kills a real hang.

    python3 tests/fuzz_protocol.py [--frames N] [--seed S] [--work DIR]   # fuzz (prints a summary)
    python3 tests/fuzz_protocol.py --write-corpus                          # regenerate tests/fuzz_corpus
    python3 tests/fuzz_protocol.py FILE...                                 # replay inputs, report each

PYGCS_FUZZ_PROTOCOL_FRAMES sets the frame budget, PYGCS_FUZZ_SEED the seed (as fuzz_bridge.py).
Violating inputs are saved under WORK/artifacts (the first 20) and make the run exit 1; libFuzzer
puts an input that hung or crashed the interpreter there too (timeout-*, crash-*) and exits non-zero.
"""
from __future__ import annotations

import json
import os
import struct
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CORPUS_DIR = os.path.join(ROOT, "tests", "fuzz_corpus")
DICT_PATH = os.path.join(ROOT, "tests", "fuzz_protocol.dict")  # libFuzzer's -dict (not an input)
PROTOCOL_MD = os.path.join(os.path.dirname(ROOT), "shared", "protocol.md")
FRAMES_ENV = "PYGCS_FUZZ_PROTOCOL_FRAMES"
SEED_ENV = "PYGCS_FUZZ_SEED"
HANG_SECONDS = 2.0  # an input slower than this is a violation
TIMEOUT = 10  # libFuzzer's -timeout: a hung input is killed, the run fails
MAX_LEN = 16384  # libFuzzer's -max_len (bytes per input)
SMALL_LIMIT = 4096
CHUNKS = (0, 0, 0, 0, 1, 7, 61, 509)  # 0: the whole input at once
MAX_CHUNKS = 32  # then the rest at once (bounds the cost of feeding byte by byte)
MAX_ARTIFACTS = 20
HEADER = struct.Struct("<IIQ")
RAW, UNNEGOTIATED, ANSWER_AT_END, SMALL = 0x01, 0x02, 0x20, 0x40
NEGOTIATE_SEQ = 0xFFFFFFFFFFFFFFFF  # the harness's prelude (not counted)
NEGOTIATE_EVERY = 64
SEPARATOR = b"\xff\x00"  # between payloads (never in UTF-8 text; raw streams still carry it)
MAX_PAYLOADS = 16  # per input: the rest of the input is the last payload


def _import_targets() -> None:
    """The code under test (instrumented when imported inside atheris.instrument_imports)."""
    import gcs.protocol.messages  # noqa: F401
    import gcs.protocol.session  # noqa: F401
    import gcs.storage.settings  # noqa: F401


class Violation(AssertionError):
    pass


@dataclass
class Stats:
    inputs: int = 0
    frames: int = 0
    violations: int = 0
    slowest: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1


# --- the model: what the stream holds --------------------------------------------------
def split_frames(stream: bytes, limit: int) -> tuple[list[tuple[int, int, bytes]], bool, int]:
    """(frames, whether a bad header is reached, bytes left in a partial frame)."""
    frames, pos = [], 0
    while len(stream) - pos >= 16:
        ident, size, seq = HEADER.unpack_from(stream, pos)
        if size < 16 or size > limit:
            return frames, True, len(stream) - pos
        if len(stream) - pos < size:
            break
        frames.append((ident, seq, stream[pos + 16:pos + size]))
        pos += size
    return frames, False, len(stream) - pos


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT = json.JSONDecoder(parse_constant=_no_constants)


def strict_json(payload: bytes) -> Any:
    """Python's own strict reading (no NaN/Infinity), or a ValueError."""
    return _STRICT.decode(payload.decode("utf-8"))


def unpack_input(data: bytes) -> tuple[int, bytes]:
    """(control, the byte stream the session is fed)."""
    control = data[0] if data else 0
    if control & RAW or len(data) < 13:
        return control, data[1:]
    ident, seq = struct.unpack_from("<IQ", data, 1)
    return control, b"".join(HEADER.pack(ident, 16 + len(payload), (seq + k) & 0xFFFFFFFFFFFFFFFF) + payload
                             for k, payload in enumerate(data[13:].split(SEPARATOR, MAX_PAYLOADS - 1)))


def pack_payloads(ident: int, seq: int, payloads: list[bytes], control: int = 0) -> bytes:
    assert not any(SEPARATOR in p for p in payloads)
    return bytes([control & ~RAW]) + struct.pack("<IQ", ident, seq) + SEPARATOR.join(payloads)


def pack_raw(frames: list[tuple[int, int, bytes]], control: int = RAW) -> bytes:
    return bytes([control | RAW]) + b"".join(HEADER.pack(i, 16 + len(p), s) + p for i, s, p in frames)


# --- the check --------------------------------------------------------------------------
class _Checker:
    """One input through a fresh session, every outcome checked against the model."""

    def __init__(self, stats: Stats) -> None:
        from gcs.protocol import hresult as hr
        from gcs.protocol.ids import (HANDLED_REQUESTS, PROTOCOL_VERSION, TYPE_MASK, TYPE_REQUEST, RequestId,
                                      response_id)
        from gcs.protocol.session import BridgeSession
        from gcs.protocol.framing import DEFAULT_MAX_INBOUND, FramingError

        self.hr, self.handled, self.ids, self.response_id = hr, HANDLED_REQUESTS, RequestId, response_id
        self.default_limit, self.FramingError = DEFAULT_MAX_INBOUND, FramingError
        self.runs, self.version = 0, PROTOCOL_VERSION
        self.is_request = lambda ident: (ident & TYPE_MASK) == TYPE_REQUEST
        self.stats = stats
        checker = self

        class Observed(BridgeSession):
            def _on_frame(self, frame):  # type: ignore[no-untyped-def]
                was_negotiated, was_outstanding = self.negotiated, self.is_outstanding(frame.seq)
                req = super()._on_frame(frame)
                checker.on_frame(frame, was_negotiated, was_outstanding, req, self.data_to_send(), self.negotiated)
                return req

        self.Observed = Observed

    def run(self, data: bytes) -> int:
        control, stream = unpack_input(data)
        limit = SMALL_LIMIT if control & SMALL else None
        session = self.Observed(limit) if limit else self.Observed()
        self.frames, self.prelude = 0, False
        self.pending: list[Any] = []
        if not control & UNNEGOTIATED:
            self._negotiate(session)
        model, bad_header, left = split_frames(stream, limit or self.default_limit)
        self.expected = list(model)
        chunk = CHUNKS[(control >> 2) & 7] or max(1, len(stream))
        dropped = False
        cuts = list(range(0, len(stream), chunk))[:MAX_CHUNKS] + [len(stream)]
        for pos, end in zip(cuts, cuts[1:]):
            try:
                self.pending += session.receive_data(stream[pos:end])
            except self.FramingError:
                dropped = True
                break
            if not control & ANSWER_AT_END:
                self._answer_all(session)
        if dropped != bad_header:
            raise Violation(f"FramingError raised: {dropped}, a bad header in the stream: {bad_header}")
        if dropped:
            self.stats.count("drop")
            return self.frames  # the connection is gone: nothing more is answered
        if self.expected:
            raise Violation(f"{len(self.expected)} frame(s) never reached the session: {self.expected[:2]!r}")
        self._answer_all(session)
        if session.at_boundary() != (left == 0):
            raise Violation(f"at_boundary() is {session.at_boundary()} with {left} bytes of a partial frame")
        if session.outstanding:
            raise Violation(f"{session.outstanding} request(s) still outstanding after every answer")
        return self.frames

    def _negotiate(self, session: Any) -> None:
        """A valid NegotiateProtocol first, in one frame of every NEGOTIATE_EVERY inputs; in the
        others the session starts where that leaves it, its version set (cheaper per input)."""
        self.runs += 1
        if self.runs % NEGOTIATE_EVERY:
            session.version = self.version
            return
        body = (b'{"ContainerId":"","ActivityId":"00000000-0000-0000-0000-000000000000",'
                b'"MinimumVersion":4,"MaximumVersion":4}\n')
        self.expected, self.prelude = [(self.ids.NEGOTIATE_PROTOCOL, NEGOTIATE_SEQ, body)], True
        session.receive_data(HEADER.pack(self.ids.NEGOTIATE_PROTOCOL, 16 + len(body), NEGOTIATE_SEQ) + body)
        if not session.negotiated or self.expected:
            raise Violation("a valid NegotiateProtocol did not negotiate")
        self.prelude = False

    # --- one frame -----------------------------------------------------------------------
    def on_frame(self, frame: Any, was_negotiated: bool, was_outstanding: bool, req: Any, out: bytes,
                 negotiated: bool) -> None:
        if not self.expected:
            raise Violation(f"the decoder produced a frame the stream does not hold: {frame!r}")
        want = self.expected.pop(0)
        if tuple(frame) != want:
            raise Violation(f"decoded {frame!r}, the stream holds {want!r}")
        if not self.prelude:
            self.frames += 1
        ident, hr = frame.ident, self.hr
        wrong_state = (ident == self.ids.NEGOTIATE_PROTOCOL) == was_negotiated
        if not self.is_request(ident) or ident not in self.handled or wrong_state:
            self._expect_reply(frame, out, {hr.E_NOTIMPL}, "notimpl")
            return
        try:
            strict_json(frame.payload)
            valid = True
        except (ValueError, RecursionError):
            valid = False
        if ident == self.ids.NEGOTIATE_PROTOCOL:
            allowed = {0, hr.INVALID_JSON, hr.UNSUPPORTED_PROTOCOL_VERSION} if valid else {hr.INVALID_JSON}
            result = self._expect_reply(frame, out, allowed, "negotiate")
            if negotiated != (result == 0):
                raise Violation(f"NegotiateProtocol answered 0x{result:08x} but negotiated is {negotiated}")
            return
        if req is None:
            allowed = {hr.INVALID_JSON} | ({hr.E_INVALIDARG} if was_outstanding else set())
            self._expect_reply(frame, out, allowed if valid else {hr.INVALID_JSON}, "rejected")
            return
        if out:
            raise Violation(f"a parsed request was also answered by the session: {out[:200]!r}")
        if not valid or (req.seq, req.ident) != (frame.seq, frame.ident) or was_outstanding:
            raise Violation(f"accepted {frame!r} (strict json valid: {valid}, seq outstanding: {was_outstanding})")
        self.stats.count("parsed")

    def _expect_reply(self, frame: Any, out: bytes, allowed: set[int], what: str) -> int:
        result = check_reply_bytes(out, self.response_id(frame.ident), frame.seq)
        if result not in allowed:
            raise Violation(f"{what}: 0x{result:08x} not in {sorted(map(hex, allowed))} for {frame!r}")
        self.stats.count(f"{what} 0x{result:08x}")
        return result

    # --- the dispatch layer: nested settings decoded, every request answered once ----------
    def _answer_all(self, session: Any) -> None:
        pending, self.pending = self.pending, []
        for req in pending:
            expected = self._dispatch(session, req)
            result = check_reply_bytes(session.data_to_send(), self.response_id(req.ident), req.seq)
            if result != expected:
                raise Violation(f"dispatch: answered 0x{result:08x}, expected 0x{expected:08x}")

    def _dispatch(self, session: Any, incoming: Any) -> int:
        """What the agent decodes before a handler acts (agent.py, storage/manager.py), and
        a reply carrying fuzzed text (success, or a not-found error naming the container)."""
        from gcs.protocol.hresult import SYSTEM_NOT_FOUND, GcsError
        from gcs.protocol.replies import response
        req = incoming.request
        try:
            if incoming.ident == self.ids.MODIFY_SETTINGS:
                decode_settings(req)
        except GcsError as err:
            if err.hresult != self.hr.INVALID_JSON:
                raise Violation(f"settings decoding raised {err}") from err
            session.respond_error(incoming, err)
            return err.hresult
        if incoming.seq % 2:
            session.respond_error(incoming, GcsError(SYSTEM_NOT_FOUND, f"container {req.container_id} not found"))
            return SYSTEM_NOT_FOUND
        # Nine times the container id: a long one makes the reply shrink to fit 64 KiB.
        session.respond(incoming, response(req.activity_id, GuestStacks=f"stacks of {req.container_id}\n" * 9))
        return 0


def decode_settings(req: Any) -> None:
    """ModifySettings' nested Settings, as the agent's dispatch decodes them."""
    from gcs.protocol.messages import NetworkAdapter
    from gcs.storage import settings as storage
    if req.resource_type == "Network":
        NetworkAdapter.from_obj(req.settings)
    elif req.settings is not None and req.resource_type in STORAGE_SHAPES:
        getattr(storage, req.resource_type).from_obj(req.settings)


STORAGE_SHAPES = ("MappedVirtualDisk", "SCSIDevice", "VPMemDevice", "CombinedLayers", "MappedDirectory")


def check_reply_bytes(out: bytes, ident: int, seq: int) -> int:
    """The one reply frame in `out` (as the host reads it): its HRESULT (uint32)."""
    from gcs.host import strict
    frames, bad, left = split_frames(out, strict.HOST_MAX_MESSAGE)
    if bad or left or len(frames) != 1:
        raise Violation(f"expected exactly one whole reply frame, got {len(frames)} (bad: {bad}, "
                        f"partial: {left}): {out[:200]!r}")
    got_ident, got_seq, payload = frames[0]
    if (got_ident, got_seq) != (ident, seq):
        raise Violation(f"reply 0x{got_ident:08x} seq {got_seq}, expected 0x{ident:08x} seq {seq}")
    try:
        reply = strict_json(payload)
    except ValueError as err:
        raise Violation(f"the reply is not JSON the host reads: {err}: {payload[:200]!r}") from None
    if not isinstance(reply, dict):
        raise Violation(f"the reply is not an object: {payload[:200]!r}")
    problems = strict.check_reply(len(out), reply)
    if problems:
        raise Violation(f"the host would drop the bridge: {problems}")
    result = reply["Result"] & 0xFFFFFFFF
    if result:
        records = reply.get("ErrorRecords")
        if not isinstance(reply.get("ErrorMessage"), str) or not isinstance(records, list) or not records \
                or records[0].get("Result") != reply["Result"] or records[0].get("ModuleName") != "gcs":
            raise Violation(f"a malformed error reply: {payload[:300]!r}")
    return result


# --- the target ---------------------------------------------------------------------------
class Target:
    """The fuzz target: checks one input; stops the process once the frame budget is spent."""

    def __init__(self, budget: int, artifacts: Optional[str], on_done: Optional[Callable[["Target"], None]] = None):
        self.stats = Stats()
        self.checker = _Checker(self.stats)
        self.budget, self.artifacts, self.on_done = budget, artifacts, on_done
        self.start = time.monotonic()
        self.first_errors: list[str] = []

    def __call__(self, data: bytes) -> None:
        t0 = time.perf_counter()
        error = None
        try:
            self.stats.frames += self.checker.run(data)
        except Exception:  # noqa: BLE001 - a violation or an unexpected exception: both are findings
            error = traceback.format_exc(limit=12)
        elapsed = time.perf_counter() - t0
        self.stats.inputs += 1
        self.stats.slowest = max(self.stats.slowest, elapsed)
        if error is None and elapsed > HANG_SECONDS:
            error = f"Violation: the input took {elapsed:.2f} s (bound {HANG_SECONDS} s)"
        if error is not None:
            self._record(data, error)
        if self.on_done is not None and self.stats.frames >= self.budget:
            self.on_done(self)

    def _record(self, data: bytes, error: str) -> None:
        self.stats.violations += 1
        if len(self.first_errors) < 3:
            self.first_errors.append(error)
        if self.artifacts and self.stats.violations <= MAX_ARTIFACTS:
            import hashlib
            os.makedirs(self.artifacts, exist_ok=True)
            path = os.path.join(self.artifacts, "violation-" + hashlib.sha1(data).hexdigest())
            with open(path, "wb") as f:
                f.write(data)
            error += f"(saved as {path})\n"
        sys.stderr.write(f"=== pygcs fuzz violation #{self.stats.violations}\n{error}")

    def summary(self) -> str:
        elapsed = time.monotonic() - self.start
        s = self.stats
        return (f"fuzz_protocol: frames={s.frames} inputs={s.inputs} crashes={s.violations} "
                f"elapsed={elapsed:.1f}s rate={s.frames / max(elapsed, 1e-9):.0f} frames/s "
                f"slowest_input={s.slowest * 1000:.1f}ms\n  outcomes: "
                + ", ".join(f"{k}: {v}" for k, v in sorted(s.outcomes.items(), key=lambda kv: -kv[1])))


# --- JSON-aware mutations (fuzz_bridge.py's), mixed with libFuzzer's own ---------------------
BOUNDARIES = sorted({sign * (1 << bits) + delta for bits in (7, 8, 15, 16, 31, 32, 63, 64)
                     for sign in (1, -1) for delta in (-1, 0, 1)} | {0, 1, -1})


class JsonMutator:
    """libFuzzer's custom mutator: JSON_SHARE of the time one payload of a payload input that
    decodes as an object gets a JSON-aware mutation, in the JSON-in-string fields too: an
    integer replaced by a boundary of the int/uint ranges (a third of them), or one of
    fuzz_bridge.Mutator's (values of another type, deep nesting, huge numbers, NaN, duplicate
    keys, keys in another case). Otherwise, or when the result does not fit, libFuzzer mutates."""

    JSON_SHARE = 0.25

    def __init__(self, mutate: Callable[[bytes, int], bytes]) -> None:
        import fuzz_bridge
        self.bridge = fuzz_bridge
        self.mutator = fuzz_bridge.Mutator(0)
        self.mutate = mutate

    def __call__(self, data: bytes, max_size: int, seed: int) -> bytes:
        rng = self.mutator.rng
        rng.seed(seed)
        if not data or data[0] & RAW or len(data) < 13 or rng.random() >= self.JSON_SHARE:
            return self.mutate(data, max_size)
        ident = int.from_bytes(data[1:5], "little")
        payloads = data[13:].split(SEPARATOR, MAX_PAYLOADS - 1)
        i = rng.randrange(len(payloads))
        try:
            doc = strict_json(payloads[i])
            if not isinstance(doc, dict):
                return self.mutate(data, max_size)
            new = self._boundary(ident, doc) if rng.random() < 1 / 3 else None
            payloads[i] = new or self.mutator.mutate(ident, doc)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to copy or re-read
            return self.mutate(data, max_size)
        out = data[:13] + SEPARATOR.join(payloads)
        return out if len(out) <= max_size else self.mutate(data, max_size)

    def _boundary(self, ident: int, doc: dict[str, Any]) -> Optional[bytes]:
        fb, rng = self.bridge, self.mutator.rng
        path = fb.JSON_STRINGS.get(ident)
        target = doc
        if path is not None and rng.random() < 0.5:
            try:
                target = json.loads(fb._get(doc, path))
            except (KeyError, TypeError, ValueError):
                target = doc
        sites = [site for site in fb._sites(target) if type(fb._get(target, site)) is int]
        if not sites or not isinstance(target, dict):
            return None
        fb._set(target, rng.choice(sites), rng.choice(BOUNDARIES))
        if target is not doc:
            fb._set(doc, path, fb._dumps(target))
        return (fb._dumps(doc) + "\n").encode()


# --- the seed corpus -------------------------------------------------------------------------
def protocol_md_requests(path: str = PROTOCOL_MD) -> list[tuple[int, bytes]]:
    """Every request example of protocol.md's json/jsonc blocks, with the id its heading or
    comment names (`0x1…`); placeholders (`…`, `<cid>`) are kept as they are."""
    import re
    from gcs.protocol.ids import HANDLED_REQUESTS, REQUEST_IDS
    found: list[tuple[int, bytes]] = []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    heading_ids: list[int] = []
    for block in re.finditer(r"^(#+ [^\n]*)$|^```jsonc?\n(.*?)^```", text, re.M | re.S):
        if block.group(1):
            heading_ids = _ids(block.group(1), REQUEST_IDS)
            continue
        ids, doc = list(heading_ids), []
        for line in block.group(2).splitlines() + ["// end"]:
            if line.startswith("//") or line.startswith("{"):
                body = "\n".join(doc).strip()
                if body and '"Result"' not in body and ("ContainerId" in body or '"…":"…"' in body):
                    found += [(ident, (body + "\n").encode()) for ident in ids if ident in HANDLED_REQUESTS]
                doc = []
                if line.startswith("//"):
                    ids = _ids(line, REQUEST_IDS) or ids
                    continue
            doc.append(line)
    return found


def _ids(text: str, known: tuple[int, ...]) -> list[int]:
    import re
    return [int(h, 16) for h in re.findall(r"0x1[0-9a-fA-F]{7}", text) if int(h, 16) in known]


def seed_inputs() -> dict[str, bytes]:
    """Named seed inputs: protocol.md's examples and fuzz_bridge.py's valid requests, one per
    input, plus raw streams of several frames and an unnegotiated start."""
    import fuzz_bridge
    from gcs.protocol.ids import RequestId
    seeds: dict[str, bytes] = {}
    by_type: dict[int, list[bytes]] = {}
    for n, (ident, payload) in enumerate(protocol_md_requests()):
        seeds[f"md-{n:02d}-{ident:08x}"] = pack_payloads(ident, n + 1, [payload])
        by_type.setdefault(ident, []).append(payload)
    requests = [(ident, (json.dumps(doc) + "\n").encode()) for ident, doc in fuzz_bridge.corpus()]
    for n, (ident, payload) in enumerate(requests):
        seeds[f"bridge-{n:02d}-{ident:08x}"] = pack_payloads(ident, n + 1, [payload])
        by_type.setdefault(ident, []).append(payload)
    for ident, payloads in by_type.items():
        if len(payloads) > 1:
            seeds[f"all-{ident:08x}"] = pack_payloads(ident, 100, payloads)
    negotiate = next(p for i, p in requests if i == RequestId.NEGOTIATE_PROTOCOL)
    seeds["raw-negotiate-first"] = pack_raw([(RequestId.NEGOTIATE_PROTOCOL, 0, negotiate), *[
        (i, s + 1, p) for s, (i, p) in enumerate(requests[1:6])]], RAW | UNNEGOTIATED)
    seeds["raw-chunked-1"] = pack_raw([(i, s, p) for s, (i, p) in enumerate(requests[10:14])], RAW | (1 << 2))
    seeds["raw-duplicate-seq"] = pack_raw([(i, 7, p) for i, p in requests[11:14]], RAW | ANSWER_AT_END)
    seeds["raw-partial"] = pack_raw([(i, 3, p) for i, p in requests[2:4]])[:-5]
    seeds["unnegotiated-negotiate"] = pack_payloads(RequestId.NEGOTIATE_PROTOCOL, 0, [negotiate], UNNEGOTIATED)
    return seeds


DICT_TOKENS = ('"', "\\", "\\u0000", "\\ud800", "\\udc00", "NaN", "Infinity", "1e999", "-0", "4294967296",
               "18446744073709551616", "true", "false", "null", "[", "{", "}", "]", ":", ",",
               "00000000-0000-0000-0000-000000000000")


def dictionary(seeds: dict[str, bytes]) -> bytes:
    """libFuzzer's -dict: the JSON keys and string values of the seeds, and JSON's odd corners."""
    import re
    strings = set(DICT_TOKENS)
    for data in seeds.values():
        for text in re.findall(rb'\\?"([A-Za-z][A-Za-z0-9_.]{1,40})\\?"', data):
            strings.add(text.decode())
            strings.add(f'"{text.decode()}"')
    lines = []
    for token in sorted(strings):
        escaped = "".join(c if c.isalnum() or c in "-_.:,[]{}" else f"\\x{ord(c):02x}" for c in token)
        lines.append(f'"{escaped}"')
    return ("\n".join(lines) + "\n").encode()


def write_corpus(directory: str = CORPUS_DIR) -> int:
    """The seed inputs, one file each, and the dictionary."""
    os.makedirs(directory, exist_ok=True)
    seeds = seed_inputs()
    with open(DICT_PATH, "wb") as f:
        f.write(dictionary(seeds))
    for name in os.listdir(directory):
        if name not in seeds:
            os.unlink(os.path.join(directory, name))
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return len(seeds)


# --- running --------------------------------------------------------------------------------
def replay(paths: list[str]) -> int:
    _import_targets()
    target = Target(budget=0, artifacts=None)
    for path in paths:
        with open(path, "rb") as f:
            target(f.read())
    print(target.summary())
    return 1 if target.stats.violations else 0


def fuzz(frames: int, seed: int, work: str, libfuzzer_args: list[str]) -> None:
    """Never returns: the process ends once `frames` frames were checked (exit 1 on any
    violation), or when libFuzzer stops it (a crash, a timeout: no summary line then)."""
    import atheris
    with atheris.instrument_imports(include=["gcs.protocol", "gcs.storage.settings"]):
        _import_targets()
    corpus = os.path.join(work, "corpus")  # what libFuzzer adds; the checked-in seeds stay as they are
    os.makedirs(corpus, exist_ok=True)

    def done(target: Target) -> None:
        print(target.summary(), flush=True)
        for error in target.first_errors:
            print(error, flush=True)
        os._exit(1 if target.stats.violations else 0)

    artifacts = os.path.join(work, "artifacts")
    os.makedirs(artifacts, exist_ok=True)
    target = Target(frames, artifacts, done)
    argv = [sys.argv[0], f"-seed={seed}", f"-artifact_prefix={artifacts}/", f"-timeout={TIMEOUT}",
            f"-max_len={MAX_LEN}", "-rss_limit_mb=2048",
            "-len_control=100",  # small inputs first (a custom mutator turns it off by default)
            f"-dict={DICT_PATH}", "-print_final_stats=0", *libfuzzer_args, corpus, CORPUS_DIR]
    atheris.Setup(argv, target, custom_mutator=JsonMutator(lambda data, size: atheris.Mutate(data, size)))
    atheris.Fuzz()


def main() -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="replay these inputs instead of fuzzing")
    parser.add_argument("--frames", type=int, default=int(os.environ.get(FRAMES_ENV) or 100000))
    parser.add_argument("--seed", type=int, default=int(os.environ.get(SEED_ENV) or 0) or None)
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "fuzz"),
                        help="the grown corpus and the artifacts (default build/fuzz)")
    parser.add_argument("--write-corpus", action="store_true", help="regenerate tests/fuzz_corpus")
    args, rest = parser.parse_known_args()
    if args.write_corpus:
        print(f"{write_corpus()} seed inputs in {CORPUS_DIR}")
        return 0
    if args.inputs:
        return replay(args.inputs)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") or 1
    print(f"fuzz_protocol: seed={seed} budget={args.frames} frames (replay: {SEED_ENV}={seed})", flush=True)
    fuzz(args.frames, seed, args.work, rest)
    return 2  # not reached


if __name__ == "__main__":
    sys.exit(main())
