"""Import a Dagu dag-state directory (``v1/<scope>/<hex ns>/<hex key>.json``) into castore.

Each Dagu record becomes one castore version with Dagu's version number,
hash (verified by re-normalizing the value and re-hashing it), created and
updated times and ``updated_by`` audit fields, so workflows that pass
``expected_version`` keep working after the move. The source is only read.
Files that cannot be imported are reported with a reason, never guessed at.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator

import msgspec

from castore import codec
from castore.errors import CastoreError
from castore.filestore import Decide, LogView, Write
from castore.keys import SCOPES, Ref, validate_key, validate_namespace
from castore.records import OP_SET, Audit, Entry
from castore.store import Store

__all__ = ["DaguImport", "DaguRecord", "import_dagu", "parse_go_time"]

_TIME = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)$"
)


class DaguUpdatedBy(msgspec.Struct, frozen=True):
    """Dagu's ``updated_by``."""

    dag_name: str = ""
    dag_run_id: str = ""
    attempt_id: str = ""
    step_name: str = ""


class DaguRecord(msgspec.Struct, frozen=True):
    """One Dagu state record file."""

    value: msgspec.Raw
    version: int
    hash: str
    created_at: str
    updated_at: str
    scope: str = ""
    namespace: str = ""
    key: str = ""
    updated_by: DaguUpdatedBy | None = None


class DaguImport(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    """The outcome for one file: imported (with the ref and version) or skipped (with why)."""

    file: str
    status: str
    reason: str = ""
    scope: str = ""
    namespace: str = ""
    key: str = ""
    version: int = 0


_decoder = msgspec.json.Decoder(DaguRecord)


def parse_go_time(text: str) -> int:
    """Unix nanoseconds of a Go RFC 3339 (nano) time string.

    Raises:
        ValueError: when ``text`` is not such a time.
    """
    m = _TIME.match(text)
    if m is None:
        raise ValueError(f"bad time {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    nanos = int((m.group(7) or "0").ljust(9, "0"))
    zone = m.group(8)
    offset = dt.timedelta(0)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    moment = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone(offset))
    return int(moment.timestamp()) * 1_000_000_000 + nanos


def _files(root: str) -> Iterator[tuple[str, str, str, str]]:
    """(path relative to root, scope, hex namespace dir, file name) of every file under v1/."""
    base = os.path.join(root, "v1") if os.path.isdir(os.path.join(root, "v1")) else root
    for scope in sorted(os.listdir(base)):
        scope_dir = os.path.join(base, scope)
        if not os.path.isdir(scope_dir):
            continue
        for ns_hex in sorted(os.listdir(scope_dir)):
            ns_dir = os.path.join(scope_dir, ns_hex)
            if not os.path.isdir(ns_dir):
                continue
            for name in sorted(os.listdir(ns_dir)):
                yield os.path.relpath(os.path.join(ns_dir, name), root), scope, ns_hex, name


def _only_if_absent(plan: Write) -> Decide:
    def decide(previous: Entry | None, _view: LogView) -> Write | None:
        return plan if previous is None else None

    return decide


def _record(root: str, rel: str, scope: str, ns_hex: str, name: str) -> tuple[Ref, Write] | str:
    """The ref and write plan for one Dagu file, or the reason it is skipped."""
    if ".json.tmp." in name or name.endswith(".tmp"):
        return "temporary file left by an interrupted Dagu write"
    if not name.endswith(".json"):
        return "not a Dagu state record (*.json)"
    if scope not in SCOPES:
        return f"unknown scope {scope!r}"
    try:
        namespace = bytes.fromhex(ns_hex).decode("utf-8")
        key = bytes.fromhex(name[: -len(".json")]).decode("utf-8")
        validate_namespace(namespace)
        validate_key(key)
    except (ValueError, CastoreError) as exc:
        return f"file name does not encode a valid namespace and key: {exc}"
    try:
        with open(os.path.join(root, rel), "rb") as fh:
            record = _decoder.decode(fh.read())
    except (OSError, msgspec.DecodeError) as exc:
        return f"corrupt record: {exc}"
    try:
        normalized = codec.normalize_json(bytes(record.value))
        updated = parse_go_time(record.updated_at)
        created = parse_go_time(record.created_at)
    except (CastoreError, ValueError) as exc:
        return f"corrupt record: {exc}"
    digest = codec.hexdigest(normalized)
    if digest != record.hash:
        return f"hash mismatch: value hashes to {digest}, record says {record.hash}"
    if record.version < 1:
        return f"bad version {record.version}"
    by = record.updated_by or DaguUpdatedBy()
    audit = Audit(
        dag_name=by.dag_name,
        run_id=by.dag_run_id,
        attempt=by.attempt_id,
        step_name=by.step_name,
        reason="imported from Dagu",
    )
    plan = Write(OP_SET, normalized, digest, audit, None, record.version, updated, created)
    return Ref(scope, namespace, key), plan


def import_dagu(store: Store, root: str) -> Iterator[DaguImport]:
    """Import every record under a Dagu dag-state directory; yield one outcome per file.

    A key that already has history in castore is skipped (never merged).
    The source directory is only read.

    Raises:
        NotADirectoryError / FileNotFoundError: ``root`` is not a directory.
    """
    if not os.path.isdir(root):
        raise NotADirectoryError(root)
    for rel, scope, ns_hex, name in _files(root):
        made = _record(root, rel, scope, ns_hex, name)
        if isinstance(made, str):
            yield DaguImport(file=rel, status="skipped", reason=made)
            continue
        ref, plan = made
        _, written = store.backend.write(ref, _only_if_absent(plan))
        yield DaguImport(
            file=rel,
            status="imported" if written else "skipped",
            reason="" if written else "key exists in castore",
            scope=ref.scope,
            namespace=ref.namespace,
            key=ref.key,
            version=plan.version,
        )
