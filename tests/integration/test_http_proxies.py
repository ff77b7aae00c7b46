"""An ``http://`` store follows the proxy variables httpx reads, and refuses one it cannot use.

Oracle: docs/SERVER.md ("Proxies"): HTTP_PROXY, HTTPS_PROXY and ALL_PROXY (either
case) name an http://, https:// or socks5:// proxy; any other is one line naming
the variable, never its value (a proxy URL may hold a password), and never a
traceback (a review found ImportError and ValueError from inside httpx).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import cast

import httpx
import pytest

from castore import CastoreError, Store
from castore.errors import BackendUnavailableError, InvalidValueError
from castore.remote.proxies import proxy_variable
from castore.wire import EntryValue
from tests.helpers import CASTORE_PATH
from tests.integration.fakeserver import mp

_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.parametrize(
    ("variable", "error"),
    [
        ("ALL_PROXY=socks5://user:s3cret@127.0.0.1:1", BackendUnavailableError),
        ("HTTPS_PROXY=socks5://127.0.0.1:1", BackendUnavailableError),
        ("HTTP_PROXY=ftp://user:s3cret@x:1", InvalidValueError),
        ("http_proxy=http://[::1", InvalidValueError),
        # No host: httpx took them and every call failed to connect, in 5 s.
        ("HTTPS_PROXY=http://user:s3cret@", InvalidValueError),
        ("ALL_PROXY=http://:3128", InvalidValueError),
    ],
)
def test_a_proxy_variable_it_cannot_use_is_a_clear_error_naming_it(
    fake, monkeypatch, variable, error
):
    # Found by a review: ImportError (socksio missing) or ValueError (the scheme), with
    # a traceback, from every command on an http:// store.
    name, _, value = variable.partition("=")
    monkeypatch.setenv(name, value)
    fake.answer = lambda call, body: ("200 OK", mp(EntryValue(None, None)))
    with pytest.raises(error) as raised:
        Store(fake.url, dag="d").get("k")
    assert f"${name} " in str(raised.value)
    assert "s3cret" not in str(raised.value)
    assert value not in str(raised.value)
    assert isinstance(raised.value, CastoreError)
    assert fake.calls == []  # nothing was sent


def test_the_command_line_says_it_in_one_line(fake, tmp_path):
    env = {**os.environ, "PYTHONPATH": CASTORE_PATH, "HTTP_PROXY": "ftp://user:s3cret@x:1"}
    done = subprocess.run(
        [sys.executable, "-m", "castore", "--dir", fake.url, "--dag", "d", "get", "k"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("castore: invalid value: $HTTP_PROXY is not a proxy URL")
    assert len(done.stderr.splitlines()) == 1
    assert "s3cret" not in done.stderr


def test_an_http_proxy_is_followed(fake, monkeypatch):
    # The fake answers as a proxy would pass the answer on: the request reached it,
    # addressed to the server named (an absolute URL in the request line).
    monkeypatch.setenv("HTTP_PROXY", fake.url)
    fake.answer = lambda call, body: ("200 OK", mp(EntryValue(None, None)))
    assert Store("http://127.0.0.1:9", dag="d").get("k").value is None
    assert [call for call, _ in fake.calls] == ["current"]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # exempt: straight to port 9, refused
    with pytest.raises(CastoreError, match="cannot connect"):
        Store("http://127.0.0.1:9", dag="d").get("k")


@pytest.mark.parametrize("entry", ["[::1]", "2001:db8::/32"])
def test_a_no_proxy_entry_it_cannot_read_is_a_clear_error(fake, monkeypatch, entry):
    # Found by the review of the proxy check: httpx raised InvalidURL (a traceback) when
    # it made the client, for NO_PROXY entries it cannot parse.
    monkeypatch.setenv("HTTP_PROXY", "http://user:s3cret@proxy:3128")
    monkeypatch.setenv("NO_PROXY", entry)
    with pytest.raises(InvalidValueError, match=r"^invalid value: \$NO_PROXY \(or \$no_proxy\)"):
        Store(fake.url, dag="d").get("k")
    assert fake.calls == []


@pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_a_proxy_that_cannot_be_reached_is_named_in_the_error(fake, monkeypatch, name):
    # Found by following docs/SERVER.md as a new user: with a proxy set for the rest of
    # the machine's traffic (it carries loopback too), a worker whose server was up said
    # "castore server http://127.0.0.1:P: cannot connect", naming only the server.
    monkeypatch.setattr("castore.remote.transport.ATTEMPTS", 1)
    monkeypatch.setenv(name, "http://user:s3cret@127.0.0.1:9")  # nothing listens there
    fake.answer = lambda call, body: ("200 OK", mp(EntryValue(None, None)))
    with pytest.raises(CastoreError) as raised:
        Store(fake.url, dag="d").get("k")
    message = str(raised.value)
    assert message.startswith(f"castore server {fake.url}: cannot connect to the proxy ${name} ")
    assert "s3cret" not in message
    assert fake.calls == []
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # exempt: straight to the server, as before
    assert Store(fake.url, dag="d").get("k").value is None


def test_an_httpx_that_chooses_proxies_otherwise_names_none(monkeypatch):
    # proxy_variable asks httpx's private Client._transport_for_url: an httpx without it
    # must cost the error its proxy's name only, never a traceback (the lead's review).
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with httpx.Client() as client:
        assert proxy_variable(client, "http://127.0.0.1:7070") == "$HTTP_PROXY"
    assert proxy_variable(cast(httpx.Client, object()), "http://127.0.0.1:7070") is None
