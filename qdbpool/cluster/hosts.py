"""Hosts as the topology sees them: a role, a generation, and what the last check found."""

from __future__ import annotations

import statistics
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

from qdbpool.drivers.base import Role
from qdbpool.dsn import HostPort
from qdbpool.protocol import Generation


@dataclass(frozen=True)
class HostStatus:
    """A host's last known state, as `hosts()` returns it and error messages list it."""

    address: HostPort
    """The host and port."""
    role: Role
    """Its role at the last check."""
    response_time: float | None
    """Median seconds of recent checks (None before the first answer)."""
    replica_lag: float | None
    """Seconds behind the primary (replicas only; None when unknown)."""
    error: str | None
    """Why it is down or suspect; never holds credentials."""
    connections: int
    """Open connections from this process."""

    def __str__(self) -> str:
        parts = [f"{self.address} {self.role.value}"]
        if self.response_time is not None:
            parts.append(f"{self.response_time * 1000:.1f}ms")
        if self.replica_lag is not None:
            parts.append(f"lag {self.replica_lag:.1f}s")
        if self.error:
            parts.append(f"({self.error})")
        return " ".join(parts)


class HostState:
    """Mutable state of one host, owned by a Topology and changed under its lock.

    `generation` moves on whenever the role changes (being found down included; being
    suspect is not): a connection opened at an older value is not handed out again (the
    pool compares).
    """

    def __init__(self, address: HostPort, latency_window: int) -> None:
        self.address = address
        self.role = Role.UNKNOWN
        self.generation = Generation()
        self.error: str | None = None
        self.replica_lag: float | None = None
        self.checks = 0  # completed checks, answered or failed
        self.failures = 0  # failed checks since the last answer
        self.next_check = 0.0  # time.monotonic() before which a failing host is left alone
        self.latencies: deque[float] = deque(maxlen=latency_window)
        self.checking = False  # a check is running (a stalled one may outlive its round)
        # An error made us doubt it: no new connections go there until a check answers,
        # but connections already open stay (one lost session says little about the rest).
        self.suspect = False
        # Word from outside (Patroni) that this host is not, or is about to stop being, the
        # leader: no new connection for writes goes there, whatever its checks say.
        self.held_back = False
        self.opening = 0  # connections being opened right now (greedy counts them too)
        # New connections that failed in a row since the last one that opened, and the
        # time.monotonic() before which no other is tried: a server can answer every check
        # on the monitor's session and still refuse new ones (at its connection limit).
        self.open_failures = 0
        self.open_retry_at = 0.0
        self.open_error: str | None = None  # why the last new connection failed
        self.refused_us = False  # down because of our configuration (e.g. a wrong password)
        self.probe: Any = None  # the driver connection the checks use
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()  # app connections

    @property
    def takes_new_connections(self) -> bool:
        """Neither suspect nor backing off from failed opens (what the router asks)."""
        return not self.suspect and not self.opens_paused

    @property
    def opens_paused(self) -> bool:
        """Whether new connections wait out a back-off after failed ones."""
        return self.open_retry_at != 0.0 and self.open_retry_at > time.monotonic()

    @property
    def load(self) -> int:
        """Connections from this process, open or being opened (what greedy balances)."""
        return len(self.connections) + self.opening

    @property
    def response_time(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None

    def set_role(self, role: Role, error: str | None) -> bool:
        """Record a role; True if it changed (and the generation moved on)."""
        self.error = error
        self.suspect = False
        self.refused_us = False
        if role is self.role:
            return False
        self.role = role
        self.generation.value += 1
        return True

    def status(self) -> HostStatus:
        return HostStatus(
            address=self.address,
            role=self.role,
            response_time=self.response_time,
            replica_lag=self.replica_lag if self.role is Role.REPLICA else None,
            error=(
                f"suspect: {self.error}"
                if self.suspect
                else "held back: not the orchestrator's leader"
                if self.held_back and self.role is Role.PRIMARY
                else f"new connections failing: {self.open_error}"
                if self.opens_paused
                else self.error
            ),
            connections=len(self.connections),
        )
