"""check on a healthy store while other threads write, delete and compact.

check reads a namespace's ``KEYS`` before its logs. Keys created since were
reported as "key missing from KEYS", and a ``KEYS`` that a first write had
created but not yet appended to as "KEYS does not name its namespace": false
errors on a healthy store (66 of 495 checks in 8 s against the writer below).
The oracle is the store itself: nothing is damaged, so no check may find an
error, and the store must check clean once the writer stops.
"""

from __future__ import annotations

import threading

import pytest

from castore import Store

pytestmark = pytest.mark.integration


def test_check_finds_no_error_while_keys_are_made_deleted_and_compacted(tmp_path):
    root = tmp_path / "store"
    Store(root, dag="d").set("kept", 0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            with Store(root, dag="d", durable=False) as writer:
                n = 0
                while not stop.is_set():
                    n += 1
                    for k in range(10):
                        writer.set(f"k{k}", n)
                    for k in range(10):
                        writer.delete(f"k{k}")
                    writer.compact(keep_last=1, keep_within_seconds=0)
        except BaseException as exc:  # noqa: BLE001 - the main thread reports it
            errors.append(exc)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        with Store(root, dag="d") as checker:
            reports = [checker.check() for _ in range(75)]
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    wrong = [f for r in reports for f in r.findings if f.severity != "info"]
    assert wrong == []
    assert all(r.ok for r in reports)
    with Store(root, dag="d") as store:
        assert store.check().findings == []
        assert store.get("kept").value == 0
        assert [e.key for e in store.list("").entries] == ["kept"]
