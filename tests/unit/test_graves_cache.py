"""A handle's copy of ``GRAVES`` follows the file, also when a new one reuses its inode."""

import contextlib
import os
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

import castore.file.graves as graves_module
from castore.file import frames
from castore.file.graves import Graveyard
from castore.file.records import Grave, encode_record, grave_key_bytes
from castore.file.tree import UNCONFINED
from castore.reports import MAX_COUNT


def test_a_handle_sees_appends_of_another(tmp_path):
    path = str(tmp_path / "GRAVES")
    mine, other = Graveyard(path, UNCONFINED), Graveyard(path, UNCONFINED)
    other.bury([("a", 3)])
    assert mine.version_of("a") == 3
    other.bury([("b", 7)])
    assert (mine.version_of("a"), mine.version_of("b")) == (3, 7)


def test_a_new_file_with_the_parsed_files_inode_is_read_whole(tmp_path):
    # A repair renames a new GRAVES over the old one; the new file may get the old
    # one's inode number back. Simulated in place: same inode, at least as long.
    path = str(tmp_path / "GRAVES")
    writer = Graveyard(path, UNCONFINED)
    writer.bury([("a", 3)])
    mine = Graveyard(path, UNCONFINED)
    assert mine.version_of("a") == 3
    other_path = str(tmp_path / "OTHER")
    Graveyard(other_path, UNCONFINED).bury([("a", 9), ("b", 2)])
    with open(other_path, "rb") as fh:
        new = fh.read()
    before = os.stat(path)
    with open(path, "r+b") as fh:
        fh.write(new)
    assert os.stat(path).st_ino == before.st_ino
    assert os.stat(path).st_size >= before.st_size
    assert (mine.version_of("a"), mine.version_of("b")) == (9, 2)


@hypothesis.given(st.text(), st.text(), st.integers(0, MAX_COUNT))
def test_a_keys_record_bytes_end_its_record_and_no_other_keys(key, other, version):
    """The bytes a handle looks for before parsing ``GRAVES`` (FORMAT.md §5)."""
    try:
        record = encode_record(Grave(version=version, key=key))
    except UnicodeEncodeError:  # a lone surrogate: no key castore takes
        assert grave_key_bytes(key) is None
        return
    pattern = grave_key_bytes(key)
    if pattern is None:  # escaped by msgspec, or by other encoders
        plain = record.endswith(b'"' + key.encode("utf-8") + b'"}')
        assert not plain or set(key) & {"\x7f", "\u2028", "\u2029"}
        return
    assert record.endswith(pattern)
    hypothesis.assume(other != key)
    with contextlib.suppress(UnicodeEncodeError):
        assert pattern not in encode_record(Grave(version=version, key=other))


def test_keys_with_escapes_have_no_record_bytes():
    for key in ['q"x', "b\\s", "t\x01", "d\x7f", "l\u2028", "p\u2029"]:
        assert grave_key_bytes(key) is None
    assert grave_key_bytes("caf\u00e9/a b") == ',"key":"caf\u00e9/a b"}'.encode()


def test_a_handle_keeps_the_records_it_read_by_their_bytes_once_the_file_loses_them(tmp_path):
    # Found by a review: a handle that looked a key up by GRAVES' bytes (no record of it)
    # forgot the other records those bytes held once the file lost them (truncated, an
    # older copy put back, removed). Oracle: a handle that parsed at the same look.
    path = str(tmp_path / "GRAVES")
    Graveyard(path, UNCONFINED).bury([("gone", 5)])
    mine, parsed = Graveyard(path, UNCONFINED), Graveyard(path, UNCONFINED)
    assert mine.recorded("live") == 0 == parsed.version_of("live")
    with open(path, "r+b") as fh:
        fh.truncate(0)
    assert mine.recorded("gone") == parsed.recorded("gone") == 5
    assert mine.version_of("gone") == parsed.version_of("gone") == 5


def test_a_grave_buried_after_a_handles_unparsed_lookup_is_found(tmp_path: Path) -> None:
    """The file's bytes are read again when it changed: a grave another handle wrote counts."""
    path = str(tmp_path / "GRAVES")
    Graveyard(path, UNCONFINED).bury([("a", 3)])
    mine, other = Graveyard(path, UNCONFINED), Graveyard(path, UNCONFINED)
    assert mine.recorded("x") == 0  # by the file's bytes: no record of x
    other.bury([("x", 5)])
    assert mine.recorded("x") == 5
    assert Graveyard(path, UNCONFINED).recorded("x") == 5  # the oracle: a new handle


def test_a_handle_parses_graves_at_its_65th_lookup_not_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lookups by the file's bytes: 64 of them, then one parse, then reads on."""
    path = str(tmp_path / "GRAVES")
    Graveyard(path, UNCONFINED).bury([("a", 3)])
    calls: list[int] = []
    real = frames.classify_twinned

    def counted(data: bytes, start: int = 0) -> frames.LogBytes:
        calls.append(len(data))
        return real(data, start)

    monkeypatch.setattr(graves_module, "classify_twinned", counted)
    mine = Graveyard(path, UNCONFINED)
    for i in range(64):  # keys no record names: found so by the file's bytes
        assert mine.recorded(f"k{i}") == 0
    assert calls == []
    assert mine.recorded("k64") == 0  # the 65th: parsed, then read on
    assert len(calls) == 1
    assert (mine.recorded("k65"), mine.recorded("a")) == (0, 3)
    assert len(calls) == 1


def test_a_lone_surrogate_has_no_record_bytes() -> None:
    assert grave_key_bytes("a\ud800") is None
