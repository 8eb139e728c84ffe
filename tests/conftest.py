"""Fixtures shared by every suite: a clean global pool per test, pools (and anything else)
closed after their test, both pool classes for the behaviour they share, real sqlite3
connections a test can inspect, a hand-moved clock, polling with a deadline, threads joined
at teardown, the password and PostgreSQL cluster of the HA and CLI suites, and the asyncio
runner of the server suites' asyncio tests.

Helpers are handed out as fixtures: the suite runs with --import-mode=importlib, so test
modules (and the suites' own conftest files) cannot import this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import threading
import time
import types
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

import qdbpool
import qdbpool.bounded
import qdbpool.pool
import qdbpool.route_trades
from qdbpool import _global
from qdbpool.factories import SQLite

if TYPE_CHECKING:  # the server-free suites must not need the PostgreSQL driver
    from qdbpool.testing.postgres import PostgresCluster

T = TypeVar("T")

# How long the teardown of a pool waits for connections still in use: long enough for a
# holder the test has just told to let go, short enough not to slow a suite down.
CLOSE_TIMEOUT = 1.0


# How long one asyncio test of a server suite may run, whatever it awaits.
AIO_RUN_TIMEOUT = 60.0


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any]:
    """run(main): `main()` run to its end on a fresh loop (standard, then uvloop), bounded.
    (tests/aio has its own, with more loop kinds.)"""

    def run_(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        if request.param == "uvloop":
            uvloop = pytest.importorskip("uvloop")
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(asyncio.wait_for(main(), AIO_RUN_TIMEOUT))
        finally:
            loop.close()

    return run_


# -- pools -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_global_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with no global pool, default or named; whatever it initialized is
    closed after it."""
    monkeypatch.setattr(_global, "current", None)
    monkeypatch.setattr(_global, "named", {})
    yield
    for pool in [_global.current, *_global.named.values()]:
        if pool is not None:
            pool.close(timeout=CLOSE_TIMEOUT)


@pytest.fixture(params=[qdbpool.SingletonPool, qdbpool.BoundedPool], ids=["singleton", "bounded"])
def pool_cls(request: pytest.FixtureRequest) -> type[qdbpool.Pool]:
    """Each pool class in turn, for the behaviour both share (validation, hooks, stats,
    close, lifetime): `make_pool(..., pool_cls=pool_cls)`."""
    cls: type[qdbpool.Pool] = request.param
    return cls


@pytest.fixture
def closing() -> Iterator[Callable[[T], T]]:
    """closing(thing) -> thing: a pool, factory, server or proxy to close when the test ends,
    whatever happens; last registered, first closed. Pools do not wait long for
    connections still in use (CLOSE_TIMEOUT)."""
    things: list[Any] = []

    def register(thing: T) -> T:
        things.append(thing)
        return thing

    yield register
    for thing in reversed(things):
        with contextlib.suppress(Exception):
            if isinstance(thing, qdbpool.Pool):
                thing.close(timeout=CLOSE_TIMEOUT)
            else:
                thing.close()


@pytest.fixture
def make_pool(closing: Callable[[Any], Any]) -> Callable[..., Any]:
    """make_pool(*args, pool_cls=SingletonPool, **kwargs): a pool, closed when the test ends
    whatever happens (a pool closes its factory)."""

    def make(
        *args: Any, pool_cls: type[qdbpool.Pool] = qdbpool.SingletonPool, **kwargs: Any
    ) -> Any:
        return closing(pool_cls(*args, **kwargs))

    return make


# -- real sqlite3 connections ------------------------------------------------------------------


def is_closed(conn: sqlite3.Connection) -> bool:
    """Whether a real sqlite3 connection has been closed (no I/O, any thread)."""
    try:
        conn.total_changes  # noqa: B018 - raises ProgrammingError once closed
    except sqlite3.ProgrammingError:
        return True
    return False


@pytest.fixture
def closed_check() -> Callable[[sqlite3.Connection], bool]:
    """`is_closed(conn)` for real sqlite3 connections."""
    return is_closed


class Remembering:
    """Remembers every sqlite3 connection it opened, in order (`created`), from any thread."""

    def __init__(self) -> None:
        self.created: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def remember(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        with self._lock:
            self.created.append(conn)
        return conn

    def still_open(self) -> list[sqlite3.Connection]:
        with self._lock:
            return [c for c in self.created if not is_closed(c)]


class Recorder(Remembering):
    """A plain `get_conn` callable: opens real sqlite3 connections and remembers every one."""

    def __init__(self, path: str = ":memory:") -> None:
        super().__init__()
        self.path = path

    def __call__(self) -> sqlite3.Connection:
        return self.remember(sqlite3.connect(self.path, check_same_thread=False))


class RecordingSQLite(SQLite, Remembering):
    """The SQLite factory (rollback at release, ...), remembering every connection it
    opened."""

    def __init__(self) -> None:
        SQLite.__init__(self, ":memory:")
        Remembering.__init__(self)

    def connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        return self.remember(super().connect(read_only=read_only))


class PingableConnection:
    """A real sqlite3 connection behind a `ping()` that the test can make fail."""

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.pings = 0
        self.ping_fails = False

    @property
    def closed(self) -> bool:
        return is_closed(self.db)

    def ping(self) -> None:
        self.pings += 1
        if self.ping_fails:
            raise ConnectionError("ping failed")
        self.db.execute("SELECT 1").fetchall()

    def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
        return self.db.execute(sql, *params)

    def close(self) -> None:
        self.db.close()


class PingableRecorder:
    """`get_conn` making PingableConnections, remembering each."""

    def __init__(self) -> None:
        self.created: list[PingableConnection] = []

    def __call__(self) -> PingableConnection:
        conn = PingableConnection()
        self.created.append(conn)
        return conn


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_recorder() -> Callable[..., Recorder]:
    return Recorder


@pytest.fixture
def sqlite_factory() -> RecordingSQLite:
    return RecordingSQLite()


@pytest.fixture
def pingable() -> PingableRecorder:
    return PingableRecorder()


# -- time and waiting --------------------------------------------------------------------------


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Replaces the clock the pools read (the stdlib `time` module as qdbpool.pool,
    qdbpool.bounded and qdbpool.route_trades see it): lifetime, idleness, pre-ping,
    BoundedPool's burst_idle and waits (which then last their whole timeout: leave waiting
    to the tests without it), and the time between route trades."""
    c = Clock()
    fake = types.SimpleNamespace(monotonic=c.monotonic)
    monkeypatch.setattr(qdbpool.pool, "time", fake)
    monkeypatch.setattr(qdbpool.bounded, "time", fake)
    monkeypatch.setattr(qdbpool.route_trades, "time", fake)
    return c


def _poll(
    probe: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.01, what: str = "it"
) -> T:
    """Call `probe` until it returns something truthy, and return that; AssertionError
    after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s (last: {last!r})")
        time.sleep(interval)  # polling interval, not synchronisation


