"""Damage matrix, CI profile: a seeded sample of every file kind and damage shape.

``tests/damage/`` builds a small store, damages one file of a fresh copy per
case (XOR 0x01 / 0xFF at an offset, a zeroed aligned range, a truncation) and
runs every read, a guarded set, check, repair, the reads again and a set;
``tests/damage/oracle.py`` judges each answer against the pristine store's.
Here a stratified sample (``SAMPLE_PER_STRATUM`` cases per file and shape,
seeded) must have no BAD and no TRACEBACK case. ``tools/damage_matrix.py``
runs the whole matrix.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Final

import pytest

from castore import codec
from castore.file.frames import scan_frames
from castore.file.records import CODEC_ZSTD, KIND_BLOB
from tests.damage.answers import (
    BAD,
    DETECTED,
    OK,
    TRACEBACK,
    CaseContext,
    CheckAnswer,
    FindingRow,
    GetAnswer,
    Outcome,
    worst,
)
from tests.damage.cases import FILE_KINDS, SHAPES, run_case
from tests.damage.matrix import run_matrix
from tests.damage.oracle import classify
from tests.damage.scenario import (
    KEYS,
    build_store,
    large_value,
    observe,
    probe_value,
    record_truth,
)

pytestmark = pytest.mark.integration

SAMPLE_PER_STRATUM: Final = 25  # per (file, shape): ~90 s of 2 idle cores (60: 180 s)
SEED: Final = 1
JOBS: Final = min(2, os.cpu_count() or 1)
SHOWN: Final = 20
CONTEXT: Final = CaseContext(
    "log", "xor01", clean_cut=False, probes={k: codec.normalize(probe_value(k)) for k in KEYS}
)


@pytest.fixture
def pristine(tmp_path: Path) -> str:
    return str(tmp_path / "pristine")


def test_undamaged_copy_answers_like_the_pristine_store(pristine, tmp_path):
    truth = record_truth(pristine, build_store(pristine))
    result = run_case(pristine, truth, None, str(tmp_path))
    assert result.status == OK, result.verdicts


def test_pristine_store_has_the_promised_shape(pristine):
    truth = record_truth(pristine, build_store(pristine))
    large = codec.normalize(large_value(2))
    assert len(large) > 4096
    copies = [
        frame
        for log in glob.glob(os.path.join(pristine, "refs", "*", "*", "*.log"))
        for frame in scan_frames(Path(log).read_bytes())
        if frame.kind == KIND_BLOB and frame.payload[:32].hex() == codec.hexdigest(large)
    ]
    assert len(copies) == 1, "big and twin share one deduplicated blob"
    assert copies[0].payload[32] == CODEC_ZSTD
    removed = truth.keys["removed"]
    assert removed.max_version == 2
    assert removed.history.value is not None
    assert removed.history.value.rows == ()
    assert glob.glob(os.path.join(pristine, "refs", "*", "*", "GRAVES"))
    compacted = truth.keys["compacted"].versions
    assert [v for v, outcome in compacted.items() if outcome.raised] == [1, 2, 3, 6]
    assert glob.glob(os.path.join(pristine, "refs", "*", "*", "*.vix"))
    assert glob.glob(os.path.join(pristine, "index", "*.idx"))


def test_oracle_flags_wrong_answers_and_accepts_refusals(pristine):
    # The oracle itself, on the answers of an undamaged store with one answer replaced.
    truth = record_truth(pristine, build_store(pristine))
    observed = observe(pristine, truth)
    assert worst(v.status for v in classify(truth, observed, CONTEXT)) == OK

    observed.before.latest["small"] = truth.keys["small"].versions[3]  # an older version
    assert worst(v.status for v in classify(truth, observed, CONTEXT)) == BAD

    refusal: Outcome[GetAnswer] = Outcome(error="RecordError", castore=True, corruption=True)
    observed.before.latest["small"] = refusal
    verdicts = classify(truth, observed, CONTEXT)
    assert worst(v.status for v in verdicts) == BAD, "check said ok while a read refused"
    finding = FindingRow("refs/x.log", "damaged bytes", "error", False)
    observed.checks[0] = Outcome(value=CheckAnswer(False, (finding,)))
    verdicts = classify(truth, observed, CONTEXT)
    # Every answer after the repair is the undamaged store's: the repair recovered the
    # value (another log held a copy), so nothing is left to report.
    assert worst(v.status for v in verdicts) == DETECTED, [v for v in verdicts if v.status == BAD]
    recovered = observed.after.latest["small"]
    observed.after.latest["small"] = refusal  # the repair did not recover it
    verdicts = classify(truth, observed, CONTEXT)
    assert worst(v.status for v in verdicts) == BAD, "the damage left no finding after repair"
    observed.after.latest["small"] = recovered
    lost = FindingRow("refs/x.log", "version 4 lost to damage", "info", False)
    observed.checks[2] = Outcome(value=CheckAnswer(True, (lost,)))
    verdicts = classify(truth, observed, CONTEXT)
    assert worst(v.status for v in verdicts) == DETECTED, [v for v in verdicts if v.status != OK]

    observed.before.latest["small"] = Outcome(error="IndexError", message="index out of range")
    assert worst(v.status for v in classify(truth, observed, CONTEXT)) == TRACEBACK


def test_damage_matrix_sample(capsys):
    report = run_matrix(SAMPLE_PER_STRATUM, SEED, jobs=JOBS)
    lines = [
        f"damage matrix sample: {report.cases} cases, {JOBS} job(s), {report.seconds:.1f} s",
        report.table(),
        *([report.causes(), report.details(SHOWN)] if report.bad else []),
    ]
    with capsys.disabled():  # the counts table is this test's report, shown in every run
        sys.stdout.write("\n" + "\n".join(lines) + "\n")
    assert {kind for kind, _shape in report.counts} >= set(FILE_KINDS)
    assert {shape for _kind, shape in report.counts} == set(SHAPES)
    assert report.total(DETECTED) > 0, "no case was DETECTED: the oracle would pass vacuously"
    failed = report.total(BAD) + report.total(TRACEBACK)
    shown = report.details(SHOWN)
    assert not failed, f"{failed} BAD or TRACEBACK cases; the first {SHOWN}:\n{shown}"
