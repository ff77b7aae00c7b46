"""A clustered server's check of every request: same member list, and this server owns the keyspace.

A server started with ``--cluster URL,… --self URL`` serves only the
keyspaces it owns under that list (:class:`~castore.cluster.Cluster`), and
only to clients whose list is the same: each request carries the digest of
the client's list in the ``Castore-Cluster`` header. Otherwise it answers
421 ``misdirected`` with its list and the keyspace's owner, and does
nothing; so a client and a server that disagree about membership never write
one keyspace in two places (docs/SERVER.md, "A cluster").
"""

from __future__ import annotations

from castore.cluster import Cluster
from castore.server.errors import ApiError

__all__ = ["Membership"]


class Membership:
    """The cluster a server belongs to (None: a lone server, which serves every request).

    Args:
        cluster: the member list the server was started with.
        self_url: this server's URL in that list.

    Raises:
        ValueError: ``self_url`` is not in ``cluster``.
    """

    def __init__(self, cluster: Cluster | None = None, self_url: str = "") -> None:
        if cluster is not None and self_url not in cluster.members:
            raise ValueError(f"--self {self_url} is not in the --cluster list")
        self.cluster, self.self_url = cluster, self_url

    def check(self, digest: str | None, keyspace: tuple[str, str] | None) -> None:
        """Refuse a request from a client with another list, or for a keyspace owned elsewhere.

        Raises:
            ApiError: ``misdirected`` (421), with the server's list and the owner.
        """
        cluster = self.cluster
        if cluster is None:
            return
        owner = cluster.owner(*keyspace) if keyspace is not None else ""
        if digest != cluster.digest:
            message = "the client's coordinator list differs from this server's"
        elif owner and owner != self.self_url:
            message = f"{keyspace[0]}/{keyspace[1]} belongs to {owner}" if keyspace else ""
        else:
            return
        raise ApiError("misdirected", message, {"cluster": cluster.members, "owner": owner})
