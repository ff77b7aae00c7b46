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


def test_a_client_replaced_for_an_https_member_is_closed_only_with_the_transport() -> None:
    # Found by a review: a 421 whose list brings an https:// member made the next call
    # close the transport's client at once, under the calls other threads were making
    # with it (httpx: "Cannot send a request, as the client has been closed").
    mixed = ["http://a.example:7070", "https://b.example:7070"]
    transport = Transport(mixed, "token-0123456789", read_timeout=5.0)
    transport._follow(_misdirected([mixed[0]], mixed[0]), mixed[0])  # plain http only
    first = transport._http()
    transport._follow(_misdirected(mixed, mixed[0]), mixed[0])  # an https member again
    second = transport._http()
    assert second is not first
    assert (first.is_closed, second.is_closed) == (False, False)  # another thread's call
    transport.close()  # no call runs: both are closed now
    assert (first.is_closed, second.is_closed) == (True, True)
