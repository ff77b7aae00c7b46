"""The damage matrix's cases: damage shapes over every file, and one case run end to end.

For every regular file of the pristine store (``FORMAT``, ``KEYS``,
``GRAVES``, every ``.log``, ``.vix`` and ``index/*.idx``): XOR ``0x01`` and
``0xFF`` at every offset, zeroed 512-byte and 4 KiB aligned ranges and the
last 512 bytes, a truncation at every offset, and each frame's kind byte set
to every other kind castore writes (XOR never turns an ``E`` into a ``B``,
``C`` or ``H``; damage may: :func:`enumerate_damage`).
:func:`run_case` applies one to a fresh copy (``shutil.copytree``), runs
:func:`tests.damage.scenario.observe` and judges the answers with
:func:`tests.damage.oracle.classify`.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import random
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from castore import codec
from castore.file.frames import scan_frames
from castore.file.records import KIND_ENTRY, decode_entry
from tests.damage.answers import (
    BAD,
    INDISTINGUISHABLE,
    TRACEBACK,
    CaseContext,
    Truth,
    Verdict,
    worst,
)
from tests.damage.oracle import classify
from tests.damage.scenario import KEYS, CaseTimeoutError, observe, probe_value

__all__ = [
    "FILE_KINDS",
    "SHAPES",
    "CaseResult",
    "Damage",
    "clean_cut",
    "enumerate_damage",
    "file_label",
    "frame_cuts",
    "run_case",
    "sample_cases",
]

FILE_KINDS: Final = ("FORMAT", "KEYS", "GRAVES", "STATE", "log", "vix", "idx")
SHAPES: Final = ("xor01", "xorff", "zero", "trunc", "kind")
FRAME_KINDS: Final = b"BCEGHILPST"  # every frame kind castore writes (FORMAT.md)
CASE_TIMEOUT_SECONDS: Final = 60.0  # a case takes well under a second: longer is a hang


# -- damage shapes ---------------------------------------------------------------------------


def _file_id(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()  # docs/FORMAT.md §1


def file_label(rel: str) -> tuple[str, str]:
    """``(kind, label)`` of a store file, e.g. ``("log", "log:big")``."""
    name = os.path.basename(rel)
    stem, ext = os.path.splitext(name)
    if ext in (".log", ".vix"):
        owner = {_file_id(key): key for key in KEYS}.get(stem, stem[:8])
        return ext[1:], f"{ext[1:]}:{owner}"
    if ext == ".idx":
        return "idx", f"idx:{stem}"
    if name in ("FORMAT", "KEYS", "GRAVES", "STATE"):
        return name, name
    return "other", rel


class Damage(NamedTuple):
    """One case: ``shape`` applied to the file ``rel`` at ``offset`` over ``length`` bytes.

    ``kind``: the byte at ``offset`` (a frame's kind) becomes ``length`` (another kind).
    """

    rel: str
    kind: str
    label: str
    shape: str
    offset: int
    length: int

    def apply(self, data: bytes) -> bytes:
        """The damaged bytes of a file whose pristine bytes are ``data``."""
        at, end = self.offset, self.offset + self.length
        if self.shape == "trunc":
            return data[:at]
        if self.shape == "zero":
            return data[:at] + bytes(self.length) + data[end:]
        if self.shape == "kind":
            return data[:at] + bytes([self.length]) + data[at + 1 :]
        mask = 0x01 if self.shape == "xor01" else 0xFF
        return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]

    def __str__(self) -> str:
        if self.shape == "kind":
            return f"{self.label} kind->{chr(self.length)} @{self.offset}"
        return f"{self.label} {self.shape} @{self.offset}+{self.length}"


def _zero_ranges(size: int) -> list[tuple[int, int]]:
    ranges = {(at, min(512, size - at)) for at in range(0, size, 512)}
    ranges |= {(at, min(4096, size - at)) for at in range(0, size, 4096)}
    if size:
        ranges.add((max(0, size - 512), min(512, size)))
    return sorted(ranges)


def _store_files(root: str) -> Iterator[str]:
    for base, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(base, name)
            if os.path.isfile(path) and not os.path.islink(path):
                yield os.path.relpath(path, root)


def enumerate_damage(root: str) -> list[Damage]:
    """Every case over every regular file of the store in ``root``."""
    cases = []
    for rel in _store_files(root):
        kind, label = file_label(rel)
        size = os.path.getsize(os.path.join(root, rel))
        for shape in ("xor01", "xorff"):
            cases += [Damage(rel, kind, label, shape, at, 1) for at in range(size)]
        cases += [Damage(rel, kind, label, "zero", at, n) for at, n in _zero_ranges(size)]
        cases += [Damage(rel, kind, label, "trunc", at, size - at) for at in range(size)]
        with open(os.path.join(root, rel), "rb") as fh:
            frames = list(scan_frames(fh.read()))
        cases += [
            Damage(rel, kind, label, "kind", f.start + 4, other)
            for f in frames
            for other in FRAME_KINDS
            if other != f.kind
        ]
    return cases


def frame_cuts(root: str, cases: list[Damage]) -> list[Damage]:
    """Every truncation of a ref log at one of its frames' starts (a cut some index proves).

    A review found a sample without them blind to readers that served a cut
    log's older version: :func:`sample_cases` always keeps them.
    """
    starts: dict[str, set[int]] = {}
    for rel in {case.rel for case in cases if case.kind == "log"}:
        with open(os.path.join(root, rel), "rb") as fh:
            starts[rel] = {frame.start for frame in scan_frames(fh.read())}
    return [c for c in cases if c.shape == "trunc" and c.offset in starts.get(c.rel, ())]


def sample_cases(
    cases: list[Damage], per_stratum: int | None, seed: int, keep: Sequence[Damage] = ()
) -> list[Damage]:
    """At most ``per_stratum`` cases per (file, shape), chosen with a seeded generator.

    ``keep``: cases run whatever the sample (:func:`frame_cuts`).
    """
    if per_stratum is None:
        return list(cases)
    strata: dict[tuple[str, str], list[Damage]] = collections.defaultdict(list)
    for case in cases:
        strata[(case.rel, case.shape)].append(case)
    out = []
    for (rel, shape), members in strata.items():
        chosen = members
        if len(members) > per_stratum:
            chosen = random.Random(f"{seed}/{rel}/{shape}").sample(members, per_stratum)
        out += sorted(
            set(chosen) | {case for case in keep if (case.rel, case.shape) == (rel, shape)}
        )
    return out


def clean_cut(data: bytes, cut: int) -> bool:
    """The first ``cut`` bytes of a log are whole valid frames, back to back (a clean log)."""
    end = 0
    for frame in scan_frames(data[:cut]):
        if frame.start != end:
            return False
        end = frame.end
    return end == cut


# -- one case ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    """A case's status, and the verdicts worth reporting (BAD, INDISTINGUISHABLE, TRACEBACK)."""

    damage: Damage | None
    status: str
    verdicts: list[Verdict]


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise CaseTimeoutError after ``seconds`` (main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(_signum: int, _frame: object) -> None:
        raise CaseTimeoutError(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def cut_proved(data: bytes, cut: int, vix: bytes) -> bool:
    """The version index ``vix`` records a version that ``data[:cut]`` no longer holds.

    FORMAT.md §7, "A cut that the version index proves", parsed here on its
    own: a record past the newest intact entry at an offset at or past the end
    of the log's intact frames (markers 0, 1 and 2 are below any such end).
    """
    end, newest = 0, 0
    for frame in scan_frames(data[:cut]):
        if frame.start != end:
            break
        end = frame.end
        if frame.kind == KIND_ENTRY:
            newest = decode_entry(frame.payload).version
    records = [int.from_bytes(vix[i : i + 8], "little") for i in range(0, len(vix) - 7, 8)]
    return any(offset >= end for offset in records[newest:])


def _context(damage: Damage | None, pristine_bytes: bytes, vix: bytes) -> CaseContext:
    probes = {key: codec.normalize(probe_value(key)) for key in KEYS}
    if damage is None:
        return CaseContext("none", "none", clean_cut=False, probes=probes)
    cut = damage.kind == "log" and damage.shape == "trunc"
    return CaseContext(
        damage.kind,
        damage.shape,
        clean_cut=cut and clean_cut(pristine_bytes, damage.offset),
        probes=probes,
        cut_proved=cut and cut_proved(pristine_bytes, damage.offset, vix),
    )


def run_case(pristine: str, truth: Truth, damage: Damage | None, workdir: str) -> CaseResult:
    """Copy ``pristine`` into ``workdir``, apply ``damage`` (None: none), run and judge."""
    root = os.path.join(workdir, "case")
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(pristine, root)
    data = vix = b""
    if damage is not None:
        path = os.path.join(root, damage.rel)
        with open(path, "rb") as fh:
            data = fh.read()
        if damage.kind == "log":
            with contextlib.suppress(FileNotFoundError), open(path[:-4] + ".vix", "rb") as fh:
                vix = fh.read()
        with open(path, "wb") as fh:
            fh.write(damage.apply(data))
    try:
        with _deadline(CASE_TIMEOUT_SECONDS):
            observed = observe(root, truth)
    except CaseTimeoutError as exc:
        verdicts = [Verdict(TRACEBACK, "case", "the whole case", "answers", str(exc), "hang")]
    else:
        verdicts = classify(truth, observed, _context(damage, data, vix))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    status = worst(v.status for v in verdicts)
    keep = [v for v in verdicts if v.status in (BAD, INDISTINGUISHABLE, TRACEBACK)]
    return CaseResult(damage, status, keep)
