"""The coverage-guided fuzzer of the sans-IO bridge core (tests/fuzz_protocol.py) on a CI
budget, and its checker shown to catch what it is there to catch.

PYGCS_FUZZ_PROTOCOL_FRAMES=<n> sets the budget, PYGCS_FUZZ_SEED=<s> replays a run; a failing
run leaves its violating inputs under the test's tmp dir (replay: python3 tests/fuzz_protocol.py FILE).
"""
import json
import os
import re
import subprocess
import sys

import pytest

import fuzz_protocol as fp
from gcs.protocol import hresult as hr
from gcs.protocol.ids import REQUEST_IDS, RequestId

# CI: 10^5 fuzzed frames in all, test_fuzz_bridge.py's 4000 + 1500 against agents included.
CI_FRAMES = 100_000 - 4000 - 1500
SUMMARY = re.compile(r"^fuzz_protocol: frames=(\d+) inputs=(\d+) crashes=(\d+) .* rate=(\d+) frames/s", re.M)

try:
    import atheris  # noqa: F401
    HAVE_ATHERIS = True
except ImportError:  # requirements.txt pins it where PyPI has a wheel (CPython 3.11-3.13 on x86_64)
    HAVE_ATHERIS = False


def corpus_files() -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(fp.CORPUS_DIR)):
        with open(os.path.join(fp.CORPUS_DIR, name), "rb") as f:
            out[name] = f.read()
    return out


def run_target(inputs, artifacts=None):
    fp._import_targets()
    target = fp.Target(budget=0, artifacts=artifacts)
    for data in inputs:
        target(data)
    return target


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris has no wheel for this interpreter/machine")
def test_coverage_guided_fuzzing_on_the_ci_budget(tmp_path):
    frames = int(os.environ.get(fp.FRAMES_ENV) or CI_FRAMES)
    seed = int(os.environ.get(fp.SEED_ENV) or 0) or int.from_bytes(os.urandom(4), "little") or 1
    r = subprocess.run([sys.executable, os.path.join(fp.ROOT, "tests", "fuzz_protocol.py"), "--frames", str(frames),
                        "--seed", str(seed), "--work", str(tmp_path)], capture_output=True, text=True,
                       timeout=600, cwd=fp.ROOT)
    found = SUMMARY.search(r.stdout)
    detail = f"seed {seed} (replay: {fp.SEED_ENV}={seed})\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert found, f"no summary: libFuzzer stopped the run (a crash or timeout)\n{detail}"
    print(found.group(0))
    assert r.returncode == 0 and int(found.group(3)) == 0, detail
    assert int(found.group(1)) >= frames, detail
    assert os.listdir(tmp_path / "artifacts") == [], detail
    assert "cov:" in r.stderr, detail  # the code under test was instrumented (libFuzzer saw coverage)


def test_the_seed_corpus_passes_and_covers_every_request_type():
    files = corpus_files()
    target = run_target(files.values())
    assert target.stats.violations == 0, target.first_errors
    payload_seeds = [d for d in files.values() if not d[0] & fp.RAW]
    assert {int.from_bytes(d[1:5], "little") for d in payload_seeds} == set(REQUEST_IDS)
    outcomes = target.stats.outcomes
    for what in ("parsed", f"notimpl 0x{hr.E_NOTIMPL:08x}", f"rejected 0x{hr.E_INVALIDARG:08x}",
                 "negotiate 0x00000000"):
        assert outcomes.get(what), (what, outcomes)
    assert any(name.startswith("md-") for name in files), "protocol.md's examples"


def test_the_seed_corpus_is_what_the_generator_makes():
    if not os.path.exists(fp.PROTOCOL_MD):
        pytest.skip(f"{fp.PROTOCOL_MD} is not here: the checked-in corpus stands")
    assert corpus_files() == fp.seed_inputs(), "run: .venv/bin/python tests/fuzz_protocol.py --write-corpus"
    with open(fp.DICT_PATH, "rb") as f:
        assert f.read() == fp.dictionary(fp.seed_inputs())


def _valid(ident: int, doc: dict, seq: int = 5, control: int = 0) -> bytes:
    return fp.pack_payloads(ident, seq, [(json.dumps(doc) + "\n").encode()], control)


WAIT = _valid(RequestId.WAIT_FOR_PROCESS, {"ContainerId": "c1", "ProcessId": 4})


