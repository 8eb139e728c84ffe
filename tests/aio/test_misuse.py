"""qdbpool.aio used the ways that broke it: checkouts held by async generators and ended in
another task, a body cut short inside a TaskGroup, a close() cancelled while it waits, an
open() that fails at start-up, a checkout entered twice, a coroutine driven without an
event loop, and connections handed from one caller to the next under max_idle/pre_ping.
Each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest

import qdbpool.aio as aio
from qdbpool.aio import BoundedPool, WrongEventLoopError
from qdbpool.errors import ArgumentTypeError, PoolTimeoutError

Run = Callable[..., Any]


# -- a checkout in an async generator ---------------------------------------------------------


async def holding_a_checkout(pool: BoundedPool) -> AsyncGenerator[Any, None]:
    """An async generator that yields, twice, the connection of its checkout."""
    async with pool.connect() as conn:
        yield conn
        yield conn


def test_a_generators_checkout_ended_in_another_task_is_not_shared_by_the_first(
    run: Run, factory: Any, holder: Any
) -> None:
    # The generator's checkout writes into the context of the task iterating it; ended in
    # another task, it left that context naming the connection, which the first task's next
    # checkout took as its own (nested) while another task held it.
    async def main() -> None:
        pool = BoundedPool(factory, size=1, timeout=0.3)

        generator = holding_a_checkout(pool)
        await generator.__anext__()
        await asyncio.create_task(generator.aclose())  # its checkout ends there
        other = holder(pool)
        await other.got.wait()  # the only connection, now another task's
        with pytest.raises(PoolTimeoutError):
            async with pool.connect() as conn:
                assert conn is not other.conn
        await other.release()
        await pool.close()

    run(main)


def test_a_connection_in_nested_use_outlives_its_outer_checkout_ended_in_another_task(
    run: Run, factory: Any, holder: Any, until: Any
) -> None:
    # A task nests a checkout on the one its generator holds; the generator is closed in
    # another task meanwhile. The connection stays the first task's until its nested use
    # ends: it was given back under it.
    async def main() -> None:
        pool = BoundedPool(factory, size=1, timeout=5)

        generator = holding_a_checkout(pool)
        outer = await generator.__anext__()
        async with pool.connect() as conn:
            assert conn is outer  # nested: the task's own connection
            await asyncio.create_task(generator.aclose())
            other = holder(pool)
            await until(lambda: pool.stats().waiting == 1, what="another task waiting")
            await conn.execute("SELECT 1")  # still ours alone (FakeConnection checks)
            assert not other.got.is_set()
        await other.got.wait()  # given back once the nested use ended
        assert other.conn is outer
        await other.release()
        stats = pool.stats()
        assert (stats.open, stats.in_use, stats.created) == (1, 0, 1)
        await pool.close()

    run(main)


# -- a body cut short ---------------------------------------------------------------------------


async def _cancelled_in_a_task_group(pool: BoundedPool) -> None:
    # The body waits in the task that holds the connection; a sibling in its TaskGroup
    # fails, which cancels that wait, and the group raises an ExceptionGroup of the failure.
    async def fails(started: asyncio.Event) -> None:
        await started.wait()
        raise ValueError("a sibling fails")

    started = asyncio.Event()
    with pytest.raises(Exception) as raised:  # the group raises at its end
        async with (
            pool.connect() as conn,
            asyncio.TaskGroup() as group,  # type: ignore[attr-defined,unused-ignore]
        ):
            group.create_task(fails(started))
            await conn.execute("SELECT 1")
            started.set()
            await asyncio.sleep(10)  # cancelled here, a statement as good as running
    assert [type(e) for e in raised.value.exceptions] == [ValueError]  # type: ignore[attr-defined]


async def _cancellation_caught_and_replaced(pool: BoundedPool) -> None:
    started = asyncio.Event()

    async def body() -> None:
        async with pool.connect() as conn:
            try:
                await conn.execute("SELECT 1")
                started.set()
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                raise RuntimeError("the body reports it was stopped") from None

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    with pytest.raises(RuntimeError):
        await task


CUT_SHORT = [_cancellation_caught_and_replaced]
if sys.version_info >= (3, 11):  # asyncio.TaskGroup
    CUT_SHORT.append(_cancelled_in_a_task_group)


@pytest.mark.parametrize("cut_short", CUT_SHORT, ids=lambda f: f.__name__.strip("_"))
def test_a_use_cancelled_but_ending_with_another_error_counts_as_interrupted(
    run: Run, fake_factory_cls: Any, cut_short: Callable[[BoundedPool], Any]
) -> None:
    # A TaskGroup turns its cancelled body's CancelledError into an ExceptionGroup, and a
    # body may catch it and raise another error: the connection was reset and handed out
    # again, its statement still running, rather than closed as interrupted.
    class NotCancelSafe(fake_factory_cls):  # type: ignore[misc]
        cancel_safe = False

    async def main() -> None:
        factory = NotCancelSafe()
        pool = BoundedPool(factory, size=1, timeout=5)
        await cut_short(pool)
        async with pool.connect() as conn:
            await conn.execute("SELECT 1")
        assert factory.interrupted_closes == 1
        assert len(factory.opened) == 2  # the interrupted one closed, a new one opened
        await pool.close()

    run(main)


def counting_closes(fake_factory_cls: Any) -> Any:
    """A fake factory that counts the calls of its close()."""

    class CountsCloses(fake_factory_cls):  # type: ignore[misc]
        closes = 0

        async def close(self) -> None:
            self.closes += 1

    return CountsCloses()


# -- close() and open() cut short -----------------------------------------------------------------


def test_a_close_cancelled_while_it_waits_still_closes_the_factory(
    run: Run, fake_factory_cls: Any, holder: Any, until: Any
) -> None:
    async def main() -> None:
        factory = counting_closes(fake_factory_cls)
        pool = BoundedPool(factory, size=1)
        busy = holder(pool)
        await busy.got.wait()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pool.close(timeout=5), 0.05)  # waits for `busy`
        await until(lambda: factory.closes == 1, what="the factory closed")
        await pool.close()  # a later close() waits for that, and closes nothing twice
        assert factory.closes == 1
        await busy.release()

    run(main)


def test_an_initialize_whose_open_fails_leaves_nothing_open(
    run: Run, fake_factory_cls: Any
) -> None:
    async def main() -> None:
        factory = counting_closes(fake_factory_cls)
        failed = 0

        async def configure(conn: Any) -> None:  # the second new connection is refused
            nonlocal failed
            if conn.number == 1:
                failed += 1
                raise RuntimeError("refused by configure")

        with pytest.raises(RuntimeError):
            await aio.initialize(factory, size=2, pre_create=2, configure=configure)
        assert failed == 1
        assert factory.open_now == [] and factory.closes == 1
        with pytest.raises(aio.PoolNotInitializedError):
            aio.instance()

        factory.opened.clear()
        with pytest.raises(RuntimeError):
            async with BoundedPool(factory, size=2, pre_create=2, configure=configure):
                pass
        assert factory.open_now == [] and factory.closes == 2

    run(main)


# -- checkouts used wrongly ---------------------------------------------------------------------


def test_one_checkout_entered_by_two_tasks_at_once_is_refused(run: Run, factory: Any) -> None:
    # Before, the second entry passed while the first waited: one connection never came back.
    async def main() -> None:
        pool = BoundedPool(factory, size=1, timeout=5)
        blocker = pool.connect()
        await blocker.__aenter__()
        checkout = pool.connect()
        first = asyncio.create_task(checkout.__aenter__())  # waits for the connection
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="in use"):
            await checkout.__aenter__()
        await blocker.__aexit__(None, None, None)
        await first
        await checkout.__aexit__(None, None, None)
        stats = pool.stats()
        assert (stats.in_use, stats.open) == (0, 1)
        await pool.close(timeout=1)

    run(main)


def test_a_coroutine_driven_without_an_event_loop_gets_wrong_event_loop_error(
    factory: Any,
) -> None:
    pool = BoundedPool(factory, size=1)

    async def use() -> None:
        async with pool.connect():
            pass

    @aio.with_conn(pool=pool)
    async def decorated(conn: Any) -> None:
        pass

    for coroutine in (use(), decorated()):
        try:
            with pytest.raises(WrongEventLoopError):
                coroutine.send(None)  # what another coroutine runner does
        finally:
            coroutine.close()


# -- hand-overs under max_idle and pre_ping -----------------------------------------------------


@pytest.mark.parametrize("limit", ["max_idle", "pre_ping"])
def test_a_connection_handed_from_caller_to_caller_is_never_idle(
    run: Run, factory: Any, holder: Any, until: Any, limit: str
) -> None:
    # Handed straight to a waiter, it kept the time it last went idle (or was opened):
    # after a long use it was discarded (max_idle) or pinged (pre_ping) as if idle.
    async def main() -> None:
        limits: dict[str, Any] = {limit: 0.1}
        pool = BoundedPool(factory, size=1, timeout=5, **limits)
        first = holder(pool)
        await first.got.wait()
        second = holder(pool)
        await until(lambda: pool.stats().waiting == 1, what="a caller waiting")
        await asyncio.sleep(0.2)  # longer than the limit, in use all along
        await first.release()
        await second.got.wait()
        assert second.conn is first.conn
        await second.release()
        stats = pool.stats()
        assert (stats.created, stats.discarded, factory.pings) == (1, 0, 0)
        await pool.close()

    run(main)


def test_a_factory_class_instead_of_a_factory_is_refused_naming_it() -> None:
    from qdbpool.aio.factories import SQLite

    with pytest.raises(ArgumentTypeError, match=r"SQLite\(\.\.\.\)"):
        BoundedPool(SQLite)  # type: ignore[arg-type]


def test_a_second_close_while_the_first_waits_returns_and_the_factory_closes_once(
    run: Run, fake_factory_cls: Any, holder: Any, until: Any
) -> None:
    async def main() -> None:
        factory = counting_closes(fake_factory_cls)
        pool = BoundedPool(factory, size=1)
        busy = holder(pool)
        await busy.got.wait()
        first = asyncio.create_task(pool.close(timeout=5))  # waits for `busy`
        await until(lambda: pool.closed, what="the first close() under way")
        await pool.close()  # returns: the first one goes on
        await busy.release()
        await asyncio.wait_for(first, 5)
        assert factory.closes == 1

    run(main)


@pytest.mark.parametrize("converted", ["from None", "from the timeout"])
def test_a_timeout_the_body_turns_into_its_own_error_counts_as_interrupted(
    run: Run, fake_factory_cls: Any, converted: str
) -> None:
    # asyncio.timeout around a statement, and the body raises an error of its own: the
    # statement may still run, whatever error ends the body (and a timeout of other work
    # looks the same from here: both close the connection).
    class NotCancelSafe(fake_factory_cls):  # type: ignore[misc]
        cancel_safe = False

    class TookTooLong(Exception):
        pass

    async def main() -> None:
        factory = NotCancelSafe()
        pool = BoundedPool(factory, size=1)
        with pytest.raises(TookTooLong):
            async with pool.connect() as conn:
                try:
                    await asyncio.wait_for(conn.execute("SELECT pg_sleep(10)"), 0)
                except asyncio.TimeoutError as timeout:
                    if converted == "from None":
                        raise TookTooLong from None
                    raise TookTooLong from timeout
        async with pool.connect() as conn:
            await conn.execute("SELECT 1")
        assert (len(factory.opened), factory.interrupted_closes) == (2, 1)
        await pool.close()

    run(main)


def test_a_checkout_object_can_be_entered_again_once_its_use_ended_or_failed(
    run: Run, factory: Any, holder: Any
) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1, timeout=0.05)
        checkout = pool.connect()
        async with checkout as first:
            pass
        async with checkout as again:
            assert again is first
        busy = holder(pool)
        await busy.got.wait()
        with pytest.raises(PoolTimeoutError):
            async with checkout:
                pass
        await busy.release()
        async with checkout:  # a retry with the same object
            pass
        await pool.close()

    run(main)


def test_a_generator_closed_inside_another_tasks_checkout_leaves_that_task_its_own(
    run: Run, factory: Any
) -> None:
    # The generator's checkout ended in the other task's context, and reset it there to
    # what the generator's task held before: the other task's nested checkouts then took
    # a second connection (another transaction) instead of sharing its own.
    async def main() -> None:
        pool = BoundedPool(factory, size=2, timeout=5)
        generator = holding_a_checkout(pool)
        await generator.__anext__()

        async def other() -> None:
            async with pool.connect() as mine:
                await generator.aclose()  # the generator's checkout ends here
                async with pool.connect() as nested:
                    assert nested is mine

        await asyncio.create_task(other())
        await pool.close()

    run(main)
