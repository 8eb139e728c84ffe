"""qdbpool.metrics: a pool's metrics read through the OpenTelemetry SDK's in-memory reader
agree with stats(); histograms are recorded only on the slow path; nothing of OpenTelemetry
is imported by `import qdbpool`. The per-host metrics through a real failover are in
tests/pg/test_metrics.py."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import weakref
from typing import Any, ClassVar

import pytest

import qdbpool
import qdbpool.aio
import qdbpool.aio.factories
from qdbpool import ArgumentTypeError, BoundedPool, ConfigurationError, PoolTimeoutError
from qdbpool.factories import SQLite
from qdbpool.metrics import instrument

JOIN = 30.0
POOL = "db.client.connection.pool.name"


class Reading:
    """The `metrics` fixture's reads for the pool named "test", with short keywords for
    attribute names (state= is db.client.connection.state)."""

    SHORT: ClassVar[dict[str, str]] = {
        "state": "db.client.connection.state",
        "reason": "qdbpool.close.reason",
    }

    def __init__(self, metrics: Any) -> None:
        self.provider = metrics.provider
        self.read = metrics.read
        self.names = metrics.names
        self._value = metrics.value

    def value(self, name: str, **attributes: str) -> Any:
        full = {POOL: "test", **{self.SHORT[k]: v for k, v in attributes.items()}}
        return self._value(name, full)


@pytest.fixture
def metrics(metrics: Any) -> Reading:
    """tests/conftest.py's, read for the pool named "test"."""
    return Reading(metrics)


def in_thread(fn: Any) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(JOIN)
    if errors:
        raise errors[0]


def test_the_pool_metrics_agree_with_stats(make_pool, pool_cls, metrics, clock):
    pool = make_pool(SQLite(), pool_cls=pool_cls, max_lifetime=60)
    instrument(pool, name="test", meter_provider=metrics.provider)
    held = pool.connect()
    for _ in range(5):
        in_thread(lambda: pool.connect().close())
    clock.advance(61)
    with pool.connect():  # nested in this thread's checkout
        pass
    held.close()
    with pool.connect():  # expired: discarded and replaced
        stats = pool.stats()
        assert metrics.value("db.client.connection.count", state="used") == stats.in_use == 1
        assert metrics.value("db.client.connection.count", state="idle") == stats.idle
        assert metrics.value("qdbpool.connection.checkouts") == stats.checkouts
        assert metrics.value("qdbpool.connection.created") == stats.created
        assert metrics.value("qdbpool.connection.discarded") == stats.discarded >= 1
        assert metrics.value("qdbpool.connection.connect_errors") == 0
        assert metrics.value("db.client.connection.create_time").count == stats.created
        closed = {
            dict(attributes)["qdbpool.close.reason"]: point.value
            for (name, attributes), point in metrics.read().items()
            if name == "qdbpool.connection.closed"
        }
        assert sum(closed.values()) == stats.closed
        assert closed["expired"] == stats.discarded


def test_wait_time_is_recorded_only_for_callers_that_waited(make_pool, metrics):
    pool = make_pool(SQLite(), pool_cls=BoundedPool, size=1, max_size=1, timeout=0.2)
    instrument(pool, name="test", meter_provider=metrics.provider)
    for _ in range(100):
        with pool.connect():
            pass
    assert "db.client.connection.wait_time" not in metrics.names()
    with pool.connect(), pytest.raises(PoolTimeoutError):
        in_thread(lambda: pool.connect().close())
    waited = metrics.value("db.client.connection.wait_time")
    assert waited.count == 1 and waited.sum >= 0.2
    assert metrics.value("db.client.connection.timeouts") == pool.stats().timeouts == 1
    assert metrics.value("db.client.connection.max") == 1
    assert metrics.value("db.client.connection.pending_requests") == 0


def test_a_closed_instrumentation_or_pool_reports_nothing(make_pool, metrics):
    first = make_pool(SQLite())
    second = make_pool(SQLite())
    instrument(first, name="first", meter_provider=metrics.provider).close()
    instrument(second, name="test", meter_provider=metrics.provider)
    with first.connect(), second.connect():
        pass
    assert {dict(k)[POOL] for _, k in metrics.read()} == {"test"}
    second.close()
    # Only the histograms remain (the SDK keeps what was recorded); nothing is observed.
    assert metrics.names() == {"db.client.connection.create_time"}


