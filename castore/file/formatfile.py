"""The ``FORMAT`` file: magic and format version of a store (docs/FORMAT.md §2, §10)."""

from __future__ import annotations

import os
import stat

from castore.errors import FormatVersionError
from castore.file import fileio
from castore.file.frames import FORMAT_VERSION
from castore.file.tree import Tree

__all__ = ["FORMAT_MAGIC", "UPGRADING", "check_format", "format_line", "read_format"]

FORMAT_MAGIC = "castore-store"  # first word of the FORMAT file (docs/FORMAT.md §2)
UPGRADING = "upgrading-to-2"  # FORMAT's version word while `castore upgrade` runs
_FORMAT_MAX_BYTES = 64  # a longer FORMAT file is not one castore wrote


def format_line() -> bytes:
    """The content of a new store's ``FORMAT`` file."""
    return f"{FORMAT_MAGIC} {FORMAT_VERSION}\n".encode()


def read_format(fs: Tree, marker: str) -> str | None:
    """The FORMAT file's text, or None when it does not exist.

    Raises:
        FormatVersionError: it is not a short ASCII text file.
    """
    try:
        fd = fs.open(marker, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FormatVersionError(f"{marker}: not a castore store (FORMAT is not a file)")
        raw = fileio.read_at(fd, 0, _FORMAT_MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > _FORMAT_MAX_BYTES or not raw.isascii():
        raise FormatVersionError(f"{marker}: damaged or not a castore store (not a FORMAT file)")
    return raw.decode("ascii")


def check_format(marker: str, text: str) -> None:
    """Accept only this castore's magic and format version.

    Raises:
        FormatVersionError: another magic, an older format (names ``castore
            upgrade``) or a newer one.
    """
    words = text.split()
    if len(words) != 2 or words[0] != FORMAT_MAGIC:
        raise FormatVersionError(f"{marker}: damaged or not a castore store (bad magic)")
    if words[1] == "1":
        raise FormatVersionError(
            f"{marker}: format version 1 (written by an older castore); "
            "run `castore upgrade` once to convert it to version "
            f"{FORMAT_VERSION}"
        )
    if words[1] == UPGRADING:
        raise FormatVersionError(
            f"{marker}: an upgrade of this store was interrupted; "
            "run `castore upgrade` again to finish it"
        )
    if words[1] != str(FORMAT_VERSION):
        raise FormatVersionError(
            f"{marker}: format version {words[1]!r}, this castore reads {FORMAT_VERSION}"
        )
