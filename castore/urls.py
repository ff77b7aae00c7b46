"""Store locations: the default one, and of URLs what errors, logs and reprs may show."""

from __future__ import annotations

import os

__all__ = ["default_root", "is_url", "location_of", "redacted"]


def default_root() -> str:
    """``$CASTORE_DIR``, else ``$XDG_DATA_HOME/castore``, else ``~/.local/share/castore``."""
    if os.environ.get("CASTORE_DIR"):
        return os.environ["CASTORE_DIR"]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "castore")


def location_of(path: str | os.PathLike[str] | None) -> str:
    """The store location ``path`` names; None (or empty) means :func:`default_root`."""
    return os.fspath(path) if path else default_root()


def is_url(location: str) -> bool:
    """True when ``location`` is a URL (``scheme://…``), not a directory."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").isalnum()


def redacted(location: str) -> str:
    """``location`` as errors and logs may show it: a URL without user, password or query.

    Of the query, only castore's own ``schema`` parameter stays (it tells stores apart).

    >>> redacted("postgresql://alice:s3cret@db.example:5432/state?sslmode=require&schema=ci")
    'postgresql://db.example:5432/state?schema=ci'
    >>> redacted("postgresql://alice:pa/s@s@db.example/state")
    'postgresql://db.example/state'
    >>> redacted("http://user:to#k?e/n@coord:7070")
    'http://coord:7070'
    """
    if "://" not in location:
        return location
    scheme, _, rest = location.partition("://")
    # Userinfo ends at the last "@": a password may hold an unencoded "/", "@", "?"
    # or "#" (libpq and people write them so), and none of it may be shown. An "@"
    # in a query then hides part of the address too: shown less, never a secret.
    rest = rest.rpartition("@")[2]
    head, _, query = rest.split("#", 1)[0].partition("?")
    after = head
    kept = [item for item in query.split("&") if item.startswith("schema=")][-1:]
    return f"{scheme}://{after}" + (f"?{kept[0]}" if kept else "")
