"""No part of a password or token in a URL reaches an error or a log line; the default store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore.cluster import member_key, parse_members
from castore.errors import StoreUnavailableError
from castore.urls import default_root, redacted

_AROUND = st.text(alphabet="#?/@:%&=ab", max_size=6)  # what ends a host early in a parser


@given(before=_AROUND, after=_AROUND, scheme=st.sampled_from(["http", "https", "postgresql"]))
def test_redacted_shows_no_part_of_a_password_whatever_it_holds(before, after, scheme):
    # Found by a review: a "#", "?" or "/" in a password cut the URL before its last
    # "@", and the user and the start of the password were shown.
    url = f"{scheme}://user:{before}SECRET{after}@coord.example:7070/db?schema=x"
    shown = redacted(url)
    assert "SECRET" not in shown
    assert "user" not in shown


@pytest.mark.parametrize("mark", ["#", "?", "/", "@", ":"])
def test_a_coordinator_url_with_a_password_is_refused_without_showing_it(mark):
    url = f"http://user:S3CR{mark}ETTOKEN@127.0.0.1:7070"
    for parse in (member_key, parse_members):
        with pytest.raises(ValueError, match="must not carry a user or password") as refused:
            parse(url)
        assert "S3CR" not in str(refused.value)
        assert "ETTOKEN" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://castore@127.0.0.1:1/db?schema=x&password=hunter2@TopSecretTail",
        "postgresql://u:p?ss@db/x",
        "postgresql://u:p#ss@db/x?schema=x",
    ],
)
def test_an_at_sign_after_the_query_starts_hides_the_address_not_a_secret(url):
    # Found by a review of the fix above: cutting at the last "@" of the whole URL
    # showed the end of a password given in the query.
    shown = redacted(url)
    assert shown.endswith("://(address not shown)")
    for secret in ("TopSecretTail", "hunter2", "ss@"):
        assert secret not in shown


def test_an_ordinary_url_is_shown_with_its_address_and_schema():
    url = "postgresql://alice:pa/s@s@db.example:5432/state?sslmode=require&schema=ci"
    assert redacted(url) == "postgresql://db.example:5432/state?schema=ci"


def test_a_coordinator_url_with_a_user_says_where_the_token_goes():
    # Found by a review: "no user or password in it" read as if one were missing.
    with pytest.raises(ValueError, match="must not carry a user or password") as refused:
        member_key("http://user:pw@host:7070")
    assert "give the token in $CASTORE_TOKEN" in str(refused.value)
    assert "pw" not in str(refused.value)
    assert "user" not in str(refused.value).partition("must not")[0]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        # Found by a review: an unknown parameter was said to need percent-encoding.
        ("postgresql://u:SECRETpw@db/x?foo=bar", "names an unknown parameter 'foo': castore"),
        ("postgresql://u@db/x?sslmode=disable&Foo=1", "names an unknown parameter 'Foo'"),
        # A name in a query that holds a password is not shown (it may be part of one).
        ("postgresql://u@db/x?password=SECRET&pw=1", "unknown parameter (not shown"),
        # Found by a review: the last of two schemas was taken silently.
        ("postgresql://u:SECRETpw@db/x?schema=a&schema=b", "schema is given 2 times: give it once"),
    ],
)
def test_a_postgresql_url_with_an_unknown_or_repeated_parameter_says_so(url, problem):
    pytest.importorskip("psycopg")
    from castore.errors import InvalidValueError
    from castore.postgres.location import parse

    with pytest.raises(InvalidValueError) as refused:
        parse(url)
    message = str(refused.value)
    assert problem in message
    assert "SECRET" not in message
    assert "percent-encode" not in message
    if "unknown" in problem:
        assert "castore takes schema and pool_max_conns, libpq " in message
        assert "sslmode" in message


def test_a_postgresql_url_with_known_parameters_is_taken():
    pytest.importorskip("psycopg")
    from castore.postgres.location import parse

    where = parse("postgresql://u@db/x?sslmode=disable&application_name=a&schema=s&ssl=true")
    assert where.schema == "s"
    assert where.shown == "postgresql://db/x?schema=s"


class _Entry:
    def __init__(self, home: str) -> None:
        self.pw_dir = home


@pytest.mark.parametrize("home", ["", "relhome", "./x"])
def test_an_empty_or_relative_home_is_ignored_for_the_password_entry(home, monkeypatch):
    # Found by a review: HOME= put the default store at /.local/share/castore (Python's
    # expanduser takes an empty HOME for "/"), HOME=relhome below the current directory.
    monkeypatch.delenv("CASTORE_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", home)
    monkeypatch.setattr("pwd.getpwuid", lambda uid: _Entry("/home/from-passwd"))
    assert default_root() == "/home/from-passwd/.local/share/castore"
    monkeypatch.setenv("HOME", "/home/from-env")
    assert default_root() == "/home/from-env/.local/share/castore"


@pytest.mark.parametrize("entry", [KeyError, "", "relative"])
def test_no_absolute_home_is_refused_not_made_relative(entry, monkeypatch):
    # Found by a review: HOME unset and no password entry gave ./~/.local/share/castore.
    def lookup(uid: int) -> _Entry:
        if entry is KeyError:
            raise KeyError(uid)
        return _Entry(str(entry))

    monkeypatch.delenv("CASTORE_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr("pwd.getpwuid", lookup)
    with pytest.raises(StoreUnavailableError, match=r"no home directory.*give --dir or set CAS"):
        default_root()
    monkeypatch.setenv("XDG_DATA_HOME", "/xdg")  # no home needed
    assert default_root() == "/xdg/castore"
    monkeypatch.setenv("CASTORE_DIR", "/given")
    assert default_root() == "/given"
