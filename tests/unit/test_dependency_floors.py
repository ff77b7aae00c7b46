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


def test_psycopg_is_a_release_whose_pipelined_writes_do_not_lose_their_results():
    # psycopg[binary] 3.2.0 cannot be installed (its extra names psycopg-binary 3.2.0.dev1);
    # with 3.2.1 to 3.2.10, 1 to 6 in 60 writes whose audit held 8,192-character fields
    # failed at random, "the write of dag/d/k failed: the last operation didn't produce a
    # result" (or "... records (command status: BEGIN)"); none in 120 with 3.2.11, 3.2.13
    # or 3.3.9. A bug, not a missing feature: the version says it. pyproject: >=3.2.11.
    import psycopg

    release = tuple(int(part) for part in psycopg.__version__.split(".")[:3])
    assert release >= (3, 2, 11), f"psycopg {psycopg.__version__}: castore[postgres] needs 3.2.11"
