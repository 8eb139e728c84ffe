"""Fixtures for the behaviour tests of the PostgreSQL HA factory, on real local clusters.

Helpers are handed out as fixtures: the suite runs with --import-mode=importlib, so test
modules cannot import this file. Every cluster, pool and proxy made here is closed when
its test (or module) ends, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import pytest

import qdbpool
from qdbpool.cluster import HostStatus
from qdbpool.drivers import HostDriver
from qdbpool.dsn import parse_dsn
from qdbpool.factories.postgres import Postgres
from qdbpool.testing.availability import require_postgres
from qdbpool.testing.postgres import Node, PostgresCluster

T = TypeVar("T")

MONITOR_APP_NAME = "qdbpool-monitor"


# -- clusters ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_cluster(app_cluster: Callable[[int], Any]) -> Iterator[PostgresCluster]:
    """Primary + 2 standbys for one module's tests, which leave its topology alone."""
    with app_cluster(2) as c:
        yield c


@pytest.fixture
def cluster(app_cluster: Callable[[int], Any]) -> Iterator[PostgresCluster]:
    """A fresh primary + 2 standbys (user `app`, with `password`); the test may break it."""
    with app_cluster(2) as c:
        yield c


@pytest.fixture
def make_cluster(closing: Callable[[Any], Any]) -> Callable[..., PostgresCluster]:
    """PostgresCluster(**kwargs), started; closed when the test ends."""
    require_postgres()

    def make(**kwargs: Any) -> PostgresCluster:
        c: PostgresCluster = closing(PostgresCluster(**kwargs))
        return c.start()

    return make


@pytest.fixture
def url_for() -> Callable[..., str]:
    """A multi-host URL with the cluster's credentials over explicit (host, port) pairs,
    e.g. to reach one node through a proxy."""

    def url(c: PostgresCluster, hosts: list[tuple[str, int]]) -> str:
        netloc = ",".join(f"{h}:{p}" for h, p in hosts)
        userinfo = quote(c.user, safe="")
        if c.password:
            userinfo += ":" + quote(c.password, safe="")
        return f"postgresql://{userinfo}@{netloc}/{quote(c.dbname, safe='')}"

    return url


# -- pools ------------------------------------------------------------------------------------


