"""PooledConnection: a driver connection and what its pool knows about it.

Not public: user code sees the driver's connection (in `@with_conn`) or a SessionWrapper.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING

from qdbpool import _fork
from qdbpool.protocol import Connection, Generation

if TYPE_CHECKING:
    from qdbpool.pool import Pool
    from qdbpool.session import Checkout, SessionWrapper

#: The generation of a closed connection. No Generation counter ever holds it, so the one
#: generation compare at a checkout also turns away closed connections.
_CLOSED_GENERATION = -1


class PooledConnection:
    """A driver connection and what the pool knows about it."""

    __slots__ = (
        "__weakref__",
        "born",
        "checkouts",
        "closed",
        "depth",
        "dropped",
        "generation",
        "last_checkout",
        "last_used",
        "orphaned",
        "owner",
        "pid",
        "pool",
        "raw",
        "read_only",
        "retired",
        "spare",
        "watched",
    )

    def __init__(
        self,
        pool: Pool,
        raw: Connection,
        read_only: bool,
        now: float,
        generation: tuple[Generation, int],
    ) -> None:
        self.pool = pool
        self.raw = raw
        self.read_only = read_only
        # Fit while watched.value == generation (the factory moves `watched` on).
        self.watched, self.generation = generation
        self.born = now
        self.last_used = now
        self.depth = 0  # nested checkouts in progress; 0 = idle
        # SingletonPool: of those, how many were dropped unreleased and collected in another
        # thread. Only the holder changes `depth`; those threads count here, under the lock
        # (Pool._claim_idle reads both: depth == dropped is idle).
        self.dropped = 0
        self.checkouts = 0  # counted by the thread that holds it, without the lock
        self.closed = False
        # Counted closed by its pool: its driver connection closed, or left to its holder
        # (see `orphaned`). A flag, not membership of the pool's WeakSet: see Pool._retire.
        self.retired = False
        # Closed by the pool while its holder kept it past close()'s timeout: counted closed
        # already, and the holder closes the driver connection when it lets go of it.
        self.orphaned = False
        self.owner = threading.get_ident()
        self.pid = os.getpid()  # a forked child must leave its parent's connections alone
        # What its latest connect()'s wrapper reaches, so that pool.release(raw) can make
        # that wrapper stop reaching `raw` (not the wrapper: a dropped one must be collected).
        self.last_checkout: Checkout | None = None
        # Its last connect()'s wrapper once released, for the next connect() to reuse (see
        # qdbpool.session). Never one in use: a wrapper dropped unreleased must be collected,
        # so that its __del__ releases it.
        self.spare: SessionWrapper | None = None

    def mark_closed(self) -> None:
        """No checkout may take it any more (whether or not the driver connection is shut)."""
        self.closed = True
        self.generation = _CLOSED_GENERATION

    def __del__(self) -> None:
        # The last reference went away: for SingletonPool, the thread that held it ended.
        if self.pid != os.getpid():
            # A forked child frees the other threads' thread-local slots inside os.fork(),
            # before any at-fork hook runs. Closing here would end the parent's session, and
            # the pool's lock may be held by a thread that does not exist in this process.
            _fork.keep_inherited(self.raw)
            return
        if not self.retired or self.orphaned:
            # Not through the thread-local: this may run while that thread is torn down.
            # Anything may fail at interpreter shutdown; nothing is left to protect then.
            with contextlib.suppress(Exception):
                # Closed to checkouts now, whenever the close itself runs: a leaked
                # checkout's release, collected with it, must not put it back to be handed
                # out (it would be closed under its next holder).
                self.mark_closed()
                pool = self.pool
                pool._from_finalizer(lambda: pool._retire(self, "thread_ended", forget=False))
