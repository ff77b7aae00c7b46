"""Stored values forged past every checksum but the value's own digest are never served.

Found by mutation testing of castore/valuecodec.py and castore/codec.py:
unpacking without re-hashing the value, and the command line's check of
stored bytes without its UTF-8 test, passed every test (each forgery the
tests made also changed a frame's length or its codec, which other checks
caught). The oracle: the value as written, or damage (exit 5), never
another value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from castore import CorruptionError, Store
from castore.file.frames import encode_frame, scan_frames
from castore.file.records import KIND_BLOB
from tests.helpers import Cli, log_path
from tests.integration.test_stored_not_json import _forge

pytestmark = pytest.mark.integration


def test_a_raw_value_rewritten_in_place_under_its_digest_is_damage(tmp_path: Path) -> None:
    """The same length, the digest field kept, the frame checksum made to match."""
    root = tmp_path / "store"
    store = Store(root, dag="d")
    store.set("k", {"a": 1})
    store.close()
    path = Path(log_path(root, "dag", "d", "k"))
    data = path.read_bytes()
    blob = next(f for f in scan_frames(data) if f.kind == KIND_BLOB)
    assert blob.payload[32:] == b'\x00{"a":1}'  # raw codec: the JSON itself
    forged = encode_frame(KIND_BLOB, blob.payload[:33] + b'{"a":2}')
    assert len(forged) == blob.end - blob.start
    path.write_bytes(data[: blob.start] + forged + data[blob.end :])
    store = Store(root, dag="d")
    with pytest.raises(CorruptionError):
        store.get("k")
    assert not store.check().ok
    store.close()
    proc = Cli(tmp_path, str(root), dag="d").run("get", "k")
    assert (proc.returncode, proc.stdout) == (5, b""), proc


def test_the_cli_answers_damage_for_a_stored_value_that_is_not_utf8(
    tmp_path: Path, store_location: str
) -> None:
    cli = Cli(tmp_path, store_location, dag="d")
    cli.ok("set", "k", '"a"')
    _forge(store_location, b'"\xff"')  # JSON's structure, not its text
    for args in (("get", "k"), ("get", "k", "--version", "2"), ("export",)):
        proc = cli.run(*args)
        assert proc.returncode == 5, (args, proc)
        assert b"not JSON" in proc.stderr, (args, proc)
    with pytest.raises(CorruptionError, match="not JSON"):
        Store(store_location, dag="d").get("k")  # the library's answer: the oracle
