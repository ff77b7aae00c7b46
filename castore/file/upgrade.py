"""Convert a store written by an older castore to the current format (docs/FORMAT.md §10).

Format 1 kept ``GRAVES`` as unchecked text lines, ``hex(key) " " version``;
format 2 keeps them as checksummed ``G`` frames, each record twice. The
conversion first replaces ``FORMAT`` by a marker every castore refuses
(format 1 readers included), then rewrites every ``GRAVES`` file atomically
(its original is kept in ``quarantine/<time>/``), then writes the new
``FORMAT``. Run it while no other castore process uses the store; it is
idempotent, and a crash part-way leaves a store that no castore opens until
the next run finishes it.

What it cannot read is never dropped: a line that is not a whole record
(damage, or a last line a crash cut short) is carried into the new file as
damaged bytes, which ``check`` reports and ``check --repair`` replaces by a
floor above every version (§7), and the report names the file.
"""

from __future__ import annotations

import os
import stat

from castore.errors import FormatVersionError, UnsafePathError
from castore.file.formatfile import FORMAT_MAGIC, UPGRADING, read_format
from castore.file.frames import FORMAT_VERSION, classify, encode_frame
from castore.file.graves import twinned
from castore.file.modes import MODES, modes_of_dir
from castore.file.records import KIND_GRAVE, Grave, encode_record
from castore.file.rewrite import utc_stamp
from castore.file.tree import Tree
from castore.reports import MAX_COUNT, UpgradeReport

__all__ = ["upgrade"]

_HEX = frozenset(b"0123456789abcdef")
_UNREAD = b"\xff"  # starts each piece carried over as damage: never hex, never a frame kind
_MAX_DIGITS = len(str(MAX_COUNT))


def _version_of(fs: Tree, root: str) -> int:
    """1 (or an upgrade left part-way), or this castore's version; anything else is refused."""
    marker = os.path.join(root, "FORMAT")
    text = read_format(fs, marker)
    if text is None:
        raise FormatVersionError(f"{root}: no FORMAT file: not a castore store")
    words = text.split()
    if len(words) != 2 or words[0] != FORMAT_MAGIC:
        raise FormatVersionError(f"{marker}: damaged or not a castore store (bad magic)")
    known = {"1": 1, UPGRADING: 1, str(FORMAT_VERSION): FORMAT_VERSION}
    if words[1] not in known:
        raise FormatVersionError(
            f"{marker}: format version {words[1]!r}, this castore upgrades 1 to {FORMAT_VERSION}"
        )
    return known[words[1]]


def _line(line: bytes) -> tuple[str, int] | None:
    """A format 1 record, ``hex(utf8(key)) " " version``, or None if it is not one."""
    parts = line.split(b" ")
    if len(parts) != 2 or not parts[0] or not _HEX.issuperset(parts[0]):
        return None
    if not (parts[1].isdigit() and parts[1].isascii() and len(parts[1]) <= _MAX_DIGITS):
        return None
    try:
        key = bytes.fromhex(parts[0].decode("ascii")).decode("utf-8")
    except ValueError:
        return None
    version = int(parts[1])
    return (key, version) if 0 < version <= MAX_COUNT else None


def _read_text(parts: list[bytes]) -> tuple[dict[str, int], bytes]:
    """Format 1 records in ``parts`` (the highest version of a key wins) and what is not one.

    Only whole lines are records: an unfinished last line is kept as unread bytes. Each
    unread piece starts with :data:`_UNREAD` (no line does): pieces joined, or read again
    by a later run, never make a line that was not there.
    """
    graves: dict[str, int] = {}
    unread: list[bytes] = []
    for part in parts:
        *lines, rest = part.split(b"\n")
        for line in lines:
            record = _line(line)
            if record is None:
                unread.append(_marked(line + b"\n"))
            else:
                graves[record[0]] = max(graves.get(record[0], 0), record[1])
        if rest:
            unread.append(_marked(rest))
    return graves, b"".join(unread)


def _marked(piece: bytes) -> bytes:
    return piece if piece.startswith(_UNREAD) else _UNREAD + piece


