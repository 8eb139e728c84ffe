"""qdbpool.aio.BoundedPool: checkout, size and burst, waiting in line, timeouts, close,
cancellation at each await of a checkout, validation, hooks and the event loop it serves."""

from __future__ import annotations

import asyncio
import threading
import types
from collections.abc import Callable
from typing import Any

import pytest

import qdbpool.aio.pool
from qdbpool.aio import BoundedPool, WrongEventLoopError
from qdbpool.aio.protocol import CLEAN, ConnectionFactory
from qdbpool.errors import ConfigurationError, PoolClosedError, PoolTimeoutError

Run = Callable[..., Any]


def consistent(pool: BoundedPool, factory: Any) -> None:
    """The stats agree with the driver: what is open, and nothing beyond the limit."""
    stats = pool.stats()
    assert stats.open == len(factory.open_now), (stats, factory.open_now)
    assert stats.open == stats.created - stats.closed
    assert stats.open <= pool.burst_limit
    assert stats.in_use + stats.idle == stats.open
    assert stats.idle >= 0


# -- checkout -------------------------------------------------------------------------------


def test_a_checkout_of_an_idle_connection_does_not_yield(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=2)
        async with pool.connect():
            pass  # one idle connection from here on

        async def use() -> Any:
            async with pool.connect() as conn:
                return conn

        coro = use()
        # One step of the coroutine runs it to its end: it never waited for the loop.
        with pytest.raises(StopIteration) as done:
            coro.send(None)
        assert done.value.value is factory.opened[0]
        await pool.close()

    run(main)


def test_connections_are_reused(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=2)
        for _ in range(5):
            async with pool.connect() as conn:
                await conn.execute("SELECT 1")
        assert len(factory.opened) == 1
        assert pool.stats().checkouts == 5
        await pool.close()

    run(main)


