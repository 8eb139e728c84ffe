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
cover is under `qdbpool.*`. See docs/metrics.md (Metrics and events) for the full list.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable

try:
    from opentelemetry import metrics as otel
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - tested in a subprocess without it
    raise ImportError(
        "qdbpool.metrics needs the OpenTelemetry API: pip install 'qdbpool[otel]'"
    ) from exc

from qdbpool import _fork
from qdbpool._version import version
from qdbpool.bounded import BoundedPool
from qdbpool.cluster.hosts import HostStatus
from qdbpool.drivers.base import Role
from qdbpool.errors import ArgumentTypeError, ConfigurationError
from qdbpool.events import (
    CheckoutWaited,
    ConnectionClosed,
    ConnectionOpened,
    Event,
    FailoverObserved,
)
from qdbpool.factories.routed import RoutedFactory
from qdbpool.pool import Pool

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
    """What `instrument()` set up for one pool: `close()` stops its reports."""

    def __init__(self, pool: Pool, name: str, publisher: _Publisher) -> None:
        self._pool: Callable[[], Pool | None] = weakref.ref(pool)
        self._name = name
        self.attributes = {POOL_NAME: name}
        self.publisher = publisher
        self._closed = False
        self._lock = threading.Lock()
        self._closed_by_reason: dict[str, int] = {}
        self._failovers = 0
        self._unsubscribe = pool.subscribe(self._on_event)

    @property
    def name(self) -> str:
        """The pool's name in the metrics (`db.client.connection.pool.name`)."""
        return self._name

    def close(self) -> None:
        """Stop reporting this pool (its name may then be used again). Idempotent."""
        self._closed = True
        self._unsubscribe()
        with _registry_lock:
            if self in _members:
                _members.remove(self)

    def live_pool(self) -> Pool | None:
        """The pool, while it is open and this is not closed."""
        pool = self._pool()
        if self._closed or pool is None or pool.closed:
            return None
        return pool

    def closed_by_reason(self) -> dict[str, int]:
        with self._lock:
            return dict(self._closed_by_reason)

    @property
    def failovers(self) -> int:
        return self._failovers

    # -- events (the slow path) ---------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ConnectionOpened):
            self.publisher.create_time.record(event.seconds, self.attributes)
        elif isinstance(event, CheckoutWaited):
            self.publisher.wait_time.record(event.seconds, self.attributes)
        elif isinstance(event, ConnectionClosed):
            with self._lock:
                count = self._closed_by_reason.get(event.reason, 0)
                self._closed_by_reason[event.reason] = count + 1
        elif isinstance(event, FailoverObserved):
            with self._lock:
                self._failovers += 1


Observed = Iterable[tuple[float, dict[str, str]]]