def _converted(data: bytes) -> tuple[bytes, bool] | None:
    """The format 2 bytes of a ``GRAVES`` file, whether they carry damage; None: already so.

    A file with intact ``G`` frames was converted by an earlier run: its frames stay, and
    only bytes outside them (text an older castore appended after an interrupted upgrade)
    are read as format 1 lines. Bytes that are no record are put first, before a frame,
    so every reader sees them as damage (§7), never as a torn tail.
    """
    scan = classify(data)
    if scan.frames:
        if not scan.damage and scan.torn == len(data):
            return None
        kept = b"".join(data[f.start : f.end] for f in scan.frames)
        text = [data[start:end] for start, end in scan.damage] + [data[scan.torn :]]
    else:
        kept, text = b"", [data]
    graves, unread = _read_text(text)
    records = [encode_record(Grave(key=k, version=v)) for k, v in sorted(graves.items())]
    if unread and not kept and not records:  # a frame after the damage: never a torn tail
        records.append(encode_record(Grave(version=0)))  # a floor of 0: below every version
    if unread:  # damage the size of the frame after it would read as its twin
        first = scan.frames[0] if kept else None
        size = first.end - first.start if first else len(encode_frame(KIND_GRAVE, records[0]))
        unread += _UNREAD * (size == len(unread))
    return unread + kept + twinned(records), bool(unread)


def _graves_files(fs: Tree, root: str) -> list[str]:
    """Every ``refs/<scope>/<ns-id>/GRAVES``; what is not a real directory there is refused.

    Raises:
        UnsafePathError: a link or a file in place of ``refs``, a scope or a namespace
            directory, or anything but a regular file in place of a ``GRAVES`` (it could
            not be converted; nothing was changed).
    """

    def present(path: str, want: int = stat.S_IFDIR) -> bool:
        try:
            mode = fs.stat(path).st_mode
        except FileNotFoundError:
            return False
        if stat.S_IFMT(mode) != want:
            what = "directory" if want == stat.S_IFDIR else "regular file"
            raise UnsafePathError(
                f"{path}: not a {what} (a link or something else in its place): "
                "move it away and run `castore upgrade` again; nothing was changed"
            )
        return True

    refs = os.path.join(root, "refs")
    found = []
    for scope in fs.listdir(refs) if present(refs) else []:
        scope_dir = os.path.join(refs, scope)
        for name in fs.listdir(scope_dir) if present(scope_dir) else []:
            nsdir = os.path.join(scope_dir, name)
            graves = os.path.join(nsdir, "GRAVES")
            if present(nsdir) and present(graves, stat.S_IFREG):
                found.append(graves)
    return sorted(found)


def _write_format(fs: Tree, root: str, version: str) -> None:
    fs.atomic_write(
        os.path.join(root, "FORMAT"), f"{FORMAT_MAGIC} {version}\n".encode(), durable=True
    )


def upgrade(root: str, mode: str | None = None) -> UpgradeReport:
    """Convert the store at ``root`` to :data:`~castore.file.frames.FORMAT_VERSION`.

    ``mode`` (``private``, ``group``; None follows the root) is what the
    files it writes get (docs/FORMAT.md §1).

    Raises:
        FormatVersionError: ``root`` is not a castore store, or of a version it does not know.
        UnsafePathError: something other than a directory in place of a store directory.
        CorruptionError: a ``GRAVES`` file cannot be read (a link, a FIFO).
    """
    if not os.path.isdir(root):
        raise FormatVersionError(f"{root}: no such directory: not a castore store")
    fs = Tree(root, MODES[mode] if mode is not None else modes_of_dir(os.stat(root).st_mode))
    before = _version_of(fs, root)
    converted, damaged = 0, []
    if before < FORMAT_VERSION:
        files = _graves_files(fs, root)  # refused before anything changes
        _write_format(fs, root, UPGRADING)
        stamp = utc_stamp()
        for path in files:
            rel = os.path.relpath(path, root)
            data = fs.read_file(path)
            new = _converted(data)
            if new is None:
                continue
            keep = os.path.join(root, "quarantine", stamp, rel)
            fs.makedirs(os.path.dirname(keep), durable=True)
            fs.atomic_write(keep, data, durable=True)
            fs.atomic_write(path, new[0], durable=True)
            converted += 1
            if new[1]:
                damaged.append(rel)
        _write_format(fs, root, str(FORMAT_VERSION))
    return UpgradeReport(
        from_version=before,
        to_version=FORMAT_VERSION,
        graves_converted=converted,
        graves_damaged=damaged,
    )
