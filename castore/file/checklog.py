"""The checks and repairs of one ref log (part of ``check``, castore/file/check.py).

Every frame's checksum and framing, every blob against its digest and as
JSON, every live entry's value found and verified, headers naming the refs
their file names encode, versions increasing, and the derived files (``.vix``,
``KEYS``, ``STATE``, the blob index) in step with the log. Each problem is a
:class:`Finding`; ``repair=True`` cuts torn tails, rewrites damaged logs with
their intact frames in order (the original bytes kept in
``quarantine/<time>/``) and rebuilds derived files.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import msgspec

from castore.codec import check_stored
from castore.errors import CastoreError, CorruptionError, UnsafePathError
from castore.file import checkread, cuts, versionindex
from castore.file.blobsearch import BlobSearch
from castore.file.checklost import Recorded, note_behind, own_grave
from castore.file.checkremoved import check_put_back, check_removed, names_path
from castore.file.damage import (
    RepairPlan,
    damage_windows,
    disorder_problem,
    hides_nothing,
    in_order,
    rewritten,
    window_top,
)
from castore.file.frames import FORMAT_VERSION, Frame, LogBytes, classify
from castore.file.graves import Graveyard
from castore.file.keyindex import namespace_of
from castore.file.logkeys import listed_now
from castore.file.records import (
    KIND_BLOB,
    KIND_ENTRY,
    KIND_HEADER,
    Header,
    decode_blob,
    decode_entry,
    decode_header,
)
from castore.file.rewrite import utc_stamp
from castore.keys import Ref, file_id
from castore.records import OP_DAMAGED, Entry
from castore.reports import Finding, lost_range

if TYPE_CHECKING:
    from castore.file.backend import FileBackend

__all__ = ["LogChecker"]

_REWRITE = (
    "copy the log to quarantine, rewrite it with its intact frames in order, "
    "record the versions damage may hold as lost"
)


class LogChecker:
    """Checks (and with ``repair``, repairs) logs one at a time; collects the findings."""

    def __init__(self, backend: FileBackend, repair: bool) -> None:
        self.backend, self.fs, self.repair = backend, backend.fs, repair
        self.timeout = backend.lock_timeout  # for a log's shared lock
        self.findings: list[Finding] = []
        self.first = 0  # where the findings of the log being checked start
        self.stamp = utc_stamp()  # to the microsecond: two repairs share no quarantine folder
        self.entries = self.blobs = 0
        self.top: dict[str, int] = {}  # namespace directory -> highest version seen in it
        self.search = BlobSearch(self.fs, backend.refs)  # a value's copy in any log
        self.unindexed = 0  # values only a rebuilt blob index leads to
        self.recorded: dict[str, Recorded] = {}  # log path -> STATE's record
        self.behind: list[str] = []  # keys whose last STATE record is below their log's newest
        self.keys_kept = True  # the namespace's KEYS was a file when its check began
        self._graves: dict[str, Graveyard] = {}  # namespace directory -> its GRAVES

    def rel(self, path: str) -> str:
        """``path`` relative to the store root, as findings name files."""
        return os.path.relpath(path, self.backend.root)

    def found(
        self, path: str, problem: str, repair: str, repaired: bool = False, severity: str = "error"
    ) -> None:
        """Record a finding about ``path``."""
        self.findings.append(
            Finding(
                path=self.rel(path),
                problem=problem,
                repair=repair,
                repaired=repaired,
                severity=severity,
            )
        )

    def graves(self, nsdir: str) -> Graveyard:
        """The ``GRAVES`` of namespace directory ``nsdir``, read once per check.

        Each question re-reads what changed (a ``stat`` when nothing did), as
        a new :class:`Graveyard` would, without parsing the file once per log.
        """
        graves = self._graves.get(nsdir)
        if graves is None:
            graves = self._graves[nsdir] = Graveyard(os.path.join(nsdir, "GRAVES"), self.fs)
        return graves

    def quarantine(self, path: str) -> str:
        """Where this run keeps the original bytes of ``path`` before repairing it."""
        return os.path.join(self.backend.root, "quarantine", self.stamp, self.rel(path))

    def check_log(self, path: str, scope: str, keys: set[str]) -> None:
        """Check one log of ``scope`` (``keys``: its namespace's KEYS); repair if asked."""
        self.first = len(self.findings)
        data, vix, file = checkread.log_and_index(self.fs, path, self.timeout)
        log = classify(data)
        frames = log.frames
        nsdir = os.path.dirname(path)
        grave = self.grave_of(path, frames, keys)  # a repair's floor too (check_listed)
        life = own_grave(self, path, frames, grave, vix, keys)  # its own versions above
        lost_by_index, lost_why = self.lost_evidence(path, vix, frames, life)
        if not frames and not log.damage and not lost_by_index:
            self.without_frames(path, len(data))
            return
        problems = self.damage_problems(log, life)
        bad_blobs = self.bad_blobs(frames, problems)
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
        placed = [(f.start, decode_entry(f.payload)) for f in frames if f.kind == KIND_ENTRY]
        entries, disordered = in_order(placed)
        problems += [disorder_problem(ref_text, v, at) for at, v in disordered.items()]
        self.entries += len(entries)
        self.top[nsdir] = max([self.top.get(nsdir, 0), *(e.version for e in entries)])
        own = decode_header(header.payload) if header is not None else None
        if check_put_back(self, path, scope, own or new_header, entries, lost_by_index, keys):
            return  # an older copy of a removed key's log: its damage goes with it
        self.report_lost(path, ref_text, entries)
        fixable, lost_values = self.check_entries(path, ref_text, entries, frames, bad_blobs)
        if fixable:
            problems.append("an entry points at a damaged copy; an intact copy is in this log")
        if lost_by_index:
            problems.append(
                f"{lost_why}, which the log no longer holds (it lost acknowledged bytes)"
            )
        if own is not None and not entries and not problems and not lost_by_index:
            check_removed(self, path, own, frames, grave)
        if own is not None and entries:
            self.check_listed(path, own, keys, file, entries[-1], grave)
        if problems or lost_values:
            drop = {*bad_blobs, *disordered}
            plan = RepairPlan(drop, new_header, lost_by_index, lost_values, life, own, log)
            self.repair_log(path, problems, plan, known_ref=header is not None)
        elif vix is not None and not versionindex.rebuild(frames).startswith(vix):
            # Derived data a crash may leave behind; readers verify it, writers rebuild it.
            self.found(path, "version index out of step", "rebuild it", self.repair, "info")
            if self.repair:
                self.backend.rewrite(path, lambda lg: [(f.kind, f.payload) for f in lg.frames])

    def without_frames(self, path: str, size: int) -> None:
        """Report a log of ``size`` bytes without a valid frame; repair: remove it.

        A first write killed before (or while) writing its frames: nothing was
        acknowledged. Removed under the log's lock if it is still empty then.
        """
        problem = f"log without a valid frame ({size} bytes)"
        self.found(path, problem, "copy to quarantine, remove", self.repair, "info")
        if self.repair:
            self.backend.rewrite(
                path, lambda lg: None if lg.frames else [], keep_copy=self.quarantine(path)
            )

    def grave_of(self, path: str, frames: list[Frame], keys: set[str]) -> int:
        """The last version the key of this log had before compaction removed it (0 if none)."""
        header = next((f for f in frames if f.kind == KIND_HEADER), None)
        key = decode_header(header.payload).key if header is not None else None
        graves = self.graves(os.path.dirname(path))
        try:
            if key is None:
                name = os.path.basename(path)
                known = keys | set(graves.records())
                key = next((k for k in known if file_id(k) + ".log" == name), None)
            return 0 if key is None else graves.version_of(key)
        except UnsafePathError:
            return 0  # planted in place of GRAVES: reported by the walk
        except CorruptionError:
            return graves.highest()  # the damage itself is reported with GRAVES

    def bad_blobs(self, frames: list[Frame], problems: list[str]) -> list[int]:
        """Offsets of intact blob frames whose data fails verification (reported)."""
        bad = []
        for f in frames:
            if f.kind == KIND_BLOB:
                self.blobs += 1
                try:  # a value is JSON, as a read decodes it
                    check_stored(decode_blob(f.payload, d := f.payload[:32].hex()), f"blob {d}")
                except CastoreError as exc:
                    bad.append(f.start)
                    problems.append(f"blob at offset {f.start} fails verification: {exc}")
        return bad

    def damage_problems(self, log: LogBytes, grave: int) -> list[str]:
        """One line per damaged range (with the versions it may hold) and for a torn tail."""
        windows = damage_windows(log, grave)
        problems = []
        for start, end in log.damage:
            window = next((w for w in windows if w.start <= start < w.end), None)
            held = ""
            if window is not None:
                held = f" (versions {window.low}-{window_top(log, window)} may be there)"
            elif hides_nothing(log, start, end):
                held = " (a blob frame)"
            problems.append(f"damaged bytes: {end - start} bytes at offset {start}{held}")
        if log.torn < log.size:
            problems.append(
                f"torn tail: {log.size - log.torn} bytes at offset {log.torn} "
                "(an append a crash cut short, never acknowledged)"
            )
        return problems

    def report_lost(self, path: str, ref: str, entries: list[Entry]) -> None:
        """Versions an earlier repair recorded as lost stay reported (as information).

        And a ``STATE`` that records the key below its newest entry is noted
        (:func:`note_behind`).
        """
        note_behind(self, path, entries[-1].version if entries else 0)
        for entry in entries:
            if entry.op == OP_DAMAGED:
                self.found(
                    path, lost_range(ref, entry), "none: nothing left to recover", severity="info"
                )

    def repair_log(
        self, path: str, problems: list[str], plan: RepairPlan, *, known_ref: bool
    ) -> None:
        """Rewrite a damaged log from its intact frames (original kept in quarantine)."""
        keep = self.quarantine(path)
        for problem in problems:
            if problem != "no header frame":  # already reported with its own repair
                self.found(path, problem, _REWRITE, self.repair)
        if not self.repair:
            return
        if not known_ref and plan.header is None:
            return  # the ref is unknown: nothing can be rewritten
        reason = f"original bytes in {self.rel(keep)}"
        changed: list[bool] = []  # another repair (or a writer) since: the plan is stale

        def transform(lg: LogBytes) -> list[tuple[int, bytes]] | None:
            frames = rewritten(plan, lg, reason)
            changed.extend([True] * (frames is None))
            return frames

        try:
            new = self.backend.rewrite(path, transform, keep_copy=keep)
        except UnsafePathError as exc:  # a link planted under quarantine/: this log only
            self.unrepaired(path, f"not repaired: {exc.detail}")
            return
        if changed:
            self.unrepaired(path, "the log changed while check read it")
            return
        h = plan.header or plan.known
        if new and h is not None and any(f.kind == KIND_ENTRY for f in new):
            ref = Ref(h.scope, h.namespace, h.key)
            self.backend.names.list_key(ref, durable=True)  # lost versions: the key exists

    def unrepaired(self, path: str, why: str) -> None:
        """Mark the findings about the log being checked as not repaired; say ``why``."""
        rel, first = self.rel(path), self.first
        self.findings[first:] = [
            msgspec.structs.replace(f, repaired=False) if f.path == rel else f
            for f in self.findings[first:]
        ]
        self.found(path, why, "none: run check --repair again")

    def check_header(self, path: str, scope: str, header: Frame | None) -> str:
        """Check the log's header names the ref its file name encodes; return the ref text."""
        if header is None:
            self.found(path, "no header frame", "none: the log's ref is unknown")
            return self.rel(path)
        h = decode_header(header.payload)
        if not names_path(self.backend.refs, path, scope, h):
            self.found(path, f"header names {h.scope}/{h.namespace}/{h.key}", "none")
        return f"{h.scope}/{h.namespace}/{h.key}"

    def recover_header(self, path: str, scope: str, keys: set[str]) -> Header | None:
        """The header a log lost: the key (from KEYS or GRAVES) whose sha256 names the file."""
        nsdir = os.path.dirname(path)
        namespace = namespace_of(os.path.join(nsdir, "KEYS"), self.fs)
        if namespace is None or file_id(namespace) != os.path.basename(nsdir):
            return None
        name = os.path.basename(path)
        removed = self.graves(nsdir).records()
        for key in keys | set(removed):
            if file_id(key) + ".log" == name:
                return Header(format=FORMAT_VERSION, scope=scope, namespace=namespace, key=key)
        return None

    def check_entries(
        self, path: str, ref: str, entries: list[Entry], frames: list[Frame], bad: list[int]
    ) -> tuple[bool, set[int]]:
        """Report unreadable values.

        Returns:
            Whether a rewrite of this log re-points some entry at an intact copy
            in it, and the versions whose value has no intact copy anywhere
            (a repair records them as lost).
        """
        good = [f for f in frames if f.kind == KIND_BLOB and f.start not in bad]
        own = {f.start: f.payload for f in good}
        intact = {f.payload[:32].hex() for f in good}
        fixable = False
        lost: set[int] = set()
        for entry in entries:
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
                holder = self.search.holder(entry.hash)
                if holder is not None:  # only the index fails to lead to it: never lost
                    self.unindexed += 1  # check_index rebuilds the index
                    problem = f"{ref} version {entry.version}: the blob index does not lead"
                    where = f"{problem} to its value in {self.rel(holder)}"
                    self.found(path, where, "rebuild the blob index", self.repair)
                    continue
                lost.add(entry.version)
                self.found(
                    path,
                    f"{ref} version {entry.version}: value unreadable ({exc})",
                    "record the value as lost (the entry stays, as 'damaged'); "
                    f"no intact copy of blob {entry.hash}",
                    self.repair,
                )
        return fixable, lost

    def vix_bytes(self, path: str) -> bytes | None:
        """The version index of the log at ``path``; None if absent (a link is reported apart)."""
        return checkread.vix_bytes(self.fs, path)

    def check_listed(
        self, path: str, h: Header, keys: set[str], file: tuple[int, int], newest: Entry, grave: int
    ) -> None:
        """``KEYS`` lists the key of log ``file`` (unless a compaction stopped: FORMAT.md §6)."""
        if h.key in keys or listed_now(self.fs, path, h.key, self.timeout, file):
            return
        problem, repair, severity = "key missing from KEYS", "add it to KEYS", "error"
        if not newest.live and newest.version <= grave:
            problem = "a deleted key that a compaction stopped after taking out of KEYS"
            repair, severity = "add it to KEYS (a floor only covers it)", "info"
            if newest.version <= self.graves(os.path.dirname(path)).records().get(h.key, 0):
                repair = "none: the next compact ends the removal"  # compact._stopped does
        repairing = self.repair and not repair.startswith("none")
        self.found(path, problem, repair, repairing, severity)
        if repairing:
            self.backend.names.list_key(Ref(h.scope, h.namespace, h.key), durable=True)

    def lost_evidence(
        self, path: str, vix: bytes | None, frames: list[Frame], grave: int
    ) -> tuple[int, str]:
        """The highest version, above the key's grave, that the log no longer holds, and why.

        Readers' and writers' rules (FORMAT.md §7): a version the log's index records
        past its newest entry (:func:`cuts.cut_in`), or one ``STATE`` records for a log
        without entries; and check's own: ``STATE``'s last record of a key above its
        log's newest entry (a cut readers cannot see). (0, "") when nothing is lost.
        """
        by_index = cuts.cut_in(vix, frames) if vix is not None else 0
        versions = [decode_entry(f.payload).version for f in frames if f.kind == KIND_ENTRY]
        # The highest version recorded is the last record's when that is settled:
        # versions only grow, and a change appends P first (FORMAT.md §5).
        _, recorded, settled, _ = self.recorded.get(path, ("", 0, False, False))
        # No entry, or the last record of an unchanged log above its newest entry: a cut.
        by_state = recorded if not versions or (settled and recorded > max(versions)) else 0
        if max(by_index, by_state) <= grave:
            return 0, ""
        if by_index >= by_state:
            return by_index, f"the version index records versions up to {by_index}"
        return by_state, f"the namespace's STATE records version {by_state}"
