"""Fixtures of the asyncio suite: `run` (a coroutine function run to its end on a fresh
event loop, the standard one and uvloop in turn, bounded in time), a fresh global asyncio
pool per test, and a fake driver whose factory counts every connection it opened and
closed and can be made to hold or fail its connects.

No pytest plugin: each test is a plain function handing a coroutine function to `run`,
so the threaded suites are untouched. Helpers are handed out as fixtures: the suite runs
with --import-mode=importlib, so test modules cannot import this file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from qdbpool.aio import _global
from qdbpool.aio.protocol import CLEAN, NEEDS_RESET, ConnectionFactory

T = TypeVar("T")

RUN_TIMEOUT = 10.0  # seconds: a bound on every test's coroutine, never reached when it works

LOOPS = ["asyncio", "uvloop"]


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end on `loop`, bounded by RUN_TIMEOUT; then cancel what is left
    and close the loop."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, RUN_TIMEOUT)

    try:
        return loop.run_until_complete(bounded())
    finally:
        left = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def run(loop_kind: str) -> Callable[..., Any]:
    """run(coroutine_function, *args): its result, run on a fresh loop of each kind."""

    def runner(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        return run_on(new_loop(loop_kind), fn(*args))

    return runner


@pytest.fixture
def make_loop(loop_kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A fresh event loop of this test's kind, for tests that drive loops themselves."""
    return lambda: new_loop(loop_kind)


@pytest.fixture(autouse=True)
def no_global_aio_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts without a global asyncio pool (its own loop closes what it made)."""
    monkeypatch.setattr(_global, "current", None)
    yield


# -- the fake driver ---------------------------------------------------------------------------


class FakeConnection:
    """A connection that knows whether it is in a transaction and whether it was closed.

    Like aiosqlite's, its statements run in order on a "server" of their own: a statement
    whose caller was cancelled still runs, after those before it and before those after.
    """

    def __init__(self, number: int) -> None:
        self.number = number
        self.in_transaction = False
        self.closed = False
        self.ping_fails = False
        self.read_only = False  # opened for reads (by a RoutingFakeFactory)
        self.users = 0  # tasks inside execute() right now: more than 1 is a sharing bug
        self._last: asyncio.Future[None] | None = None

    async def execute(self, sql: str) -> None:
        if self.closed:
            raise ValueError(f"connection {self.number} is closed")
        self.users += 1
        try:
            assert self.users == 1, f"connection {self.number} used by two tasks at once"
            op = asyncio.ensure_future(self._run(sql, self._last))
            self._last = op
            await asyncio.shield(op)
        finally:
            self.users -= 1

    async def _run(self, sql: str, before: asyncio.Future[None] | None) -> None:
        if before is not None:
            await asyncio.wait((before,))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if sql == "BEGIN":
            self.in_transaction = True
        elif sql in ("COMMIT", "ROLLBACK"):
            self.in_transaction = False

    def __repr__(self) -> str:
        return f"<FakeConnection {self.number}>"


class FakeFactory(ConnectionFactory):
    """Opens FakeConnections; counts opens, closes, pings and resets.

    `gate`: when set to an unset asyncio.Event, connects wait for it. `fail_connects`:
    that many next connects raise ConnectionRefusedError."""

    cancel_safe = True

    def __init__(self) -> None:
        self.opened: list[FakeConnection] = []
        self.gate: asyncio.Event | None = None
        self.fail_connects = 0
        self.pings = 0
        self.resets = 0
        self.interrupted_closes = 0  # closes of connections whose use was interrupted

    async def connect(self, *, read_only: bool = False) -> FakeConnection:
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        if self.fail_connects:
            self.fail_connects -= 1
            raise ConnectionRefusedError("refused")
        conn = FakeConnection(len(self.opened))
        self.opened.append(conn)
        return conn

    async def close_connection(self, conn: FakeConnection) -> None:
        await asyncio.sleep(0)
        conn.closed = True

    async def close_interrupted(self, conn: FakeConnection) -> None:
        self.interrupted_closes += 1
        await self.close_connection(conn)

    async def ping(self, conn: FakeConnection) -> None:
        self.pings += 1
        await asyncio.sleep(0)
        if conn.ping_fails:
            raise ConnectionError("no answer")

    async def reset(self, conn: FakeConnection) -> None:
        self.resets += 1
        await conn.execute("ROLLBACK")

    def state_after_use(self, conn: FakeConnection) -> int:
        if conn.closed:
            raise ValueError("closed")
        return NEEDS_RESET if conn.in_transaction else CLEAN

    @property
    def open_now(self) -> list[FakeConnection]:
        return [c for c in self.opened if not c.closed]


class RoutingFakeFactory(FakeFactory):
    """A FakeFactory that routes reads: each connection knows which route opened it."""

    routes_reads = True

    async def connect(self, *, read_only: bool = False) -> FakeConnection:
        conn = await super().connect(read_only=read_only)
        conn.read_only = read_only
        return conn


@pytest.fixture
def factory() -> FakeFactory:
    return FakeFactory()


@pytest.fixture
def routing_factory() -> RoutingFakeFactory:
    return RoutingFakeFactory()


@pytest.fixture
def routing_factory_cls() -> type[RoutingFakeFactory]:
    return RoutingFakeFactory


@pytest.fixture
def fake_factory_cls() -> type[FakeFactory]:
    return FakeFactory


class Holder:
    """A task holding a checkout of `pool` (of the reads' route with `read_only`) until told
    to let go (`release()`)."""

    def __init__(self, pool: Any, read_only: bool = False) -> None:
        self.pool = pool
        self.read_only = read_only
        self.got = asyncio.Event()
        self.let_go = asyncio.Event()
        self.conn: Any = None
        self.task = asyncio.create_task(self._hold())

    async def _hold(self) -> Any:
        async with self.pool.connect(read_only=self.read_only) as conn:
            self.conn = conn
            self.got.set()
            await self.let_go.wait()
        return conn

    async def release(self) -> None:
        self.let_go.set()
        await self.task


@pytest.fixture
def holder() -> type[Holder]:
    """Holder(pool, read_only=False): a task that checks out and holds (await h.got.wait();
    await h.release())."""
    return Holder
