"""Each write's audit record follows what changed since the handle's last write.

A handle keeps the records it built, by their inputs (castore/audits.py): the
environment, the handle's fields, the reason, the rollback and the process.
Each test writes through one handle while one input changes, and compares every
version's record with what that write's inputs say.
"""

import os
from typing import Any

import pytest

from castore import InvalidValueError, Store, audits, identity
from castore.records import Audit


def records(store: Store, key: str = "k") -> list[tuple[str, str, str, str, int, str, int]]:
    return [
        (e.dag_name, e.run_id, e.step_name, e.actor, e.pid, e.reason, e.rollback_from)
        for e in reversed(store.history(key).entries)
    ]


def test_the_environment_is_read_at_every_write(store_location, monkeypatch):
    monkeypatch.delenv("CASTORE_ACTOR", raising=False)
    store = Store(store_location, dag="d", durable=False)
    pid = os.getpid()
    monkeypatch.setenv("DAG_RUN_ID", "run-1")
    store.set("k", 1)
    store.set("k", 2)
    monkeypatch.setenv("DAG_RUN_ID", "run-2")
    monkeypatch.setenv("DAG_RUN_STEP_NAME", "save")
    store.set("k", 3)
    monkeypatch.setenv("CASTORE_ACTOR", "ci")
    store.set("k", 4)
    monkeypatch.delenv("DAG_RUN_ID")
    store.set("k", 5)
    assert records(store) == [
        ("d", "run-1", "", "", pid, "", 0),
        ("d", "run-1", "", "", pid, "", 0),
        ("d", "run-2", "save", "", pid, "", 0),
        ("d", "run-2", "save", "ci", pid, "", 0),
        ("d", "", "save", "ci", pid, "", 0),
    ]


def test_the_handle_fields_reason_and_rollback_are_those_of_each_write(store_location):
    store = Store(store_location, dag="d", durable=False, actor="al", run_id="r", step="s")
    pid = os.getpid()
    store.set("k", 1, reason="first")
    store.set("k", 2, reason="first")
    store.actor, store.run_id, store.step = "bo", "r2", None
    store.set("k", 3)
    store.rollback("k", to_version=1, reason="undo")
    store.rollback("k", to_version=2, reason="undo")
    assert records(store)[:2] == [
        ("d", "r", "s", "al", pid, "first", 0),
        ("d", "r", "s", "al", pid, "first", 0),
    ]
    assert [r[3:] for r in records(store)[2:]] == [
        ("bo", pid, "", 0),
        ("bo", pid, "undo", 1),
        ("bo", pid, "undo", 2),
    ]


def test_text_that_is_not_utf8_is_refused_after_a_write_that_was_not(store_location, monkeypatch):
    store = Store(store_location, dag="d", durable=False)
    store.set("k", 1)
    monkeypatch.setenv("DAG_RUN_ID", "run\udcff1")  # os.environ's form of b"run\xff1"
    with pytest.raises(InvalidValueError, match=r"\$DAG_RUN_ID"):
        store.set("k", 2)
    monkeypatch.delenv("DAG_RUN_ID")
    with pytest.raises(InvalidValueError, match="reason"):
        store.set("k", 2, reason="r\ud800")
    with pytest.raises(TypeError, match="reason"):
        store.set("k", 2, reason=["not", "text"])  # type: ignore[arg-type]
    assert [e.version for e in store.history("k").entries] == [1]


def test_callers_of_one_server_handle_keep_their_own_records(store_location):
    served = Store(store_location, durable=False)
    one = served.for_caller(Audit(run_id="r1", pid=11, host="w1"), dag="d")
    two = served.for_caller(Audit(run_id="r2", pid=22, host="w2"), dag="d")
    one.set("k", 1)
    two.set("k", 2, reason="why")
    one.set("k", 3, reason="why")
    got = [(e.run_id, e.pid, e.host, e.reason) for e in reversed(one.history("k").entries)]
    assert got[0] == ("r1", 11, "w1", "")
    assert got[1:] == [("r2", 22, "w2", "why"), ("r1", 11, "w1", "why")]


