"""Integrity check, repair and statistics over a whole store.

``check`` verifies every frame's checksum and framing, every blob against its
digest, that every live entry's value can be found and verified, that headers
name the refs their file names encode, that versions increase, and that the
derived files (``.vix``, ``KEYS``, the blob index) agree with the logs. Each
problem is a :class:`Finding` naming the file, what is wrong, and what repair
does. ``repair=True`` truncates torn tails, moves damaged logs' original
bytes to ``quarantine/<time>/`` before rewriting them with only their intact
frames (never deleting anything silently), and rebuilds derived files. A
value whose every copy is damaged cannot be repaired: its version stays in
the history and reading it keeps failing with a clear error.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable

import msgspec

from castore import _fs, versions
from castore.damage import damage_windows, lost_top, with_markers
from castore.errors import CastoreError, CorruptionError, UnsafePathError
from castore.frames import Frame, LogBytes, classify, scan_frames
from castore.indexes import Graveyard, decode_loc, floor_after_damage
from castore.keyindex import KeyIndex, namespace_of
from castore.keys import file_id
from castore.records import (
    FORMAT_VERSION,
    KIND_BLOB,
    KIND_ENTRY,
    KIND_HEADER,
    OP_DAMAGED,
    Entry,
    Header,
    decode_blob,
    decode_entry,
    decode_header,
    encode_record,
)
from castore.store import Store

__all__ = ["CheckReport", "Finding", "check"]


class Finding(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One problem: the file, what is wrong, what repair does (and whether it did)."""

    path: str
    problem: str
    repair: str
    repaired: bool = False
    severity: str = "error"  # "info": harmless (derived data, leftovers); ok stays true


