"""SingletonPool: one connection per thread, kept between calls, closed when the thread ends.

`_checkout` and `_checkin` are every decorated call's path: the usual case (the thread's
idle connection, fit as it is) is a few attribute reads each way; anything else goes to
their slow twins, `_checkout_checked` and `_checkin_checked`.
"""

from __future__ import annotations

import threading

from qdbpool.errors import PoolClosedError
from qdbpool.events import CloseReason
from qdbpool.pool import Pool
from qdbpool.pooled import PooledConnection


class SingletonPool(Pool):
    """One connection per thread (per route: a thread may hold a primary and a replica
    connection). A thread's connection is closed when the thread ends.

    Checkouts nested in one thread (a decorated function calling another, or `connect()`
    inside `@with_conn`) share that thread's connection.

    Takes the arguments of `Pool`.
    """

    def _checkout(self, read_only: bool) -> PooledConnection:
        pooled = self._local.ro if read_only and self._routes else self._local.rw
        # The usual case: the thread's idle connection, fit as it is. Marked in use before
        # the checks: a concurrent close() then either sees it in use (and leaves it for our
        # release) or has already marked it closed (which the generation compare sees).
        if pooled is not None and not pooled.depth:
            pooled.depth = 1
            if pooled.watched.value == pooled.generation and not self._timed:
                pooled.checkouts += 1
                return pooled
            pooled.depth = 0
        return self._checkout_checked(read_only, pooled)

    def _checkout_checked(
        self, read_only: bool, pooled: PooledConnection | None
    ) -> PooledConnection:
        """_checkout's slow twin: a first or nested checkout, limits, a stale connection."""
        route = "ro" if read_only and self._routes else "rw"
        if pooled is None:
            return self._take_new(route, read_only)
        depth = pooled.depth = pooled.depth + 1
        unfit: CloseReason | None = None
        if self._closed:
            unfit = "pool_closed"
        elif pooled.watched.value != pooled.generation:
            unfit = "stale"
        # Liveness was checked when it last came back; again only if it never came back
        # (a nested or a leaked checkout).
        elif depth > 1 and not self._is_usable(pooled.raw):
            unfit = "broken"
        elif self._timed and depth == 1:
            unfit = self._unfit_reason(pooled)
        if unfit is not None:
            return self._replace(route, pooled, read_only, unfit)
        pooled.checkouts += 1
        return pooled

    def _take_new(self, route: str, read_only: bool) -> PooledConnection:
        pooled = self._open(read_only)
        pooled.checkouts = 1
        setattr(self._local, route, pooled)
        return pooled

    def _replace(
        self, route: str, pooled: PooledConnection, read_only: bool, unfit: CloseReason
    ) -> PooledConnection:
        pooled.depth -= 1
        if self._closed:
            if pooled.depth == 0:
                self._retire(pooled, "pool_closed")
            raise PoolClosedError("the pool is closed")
        self._retire(pooled, unfit)
        return self._take_new(route, read_only)

    def _checkin(self, pooled: PooledConnection) -> None:
        if pooled.depth == 1 and not self._full_release:
            try:  # the factory's cheapest look: falsy means clean for certain
                dirty = self._after_use_hint(pooled.raw)
            except Exception:
                dirty = True
            if not dirty:
                pooled.depth = 0  # idle, and still this thread's
                if pooled.closed:  # read after that store: see _claim_idle
                    self._retire(pooled, "pool_closed")
                return
        self._checkin_checked(pooled)

    def _checkin_checked(self, pooled: PooledConnection) -> None:
        """_checkin's slow twin: a nested checkout, or a connection to look at properly."""
        if pooled.depth > 1:
            pooled.depth -= 1  # an outer call in this thread still uses it ...
            if not pooled.dropped:
                return
            with self._lock:  # ... unless the outer ones were dropped in other threads
                if pooled.depth > pooled.dropped:
                    return
                pooled.depth, pooled.dropped = 1, 0  # this was the last use: end it
        # Still marked in use while we look at it and reset it, so that close() leaves it
        # alone until we are done (it would otherwise close it under the reset hook).
        if not (pooled.closed or self._closed) and not self._after_use(pooled):
            pooled.depth = 0
            return  # dropped
        pooled.depth = 0
        if pooled.closed or self._closed:  # read after the store above: see _claim_idle
            self._retire(pooled, "pool_closed")

    def _release_dropped(self, pooled: PooledConnection) -> None:
        if pooled.owner == threading.get_ident():
            self._checkin(pooled)
            return
        # Another thread's connection, which it may be using (nested on the dropped
        # checkout) or about to. Its `depth` is its own to change: it does without a lock,
        # so a `depth -= 1` from here could undo its `+= 1` and let us close the connection
        # under it. Count the drop instead; if only dropped checkouts hold the connection,
        # close it the safe way, else its thread's last release ends it.
        with self._lock:
            pooled.dropped += 1
            if not self._claim_idle(pooled):
                return
        self._retire(pooled, "abandoned")
