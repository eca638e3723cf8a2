import json
import random
import sys

import pytest

from gcs.protocol import jsoncodec
from gcs.protocol.fields import Obj
from gcs.protocol.hresult import INVALID_JSON, GcsError


def obj(text):
    return Obj.parse(text, "test")


def test_keys_match_case_insensitively_exact_first():
    o = obj('{"processid": 5, "ProcessId": 7, "TIMEOUTINMS": 9}')
    assert o.uint("ProcessId") == 7
    assert o.uint("TimeoutInMs") == 9


def test_missing_and_null_are_zero_values():
    o = obj('{"A": null}')
    assert (o.str("A"), o.uint("A"), o.bool("A"), o.obj("A"), o.str_list("B"), o.str_map("C")) == ("", 0, False, None, [], {})


@pytest.mark.parametrize("text,getter", [
    ('{"X": "5"}', "uint"), ('{"X": 1.0}', "uint"), ('{"X": -1}', "uint"), ('{"X": 4294967296}', "uint"),
    ('{"X": true}', "uint"), ('{"X": 1}', "bool"), ('{"X": 5}', "str"), ('{"X": [1]}', "str_list"),
    ('{"X": {"a": 1}}', "str_map"), ('{"X": []}', "obj"), ('{"X": {}}', "json_string"),
    ('{"X": ""}', "json_string"), ('{"X": "[1]"}', "json_string"),
])
def test_wrong_types_are_invalid_json(text, getter):
    with pytest.raises(GcsError) as info:
        getattr(obj(text), getter)("X")
    assert info.value.hresult == INVALID_JSON


def test_json_in_string():
    inner = obj('{"P": "{\\"CommandArgs\\":[\\"ls\\"]}"}').json_string("P")
    assert inner.str_list("commandargs") == ["ls"]


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b"{", b"", b"[1,2]", b"nul", b'{"a":1}garbage'])
def test_undecodable_payloads(raw):
    with pytest.raises(GcsError) as info:
        Obj.parse(raw, "test")
    assert info.value.hresult == INVALID_JSON


def test_trailing_newline_accepted():
    assert obj(b'{"A": "b"}\n').str("A") == "b"


# --- nesting depth: refused deterministically, never by the stack --------------------------
LIMIT = jsoncodec.MAX_DEPTH


def nested(depth, kind="["):
    return "[" * depth + "]" * depth if kind == "[" else '{"a":' * depth + "1" + "}" * depth


def depth_refused(text):
    with pytest.raises(GcsError) as info:
        Obj.parse(text, "test")
    assert info.value.hresult == INVALID_JSON
    assert f"maximum nesting depth of {LIMIT}" in info.value.message
    return info.value


@pytest.mark.parametrize("depth", [LIMIT + 1, 1000, 5000, 100_000])
@pytest.mark.parametrize("kind", ["[", "{"])
def test_deep_nesting_is_invalid_json(depth, kind):
    depth_refused('{"X":' + nested(depth - 1, kind) + "}")


def test_nesting_up_to_the_limit_is_accepted():
    assert obj('{"X":' + nested(LIMIT - 1) + "}").has("X")
    assert obj('{"X":' + nested(LIMIT - 1, "{") + "}").obj("X") is not None


def test_deep_nesting_inside_a_json_in_string_field():
    outer = obj('{"P": ' + jsoncodec.dumps('{"A":' + nested(3000) + "}") + "}")
    with pytest.raises(GcsError) as info:
        outer.json_string("P")
    assert info.value.hresult == INVALID_JSON
    assert "test.P" in info.value.message and f"maximum nesting depth of {LIMIT}" in info.value.message


def test_brackets_inside_strings_do_not_count():
    assert obj('{"A": "' + "[{" * 5000 + '"}').str("A") == "[{" * 5000
    # an escaped quote keeps the string open; an escaped backslash does not
    assert obj('{"A": "\\"' + "[" * 500 + '", "B": 1}').uint("B") == 1
    depth_refused('{"A": "\\\\", "B": ' + nested(LIMIT + 5) + "}")


def test_many_shallow_brackets_are_accepted():
    text = '{"A": [' + ",".join(["[1, {}]"] * 2000) + "]}"
    assert len(obj(text).raw("A")) == 2000


@pytest.mark.parametrize("stack_room", [LIMIT + 40, 300])
def test_the_limit_does_not_depend_on_the_stack(stack_room):
    """At any stack depth that leaves room for MAX_DEPTH levels, the answer is the same."""
    def at_depth(n, fn):
        return at_depth(n - 1, fn) if n else fn()

    frames = sys.getrecursionlimit() - stack_room - len(_stack())
    at_depth(frames, lambda: obj('{"X":' + nested(LIMIT - 1) + "}"))
    at_depth(frames, lambda: depth_refused('{"X":' + nested(4000) + "}"))


def _stack():
    frames, f = [], sys._getframe()
    while f is not None:
        frames.append(f)
        f = f.f_back
    return frames


def test_common_requests_never_walk(monkeypatch):
    """The fast path: a request with fewer brackets than the limit pays no Python walk."""
    def walk(*_):
        raise AssertionError("check_depth ran")
    monkeypatch.setattr(jsoncodec, "check_depth", walk)
    spec = {"process": {"args": ["sh", "-c", "true"], "env": ["A=1"] * 20}, "mounts": [{"options": ["ro"]}] * 30}
    assert obj(jsoncodec.dumps({"ContainerConfig": jsoncodec.dumps(spec)})).json_string("ContainerConfig") is not None


def test_recursion_error_is_invalid_json(monkeypatch):
    def scan(*_):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(jsoncodec, "_scan", scan)
    with pytest.raises(GcsError) as info:
        obj("{}")
    assert info.value.hresult == INVALID_JSON


def _reference_depth(text):
    """Character by character, as the scanner sees structure."""
    depth = deepest = 0
    inside = escaped = False
    for ch in text:
        if inside:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                inside = False
        elif ch == '"':
            inside = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def test_check_depth_agrees_with_a_character_walk():
    rng = random.Random(1234)

    def value(levels):
        r = rng.random()
        if levels <= 0 or r < 0.3:  # strings full of brackets, quotes and backslashes
            return "".join(rng.choice('[]{}"\\ab\n\u00e9') for _ in range(rng.randint(0, 6)))
        if r < 0.65:
            return [value(levels - rng.randint(1, 2)) for _ in range(rng.randint(0, 3))]
        return {"".join(rng.choice('[]{}"\\k') for _ in range(rng.randint(0, 3))): value(levels - 1)
                for _ in range(rng.randint(0, 3))}

    for _ in range(3000):
        text = json.dumps(value(rng.randint(0, 14)), ensure_ascii=rng.random() < 0.5)
        depth = _reference_depth(text)
        for limit in (0, 1, 3, 5, 8, 12):
            if depth > limit:
                with pytest.raises(ValueError):
                    jsoncodec.check_depth(text, limit)
            else:
                jsoncodec.check_depth(text, limit)
