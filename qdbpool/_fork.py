"""Fork safety: a child process must never use, nor close, its parent's connections.

Using them would interleave two processes on one socket; closing them would send the
server a goodbye that ends the *parent's* session (libpq's PQfinish does exactly that).
So after a fork the child drops every inherited connection without closing it, and keeps a
reference to each so that no driver finalizer ever runs on it in the child. The cost on the
hot path is nothing: the work happens once, in os.register_at_fork's child hook.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Protocol


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_watched: weakref.WeakSet[Any] = weakref.WeakSet()
_inherited: list[Any] = []  # parent's connections, kept alive (never closed) in the child


def watch(obj: _ForkAware) -> None:
    """Call `obj._after_fork_in_child()` in every child process forked from now on."""
    _watched.add(obj)


class Lock:
    """A module's lock, made anew in every forked child: another thread may have held it
    at the fork, and that thread does not exist there, so the child would wait for it for
    good. Used with `with`, as a threading.Lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _module_locks.append(self)  # for the process's life, as the module holding it

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()

    def _renew(self) -> None:
        self._lock = threading.Lock()


_module_locks: list[Lock] = []  # renewed in a child before anything else runs there


def keep_inherited(conn: Any) -> None:
    """Hold on to a parent's connection forever so that the child never finalizes it."""
    _inherited.append(conn)


def _after_fork_in_child() -> None:
    for lock in _module_locks:
        lock._renew()
    for obj in list(_watched):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # absent on Windows, where there is no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
