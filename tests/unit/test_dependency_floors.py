"""What castore needs of its dependencies' oldest allowed releases (pyproject.toml's floors).

pip installs the newest releases, so CI never meets a floor. Each test here names the
behaviour a floor was raised for (found by installing the lowest releases the floors
allowed and running the suite), so that an older release in an environment fails here
with its reason instead of deep in a store test, or, for a user, at run time.
"""

import msgspec
import pytest


def test_msgspec_sorts_keys_and_calls_invalid_utf8_a_decode_error():
    # msgspec 0.18.0 to 0.18.5 have no Encoder(order=...): castore did not import.
    # 0.18.6 to 0.22.0 raised UnicodeDecodeError for a string that is not UTF-8, which
    # castore catches as msgspec.DecodeError: a JSON API request whose key held byte 0xff
    # was a 500 and a traceback in the server's log instead of a 400. pyproject: >=0.23.
    assert msgspec.json.Encoder(order="sorted").encode({"b": 1, "a": 2}) == b'{"a":2,"b":1}'
    for body in (b'"\xff"', b'{"key":"\xff"}', b'"\xed\xa0\x80"'):
        with pytest.raises(msgspec.DecodeError):
            msgspec.json.decode(body)


def test_jsonpatch_applies_an_operation_atomically_on_request():
    # jsonpatch 1.33 to 1.41 have no apply_patch(..., atomic=...): every castore patch was
    # refused, "JSON Patch does not apply: operation 1 (...): apply_patch() got an
    # unexpected keyword argument 'atomic'". pyproject: >=1.42.
    import jsonpatch

    document = {"a": {"b": 1}}
    with pytest.raises(jsonpatch.JsonPatchException):
        jsonpatch.apply_patch(
            document, [{"op": "move", "from": "/a", "path": "/a/b/c"}], in_place=True, atomic=True
        )
    assert document == {"a": {"b": 1}}
    patched = jsonpatch.apply_patch(
        document, [{"op": "add", "path": "/c", "value": 2}], atomic=False
    )
    assert patched == {"a": {"b": 1}, "c": 2}
