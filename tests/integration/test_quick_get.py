"""``castore get``'s quick path answers as the full command does, or not at all.

:func:`castore.cli.quick.quick_get` (over :func:`castore.file.peek.peek`) reads
a key's log without the library. The oracle is the CLI's own full path on the
same arguments and the same store (``COMMANDS["get"]`` over an ``Invocation``):
wherever the quick path answers, its line must be byte for byte the full path's;
and on damaged copies of a log it must also be the answer of the undamaged
store (it may decline; it may never answer differently, in particular never
serve an older version or a damaged value). The one exception is the format's
own (FORMAT.md §7): a log cut exactly at a frame boundary is byte for byte the
log of an earlier state, which both paths read as such.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import zstandard

import castore
from castore import Store
from castore.cli import COMMANDS
from castore.cli.args import build_parser
from castore.cli.errors import OptionError
from castore.cli.invocation import Invocation
from castore.cli.quick import quick_get
from castore.errors import CastoreError, CorruptionError
from castore.file.frames import encode_frame, scan_frames
from castore.file.layout import Layout
from castore.keys import Ref

pytestmark = pytest.mark.integration

DAG = "flow"
SMALL = {"cursor": 41, "note": 'quotes " and \\ and <tags> & \u2028 é'}
COMPRESSED = {"rows": ["a repeated row of text"] * 40}  # over 128 bytes: zstd
_rnd = random.Random(7)
LARGE = {"blob": "".join(f"{_rnd.getrandbits(64):016x}" for _ in range(600))}  # > 4 KiB raw


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CASTORE_DIR", "DAG_NAME", "CASTORE_ROOT_DAG", "CASTORE_MODE"):
        monkeypatch.delenv(name, raising=False)


@functools.lru_cache(maxsize=64)
def _parsed(*argv: str) -> argparse.Namespace:
    """The command line parsed (once per argv: the sweeps run thousands of the same)."""
    return build_parser(castore.__version__).parse_args(list(argv))


def both(root: pathlib.Path, *argv: str) -> tuple[bytes | None, bytes | Exception]:
    """The quick path's line (None: declined) and the full command's line (or its error)."""
    args = copy.copy(_parsed("--dir", str(root), *argv))
    quick = quick_get(args)
    try:
        full: bytes | Exception = b"".join(COMMANDS["get"](Invocation(args)))
    except (CastoreError, OSError, OptionError) as exc:
        full = exc
    return quick, full


def agree(root: pathlib.Path, *argv: str) -> bytes | None:
    """Assert the two paths agree where the quick one answers; return the quick line."""
    quick, full = both(root, *argv)
    if quick is not None:
        assert quick == full, (argv, quick, full)
    return quick


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[Store]:
    handle = Store(tmp_path / "store", dag=DAG)
    yield handle
    handle.close()


def log_of(root: pathlib.Path | str, key: str = "k") -> pathlib.Path:
    """The log file of ``key`` (namespace DAG) in the store at ``root``."""
    layout = Layout(str(root), durable=False, lock_timeout=1)
    return pathlib.Path(layout.log_path(Ref("dag", DAG, key)))


def root_of(store: Store) -> pathlib.Path:
    return pathlib.Path(store.root)


@pytest.mark.parametrize("value", [SMALL, COMPRESSED, LARGE, "x", 0, None, [1.5, True]])
def test_a_plain_get_is_the_full_commands_line(store, value):
    store.set("k", {"old": 1})
    store.set("k", value)
    line = agree(root_of(store), "--dag", DAG, "get", "k")
    assert line is not None  # the common case is answered
    assert agree(root_of(store), "--dag", DAG, "get", "k", "--required") == line


def test_every_scope_and_way_of_naming_the_namespace(store, monkeypatch):
    refs = [
        ("dag", DAG, ["--dag", DAG]),
        ("root_dag", "parent", ["--root-dag", "parent", "--scope", "root_dag"]),
        ("global", "_", ["--scope", "global"]),
        ("custom", "team", ["--scope", "custom", "--namespace", "team"]),
        ("dag", "other", ["--namespace", "other"]),
    ]
    for scope, namespace, _ in refs:
        store.set("k", {"in": f"{scope}/{namespace}"}, scope=scope, namespace=namespace)
    for _, _, flags in refs:
        assert agree(root_of(store), *flags, "get", "k") is not None, flags
    monkeypatch.setenv("DAG_NAME", DAG)  # as a Dagu step names it
    assert agree(root_of(store), "get", "k") is not None
    monkeypatch.setenv("CASTORE_ROOT_DAG", "parent")
    assert agree(root_of(store), "--scope", "root_dag", "get", "k") is not None
    monkeypatch.setenv("CASTORE_DIR", str(root_of(store)))
    args = build_parser(castore.__version__).parse_args(["get", "k"])
    assert quick_get(args) == b"".join(COMMANDS["get"](Invocation(args)))


def test_names_that_need_escaping(store):
    for key in ('a "quoted" key', "tags<&>", "  trimmed  ", "dir/with/slashes"):
        store.set(key.strip(), 1)
        assert agree(root_of(store), "--dag", DAG, "get", key) is not None, key
    store.set("é", 2)  # not ASCII: the full path writes it
    assert both(root_of(store), "--dag", DAG, "get", "é")[0] is None
    assert agree(root_of(store), "--dag", DAG, "get", "é") is None


def test_what_the_quick_path_leaves_to_the_command(store, monkeypatch):
    root = root_of(store)
    store.set("k", SMALL)
    store.set("gone", 1)
    store.delete("gone")
    store.set("shared", LARGE)
    store.set("copy", LARGE)  # deduplicated: its entry points at the other log
    for absent in (("get", "missing"), ("get", "gone"), ("get", "gone", "--namespace", "other")):
        line = agree(root, "--dag", DAG, *absent)  # no live version: answered too
        assert line is not None
        assert line.endswith(b'"found":false}'), line
    cases = [
        ("get", "k", "--default", "[]"),  # the command checks --default, found or not
        ("get", "k", "--default", "not json"),
        ("get", "missing", "--required"),
        ("get", "gone", "--required"),
        ("get", "copy"),
        ("get", "k", "--version", "1"),
        ("get", "missing", "--default", "[]"),
        ("--mode", "group", "get", "k"),
    ]
    store.list()  # STATE records every key: evidence of a lost log is the store's to judge
    assert agree(root, "--dag", DAG, "get", "missing") is not None  # STATE does not name it
    assert both(root, "--dag", DAG, "get", "sha")[0] is None  # bytes of "shared": the store's
    for argv in cases:
        quick, full = both(root, "--dag", DAG, *argv)
        assert quick is None, argv
        if "--required" in argv:  # the command reports it
            assert type(full).__name__ == "NotFoundError", (argv, full)
        elif "not json" in argv:  # the command refuses it, though the key is found
            assert type(full).__name__ == "OptionError", (argv, full)
        else:
            assert isinstance(full, bytes), (argv, full)  # the command answers them
    monkeypatch.setenv("CASTORE_MODE", "private")
    assert both(root, "--dag", DAG, "get", "k")[0] is None
    monkeypatch.setenv("CASTORE_MODE", "bogus")
    quick, full = both(root, "--dag", DAG, "get", "k")
    assert quick is None
    assert "CASTORE_MODE" in str(full) or "bogus" in str(full)


def test_no_store_an_old_format_or_a_bad_ref_is_the_commands_to_report(tmp_path):
    """(A store directory without the key's log is answered: the other tests.)"""
    assert both(tmp_path / "nowhere", "--dag", DAG, "get", "k") == (
        None,
        b'{"operation":"get","scope":"dag","namespace":"flow","key":"k","found":false}',
    )
    old = tmp_path / "old"
    Store(old, dag=DAG).set("k", 1)
    (old / "FORMAT").write_text("castore-store 1\n")
    quick, full = both(old, "--dag", DAG, "get", "k")
    assert quick is None
    assert "castore upgrade" in str(full)
    quick, full = both(tmp_path / "nowhere", "get", "k")  # no DAG name: an invalid ref
    assert quick is None
    assert "namespace is required" in str(full)


def test_a_link_in_place_of_the_log_is_never_followed(store, tmp_path):
    store.set("k", SMALL)
    store.set("decoy", {"outside": True})
    log = log_of(store.root)
    decoy = tmp_path / "decoy.log"
    shutil.copy(log_of(store.root, "decoy"), decoy)
    os.unlink(log)
    os.symlink(decoy, log)
    quick, full = both(root_of(store), "--dag", DAG, "get", "k")
    assert quick is None
    assert "symbolic link" in str(full)


def _blob(value: bytes) -> tuple[bytes, str]:
    """A raw ``B`` frame holding ``value`` and its hex digest."""
    digest = hashlib.sha256(value).digest()
    return encode_frame(ord("B"), digest + b"\0" + value), digest.hex()


def _compact(fields: dict[str, Any]) -> bytes:
    """JSON as castore writes entries: compact, UTF-8."""
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def _crafted(log: bytes) -> Iterator[tuple[str, bytes]]:
    """Frames with valid checksums that castore never writes, appended to ``log``."""
    value = b'{"a":1}'
    blob, digest = _blob(value)
    at = ["", len(log), len(blob)]
    entry = {"version": 9, "op": "set", "time_ns": 1, "hash": digest, "blob": at}
    variants: list[tuple[str, Any]] = [
        ("plain", {}),
        ("audit a string", {"audit": "x"}),
        ("size a string", {"size": "x"}),
        ("created_ns a float", {"created_ns": 1.5}),
        ("pid a string", {"audit": {"pid": "1"}}),
        ("version 2**64", {"version": 1 << 64}),
        ("no time_ns", {"time_ns": None}),
        ("blob a string", {"blob": "x"}),
        ("blob too long", {"blob": ["", len(log), 1 << 30]}),
        ("a damaged entry", {"op": "damaged"}),
        ("an unknown op", {"op": "frobnicate"}),
    ]
    for name, change in variants:
        fields = {**entry, **change}
        fields = {k: v for k, v in fields.items() if v is not None}
        yield name, log + blob + encode_frame(ord("E"), _compact(fields))
    compact = _compact(entry).decode()
    yield "NaN size", log + blob + encode_frame(ord("E"), compact[:-1].encode() + b',"size":NaN}')
    yield "UTF-16", log + blob + encode_frame(ord("E"), compact.encode("utf-16"))
    yield "spaces", log + blob + encode_frame(ord("E"), json.dumps(entry).encode())
    surrogate = compact[:-1] + ',"audit":{"user":"\\ud800"}}'
    yield "lone surrogate", log + blob + encode_frame(ord("E"), surrogate.encode())
    tomb = {"version": 9, "op": "delete", "time_ns": 1, "audit": "x"}
    yield "tombstone, audit a string", log + encode_frame(ord("E"), _compact(tomb))
    # found by a review (thirty-second session): a tombstone whose hash is not a sha256
    # digest read as "not found" here, damage to the store
    for name, text in (("upper case", digest.upper()), ("cut short", digest[:40])):
        tomb = {"version": 9, "op": "delete", "time_ns": 1, "hash": text}
        yield f"tombstone, hash {name}", log + encode_frame(ord("E"), _compact(tomb))
        yield f"hash {name}", log + blob + encode_frame(ord("E"), _compact({**entry, "hash": text}))
    no_hash = {k: v for k, v in entry.items() if k != "hash"}
    yield "a set without a hash", log + blob + encode_frame(ord("E"), _compact(no_hash))
    for name, bad in (("not JSON", b"not json"), ("two lines", b'1}\n{"found":false')):
        blob, digest = _blob(bad)
        fields = {**entry, "hash": digest, "blob": ["", len(log), len(blob)]}
        yield f"value {name}", log + blob + encode_frame(ord("E"), _compact(fields))


def test_records_castore_never_writes_are_the_stores_to_judge(store):
    """Checksummed but foreign entries and values: the quick path declines them."""
    store.set("k", SMALL)
    root = root_of(store)
    log = log_of(root)
    pristine = log.read_bytes()
    answered = []
    for what, data in _crafted(pristine):
        log.write_bytes(data)
        quick, full = both(root, "--dag", DAG, "get", "k")
        if quick is not None:
            assert quick == full, what
            answered.append(what)
    assert answered == ["plain"], answered  # the one castore could have written


_EDGE = 48  # bytes of a frame's head and tail every cut of which is tried


def _damaged_copies(log: bytes, stride: int = 1) -> Iterator[tuple[str, bytes]]:
    """Every ``stride``-th byte flipped (two ways), cuts, bytes appended to the end.

    The cuts: every ``stride``-th size, and every size within a frame's head or
    tail (its length, type, checksum and trailer: where a cut changes what a
    reader can tell); with ``stride`` 1, every size.
    """
    for at in range(0, len(log), stride):
        for mask in (0x01, 0xFF):
            yield f"flip {at} ^{mask:#x}", log[:at] + bytes([log[at] ^ mask]) + log[at + 1 :]
    sizes = set(range(0, len(log), stride))
    for frame in scan_frames(log):
        sizes.update(range(frame.start, min(frame.start + _EDGE, frame.end)))
        sizes.update(range(max(frame.start, frame.end - _EDGE), frame.end + 1))
    for size in sorted(sizes):
        if size < len(log):
            yield f"cut at {size}", log[:size]
    for tail in (b"\0" * 25, b"\0" * 4096, b"E" + b"\xff" * 40, log[-30:]):
        yield f"append {len(tail)} bytes", log + tail


@pytest.mark.parametrize("hint", ["its blob", "elsewhere"])
def test_a_set_entry_without_a_hash_is_damage_in_one_line(store, hint):
    # Found by a review (thirty-second session): a checksummed set entry with "hash":""
    # whose blob hint missed made get a Python IndexError traceback (the blob index took
    # the empty digest's first byte), on both paths.
    store.set("k", SMALL)
    root = root_of(store)
    log = log_of(root)
    pristine = log.read_bytes()
    blob, _ = _blob(b'{"a":1}')
    at = ["", len(pristine), len(blob)] if hint == "its blob" else ["", 0, 5]
    entry = {"version": 9, "op": "set", "time_ns": 1, "hash": "", "blob": at}
    log.write_bytes(pristine + blob + encode_frame(ord("E"), _compact(entry)))
    for argv in (("get", "k"), ("get", "k", "--version", "9"), ("set", "k", "2")):
        done = subprocess.run(
            [sys.executable, "-m", "castore", "--dir", str(root), "--dag", DAG, *argv],
            capture_output=True,
            check=False,
        )
        assert done.returncode == 5, (argv, done.stderr)
        assert done.stderr.count(b"\n") == 1, done.stderr
        assert b"not a sha256 digest" in done.stderr or b"no hash" in done.stderr, done.stderr


@pytest.mark.parametrize("indexed", [False, True], ids=["unindexed", "indexed"])
@pytest.mark.parametrize(
    ("value", "stride"), [(SMALL, 1), (COMPRESSED, 1), (LARGE, 7)], ids=["raw", "zstd", "large"]
)
def test_on_every_damaged_copy_it_answers_the_truth_or_declines(tmp_path, value, stride, indexed):
    """The oracle: the undamaged store's answer, and the full command on the same copy.

    ``indexed``: every version was read first, so the log's ``.vix`` records
    them all and proves every cut (FORMAT.md §7): the full command must refuse
    it, and the quick path decline. (A review's mutation of the quick path's
    index check passed the unindexed copies: there a cut is an earlier state.)
    """
    root = tmp_path / "store"
    with Store(root, dag=DAG) as store:
        store.set("k", {"first": 1})
        store.set("k", value)
        store.set("k", {"third": value})
        if indexed:
            for version in (1, 2, 3):
                store.get("k", version=version)
    truth = agree(root, "--dag", DAG, "get", "k")
    assert truth is not None
    log = log_of(root)
    pristine = log.read_bytes()
    answered = declined = 0
    for what, damaged in _damaged_copies(pristine, stride):
        log.write_bytes(damaged)
        quick, full = both(root, "--dag", DAG, "get", "k")
        if indexed and what.startswith("cut"):
            assert isinstance(full, CorruptionError), (what, full)
        if quick is None:
            declined += 1
            continue
        answered += 1
        assert quick == full, what
        if not what.startswith("cut"):  # unindexed, a frame boundary is an earlier state (§7)
            assert quick == truth, what
    log.write_bytes(pristine)
    assert answered
    assert declined


def test_a_fifo_in_place_of_a_log_is_refused_not_waited_on(store):
    """A reader opens logs without blocking and reads only regular files."""
    store.set("k", SMALL)
    root = root_of(store)
    log = log_of(root)
    os.unlink(log)
    os.mkfifo(log)
    argv = [sys.executable, "-m", "castore", "--dir", str(root), "--dag", DAG, "get", "k"]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False, cwd=root)
    assert done.returncode == 5, done
    assert b"not a regular file" in done.stderr
    assert done.stdout == b""


