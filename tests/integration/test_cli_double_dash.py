"""``--`` ends a command's options: a key that begins with ``-`` is named after it.

Found by this session's review of its own changes: parsing a command's options
and arguments intermixed (Python 3.11's ``parse_known_intermixed_args``) lost
``--``: ``set -- -k 1`` said ``no command takes -k``, ``get -- -k`` that the key
is required, and ``set -- k --create-only`` took ``--create-only`` for the
option. The oracle is the behaviour before that change (257c85b).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("key", ["-k", "--required", "-1x"])
def test_a_key_that_begins_with_a_dash_is_named_after_double_dash(cli, key):
    written = cli.ok("set", "--", key, "1")
    assert written["key"] == key
    assert cli.ok("get", "--", key)["value"] == 1
    assert cli.ok("history", "--", key)["key"] == key
    assert cli.ok("list")["entries"][0]["key"] == key


def test_an_option_after_double_dash_is_an_argument(cli):
    cli.ok("set", "k", "1")
    said = cli.fail(2, "set", "--", "k", "--create-only", stdin=b"5")  # the VALUE: not JSON
    assert "invalid character" in said, said
    assert cli.ok("get", "k")["value"] == 1


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (("get", "-k"), "castore get -- -k"),
        (("set", "-k", "1"), "castore set -- -k"),
        (("history", "-x"), "castore history -- -x"),
    ],
)
def test_a_key_that_begins_with_a_dash_given_as_an_option_says_where_it_goes(cli, argv, hint):
    """Noticed by the review of the command line: only "the key is required" was said."""
    said = cli.fail(2, *argv)
    assert said.endswith(f"a key or value that begins with '-' goes after --: {hint})"), said
    assert cli.ok("get", "--", "-k")["found"] is False  # nothing was written


@pytest.mark.parametrize(
    ("argv", "said", "unsaid"),
    [
        (("set", "--", "-k", "1", "--dir", "/x"), "--dir /x came after --", "set takes no --dir"),
        (("set", "--by", "3", "--", "-k", "1", "x"), "1 x came after --", "takes no 1"),
        (("get", "--", "k", "--required"), "--required came after --", "get takes no"),
        (("set", "--bogus", "--", "k", "1", "x"), "; x came after --", "--bogus x came after"),
        (("set", "--", "k", "1", "--", "x"), ": -- x came after --", "takes --"),
    ],
)
def test_arguments_left_over_after_double_dash_are_no_options(cli, argv, said, unsaid):
    # Found by a review: `set -- -k 1 --dir X` said "set takes no --dir (get, set, ... do)",
    # a contradiction; after --, --dir is no option but an argument too many.
    message = cli.fail(2, *argv)
    assert said in message, message
    assert unsaid not in message, message
    assert cli.ok("list")["entries"] == []
