"""BoundedPool: many threads over few connections (real sqlite3 connections).

Threads hold connections until told to let go (Events), so every state a test checks is
one it arranged; nothing here waits for time to pass except where time *is* the subject
(timeouts, burst_idle), and then it polls with a deadline.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import qdbpool
from qdbpool import PoolClosedError, PoolTimeoutError
from qdbpool.testing._process import wait_until

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0  # upper bound for anything that should happen "at once"


class Holder:
    """A thread that checks a connection out, says so, and holds it until told to let go."""

    def __init__(self, pool: qdbpool.BoundedPool, start: Callable[..., threading.Thread]):
        self.pool = pool
        self.got = threading.Event()
        self.let_go = threading.Event()
        self.conn: sqlite3.Connection | None = None
        self.thread = start(self._run)

    def _run(self) -> None:
        with self.pool.connect() as conn:
            self.conn = conn.__wrapped__
            self.got.set()
            self.let_go.wait(WAIT)

    def release(self) -> None:
        self.let_go.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.fixture
def hold(threads: Callable[..., threading.Thread]) -> Any:
    """hold(pool, n): n threads each holding one connection; all let go at teardown."""
    holders: list[Holder] = []

    def make(pool: qdbpool.BoundedPool, n: int = 1) -> list[Holder]:
        batch = [Holder(pool, threads) for _ in range(n)]
        holders.extend(batch)
        for holder in batch:
            assert holder.got.wait(WAIT), "a holder never got its connection"
        return batch

    yield make
    for holder in holders:
        holder.let_go.set()


def _checkout_once(pool: qdbpool.BoundedPool) -> None:
    with pool.connect():
        pass


# ------------------------------------------------------------------ construction


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "size"),
        ({"size": 4, "max_size": 2}, "max_size"),
        ({"size": 2, "pre_create": 3}, "pre_create"),
        ({"timeout": 0}, "timeout"),
        ({"burst_idle": -1}, "burst_idle"),
        ({"size": True}, "size"),
    ],
    ids=["size-0", "max-below-size", "pre-create-above-size", "timeout-0", "burst-neg", "bool"],
)
def test_invalid_limits_are_refused(
    sqlite_factory: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        qdbpool.BoundedPool(sqlite_factory, **kwargs)


def test_pre_create_opens_connections_up_front(
    sqlite_factory: Any, make_pool: Callable[..., qdbpool.BoundedPool]
) -> None:
    pool = make_pool(sqlite_factory, size=3, pre_create=2)
    assert len(sqlite_factory.created) == 2
    stats = pool.stats()
    assert (stats.open, stats.in_use) == (2, 0)


def test_max_size_defaults_to_size(
    sqlite_factory: Any, make_pool: Callable[..., qdbpool.BoundedPool]
) -> None:
    pool = make_pool(sqlite_factory, size=3)
    assert (pool.size, pool.max_size) == (3, 3)


# ------------------------------------------------------------------ sharing and exhaustion


def test_concurrent_holders_each_get_their_own_connection(
    sqlite_factory: Any, make_pool: Callable[..., qdbpool.BoundedPool], hold: Any
) -> None:
    pool = make_pool(sqlite_factory, size=3)
    holders = hold(pool, 3)
    assert len({id(h.conn) for h in holders}) == 3
    assert pool.stats().in_use == 3


def test_exhausted_pool_times_out_saying_how_many_are_in_use(
    sqlite_factory: Any, make_pool: Callable[..., qdbpool.BoundedPool], hold: Any
) -> None:
    pool = make_pool(sqlite_factory, size=2, max_size=3, timeout=0.3)
    hold(pool, 3)
    started = time.monotonic()
    with pytest.raises(PoolTimeoutError, match=r"3 of 3 in use") as err:
        pool.connect()
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3.0, elapsed
    assert "0.3s" in str(err.value)
    assert len(sqlite_factory.created) == 3  # it never opened a fourth


def test_timeout_is_counted_and_the_waiter_leaves_the_queue(
    sqlite_factory: Any, make_pool: Callable[..., qdbpool.BoundedPool], hold: Any
) -> None:
    pool = make_pool(sqlite_factory, size=1, timeout=0.05)
    hold(pool, 1)
    with pytest.raises(PoolTimeoutError):
        pool.connect()
    stats = pool.stats()
    assert (stats.timeouts, stats.waiting, stats.in_use) == (1, 0, 1)


def test_waiter_is_served_when_a_connection_comes_back(
    sqlite_factory: Any,
    make_pool: Callable[..., qdbpool.BoundedPool],
    hold: Any,
    threads: Callable[..., threading.Thread],
) -> None:
    pool = make_pool(sqlite_factory, size=1, timeout=WAIT)
    (holder,) = hold(pool, 1)
    served: list[sqlite3.Connection] = []

    def wait_for_one() -> None:
        with pool.connect() as conn:
            served.append(conn.__wrapped__)

    waiter = threads(wait_for_one)
    wait_until(lambda: pool.stats().waiting == 1, timeout=WAIT, what="the caller waiting")
    holder.release()
    waiter.join(WAIT)
    assert served == [holder.conn]  # handed over, not a new connection
    assert waiter.error is None  # type: ignore[attr-defined]


def test_waiters_are_served_in_arrival_order(
    sqlite_factory: Any,
    make_pool: Callable[..., qdbpool.BoundedPool],
    threads: Callable[..., threading.Thread],
) -> None:
    pool = make_pool(sqlite_factory, size=1, timeout=WAIT)
    held = pool.connect()
    served: list[int] = []
    waiters = []
    for n in range(6):

        def wait_then_record(n: int = n) -> None:
            with pool.connect():
                served.append(n)

        waiters.append(threads(wait_then_record))
        # The next one starts only once this one is queued: arrival order is known.
        wait_until(lambda n=n: pool.stats().waiting == n + 1, timeout=WAIT, what="queued")
    held.close()
    for waiter in waiters:
        waiter.join(WAIT)
    assert served == list(range(6))


def test_connection_lost_in_use_gives_its_capacity_back_at_once(
    sqlite_factory: Any,
    make_pool: Callable[..., qdbpool.BoundedPool],
    threads: Callable[..., threading.Thread],
    closed_check: Callable[[sqlite3.Connection], bool],
) -> None:
    pool = make_pool(sqlite_factory, size=1, timeout=WAIT)
    conn = pool.connect()
    lost = conn.__wrapped__
    served: list[sqlite3.Connection] = []

    def wait_for_one() -> None:
        with pool.connect() as c:
            served.append(c.__wrapped__)
            c.execute("SELECT 1")

    waiter = threads(wait_for_one)
    wait_until(lambda: pool.stats().waiting == 1, timeout=WAIT, what="the caller waiting")
    with pytest.raises(ConnectionError), conn:
        lost.close()  # the link is gone ...
        raise ConnectionError("connection lost")  # ... and the user's code finds out
    waiter.join(WAIT)
    assert waiter.error is None  # type: ignore[attr-defined]
    assert len(served) == 1 and served[0] is not lost and not closed_check(served[0])
    stats = pool.stats()
    assert (stats.discarded, stats.open) == (1, 1)


# ------------------------------------------------------------------ burst and shrink


def test_burst_opens_up_to_max_size(
    sqlite_factory: Any, make_pool: Callable[..., qdbpool.BoundedPool], hold: Any
) -> None:
    pool = make_pool(sqlite_factory, size=2, max_size=4, timeout=0.2)
    hold(pool, 4)
    stats = pool.stats()
    assert (stats.open, stats.in_use) == (4, 4)
    with pytest.raises(PoolTimeoutError):
        pool.connect()


def test_burst_connections_close_once_idle_for_burst_idle(
    sqlite_factory: Any,
    make_pool: Callable[..., qdbpool.BoundedPool],
    hold: Any,
) -> None:
    pool = make_pool(sqlite_factory, size=2, max_size=4, burst_idle=0.2, timeout=WAIT)
    for holder in hold(pool, 4):
        holder.release()
    assert pool.stats().open == 4

    def shrunk() -> bool:
        _checkout_once(pool)  # the pool shrinks when it is used
        return pool.stats().open == 2

    wait_until(shrunk, timeout=WAIT, interval=0.05, what="shrink back to size")
    stats = pool.stats()
    assert (stats.open, stats.closed, stats.discarded) == (2, 2, 0)
    assert len(sqlite_factory.still_open()) == 2


def test_burst_connections_stay_while_idle_less_than_burst_idle(
    sqlite_factory: Any, make_pool: Callable[..., qdbpool.BoundedPool], hold: Any
) -> None:
    pool = make_pool(sqlite_factory, size=2, max_size=4, burst_idle=60, timeout=WAIT)
    for holder in hold(pool, 4):
        holder.release()
    for _ in range(3):
        _checkout_once(pool)
    assert pool.stats().open == 4


def test_a_checkout_takes_an_idle_burst_connection_rather_than_close_and_open_one(
    sqlite_factory: Any, make_pool: Callable[..., qdbpool.BoundedPool], hold: Any, clock: Any
) -> None:
    """The pool's `size` connections are busy and a burst one has been idle past
    burst_idle: the next checkout is the demand it would be opened again for, so it takes
    that one instead of closing it and opening (and, meanwhile, waiting for) another."""
    pool = make_pool(sqlite_factory, size=1, max_size=2, burst_idle=5, timeout=WAIT)
    hold(pool, 1)  # the one connection of `size`, busy throughout
    with pool.connect() as conn:
        burst = conn.__wrapped__
    clock.advance(10)
    with pool.connect() as conn:
        assert conn.__wrapped__ is burst
    stats = pool.stats()
    assert (stats.created, stats.closed, stats.open) == (2, 0, 2)


def test_shrink_never_closes_a_connection_in_use(
    sqlite_factory: Any,
    make_pool: Callable[..., qdbpool.BoundedPool],
    hold: Any,
    closed_check: Callable[[sqlite3.Connection], bool],
) -> None:
    pool = make_pool(sqlite_factory, size=1, max_size=3, burst_idle=0.05, timeout=WAIT)
    (busy,) = hold(pool, 1)  # held throughout, far longer than burst_idle
    for holder in hold(pool, 2):
        holder.release()

    def extra_closed() -> bool:
        _checkout_once(pool)  # takes one of the extras each time: that one stays open
        return pool.stats().closed >= 1

    wait_until(extra_closed, timeout=WAIT, interval=0.05, what="the idle extra closed")
    assert busy.conn is not None and not closed_check(busy.conn)
    assert busy.conn.execute("SELECT 1").fetchone() == (1,)
    stats = pool.stats()
    assert (stats.in_use, stats.open, stats.closed) == (1, 2, 1)


def test_max_lifetime_never_closes_a_connection_in_use(
    sqlite_factory: Any,
    make_pool: Callable[..., qdbpool.BoundedPool],
    closed_check: Callable[[sqlite3.Connection], bool],
    clock: Any,
) -> None:
    pool = make_pool(sqlite_factory, size=1, max_size=2, max_lifetime=5, timeout=WAIT)
    conn = pool.connect()
    raw = conn.__wrapped__
    clock.advance(60)  # far past its lifetime, while in use
    for _ in range(3):
        _checkout_once(pool)  # other traffic through the pool meanwhile
    assert not closed_check(raw)
    assert raw.execute("SELECT 1").fetchone() == (1,)
    conn.close()  # released: now the lifetime applies, at the next checkout
    _checkout_once(pool)
    _checkout_once(pool)
    assert closed_check(raw)


# ------------------------------------------------------------------ close


def test_close_wakes_waiters_with_pool_closed_error(
    sqlite_factory: Any,
    make_pool: Callable[..., qdbpool.BoundedPool],
    threads: Callable[..., threading.Thread],
) -> None:
    pool = make_pool(sqlite_factory, size=1, timeout=30)
    held = pool.connect()
    outcome: list[tuple[type[BaseException], float]] = []

    def wait_for_one() -> None:
        started = time.monotonic()
        try:
            pool.connect()
        except BaseException as exc:
            outcome.append((type(exc), time.monotonic() - started))

    waiters = [threads(wait_for_one) for _ in range(3)]
    wait_until(lambda: pool.stats().waiting == 3, timeout=WAIT, what="three callers waiting")
    pool.close(timeout=0)
    for waiter in waiters:
        waiter.join(WAIT)
    assert [kind for kind, _ in outcome] == [PoolClosedError] * 3
    assert all(waited < WAIT for _, waited in outcome)  # woken, not timed out (30 s)
    held.close()


# ------------------------------------------------------------------ with_conn


def test_nested_with_conn_does_not_wait_for_its_own_connection(
    sqlite_factory: Any, make_pool: Callable[..., qdbpool.BoundedPool]
) -> None:
    # With size=1, an inner call that queued for a connection would wait for itself.
    pool = qdbpool.initialize(make_pool(sqlite_factory, size=1, timeout=0.5))

    @qdbpool.with_conn
    def inner(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT 1").fetchone()[0])

    @qdbpool.with_conn
    def outer(conn: sqlite3.Connection) -> int:
        return inner() + inner()

    assert outer() == 2
    assert pool.stats().timeouts == 0


def test_a_pool_whose_pre_create_fails_closes_what_it_opened_and_its_factory(sqlite_factory):
    # The failed constructor kept counting as a user of its factory, which was then never
    # closed (a routing factory's monitor thread and sessions ran on); what it had opened
    # stayed open.
    closes: list[None] = []
    sqlite_factory.close = lambda: closes.append(None)  # type: ignore[method-assign]

    def configure(conn: sqlite3.Connection) -> None:
        if len(sqlite_factory.created) == 2:
            raise RuntimeError("the second new connection is refused")

    with pytest.raises(RuntimeError):
        qdbpool.BoundedPool(sqlite_factory, size=2, pre_create=2, configure=configure)
    assert sqlite_factory.still_open() == []
    assert closes == [None]