def test_a_zstd_frame_declaring_more_than_a_value_is_never_inflated(store):
    store.set("k", SMALL)
    root = root_of(store)
    log = log_of(root)
    pristine = log.read_bytes()
    inflated = b"0" * (2 << 20)  # twice MAX_VALUE_BYTES
    digest = hashlib.sha256(inflated).digest()
    packed = zstandard.ZstdCompressor(level=3).compress(inflated)
    blob = encode_frame(ord("B"), digest + b"\1" + packed)
    entry = {"version": 2, "op": "set", "time_ns": 1, "hash": digest.hex()}
    entry["blob"] = ["", len(pristine), len(blob)]
    log.write_bytes(pristine + blob + encode_frame(ord("E"), _compact(entry)))
    quick, full = both(root, "--dag", DAG, "get", "k")
    assert quick is None
    assert isinstance(full, CorruptionError), full
    assert "declares 2097152 bytes" in str(full)


def test_the_quick_reads_schema_is_the_records():
    """peek's copy of the entry's field types (it cannot import msgspec) follows records.py."""
    import msgspec

    from castore.file import peek as peek_module
    from castore.records import Audit, Entry

    def ints(struct: type) -> set[str]:
        return {f.name for f in msgspec.structs.fields(struct) if f.type is int}

    required = {f.name for f in msgspec.structs.fields(Entry) if f.required}
    assert set(peek_module._INT_FIELDS) == ints(Entry)
    assert required == peek_module._REQUIRED
    assert ints(Audit) == peek_module._AUDIT_INTS
    assert all(f.type is str for f in msgspec.structs.fields(Audit) if f.type is not int)