def test_a_forked_child_writes_its_own_pid(tmp_path):
    store = Store(tmp_path, dag="d", durable=False)
    store.set("k", 1)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's exit status is the assertion
        try:
            store.set("k", 2)
        finally:
            os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.set("k", 3)
    assert [r[4] for r in records(store)] == [os.getpid(), child, os.getpid()]


def test_a_record_is_built_from_the_environment_it_is_kept_under(monkeypatch):
    """Found by a review: the record was keyed by one read of the environment and built
    from a second one; another thread's change in between kept a wrong record for good."""
    monkeypatch.setenv("CASTORE_ACTOR", "alice")
    maker = audits.AuditMaker()
    real = identity.audit_fields  # what castore.audits calls

    def another_thread_changes_it(*args: Any, **kwargs: Any) -> dict[str, str | int]:
        os.environ["CASTORE_ACTOR"] = "mallory"
        return real(*args, **kwargs)

    monkeypatch.setattr(audits, "audit_fields", another_thread_changes_it)
    first = maker.make((None, None, None), None, "", 0)
    monkeypatch.setattr(audits, "audit_fields", real)
    os.environ["CASTORE_ACTOR"] = "alice"
    assert (first.actor, maker.make((None, None, None), None, "", 0).actor) == ("alice", "alice")
    os.environ["CASTORE_ACTOR"] = "mallory"
    assert maker.make((None, None, None), None, "", 0).actor == "mallory"


@pytest.mark.parametrize("name", ["LOGNAME", "USER"])
@pytest.mark.parametrize("value", ["jos\udce9", "u" * 8_193], ids=["latin-1", "long"])
def test_a_user_name_a_write_cannot_record_is_refused_naming_its_variable(
    store_location, monkeypatch, name, value
):
    # Found by the audit review: the error said "audit field user is not valid text"
    # and named no source (every write refused, nothing to give instead): the
    # user is getpass.getuser()'s, from $LOGNAME, else $USER, ..., else passwd.
    Store(store_location, dag="d", durable=False).set("k", 1)
    monkeypatch.delenv("LOGNAME", raising=False)
    monkeypatch.setenv(name, value)  # os.environ's form of b"jos\xe9" (ISO-8859-1)
    store = Store(store_location, dag="d", durable=False)  # looks the user up again
    with pytest.raises(InvalidValueError, match=r"audit field user \(from \$LOGNAME, else \$USER"):
        store.set("k", 2)
    assert [e.version for e in store.history("k").entries] == [1]


@pytest.mark.parametrize(("field", "text"), [("user", "u" * 8193), ("run_id", "r\ud800")])
def test_a_callers_bad_field_is_not_blamed_on_the_servers_environment(tmp_path, field, text):
    """Was (the audit review): a server answered a caller's 8,193-character ``user`` with
    ``audit field user (from $LOGNAME, else $USER, …, unless given)``: the field was given."""
    served = Store(tmp_path, durable=False)
    with pytest.raises(InvalidValueError) as caught:
        served.for_caller(Audit(**{field: text}), dag="d")
    message = str(caught.value)
    assert f"audit field {field} " in message
    assert "$" not in message
    assert "unless given" not in message


@pytest.mark.parametrize("python", ["3.11", "3.13"])
def test_a_user_without_a_name_is_recorded_by_its_uid(store_location, monkeypatch, python):
    # A container's `--user 1000` has no password database entry and often no
    # $LOGNAME or $USER: the audit's user was empty, so who wrote was lost. It is
    # the uid in decimal now, as `ls -l` and `ps` show such a user. getpass.getuser()
    # raises KeyError (pwd's) before Python 3.13, OSError from 3.13 on.
    import getpass
    import pwd

    def nameless(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    def no_user() -> str:
        raise OSError("No username set in the environment")

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", nameless)
    if python == "3.13":
        monkeypatch.setattr(getpass, "getuser", no_user)
    store = Store(store_location, dag="d", durable=False)
    store.set("k", 1)
    store.delete("k")
    assert [e.user for e in store.history("k").entries] == [str(os.getuid())] * 2
