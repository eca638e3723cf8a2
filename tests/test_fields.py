import pytest

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