class Driver:
    """One client library the suite runs over: `name` for Postgres(driver=...), `module`
    (psycopg or psycopg2) for its errors, `factory(dsn, **kwargs)` for a Postgres over it.

    psycopg2's connections are given a connection class that adds psycopg 3's
    `conn.execute(sql, params)` (returning the cursor), so that one test body reads both."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.module: Any = pytest.importorskip(name)
        self.connect_kwargs: dict[str, Any] = {}
        if name == "psycopg2":
            self.connect_kwargs["connection_factory"] = _executing_connection_class()

    def factory(self, dsn: str, **kwargs: Any) -> Postgres:
        return Postgres(dsn, driver=self.name, **{**self.connect_kwargs, **kwargs})

    def host_driver(self, dsn: str, **kwargs: Any) -> HostDriver:
        """The driver alone (qdbpool.drivers), for what it promises about one host."""
        parsed = parse_dsn(dsn)
        connect_kwargs = {**self.connect_kwargs, **kwargs}
        if self.name == "psycopg2":
            from qdbpool.drivers.psycopg2 import Psycopg2Driver

            return Psycopg2Driver(parsed, connect_kwargs)
        from qdbpool.drivers.psycopg import PsycopgDriver

        return PsycopgDriver(parsed, connect_kwargs)

    def __repr__(self) -> str:
        return self.name


def _executing_connection_class() -> type[Any]:
    import psycopg2.extensions

    class ExecutingConnection(psycopg2.extensions.connection):  # type: ignore[misc]
        def execute(self, query: str, params: Any = None) -> Any:
            cursor = self.cursor()
            cursor.execute(query, params)
            return cursor

    return ExecutingConnection


DRIVERS = ["psycopg", "psycopg2"]


@pytest.fixture(params=DRIVERS)
def pg(request: pytest.FixtureRequest) -> Driver:
    """Each PostgreSQL driver in turn: every test that makes a pool here runs over both."""
    return Driver(request.param)


@pytest.fixture
def make_pool(make_pool: Callable[..., Any], pg: Driver) -> Callable[..., Any]:
    """make_pool(dsn, pool_cls=SingletonPool, pool_kwargs=None, **Postgres kwargs): a pool
    over a new Postgres factory (`pool.factory`) with the driver `pg`; closed, with its
    factory, after the test."""

    def make(
        dsn: str,
        *,
        pool_cls: type[Any] = qdbpool.SingletonPool,
        pool_kwargs: dict[str, Any] | None = None,
        **factory_kwargs: Any,
    ) -> Any:
        factory = pg.factory(dsn, **factory_kwargs)
        try:
            return make_pool(factory, pool_cls=pool_cls, **(pool_kwargs or {}))
        except BaseException:
            factory.close()
            raise

    return make


# -- threads ----------------------------------------------------------------------


def _in_new_thread(fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
    """fn(*args) in a thread of its own, which then ends (and so releases its connections)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="pg-test-worker")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{fn!r} did not return within {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@pytest.fixture
def in_new_thread() -> Callable[..., Any]:
    return _in_new_thread


WHERE = "SELECT inet_server_port(), pg_is_in_recovery(), pg_backend_pid()"


@pytest.fixture
def where() -> Callable[[Any], tuple[int, bool, int]]:
    """(server port, in recovery, backend pid) of a connection."""

    def query(conn: Any) -> tuple[int, bool, int]:
        row = conn.execute(WHERE).fetchone()
        return int(row[0]), bool(row[1]), int(row[2])

    return query


@pytest.fixture
def read_port_in_new_thread(in_new_thread: Callable[..., Any]) -> Callable[..., int]:
    """The port of the server a fresh thread's connection (read_only or not) lands on."""

    def read(pool: Any, read_only: bool = True) -> int:
        def body() -> int:
            with pool.connect(read_only=read_only) as conn:
                return int(conn.execute("SELECT inet_server_port()").fetchone()[0])

        return int(in_new_thread(body))

    return read


class Holder:
    """A thread that takes a connection from `pool` and keeps it until `stop()`.

    `checked_out=True`: inside `with pool.connect()` the whole time; False: it checks the
    connection out, gives it back, and the thread then holds it idle (a SingletonPool slot).
    """

    def __init__(
        self,
        pool: Any,
        *,
        read_only: bool,
        checked_out: bool = True,
        start: threading.Barrier | None = None,
    ) -> None:
        self.pool = pool
        self.read_only = read_only
        self.checked_out = checked_out
        self.start_barrier = start
        self.opened = threading.Event()
        self.again = threading.Event()  # idle holders: check out once more, then wait
        self.checked_again = threading.Event()
        self.release = threading.Event()
        self.port: int | None = None
        self.pid: int | None = None
        self.second: tuple[int, int] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="pg-test-holder", daemon=True)
        self.thread.start()

    def _where(self, conn: Any) -> tuple[int, int]:
        port, pid = conn.execute("SELECT inet_server_port(), pg_backend_pid()").fetchone()
        return int(port), int(pid)

    def _run(self) -> None:
        try:
            if self.start_barrier is not None:
                self.start_barrier.wait(30)
            with self.pool.connect(read_only=self.read_only) as conn:
                self.port, self.pid = self._where(conn)
                if self.checked_out:
                    self.opened.set()
                    self.release.wait(60)
                    return
            self.opened.set()
            if self.again.wait(60) and not self.release.is_set():
                with self.pool.connect(read_only=self.read_only) as conn:
                    self.second = self._where(conn)
                self.checked_again.set()
            self.release.wait(60)
        except BaseException as exc:
            self.error = exc
            self.opened.set()
            self.checked_again.set()

    def wait_opened(self, timeout: float = 30.0) -> int:
        assert self.opened.wait(timeout), "holder did not get a connection in time"
        if self.error is not None:
            raise self.error
        assert self.port is not None
        return self.port

    def check_out_again(self, timeout: float = 30.0) -> tuple[int, int]:
        self.again.set()
        assert self.checked_again.wait(timeout), "holder did not check out again in time"
        if self.error is not None:
            raise self.error
        assert self.second is not None
        return self.second

    def stop(self) -> None:
        self.release.set()
        self.again.set()
        self.thread.join(10)


