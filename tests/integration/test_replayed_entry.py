"""An older entry's bytes copied to the end of a log are never read as the key's state.

Found by a review (left then as a known limit): a byte copy of an older intact
``B``+``E`` pair appended to a log read as that older version (``get``
answered version 1 after version 3), ``check`` reported "version 1 after 3"
without a repair, and the next ``set`` gave version 2 again. castore never
appends a version at or below the one before it, so such an entry is damage:
every read of the newest version and every write refuses it
(``CorruptionError``, CLI exit 5), on the library's path, a long-lived
handle's and the CLI's quick one; ``check --repair`` drops it (the original
bytes kept in quarantine), after which every answer equals the one an
undamaged copy of the store gives.
"""

from __future__ import annotations

import base64
import functools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from castore import CastoreError, CorruptionError, Store
from castore.file.records import KIND_ENTRY, decode_entry
from tests.helpers import Cli, frames_of, log_path

pytestmark = pytest.mark.integration


def _big(seed: int) -> str:
    """A value whose blob frame is longer than one tail read (incompressible)."""
    return base64.b64encode(random.Random(seed).randbytes(15_000)).decode()


def _write(root: Path, shape: str) -> None:
    s = Store(root, dag="d")
    if shape == "big":
        for version in range(1, 4):
            s.set("a", {"v": _big(version)})
    else:
        for version in range(1, 4):
            s.set("a", {"v": version})
        if shape == "rollback":
            s.rollback("a", to_version=1)  # version 4: a lone entry pointing at version 1's blob
            s.set("a", {"v": 5})
    s.set("b", {"b": 1})
    if shape == "indexed":
        s.history("a")  # a reader builds the version index


def _replay(root: Path, shape: str) -> None:
    """Append a byte copy of an older version's frames (its blob's too, when adjacent)."""
    path = log_path(root, "dag", "d", "a")
    frames, _ = frames_of(path)
    data = Path(path).read_bytes()
    entries = [f for f in frames if f.kind == KIND_ENTRY]
    old = entries[3] if shape == "rollback" else entries[0]
    start = old.start
    loc = decode_entry(old.payload).blob
    if loc is not None and not loc.log and loc.offset + loc.length == old.start:
        start = loc.offset  # the B frame written with it
    copy = data[start : old.end]
    if shape == "blobs":  # its blob frame five times over (a review: two were passed, not three)
        copy = data[start : old.start] * 5 + data[old.start : old.end]
    with open(path, "ab") as f:
        f.write(copy)


SHAPES = ["small", "indexed", "big", "rollback", "blobs"]


@pytest.fixture(params=SHAPES)
def replayed(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path, str]:
    shape = request.param
    root, twin = tmp_path / "store", tmp_path / "twin"
    for where in (root, twin):
        _write(where, shape)
    _replay(root, shape)
    return root, twin, shape


def _answer(call: Callable[[], Any]) -> Any:
    try:
        value = call()
    except CorruptionError:
        return "corrupt"
    except CastoreError as exc:
        return type(exc).__name__
    if hasattr(value, "skipped"):  # a list: a key it could not read is named apart
        return [(e.key, e.version, e.hash) for e in value.entries], value.skipped
    if hasattr(value, "entries"):
        return [(e.version, e.operation, e.hash) for e in value.entries]
    return (value.found, value.version, value.hash, value.value)


def _answers(root: Path) -> dict[str, Any]:
    s = Store(root, dag="d")
    out = {
        "get": _answer(lambda: s.get("a")),
        "history": _answer(lambda: s.history("a")),
        "get b": _answer(lambda: s.get("b")),
        "list": _answer(s.list),
    }
    for version in range(1, 6):
        out[f"get version {version}"] = _answer(functools.partial(s.get, "a", version=version))
    return out


