"""The check of a namespace's ``KEYS`` header: it must name the namespace (FORMAT.md §5).

Part of ``check`` (castore/file/check.py), which passes its checker in; export
and audit need the namespace's name, which only ``KEYS`` and the log headers
hold.
"""

from __future__ import annotations

import os
import stat

from castore.errors import UnsafePathError
from castore.file.checktree import Checking, frames_of
from castore.file.keyindex import KeyIndex, namespace_of
from castore.file.logkeys import keys_from_logs
from castore.file.records import KIND_HEADER, decode_header
from castore.file.staterecords import STATE_NAME, names_no_key
from castore.file.tree import Tree
from castore.keys import file_id

__all__ = ["check_keys_header"]


def _names_namespace(fs: Tree, keys_path: str, nsdir: str) -> bool:
    namespace = namespace_of(keys_path, fs)
    return namespace is not None and file_id(namespace) == os.path.basename(nsdir)


def _never_written(fs: Tree, nsdir: str) -> bool:
    """True if ``nsdir`` is empty, or holds only empty logs and ``STATE`` files naming no key.

    ``STATE`` and its temporary files (one being made or rewritten, or left by a
    kill): each must be whole and name no key. An empty log is what a first write
    killed before it listed its key leaves (reported apart). Any other file may
    be a key's.
    """
    for name in fs.listdir(nsdir):
        state = name == STATE_NAME or (
            name.startswith((f"{STATE_NAME}.", f".{STATE_NAME}.")) and name.endswith(".tmp")
        )
        path = os.path.join(nsdir, name)
        try:
            if name.endswith(".log") and _empty_file(fs.stat(path)):
                continue
            if not state or not names_no_key(fs.read_file(path)):
                return False
        except FileNotFoundError:
            continue  # renamed into place, or removed, since the listing
        except (UnsafePathError, OSError):
            return False  # not a file castore reads (check reports a planted one apart)
    return True


def _empty_file(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and not st.st_size


def check_keys_header(checker: Checking, scope: str, nsdir: str) -> None:
    """KEYS must name the namespace its directory is named after (export, audit need it)."""
    keys_path = os.path.join(nsdir, "KEYS")
    if _names_namespace(checker.fs, keys_path, nsdir):
        return
    try:  # a first write may be creating it: again, under its lock (held while appending)
        timeout = checker.backend.lock_timeout
        with checker.fs.open_locked(keys_path, os.O_RDONLY, timeout=timeout, shared=True) as fd:
            if not os.fstat(fd).st_size or _names_namespace(checker.fs, keys_path, nsdir):
                return  # empty: that write has not appended yet, or never committed
    except FileNotFoundError:  # harmless where no key was ever written: a first write that
        # wrote nothing (a guard failed), then maybe a list that recorded the namespace in
        # STATE; never removed (a long-lived handle may hold it open)
        if _never_written(checker.fs, nsdir):
            return
    recovered = None
    for file in sorted(checker.fs.listdir(nsdir)):
        path = os.path.join(nsdir, file)
        try:
            if not file.endswith(".log") or not stat.S_ISREG(checker.fs.stat(path).st_mode):
                continue
            _, frames = frames_of(checker.fs, path)
        except FileNotFoundError:
            continue  # compaction removed it since the listing
        header = next((f for f in frames if f.kind == KIND_HEADER), None)
        if header is not None:
            recovered = decode_header(header.payload).namespace
            break
    ok = recovered is not None and file_id(recovered) == os.path.basename(nsdir)
    repair = "rewrite KEYS naming it (from a log header)" if ok else "none: no log names it"
    checker.found(keys_path, "KEYS does not name its namespace", repair, checker.repair and ok)
    if checker.repair and ok and recovered is not None:  # with every key its logs name:
        # one rewrite, so that no kill leaves it listing a few (list would miss the rest)
        logged = tuple(sorted(keys_from_logs(checker.fs, nsdir, recovered, "")))
        index = KeyIndex(keys_path, checker.fs)
        index.rename_namespace(recovered, durable=checker.backend.durable, add=logged)
