"""What an ``http://`` store's errors show of a server's URL: scheme, host and port only."""

from __future__ import annotations

import pytest

from castore.remote.failures import failure, origin, unavailable


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "http://[::1]:7070/v1/backend/current",
            "http://[::1]:7070",
        ),  # a review: "http://::1:7070"
        ("https://[2001:db8::7]/v1/backend/append", "https://[2001:db8::7]"),
        ("http://user:secret@coord:7070/v1/backend/keys?x=1", "http://coord:7070"),
        ("http://127.0.0.1:7070", "http://127.0.0.1:7070"),
    ],
)
def test_an_error_shows_the_servers_origin_as_written(url, shown):
    assert origin(url) == shown
    assert str(unavailable(url, "down")) == f"castore server {shown}: down"
    assert (
        str(failure(url, 502, b"<html>"))
        == f"castore server {shown}: HTTP 502 without an error body"
    )