class CheckReport(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Result of :func:`check`. ``ok`` means nothing is (still) wrong."""

    ok: bool
    logs: int
    entries: int
    blobs: int
    findings: list[Finding]


def _frames(fs: _fs.Tree, path: str) -> tuple[bytes, list[Frame]]:
    data = fs.read_file(path)
    return data, list(scan_frames(data))


def _classified(fs: _fs.Tree, path: str) -> tuple[bytes, LogBytes]:
    data = fs.read_file(path)
    return data, classify(data)


def _gaps(size: int, frames: list[Frame]) -> list[tuple[int, int]]:
    gaps, pos = [], 0
    for f in frames:
        if f.start > pos:
            gaps.append((pos, f.start))
        pos = f.end
    if pos < size:
        gaps.append((pos, size))
    return gaps


class _Checker:
    def __init__(self, store: Store, repair: bool) -> None:
        self.store = store
        self.backend = store.backend
        self.fs = store.backend.fs
        self.repair = repair
        self.findings: list[Finding] = []
        self.stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.entries = self.blobs = 0
        self.top: dict[str, int] = {}  # namespace directory -> highest version seen in it

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.store.root)

    def found(
        self, path: str, problem: str, repair: str, repaired: bool = False, severity: str = "error"
    ) -> None:
        self.findings.append(
            Finding(
                path=self.rel(path),
                problem=problem,
                repair=repair,
                repaired=repaired,
                severity=severity,
            )
        )

    def check_graves_against_logs(self, nsdir: str, records: dict[str, int]) -> None:
        """A re-created key's versions must all be above its grave (versions never repeat)."""
        for key, last in sorted(records.items()):
            path = os.path.join(nsdir, file_id(key) + ".log")
            try:
                _, frames = _frames(self.fs, path)
            except (FileNotFoundError, UnsafePathError):
                continue
            low = min(
                (decode_entry(f.payload).first for f in frames if f.kind == KIND_ENTRY),
                default=last + 1,
            )
            if low <= last:
                self.found(
                    path,
                    f"version {low} repeats a version of the key's removed life (GRAVES: {last})",
                    "none: the versions are already stored",
                )

    def planted(self, path: str) -> bool:
        """Report (and with repair, remove) a symbolic link planted in the store."""
        try:
            st = self.fs.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not stat.S_ISLNK(st.st_mode):
            return False
        self.found(
            path,
            "a symbolic link planted in the store (castore never follows one)",
            "remove the link (its target is not touched)",
            self.repair,
        )
        if self.repair:
            self.fs.unlink(path)
        return True

    def quarantine(self, path: str) -> str:
        return os.path.join(self.store.root, "quarantine", self.stamp, self.rel(path))

    def check_graves(self, nsdir: str) -> None:
        """GRAVES records must be intact (or covered by their twin); a repair sets a floor."""
        path = os.path.join(nsdir, "GRAVES")
        graves = Graveyard(path, self.fs)
        damage = graves.damage()
        if graves.floor:
            self.found(
                path,
                f"a damaged grave record was replaced by a floor: keys re-created here "
                f"start above version {graves.floor}",
                "none: nothing left to recover",
                severity="info",
            )
        self.check_graves_against_logs(nsdir, graves.records())
        if not damage:
            return
        start, end = damage[0]
        self.found(
            path,
            f"damaged bytes: {end - start} bytes at offset {start} (last versions of removed keys)",
            "copy to quarantine, keep the intact records, add a floor above every version",
            self.repair,
        )
        if self.repair:
            data = self.fs.read_file(path)
            known = max(graves.highest(), self.top.get(nsdir, 0))
            damaged = b"".join(data[s:e] for s, e in damage)
            graves.repair(floor_after_damage(known, damaged), self.quarantine(path), durable=True)

    def check_log(self, path: str, scope: str, keys: set[str]) -> None:
        data, log = _classified(self.fs, path)
        frames = log.frames
        if not frames and not log.damage:
            # A first write killed before (or while) writing its frames: nothing was
            # acknowledged. Removed under the log's lock if it is still empty then.
            problem = f"log without a valid frame ({len(data)} bytes)"
            self.found(path, problem, "copy to quarantine, remove", self.repair, "info")
            if self.repair:
                self.backend.rewrite(
                    path, lambda lg: None if lg.frames else [], keep_copy=self.quarantine(path)
                )
            return
        problems = self.damage_problems(data, log)
        bad_blobs = []
        for f in frames:
            if f.kind == KIND_BLOB:
                self.blobs += 1
                try:
                    decode_blob(f.payload, f.payload[:32].hex())
                except CastoreError as exc:
                    bad_blobs.append(f.start)
                    problems.append(f"blob at offset {f.start} fails verification: {exc}")
        header = next((f for f in frames if f.kind == KIND_HEADER), None)
        new_header = None
        if header is None:
            new_header = self.recover_header(path, scope, keys)
            repair = "rebuild it from KEYS" if new_header else "none: the log's ref is unknown"
            self.found(path, "no header frame", repair, self.repair and new_header is not None)
            ref_text = self.rel(path)
            if new_header is not None:
                problems.append("no header frame")
                ref_text = f"{new_header.scope}/{new_header.namespace}/{new_header.key}"
        else:
            ref_text = self.check_header(path, scope, header)
        entries = [decode_entry(f.payload) for f in frames if f.kind == KIND_ENTRY]
        self.entries += len(entries)
        nsdir = os.path.dirname(path)
        self.top[nsdir] = max([self.top.get(nsdir, 0), *(e.version for e in entries)])
        self.report_lost(path, ref_text, entries)
        if self.check_entries(path, ref_text, entries, frames, bad_blobs):
            problems.append("an entry points at a damaged copy; an intact copy is in this log")
        lost_by_index = self.lost_by_index(path, frames)
        if lost_by_index:
            problems.append(
                f"the version index records versions up to {lost_by_index}, "
                "which the log no longer holds (it lost acknowledged bytes)"
            )
        if header is not None and entries and decode_header(header.payload).key not in keys:
            self.found(path, "key missing from KEYS", "add it to KEYS", self.repair)
            if self.repair:
                h = decode_header(header.payload)
                self.backend.key_index(h.scope, h.namespace).add(h.key, h.namespace, durable=True)
        if problems:
            self.repair_log(path, problems, bad_blobs, new_header, header, lost_by_index)
        elif self.vix_out_of_step(path, frames):
            # Derived data a crash may leave behind; readers verify it, writers rebuild it.
            self.found(path, "version index out of step", "rebuild it", self.repair, "info")
            if self.repair:
                self.backend.rewrite(path, lambda lg: [(f.kind, f.payload) for f in lg.frames])

    def damage_problems(self, data: bytes, log: LogBytes) -> list[str]:
        """One line per damaged range and for a torn tail."""
        problems = []
        for start, end, before, after in damage_windows(log):
            top = lost_top(before, data[start:end]) if after is None else after - 1
            held = f" (versions {before + 1}-{top} may be there)" if top > before else ""
            problems.append(f"damaged bytes: {end - start} bytes at offset {start}{held}")
        if log.torn < log.size:
            problems.append(
                f"torn tail: {log.size - log.torn} bytes at offset {log.torn} "
                "(an append a crash cut short, never acknowledged)"
            )
        return problems

    def report_lost(self, path: str, ref: str, entries: list[Entry]) -> None:
        """Versions an earlier repair recorded as lost stay reported (as information)."""
        for entry in entries:
            if entry.op == OP_DAMAGED:
                self.found(
                    path,
                    f"{ref} versions {entry.first}-{entry.version} were lost to damage "
                    f"({entry.audit.reason})",
                    "none: nothing left to recover",
                    severity="info",
                )

    def repair_log(
        self,
        path: str,
        problems: list[str],
        bad_blobs: list[int],
        new_header: Header | None,
        header: Frame | None,
        lost_by_index: int,
    ) -> None:
        keep = self.quarantine(path)
        action = (
            "copy the log to quarantine, rewrite it with its intact frames, "
            "record the versions damage may hold as lost"
        )
        for problem in problems:
            if problem != "no header frame":  # already reported with its own repair
                self.found(path, problem, action, self.repair)
        if not self.repair:
            return
        if header is None and new_header is None:
            return  # the ref is unknown: nothing can be rewritten
        drop = set(bad_blobs)
        head = [] if new_header is None else [(KIND_HEADER, encode_record(new_header))]
        reason = f"original bytes in {self.rel(keep)}"

        def transform(lg: LogBytes) -> list[tuple[int, bytes]]:
            data = self.fs.read_file(path)
            return head + with_markers(lg, data, drop, reason, lost_by_index)

        self.backend.rewrite(path, transform, keep_copy=keep)

    def check_header(self, path: str, scope: str, header: Frame | None) -> str:
        if header is None:
            self.found(path, "no header frame", "none: the log's ref is unknown")
            return self.rel(path)
        h = decode_header(header.payload)
        expected = os.path.join(self.backend.refs, h.scope, file_id(h.namespace), file_id(h.key))
        if h.scope != scope or expected + ".log" != path:
            self.found(path, f"header names {h.scope}/{h.namespace}/{h.key}", "none")
        return f"{h.scope}/{h.namespace}/{h.key}"

    def recover_header(self, path: str, scope: str, keys: set[str]) -> Header | None:
        """The header a log lost, from KEYS: the key whose sha256 names the file."""
        nsdir = os.path.dirname(path)
        namespace = namespace_of(os.path.join(nsdir, "KEYS"), self.fs)
        if namespace is None or file_id(namespace) != os.path.basename(nsdir):
            return None
        name = os.path.basename(path)
        for key in keys:
            if file_id(key) + ".log" == name:
                return Header(format=FORMAT_VERSION, scope=scope, namespace=namespace, key=key)
        return None

    def check_entries(
        self, path: str, ref: str, entries: list[Entry], frames: list[Frame], bad: list[int]
    ) -> bool:
        """Report unreadable values; return True if a rewrite of this log would fix some."""
        last = 0
        good = [f for f in frames if f.kind == KIND_BLOB and f.start not in bad]
        own = {f.start: f.payload for f in good}
        intact = {f.payload[:32].hex() for f in good}
        fixable = False
        for entry in entries:
            if entry.version <= last:
                self.found(path, f"{ref}: version {entry.version} after {last}", "none")
            last = max(last, entry.version)
            if not entry.live or entry.op == OP_DAMAGED:
                continue
            loc = entry.blob
            payload = own.get(loc.offset) if loc is not None and not loc.log else None
            try:
                try:
                    if payload is None:
                        raise CorruptionError("no blob frame at the location hint")
                    decode_blob(payload, entry.hash)
                except CastoreError:
                    self.backend.blob_reader.read(entry, -1)  # another log, or the index
            except CastoreError as exc:
                if entry.hash in intact:
                    fixable = True  # the rewrite re-points the entry at the intact copy
                    continue
                self.found(
                    path,
                    f"{ref} version {entry.version}: value unreadable ({exc})",
                    "none: no intact copy of blob " + entry.hash,
                )
        return fixable

    def lost_by_index(self, path: str, frames: list[Frame]) -> int:
        """The highest version the version index records beyond the log's newest, or 0.

        The index is only ever built from the log, so versions it records
        that the log lacks were acknowledged and then lost (a truncation).
        """
        try:
            actual = self.fs.read_file(versions.vix_path(path))
        except (FileNotFoundError, UnsafePathError):
            return 0  # a planted link is reported on its own
        if not any(f.kind == KIND_ENTRY for f in frames):
            return 0  # compaction removed the key: GRAVES carries its last version
        expected = versions.rebuild(frames)
        if len(actual) <= len(expected) or not actual.startswith(expected):
            return 0
        tail = actual[len(expected) :]
        recorded = [
            len(expected) // 8 + 1 + i
            for i in range(len(tail) // 8)
            if int.from_bytes(tail[8 * i : 8 * i + 8], "little") > versions.ABSENT
        ]
        return max(recorded, default=0)

    def vix_out_of_step(self, path: str, frames: list[Frame]) -> bool:
        """True if the version index says something the log does not (lagging is fine)."""
        try:
            actual = self.fs.read_file(versions.vix_path(path))
        except (FileNotFoundError, UnsafePathError):
            return False  # built by the first reader that needs it; a link is reported apart
        return not versions.rebuild(frames).startswith(actual)


def check(
    store: Store, *, repair: bool = False, progress: Callable[[int], object] | None = None
) -> CheckReport:
    """Verify the whole store; with ``repair``, fix what can be fixed (see module docstring).

    Safe while other processes read and write: repairs happen under each
    log's lock.

    Raises:
        LockTimeoutError: a ref log stayed locked for the lock timeout (repair only).
    """
    checker = _Checker(store, repair)
    backend = store.backend
    fs = backend.fs
    logs = 0
    for name in ("FORMAT", "gc.lock", "index", "quarantine", "refs"):
        checker.planted(os.path.join(store.root, name))
    for scope in sorted(fs.listdir(backend.refs)):
        scope_dir = os.path.join(backend.refs, scope)
        if checker.planted(scope_dir) or not fs.isdir(scope_dir):
            continue
        for name in sorted(fs.listdir(scope_dir)):
            nsdir = os.path.join(scope_dir, name)
            if checker.planted(nsdir) or not fs.isdir(nsdir):
                continue
            keys_file = os.path.join(nsdir, "KEYS")
            keys: set[str] = set()
            if not checker.planted(keys_file):
                keys = set(KeyIndex(keys_file, fs).keys(""))
                _check_keys_header(checker, scope, nsdir)
            for file in sorted(fs.listdir(nsdir)):
                path = os.path.join(nsdir, file)
                if file == "KEYS" or checker.planted(path):
                    continue
                if file.endswith(".log"):
                    logs += 1
                    checker.check_log(path, scope, keys)
                    if progress is not None:
                        progress(1)
                elif file.endswith(".tmp"):
                    checker.found(path, "leftover temporary file", "gc removes it", severity="info")
            checker.check_graves(nsdir)
    _check_index(checker)
    return CheckReport(
        ok=all(f.repaired or f.severity == "info" for f in checker.findings),
        logs=logs,
        entries=checker.entries,
        blobs=checker.blobs,
        findings=checker.findings,
    )


def _check_keys_header(checker: _Checker, scope: str, nsdir: str) -> None:
    """KEYS must name the namespace its directory is named after (export, audit need it)."""
    keys_path = os.path.join(nsdir, "KEYS")
    namespace = namespace_of(keys_path, checker.fs)
    if namespace is not None and file_id(namespace) == os.path.basename(nsdir):
        return
    recovered = None
    for file in sorted(checker.fs.listdir(nsdir)):
        if file.endswith(".log") and stat.S_ISREG(
            checker.fs.stat(os.path.join(nsdir, file)).st_mode
        ):
            _, frames = _frames(checker.fs, os.path.join(nsdir, file))
            header = next((f for f in frames if f.kind == KIND_HEADER), None)
            if header is not None:
                recovered = decode_header(header.payload).namespace
                break
    ok = recovered is not None and file_id(recovered) == os.path.basename(nsdir)
    repair = "rewrite KEYS naming it (from a log header)" if ok else "none: no log names it"
    checker.found(keys_path, "KEYS does not name its namespace", repair, checker.repair and ok)
    if checker.repair and ok and recovered is not None:
        KeyIndex(keys_path, checker.fs).rename_namespace(recovered, durable=checker.store.durable)


def _check_index(checker: _Checker) -> None:
    """The newest index record of each digest must point at a valid copy.

    Older records that a later one supersedes (after a log rewrite) are
    harmless hints and are not reported.
    """
    backend = checker.backend
    stale = 0
    folder = os.path.join(checker.store.root, "index")
    fs = checker.fs
    for name in sorted(fs.listdir(folder)) if fs.isdir(folder) else []:
        if not name.endswith(".idx") or checker.planted(os.path.join(folder, name)):
            continue
        data, frames = _frames(fs, os.path.join(folder, name))
        stale += bool(_gaps(len(data), frames))
        newest = {f.payload[:32]: f.payload for f in frames}
        for digest, payload in newest.items():
            try:
                ok = backend.blob_reader.read_at(decode_loc(payload), -1, digest.hex()) is not None
            except CastoreError:
                ok = False
            stale += not ok
    if stale:
        # Harmless (every location is verified before use; a stale one only costs a
        # chance to deduplicate), so reported as information.
        checker.found(
            folder,
            f"{stale} stale or damaged blob index records",
            "rebuild the index",
            checker.repair,
            severity="info",
        )
        if checker.repair:
            backend.rebuild_blob_index()