def test_nested_checkouts_in_one_task_share_its_connection(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        async with pool.connect() as outer:
            async with pool.connect() as inner:
                assert inner is outer
            assert pool.stats().in_use == 1
        assert pool.stats().in_use == 0
        await pool.close()

    run(main)


def test_a_child_task_gets_a_connection_of_its_own(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=2)

        async def child() -> Any:
            async with pool.connect() as conn:
                return conn

        async with pool.connect() as outer:
            assert await asyncio.create_task(child()) is not outer
        await pool.close()

    run(main)


# -- size and burst -------------------------------------------------------------------------


def test_burst_connections_are_closed_once_nobody_waits(
    run: Run, factory: Any, holder: Any, until: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=2, burst_limit=4)
        holders = [holder(pool) for _ in range(4)]
        for h in holders:
            await h.got.wait()
        assert pool.stats().open == 4
        for h in holders:
            await h.release()
        await until(lambda: len(factory.open_now) == 2, what="burst connections closed")
        stats = pool.stats()
        assert (stats.open, stats.idle, stats.closed) == (2, 2, 2)
        consistent(pool, factory)
        await pool.close()

    run(main)


def test_a_burst_connection_goes_to_a_waiter_rather_than_closing(
    run: Run, factory: Any, holder: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1, burst_limit=2)
        first, second = holder(pool), holder(pool)
        await first.got.wait()
        await second.got.wait()
        third = holder(pool)
        await asyncio.sleep(0)
        assert pool.stats().waiting == 1
        await second.release()
        await third.got.wait()
        assert third.conn is second.conn  # handed over, not closed and reopened
        assert pool.stats().closed == 0
        await first.release()
        await third.release()
        await pool.close()

    run(main)


def test_waiters_are_served_in_arrival_order(run: Run, factory: Any, holder: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        first = holder(pool)
        await first.got.wait()
        served: list[int] = []

        async def wait(n: int) -> None:
            async with pool.connect():
                served.append(n)

        waiting = []
        for n in range(5):
            waiting.append(asyncio.create_task(wait(n)))
            await asyncio.sleep(0)  # let it join the line before the next one
        assert pool.stats().waiting == 5
        await first.release()
        await asyncio.gather(*waiting)
        assert served == [0, 1, 2, 3, 4]
        await pool.close()

    run(main)


def test_a_checkout_that_waits_too_long_raises_pool_timeout_error(
    run: Run, factory: Any, holder: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1, timeout=0.05)
        first = holder(pool)
        await first.got.wait()
        with pytest.raises(PoolTimeoutError, match=r"within 0\.05s"):
            async with pool.connect():
                pass
        stats = pool.stats()
        assert (stats.timeouts, stats.waiting, stats.in_use) == (1, 0, 1)
        await first.release()
        async with pool.connect() as conn:  # the pool still serves
            assert conn is first.conn
        await pool.close()


def test_every_waiter_in_line_times_out_at_its_own_deadline(
    run: Run, factory: Any, holder: Any, until: Any
) -> None:
    # The line shares one timer: it must still reach each waiter in time, never early,
    # whether the waiter ahead of it timed out or was served.
    timeout = 0.2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = BoundedPool(factory, size=1, timeout=timeout)
        first = holder(pool)
        await first.got.wait()
        outcomes: dict[str, tuple[str, float]] = {}

        async def wait(name: str) -> None:
            started = loop.time()
            try:
                async with pool.connect():
                    outcomes[name] = ("served", loop.time() - started)
                    await asyncio.sleep(timeout * 2)  # holds on past the others' deadlines
            except PoolTimeoutError:
                outcomes[name] = ("timed out", loop.time() - started)

        # Served: `a` gets the held connection before its deadline, and keeps it.
        a = asyncio.create_task(wait("a"))
        await until(lambda: pool.stats().waiting == 1, what="a waiting")
        b = asyncio.create_task(wait("b"))
        await until(lambda: pool.stats().waiting == 2, what="b waiting")
        await first.release()
        await until(lambda: "a" in outcomes, what="a served")
        # Timed out: `c` joins later than `b`, so its deadline comes after b's.
        await asyncio.sleep(timeout / 2)
        c = asyncio.create_task(wait("c"))
        await asyncio.wait_for(asyncio.gather(a, b, c), 10)
        assert outcomes["a"][0] == "served"
        for name in ("b", "c"):
            outcome, waited = outcomes[name]
            assert outcome == "timed out", outcomes
            assert waited >= timeout - 0.005, outcomes  # the loop's clock resolution
        assert pool.stats().timeouts == 2
        await pool.close()

    run(main)

    run(main)


class _SlowPing:
    """A mix-in for the fake factory: each ping waits for the event `answer` holds when
    it starts (none: no wait)."""

    answer: asyncio.Event | None = None

    async def ping(self, conn: Any) -> None:
        if self.answer is not None:
            await self.answer.wait()
        await super().ping(conn)  # type: ignore[misc]


@pytest.mark.parametrize("replacement", ["opens", "hangs"])
def test_a_waiter_whose_ping_failed_keeps_its_place_and_its_first_deadline(
    run: Run, fake_factory_cls: Any, holder: Any, until: Any, replacement: str
) -> None:
    # Its checkout began before the waiter now behind it in line: it goes back to the head
    # of the line (FIFO; it went to the tail, and the capacity of the connection that
    # failed went to the later caller), and keeps its deadline, earlier than the one the
    # line's timer is set for.
    timeout = 0.5

    class SlowPing(_SlowPing, fake_factory_cls):  # type: ignore[misc, valid-type]
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        factory = SlowPing()
        pool = BoundedPool(factory, size=1, timeout=timeout, pre_ping=True)
        async with pool.connect() as conn:
            conn.ping_fails = True
        first_ping = factory.answer = asyncio.Event()
        started = loop.time()
        checkout = pool.connect()
        pinging = asyncio.create_task(checkout.__aenter__())
        await until(lambda: pool.stats().in_use == 1, what="a ping under way")
        await asyncio.sleep(timeout * 0.8)
        later = holder(pool)  # waits, for the connection being pinged, with a later deadline
        await until(lambda: pool.stats().waiting == 1, what="a second caller waiting")
        # The ping fails; the new connection's first ping answers at once, or hangs.
        factory.answer = None if replacement == "opens" else asyncio.Event()
        first_ping.set()
        if replacement == "opens":
            await asyncio.wait_for(pinging, 10)  # served before the later caller
            assert not later.got.is_set()
            await checkout.__aexit__(None, None, None)
        else:
            with pytest.raises(PoolTimeoutError):
                await asyncio.wait_for(pinging, 10)
            waited = loop.time() - started
            assert timeout - 0.005 <= waited < timeout * 1.6, waited  # not the later deadline
            assert factory.answer is not None
            factory.answer.set()
        await later.got.wait()
        await later.release()
        await pool.close()

    run(main)


def test_a_connect_that_fails_gives_its_capacity_back(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        factory.fail_connects = 1
        with pytest.raises(ConnectionRefusedError):
            async with pool.connect():
                pass
        async with pool.connect():
            pass
        stats = pool.stats()
        assert (stats.connect_errors, stats.created, stats.open) == (1, 1, 1)
        await pool.close()

    run(main)


def test_a_failed_connect_lets_the_next_waiter_try(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        factory.gate = asyncio.Event()
        factory.fail_connects = 1

        async def use() -> Any:
            async with pool.connect() as conn:
                return conn

        first = asyncio.create_task(use())
        await asyncio.sleep(0)
        second = asyncio.create_task(use())
        await asyncio.sleep(0)
        assert pool.stats().waiting == 1
        factory.gate.set()
        with pytest.raises(ConnectionRefusedError):
            await first
        assert await second is factory.opened[0]
        await pool.close()

    run(main)


def test_pre_create_opens_connections_at_open(run: Run, factory: Any) -> None:
    async def main() -> None:
        async with BoundedPool(factory, size=3, pre_create=2) as pool:
            assert (pool.stats().open, pool.stats().idle) == (2, 2)
        assert pool.stats().open == 0

    run(main)


# -- close ----------------------------------------------------------------------------------


def test_close_wakes_waiters_with_pool_closed_error(run: Run, factory: Any, holder: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        first = holder(pool)
        await first.got.wait()

        async def use() -> None:
            async with pool.connect():
                pass

        waiters = [asyncio.create_task(use()) for _ in range(3)]
        await asyncio.sleep(0)
        assert pool.stats().waiting == 3
        closing = asyncio.create_task(pool.close(timeout=5))
        for waiter in waiters:
            with pytest.raises(PoolClosedError):
                await waiter
        assert not closing.done()  # still waiting for the connection in use
        assert not first.conn.closed  # never closed under its holder
        await first.release()
        await closing
        assert first.conn.closed
        assert factory.open_now == []
        with pytest.raises(PoolClosedError):
            async with pool.connect():
                pass

    run(main)


def test_close_gives_up_waiting_after_its_timeout(run: Run, factory: Any, holder: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        first = holder(pool)
        await first.got.wait()
        await pool.close(timeout=0.01)
        assert not first.conn.closed
        await first.release()  # closed when it comes back
        assert first.conn.closed or pool.stats().open == 0

    run(main)


def test_close_inside_a_checkout_does_not_wait_for_it(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        loop = asyncio.get_running_loop()
        async with pool.connect() as conn:
            started = loop.time()
            await pool.close(timeout=10)  # in this very task (wait_for would make another)
            assert loop.time() - started < 1
            assert not conn.closed
        assert pool.stats().open == 0

    run(main)


def test_close_racing_with_waiters_and_releases_leaves_nothing_open(
    run: Run, factory: Any, until: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=2, burst_limit=4)
        outcomes: list[str] = []

        async def use(n: int) -> None:
            try:
                async with pool.connect() as conn:
                    await conn.execute("BEGIN")
                    for _ in range(n % 5):
                        await asyncio.sleep(0)
                outcomes.append("served")
            except PoolClosedError:
                outcomes.append("closed")

        tasks = [asyncio.create_task(use(n)) for n in range(50)]
        for _ in range(7):
            await asyncio.sleep(0)
        await pool.close(timeout=5)
        await asyncio.gather(*tasks)
        assert len(outcomes) == 50 and "closed" in outcomes and "served" in outcomes
        await until(lambda: not factory.open_now, what="every connection closed")
        stats = pool.stats()
        assert (stats.open, stats.in_use, stats.waiting) == (0, 0, 0)
        assert stats.closed == stats.created == len(factory.opened)

    run(main)


# -- cancellation ---------------------------------------------------------------------------


def test_a_waiter_cancelled_in_line_takes_nothing(run: Run, factory: Any, holder: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        first = holder(pool)
        await first.got.wait()
        second = holder(pool)
        await asyncio.sleep(0)
        second.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second.task
        assert pool.stats().waiting == 0
        await first.release()
        async with pool.connect() as conn:
            assert conn is first.conn
        assert pool.stats().in_use == 0
        await pool.close()

    run(main)


def test_a_waiter_cancelled_as_it_is_served_passes_the_connection_on(
    run: Run, factory: Any, holder: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        async with pool.connect() as mine:
            second, third = holder(pool), holder(pool)
            await asyncio.sleep(0)
            assert pool.stats().waiting == 2
        # Our release handed the connection to `second` without yielding; `second` is
        # cancelled before it could run, with the connection already its own.
        second.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second.task
        await third.got.wait()
        assert third.conn is mine
        await third.release()
        stats = pool.stats()
        assert (stats.open, stats.in_use, stats.waiting) == (1, 0, 0)
        await pool.close()

    run(main)


def test_a_caller_cancelled_while_connecting_leaves_the_connection_to_the_pool(
    run: Run, factory: Any, until: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        factory.gate = asyncio.Event()

        async def use() -> None:
            async with pool.connect():
                pass

        caller = asyncio.create_task(use())
        await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        factory.gate.set()
        await until(lambda: pool.stats().idle == 1, what="the connection idle")
        consistent(pool, factory)
        async with pool.connect() as conn:
            assert conn is factory.opened[0]
        await pool.close()

    run(main)


def test_a_caller_timed_out_while_connecting_leaves_the_connection_to_the_pool(
    run: Run, factory: Any, until: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1, timeout=0.02)
        factory.gate = asyncio.Event()
        with pytest.raises(PoolTimeoutError):
            async with pool.connect():
                pass
        factory.gate.set()
        await until(lambda: pool.stats().idle == 1, what="the connection idle")
        assert pool.stats().timeouts == 1
        await pool.close()

    run(main)


def test_a_body_cancelled_in_a_transaction_is_rolled_back(
    run: Run, factory: Any, holder: Any, until: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        started = asyncio.Event()

        async def body() -> None:
            async with pool.connect() as conn:
                await conn.execute("BEGIN")
                started.set()
                await asyncio.Event().wait()  # forever

        task = asyncio.create_task(body())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: pool.stats().in_use == 0, what="the connection back")
        conn = factory.opened[0]
        assert not conn.in_transaction and not conn.closed
        assert factory.resets == 1
        async with pool.connect() as again:
            assert again is conn
        await pool.close()

    run(main)


def test_a_body_cancelled_mid_statement_is_reset_after_that_statement(
    run: Run, factory: Any, until: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        about_to_begin = asyncio.Event()

        async def body() -> None:
            async with pool.connect() as conn:
                about_to_begin.set()
                await conn.execute("BEGIN")  # cancelled while the "server" runs it
                await asyncio.Event().wait()

        task = asyncio.create_task(body())
        await about_to_begin.wait()
        conn = factory.opened[0]
        assert not conn.in_transaction  # the BEGIN has not landed yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: pool.stats().in_use == 0, what="the connection back")
        assert not conn.in_transaction  # the rollback ran after the BEGIN
        async with pool.connect() as again:
            assert again is conn and not again.in_transaction
        await pool.close()

    run(main)


@pytest.mark.parametrize("interrupt", ["cancel", "timeout"])
def test_an_interrupted_body_of_a_factory_not_cancel_safe_closes_the_connection(
    run: Run, fake_factory_cls: Any, until: Any, interrupt: str
) -> None:
    """Cancelled, or timed out inside the checkout (asyncio.wait_for cancels the operation
    and raises TimeoutError): the operation may still run, so the connection is closed,
    by the factory's close_interrupted, not reset and handed on."""

    async def main() -> None:
        factory = fake_factory_cls()
        factory.cancel_safe = False
        pool = BoundedPool(factory, size=1)

        in_body = asyncio.Event()

        async def body() -> None:
            async with pool.connect():
                in_body.set()
                if interrupt == "timeout":
                    await asyncio.wait_for(asyncio.Event().wait(), 0.01)
                await asyncio.Event().wait()

        task = asyncio.create_task(body())
        await in_body.wait()
        if interrupt == "cancel":
            task.cancel()
        expected = asyncio.CancelledError if interrupt == "cancel" else asyncio.TimeoutError
        with pytest.raises(expected):
            await task
        await until(lambda: factory.opened[0].closed, what="the connection closed")
        assert factory.interrupted_closes == 1
        assert pool.stats().discarded == 1
        async with pool.connect() as conn:
            assert conn is not factory.opened[0]
        await pool.close()

    run(main)


def test_a_release_cancelled_again_still_resets_the_connection(
    run: Run, factory: Any, until: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        in_body = asyncio.Event()

        async def body() -> None:
            async with pool.connect() as conn:
                await conn.execute("BEGIN")
                in_body.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(body())
        await in_body.wait()
        task.cancel()
        await asyncio.sleep(0)  # the task is now awaiting its reset ...
        task.cancel()  # ... which a second cancellation does not interrupt
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: pool.stats().in_use == 0, what="the connection back")
        assert not factory.opened[0].in_transaction
        consistent(pool, factory)
        await pool.close()

    run(main)


def test_an_error_in_the_body_rolls_back(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        with pytest.raises(ZeroDivisionError):
            async with pool.connect() as conn:
                await conn.execute("BEGIN")
                1 / 0  # noqa: B018
        assert not conn.in_transaction
        assert pool.stats().idle == 1
        await pool.close()

    run(main)


def test_a_lost_connection_is_replaced(run: Run, factory: Any, until: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        with pytest.raises(ConnectionResetError):
            async with pool.connect():
                raise ConnectionResetError("server went away")
        await until(lambda: factory.opened[0].closed, what="the lost one closed")
        async with pool.connect() as conn:
            assert conn is factory.opened[1]
        assert pool.stats().discarded == 1
        await pool.close()

    run(main)


# -- validation at checkout, hooks ----------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """The clock the asyncio pool reads for lifetime and idleness, moved by hand."""
    now = types.SimpleNamespace(value=1000.0)
    monkeypatch.setattr(
        qdbpool.aio.pool, "time", types.SimpleNamespace(monotonic=lambda: now.value)
    )
    return now


def test_max_lifetime_replaces_an_old_connection(
    run: Run, factory: Any, clock: Any, until: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1, max_lifetime=60)
        async with pool.connect() as first:
            pass
        clock.value += 61
        async with pool.connect() as second:
            assert second is not first
        await until(lambda: first.closed, what="the old one closed")
        assert pool.stats().discarded == 1
        await pool.close()

    run(main)


def test_max_idle_replaces_a_connection_idle_too_long(run: Run, factory: Any, clock: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1, max_idle=10)
        async with pool.connect() as first:
            pass
        clock.value += 5
        async with pool.connect() as again:
            assert again is first
        clock.value += 11
        async with pool.connect() as second:
            assert second is not first
        await pool.close()

    run(main)


def test_pre_ping_pings_an_idle_connection_and_replaces_a_dead_one(
    run: Run, factory: Any, clock: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1, pre_ping=30)
        async with pool.connect() as first:
            pass
        async with pool.connect():
            pass
        assert factory.pings == 0  # idle less than 30 s
        clock.value += 31
        first.ping_fails = True
        async with pool.connect() as second:
            assert second is not first
        assert factory.pings == 1
        await pool.close()

    run(main)


def test_pre_ping_true_pings_new_connections_too(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1, pre_ping=True)
        async with pool.connect():
            pass
        async with pool.connect():
            pass
        assert factory.pings == 2
        await pool.close()

    run(main)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_configure_and_reset_hooks_may_be_sync_or_async(run: Run, factory: Any, kind: str) -> None:
    calls: list[tuple[str, int]] = []

    def sync_hook(name: str) -> Callable[[Any], None]:
        return lambda conn: calls.append((name, conn.number))

    def async_hook(name: str) -> Callable[[Any], Any]:
        async def hook(conn: Any) -> None:
            await asyncio.sleep(0)
            calls.append((name, conn.number))

        return hook

    make = sync_hook if kind == "sync" else async_hook

    async def main() -> None:
        pool = BoundedPool(factory, size=1, configure=make("configure"), reset=make("reset"))
        for _ in range(2):
            async with pool.connect():
                pass
        await pool.close()

    run(main)
    assert calls == [("configure", 0), ("reset", 0), ("reset", 0)]


def test_a_reset_hook_that_fails_discards_the_connection(
    run: Run, factory: Any, until: Any
) -> None:
    def reset(conn: Any) -> None:
        raise RuntimeError("no")

    async def main() -> None:
        pool = BoundedPool(factory, size=1, reset=reset)
        async with pool.connect() as conn:
            pass
        await until(lambda: conn.closed, what="the connection closed")
        assert pool.stats().discarded == 1
        await pool.close()

    run(main)


# -- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"size": 0}, "size"),
        ({"size": True}, "size"),
        ({"size": 2, "burst_limit": 1}, "burst_limit"),
        ({"burst_limit": 0}, "burst_limit"),
        ({"pre_create": 5}, "pre_create"),
        ({"pre_create": -1}, "pre_create"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"pre_ping": "yes"}, "pre_ping"),
        ({"max_lifetime": -1}, "max_lifetime"),
        ({"max_idle": 10**400}, "max_idle"),
        ({"configure": 3}, "configure"),
        ({"reset": "x"}, "reset"),
    ],
)
def test_bad_arguments_raise_configuration_error_naming_them(
    factory: Any, kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        BoundedPool(factory, **kwargs)


def test_get_conn_must_be_callable() -> None:
    with pytest.raises(TypeError, match="get_conn"):
        BoundedPool(42)  # type: ignore[arg-type]


def test_a_plain_async_function_is_a_factory(run: Run) -> None:
    async def main() -> None:
        made: list[object] = []

        async def get_conn() -> object:
            made.append(object())
            return made[-1]

        pool = BoundedPool(get_conn, size=1)
        async with pool.connect() as conn:
            assert conn is made[0]
        await pool.close()

    run(main)


# -- the event loop it serves ---------------------------------------------------------------


def test_a_pool_used_from_another_loop_raises(make_loop: Any, factory: Any) -> None:
    first, second = make_loop(), make_loop()
    try:

        async def made() -> BoundedPool:
            pool = BoundedPool(factory, size=1)
            async with pool.connect():
                pass
            return pool

        pool = first.run_until_complete(made())

        async def use() -> None:
            async with pool.connect():
                pass

        with pytest.raises(WrongEventLoopError, match="another event loop"):
            second.run_until_complete(asyncio.wait_for(use(), 5))
        first.run_until_complete(pool.close())
    finally:
        first.close()
        second.close()


def test_a_pool_used_after_its_loop_closed_says_so(make_loop: Any, factory: Any) -> None:
    first = make_loop()
    pool = first.run_until_complete(_made_on_this_loop(factory))
    first.run_until_complete(pool.close())
    first.close()
    second = make_loop()
    try:
        with pytest.raises(WrongEventLoopError, match="now closed"):
            second.run_until_complete(asyncio.wait_for(pool.close(), 5))
    finally:
        second.close()


async def _made_on_this_loop(factory: Any) -> BoundedPool:
    return BoundedPool(factory, size=1)


def test_a_pool_used_from_a_thread_without_a_loop_raises(make_loop: Any, factory: Any) -> None:
    loop = make_loop()
    try:
        pool = loop.run_until_complete(_made_on_this_loop(factory))
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                pool._check_loop()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(10)
        assert len(errors) == 1 and isinstance(errors[0], WrongEventLoopError)
        loop.run_until_complete(pool.close())
    finally:
        loop.close()


def test_a_pool_made_outside_a_loop_serves_the_first_loop_that_uses_it(
    make_loop: Any, factory: Any
) -> None:
    pool = BoundedPool(factory, size=1)
    loop = make_loop()
    try:

        async def use() -> None:
            async with pool.connect():
                pass
            await pool.close()

        loop.run_until_complete(use())
    finally:
        loop.close()
    assert pool.stats().created == 1


def test_close_twice_does_not_wait_again(run: Run, factory: Any, holder: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        first = holder(pool)
        await first.got.wait()
        await pool.close(timeout=0.01)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await pool.close(timeout=10)  # the connection is still out: no second wait
        assert loop.time() - started < 1
        await first.release()

    run(main)


def test_open_raises_what_opening_raises_and_keeps_nothing_reserved(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=2, pre_create=2)
        factory.fail_connects = 1
        with pytest.raises(ConnectionRefusedError):
            await pool.open()
        assert pool.stats().open == 0
        await pool.open()  # the next try opens both
        assert (pool.stats().open, pool.stats().idle) == (2, 2)
        await pool.close()

    run(main)


def test_read_only_is_accepted_by_a_factory_with_one_route(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)
        async with pool.connect(read_only=True) as conn:
            assert conn is factory.opened[0]
        async with pool.connect() as conn:  # one route: the same connection serves both
            assert conn is factory.opened[0]
        await pool.close()

    run(main)


def test_routes_are_kept_apart_and_a_task_holds_one_of_each(run: Run, routing_factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(routing_factory, size=4)
        async with pool.connect() as writer, pool.connect(read_only=True) as reader:
            assert (writer.read_only, reader.read_only) == (False, True)
            async with pool.connect(read_only=True) as nested:
                assert nested is reader  # nested, same route: shared
            async with pool.connect() as nested:
                assert nested is writer
        for _ in range(3):
            async with pool.connect(read_only=True) as again:
                assert again is reader
            async with pool.connect() as again:
                assert again is writer
        assert pool.stats().created == 2
        await pool.close()

    run(main)


def test_a_connection_given_back_goes_to_the_first_waiter_of_its_route(
    run: Run, routing_factory: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(routing_factory, size=2, timeout=5)
        got: list[str] = []

        async def wait_for(read_only: bool, name: str) -> None:
            async with pool.connect(read_only=read_only) as conn:
                assert conn.read_only is read_only
                got.append(name)

        async with pool.connect() as _w, pool.connect(read_only=True):
            w2 = asyncio.create_task(wait_for(False, "writer"))
            r2 = asyncio.create_task(wait_for(True, "reader"))
            await asyncio.sleep(0)
            assert pool.stats().waiting == 2
        # Both came back at once: each to the waiter of its own route, whoever was first.
        await asyncio.gather(w2, r2)
        assert sorted(got) == ["reader", "writer"]
        assert pool.stats().created == 2
        await pool.close()

    run(main)


def test_a_caller_of_one_route_trades_an_idle_connection_of_the_other(
    run: Run, routing_factory: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(routing_factory, size=1, timeout=5)
        async with pool.connect(read_only=True) as reader:
            pass
        # Full (burst_limit 1), and only a read connection idle: a writer does not wait
        # out its timeout for a write connection that nobody would give back.
        async with pool.connect() as writer:
            assert writer.read_only is False
        assert reader.closed
        stats = pool.stats()
        assert (stats.open, stats.created, stats.timeouts) == (1, 2, 0)
        await pool.close()

    run(main)


def test_both_routes_get_turns_while_each_keeps_every_connection_busy(
    run: Run, routing_factory: Any
) -> None:
    # Callers of one route alone can keep every connection busy: each release finds one
    # of them waiting. Those of the other route must still get connections (capacity is
    # traded to them), not wait out their timeout; and the trades, each a new connection,
    # come at most one per route every TRADE_AFTER, not one per checkout.
    uses_each = 20

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = BoundedPool(routing_factory, size=2, timeout=3)

        async def caller(read_only: bool) -> None:
            for _ in range(uses_each):
                async with pool.connect(read_only=read_only) as conn:
                    assert conn.read_only is read_only
                    await conn.execute("SELECT 1")
                    await asyncio.sleep(0.001)  # the query's time: others queue meanwhile

        started = loop.time()
        callers = [caller(read_only=n % 2 == 0) for n in range(12)]
        await asyncio.wait_for(asyncio.gather(*callers), 30)
        elapsed = loop.time() - started
        stats = pool.stats()
        assert stats.timeouts == 0
        trades_allowed = 2 * (elapsed / qdbpool.aio.pool.TRADE_AFTER + 1)
        assert stats.created <= 2 + trades_allowed, (stats, elapsed)
        await pool.close()

    run(main)


def test_an_impatient_caller_does_not_take_the_last_connection_of_the_other_route(
    run: Run, routing_factory: Any
) -> None:
    # Ten writers and a reader over two connections: writers wait long enough to be
    # impatient, but trading the reader's only connection away would only make the
    # reader trade it back at once, a new connection each way, again and again.
    async def main() -> None:
        pool = BoundedPool(routing_factory, size=2, timeout=10)

        async def caller(read_only: bool) -> None:
            for _ in range(6):
                async with pool.connect(read_only=read_only) as conn:
                    await conn.execute("SELECT 1")
                    await asyncio.sleep(0.02)

        callers = [caller(False) for _ in range(10)] + [caller(True)]
        await asyncio.wait_for(asyncio.gather(*callers), 30)
        stats = pool.stats()
        assert stats.timeouts == 0
        # One per route, after a trade or two to get there (who came first took both);
        # trading back and forth opened 13 or more.
        assert stats.created <= 6, stats
        await pool.close()

    run(main)


def test_a_route_with_no_connection_gets_the_next_ones_capacity(
    run: Run, routing_factory: Any, until: Any
) -> None:
    # As after a failover: readers hold every connection, and the writers' are gone. A
    # writer must not wait TRADE_AFTER for its turn: once it is first in line, the next
    # reader connection to come back is traded for it.
    readers = 3

    async def main() -> None:
        pool = BoundedPool(routing_factory, size=2, timeout=3)
        served: list[str] = []
        writer_done = asyncio.Event()

        async def reader() -> None:
            while not writer_done.is_set():
                async with pool.connect(read_only=True) as conn:
                    await conn.execute("SELECT 1")
                    await asyncio.sleep(0.001)
                served.append("read")

        tasks = [asyncio.create_task(reader()) for _ in range(readers)]
        try:
            await until(lambda: len(served) >= 10, what="both connections the readers'")
            queued_at = len(served)
            async with pool.connect() as conn:
                assert not conn.read_only
            reads_meanwhile = len(served) - queued_at
        finally:
            writer_done.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
        # The readers ahead of it in line, then one more release, traded.
        assert reads_meanwhile <= readers + 1, reads_meanwhile
        await pool.close()

    run(main)


class _Counted:
    """A connection of a route, for the trade tests below."""

    def __init__(self, read_only: bool) -> None:
        self.read_only = read_only


class _CountingFactory(ConnectionFactory):
    """Routes reads, counts the driver connections open at once; closes take `close_time`."""

    routes_reads = True
    cancel_safe = True

    def __init__(self, close_time: float = 0.0) -> None:
        self.close_time = close_time
        self.on_close: Callable[[], None] | None = None
        self.open = self.most_open = 0

    async def connect(self, *, read_only: bool = False) -> _Counted:
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        await asyncio.sleep(0)
        return _Counted(read_only)

    async def close_connection(self, conn: _Counted) -> None:
        await asyncio.sleep(self.close_time)
        self.open -= 1
        if self.on_close is not None:
            self.on_close()

    def state_after_use(self, conn: _Counted) -> int:
        return CLEAN


def test_a_trade_for_a_writer_with_no_connection_is_made_once(
    run: Run, until: Any, holder: Any
) -> None:
    # Two readers hold both connections; a writer waits, with none of its route. The first
    # read connection back is traded for it, and its close is slow. Meanwhile the other
    # comes back and goes idle; when the writer has waited TRADE_AFTER, its own timer must
    # not trade that one too: two connections closed for one writer, three open at once.
    async def main() -> None:
        factory = _CountingFactory(close_time=0.1)
        pool = BoundedPool(factory, size=2, timeout=3)
        r1, r2 = holder(pool, read_only=True), holder(pool, read_only=True)
        await asyncio.gather(r1.got.wait(), r2.got.wait())
        w1 = holder(pool)
        await until(lambda: pool.stats().waiting == 1, what="the writer waiting")
        await r1.release()
        await until(lambda: pool.stats().closed == 1, what="a read connection traded")
        await r2.release()
        await asyncio.wait_for(w1.got.wait(), 10)
        assert pool.stats().closed == 1, pool.stats()
        assert factory.most_open <= pool.burst_limit
        await w1.release()
        await pool.close()

    run(main)


def test_a_release_while_a_traded_writer_opens_is_not_traded_too(
    run: Run, until: Any, holder: Any
) -> None:
    # Two readers hold both connections; two writers wait, with none of their route. The
    # first read connection back is traded for the first writer. The other comes back as
    # that close ends, while the first writer's connection is granted but not opened yet:
    # the second writer must not trade it too, leaving the readers none.
    async def main() -> None:
        factory = _CountingFactory()
        pool = BoundedPool(factory, size=2, timeout=3)
        r1, r2 = holder(pool, read_only=True), holder(pool, read_only=True)
        await asyncio.gather(r1.got.wait(), r2.got.wait())
        w1 = holder(pool)
        await until(lambda: pool.stats().waiting == 1, what="w1 waiting")
        w2 = holder(pool)
        await until(lambda: pool.stats().waiting == 2, what="w2 waiting")
        factory.on_close = lambda: (r2.let_go.set(), setattr(factory, "on_close", None))
        await r1.release()
        await asyncio.wait_for(asyncio.gather(w1.got.wait(), r2.task), 10)
        # r2's release is handled, well before the writers' TRADE_AFTER.
        assert pool.stats().closed == 1, pool.stats()
        for writer in (w1, w2):
            await writer.release()
        await pool.close()

    run(main)


def test_beyond_size_an_idle_connection_of_the_other_route_makes_room(
    run: Run, routing_factory: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(routing_factory, size=1, burst_limit=2)
        async with pool.connect(read_only=True) as reader:
            pass
        for _ in range(3):  # without room made, each would open and close a connection
            async with pool.connect():
                pass
        assert reader.closed
        assert (pool.stats().open, pool.stats().created) == (1, 2)
        await pool.close()

    run(main)
