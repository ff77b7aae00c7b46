import copy
import pickle

import pytest

import castore
from castore import errors, wire
from castore.errors import (
    BackendUnavailableError,
    CastoreError,
    ConflictError,
    CorruptionError,
    DigestMismatchError,
    FormatVersionError,
    InvalidRefError,
    InvalidValueError,
    LockTimeoutError,
    NotFoundError,
    PatchTestError,
    RecordError,
    StoreUnavailableError,
    UnsafePathError,
    ValueTooLargeError,
)

SAMPLES = [
    CastoreError("something went wrong"),
    CastoreError(),
    InvalidRefError('invalid key "../bad"'),
    InvalidValueError("multiple JSON values"),
    ValueTooLargeError(1048577, 1048576),
    NotFoundError("dag/daily/cursors/feed"),
    ConflictError("dag/daily/k", 5, 1),
    ConflictError("dag/daily/k", None, 3, "key exists"),
    ConflictError("global/_/k", 0, 7, "raced"),
    PatchTestError("dag/daily/k", None, 3, "operation 1 (test /a): the value is 1, not 2"),
    LockTimeoutError("/store/refs/dag/ab/cd.log", 30.0),
    LockTimeoutError("/store/gc.lock", 0.25),
    CorruptionError("blob abc is missing or damaged"),
    DigestMismatchError("blob abc hashes to def"),
    RecordError("bad checksum at offset 12"),
    FormatVersionError("/store/FORMAT: format version 9, this castore reads 1"),
    UnsafePathError("/store/refs/dag/ab/cd.log is a symbolic link; castore never follows one"),
    BackendUnavailableError("postgresql://h/db: the PostgreSQL backend is not available yet"),
    StoreUnavailableError("postgresql://h:5432/db: cannot connect: connection refused"),
]

IDS = [f"{type(exc).__name__}-{i}" for i, exc in enumerate(SAMPLES)]


def test_every_error_class_has_a_sample():
    assert {type(exc).__name__ for exc in SAMPLES} == set(errors.__all__)


def test_public_api_reexports_errors():
    for name in castore.__all__:
        if name.endswith("Error"):
            assert getattr(castore, name) is getattr(errors, name)


@pytest.mark.parametrize("exc", SAMPLES, ids=IDS)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(exc, protocol):
    back = pickle.loads(pickle.dumps(exc, protocol=protocol))  # noqa: S301  # our own bytes
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert repr(back) == repr(exc)
    assert back.args == exc.args
    assert vars(back) == vars(exc)


@pytest.mark.parametrize("exc", SAMPLES, ids=IDS)
def test_copy_round_trip(exc):
    for clone in (copy.copy(exc), copy.deepcopy(exc)):
        assert type(clone) is type(exc)
        assert str(clone) == str(exc)
        assert vars(clone) == vars(exc)


@pytest.mark.parametrize("exc", SAMPLES, ids=IDS)
def test_str_and_repr(exc):
    text = str(exc)
    assert text
    assert "\n" not in text
    rep = repr(exc)
    assert rep.startswith(type(exc).__name__ + "(")
    assert isinstance(exc, CastoreError)
    assert isinstance(exc, Exception)


