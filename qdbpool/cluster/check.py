"""One check of one host: connect a probe (unless one is given), read the role, time it.

The topology's monitor and `qdbpool probe` both check hosts with `check_host`, so that they
judge roles, response times and errors alike; what each does with a failure differs (the
monitor counts a host it cannot read as down, the probe shows why).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qdbpool.drivers.base import HostDriver, Role
from qdbpool.dsn import HostPort


@dataclass(frozen=True)
class CheckResult:
    """What one check found.

    `role` is PRIMARY or REPLICA when the host answered; otherwise `error` says why (the
    driver's one-line `describe_error`, free of credentials) and `role` is DOWN (it could
    not be reached, or the connection was lost) or UNKNOWN (it answered, but its role could
    not be read)."""

    role: Role
    response_time: float | None = None  # seconds, the role query's round trip
    replica_lag: float | None = None  # replicas only; None when the server cannot tell
    error: str | None = None
    refused_us: bool = False  # refused for what we asked (a wrong password): retrying cannot help

    @property
    def answered(self) -> bool:
        return self.error is None


def _keep(probe: Any) -> bool:
    return True


def check_host(
    driver: HostDriver,
    address: HostPort,
    timeout: float,
    *,
    probe: Any = None,
    adopt: Callable[[Any], bool] = _keep,
) -> CheckResult | None:
    """Check `address` once over `probe`, or over a new probe connection.

    A new probe is handed to `adopt` as soon as it is open: from then on it is the
    caller's to close (a check that blocks can then be cut off from outside by shutting
    its socket down). `adopt` returns False when the caller gave up on this check; then
    nothing more is done and None is returned.
    """
    if probe is None:
        try:
            probe = driver.open_probe(address, timeout)
        except Exception as exc:
            # Refused for what we asked: the host is up, but we cannot tell its role.
            refused = driver.is_configuration_error(exc)
            role = Role.UNKNOWN if refused else Role.DOWN
            return CheckResult(role, error=driver.describe_error(exc), refused_us=refused)
        if not adopt(probe):
            return None
    try:
        started = time.monotonic()
        seen = driver.observe(probe)
        elapsed = time.monotonic() - started
    except Exception as exc:
        # Connected, then lost: down. Connected, but the role query failed otherwise (a
        # permission, say): the host is up, its role unknown.
        role = Role.DOWN if driver.is_connection_lost(probe, exc) else Role.UNKNOWN
        refused = driver.is_configuration_error(exc)
        return CheckResult(role, error=driver.describe_error(exc), refused_us=refused)
    lag = seen.replica_lag if seen.role is Role.REPLICA else None
    return CheckResult(seen.role, response_time=elapsed, replica_lag=lag)
