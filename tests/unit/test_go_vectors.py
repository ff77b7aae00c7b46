"""castore normalizes and hashes as Dagu does: answers made by real Go (tools/go_vectors.py).

``tests/data/go_json_vectors.jsonl`` holds JSON texts (numbers kept verbatim,
every escape, invalid UTF-8, lone surrogates, duplicate keys, key order,
whitespace, nesting at 10,000) and what Dagu's pipeline on Go's own
``encoding/json`` made of them; ``go_float_vectors.jsonl`` float64s and what
Go's ``json.Marshal`` writes for them (a YAML float in a step). Every path
that normalizes is held to them: the codec, its exact (pure Python) path,
the CLI's quick set, and the library's ``set``.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from castore import Store, codec, stdjson
from castore.errors import InvalidValueError, ValueTooLargeError

DATA = Path(__file__).resolve().parent.parent / "data"


def _rows(name: str) -> list[dict[str, Any]]:
    with open(DATA / name, encoding="ascii") as fh:
        return [json.loads(line) for line in fh]


JSON_ROWS = _rows("go_json_vectors.jsonl")
FLOAT_ROWS = _rows("go_float_vectors.jsonl")


def test_the_vectors_cover_what_they_claim():
    """The files are not empty or one-sided (a test over nothing passes)."""
    assert len(JSON_ROWS) >= 700
    assert sum(r["ok"] for r in JSON_ROWS) >= 400
    kinds = {r["kind"] for r in JSON_ROWS if not r["ok"]}
    assert kinds == {"invalid"}  # the 1 MiB cases live in test_codec (their inputs are large)
    assert len(FLOAT_ROWS) >= 3000
    written = {r["json"] for r in FLOAT_ROWS if r["ok"]}
    assert {"-0", "0", "1e+21", "100000000000000000000", "1e-7", "0.000001", "5e-324"} <= written


@pytest.mark.parametrize("row", JSON_ROWS, ids=lambda r: r["input_b64"][:24])
def test_json_text_normalizes_as_go_does(row):
    raw = base64.b64decode(row["input_b64"])
    if not row["ok"]:
        with pytest.raises(InvalidValueError) as caught:
            codec.normalize_json(raw)
        assert not isinstance(caught.value, ValueTooLargeError)
        assert stdjson.plain_normalized(raw) is None  # the quick set leaves it to the codec
        return
    expected = base64.b64decode(row["normalized_b64"])
    got = codec.normalize_json(raw)
    assert got == expected
    assert codec.hexdigest(got) == row["sha256"]
    assert codec.normalize_json(expected) == expected  # idempotent, as Dagu applies it again
    quick = stdjson.plain_normalized(raw)
    assert quick is None or quick == expected
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert codec.normalize_json(text) == expected


def test_the_library_stores_gos_bytes_and_hash(tmp_path):
    good = [r for r in JSON_ROWS if r["ok"]][::7]
    with Store(tmp_path / "s", dag="d", durable=False) as store:
        for number, row in enumerate(good):
            raw = base64.b64decode(row["input_b64"])  # bytes: JSON text, as the CLI gives it
            put = store.set(f"k{number}", raw)
            assert put.hash == row["sha256"], raw
            assert store.get(f"k{number}").value_json == base64.b64decode(row["normalized_b64"])


@pytest.mark.parametrize("chunk", range(8))
def test_python_floats_are_written_as_go_marshals_a_float64(chunk):
    for row in FLOAT_ROWS[chunk::8]:
        value = struct.unpack(">d", bytes.fromhex(row["bits"]))[0]
        if not row["ok"]:  # NaN and the infinities: Go refuses them, so does castore
            with pytest.raises(InvalidValueError):
                codec.normalize_python(value)
            continue
        text = row["json"].encode()
        assert codec.normalize_python(value) == text, row
        assert codec.normalize_python([value, {"k": value}]) == b'[%s,{"k":%s}]' % (text, text)