def test_the_input_format_frames_payloads_and_feeds_raw_streams_as_they_are():
    data = fp.pack_payloads(RequestId.START, 7, [b"{}", b"[]", b"x"])
    control, stream = fp.unpack_input(data)
    frames, bad, left = fp.split_frames(stream, 1 << 20)
    assert (control, bad, left) == (0, False, 0)
    assert frames == [(RequestId.START, 7, b"{}"), (RequestId.START, 8, b"[]"), (RequestId.START, 9, b"x")]
    raw = fp.pack_raw([(RequestId.START, 1, b"{}")])[:-1]
    assert fp.split_frames(fp.unpack_input(raw)[1], 1 << 20) == ([], False, 17)
    assert fp.split_frames(b"\0" * 16, 1 << 20) == ([], True, 16)  # size 0 < 16: a framing error


# --- the checker catches what it must: each broken behaviour below is a violation -----------
def test_an_unexpected_exception_in_decoding_is_a_violation(monkeypatch):
    import gcs.protocol.messages as messages

    def broken(cls, obj):
        raise TypeError("a decoder bug")
    monkeypatch.setattr(messages.WaitForProcessRequest, "from_obj", classmethod(broken))
    target = run_target([WAIT])
    assert target.stats.violations == 1
    assert f"0x{hr.E_FAIL:08x} not in" in target.first_errors[0]  # the session's catch-all E_FAIL reply


def test_a_second_reply_a_lost_frame_or_a_wrong_seq_is_a_violation(monkeypatch):
    from gcs.protocol.framing import FrameDecoder
    from gcs.protocol.session import BridgeSession
    ok = run_target([WAIT])
    assert ok.stats.violations == 0 and ok.stats.frames == 1

    real_auto_error = BridgeSession._auto_error
    monkeypatch.setattr(BridgeSession, "_auto_error", lambda self, *a: [real_auto_error(self, *a) for _ in "12"])
    assert run_target([_valid(0x10109901, {})]).stats.violations == 1  # two replies to an unknown id
    monkeypatch.undo()

    real_feed = FrameDecoder.feed
    monkeypatch.setattr(FrameDecoder, "feed", lambda self, data: real_feed(self, data)[:-1])
    assert run_target([WAIT]).stats.violations == 1  # a frame that never reached the session
    monkeypatch.undo()

    real_emit = BridgeSession._emit
    monkeypatch.setattr(BridgeSession, "_emit", lambda self, ident, seq, *a: real_emit(self, ident, seq + 1, *a))
    assert run_target([_valid(0x10109901, {})]).stats.violations == 1


def test_an_exception_out_of_the_session_is_a_violation_and_the_input_is_saved(monkeypatch, tmp_path):
    from gcs.protocol.session import BridgeSession

    def explode(self, frame):
        raise KeyError("escaped")
    monkeypatch.setattr(BridgeSession, "_on_frame", explode)
    target = run_target([WAIT], artifacts=str(tmp_path))
    assert target.stats.violations == 1 and "KeyError" in target.first_errors[0]
    saved = list(tmp_path.iterdir())
    assert len(saved) == 1 and saved[0].read_bytes() == WAIT
    r = subprocess.run([sys.executable, os.path.join(fp.ROOT, "tests", "fuzz_protocol.py"), str(saved[0])],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "crashes=0" in r.stdout  # replayed without the fault: it passes


def test_a_slow_input_is_a_violation(monkeypatch):
    monkeypatch.setattr(fp, "HANG_SECONDS", 0.0)
    target = run_target([WAIT])
    assert target.stats.violations == 1 and "took" in target.first_errors[0]


def test_a_framing_error_is_a_clean_drop_and_only_where_the_stream_has_one():
    good = fp.pack_raw([(RequestId.START, 1, b'{"ContainerId":"c"}\n')])
    too_small = b"\x00" * 16  # size 0
    too_big = b"\x01" * 12 + b"\x00" * 4  # size 0x01010101: under the 64 MiB limit, over the 4 KiB one
    target = run_target([good, good + too_small, good + too_big, bytes([fp.RAW | fp.SMALL]) + too_big])
    assert target.stats.violations == 0, target.first_errors
    assert target.stats.outcomes.get("drop") == 2  # good + too_big is a partial frame, waited for


def test_the_json_aware_mutator_keeps_the_input_format_and_size():
    fallback = []
    mutator = fp.JsonMutator(lambda data, size: fallback.append(data) or data[:size])
    raw = fp.pack_raw([(RequestId.START, 1, b"{}")])
    assert mutator(raw, 100, 1) == raw and fallback == [raw]  # raw streams: libFuzzer's own mutations
    changed = 0
    for seed in range(200):
        out = mutator(WAIT, 4096, seed)
        assert len(out) <= 4096 and out[:13] == WAIT[:13]
        changed += out != WAIT
    assert 20 < changed < 200 and len(fallback) > 100  # a share of JSON-aware mutations, the rest libFuzzer's
