"""Store locations: the default one, and of URLs what errors, logs and reprs may show."""

from __future__ import annotations

import errno
import os

from castore.errors import StoreUnavailableError

__all__ = [
    "absolute",
    "default_root",
    "home_directory",
    "is_url",
    "location_of",
    "redacted",
    "store_location",
]


def default_root() -> str:
    """``$CASTORE_DIR``, else ``$XDG_DATA_HOME/castore``, else ``~/.local/share/castore``.

    A relative ``XDG_DATA_HOME`` is ignored, as the XDG base directory specification
    says: the default store never depends on the directory a command runs in. So is
    an empty or relative ``HOME`` (:func:`home_directory`).

    Raises:
        StoreUnavailableError: no absolute home directory is known.
    """
    if os.environ.get("CASTORE_DIR"):
        return os.environ["CASTORE_DIR"]
    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(home_directory(), ".local", "share")
    return os.path.join(base, "castore")


def home_directory() -> str:
    """``$HOME`` if absolute, else the user's home in the password database if absolute.

    ``os.path.expanduser`` takes an empty ``HOME`` for ``/`` and a relative one
    relative to the current directory, and gives ``~`` back when ``HOME`` is
    unset and the user has no password entry: a default store in ``/``, or
    below the directory a command happens to run in.

    Raises:
        StoreUnavailableError: neither is an absolute path.
    """
    home = os.environ.get("HOME", "")
    if os.path.isabs(home):
        return home
    try:
        import pwd  # only without a usable $HOME

        home = pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError):
        home = ""
    if os.path.isabs(home):
        return home
    raise StoreUnavailableError(
        "no home directory for the default store ($HOME is unset, empty or relative, and the"
        " password database gives none): give --dir or set CASTORE_DIR"
    )


def absolute(path: str) -> str:
    """``os.path.abspath(path)``, naming what went wrong when the current directory is gone.

    A relative path is resolved against the current directory; one deleted
    (or unmounted) since the command started makes ``os.getcwd`` fail with a
    bare ``No such file or directory``, naming no path.

    Raises:
        FileNotFoundError: the current directory no longer exists (``filename``: ``path``).
    """
    try:
        return os.path.abspath(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT,
            "the current directory no longer exists, so a relative store path names"
            " nothing (give an absolute one)",
            path,
        ) from None


def location_of(path: str | os.PathLike[str] | None) -> str:
    """The store location ``path`` names; None (or empty) means :func:`default_root`."""
    return os.fspath(path) if path else default_root()


def store_location(path: str | os.PathLike[str] | None, name: str = "path") -> str:
    """The location a store handle opens: ``path``, or :func:`default_root` for None.

    ``path`` may also be ``bytes`` or an ``os.PathLike`` (decoded as the file
    system does, :func:`os.fsdecode`). ``name`` names the argument in errors.

    Raises:
        ValueError: ``path`` is empty (an unset variable would open the default store).
        TypeError: ``path`` is not a str, bytes, os.PathLike or None.
    """
    if path is None:
        return default_root()
    try:
        text = os.fsdecode(path)
    except TypeError:
        kind = type(path).__name__
        raise TypeError(f"{name} must be a str, bytes, os.PathLike or None, not {kind}") from None
    if not text:
        raise ValueError(f"{name} is empty: give a store location, or None for the default")
    return text


def is_url(location: str) -> bool:
    """True when ``location`` is a URL (``scheme://…``), not a directory."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").isalnum()


def redacted(location: str) -> str:
    """``location`` as errors and logs may show it: a URL without user, password or query.

    Of the query, only castore's own ``schema`` parameter stays (it tells stores apart).
    Where the URL cannot be read one way only (an ``@`` after a ``?`` or ``#``: in a
    password, or in the query), its address is not shown either.

    >>> redacted("postgresql://alice:s3cret@db.example:5432/state?sslmode=require&schema=ci")
    'postgresql://db.example:5432/state?schema=ci'
    >>> redacted("postgresql://alice:pa/s@s@db.example/state")
    'postgresql://db.example/state'
    >>> redacted("http://user:to#k?e/n@coord:7070")
    'http://(address not shown)'
    >>> redacted("postgresql://db/x?schema=a&password=p@ss")
    'postgresql://(address not shown)'
    """
    if "://" not in location:
        return location
    scheme, _, rest = location.partition("://")
    head, _, query = rest.split("#", 1)[0].partition("?")
    # Userinfo ends at the last "@" before the query: a password may hold an
    # unencoded "/" or "@" (libpq reads it so), and none of it may be shown.
    after = head.rpartition("@")[2]
    if "@" in rest[len(head) :]:
        # An "@" after the first "?" or "#": a password holding them, or a query
        # holding an "@". Either reading might show part of a secret.
        return f"{scheme}://(address not shown)"
    kept = [item for item in query.split("&") if item.startswith("schema=")][-1:]
    return f"{scheme}://{after}" + (f"?{kept[0]}" if kept else "")
