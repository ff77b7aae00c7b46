"""``castore upgrade``: which format 1 lines are records, and what it keeps and leaves.

Found by mutation testing of castore/file/upgrade.py: each test kills a
change every other upgrade test let pass (the last of a key's lines taken
over its highest; a version 0 read as a record; the original GRAVES not
kept in quarantine; a current store's damaged GRAVES converted again). The
oracle: the docs (FORMAT.md §10: each key continues above its highest
grave; the original kept; a store of the current format left as it is).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from castore import Store
from castore.backends import upgrade
from tests.helpers import ns_dir, snapshot
from tests.integration.test_upgrade import DAG, format_1_store, next_versions

pytestmark = pytest.mark.integration


def _line(key: str, version: int | bytes) -> bytes:
    text = version if isinstance(version, bytes) else b"%d" % version
    return b"%s %s\n" % (key.encode().hex().encode(), text)


def test_a_keys_highest_grave_wins_over_a_later_lower_line(tmp_path: Path) -> None:
    root = tmp_path / "s"
    format_1_store(root, _line("gone", 7) + _line("gone", 3) + _line("x", 3) + _line("y", 12))
    report = upgrade(str(root))
    assert report.graves_damaged == []
    assert next_versions(root)["gone"] == 8  # never 4: versions 4 to 7 were given


def test_a_version_0_is_damage_never_a_record(tmp_path: Path) -> None:
    """No grave holds 0 (versions start at 1): a line reading so lost its digits."""
    root = tmp_path / "s"
    graves = format_1_store(root, _line("x", 3) + _line("y", 12) + _line("gone", b"0"))
    report = upgrade(str(root))
    assert report.graves_damaged == [os.path.relpath(graves, root)]
    assert not Store(root).check().ok


def test_the_original_graves_is_kept_in_quarantine(tmp_path: Path) -> None:
    root = tmp_path / "s"
    graves = format_1_store(root)
    original = graves.read_bytes()
    assert upgrade(str(root)).graves_converted == 1
    kept = list((root / "quarantine").rglob("GRAVES"))
    assert [p.read_bytes() for p in kept] == [original]


def test_a_current_stores_damaged_graves_is_left_to_check(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = Store(root, dag=DAG)
    store.set("a", 1)
    store.delete("a")
    store.compact(keep_within_seconds=0, prefix="a")
    store.close()
    graves = Path(ns_dir(root, "dag", DAG)) / "GRAVES"
    data = bytearray(graves.read_bytes())
    data[len(data) // 2] ^= 0x01  # damage check --repair handles (twin-covered)
    graves.write_bytes(bytes(data))
    before = snapshot(root)
    report = upgrade(str(root))
    assert (report.from_version, report.graves_converted) == (report.to_version, 0)
    assert snapshot(root) == before
