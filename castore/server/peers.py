"""What the other members of a cluster run: a member serves only while they run its list.

A digest compares a client's list with a server's; it cannot see two servers that
run different lists, each agreeing with its own clients (a member added before the
others run the new list, a removed member left running): both would serve one
keyspace, a split. So a clustered server process asks every other member of its
list which list it runs (``GET /healthz`` answers its digest in the
``castore-cluster`` header), all at once, every :data:`INTERVAL` seconds in a
thread of its own, and soon after a request comes with another list's digest.

It serves the keyspaces it owns only while its last look, started at most
:data:`LEASE` seconds ago, found every member agreeing. A member agrees when it
answers with this list's digest, or refuses the connection (it is down: it serves
nothing; so does a 502 without the digest, its proxy's answer when it is down),
unless it was seen running another list since this process started and has
not answered with this one since (a member restarted with its old list serves at
once when it is back). Anything else counts as another list: an answer without the
digest (not clustered, or a castore from before members checked each other), no
answer within :data:`DEADLINE` seconds (paused, overloaded, or not reachable from
here: it may still be serving), a name that does not resolve, a certificate this
server does not trust (it trusts what a worker does: ``$SSL_CERT_FILE`` or
``$SSL_CERT_DIR``, else certifi's bundle), any other failure. Looks ignore proxy
settings. So until the first look, and whenever looks stall, it refuses (503
``store_unavailable``): a refusal can wait, a split cannot be undone
(docs/SERVER.md, "A cluster"). A look carries the ``castore-peer`` header and no
token, decides on the answer's headers alone (a short body is read, undecoded, only
to keep the connection for the next look), and the access log leaves it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
import weakref
from typing import Final

import httpx

from castore.wire import CLUSTER_HEADER, PEER_HEADER

__all__ = ["DEADLINE", "INTERVAL", "LEASE", "PeerWatch"]

INTERVAL: Final = 1.0  # seconds between two looks at the other members' lists
DEADLINE: Final = 1.0  # seconds a look gives every member to answer
LEASE: Final = 3.0  # a look older than this (from its start) says nothing any more
_NUDGED: Final = 0.2  # seconds at least between two looks (a request with another list)
_BODY_MAX: Final = 4096  # bytes of a look's answer body read so its connection is kept
_FIRST: Final = "this member has not seen the other members' lists yet (it started a moment ago)"


async def _drain(answer: httpx.Response) -> None:
    """Read the rest of a short answer's body, undecoded, so its connection is kept.

    A look needs the headers only; a body left unread closes the connection, and
    each look would open one. More than :data:`_BODY_MAX` bytes: left unread.
    """
    seen = 0
    async for chunk in answer.aiter_raw():
        seen += len(chunk)
        if seen > _BODY_MAX:
            return


def _down(exc: BaseException) -> bool:
    """Whether a failed connection says the member is not running: nothing listens there."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ECONNREFUSED:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class PeerWatch:
    """The other members of ``members`` (``self_url`` left out), and whether they run ``digest``.

    Safe for threads. A process forked from one that used it starts its own watch.
    """

    def __init__(self, members: list[str], self_url: str, digest: str) -> None:
        self.others = [url for url in members if url != self_url]
        self.digest = digest
        self._view: tuple[float, str] = (-LEASE, _FIRST)  # (when the last look started, why)
        self._other: dict[str, str] = {}  # members seen running another list, and why
        self._started = False
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        forked = weakref.WeakMethod(self._forked)  # a hook must not keep the watch alive
        os.register_at_fork(after_in_child=lambda: (method := forked()) and method())

    def _forked(self) -> None:
        """In a forked child: no watch runs here (threads do not survive a fork)."""
        self._started, self._lock, self._loop, self._wake = False, threading.Lock(), None, None

    def start(self) -> None:
        """Start looking, in this process (once; again in a forked child)."""
        if self._started:  # per request: no system call
            return
        with self._lock:
            if not self._started:
                self._view, self._other = (-LEASE, _FIRST), {}
                threading.Thread(target=self._run, daemon=True, name="castore-peers").start()
                self._started = True

    def refusal(self) -> str:
        """Why this member may not serve its keyspaces now ("": it may)."""
        if not self.others:
            return ""
        self.start()
        started, why = self._view
        if why == _FIRST or time.monotonic() - started <= LEASE:
            return why
        return f"the other members' lists were not seen for {LEASE:g} s (last: {why or 'agreed'})"

    def nudge(self) -> None:
        """Look again soon: a request came with another list (membership may be changing)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the process is ending
                loop.call_soon_threadsafe(wake.set)

    def _run(self) -> None:
        while True:  # the watch outlives anything a look raises
            try:
                asyncio.run(self._watch())
            except Exception as exc:  # noqa: BLE001  # said in the refusal, and tried again
                self._view = (self._view[0], f"looking at the other members failed: {exc!r}")
            time.sleep(INTERVAL)

    async def _watch(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        tls = any(url.startswith("https://") for url in self.others)
        headers = {PEER_HEADER: "1", "accept-encoding": "identity"}
        # trust_env=False leaves the proxy variables out, and with them $SSL_CERT_FILE and
        # $SSL_CERT_DIR: the CAs a worker trusts (httpx's own reading of them) are given here.
        verify = httpx.create_ssl_context(trust_env=True) if tls else False
        async with httpx.AsyncClient(
            timeout=DEADLINE,
            headers=headers,
            verify=verify,
            follow_redirects=False,
            trust_env=False,
        ) as client:
            while True:
                started = time.monotonic()
                answers = await asyncio.gather(*(self._ask(client, url) for url in self.others))
                self._view = (started, next((why for why in answers if why), ""))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), INTERVAL)
                self._wake.clear()
                await asyncio.sleep(max(0.0, started + _NUDGED - time.monotonic()))

    async def _ask(self, client: httpx.AsyncClient, url: str) -> str:
        """Why ``url`` stops this member from serving ("": it agrees, or it is down)."""
        said: str | None = None
        answered = gone = False  # its headers came: the body does not change the verdict
        try:
            async with asyncio.timeout(DEADLINE):
                async with client.stream("GET", f"{url}/healthz") as answer:
                    said, answered = answer.headers.get(CLUSTER_HEADER), True
                    gone = said is None and answer.status_code == 502  # castore sends no 502
                    await _drain(answer)  # a short body read whole keeps the connection
        except Exception as exc:  # noqa: BLE001  # whatever it is, the member was not seen
            if answered:  # the body failed after the headers answered
                return self._other.get(url, "") if gone else self._verdict(url, said)
            if _down(exc):  # down: it serves nothing, unless it was seen on another list
                return self._other.get(url, "")
            if isinstance(exc, httpx.TimeoutException | TimeoutError):
                return f"{url} did not answer which list it runs within {DEADLINE:g} s"
            return f"{url} was not reached ({type(exc).__name__}: {exc})"
        if gone:  # its proxy could not reach it (a 502): down, as a refused connection
            return self._other.get(url, "")
        return self._verdict(url, said)

    def _verdict(self, url: str, said: str | None) -> str:
        """Why ``url``, which answered with the digest ``said``, stops this member ("": none)."""
        if said is None:
            why = f"{url} runs no member list (not in a cluster, or an older castore)"
        elif said != self.digest:
            why = f"{url} runs another coordinator list than this server's"
        else:
            self._other.pop(url, None)
            return ""
        self._other[url] = f"{why}, and is down now"
        return why
