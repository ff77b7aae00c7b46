"""A resent append is answered `applied`, `stale` or `unknown`, never decided twice.

Found by a review of the `unknown` status: a version lost to damage (a repair's
`damaged` marker) inside the versions searched was taken as readable and not the
request's, so a resend whose write had been applied there was answered `stale`
and the client decided its increment again; and a resend of an applied append of
more versions than the window (an import of a long history) was refused as
"the request's id was used by another write". The server's own function runs
here on a file store (the wire is ``test_cluster_retries.py``'s).
"""

from __future__ import annotations

import glob
from pathlib import Path

import msgspec
import pytest

from castore import Store, codec
from castore.backend import NewVersion
from castore.file.frames import scan_frames
from castore.file.records import decode_entry
from castore.keys import Ref
from castore.records import Audit
from castore.remote.backend import _append as make_append
from castore.server import rpc
from castore.wire import APPLIED, STALE, UNKNOWN, WRITTEN, Append, AppendReply

pytestmark = pytest.mark.integration

REF = Ref("dag", "d", "n")


def _new(value: bytes, version: int = 0) -> NewVersion:
    digest = codec.hexdigest(value)
    if not version:
        return NewVersion(op="set", normalized=value, digest_hex=digest, audit=Audit())
    return NewVersion(
        op="set",
        normalized=value,
        digest_hex=digest,
        audit=Audit(),
        version=version,
        time_ns=1000 + version,
        created_ns=1001,
    )


def _resend(store: Store, call: Append) -> AppendReply:
    return rpc._append(store, msgspec.structs.replace(call, retry=True))


def test_a_version_lost_to_damage_among_those_searched_makes_a_resend_unknown(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    store = Store(root, dag="d")
    for i in range(5):
        store.set("n", i)
    call = make_append(REF, store.backend.current(REF).entry, [_new(b"100")])
    assert rpc._append(store, call).status == WRITTEN  # version 6; its answer is lost
    store.set("n", 7)
    store.set("n", 8)
    store.close()
    [log] = glob.glob(f"{root}/refs/**/*.log", recursive=True)
    data = bytearray(Path(log).read_bytes())
    six = next(
        f
        for f in scan_frames(bytes(data))
        if f.kind == ord("E") and decode_entry(f.payload).version == 6
    )
    data[six.start + 20] ^= 0x55
    Path(log).write_bytes(data)
    store = Store(root, dag="d")
    store.check(repair=True)
    assert [e.operation for e in store.history("n").entries][:3] == ["set", "set", "damaged"]
    before = store.history("n").entries
    assert _resend(store, call).status == UNKNOWN  # version 6 may have been it
    assert store.history("n").entries == before
    store.close()


@pytest.mark.parametrize("count", [64, 65, 100])
def test_an_applied_append_of_many_versions_is_found_whole(tmp_path: Path, count: int) -> None:
    store = Store(tmp_path / "store", dag="d")
    call = make_append(REF, None, [_new(str(i).encode(), i) for i in range(1, count + 1)])
    first = rpc._append(store, call)
    assert (first.status, len(first.written)) == (WRITTEN, count)
    again = _resend(store, call)
    assert (again.status, again.written) == (APPLIED, first.written)
    store.close()


@pytest.mark.parametrize(("between", "status"), [(60, APPLIED), (64, APPLIED), (65, UNKNOWN)])
def test_a_resend_is_found_while_fewer_than_the_window_came_after_it(
    tmp_path: Path, between: int, status: str
) -> None:
    store = Store(tmp_path / "store", dag="d")
    store.set("n", 0)
    versions = [_new(str(i).encode()) for i in range(10)]
    call = make_append(REF, store.backend.current(REF).entry, versions)
    assert rpc._append(store, call).status == WRITTEN
    for i in range(between):
        store.set("n", {"other": i})
    before = store.history("n", limit=200).entries
    assert _resend(store, call).status == status
    assert store.history("n", limit=200).entries == before
    store.close()


def test_a_resend_never_applied_is_stale_while_every_later_version_was_searched(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "store", dag="d")
    store.set("n", 0)
    call = make_append(REF, store.backend.current(REF).entry, [_new(b"1")])  # never sent
    for i in range(10):
        store.set("n", {"other": i})
    assert _resend(store, call).status == STALE  # decide again: it was never applied
    for i in range(70):
        store.set("n", {"more": i})
    assert _resend(store, call).status == UNKNOWN  # more than the window since
    store.close()
