"""Torn and corrupted files: castore never returns wrong data, check finds it, repair fixes it.

One small store is built once; every case writes a damaged copy of it (a log
truncated at some offset, one bit flipped somewhere, a derived file damaged)
into a fresh directory, then:

1. reads everything (get, get at every version, history, list) and compares
   with the truth recorded while building: a read returns the correct value
   for its version or raises CorruptionError / NotFoundError, never other data;
   a version whose ``E`` frame and ``B`` frame are intact must read exactly;
2. ``check()`` must report damage to a log (derived files may just be rebuilt);
3. ``check(repair=True)``, then ``check()`` must be ok (unless a blob lost its
   only copy: then exactly the versions using it stay reported as unreadable),
   every intact version still reads its exact value, the damaged log's bytes
   are in ``quarantine/``, and the store takes the next write.

The expectations come from an independent parse of the damaged files
(``scan_frames``), not from castore's readers.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import pytest

from castore import CorruptionError, NotFoundError, Store, codec
from castore.file.frames import Frame, classify, encode_frame, scan_frames
from castore.file.records import (
    CODEC_RAW,
    CODEC_ZSTD,
    KIND_BLOB,
    KIND_ENTRY,
    KIND_HEADER,
    decode_blob,
    decode_entry,
    encode_blob,
)
from castore.file.versionindex import highest_recorded
from castore.records import Entry
from castore.transfer import export_lines
from tests.helpers import file_id, keys_path, log_path

pytestmark = pytest.mark.integration

DAG: Final = "corrupt"
REFS_REL: Final = os.path.join("refs", "dag", file_id(DAG))
MAX_REPORTED: Final = 12


def _random_text(size: int, seed: int) -> str:
    rng = random.Random(seed)
    return base64.b64encode(rng.randbytes(size * 3 // 4)).decode("ascii")


ZTEXT: Final = {"text": "compressible " * 30}  # > 128 bytes: stored with zstd
RAND: Final = {"r": _random_text(300, 5)}  # random text: zstd gains little
ZLAST: Final = {"last": "zstd " * 40}
ONE: Final = {"one": "x" * 200}
# key -> values in order (None = delete). k v4 and other v1 share k v2's ZTEXT blob
# (values of 256 bytes or more are deduplicated); no digest has two blob frames.
HISTORY: Final[dict[str, list[Any]]] = {
    "k": [{"small": 1}, ZTEXT, None, ZTEXT, RAND, ZLAST],
    "other": [ZTEXT, {"o": 2}],
    "one": [ONE],
}
KEYS: Final = sorted(HISTORY)


@dataclass
class Truth:
    """What was written: key -> version -> (hash, normalized value or None)."""

    versions: dict[str, dict[int, tuple[str, bytes | None]]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> bytes

    @property
    def keys(self) -> list[str]:
        return sorted(self.versions)

    def log_rel(self, key: str) -> str:
        return os.path.join(REFS_REL, file_id(key) + ".log")


def open_store(root: str) -> Store:
    return Store(root, dag=DAG, durable=False)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def read_tree(root: str) -> dict[str, bytes]:
    out = {}
    for base, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def write_tree(root: str, files: dict[str, bytes]) -> None:
    """Make ``root`` hold exactly ``files`` (rewriting only what differs: fast).

    Directories left empty go too: a repair's quarantine makes new ones per case,
    and each walk and glob would cost more with every case before.
    """
    for base, dirs, names in os.walk(root, topdown=False):
        for name in names:
            path = os.path.join(base, name)
            if os.path.relpath(path, root) not in files:
                os.unlink(path)
        for name in dirs:
            with contextlib.suppress(OSError):  # not empty: it holds a file kept
                os.rmdir(os.path.join(base, name))
    for rel, data in files.items():
        path = os.path.join(root, rel)
        try:
            if _read(path) == data:
                continue
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


def build(root: str, history: dict[str, list[Any]]) -> Truth:
    store = open_store(root)
    out = Truth()
    for key, values in history.items():
        out.versions[key] = {}
        for value in values:
            if value is None:
                assert store.delete(key).deleted
                version = max(out.versions[key]) + 1
                out.versions[key][version] = ("", None)
            else:
                res = store.set(key, value)
                out.versions[key][res.version] = (res.hash, codec.normalize(value))
        store.history(key)  # the first reader of old versions builds the version index
    store.close()
    out.files = read_tree(root)
    return out


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """Scratch space for damaged copies: tmpfs when there is one (the sweeps rewrite
    thousands of small files), else the test's tmp_path."""
    shm = "/dev/shm"  # a private mkdtemp inside it, removed afterwards
    if not (os.path.isdir(shm) and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = tempfile.mkdtemp(prefix="castore-corruption-", dir=shm)
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Truth:
    out = build(str(tmp_path_factory.mktemp("corruption") / "orig"), HISTORY)
    # The layout the cases rely on.
    k_frames = list(scan_frames(out.files[out.log_rel("k")]))
    blobs = [f for f in k_frames if f.kind == KIND_BLOB]
    assert sum(f.payload[32] == CODEC_ZSTD for f in blobs) >= 2
    assert [chr(f.kind) for f in k_frames][:3] == list("HBE")
    assert [chr(f.kind) for f in k_frames][-2:] == list("BE")
    other = [decode_entry(f.payload) for f in scan_frames(out.files[out.log_rel("other")])
             if f.kind == KIND_ENTRY]  # fmt: skip
    assert other[0].blob is not None
    assert other[0].blob.log, "other's first version should point into k's log"
    return out


# -- independent analysis of a damaged copy --------------------------------------------


@dataclass
class Analysis:
    """Intact frames of a damaged copy, found with scan_frames alone."""

    entries: dict[str, dict[int, Entry]]  # key -> version -> intact entry
    blobs: dict[tuple[str, int], Frame]  # (log path relative to refs/, start) -> intact B
    digests: set[str]  # digests with at least one intact, verifying B frame
    gaps: dict[str, bool]  # key -> its log has bytes outside intact frames
    # key -> damage follows its newest intact entry (FORMAT.md §7): the newest is unknown
    tail_damaged: dict[str, bool] = field(default_factory=dict)
    # key -> (version before, version after or None) around each damaged range
    windows: dict[str, list[tuple[int, int | None]]] = field(default_factory=dict)
    # key -> the version index records a version above the newest intact entry: a cut
    # that readers, writers and check all see (at a frame boundary too)
    cut_evidence: dict[str, bool] = field(default_factory=dict)

    def newest_unknown(self, key: str, phase: str) -> bool:
        """Readers must refuse the newest version (after repair: it was recorded lost)."""
        return self.tail_damaged[key]

    def in_damage(self, key: str, version: int) -> bool:
        """True when ``version`` may have been in damaged bytes of ``key``'s log."""
        return any(
            low < version and (high is None or version < high) for low, high in self.windows[key]
        )

    def blob_intact(self, key: str, entry: Entry) -> bool:
        loc = entry.blob
        if loc is None:
            return False
        own = os.path.relpath(os.path.join(REFS_REL, file_id(key) + ".log"), "refs")
        frame = self.blobs.get((loc.log or own, loc.offset))
        return (
            frame is not None
            and frame.end - frame.start == loc.length
            and frame.payload[:32].hex() == entry.hash
        )

    def lost(self, entry: Entry) -> bool:
        return entry.live and entry.hash not in self.digests

    def newest(self, key: str) -> Entry | None:
        versions = self.entries[key]
        return versions[max(versions)] if versions else None


def analyze(files: dict[str, bytes], truth: Truth) -> Analysis:
    entries: dict[str, dict[int, Entry]] = {}
    blobs: dict[tuple[str, int], Frame] = {}
    digests: set[str] = set()
    gaps = {}
    tail_damaged = {}
    cut_evidence = {}
    windows: dict[str, list[tuple[int, int | None]]] = {}
    for key in truth.keys:
        rel = truth.log_rel(key)
        data = files.get(rel, b"")
        log = classify(data)
        frames = log.frames
        gaps[key] = sum(f.end - f.start for f in frames) != len(data)
        placed = [(f.start, decode_entry(f.payload)) for f in frames if f.kind == KIND_ENTRY]
        last_start = placed[-1][0] if placed else -1
        # The newest version is unknown after damage past the newest intact entry, and
        # after a cut the log's version index (built by readers) proves, while the index
        # records a higher version: a torn tail, a log without entries, or a clean cut
        # at a frame boundary (the log then ends in an intact entry).
        newest_version = placed[-1][1].version if placed else 0
        vix = files.get(rel[: -len(".log")] + ".vix", b"")
        cut_evidence[key] = highest_recorded(vix) > newest_version
        damage_after = any(start > last_start for start, _ in log.damage)
        tail_damaged[key] = cut_evidence[key] or damage_after
        windows[key] = [
            (
                max((e.version for at, e in placed if at < start), default=0),
                min((e.version for at, e in placed if at >= end), default=None),
            )
            for start, end in log.damage
        ]
        entries[key] = {}
        for f in frames:
            if f.kind == KIND_ENTRY:
                entry = decode_entry(f.payload)
                entries[key][entry.version] = entry
            elif f.kind == KIND_BLOB:
                blobs[(os.path.relpath(rel, "refs"), f.start)] = f
                try:
                    decode_blob(f.payload, f.payload[:32].hex())
                except CorruptionError:
                    continue
                digests.add(f.payload[:32].hex())
    return Analysis(entries, blobs, digests, gaps, tail_damaged, windows, cut_evidence)


# -- the checks -------------------------------------------------------------------------


class Problems(list[str]):
    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.append(what)


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except NotFoundError as exc:
        return "notfound", exc
    except CorruptionError as exc:
        return "corrupt", exc
    except Exception as exc:  # noqa: BLE001 - any other exception is a finding
        return "error", exc


def verify_reads(
    root: str, truth: Truth, an: Analysis, problems: Problems, phase: str, *, keys_ok: bool = True
) -> None:
    """Every read is correct for its version or a CorruptionError / NotFoundError.

    With ``keys_ok`` False (KEYS may be damaged), list may leave keys out.
    """
    store = open_store(root)
    for key in truth.keys:
        written = truth.versions[key]
        intact = an.entries[key]
        # Latest: the newest intact entry.
        newest = an.newest(key)
        kind, res = _outcome(partial(store.get, key))
        where = f"{phase} get({key})"
        if an.newest_unknown(key, phase) and repaired_already(phase):
            problems.expect(kind == "corrupt", f"{where}: lost newest version read as {res!r}")
        elif an.newest_unknown(key, phase):
            problems.expect(kind == "corrupt", f"{where}: damaged tail read as {kind} {res!r}")
        elif kind != "ok":
            problems.expect(
                kind == "corrupt" and newest is not None and not an.blob_intact(key, newest),
                f"{where}: {kind} {res!r}",
            )
        elif newest is None or not newest.live:
            problems.expect(not res.found, f"{where}: found {res.version}, expected absent")
        else:
            problems.expect(
                (res.found, res.version, res.value_json, res.hash)
                == (True, newest.version, written[newest.version][1], newest.hash),
                f"{where}: got v{res.version} {res.value_json!r}, expected v{newest.version}",
            )
        # Every version written, and the next one.
        for version in [*written, max(written) + 1]:
            kind, res = _outcome(partial(store.get, key, version=version))
            where = f"{phase} get({key}, version={version})"
            entry = intact.get(version)
            if kind == "error":
                problems.append(f"{where}: {res!r}")
            elif kind == "ok" and entry is None:
                problems.append(f"{where}: read {res!r} but no intact entry")
            elif entry is None and version in written and an.in_damage(key, version):
                problems.expect(kind == "corrupt", f"{where}: damaged version read as {res!r}")
            elif kind == "ok" and entry is not None:
                hash_, value = written[version]
                if value is None:
                    problems.expect(not res.found, f"{where}: a delete read as found")
                else:
                    problems.expect(
                        (res.found, res.version, res.value_json, res.hash)
                        == (True, version, value, hash_),
                        f"{where}: wrong data {res!r}",
                    )
            elif entry is not None and (not entry.live or an.blob_intact(key, entry)):
                problems.append(f"{where}: intact version raised {res!r}")
            elif entry is not None:
                problems.expect(kind == "corrupt", f"{where}: damaged blob raised {res!r}")
        # History: exactly the intact entries, with their hashes.
        kind, res = _outcome(partial(store.history, key))
        if an.tail_damaged[key] and not repaired_already(phase):
            problems.expect(kind == "corrupt", f"{phase} history({key}): {kind} {res!r}")
        elif kind != "ok":
            problems.expect(kind == "corrupt", f"{phase} history({key}): {res!r}")
        else:
            # A "damaged" entry with a hash is a version whose value was lost: it stays.
            got = [(e.version, e.hash) for e in res.entries if e.operation != "damaged" or e.hash]
            want = [(v, written[v][0]) for v in sorted(intact, reverse=True)]
            problems.expect(got == want, f"{phase} history({key}): {got} != {want}")
            marked = {
                v
                for e in res.entries
                if e.operation == "damaged"
                for v in range(e.damaged_from or e.version, e.version + 1)
            }
            for version in written:
                if version not in intact and an.in_damage(key, version):
                    problems.expect(
                        version in marked, f"{phase} history({key}): v{version} not marked"
                    )
    # List: live keys whose newest intact entry reads, with the right value.
    unreadable = []
    for k in truth.keys:
        top = an.newest(k)
        lost_top_value = top is not None and top.live and not an.blob_intact(k, top)
        if an.newest_unknown(k, phase) or lost_top_value:
            unreadable.append(k)
    kind, listed = _outcome(lambda: store.list(include_values=True))
    with_values = kind != "corrupt"
    if kind == "corrupt":
        problems.expect(bool(unreadable), f"{phase} list with values: {listed!r}")
        kind, listed = _outcome(store.list)  # without values: unreadable keys are skipped
    if kind != "ok":
        problems.append(f"{phase} list: {listed!r}")
        return
    shown = {e.key: (e.version, e.value_json) for e in listed.entries}
    for key in truth.keys:
        newest = an.newest(key)
        if an.newest_unknown(key, phase):
            problems.expect(
                key not in shown and key in listed.skipped,
                f"{phase} list: {key} with a damaged tail: {shown.get(key)}",
            )
        elif newest is None or not newest.live:
            problems.expect(key not in shown, f"{phase} list: {key} listed but absent")
        elif key in shown:
            value = truth.versions[key][newest.version][1] if with_values else None
            problems.expect(
                shown[key] == (newest.version, value),
                f"{phase} list: {key} -> {shown[key]}, expected v{newest.version}",
            )
        elif keys_ok:
            problems.expect(
                key in listed.skipped and not an.blob_intact(key, newest),
                f"{phase} list: {key} missing (skipped={listed.skipped})",
            )
    store.close()


def repaired_already(phase: str) -> bool:
    return phase == "after repair"


def unreadable_after_repair(an: Analysis) -> set[tuple[str, int]]:
    """Intact entries whose blob lost every copy: no repair can bring them back."""
    return {(k, v) for k, versions in an.entries.items() for v, e in versions.items() if an.lost(e)}


def run_case(
    root: str,
    truth: Truth,
    damaged: dict[str, bytes],
    *,
    logs_damaged: bool,
    problems: Problems,
    label: str,
) -> None:
    start = len(problems)
    write_tree(root, damaged)
    an = analyze(damaged, truth)
    keys_rel = os.path.relpath(keys_path("", "dag", DAG), "")
    keys_ok = damaged.get(keys_rel) == truth.files[keys_rel]
    verify_reads(root, truth, an, problems, "before repair", keys_ok=keys_ok)
    report = open_store(root).check()
    if logs_damaged and any(an.gaps.values()):
        problems.expect(not report.ok, "check() is ok on a damaged log")
    repaired = open_store(root).check(repair=True)
    after = open_store(root).check()
    lost = unreadable_after_repair(an)
    if lost:
        # A value with no intact copy is recorded as lost by the repair: its entry stays
        # (as "damaged", with its hash), and every later check reports it as information.
        problems.expect(after.ok, f"check after repair: {[f.problem for f in after.findings]}")
        reported = {f.problem for f in after.findings if f.severity == "info"}
        want = {f"{ref_text(k)} versions {v}-{v} were lost to damage" for k, v in sorted(lost)}
        problems.expect(
            all(any(p.startswith(w) for p in reported) for w in want),
            f"after repair, findings {sorted(reported)} do not name the lost values {sorted(lost)}",
        )
    else:
        problems.expect(
            after.ok, f"check after repair is not ok: {[f.problem for f in after.findings]}"
        )
        damaged_logs = [k for k in truth.keys if an.windows[k] or an.tail_damaged[k]]
        if (
            logs_damaged
            and damaged_logs
            and not any("lost to damage" in f.problem for f in after.findings)
            and any(an.in_damage(k, v) for k in damaged_logs for v in truth.versions[k])
        ):
            problems.append("check after repair is plain ok although versions were lost")
        unrepaired = [f"{f.problem} -> {f.repair}" for f in repaired.findings if not f.repaired]
        problems.expect(
            repaired.ok, f"check(repair=True) is not ok, though nothing is lost: {unrepaired}"
        )
    verify_reads(root, truth, an, problems, "after repair")
    if logs_damaged:
        for key in truth.keys:
            rel = truth.log_rel(key)
            if an.gaps[key]:
                copies = glob.glob(os.path.join(root, "quarantine", "*", rel))
                problems.expect(
                    any(_read(c) == damaged[rel] for c in copies),
                    f"no quarantine copy of the damaged {key} log",
                )
    store = open_store(root)
    for key in truth.keys:
        newest = an.newest(key)
        kind, res = _outcome(partial(store.set, key, {"after": label}))
        if kind != "ok":
            problems.append(f"set({key}) after repair: {res!r}")
            continue
        # A cut removes acknowledged bytes and looks like a crash's torn tail: what
        # it removed cannot be known (FORMAT.md §7). Any other damage can be.
        floor = newest.version if " cut " in label and newest is not None else 0
        if " cut " not in label:
            floor = max(truth.versions[key])
        problems.expect(
            res.version > floor,
            f"set({key}) after repair gave version {res.version}: versions repeat",
        )
        got = store.get(key)
        problems.expect(got.value == {"after": label}, f"get({key}) after the set: {got!r}")
    if not lost:
        kind, lines = _outcome(lambda: list(export_lines(store)))
        if kind != "ok":
            problems.append(f"export after repair: {lines!r}")
        else:
            exported = len(lines) - 2  # the header and the end line
            markers = sum(b'"op":"damaged"' in line for line in lines)
            expected = sum(len(an.entries[k]) + 1 for k in truth.keys) + markers
            problems.expect(
                exported == expected, f"export after repair: {exported} versions, {expected}"
            )
    store.close()
    if len(problems) > start:
        problems[start:] = [f"[{label}] {p}" for p in problems[start:]]


def ref_text(key: str) -> str:
    return f"dag/{DAG}/{key}"


def assert_no_problems(problems: Problems, cases: int) -> None:
    assert cases > 0
    assert not problems, f"{len(problems)} problems in {cases} damaged copies:\n" + "\n".join(
        problems[:MAX_REPORTED]
    )


def flip(data: bytes, offset: int) -> bytes:
    bit = 1 << (offset % 8)
    return data[:offset] + bytes([data[offset] ^ bit]) + data[offset + 1 :]


def frames(truth: Truth, key: str) -> list[Frame]:
    return list(scan_frames(truth.files[truth.log_rel(key)]))


def sweep(
    work: Path, truth: Truth, cases: Iterator[tuple[str, str, bytes]], *, logs: bool = True
) -> None:
    """Run one case per (label, relative path, new bytes)."""
    problems = Problems()
    count = 0
    root = str(work / "copy")
    for label, rel, data in cases:
        count += 1
        damaged = dict(truth.files)
        damaged[rel] = data
        run_case(root, truth, damaged, logs_damaged=logs, problems=problems, label=label)
    assert_no_problems(problems, count)


# -- torn logs -------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_truncate_at_every_offset_of_the_last_two_records(work, truth, key):
    rel = truth.log_rel(key)
    full = truth.files[rel]
    first = frames(truth, key)[-2].start

    def cases() -> Iterator[tuple[str, str, bytes]]:
        for cut in range(max(first, 1), len(full)):  # cut 0: test_truncated_to_empty_log
            yield f"{key} cut {cut}", rel, full[:cut]

    sweep(work, truth, cases())


@pytest.mark.parametrize("key", KEYS)
def test_truncated_to_empty_log(work, truth, key):
    # An empty log is a documented crash state (FORMAT.md §7: "crash between create
    # and step 6"): readers and writers treat it as a new key, and repair must leave
    # a store that check finds ok.
    sweep(work, truth, iter([(f"{key} cut 0", truth.log_rel(key), b"")]))


# -- bit flips ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_flip_every_byte_of_the_last_two_records(work, truth, key):
    rel = truth.log_rel(key)
    full = truth.files[rel]
    first = frames(truth, key)[-2].start

    def cases() -> Iterator[tuple[str, str, bytes]]:
        for offset in range(first, len(full)):
            yield f"{key} flip {offset}", rel, flip(full, offset)

    sweep(work, truth, cases())


def _sample(frame: Frame, step: int) -> list[int]:
    """Both length fields, the kind byte, the checksum and every ``step``-th payload byte."""
    fixed = [frame.start, frame.start + 3, frame.start + 4, frame.end - 20, frame.end - 1]
    return sorted({*fixed, *range(frame.start + 5, frame.end - 20, step)})


@pytest.mark.parametrize("key", ["k", "other"])
def test_flip_sampled_bytes_of_older_records(work, truth, key):
    rel = truth.log_rel(key)
    full = truth.files[rel]
    older = [f for f in frames(truth, key)[:-2] if f.kind != KIND_HEADER]
    assert older

    def cases() -> Iterator[tuple[str, str, bytes]]:
        for f in older:
            for offset in _sample(f, 23):
                yield f"{key} {chr(f.kind)}@{f.start} flip {offset}", rel, flip(full, offset)

    sweep(work, truth, cases())


def test_flip_sampled_bytes_of_every_blob_frame(work, truth):
    def cases() -> Iterator[tuple[str, str, bytes]]:
        for key in truth.keys:
            rel = truth.log_rel(key)
            full = truth.files[rel]
            for f in frames(truth, key):
                if f.kind == KIND_BLOB:
                    codec_name = "zstd" if f.payload[32] == CODEC_ZSTD else "raw"
                    for offset in _sample(f, 7):
                        label = f"{key} {codec_name} B@{f.start} flip {offset}"
                        yield label, rel, flip(full, offset)

    zstd = [
        f
        for key in truth.keys
        for f in frames(truth, key)
        if f.kind == KIND_BLOB and f.payload[32] == CODEC_ZSTD and len(f.payload) > 33
    ]
    assert len(zstd) >= 2
    sweep(work, truth, cases())


@pytest.mark.parametrize("key", KEYS)
def test_flip_in_a_header_frame(work, truth, key):
    # A damaged H frame is recoverable: scope and namespace are in the path and KEYS,
    # the key is the KEYS line whose sha256 is the file name. The entries after it are
    # intact and must stay readable; repair must leave a store that check finds ok.
    rel = truth.log_rel(key)
    full = truth.files[rel]
    header = frames(truth, key)[0]
    assert header.kind == KIND_HEADER

    def cases() -> Iterator[tuple[str, str, bytes]]:
        for offset in (header.start + 4, (header.start + header.end) // 2, header.end - 1):
            yield f"{key} H flip {offset}", rel, flip(full, offset)

    sweep(work, truth, cases())


# -- a small value stored twice in one log -------------------------------------------------


def test_damaged_blob_of_a_small_value_that_has_a_second_copy(work):
    # Values under 256 bytes are not in the blob index (FORMAT.md §5), so repeating one
    # that is not the previous version stores a second B frame in the same log. When
    # one copy rots, the other is intact: nothing is lost, so check(repair=True) must
    # end ok (and every version must read afterwards).
    history: dict[str, list[Any]] = {"dup": [{"small": 1}, {"x": 2}, {"small": 1}]}
    local = build(str(work / "orig"), history)
    blobs = [f for f in frames(local, "dup") if f.kind == KIND_BLOB]
    digests = [f.payload[:32] for f in blobs]
    assert len(blobs) == 3
    assert digests[0] == digests[2], "the value repeated should have its own second frame"
    rel = local.log_rel("dup")
    full = local.files[rel]

    def cases() -> Iterator[tuple[str, str, bytes]]:
        for f in (blobs[0], blobs[2]):
            middle = (f.start + f.end) // 2
            yield f"dup B@{f.start} flip {middle}", rel, flip(full, middle)

    sweep(work, local, cases())


# -- blobs whose checksum is valid but whose data is wrong -------------------------------


def _rewrap(payload: bytes) -> bytes:
    return encode_frame(KIND_BLOB, payload)


def test_blob_with_valid_checksum_but_wrong_content_is_never_returned(work, truth):
    # Bit rot cannot make these (the frame checksum is valid), a bug or a hostile
    # writer could: the reader must verify the digest after decompressing.
    rel = truth.log_rel("k")
    full = truth.files[rel]
    zblob = next(f for f in frames(truth, "k") if f.kind == KIND_BLOB and f.payload[32] == 1)
    digest = zblob.payload[:32]
    other_value = codec.normalize({"text": "compressible " * 29 + "different!!! "})
    assert len(other_value) == len(codec.normalize(ZTEXT))
    variants = {
        # zstd data of another value of the same length, under the old digest
        "wrong-zstd-content": encode_blob(digest, other_value),
        # raw codec byte over the zstd bytes
        "codec-raw": digest + bytes([CODEC_RAW]) + zblob.payload[33:],
        "codec-unknown": digest + bytes([7]) + zblob.payload[33:],
        "zstd-garbage": digest + bytes([CODEC_ZSTD]) + bytes(len(zblob.payload) - 33),
        "zstd-truncated": zblob.payload[:-5],
        "digest-changed": bytes([digest[0] ^ 1]) + zblob.payload[1:],
    }

    def cases() -> Iterator[tuple[str, str, bytes]]:
        for name, payload in variants.items():
            # A different length moves later frames: their hints go stale (index fallback).
            yield name, rel, full[: zblob.start] + _rewrap(payload) + full[zblob.end :]

    problems = Problems()
    root = str(work / "copy")
    count = 0
    for label, path, data in cases():
        count += 1
        damaged = dict(truth.files)
        damaged[path] = data
        write_tree(root, damaged)
        store = open_store(root)
        for key, version in (("k", 2), ("other", 1)):
            kind, res = _outcome(partial(store.get, key, version=version))
            problems.expect(
                kind == "corrupt" or (kind == "ok" and res.value == ZTEXT),
                f"[{label}] get({key}, version={version}): {kind} {res!r}",
            )
        problems.expect(not open_store(root).check().ok, f"[{label}] check() is ok")
    assert_no_problems(problems, count)


# -- derived data -------------------------------------------------------------------------


def test_damaged_version_index(work, truth):
    rel = truth.log_rel("k")[: -len(".log")] + ".vix"
    full = truth.files[rel]
    assert len(full) == 8 * len(HISTORY["k"])

    def cases() -> Iterator[tuple[str, str, bytes]]:
        for offset in range(len(full)):
            yield f"vix flip {offset}", rel, flip(full, offset)
        # A record that reads as a marker (1 = compacted, 2 = absent, versions.py) while
        # the log has no compaction record: readers must not trust it blindly.
        for index in range(0, len(full), 8):
            for marker in (1, 2):
                data = full[:index] + marker.to_bytes(8, "little") + full[index + 8 :]
                yield f"vix version {index // 8 + 1} marker {marker}", rel, data
        for cut in range(0, len(full), 3):
            yield f"vix cut {cut}", rel, full[:cut]
        yield "vix garbage", rel, b"\xff" * len(full) * 2

    sweep(work, truth, cases(), logs=False)


def test_damaged_blob_index(work, truth):
    shards = sorted(rel for rel in truth.files if rel.startswith("index" + os.sep))
    assert shards

    def cases() -> Iterator[tuple[str, str, bytes]]:
        for rel in shards:
            full = truth.files[rel]
            for offset in range(0, len(full), 11):
                yield f"{rel} flip {offset}", rel, flip(full, offset)
            for cut in (0, 1, len(full) // 2, len(full) - 1):
                yield f"{rel} cut {cut}", rel, full[:cut]

    sweep(work, truth, cases(), logs=False)


def test_damaged_key_lines_of_keys(work, truth):
    rel = os.path.relpath(keys_path("", "dag", DAG), "")
    full = truth.files[rel]
    first_line = full.index(b"\n") + 1

    def cases() -> Iterator[tuple[str, str, bytes]]:
        for offset in range(first_line, len(full)):
            yield f"KEYS flip {offset}", rel, flip(full, offset)
        for cut in range(first_line, len(full)):
            yield f"KEYS cut {cut}", rel, full[:cut]

    sweep(work, truth, cases(), logs=False)


def test_damaged_namespace_line_of_keys(work, truth):
    # The first line of KEYS names the namespace; compact, export and audit find a
    # namespace's keys through it. check must notice (and repair must restore) it, or
    # at least every tool must still see every key: here export must hold every version.
    rel = os.path.relpath(keys_path("", "dag", DAG), "")
    full = truth.files[rel]
    first_line = full.index(b"\n") + 1

    def cases() -> Iterator[tuple[str, str, bytes]]:
        for offset in range(0, first_line, 3):
            yield f"KEYS namespace line flip {offset}", rel, flip(full, offset)

    sweep(work, truth, cases(), logs=False)


def test_damage_to_two_logs_at_once(work, truth):
    # The shared blob's home (k) and the log pointing at it (other) both damaged.
    k_rel, o_rel = truth.log_rel("k"), truth.log_rel("other")
    k_frames, o_frames = frames(truth, "k"), frames(truth, "other")
    problems = Problems()
    count = 0
    root = str(work / "copy")
    for kf in k_frames[1:]:
        for of in o_frames[1:]:
            count += 1
            damaged = dict(truth.files)
            damaged[k_rel] = flip(truth.files[k_rel], (kf.start + kf.end) // 2)
            damaged[o_rel] = flip(truth.files[o_rel], (of.start + of.end) // 2)
            label = f"k {chr(kf.kind)}@{kf.start} + other {chr(of.kind)}@{of.start}"
            run_case(root, truth, damaged, logs_damaged=True, problems=problems, label=label)
    assert_no_problems(problems, count)


def test_clean_copy_passes_every_check(work, truth):
    # The harness itself: an undamaged copy has no problems and check is ok.
    problems = Problems()
    root = str(work / "copy")
    run_case(root, truth, dict(truth.files), logs_damaged=False, problems=problems, label="clean")
    assert_no_problems(problems, 1)
    write_tree(root, truth.files)
    assert open_store(root).check().ok
    assert log_path(root, "dag", DAG, "k").endswith(truth.log_rel("k"))