def test_messages_and_attributes():
    exc = InvalidRefError('invalid key "../bad"')
    assert exc.detail == 'invalid key "../bad"'
    assert str(exc) == 'invalid ref: invalid key "../bad"'

    exc2 = InvalidValueError("EOF")
    assert exc2.detail == "EOF"
    assert str(exc2) == "invalid value: EOF"

    big = ValueTooLargeError(1048577, 1048576)
    assert (big.size, big.limit) == (1048577, 1048576)
    assert big.args == (1048577, 1048576)
    assert str(big) == "value too large: 1048577 bytes exceeds 1048576"

    missing = NotFoundError("dag/daily/k")
    assert missing.what == "dag/daily/k"
    assert "not found" in str(missing)
    assert "dag/daily/k" in str(missing)

    conflict = ConflictError("dag/daily/k", 5, 1)
    assert (conflict.ref, conflict.expected, conflict.actual, conflict.reason) == (
        "dag/daily/k",
        5,
        1,
        "",
    )
    assert "dag/daily/k" in str(conflict)
    assert "expected version 5" in str(conflict)
    assert "actual version 1" in str(conflict)

    create = ConflictError("dag/daily/k", None, 3, "key exists")
    assert create.expected is None
    assert "create_only" in str(create)
    assert "actual version 3" in str(create)
    assert "key exists" in str(create)

    zero = ConflictError("dag/daily/k", 0, 2)
    assert "expected version 0" in str(zero)
    assert "actual version 2" in str(zero)

    failed = PatchTestError("dag/daily/k", None, 3, "operation 1 (test /a): the value is 1, not 2")
    assert (failed.expected, failed.actual) == (None, 3)
    assert str(failed) == (
        "conflict on dag/daily/k: JSON Patch test failed at version 3: "
        "operation 1 (test /a): the value is 1, not 2"
    )

    lock = LockTimeoutError("/s/x.log", 30.0)
    assert (lock.path, lock.timeout_seconds) == ("/s/x.log", 30.0)
    assert "/s/x.log" in str(lock)
    assert "30 s" in str(lock)

    for cls in (CorruptionError, DigestMismatchError, RecordError, FormatVersionError):
        corrupt = cls("details here")
        assert corrupt.detail == "details here"
        # Not a store (or another format) is said as it is, with the path: not "corrupt".
        want = "details here" if cls is FormatVersionError else "corrupt store: details here"
        assert str(corrupt) == want

    assert str(CastoreError("plain")) == "plain"
    assert str(CastoreError()) == "CastoreError"


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (InvalidRefError, (CastoreError, ValueError)),
        (InvalidValueError, (CastoreError, ValueError)),
        (ValueTooLargeError, (InvalidValueError, CastoreError, ValueError)),
        (NotFoundError, (CastoreError, LookupError)),
        (ConflictError, (CastoreError,)),
        (PatchTestError, (ConflictError, CastoreError)),
        (LockTimeoutError, (CastoreError, TimeoutError)),
        (CorruptionError, (CastoreError,)),
        (DigestMismatchError, (CorruptionError, CastoreError)),
        (RecordError, (CorruptionError, CastoreError)),
        (FormatVersionError, (CorruptionError, CastoreError)),
    ],
)
def test_hierarchy(cls, bases):
    for base in bases:
        assert issubclass(cls, base)


def test_hierarchy_negative():
    assert not issubclass(ConflictError, ValueError)
    assert not issubclass(ConflictError, LookupError)
    assert not issubclass(NotFoundError, ValueError)
    assert not issubclass(CorruptionError, ValueError)
    assert not issubclass(InvalidRefError, InvalidValueError)
    assert not issubclass(InvalidValueError, InvalidRefError)
    assert not issubclass(CorruptionError, OSError)


def test_builtin_except_clauses_catch():
    with pytest.raises(ValueError, match="too large"):
        raise ValueTooLargeError(10, 5)
    with pytest.raises(InvalidValueError):
        raise ValueTooLargeError(10, 5)
    with pytest.raises(LookupError):
        raise NotFoundError("dag/d/k")
    with pytest.raises(TimeoutError):
        raise LockTimeoutError("/p", 1.5)
    with pytest.raises(ValueError, match="invalid ref"):
        raise InvalidRefError("key is required")


@pytest.mark.parametrize("exc", SAMPLES, ids=IDS)
def test_pickle_keeps_notes_and_extra_attributes(exc):
    exc = copy.copy(exc)
    exc.add_note("while testing")
    exc.context_id = 7  # an ad-hoc attribute, as callers may add
    back = pickle.loads(pickle.dumps(exc))  # noqa: S301  # our own bytes
    assert getattr(back, "__notes__", None) == ["while testing"]
    assert getattr(back, "context_id", None) == 7


def test_a_lock_timeout_names_its_key_and_keeps_it_through_pickling_and_the_wire():
    named = LockTimeoutError("/s/refs/x.log", 0.5, "dag/d/k")
    assert str(named) == "lock timeout: dag/d/k (/s/refs/x.log) not locked within 0.5 s"
    assert str(pickle.loads(pickle.dumps(named))) == str(named)  # noqa: S301  # our own bytes
    assert wire.exception_args(named) == ("LockTimeoutError", ["/s/refs/x.log", 0.5, "dag/d/k"])
    bare = LockTimeoutError("/s/refs/x.log", 0.5)  # a client of before the key: two arguments
    assert wire.exception_args(bare) == ("LockTimeoutError", ["/s/refs/x.log", 0.5])
    assert str(bare) == "lock timeout: /s/refs/x.log not locked within 0.5 s"
