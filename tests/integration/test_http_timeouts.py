"""A server that took a request and never answers is stuck, not an answer lost on its way.

Found by a review: a stopped server (SIGSTOP) held one command for 8 x (lock
timeout + 60 s), about 12 minutes by default, each read timeout retried as if
an answer was lost. docs/SERVER.md: a read is sent once more, a write never
(it may or may not have been applied). The read timeout is shortened here.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from castore import Store, StoreUnavailableError
from castore.remote import backend
from castore.remote.transport import Transport
from castore.wire import EntryValue
from tests.integration.fakeserver import HANG, mp

_READ_TIMEOUT = 0.3


@pytest.fixture(autouse=True)
def _short_read_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    class Short(Transport):
        def __init__(self, *args: Any, **kw: Any) -> None:
            kw["read_timeout"] = _READ_TIMEOUT
            super().__init__(*args, **kw)

    monkeypatch.setattr(backend, "Transport", Short)


def test_a_read_without_an_answer_is_sent_once_more_then_fails_saying_so(fake):
    fake.answer = lambda call, body: HANG
    started = time.monotonic()
    with pytest.raises(
        StoreUnavailableError, match=r"sent no answer within 0\.3 s, twice"
    ) as raised:
        Store(fake.url, dag="d").get("k")
    assert len(fake.calls_of("current")) == 2
    assert time.monotonic() - started < 8 * _READ_TIMEOUT
    assert "may or may not" not in str(raised.value)


def test_a_write_without_an_answer_is_never_sent_again(fake):
    def answer(call: str, body: bytes) -> tuple[str, bytes] | str:
        return HANG if call == "append" else ("200 OK", mp(EntryValue(None, None)))

    fake.answer = answer
    with pytest.raises(
        StoreUnavailableError, match=r"within 0\.3 s \(it may or may not have been applied\); read"
    ):
        Store(fake.url, dag="d").incr("n")
    assert len(fake.calls_of("append")) == 1
