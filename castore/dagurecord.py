"""One Dagu state record file, read as Dagu's Go code would read it, or refused.

Dagu decodes a record with ``encoding/json`` into a struct: fields match
their JSON names exactly or, failing that, case-insensitively, and the last
one wins; unknown fields are ignored. A record Dagu wrote has each field
once, spelled exactly, so :func:`decode_record` refuses a record whose
fields are spelled otherwise (``"Value"`` beside ``"value"``: Dagu would
serve one of them, and which depends on their order) instead of guessing,
and one whose field holds a type Go cannot decode into it (``"scope": 5``:
Go's ``json.Unmarshal`` fails, so Dagu reads neither the key nor its list).
Values are bounded as Dagu's ``int64`` version and Go times are, and as
castore keeps them (nanoseconds from 1970 in 63 bits). A value nested as
deep as Dagu allows is read without recursion. Pure, no I/O.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

import msgspec

from castore import codec
from castore.jsonparse import check_depth, object_members, without_lone_surrogates
from castore.jsonrules import GO_REPLACE

__all__ = ["MAX_TIME_NS", "DaguRecord", "DaguUpdatedBy", "decode_record", "parse_go_time"]

MAX_TIME_NS: Final = (1 << 63) - 1  # 2262-04-11: what every castore backend stores
_MAX_VERSION: Final = (1 << 63) - 1  # Go's int64
_TIME = re.compile(  # Go's parseStrictRFC3339: ASCII digits, an upper-case T and Z only
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2})$"
)
_INTEGER = re.compile(r"-?[0-9]+")  # what Go unmarshals into an int64 (JSON already checked)
_FIELDS: Final = ("value", "version", "hash", "created_at", "updated_at")  # required
_OPTIONAL: Final = ("scope", "namespace", "key", "updated_by")
_BY_FIELDS: Final = ("dag_name", "dag_run_id", "attempt_id", "step_name")


class DaguUpdatedBy(msgspec.Struct, frozen=True):
    """Dagu's ``updated_by``."""

    dag_name: str = ""
    dag_run_id: str = ""
    attempt_id: str = ""
    step_name: str = ""


class DaguRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One Dagu state record: its value normalized, its times in Unix nanoseconds."""

    normalized: bytes
    version: int
    hash: str
    created_ns: int
    updated_ns: int
    updated_by: DaguUpdatedBy


def parse_go_time(text: str) -> int:
    """Unix nanoseconds of a Go RFC 3339 (nano) time string (ASCII digits, as Go reads it).

    Raises:
        ValueError: when ``text`` is not such a time.
    """
    m = _TIME.match(text)
    if m is None:
        raise ValueError(f"bad time {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    nanos = int((m.group(7) or "0")[:9].ljust(9, "0"))  # Go truncates past nanoseconds
    zone = m.group(8)
    offset = dt.timedelta(0)
    if zone != "Z":
        sign, hours, minutes = 1 if zone[0] == "+" else -1, int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"bad time {text!r}: timezone offset out of range")
        offset = sign * dt.timedelta(hours=hours, minutes=minutes)
    try:
        moment = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone(offset))
    except ValueError as exc:  # month 13, February 30, a zone past 24 h
        raise ValueError(f"bad time {text!r}: {exc}") from None
    seconds = (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(seconds=1)
    return seconds * 1_000_000_000 + nanos


def _stored_time(text: str) -> int:
    """A record's time, within what castore stores: after 1970-01-01T00:00:00Z, to 2262 (UTC).

    The epoch itself is refused: a stored time is never 0 (a write's 0 means "now").
    """
    ns = parse_go_time(text)
    if not 0 < ns <= MAX_TIME_NS:
        raise ValueError(f"time {text!r} is not after 1970-01-01T00:00:00Z and by 2262-04-11 (UTC)")
    return ns


def _fields(members: list[tuple[str, str]], names: tuple[str, ...]) -> dict[str, str]:
    """Each member under one of ``names``, the last one winning as in Go.

    Raises:
        ValueError: a member whose name is one of ``names`` spelled in other letter case.
    """
    wanted = {name.casefold(): name for name in names}
    found: dict[str, str] = {}
    for key, text in members:
        name = wanted.get(key.casefold())
        if name is not None and key != name:
            raise ValueError(f"field {key!r} is not spelled {name!r}, as Dagu writes it")
        if name is not None:
            found[name] = text
    return found


def _string(fields: dict[str, str], name: str) -> str:
    """A string field as Go reads it: null or absent is empty, a lone surrogate escape U+FFFD."""
    text = fields.get(name, "null").encode()
    value = msgspec.json.decode(without_lone_surrogates(text) or text)  # msgspec refuses them
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value or ""


def _time_text(fields: dict[str, str], name: str) -> str:
    r"""A time field's text as Go's ``Time.UnmarshalJSON`` reads it: between the quotes, as written.

    Go does not unescape it, so a time holding an escape (``\u005a`` for ``Z``) fails its
    parse, and Dagu cannot read the record; neither does castore.
    """
    text = fields.get(name, "null").strip(" \t\n\r")
    if text == "null":  # Go leaves the time zero: refused below, as before 1970
        return ""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise ValueError(f"{name} is not a string")
    return text[1:-1]


def _updated_by(text: str) -> DaguUpdatedBy:
    if text.strip() == "null":
        return DaguUpdatedBy()
    fields = _fields(object_members(text), _BY_FIELDS)
    return DaguUpdatedBy(*(_string(fields, name) for name in _BY_FIELDS))


def _version(text: str) -> int:
    if _INTEGER.fullmatch(text) is None:
        raise ValueError(f"version {text} is not an integer")
    version = int(text)
    if not 1 <= version <= _MAX_VERSION:
        raise ValueError(f"bad version {version}: give 1 to {_MAX_VERSION}")
    return version


def decode_record(data: bytes) -> DaguRecord:
    """Read one record file's bytes.

    Raises:
        ValueError: the bytes are not a record Dagu could have written (the message says
            why); a value that does not normalize is an ``InvalidValueError``.
    """
    check_depth(data)  # the record's own depth, as Dagu's decoder counts it
    text = data.decode("utf-8", GO_REPLACE)
    fields = _fields(object_members(text), _FIELDS + _OPTIONAL)
    missing = [name for name in _FIELDS if name not in fields]
    if missing:
        raise ValueError(f"missing field {missing[0]!r}")
    try:
        for name in ("scope", "namespace", "key"):  # Go fails the whole record otherwise
            _string(fields, name)  # the file name says which ref it is (Dagu overrides these)
        return DaguRecord(
            normalized=codec.normalize_json(fields["value"]),
            version=_version(fields["version"].strip()),
            hash=_string(fields, "hash"),
            created_ns=_stored_time(_time_text(fields, "created_at")),
            updated_ns=_stored_time(_time_text(fields, "updated_at")),
            updated_by=_updated_by(fields.get("updated_by", "null")),
        )
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