@pytest.fixture
def poll() -> Callable[..., Any]:
    """poll(probe, timeout=10, interval=0.01, what="it"): the first truthy probe() result."""
    return _poll


async def _until(probe: Callable[[], object], what: str = "it", timeout: float = 20.0) -> None:
    """Yield to the loop until `probe()` is true: for work that exposes no event (the pool's
    own tasks, a server's session list). Bounded: AssertionError after `timeout` seconds.

    Bounded in time, not in loop turns: some of that work runs in other threads (aiosqlite
    runs each connection's statements in one), and a loop spinning on sleep(0) gives them
    the GIL only every switch interval (5 ms). 2,000 turns once ran out before a storm's
    resets were done (uvloop, on CI); after the first 100 turns it sleeps 1 ms at a time."""
    deadline = time.monotonic() + timeout
    turns = 0
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s")
        await asyncio.sleep(0 if turns < 100 else 0.001)
        turns += 1


@pytest.fixture
def until() -> Callable[..., Coroutine[Any, Any, None]]:
    """await until(probe, what="it", timeout=20): yield to the loop (bounded in time) until
    probe() is true."""
    return _until


# -- threads and ports -------------------------------------------------------------------------


@pytest.fixture
def threads() -> Iterator[Callable[..., threading.Thread]]:
    """threads(target, *args, name=None): a started daemon thread, joined (bounded) at
    teardown. The target's exception, if any, is kept in `thread.error` for the test."""
    started: list[threading.Thread] = []

    def start(
        target: Callable[..., object], *args: Any, name: str | None = None
    ) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:
                thread.error = exc  # type: ignore[attr-defined]

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.error = None  # type: ignore[attr-defined]
        started.append(thread)
        thread.start()
        return thread

    yield start
    for thread in started:
        thread.join(timeout=10)


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port with nothing listening on it (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- OpenTelemetry metrics, as an application's SDK would read them -------------------------


class Metrics:
    """An SDK meter provider with an in-memory reader, for `qdbpool.metrics.instrument(...,
    meter_provider=metrics.provider)`; `read()` gives {(name, attributes): data point}."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def read(self) -> dict[tuple[str, frozenset[tuple[str, Any]]], Any]:
        points: dict[tuple[str, frozenset[tuple[str, Any]]], Any] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        points[metric.name, frozenset(point.attributes.items())] = point
        return points

    def value(self, name: str, attributes: dict[str, str]) -> Any:
        """A counter's or gauge's value, or a histogram's point, of the series with exactly
        these attributes; KeyError if it was not reported."""
        point = self.read()[name, frozenset(attributes.items())]
        return getattr(point, "value", point)

    def names(self) -> set[str]:
        return {name for name, _ in self.read()}


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    yield m
    m.provider.shutdown()


# -- the password the HA and CLI suites guard, and their PostgreSQL clusters -------------------

# Characters that need URL quoting, around a marker that no error, repr, log or output may
# ever show (neither as is nor percent-encoded: the marker itself needs no quoting, so
# finding it anywhere means some form of the password leaked).
SECRET_MARK = "SENTINEL"
PASSWORD = f"pw:{SECRET_MARK}/@% 7"
APP_USER = "app"


@pytest.fixture(scope="session")
def password() -> str:
    """The password of user `app` on the clusters `app_cluster` starts."""
    return PASSWORD


@pytest.fixture(scope="session")
def secret_mark() -> str:
    return SECRET_MARK


@pytest.fixture(scope="session")
def app_cluster() -> Callable[[int], contextlib.AbstractContextManager[PostgresCluster]]:
    """app_cluster(standbys): `with` it for a started primary + that many standbys with
    user `app` (the password above); skips, or fails under CI, without PostgreSQL."""

    from qdbpool.testing.availability import require_postgres
    from qdbpool.testing.postgres import PostgresCluster

    @contextlib.contextmanager
    def start(standbys: int) -> Iterator[PostgresCluster]:
        require_postgres()
        with PostgresCluster(standbys=standbys, user=APP_USER, password=PASSWORD) as c:
            yield c

    return start


@pytest.fixture(scope="session")
def shared_cluster(app_cluster: Callable[[int], Any]) -> Iterator[PostgresCluster]:
    """Primary + 2 standbys shared by every test that leaves its topology alone."""
    with app_cluster(2) as c:
        yield c
