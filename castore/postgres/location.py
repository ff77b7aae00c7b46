"""A PostgreSQL store location: the libpq URL, the schema it names, what errors show.

``postgresql://user@host:5432/db?sslmode=require&schema=state`` is a libpq
URL (password from ``PGPASSWORD`` or ``~/.pgpass`` when it holds none; a
Unix-socket host as ``?host=/run/postgresql``) plus castore's own ``schema``
parameter, which is taken out before libpq sees the URL: several stores share
one database, one schema each (default :data:`DEFAULT_SCHEMA`).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Final, NamedTuple

from castore.errors import InvalidValueError
from castore.urls import redacted

__all__ = ["DEFAULT_SCHEMA", "SCHEMES", "Location", "parse"]

SCHEMES: Final = ("postgresql://", "postgres://")
DEFAULT_SCHEMA: Final = "castore"
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # unquoted, not pg_…


class Location(NamedTuple):
    """A parsed location: what libpq connects to, the schema, and the location as shown."""

    conninfo: str
    schema: str
    shown: str  # no credentials: safe in errors, logs and reprs
    secrets: tuple[str, ...]  # the URL's passwords, if any: scrubbed from every message


def _name(item: str) -> str:
    return urllib.parse.unquote(item.partition("=")[0])


_SEPARATORS: Final = re.compile(r"[@/:?#&%]")  # where libpq may cut a password it misreads


def _secrets(passwords: list[str]) -> tuple[str, ...]:
    """What a message must not show: each password as given and decoded, and its pieces.

    libpq echoes what it could not read (a host after an unencoded ``@``, a bad
    percent-escape as written), so the pieces between separators of 4 or more
    characters are secrets too. Longest first: a longer one is masked whole.
    """
    found: set[str] = set()
    for text in passwords:
        for form in (text, urllib.parse.unquote(text)):
            if form:
                found.add(form)
                found.update(p for p in _SEPARATORS.split(form) if len(p) >= 4)
    return tuple(sorted(found, key=len, reverse=True))


def parse(location: str) -> Location:
    """Split a ``postgresql://`` location into libpq's URL and castore's schema.

    Raises:
        InvalidValueError: the schema is not a plain lower-case identifier
            (or names a system schema), or the URL cannot be parsed.
    """
    shown = redacted(location).partition("?")[0]
    try:
        parts = urllib.parse.urlsplit(location)
        password = urllib.parse.unquote(parts.password or "")
    except ValueError as exc:
        raise InvalidValueError(f"{shown}: not a PostgreSQL URL ({exc})") from None
    # The query stays as written (libpq decodes it), less castore's own parameter.
    items = [item for item in parts.query.split("&") if item]
    schemas = [urllib.parse.unquote(i.partition("=")[2]) for i in items if _name(i) == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not _SCHEMA_NAME.fullmatch(schema) or schema.startswith("pg_"):
        raise InvalidValueError(
            f"{shown}: invalid schema {schema!r}: use lower-case letters, digits and _ "
            "(at most 63, not starting with a digit or pg_)"
        )
    raw = [i.partition("=")[2] for i in items if _name(i) == "password"]
    rest = "&".join(i for i in items if _name(i) != "schema")
    base = location.partition("?")[0].partition("#")[0]
    conninfo = f"{base}?{rest}" if rest else base
    userinfo = base.partition("://")[2].rpartition("@")[0]  # up to the last "@" (urls.redacted)
    secrets = _secrets([password, userinfo.partition(":")[2], *raw])
    return Location(
        conninfo, schema, redacted(location) if schemas else f"{shown}?schema={schema}", secrets
    )