def test_reads_and_writes_refuse_the_replayed_entry(replayed: tuple[Path, Path, str]) -> None:
    root, twin, _ = replayed
    store = Store(root, dag="d")
    with pytest.raises(CorruptionError, match=r"ends with version \d+ after version \d+"):
        store.get("a")
    path = log_path(root, "dag", "d", "a")
    before = Path(path).read_bytes()
    for write in (lambda: store.set("a", {"v": 9}), lambda: store.delete("a")):
        with pytest.raises(CorruptionError, match="out of order"):
            write()
    assert Path(path).read_bytes() == before  # nothing was written
    damaged, pristine = _answers(root), _answers(twin)
    listed, _ = pristine.pop("list")
    assert damaged.pop("list") == ([e for e in listed if e[0] != "a"], ["a"])
    for call, answer in damaged.items():  # the undamaged copy's answer, or a refusal
        assert answer in (pristine[call], "corrupt"), call
    assert damaged["get b"] == pristine["get b"]


def test_a_long_lived_handle_refuses_it(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(root, dag="d")
    _write(root, "small")
    store.set("a", {"v": 3})  # version 4, the handle keeps the log and its newest entry
    assert store.get("a").value == {"v": 3}
    _replay(root, "small")
    with pytest.raises(CorruptionError, match="out of order"):
        store.get("a")
    with pytest.raises(CorruptionError, match="out of order"):
        store.set("a", {"v": 5})
    assert Store(root, dag="d").check().ok is False


def test_the_cli_refuses_it(replayed: tuple[Path, Path, str]) -> None:
    root, _, _ = replayed
    cli = Cli(root.parent, root, dag="d")
    for args in (("get", "a"), ("set", "a", "9"), ("incr", "a")):
        proc = cli.run(*args)
        assert proc.returncode == 5, (args, proc)
        assert b"out of order" in proc.stderr, proc.stderr
        assert proc.stdout == b""


def test_check_repairs_it_to_the_undamaged_answers(replayed: tuple[Path, Path, str]) -> None:
    root, twin, _ = replayed
    store = Store(root, dag="d")
    report = store.check()
    assert not report.ok
    assert any("out of order" in f.problem for f in report.findings), report.findings
    repaired = store.check(repair=True)
    assert all(f.repaired for f in repaired.findings if f.severity == "error"), repaired.findings
    assert Store(root, dag="d").check().ok
    kept = list((root / "quarantine").rglob("*.log"))
    assert len(kept) == 1
    assert _answers(root) == _answers(twin)
    # The next version is the undamaged copy's: no version is given twice.
    assert (
        Store(root, dag="d").set("a", {"v": 9}).version
        == Store(twin, dag="d").set("a", {"v": 9}).version
    )
    assert _answers(root) == _answers(twin)


def test_an_entry_planted_between_two_is_dropped_not_the_real_ones(tmp_path: Path) -> None:
    """Of two orders, the repair keeps the longest increasing run of versions."""
    root, twin = tmp_path / "store", tmp_path / "twin"
    for where in (root, twin):
        s = Store(where, dag="d")
        for version in range(1, 4):
            s.set("a", {"v": version})
    s = Store(root, dag="d")
    s.set("a", {"v": 4})
    path = log_path(root, "dag", "d", "a")
    frames, _ = frames_of(path)
    data = Path(path).read_bytes()
    entries = [f for f in frames if f.kind == KIND_ENTRY]
    starts = [decode_entry(f.payload).blob for f in entries]
    assert all(loc is not None for loc in starts)
    second, fourth = starts[1].offset, starts[3].offset  # type: ignore[union-attr]
    # 1, 4, 2, 3: version 4's frames moved between versions 1 and 2
    Path(path).write_bytes(data[:second] + data[fourth:] + data[second:fourth])
    problems = [f.problem for f in s.check().findings]
    assert any("version 4 at offset" in p and "out of order" in p for p in problems), problems
    Store(root, dag="d").check(repair=True)
    assert _answers(root) == _answers(twin)
