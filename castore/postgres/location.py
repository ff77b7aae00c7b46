"""A PostgreSQL store location: the libpq URL, the schema it names, what errors show.

``postgresql://user@host:5432/db?sslmode=require&schema=state`` is a libpq
URL (password from ``PGPASSWORD`` or ``~/.pgpass`` when it holds none; a
Unix-socket host as ``?host=/run/postgresql``) plus castore's own parameters,
which are taken out before libpq sees the URL: ``schema`` (several stores share
one database, one schema each; default :data:`DEFAULT_SCHEMA`) and
``pool_max_conns`` (as pgx names it: the most connections a handle opens at
once for its threads, 1 to :data:`MAX_POOL`; default :data:`DEFAULT_POOL`).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Final, NamedTuple

from castore.errors import InvalidValueError
from castore.urls import redacted

__all__ = ["DEFAULT_POOL", "DEFAULT_SCHEMA", "MAX_POOL", "SCHEMES", "Location", "parse"]

SCHEMES: Final = ("postgresql://", "postgres://")
DEFAULT_SCHEMA: Final = "castore"
DEFAULT_POOL: Final = 8  # connections per handle: a server process's share of max_connections
MAX_POOL: Final = 1000
_OWN: Final = ("schema", "pool_max_conns")  # castore's parameters, not libpq's
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # unquoted, not pg_…


class Location(NamedTuple):
    """A parsed location: what libpq connects to, the schema, and the location as shown."""

    conninfo: str
    schema: str
    shown: str  # no credentials: safe in errors, logs and reprs
    secrets: tuple[str, ...]  # the URL's passwords, if any: scrubbed from every message
    pool: int = DEFAULT_POOL  # the most connections a handle opens at once


def _name(item: str) -> str:
    return urllib.parse.unquote(item.partition("=")[0])


_SEPARATORS: Final = re.compile(r"[@/:?#&%,\[\]]")  # where libpq may cut a password it misreads
_ENCODE: Final = (
    "percent-encode '@', '/', '%', ',', '[' and ']' in the user name, password and "
    "database name ('@' as %40, '/' as %2F, '%' as %25)"
)
_PORTS: Final = re.compile(r"[0-9,]*")


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


def _as_libpq_reads(conninfo: str, passwords: set[str]) -> dict[str, str]:
    """The URL's parts as libpq reads them; refused where it would misread the password.

    libpq ends the user name and password at the first ``@`` or ``/``, so an unencoded
    one leaves the rest of the password in the host, port or database name: sent to a
    name lookup, and quoted in libpq's errors. Such a URL (or one libpq cannot read:
    its words quote the password) is refused before libpq connects, and so is one
    whose password libpq reads as none of ``passwords`` (what castore reads: ``?``
    and ``#`` end castore's reading of the user name and password, not libpq's).
    The errors name no part of the URL. Without psycopg, nothing is checked here
    (connecting says to install it).

    Raises:
        InvalidValueError: naming what to percent-encode; never the password.
    """
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return {}
    try:
        read = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    except ProgrammingError:
        read = None  # raised below, with no context: libpq's words quote the URL
    if read is None:
        raise InvalidValueError(
            _unknown(conninfo) or f"not a PostgreSQL URL libpq can read: {_ENCODE}"
        )
    where = read.get("host", "") + read.get("hostaddr", "") + read.get("port", "")
    path = conninfo.partition("?")[0].partition("://")[2].partition("/")[2]
    misread = "@" in where or "@" in path or not _PORTS.fullmatch(read.get("port", ""))
    if misread or read.get("password", "") not in passwords:
        raise InvalidValueError(f"libpq would misread this PostgreSQL URL: {_ENCODE}")
    return read


_PARAMETER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _unknown(conninfo: str) -> str | None:
    """Why libpq refused a URL whose query names a parameter no one knows (None: not that).

    The name is shown only where it cannot be part of a password: a query
    without ``password``, and no ``@`` after the ``?`` (a password holding ``?``).
    """
    from psycopg import pq

    known = sorted(o.keyword.decode() for o in pq.Conninfo.get_defaults())
    query = conninfo.partition("?")[2]
    names = [_name(item) for item in query.split("&") if item]
    unknown = [name for name in names if name not in known and name != "ssl"]  # ssl: an alias
    if not unknown:
        return None
    safe = "@" not in query and "password" not in names and _PARAMETER.fullmatch(unknown[0])
    which = repr(unknown[0]) if safe else "(not shown: the query may hold a password)"
    return (
        f"the PostgreSQL URL's query names an unknown parameter {which}: castore takes "
        f"{' and '.join(_OWN)}, libpq {', '.join(known)}"
    )


def _split(location: str) -> urllib.parse.SplitResult | None:
    """``location`` split by urllib (None: it cannot be; its error may quote the password)."""
    try:
        return urllib.parse.urlsplit(location)
    except ValueError:
        return None


def parse(location: str) -> Location:
    """Split a ``postgresql://`` location into libpq's URL and castore's schema.

    Raises:
        InvalidValueError: the schema is not a plain lower-case identifier
            (or names a system schema), or the URL cannot be parsed.
    """
    shown = redacted(location).partition("?")[0]
    parts = _split(location)
    if parts is None:  # raised here, not in an except block: urllib's words quote the URL
        raise InvalidValueError(f"not a PostgreSQL URL: {_ENCODE}")
    password = urllib.parse.unquote(parts.password or "")
    # The query stays as written (libpq decodes it), less castore's own parameter.
    items = [item for item in parts.query.split("&") if item]
    schemas = [urllib.parse.unquote(i.partition("=")[2]) for i in items if _name(i) == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    raw = [i.partition("=")[2] for i in items if _name(i) == "password"]
    rest = "&".join(i for i in items if _name(i) not in _OWN)
    base = location.partition("?")[0].partition("#")[0]
    scheme, sep, after = base.partition("://")
    base = scheme.lower() + sep + after  # schemes are case-insensitive; libpq reads lower only
    conninfo = f"{base}?{rest}" if rest else base
    userinfo = base.partition("://")[2].rpartition("@")[0]  # up to the last "@" (urls.redacted)
    read = _as_libpq_reads(conninfo, {"", password, *map(urllib.parse.unquote, raw)})
    # After libpq's reading: a URL it would misread is refused first (its query may hold
    # the rest of a password).
    pool = _pool(shown, [i.partition("=")[2] for i in items if _name(i) == "pool_max_conns"])
    if len(schemas) > 1:  # which one was meant? (pool_max_conns is refused alike)
        raise InvalidValueError(f"{shown}: schema is given {len(schemas)} times: give it once")
    if not _SCHEMA_NAME.fullmatch(schema) or schema.startswith("pg_"):
        raise InvalidValueError(
            f"{shown}: invalid schema {schema!r}: use lower-case letters, digits and _ "
            "(at most 63, not starting with a digit or pg_)"
        )
    secrets = _secrets([password, userinfo.partition(":")[2], *raw, read.get("password", "")])
    return Location(
        conninfo,
        schema,
        redacted(location) if schemas else f"{shown}?schema={schema}",
        secrets,
        pool,
    )


def _pool(shown: str, given: list[str]) -> int:
    """The ``pool_max_conns`` parameter: a plain number from 1 to :data:`MAX_POOL`, once.

    Raises:
        InvalidValueError: given twice, or not such a number.
    """
    if not given:
        return DEFAULT_POOL
    text = urllib.parse.unquote(given[0])
    if len(given) > 1 or not re.fullmatch(r"[0-9]{1,4}", text) or not 1 <= int(text) <= MAX_POOL:
        raise InvalidValueError(
            f"{shown}: invalid pool_max_conns: give it once, a whole number from 1 to {MAX_POOL}"
        )
    return int(text)
