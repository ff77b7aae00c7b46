"""Results that are only printed (the command line, the server) leave values undecoded.

Found by a review (thirty-third session): an integer literal of a million digits
(under 1 MiB, stored in 0.01 s) made every ``get`` of its key take 25 s, over the
command line and the server alike, and the server's event loop stalled for as long
(``get`` runs on it): the value was decoded to a Python ``int`` through ``Decimal``
(quadratic) for a result of which only the JSON, the stored bytes, was printed.
Printed results now only check the bytes as JSON (``codec.check_stored``), and the
library's decode of a long integer is subquadratic. The oracle: the bytes printed
are the stored ones, and a decode is never called on those paths.
"""

from __future__ import annotations

import json
import pathlib
import random
import sys

import httpx
import pytest

from castore import Store, codec, jsonparse
from castore.cli import main
from castore.decoding import printing
from castore.server.app import create_app
from tests.helpers import loopback_server

pytestmark = pytest.mark.integration

BIG = "9" * 200_000  # an integer literal past int()'s 4,300 digits


def _no_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("a printed result decoded its value")

    monkeypatch.setattr(codec, "decode_stored", refuse)


@pytest.fixture
def store_dir(tmp_path: pathlib.Path) -> str:
    location = str(tmp_path / "s")
    with Store(location, dag="d") as store:
        store.set("k", f'{{"n":{BIG}}}'.encode())
        store.set("k", f'{{"n":{BIG},"m":1}}'.encode())
    return location


def test_the_cli_prints_stored_values_without_decoding_them(
    store_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_decode(monkeypatch)
    common = ["--dir", store_dir, "--dag", "d"]
    for argv, field in (
        (["get", "k", "--version", "1"], "value"),
        (["list", "--include-values"], "entries"),
        (["diff", "k", "2", "--no-update"], "previous"),
    ):
        assert main([*common, *argv]) == 0, capsys.readouterr().err
        line = capsys.readouterr().out
        assert f'"n":{BIG}' in line, (argv, line[:200])
        assert field in json.loads(line, parse_int=len)


def test_the_server_answers_stored_values_without_decoding_them(
    store_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = loopback_server()
    store = Store(store_dir)
    url = server.mount(create_app(store, access_log=server.log))
    try:
        _no_decode(monkeypatch)
        for path, body in (
            ("/v1/get", {"dag": "d", "key": "k"}),
            ("/v1/list", {"dag": "d", "include_values": True}),
        ):
            answer = httpx.post(url + path, json=body, timeout=60)
            assert answer.status_code == 200, answer.text[:300]
            assert f'"n":{BIG}' in answer.text
    finally:
        server.unmount(url)
        store.close()


def test_the_library_still_decodes_and_printing_still_checks(
    store_dir: str, tmp_path: pathlib.Path
) -> None:
    with Store(store_dir, dag="d") as store:
        assert store.get("k").value == {"n": 10**200_000 - 1, "m": 1}
        printed = printing(lambda: store.get("k"))
        assert printed.value is None
        assert printed.value_json == f'{{"m":1,"n":{BIG}}}'.encode()
        assert printed.to_json() == store.get("k").to_json()


@pytest.mark.parametrize("seed", range(20))
def test_a_long_integer_literal_decodes_to_its_int(seed: int) -> None:
    rng = random.Random(seed)
    length = rng.choice([1, 599, 600, 601, 1200, 4300, 4301, rng.randrange(1, 60_000)])
    digits = str(rng.randrange(1, 10)) + "".join(rng.choices("0123456789", k=length - 1))
    literal = rng.choice(["", "-"]) + digits
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        expected = int(literal)
    finally:
        sys.set_int_max_str_digits(limit)
    assert jsonparse.parse_int(literal) == expected
    assert codec.decode_value(literal.encode()) == expected
