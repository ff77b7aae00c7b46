"""A clustered server's check of every request: same member list, and this server owns the keyspace.

A server started with ``--cluster URL,… --self URL`` serves only the
keyspaces it owns under that list (:class:`~castore.cluster.Cluster`), and
only to clients whose list is the same: each request carries the digest of
the client's list in the ``Castore-Cluster`` header. Otherwise it answers
421 ``misdirected`` with its list and the keyspace's owner, and does
nothing; so a client and a server that disagree about membership never write
one keyspace in two places (docs/SERVER.md, "A cluster"). Nor do two servers
that run different lists: a server serves only while the other members it
reaches run its list (:mod:`castore.server.peers`).
"""

from __future__ import annotations

import msgspec

from castore.cluster import Cluster, parse_members
from castore.server.errors import ApiError
from castore.server.peers import PeerWatch

__all__ = ["Membership"]


class Membership:
    """The cluster a server belongs to (None: a lone server, which serves every request).

    Args:
        cluster: the member list the server was started with.
        self_url: this server's URL in that list, as ``--self`` gives it.

    Raises:
        ValueError: ``self_url`` is not one URL, or not in ``cluster``.
    """

    def __init__(self, cluster: Cluster | None = None, self_url: str = "") -> None:
        if cluster is not None:
            selves = parse_members(self_url)
            if len(selves) > 1:  # the first alone was taken: a list pasted into --self
                raise ValueError(f"--self names {len(selves)} URLs: give this server's URL alone")
            self_url = selves[0]
            if self_url not in cluster.members:
                raise ValueError(f"--self {self_url} is not in the --cluster list")
        self.cluster, self.self_url = cluster, self_url
        self.peers = (
            None if cluster is None else PeerWatch(cluster.members, self_url, cluster.digest)
        )

    def watch(self) -> None:
        """Start looking at the other members' lists in this process (before it serves)."""
        if self.peers is not None:
            self.peers.start()

    def health(self) -> bytes:
        """``/healthz``'s body: a clustered member says whether it serves its keyspaces now."""
        if self.peers is None:
            return b'{"status":"ok"}'
        why = self.peers.refusal()
        if not why:
            return b'{"status":"ok","serving":true}'
        return b'{"status":"ok","serving":false,"reason":%s}' % msgspec.json.encode(why)

    def check(
        self,
        client: tuple[str | None, int],
        keyspace: tuple[str, str] | None,
        *,
        survey: bool = False,
        spans: bool = False,
    ) -> None:
        """Refuse a request about a keyspace from a client with another list, or owned elsewhere.

        ``client`` is the digest and length of the client's member list (as its
        headers say). A store-wide request (no keyspace: maintenance, an audit)
        reads or maintains this member's own store, and is served to any
        client; but a ``survey`` (the namespaces of a scope, its removed keys:
        answers the client keeps or drops by who owns them under its list) only
        to a client with this server's list, or its answer would be kept under
        another list (an export or an audit silently short). A lone server
        refuses a client that believes in a cluster (a member restarted without
        ``--cluster``). A request that ``spans`` keyspaces (an audit of several
        namespaces) is refused by a member of a cluster of several: it holds
        only its own keyspaces, and would answer for the others with nothing,
        or with a copy left by a move.

        Raises:
            ApiError: ``misdirected`` (421), with the server's list and the owner;
                ``store_unavailable`` (503) while another member runs another list.
        """
        digest, members = client
        cluster = self.cluster
        if keyspace is None and spans and cluster is not None and len(cluster) > 1:
            raise _spanning(cluster)
        if keyspace is None and not (survey or spans):
            return
        if cluster is None:
            if members > 1:
                message = "this server is not in a cluster, but the client's list names several"
                raise ApiError("misdirected", message, {"cluster": [], "owner": ""})
            return
        owner = "" if keyspace is None else cluster.owner(*keyspace)
        if digest != cluster.digest:
            message = "the client's coordinator list differs from this server's"
            if self.peers is not None:
                self.peers.nudge()  # membership may be changing: look at the others now
        elif keyspace is None:  # a survey: each member answers for its own store
            return
        elif owner != self.self_url:
            message = f"{keyspace[0]}/{keyspace[1]} belongs to {owner}"
        elif self.peers is not None and (why := self.peers.refusal()):
            raise ApiError(
                "store_unavailable",
                f"{why}; a member serves only while every other member of its list answers"
                " with the same --cluster or refuses connections (docs/SERVER.md, A cluster):"
                " nothing was written, retry shortly",
                {"retry": True},
            )
        else:
            return
        raise ApiError("misdirected", message, {"cluster": cluster.members, "owner": owner})


def _spanning(cluster: Cluster) -> ApiError:
    """The refusal of a request about several namespaces by a member of ``cluster``."""
    message = (
        "a request about several namespaces spans the cluster's members (each holds"
        " only its own keyspaces): name one namespace, which its owner answers, or"
        " run the command with CASTORE_DIR set to the list"
    )
    return ApiError("misdirected", message, {"cluster": cluster.members, "owner": ""})
