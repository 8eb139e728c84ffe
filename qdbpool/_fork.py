"""Fork safety: a child process must never use, nor close, its parent's connections.

Using them would interleave two processes on one socket; closing them would send the
server a goodbye that ends the *parent's* session (libpq's PQfinish does exactly that).
So after a fork the child drops every inherited connection without closing it, and keeps a
reference to each so that no driver finalizer ever runs on it in the child. The cost on the
hot path is nothing: the work happens once, in os.register_at_fork's child hook.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any, Protocol


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_watched: weakref.WeakSet[Any] = weakref.WeakSet()
_inherited: list[Any] = []  # parent's connections, kept alive (never closed) in the child
_renewers: list[Callable[[], None]] = []


def watch(obj: _ForkAware) -> None:
    """Call `obj._after_fork_in_child()` in every child process forked from now on."""
    _watched.add(obj)


def renew_in_child(renew: Callable[[], None]) -> None:
    """Call `renew()` in every child process forked from now on: for a module's lock, which
    another thread may have held at the fork (that thread does not exist in the child, so
    the child would wait for it for good)."""
    _renewers.append(renew)


def keep_inherited(conn: Any) -> None:
    """Hold on to a parent's connection forever so that the child never finalizes it."""
    _inherited.append(conn)


def _after_fork_in_child() -> None:
    for renew in _renewers:
        renew()
    for obj in list(_watched):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # absent on Windows, where there is no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
