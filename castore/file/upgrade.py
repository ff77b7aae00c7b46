"""Convert a store written by an older castore to the current format (docs/FORMAT.md §10).

Format 1 kept ``GRAVES`` as unchecked text lines, ``hex(key) " " version``;
format 2 keeps them as checksummed ``G`` frames, each record twice. The
conversion rewrites every ``GRAVES`` file atomically (its original is kept
in ``quarantine/<time>/``), then replaces ``FORMAT``. Run it while no other
castore process uses the store; it is idempotent, and a crash part-way
leaves a store that the next run finishes.
"""

from __future__ import annotations

import os

from castore.errors import FormatVersionError
from castore.file.formatfile import FORMAT_MAGIC
from castore.file.frames import FORMAT_VERSION, classify, encode_frame
from castore.file.modes import MODES, modes_of_dir
from castore.file.records import KIND_GRAVE, Grave, encode_record
from castore.file.rewrite import utc_stamp
from castore.file.tree import Tree
from castore.reports import UpgradeReport

__all__ = ["upgrade"]

_HEX = frozenset(b"0123456789abcdef")


def _version_of(fs: Tree, root: str) -> int:
    marker = os.path.join(root, "FORMAT")
    try:
        words = fs.read_file(marker, 64).split()
    except FileNotFoundError:
        raise FormatVersionError(f"{root}: no FORMAT file: not a castore store") from None
    if len(words) != 2 or words[0] != FORMAT_MAGIC.encode() or not words[1].isdigit():
        raise FormatVersionError(f"{marker}: damaged or not a castore store (bad magic)")
    return int(words[1])


def _graves_v1(data: bytes) -> dict[str, int]:
    """Format 1 GRAVES lines: complete ``hex(key) version`` lines; the highest version wins."""
    out: dict[str, int] = {}
    for line in data[: data.rfind(b"\n") + 1].split(b"\n"):
        parts = line.split(b" ")
        if len(parts) == 2 and _HEX.issuperset(parts[0]) and parts[1].isdigit():
            try:
                key = bytes.fromhex(parts[0].decode("ascii")).decode("utf-8")
            except ValueError:
                continue
            out[key] = max(out.get(key, 0), int(parts[1]))
    return out


def _convert(fs: Tree, path: str, keep: str) -> None:
    data = fs.read_file(path)
    if data and not classify(data).damage and classify(data).frames:
        return  # already converted by an interrupted earlier run
    fs.makedirs(os.path.dirname(keep), durable=True)
    fs.atomic_write(keep, data, durable=True)
    frames = [
        encode_frame(KIND_GRAVE, encode_record(Grave(key=k, version=v)))
        for k, v in sorted(_graves_v1(data).items())
    ]
    fs.atomic_write(path, b"".join(f + f for f in frames), durable=True)


def _graves_files(fs: Tree, refs: str) -> list[str]:
    """Every ``refs/<scope>/<ns-id>/GRAVES`` (real directories and files only)."""
    found = []
    for scope in fs.listdir(refs) if fs.isdir(refs) else []:
        scope_dir = os.path.join(refs, scope)
        for name in fs.listdir(scope_dir) if fs.isdir(scope_dir) else []:
            path = os.path.join(scope_dir, name, "GRAVES")
            if fs.isdir(os.path.join(scope_dir, name)) and fs.exists(path):
                found.append(path)
    return sorted(found)


def upgrade(root: str, mode: str | None = None) -> UpgradeReport:
    """Convert the store at ``root`` to :data:`~castore.file.frames.FORMAT_VERSION`.

    ``mode`` (``private``, ``group``; None follows the root) is what the
    files it writes get (docs/FORMAT.md §1).

    Raises:
        FormatVersionError: ``root`` is not a castore store, or is newer.
    """
    if not os.path.isdir(root):
        raise FormatVersionError(f"{root}: no such directory: not a castore store")
    fs = Tree(root, MODES[mode] if mode is not None else modes_of_dir(os.stat(root).st_mode))
    before = _version_of(fs, root)
    if before > FORMAT_VERSION:
        raise FormatVersionError(f"{root}: format {before} is newer than this castore's")
    converted = 0
    if before < FORMAT_VERSION:
        stamp = utc_stamp()
        refs = os.path.join(root, "refs")
        for path in _graves_files(fs, refs):
            rel = os.path.relpath(path, root)
            _convert(fs, path, os.path.join(root, "quarantine", stamp, rel))
            converted += 1
        fs.atomic_write(
            os.path.join(root, "FORMAT"),
            f"{FORMAT_MAGIC} {FORMAT_VERSION}\n".encode(),
            durable=True,
        )
    return UpgradeReport(from_version=before, to_version=FORMAT_VERSION, graves_converted=converted)
