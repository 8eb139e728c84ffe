"""OpenTelemetry metrics of a pool, through `opentelemetry-api` alone (`pip install
qdbpool[otel]`); your application chooses the SDK and the exporter.

    from qdbpool.metrics import instrument
    instrument(pool.instance(), name="orders")

Nothing here runs on a checkout's path: the pool keeps plain counters (`stats()`), which
observable instruments read when the SDK collects; histograms are recorded from pool events
(`qdbpool.events`), which happen only when a connection is opened or a caller waited.
`import qdbpool` never imports OpenTelemetry; only `import qdbpool.metrics` does.

Names follow the OpenTelemetry semantic conventions for database client connection pools
(`db.client.connection.*`, attribute `db.client.connection.pool.name`); what they do not
cover is under `qdbpool.*`. See docs/guides/metrics.md for the full list.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

try:
    from opentelemetry import metrics as otel
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - tested in a subprocess without it
    raise ImportError(
        "qdbpool.metrics needs the OpenTelemetry API: pip install 'qdbpool[otel]'"
    ) from exc

from qdbpool._version import version
from qdbpool.bounded import BoundedPool
from qdbpool.drivers.base import Role
from qdbpool.errors import ArgumentTypeError
from qdbpool.events import (
    CheckoutWaited,
    ConnectionClosed,
    ConnectionOpened,
    Event,
    FailoverObserved,
)
from qdbpool.factories.routed import RoutedFactory
from qdbpool.pool import Pool
from qdbpool.stats import PoolStats

__all__ = ["Instrumentation", "instrument"]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

# Buckets for waits and connects, in seconds: a loopback connect takes about a millisecond,
# a wait in line up to the pool's timeout (30 s by default).
# fmt: off
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                   10, 30)
# fmt: on


class Instrumentation:
    """What `instrument()` set up for one pool: `close()` stops its reports.

    (OpenTelemetry cannot remove an instrument from a meter; once closed, or once its pool
    is closed or collected, the instruments report nothing.)
    """

    def __init__(self, pool: Pool, name: str, meter_provider: MeterProvider | None) -> None:
        self._pool: Callable[[], Pool | None] = weakref.ref(pool)
        self._name = name
        self._attributes = {POOL_NAME: name}
        self._closed = False
        self._lock = threading.Lock()
        self._closed_by_reason: dict[str, int] = {}
        self._failovers = 0
        meter = otel.get_meter("qdbpool", version(), meter_provider=meter_provider)
        self._observe_pool(meter, pool)
        if isinstance(pool.factory, RoutedFactory):
            self._observe_hosts(meter)
        self._create_time = meter.create_histogram(
            "db.client.connection.create_time",
            unit="s",
            description="The time it took to open a new connection and check it",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self._wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time callers waited in line for a connection "
            "(recorded only when a caller had to wait)",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self._unsubscribe = pool.subscribe(self._on_event)

    @property
    def name(self) -> str:
        """The pool's name in the metrics (`db.client.connection.pool.name`)."""
        return self._name

    def close(self) -> None:
        """Stop reporting this pool. Idempotent."""
        self._closed = True
        self._unsubscribe()

    # -- events (the slow path) ---------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ConnectionOpened):
            self._create_time.record(event.seconds, self._attributes)
        elif isinstance(event, CheckoutWaited):
            self._wait_time.record(event.seconds, self._attributes)
        elif isinstance(event, ConnectionClosed):
            with self._lock:
                count = self._closed_by_reason.get(event.reason, 0)
                self._closed_by_reason[event.reason] = count + 1
        elif isinstance(event, FailoverObserved):
            with self._lock:
                self._failovers += 1

    # -- observable instruments (read when the SDK collects) ----------------------------

    def _live_pool(self) -> Pool | None:
        pool = self._pool()
        if self._closed or pool is None or pool.closed:
            return None
        return pool

    def _from_stats(
        self, read: Callable[[PoolStats], Iterable[tuple[int, dict[str, str]]]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """A callback that observes what `read` picks out of the pool's stats()."""

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            pool = self._live_pool()
            if pool is None:
                return []
            stats = pool.stats()
            return [
                Observation(value, {**self._attributes, **extra}) for value, extra in read(stats)
            ]

        return callback

    def _observe_pool(self, meter: otel.Meter, pool: Pool) -> None:
        none: dict[str, str] = {}
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            [self._from_stats(lambda s: [(s.idle, {STATE: "idle"}), (s.in_use, {STATE: "used"})])],
            unit="{connection}",
            description="Connections open, by state: idle or used (checked out)",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            [self._from_stats(lambda s: [(s.waiting, none)])],
            unit="{request}",
            description="Callers waiting for a connection",
        )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            [self._from_stats(lambda s: [(s.timeouts, none)])],
            unit="{timeout}",
            description="Callers that gave up waiting for a connection",
        )
        if isinstance(pool, BoundedPool):
            max_size = pool.max_size
            meter.create_observable_up_down_counter(
                "db.client.connection.max",
                [self._from_stats(lambda s: [(max_size, none)])],
                unit="{connection}",
                description="Connections the pool may open at most",
            )
        for field, unit, description in (
            ("checkouts", "{checkout}", "Connections handed out (nested checkouts included)"),
            ("created", "{connection}", "Connections opened successfully"),
            ("connect_errors", "{error}", "Attempts to open a connection that raised"),
            ("discarded", "{connection}", "Connections found unfit and replaced"),
        ):
            meter.create_observable_counter(
                f"qdbpool.connection.{field}",
                [self._from_stats(_counter(field))],
                unit=unit,
                description=description,
            )
        meter.create_observable_counter(
            "qdbpool.connection.closed",
            [self._closed_callback],
            unit="{connection}",
            description="Connections closed since instrument(), by reason "
            "(qdbpool.close.reason; see qdbpool.events.CloseReason)",
        )

    def _closed_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._live_pool() is None:
            return []
        with self._lock:
            counts = dict(self._closed_by_reason)
        return [
            Observation(n, {**self._attributes, "qdbpool.close.reason": reason})
            for reason, n in sorted(counts.items())
        ]

    def _observe_hosts(self, meter: otel.Meter) -> None:
        meter.create_observable_gauge(
            "qdbpool.host.role",
            [self._host_callback(self._roles)],
            unit="1",
            description="1 for a host's current role (qdbpool.host.role: primary, replica, "
            "unknown, down), 0 for the others",
        )
        meter.create_observable_gauge(
            "qdbpool.host.up",
            [self._host_callback(lambda h: [(int(h.role in _SERVING), {})])],
            unit="1",
            description="1 if the host answered its last check as a primary or replica",
        )
        meter.create_observable_gauge(
            "qdbpool.host.check.duration",
            [self._host_callback(lambda h: _known(h.response_time))],
            unit="s",
            description="Median duration of the host's recent checks",
        )
        meter.create_observable_gauge(
            "qdbpool.host.replication_lag",
            [self._host_callback(lambda h: _known(h.replica_lag))],
            unit="s",
            description="How far a replica is behind the primary",
        )
        meter.create_observable_up_down_counter(
            "qdbpool.host.connections",
            [self._host_callback(lambda h: [(h.connections, {})])],
            unit="{connection}",
            description="Connections open to the host from this process",
        )
        meter.create_observable_counter(
            "qdbpool.failovers",
            [self._failover_callback],
            unit="{failover}",
            description="Times a host became the primary in place of another, since instrument()",
        )

    @staticmethod
    def _roles(host: Any) -> list[tuple[int, dict[str, str]]]:
        return [(int(host.role is role), {"qdbpool.host.role": role.value}) for role in Role]

    def _host_callback(
        self, read: Callable[[Any], Iterable[tuple[float, dict[str, str]]]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """A callback observing `read(host)` for each host of the pool's routing factory."""

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            pool = self._live_pool()
            if pool is None or not isinstance(pool.factory, RoutedFactory):
                return []
            observations = []
            for host in pool.factory.hosts():
                where = {
                    **self._attributes,
                    "server.address": host.address.host,
                    "server.port": str(host.address.port),
                }
                for value, extra in read(host):
                    observations.append(Observation(value, {**where, **extra}))
            return observations

        return callback

    def _failover_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._live_pool() is None:
            return []
        return [Observation(self._failovers, self._attributes)]


_SERVING = (Role.PRIMARY, Role.REPLICA)


def _counter(field: str) -> Callable[[PoolStats], list[tuple[int, dict[str, str]]]]:
    """Reads one field of PoolStats, with no extra attribute."""
    return lambda stats: [(getattr(stats, field), {})]


def _known(value: float | None) -> list[tuple[float, dict[str, str]]]:
    return [] if value is None else [(value, {})]


def instrument(
    pool: Pool, *, name: str = "default", meter_provider: MeterProvider | None = None
) -> Instrumentation:
    """Publish `pool`'s metrics through OpenTelemetry, labelled `name`.

    Args:
        pool: The pool, e.g. `qdbpool.instance()` or `qdbpool.instance("ts")`.
        name: Its `db.client.connection.pool.name`; give each pool of a process its own.
        meter_provider: Where to publish; by default the global one that your SDK set up
            (`opentelemetry.metrics.set_meter_provider`).

    Returns:
        The `Instrumentation`, whose `close()` stops the reports.

    Raises:
        ArgumentTypeError: `pool` is not a qdbpool pool, or `name` is not a non-empty string.
    """
    if not isinstance(pool, Pool):
        raise ArgumentTypeError(f"instrument() needs a qdbpool pool, not {type(pool).__name__}")
    if not isinstance(name, str) or not name:
        raise ArgumentTypeError(f"name must be a non-empty string, not {name!r}")
    return Instrumentation(pool, name, meter_provider)
