"""PoolStats: a snapshot of a pool's counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolStats:
    """Counters of one pool, read at one moment. Counts are since the pool was made
    (or since a fork, in a child process)."""

    open: int
    """Connections open now (held by threads, idle, or checked out)."""
    in_use: int
    """Connections checked out right now."""
    created: int
    """Connections opened successfully."""
    closed: int
    """Connections closed, for any reason (thread ended, discarded, pool closed, shrink)."""
    discarded: int
    """Of `closed`: connections found unfit (failed validation, lost, expired) and replaced."""
    checkouts: int
    """Times a connection was handed out (connect(), with_conn, nested calls included)."""
    connect_errors: int
    """Attempts to open a connection that raised."""
    waiting: int = 0
    """Callers waiting for a connection (BoundedPool)."""
    timeouts: int = 0
    """Callers that gave up waiting (BoundedPool)."""

    @property
    def idle(self) -> int:
        """Open connections not checked out."""
        return self.open - self.in_use
