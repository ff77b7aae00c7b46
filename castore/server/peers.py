"""What the other members of a cluster run: a member serves only while they run its list.

A digest compares a client's list with a server's; it cannot see two servers that
run different lists, each agreeing with its own clients (a member added before the
others run the new list, a removed member left running): both would serve one
keyspace, a split. So a clustered server asks every other member of its list for
the digest it runs (``GET /healthz`` answers it in the ``castore-cluster``
header), once before it serves, then every :data:`INTERVAL` seconds in a thread,
and at once when a request comes with another list. While a member that answers
runs another list (or none), the server refuses the keyspaces it owns (503
``store_unavailable``); a member that does not answer serves nothing, and counts
as agreeing (docs/SERVER.md, "A cluster"). A look carries the ``castore-peer``
header and no token; the access log leaves it out.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Final

import httpx

from castore.wire import CLUSTER_HEADER, PEER_HEADER

__all__ = ["INTERVAL", "PeerWatch"]

INTERVAL: Final = 1.0  # seconds between two looks at the other members' lists
_TIMEOUT: Final = 1.0  # seconds one member may take to answer


class PeerWatch:
    """The members of ``members`` other than ``self_url`` that run another list than ``digest``.

    Safe for threads. A forked process starts its own thread on first use.
    """

    def __init__(self, members: list[str], self_url: str, digest: str) -> None:
        self.others = [url for url in members if url != self_url]
        self.digest = digest
        self._differ: tuple[str, ...] = ()
        self._wake = threading.Event()
        self._pid = 0
        self._lock = threading.Lock()

    def differing(self) -> tuple[str, ...]:
        """The members that run another list, as last seen (starting the watch if needed)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self.look()  # before the first request is served
                    self._wake = threading.Event()
                    threading.Thread(target=self._run, daemon=True, name="castore-peers").start()
                    self._pid = os.getpid()
        return self._differ

    def nudge(self) -> None:
        """Look again now (a request came with another list: membership may be changing)."""
        self._wake.set()

    def look(self) -> None:
        """Ask every other member which list it runs."""
        differ = []
        with httpx.Client(timeout=_TIMEOUT, follow_redirects=False) as client:
            for url in self.others:
                try:
                    answer = client.get(f"{url}/healthz", headers={PEER_HEADER: "1"})
                except httpx.HTTPError:
                    continue  # down (it serves nothing), or not reachable from here
                if answer.headers.get(CLUSTER_HEADER) != self.digest:
                    differ.append(url)
        self._differ = tuple(differ)

    def _run(self) -> None:
        while True:
            self._wake.wait(INTERVAL)
            self._wake.clear()
            with contextlib.suppress(Exception):  # the watch outlives any one look
                self.look()
