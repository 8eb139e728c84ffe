"""Shared fixtures of the core suite: real sqlite3 connections that the tests can inspect.

Helpers are handed out as fixtures (the suite runs with --import-mode=importlib, so test
modules cannot import this file).
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import qdbpool
import qdbpool.pool
from qdbpool import _global


def is_closed(conn: sqlite3.Connection) -> bool:
    """Whether a real sqlite3 connection has been closed (no I/O, any thread)."""
    try:
        conn.total_changes  # noqa: B018 - raises ProgrammingError once closed
    except sqlite3.ProgrammingError:
        return True
    return False


class Recorder:
    """A plain `get_conn` callable: opens real sqlite3 connections and remembers every one."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self.created: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def __call__(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        with self._lock:
            self.created.append(conn)
        return conn

    def still_open(self) -> list[sqlite3.Connection]:
        with self._lock:
            return [c for c in self.created if not is_closed(c)]


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


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def no_global_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with no global pool; whatever it initialized is closed after it."""
    monkeypatch.setattr(_global, "current", None)
    yield
    pool = _global.current
    if pool is not None:
        pool.close(timeout=0)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_recorder() -> Callable[..., Recorder]:
    return Recorder


@pytest.fixture
def pingable() -> PingableRecorder:
    return PingableRecorder()


@pytest.fixture
def closed_check() -> Callable[[sqlite3.Connection], bool]:
    """`is_closed(conn)` for real sqlite3 connections."""
    return is_closed


@pytest.fixture
def make_pool() -> Iterator[Callable[..., qdbpool.SingletonPool]]:
    """SingletonPool(...), closed (without waiting) when the test ends."""
    pools: list[qdbpool.SingletonPool] = []

    def make(*args: Any, **kwargs: Any) -> qdbpool.SingletonPool:
        pool = qdbpool.SingletonPool(*args, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close(timeout=0)


@pytest.fixture
def global_pool(recorder: Recorder) -> qdbpool.SingletonPool:
    """The global pool over `recorder`."""
    pool = qdbpool.initialize(recorder)
    assert isinstance(pool, qdbpool.SingletonPool)
    return pool


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Replaces the clock the pool reads (the stdlib `time` module as qdbpool.pool sees it)."""
    c = Clock()
    monkeypatch.setattr(qdbpool.pool, "time", types.SimpleNamespace(monotonic=c.monotonic))
    return c


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port with nothing listening on it (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
