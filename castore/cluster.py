r"""Which coordinator owns a keyspace: rendezvous hashing over a member list, and its digest.

A keyspace is one (scope, namespace): all its keys live on one coordinator.
The owner is chosen as Dagu chooses it (highest-random-weight hashing): the
member whose ``sha256(scope + "\\0" + namespace + "\\0" + member_key)`` is the
largest, ties to the lower member key, where a member's key is its
``host:port``. The client and every server compute it from the same list, and
every request carries :func:`digest` of the client's list, so a server whose
list differs refuses the request (421) instead of serving a keyspace that
another server owns (docs/SERVER.md, "A cluster").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from urllib.parse import urlsplit

from castore.urls import redacted

__all__ = ["Cluster", "member_key", "member_of", "parse_members"]

_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")  # localhost is one of the other two


def member_key(url: str) -> str:
    """A member's identity in the hash: its ``host:port`` (IPv6 in brackets), lowercase.

    Raises:
        ValueError: not an ``http://`` or ``https://`` URL with a host.
    """
    shown = redacted(url)  # never a password in an error
    if "@" in url:  # before parsing: a password may hold what ends the host early
        raise ValueError(
            f"invalid coordinator URL {shown!r}: a coordinator URL must not carry a user or "
            "password: give the token in $CASTORE_TOKEN"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # its words may quote the URL
        raise ValueError(f"invalid coordinator URL {shown!r}: a bad host or port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid coordinator URL {shown!r}: use http://HOST:PORT")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(
            f"invalid coordinator URL {shown!r}: it takes no user, query or fragment "
            "(the token goes in $CASTORE_TOKEN)"
        )
    if parts.path not in ("", "/"):
        raise ValueError(f"invalid coordinator URL {shown!r}: no path")
    if port == 0:  # not the scheme's default port: no server listens on port 0
        raise ValueError(f"invalid coordinator URL {shown!r}: port 0")
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port or (443 if parts.scheme == 'https' else 80)}"


def member_of(url: str) -> tuple[str, str]:
    """A member as a 421's list must match one given: its scheme and ``host:port``."""
    return url.partition("://")[0].lower(), member_key(url)


def parse_members(text: str) -> list[str]:
    """The URLs of a comma-separated list, normalized to ``scheme://host:port``.

    Raises:
        ValueError: an empty list, a bad URL, or two URLs with the same host and port.
    """
    urls = [item.strip() for item in text.split(",") if item.strip()]
    if not urls:
        raise ValueError("empty coordinator list")
    members: dict[str, str] = {}
    for url in urls:
        key = member_key(url)
        if key in members:
            raise ValueError(f"coordinator {key} is listed twice")
        twin = _localhost_twin(key, members)
        if twin is not None:  # one server under two names would own keyspaces nobody serves
            raise ValueError(f"coordinators {twin} and {key} name the same server (localhost)")
        members[key] = f"{urlsplit(url).scheme}://{key}"
    return list(members.values())


def _localhost_twin(key: str, members: dict[str, str]) -> str | None:
    """A member already listed that ``key`` names again through ``localhost``, if any.

    ``localhost`` is ``127.0.0.1`` or ``[::1]`` (which may be two servers).
    """
    host, _, port = key.rpartition(":")
    if host not in _LOOPBACK:
        return None
    others = ("127.0.0.1", "[::1]") if host == "localhost" else ("localhost",)
    return next((f"{o}:{port}" for o in others if f"{o}:{port}" in members), None)


class Cluster:
    """A member list: who owns a keyspace, and the list's digest.

    Args:
        members: the members' URLs (``scheme://host:port``), in any order.
    """

    def __init__(self, members: Sequence[str]) -> None:
        self.members = sorted(set(members), key=member_key)
        self._keys = [(member_key(url), url) for url in self.members]
        listing = "\n".join(key for key, _ in self._keys).encode()
        self.digest = hashlib.sha256(b"castore-cluster-1\n" + listing).hexdigest()

    def owner(self, scope: str, namespace: str) -> str:
        """The URL of the member that owns the keyspace ``(scope, namespace)``."""
        routing = f"{scope}\x00{namespace}\x00".encode()
        # max keeps the first of equal scores: members are sorted, so ties go to the lower key.
        best = max(self._keys, key=lambda item: hashlib.sha256(routing + item[0].encode()).digest())
        return best[1]

    def __len__(self) -> int:
        return len(self.members)
