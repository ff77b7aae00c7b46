"""An older entry's bytes copied after damage to the newest: never served, never its bound.

Found by a session's own review of the repair code (both failed before): in a
log of versions 1-6 whose version 6 ``E`` frame was damaged and version 3's
``E`` frame (or its ``B`` and ``E`` frames) copied to the end, a reader
checked only the frame just before the newest entry, found damage there and
took the entry for in order: ``get`` answered version 3 (and the CLI's quick
``get`` too). ``check --repair`` took the copy (left out as out of order) as
the end of the versions the damage might hide: "versions 6-2", so no lost
version was recorded and the next ``set`` gave version 6 again.

A reader now verifies an entry before the newest whose version does not read
as lower, and scans the whole log where the bytes before the newest entry
are not an intact frame; entries out of order bound no damaged range.
Oracle: the undamaged store (its ``get`` answers version 6; its next ``set``
is version 7).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from castore import CorruptionError, Store
from castore.file.frames import classify
from castore.file.records import KIND_BLOB, KIND_ENTRY
from tests.helpers import log_path

pytestmark = pytest.mark.integration


def _store(root: Path, versions: int) -> Path:
    store = Store(str(root), dag="d")
    for i in range(1, versions + 1):
        store.set("k", {"a": i, "pad": "x" * 40})
    return Path(log_path(str(root), "dag", "d", "k"))


def _damage_and_plant(path: Path, damaged: int, offset: int, planted: int, blob: bool) -> None:
    """XOR one byte of version ``damaged``'s E frame; append version ``planted``'s frames."""
    data = bytearray(path.read_bytes())
    frames = classify(bytes(data)).frames
    entries = [f for f in frames if f.kind == KIND_ENTRY]
    copy = entries[planted - 1]
    start = copy.start
    if blob:  # its B frame, right before its E frame
        start = next(f.start for f in frames if f.kind == KIND_BLOB and f.end == copy.start)
    tail = bytes(data[start : copy.end])
    target = entries[damaged - 1]
    data[target.start + offset % (target.end - target.start)] ^= 0xFF
    path.write_bytes(bytes(data) + tail)


def _cli_get(root: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "castore", "--dir", str(root), "--dag", "d", "get", "k"]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("blob", [False, True])
def test_an_older_entry_copied_after_a_damaged_newest_one_is_never_served(
    tmp_path: Path, blob: bool
) -> None:
    """Every byte of version 6's entry frame damaged in turn, with version 3 copied after."""
    clean = tmp_path / "clean"
    path = _store(clean, 6)
    want = Store(str(clean), dag="d").get("k")
    assert (want.version, want.value["a"]) == (6, 6)
    size = next(f for f in classify(path.read_bytes()).frames if f.kind == KIND_ENTRY).end
    served = []
    root = clean
    offsets = [*range(40), *range(40, size, 7)]  # its head and version, then a sample
    for offset in offsets:
        root = tmp_path / f"c{offset}"
        shutil.copytree(clean, root)
        _damage_and_plant(Path(log_path(str(root), "dag", "d", "k")), 6, offset, 3, blob)
        try:
            got = Store(str(root), dag="d").get("k")
        except CorruptionError:
            continue
        if (got.version, got.value) != (want.version, want.value):
            served.append((offset, got.version))
    assert served == []  # observed: version 3 at every offset
    assert root != clean
    result = _cli_get(root)  # the quick get, on the last copy
    assert (result.returncode, result.stdout) == (5, ""), result


@pytest.mark.parametrize("offset", [3, 8, 60, -30])
def test_a_repair_records_the_damaged_newest_version_lost_despite_a_copy_after_it(
    tmp_path: Path, offset: int
) -> None:
    root = tmp_path / "s"
    path = _store(root, 6)
    _damage_and_plant(path, 6, offset, 3, blob=False)
    assert Store(str(root), dag="d").check(repair=True).ok
    store = Store(str(root), dag="d")
    history = store.history("k").entries
    assert [e.version for e in history[1:]] == [5, 4, 3, 2, 1]  # the copy left out
    lost = history[0]  # versions 6 up to what the damaged bytes may have held
    assert (lost.operation, lost.damaged_from or lost.version) == ("damaged", 6), lost
    with pytest.raises(CorruptionError, match=r"versions? 6(-\d+)? lost"):
        store.get("k", version=6)
    assert store.set("k", {"a": 7}).version == lost.version + 1  # observed: 6 again
    assert Store(str(root), dag="d").check().ok


def test_a_damaged_entry_before_an_intact_newest_one_still_serves_the_newest(
    tmp_path: Path,
) -> None:
    """No false alarm: damage before an in-order newest entry leaves it readable."""
    clean = tmp_path / "clean"
    _store(clean, 7)
    want = Store(str(clean), dag="d").get("k")
    wanted = _cli_get(clean)
    root = tmp_path / "s"
    shutil.copytree(clean, root)
    data = bytearray(Path(log_path(str(root), "dag", "d", "k")).read_bytes())
    entries = [f for f in classify(bytes(data)).frames if f.kind == KIND_ENTRY]
    for offset in (3, 8, 60):  # each in its own copy
        copy = bytearray(data)
        copy[entries[5].start + offset] ^= 0xFF
        Path(log_path(str(root), "dag", "d", "k")).write_bytes(bytes(copy))
        got = Store(str(root), dag="d").get("k")
        assert (got.version, got.value) == (want.version, want.value)
        result = _cli_get(root)
        assert (result.returncode, result.stdout) == (0, wanted.stdout), result


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "castore", "--dir", str(root), "--dag", "d", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("versions", "planted", "offset", "xor"),
    [
        (6, 3, 4, 0x01),  # the kind byte: 'E' reads 'D', a kind that was not read
        (12, 5, 16, 0x01),  # "12" reads "02": a version below the copy's, not verified
        (6, 5, 16, 0x02),  # one bit: "6" reads "4"
    ],
)
def test_a_damaged_newest_entry_that_reads_as_in_order_is_verified(
    tmp_path: Path, versions: int, planted: int, offset: int, xor: int
) -> None:
    """One bit of the newest entry's kind or version changed, an older copy after it.

    Found by review: the reader took the damaged frame's kind byte, or the version
    it begins with, unverified, and found the copy in order: ``get`` and the CLI's
    quick ``get`` answered the copy's version, and ``set`` (library and CLI) wrote
    version ``planted + 1`` again. Oracle: the undamaged store (version ``versions``).
    """
    root = tmp_path / "s"
    path = _store(root, versions)
    data = bytearray(path.read_bytes())
    entries = [f for f in classify(bytes(data)).frames if f.kind == KIND_ENTRY]
    assert data[entries[-1].start + 5 : entries[-1].start + 16] == b'{"version":'
    data[entries[-1].start + offset] ^= xor
    path.write_bytes(
        bytes(data) + path.read_bytes()[entries[planted - 1].start : entries[planted - 1].end]
    )
    with pytest.raises(CorruptionError):
        Store(str(root), dag="d").get("k")  # observed: the copy's version
    assert _cli(root, "get", "k").returncode == 5  # observed: 0, the copy's value
    quick = _cli(root, "set", "k", '{"a": 0}')  # observed: version planted + 1
    assert (quick.returncode, quick.stdout) == (5, ""), quick
    with pytest.raises(CorruptionError):
        Store(str(root), dag="d").set("k", {"a": 0})
