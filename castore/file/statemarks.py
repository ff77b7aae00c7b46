"""The mark a log rewrite leaves in its namespace's ``STATE`` first (docs/FORMAT.md §5).

A rewrite changes a key's newest entry outside the write protocol, so the
key's row must turn pending before it does, as a write's ``P`` does.
"""

from __future__ import annotations

import contextlib
import os

from castore.errors import RecordError
from castore.file.frames import LogBytes
from castore.file.records import KIND_HEADER, decode_header
from castore.file.statefile import StateIndex
from castore.file.staterecords import STATE_NAME
from castore.file.tree import Tree
from castore.keys import file_id

__all__ = ["pending_rewrite"]


def pending_rewrite(fs: Tree, path: str, log: LogBytes) -> None:
    """Mark the key of the log at ``path``, about to be rewritten, pending in ``STATE``.

    For a log whose header does not name its key (damage), the key is the one
    a trusted ``STATE`` records under the log's file name; if it records none,
    there is nothing to mark. Only an untrusted ``STATE`` (which may hold a
    record it cannot show) goes away whole.

    Raises:
        OSError: neither could be done (the rewrite must not happen).
    """
    name = os.path.basename(path)
    key = None
    for frame in log.frames:
        if frame.kind == KIND_HEADER:
            with contextlib.suppress(RecordError):
                head = decode_header(frame.payload)
                if file_id(head.key) + ".log" == name:
                    key = head.key
            break
    state = StateIndex(os.path.join(os.path.dirname(path), STATE_NAME), fs, "", "")
    try:
        if key is None and state.known() is not None:  # trusted: its records can be named
            key = next((k for k in state.recorded() if file_id(k) + ".log" == name), None)
            if key is None:
                return  # no record of this log's key: nothing to mark
        if key is None:
            state.discard()
        else:
            state.pending(key)
    finally:
        state.close()