@pytest.fixture
def hold() -> Iterator[Callable[..., Holder]]:
    """hold(pool, read_only=..., checked_out=True, start=None) -> a Holder; all are told to
    let go when the test ends."""
    holders: list[Holder] = []

    def make(
        pool: Any,
        *,
        read_only: bool,
        checked_out: bool = True,
        start: threading.Barrier | None = None,
    ) -> Holder:
        holder = Holder(pool, read_only=read_only, checked_out=checked_out, start=start)
        holders.append(holder)
        return holder

    yield make
    for holder in holders:
        holder.release.set()
        holder.again.set()
    for holder in holders:
        holder.thread.join(10)


# -- what the factory and the servers say -------------------------------------------------------


@pytest.fixture
def status_of() -> Callable[[Any, int], HostStatus]:
    """The factory's last known state of the host listening on `port`."""

    def find(pool_or_factory: Any, port: int) -> HostStatus:
        factory = getattr(pool_or_factory, "factory", pool_or_factory)
        for status in factory.hosts():
            if status.address.port == port:
                return status
        raise AssertionError(f"no host on port {port} in {factory.hosts()}")

    return find


def _app_backends(c: PostgresCluster, *, monitors: bool = False) -> dict[str, list[int]]:
    """Backend pids of the cluster's user on each running node, by node name; without the
    monitor's probes unless `monitors`."""
    query = (
        "SELECT pid FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend'"
    )
    params: list[Any] = [c.user]
    if not monitors:
        query += " AND application_name <> %s"
        params.append(MONITOR_APP_NAME)
    found: dict[str, list[int]] = {}
    for node in c.nodes:
        if node.running:
            found[node.name] = sorted(row[0] for row in node.sql(query, params, dbname="postgres"))
    return found


@pytest.fixture
def app_backends() -> Callable[..., dict[str, list[int]]]:
    return _app_backends


@pytest.fixture
def monitor_backends() -> Callable[[Node], list[int]]:
    """Pids of the monitor's probe sessions on one node."""

    def pids(node: Node) -> list[int]:
        rows = node.sql(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            [MONITOR_APP_NAME],
            dbname="postgres",
        )
        return sorted(row[0] for row in rows)

    return pids


# -- a slow network link ----------------------------------------------------------------------


class DelayProxy:
    """A loopback TCP forwarder that holds every server-to-client chunk back for `delay`
    seconds: a host that answers slowly (a long network path), for the weighted balancer."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="pg-test-delay", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                return  # listener closed, or the target is gone: the client sees EOF
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, 0.0)
            self._spawn(self._pump, upstream, client, self.delay)

    def _pump(self, src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while True:  # ends at EOF or when close() shuts the sockets down
                data = src.recv(65536)
                if not data:
                    break
                if delay and self._closed.wait(delay):  # the simulated latency
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)
        for sock in sockets:
            sock.close()


@pytest.fixture
def make_delay_proxy(closing: Callable[[Any], Any]) -> Callable[[int, float], DelayProxy]:
    """make_delay_proxy(target_port, delay): a DelayProxy, closed when the test ends."""

    def make(target_port: int, delay: float) -> DelayProxy:
        proxy: DelayProxy = closing(DelayProxy(target_port, delay))
        return proxy

    return make


@pytest.fixture
def promote_another() -> Callable[[PostgresCluster], Node]:
    """What an orchestrator does for a planned switchover once the primary is read-only:
    promote the standby that has the most WAL and make the other follow it."""

    def promote(c: PostgresCluster) -> Node:
        c.wait_replicated()
        target = max(c.standbys, key=lambda node: node.receive_lsn() or 0)
        target.promote()
        for node in c.standbys:
            if node is not target:
                node.repoint(target)
        return target

    return promote
