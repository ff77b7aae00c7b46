"""What a forked child keeps of its parent's handles: new thread locks, none of their descriptors.

A child forked while another thread of the parent is inside a call (the
default start method of ``multiprocessing`` on Linux does just that)
inherits every lock that thread held, held for good: no thread of the child
will ever release it. It also inherits the parent's descriptors, and an
``flock`` belongs to the open file they share: the child must never unlock
its copy (that releases the parent's lock), and a copy it keeps keeps a lock
the parent takes on it later alive after the parent dies.

So every object of a handle that holds a thread lock, kept descriptors or
state a thread changes under a lock registers here (:func:`track`), and in
the child, right after the fork (``os.register_at_fork``), its
:meth:`ForkSafe.after_fork_in_child` takes new locks, closes its copies of
the descriptors (never ``LOCK_UN``) and forgets what a thread may have been
changing at the fork. A handle's calls pay nothing for it: only the fork
does (a pid check per lock taken would cost a system call on each).

A descriptor a thread of the parent was using at the fork is in no owner's
keeping then, so the child cannot close its copy: :data:`FORKS` tells the
parent that a fork happened meanwhile, and it keeps no such descriptor.
"""

from __future__ import annotations

import os
import weakref
from typing import Final, Protocol

__all__ = ["FORKS", "ForkSafe", "track"]

FORKS: Final = [0]
"""Changed in the parent before each fork and after it: compare ``FORKS[0]`` to see one."""


class ForkSafe(Protocol):
    """An object that makes itself usable in a forked child."""

    def after_fork_in_child(self) -> None:
        """In the child, right after the fork, before any other thread runs in it.

        New locks for the ones a parent's thread may have held; the parent's
        descriptors closed (the child's copies: never unlocked); what a thread
        may have been changing dropped. Must not raise.
        """


_TRACKED: weakref.WeakSet[ForkSafe] = weakref.WeakSet()


def track(owner: ForkSafe) -> None:
    """Call ``owner.after_fork_in_child()`` in every child forked while it lives."""
    _TRACKED.add(owner)


def _after_fork_in_child() -> None:
    for owner in list(_TRACKED):
        owner.after_fork_in_child()


def _count() -> None:
    FORKS[0] += 1


os.register_at_fork(before=_count, after_in_parent=_count, after_in_child=_after_fork_in_child)