class _Publisher:
    """Every instrument, made once per meter provider asked for (None: the global one).

    OpenTelemetry keeps the first instrument of a name on a meter and drops the callbacks
    of later ones. Two publishers can still end up on one provider: one asked for it by
    name before it became the global one, and the global one's. So each callback reports
    every pool instrumented on the provider its publisher publishes to now, whichever
    publisher's; the one whose callbacks the SDK kept reports them all."""

    def __init__(self, meter_provider: MeterProvider | None) -> None:
        self.meter_provider = meter_provider
        meter = otel.get_meter("qdbpool", version(), meter_provider=meter_provider)
        self._observe_pools(meter)
        self._observe_hosts(meter)
        self.create_time = meter.create_histogram(
            "db.client.connection.create_time",
            unit="s",
            description="The time it took to open a new connection and check it",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time callers waited in line for a connection "
            "(recorded only when a caller had to wait)",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )

    def target(self) -> object:
        """The provider it publishes to now."""
        return otel.get_meter_provider() if self.meter_provider is None else self.meter_provider

    def _live(self) -> list[tuple[Instrumentation, Pool]]:
        target = self.target()
        with _registry_lock:
            _prune_locked()
            members = [m for m in _members if m.publisher.target() is target]
        return [(m, pool) for m in members if (pool := m.live_pool()) is not None]

    # -- observable instruments (read when the SDK collects) ----------------------------

    def _each_pool(
        self, read: Callable[[Instrumentation, Pool], Observed]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """A callback observing `read(member, pool)` for every live instrumented pool."""

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(value, {**member.attributes, **extra})
                for member, pool in self._live()
                for value, extra in read(member, pool)
            ]

        return callback

    def _observe_pools(self, meter: otel.Meter) -> None:
        def counts(member: Instrumentation, pool: Pool) -> Observed:
            stats = pool.stats()
            return [(stats.idle, {STATE: "idle"}), (stats.in_use, {STATE: "used"})]

        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            [self._each_pool(counts)],
            unit="{connection}",
            description="Connections open, by state: idle or used (checked out)",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            [self._each_pool(_stat("waiting"))],
            unit="{request}",
            description="Callers waiting for a connection",
        )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            [self._each_pool(_stat("timeouts"))],
            unit="{timeout}",
            description="Callers that gave up waiting for a connection",
        )

        def max_size(member: Instrumentation, pool: Pool) -> Observed:
            return [(pool.max_size, {})] if isinstance(pool, BoundedPool) else []

        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            [self._each_pool(max_size)],
            unit="{connection}",
            description="Connections the pool may open at most (BoundedPool)",
        )
        for field, unit, description in (
            ("checkouts", "{checkout}", "Connections handed out (nested checkouts included)"),
            ("created", "{connection}", "Connections opened successfully"),
            ("connect_errors", "{error}", "Attempts to open a connection that raised"),
            ("discarded", "{connection}", "Connections found unfit and replaced"),
        ):
            meter.create_observable_counter(
                f"qdbpool.connection.{field}",
                [self._each_pool(_stat(field))],
                unit=unit,
                description=description,
            )

        def closed(member: Instrumentation, pool: Pool) -> Observed:
            return [
                (n, {"qdbpool.close.reason": reason})
                for reason, n in sorted(member.closed_by_reason().items())
            ]

        meter.create_observable_counter(
            "qdbpool.connection.closed",
            [self._each_pool(closed)],
            unit="{connection}",
            description="Connections closed since instrument(), by reason "
            "(qdbpool.close.reason; see qdbpool.events.CloseReason)",
        )

    def _observe_hosts(self, meter: otel.Meter) -> None:
        meter.create_observable_gauge(
            "qdbpool.host.role",
            [self._each_host(_roles)],
            unit="1",
            description="1 for a host's current role (qdbpool.host.role: primary, replica, "
            "unknown, down), 0 for the others",
        )
        meter.create_observable_gauge(
            "qdbpool.host.up",
            [self._each_host(lambda h: [(int(h.role in _SERVING), {})])],
            unit="1",
            description="1 if the host answered its last check as a primary or replica",
        )
        meter.create_observable_gauge(
            "qdbpool.host.check.duration",
            [self._each_host(lambda h: _known(h.response_time))],
            unit="s",
            description="Median duration of the host's recent checks",
        )
        meter.create_observable_gauge(
            "qdbpool.host.replication_lag",
            [self._each_host(lambda h: _known(h.replica_lag))],
            unit="s",
            description="How far a replica is behind the primary",
        )
        meter.create_observable_up_down_counter(
            "qdbpool.host.connections",
            [self._each_host(lambda h: [(h.connections, {})])],
            unit="{connection}",
            description="Connections open to the host from this process",
        )

        def failovers(member: Instrumentation, pool: Pool) -> Observed:
            routed = isinstance(pool.factory, RoutedFactory)
            return [(member.failovers, {})] if routed else []

        meter.create_observable_counter(
            "qdbpool.failovers",
            [self._each_pool(failovers)],
            unit="{failover}",
            description="Times a host became the primary in place of another, since instrument()",
        )

    def _each_host(
        self, read: Callable[[HostStatus], Observed]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """A callback observing `read(host)` for each host of each routing factory."""

        def hosts(member: Instrumentation, pool: Pool) -> Observed:
            factory = pool.factory
            if not isinstance(factory, RoutedFactory):
                return []
            found: list[tuple[float, dict[str, str]]] = []
            for host in factory.hosts():
                where = {"server.address": host.address.host, "server.port": str(host.address.port)}
                found.extend((value, {**where, **extra}) for value, extra in read(host))
            return found

        return self._each_pool(hosts)


def _stat(field: str) -> Callable[[Instrumentation, Pool], Observed]:
    """Reads one field of the pool's stats(), with no attribute of its own."""
    return lambda member, pool: [(getattr(pool.stats(), field), {})]


def _roles(host: HostStatus) -> Observed:
    return [(int(host.role is role), {"qdbpool.host.role": role.value}) for role in Role]


_SERVING = (Role.PRIMARY, Role.REPLICA)


def _known(value: float | None) -> Observed:
    return [] if value is None else [(value, {})]


# One publisher per meter provider; None stands for the global one (set or not yet: a
# meter made before `set_meter_provider` follows it once it is set).
_publishers: dict[object, _Publisher] = {}
_publishers_lock = _fork.Lock()
# Every pool instrumented and still open, whichever its publisher. Its lock is never held
# while calling into OpenTelemetry: the SDK calls the callbacks that take it while it holds
# locks of its own, which making instruments takes too.
_members: list[Instrumentation] = []
_registry_lock = _fork.Lock()


def _prune_locked() -> None:
    """Forget the pools closed or gone: a program that makes a pool per job and never
    closes its Instrumentation must not keep one entry per pool it ever made."""
    _members[:] = [m for m in _members if m.live_pool() is not None]


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
        ConfigurationError: another open pool is instrumented under `name` on the same
            meter provider (a ValueError).
    """
    if not isinstance(pool, Pool):
        kind = type(pool)
        raise ArgumentTypeError(
            "instrument() needs a threaded qdbpool pool (qdbpool.SingletonPool or "
            f"qdbpool.BoundedPool; qdbpool.aio has no metrics yet), not "
            f"{kind.__module__}.{kind.__qualname__}"
        )
    if not isinstance(name, str) or not name:
        raise ArgumentTypeError(f"name must be a non-empty string, not {name!r}")
    if meter_provider is otel.get_meter_provider():
        meter_provider = None  # the global one, however it is named
    with _publishers_lock:
        publisher = _publishers.get(meter_provider)
        if publisher is None:
            publisher = _publishers[meter_provider] = _Publisher(meter_provider)
    with _registry_lock:
        _prune_locked()
        target = publisher.target()
        if any(m.name == name and m.publisher.target() is target for m in _members):
            raise ConfigurationError(
                f"a pool named {name!r} is instrumented already: give each pool its own "
                f"name (instrument(pool, name=...))"
            )
        member = Instrumentation(pool, name, publisher)
        _members.append(member)
    return member
