"""``castore upgrade`` of format 1 stores that are damaged, hostile or left half-upgraded.

Found by a review (twenty-second session). The oracle of each case is an undamaged
twin: the same format 1 store without the fault, upgraded. A key whose grave the
upgrade could read continues exactly as in the twin; one it could not read never
repeats a version (a write refuses until ``check --repair`` puts a floor above every
version of the namespace's removed keys).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from castore import CorruptionError, Store
from castore.backends import upgrade
from castore.errors import FormatVersionError, UnsafePathError
from castore.file.frames import classify, encode_frame
from castore.file.records import KIND_GRAVE, Grave, encode_record
from castore.file.upgrade import _converted
from tests.helpers import CASTORE_PATH, Cli, ns_dir, snapshot

DAG = "d"
GONE = {"gone": 7, "x": 3, "y": 12}  # removed keys and the last versions their graves hold


def format_1_store(root: Path, graves: bytes | None = None) -> Path:
    """A format 1 store whose namespace ``DAG`` holds ``graves`` (text lines) as GRAVES.

    Its other files are written as castore writes them (a live key ``live``).
    """
    nsdir = Path(ns_dir(root, "dag", DAG))
    store = Store(root, dag=DAG)
    store.set("live", 1)
    store.close()
    (root / "FORMAT").write_text("castore-store 1\n")
    if graves is None:
        graves = b"".join(b"%s %d\n" % (k.encode().hex().encode(), v) for k, v in GONE.items())
    (nsdir / "GRAVES").write_bytes(graves)
    return nsdir / "GRAVES"


def next_versions(root: Path) -> dict[str, int | str]:
    """The version a set of each removed key gets (on a copy), or the error it raises."""
    copy = root.with_name(root.name + "-probe")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root, copy)
    store = Store(copy, dag=DAG)
    out: dict[str, int | str] = {}
    for key in [*GONE, "new"]:
        try:
            out[key] = store.set(key, 1).version
        except CorruptionError as exc:
            out[key] = type(exc).__name__
    store.close()
    return out


def twin(tmp_path: Path) -> dict[str, int | str]:
    root = tmp_path / "twin"
    format_1_store(root)
    upgrade(str(root))
    answers = next_versions(root)
    assert answers == {"gone": 8, "x": 4, "y": 13, "new": 1}
    return answers


@pytest.mark.parametrize(
    "fault",
    [
        b"%s 7\n" % b"gone".hex().encode().replace(b"6", b"\x36\x00", 1),  # a byte inserted
        b"%s 7\n" % b"gone".hex().encode().replace(b"6", b"g", 1),  # not hex
        b"%s 7" % b"gone".hex().encode(),  # the last line unfinished (or its newline lost)
        b"%s %s\n" % (b"gone".hex().encode(), b"9" * 5000),  # a version past any integer
    ],
    ids=["inserted-byte", "not-hex", "unfinished", "5000-digits"],
)
def test_a_line_upgrade_cannot_read_is_carried_over_as_damage(tmp_path: Path, fault: bytes) -> None:
    # Before: the line was dropped (upgrade exit 0, check ok) and `gone` restarted at 1; the
    # 5000-digit version was a ValueError traceback.
    expected = twin(tmp_path)
    root = tmp_path / "s"
    lines = b"".join(
        b"%s %d\n" % (k.encode().hex().encode(), v) for k, v in GONE.items() if k != "gone"
    )
    format_1_store(root, lines + fault)
    report = upgrade(str(root))
    assert report.graves_damaged == [os.path.relpath(ns_dir(root, "dag", DAG), root) + "/GRAVES"]
    assert next_versions(root) == dict.fromkeys(expected, "CorruptionError")  # never a repeat
    assert Store(root).check(repair=True).ok
    after = next_versions(root)  # a floor above every version the lost line may hold
    assert all(isinstance(v, int) and v > max(GONE.values()) for v in after.values()), after


def test_the_cli_names_the_damage_and_exits_1(tmp_path: Path) -> None:
    root = tmp_path / "s"
    format_1_store(root, b"%s 7\n676f6e65 x\n" % b"x".hex().encode())
    out = Cli(tmp_path, root).run("upgrade")
    assert out.returncode == 1
    assert b'"gravesConverted":1,"gravesDamaged":["refs/dag/' in out.stdout
    assert out.stderr.decode().strip() == (
        "castore: 1 GRAVES file(s) held damage, carried over: run `castore check --repair`"
    )


@pytest.mark.parametrize(
    "format_text",
    [
        b"castore-store 0\n",
        b"castore-store 01\n",
        b"castore-store 00001\n",
        b"castore-store 1" + b" " * 80 + b"\n",
        b"castore-store 1 1\n",
        b"castore-store \xd9\xa1\n",  # an Arabic-Indic one
        b"castore-store upgrading\n",
    ],
)
def test_only_a_format_1_marker_is_upgraded(tmp_path: Path, format_text: bytes) -> None:
    # Before: any digits were taken, and the first 64 bytes only: `castore-store 0` (one bit
    # from 2) over a format 2 store rewrote its GRAVES (twin-covered damage) to nothing.
    root = tmp_path / "s"
    format_1_store(root)
    (root / "FORMAT").write_bytes(format_text)
    before = snapshot(root)
    with pytest.raises(FormatVersionError):
        upgrade(str(root))
    assert snapshot(root) == before
    Cli(tmp_path, root).fail(1, "upgrade")
    assert snapshot(root) == before


_KILL_AFTER_FIRST = """
import os, signal, sys
import castore.file.upgrade as u
real, calls = u._converted, []
def converted(data):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(data)
u._converted = converted
u.upgrade(sys.argv[1])
"""


def test_an_interrupted_upgrade_is_refused_until_it_is_finished(tmp_path: Path) -> None:
    # Before: FORMAT said 1 until the end, so a format 1 castore used the half-converted
    # store between a crash and the next run, read no grave from the converted files and
    # gave a removed key version 1 again.
    expected = twin(tmp_path)
    root = tmp_path / "s"
    format_1_store(root)
    (root / "FORMAT").write_text("castore-store 2\n")
    Store(root, dag="other").set("live", 1)
    (root / "FORMAT").write_text("castore-store 1\n")
    (Path(ns_dir(root, "dag", "other")) / "GRAVES").write_bytes(b"%s 5\n" % b"z".hex().encode())
    env = dict(os.environ, PYTHONPATH=CASTORE_PATH)
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_FIRST, str(root)], check=False, env=env
    )
    assert killed.returncode == -9
    words = (root / "FORMAT").read_text().split()
    assert words[0] == "castore-store"
    assert words[1] not in ("1", "2")  # a format 1 castore refuses it
    with pytest.raises(FormatVersionError, match="upgrade of this store was interrupted"):
        Store(root)
    assert upgrade(str(root)).to_version == 2
    assert next_versions(root) == expected
    assert Store(root, dag="other").set("z", 1).version == 6


def test_text_appended_to_a_converted_file_is_read(tmp_path: Path) -> None:
    # An older castore that used a store its interrupted upgrade (before the marker) had
    # half converted appended a text line to a file of G frames; the finishing run dropped
    # the frames or the line.
    expected = twin(tmp_path)
    root = tmp_path / "s"
    frames = b"".join(
        encode_frame(KIND_GRAVE, encode_record(Grave(key=k, version=v))) * 2
        for k, v in GONE.items()
        if k != "y"
    )
    graves = format_1_store(root, frames + b"%s 12\n" % b"y".hex().encode())
    report = upgrade(str(root))
    assert (report.graves_converted, report.graves_damaged) == (1, [])
    scan = classify(graves.read_bytes())
    assert not scan.damage
    assert len(scan.frames) == 6
    assert next_versions(root) == expected


@pytest.mark.parametrize("where", ["namespace", "scope", "refs"])
def test_a_link_or_file_in_place_of_a_store_directory_is_refused(
    tmp_path: Path, where: str
) -> None:
    # Before: skipped, FORMAT set to 2; the namespace's text GRAVES then read as damage.
    root = tmp_path / "s"
    graves = format_1_store(root)
    target = {"namespace": graves.parent, "scope": graves.parent.parent, "refs": root / "refs"}
    place = target[where]
    if where == "refs":
        shutil.rmtree(place)
        place.write_text("not a directory")
    else:
        elsewhere = tmp_path / "elsewhere"
        place.rename(elsewhere)
        place.symlink_to(elsewhere)
    before = snapshot(root)
    with pytest.raises(UnsafePathError, match="nothing was changed"):
        upgrade(str(root))
    assert snapshot(root) == before
    assert (root / "FORMAT").read_text() == "castore-store 1\n"


def test_a_write_refused_by_a_damaged_graves_leaves_no_empty_log(tmp_path: Path) -> None:
    # Found with the review's repros: the failed write left an empty log that check reported.
    root = tmp_path / "s"
    format_1_store(root, b"%s 7\n676f6e65 x\n" % b"x".hex().encode())
    upgrade(str(root))
    before = sorted(os.listdir(ns_dir(root, "dag", DAG)))
    with pytest.raises(CorruptionError, match="GRAVES"):
        Store(root, dag=DAG).set("new", 1)
    assert sorted(os.listdir(ns_dir(root, "dag", DAG))) == before
    assert [f.problem[:40] for f in Store(root).check(repair=False).findings] == [
        "damaged bytes: 12 bytes at offset 0 (las"
    ]


def test_carried_damage_never_reads_as_the_twin_of_the_frame_after_it(tmp_path: Path) -> None:
    # Found by a review of the fix: damage of exactly the size of the intact frame after it
    # read as that frame's damaged twin (covered), so check said ok and the removed key
    # restarted at 1. Every length of damaged line, each before the same frame:
    for n in range(1, 80):
        root = tmp_path / f"s{n}"
        format_1_store(root, b"%s 7\n%s\n" % (b"x".hex().encode(), b"g" * n))
        assert upgrade(str(root)).graves_damaged
        assert next_versions(root)["x"] == "CorruptionError", n
        assert not Store(root).check().ok


def test_a_lost_version_of_19_digits_gets_a_floor_above_it(tmp_path: Path) -> None:
    # Found by a review of the fix: the floor read runs of at most 18 digits.
    root = tmp_path / "s"
    top = 9_000_000_000_000_000_000
    format_1_store(root, b"%s %d\n" % (b"gone".hex().encode().replace(b"6", b"G", 1), top))
    upgrade(str(root))
    assert Store(root).check(repair=True).ok
    assert Store(root, dag=DAG).set("gone", 1).version > top


@pytest.mark.parametrize(
    "graves",
    [
        b"%s 1\n" % b"k".hex().encode(),
        b"%s 1" % b"k".hex().encode(),  # unfinished
        encode_frame(KIND_GRAVE, encode_record(Grave(key="a", version=3))) * 2
        + b"6b 1"
        + encode_frame(KIND_GRAVE, encode_record(Grave(key="b", version=4))) * 2
        + b"000\n",
        b"\xff\x00garbage\n6b 2\n\x17\x00\x00\x00G",
    ],
    ids=["line", "unfinished", "pieces-between-frames", "binary"],
)
def test_a_second_run_reads_a_file_as_the_first_did(tmp_path: Path, graves: bytes) -> None:
    # Found by a review of the fix: pieces of damage joined by the first run ("6b 1" and
    # "000\n") read as a grave "k 1000" in a second run (an upgrade killed before FORMAT 2).
    first = _converted(graves)
    assert first is not None
    again = _converted(first[0])
    assert again is None or again == first


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_something_else_in_place_of_graves_is_refused_before_anything_changes(
    tmp_path: Path, kind: str
) -> None:
    # Found by a review of the fix: refused only after FORMAT said "upgrading", so every
    # castore then refused the store and upgrade failed again the same way.
    root = tmp_path / "s"
    graves = format_1_store(root)
    graves.unlink()
    if kind == "symlink":
        (tmp_path / "outside").write_bytes(b"%s 7\n" % b"gone".hex().encode())
        graves.symlink_to(tmp_path / "outside")
    elif kind == "fifo":
        os.mkfifo(graves)
    else:
        graves.mkdir()
    with pytest.raises(UnsafePathError, match="nothing was changed"):
        upgrade(str(root))
    assert (root / "FORMAT").read_text() == "castore-store 1\n"
