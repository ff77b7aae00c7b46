"""A 421's member list is taken only if it names members this client was given.

Found by a review's mutation (``_member`` ignoring the scheme): no test held the
promise of ``Transport._follow`` that a 421 never moves a keyspace's writes, nor
the token, over ``http`` to a member the client was given as ``https``.
"""

from __future__ import annotations

import httpx
import msgspec
import pytest

from castore import StoreUnavailableError
from castore.remote.transport import Transport

GIVEN = ["https://a.example:7070", "https://b.example:7070"]


def _misdirected(cluster: list[str], owner: str) -> httpx.Response:
    body = {"error": {"code": "misdirected", "message": "other list", "cluster": cluster}}
    body["error"]["owner"] = owner
    request = httpx.Request("POST", f"{GIVEN[0]}/v1/backend/current")
    return httpx.Response(421, content=msgspec.json.encode(body), request=request)


@pytest.mark.parametrize(
    "cluster",
    [
        [GIVEN[0], "http://b.example:7070"],  # the same host and port, over http
        [GIVEN[0], "https://c.example:7070"],  # a host the client was never given
        [GIVEN[0], "https://b.example:7071"],  # another port
        ["https://b.example:7070"],  # a list without the member that answered
    ],
)
def test_a_list_that_names_a_member_not_given_is_refused(cluster: list[str]) -> None:
    transport = Transport(GIVEN, "token-0123456789", read_timeout=5.0)
    with pytest.raises(StoreUnavailableError, match="coordinator list"):
        transport._follow(_misdirected(cluster, cluster[-1]), GIVEN[0])
    assert transport.members == GIVEN  # the list in use is unchanged


def test_a_list_of_given_members_is_taken() -> None:
    transport = Transport(GIVEN, "token-0123456789", read_timeout=5.0)
    transport._follow(_misdirected([GIVEN[0]], GIVEN[0]), GIVEN[0])
    assert transport.members == [GIVEN[0]]