def test_a_closed_pool_is_forgotten_even_if_its_instrumentation_is_never_closed(metrics):
    # A pool per job, each instrumented under its own name and closed, the Instrumentation
    # dropped unclosed: one registry entry per pool ever made, for the process's lifetime.
    gone = []
    for job in range(3):
        pool = qdbpool.SingletonPool(SQLite())
        gone.append(
            weakref.ref(instrument(pool, name=f"job{job}", meter_provider=metrics.provider))
        )
        with pool.connect():
            pass
        pool.close()
        del pool
    metrics.read()  # a collection, as the SDK's reader makes one every so often
    gc.collect()
    assert [ref() for ref in gone] == [None, None, None]


def test_every_pool_of_a_meter_provider_is_reported(make_pool, metrics):
    """OpenTelemetry keeps the first instrument of a name on a meter: the second pool's
    own instruments would be dropped, so both must be reported by one set."""
    orders, prices = make_pool(SQLite()), make_pool(SQLite(), pool_cls=BoundedPool)
    instrument(orders, name="orders", meter_provider=metrics.provider)
    instrument(prices, name="prices", meter_provider=metrics.provider)
    with orders.connect(), prices.connect(), prices.connect():
        names = {
            dict(attributes)[POOL]: point.value
            for (name, attributes), point in metrics.read().items()
            if name == "qdbpool.connection.checkouts"
        }
        assert names == {"orders": 1, "prices": 2}
        maxima = [
            dict(attributes)[POOL]
            for (name, attributes) in metrics.read()
            if name == "db.client.connection.max"
        ]
        assert maxima == ["prices"]  # a SingletonPool has no maximum


def test_a_name_is_one_pool_at_a_time(make_pool, metrics):
    first = instrument(make_pool(SQLite()), name="orders", meter_provider=metrics.provider)
    with pytest.raises(ConfigurationError, match="'orders' is instrumented already"):
        instrument(make_pool(SQLite()), name="orders", meter_provider=metrics.provider)
    first.close()
    instrument(make_pool(SQLite()), name="orders", meter_provider=metrics.provider)


def test_pools_instrumented_before_and_after_the_global_provider_is_set_are_reported():
    # In a process of its own: the global meter provider can be set once per process.
    # "named" is given the provider before it becomes the global one: its instruments and
    # those made for the global provider end up on one meter, where the SDK keeps the
    # callbacks of one set only (the pools of the other set went unreported).
    code = """
import qdbpool
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from qdbpool.errors import ConfigurationError
from qdbpool.factories import SQLite
from qdbpool.metrics import instrument

early = qdbpool.SingletonPool(SQLite(":memory:"))
instrument(early, name="early")                      # the API's proxy provider
reader = InMemoryMetricReader()
provider = MeterProvider(metric_readers=[reader])
named = qdbpool.SingletonPool(SQLite(":memory:"))
instrument(named, name="named", meter_provider=provider)
metrics.set_meter_provider(provider)
late = qdbpool.SingletonPool(SQLite(":memory:"))
instrument(late, name="late")
try:
    instrument(qdbpool.SingletonPool(SQLite(":memory:")), name="named")
except ConfigurationError:
    pass  # the same name on the same provider, if asked for by another name
else:
    print("a second 'named' was accepted")
with early.connect(), named.connect(), late.connect():
    pass
names = set()
for resource in reader.get_metrics_data().resource_metrics:
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            if metric.name == "qdbpool.connection.checkouts":
                for point in metric.data.data_points:
                    names.add(point.attributes["db.client.connection.pool.name"])
print(sorted(names))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "['early', 'late', 'named']", out.stderr


def test_instrument_names_what_was_wrong(make_pool):
    with pytest.raises(
        ArgumentTypeError, match=r"needs a threaded qdbpool pool .*, not builtins\.object"
    ):
        instrument(object())  # type: ignore[arg-type]
    # qdbpool.aio's pool shares the class name of the threaded one: the message names both.
    with pytest.raises(ArgumentTypeError, match=r"not qdbpool\.aio\.pool\.BoundedPool"):
        instrument(qdbpool.aio.BoundedPool(qdbpool.aio.factories.SQLite()))  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="name must be a non-empty string"):
        instrument(make_pool(SQLite()), name="")


def test_import_qdbpool_does_not_import_opentelemetry():
    code = "import sys, qdbpool; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_without_the_otel_extra_the_import_error_says_what_to_install():
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "try:\n    import qdbpool.metrics\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'qdbpool[otel]'" in out.stdout, out.stderr


def test_the_global_pool_can_be_instrumented_with_the_global_meter_provider(tmp_path):
    qdbpool.initialize(SQLite(str(tmp_path / "app.db")))
    instrumentation = instrument(qdbpool.instance())  # the API's no-op provider here
    assert instrumentation.name == "default"
    instrumentation.close()
