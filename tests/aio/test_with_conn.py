"""qdbpool.aio's global pool and @with_conn: injection, nesting in one task, child tasks,
caller-passed connections, and what it refuses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import qdbpool.aio as apool
from qdbpool.aio import BoundedPool
from qdbpool.errors import PoolClosedError, PoolNotInitializedError

Run = Callable[..., Any]


def test_initialize_instance_close(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = await apool.initialize(factory, size=2, burst_limit=3, pre_create=1)
        assert apool.instance() is pool
        assert (pool.size, pool.burst_limit, pool.stats().open) == (2, 3, 1)
        await apool.close()
        assert pool.closed and apool.instance() is pool
        with pytest.raises(PoolClosedError):
            async with apool.instance().connect():
                pass

    run(main)


def test_instance_before_initialize_raises() -> None:
    with pytest.raises(PoolNotInitializedError, match=r"qdbpool\.aio\.initialize"):
        apool.instance()


def test_initialize_closes_the_pool_it_replaces(run: Run, factory: Any) -> None:
    async def main() -> None:
        first = await apool.initialize(factory, size=1, pre_create=1)
        second = await apool.initialize(BoundedPool(factory, size=1))
        assert first.closed and not second.closed
        assert apool.instance() is second
        await apool.close()

    run(main)


def test_the_connection_is_injected_first(run: Run, factory: Any) -> None:
    @apool.with_conn()
    async def load(conn: Any, n: int) -> tuple[Any, int]:
        return conn, n

    async def main() -> None:
        await apool.initialize(factory, size=1)
        conn, n = await load(7)
        assert (conn, n) == (factory.opened[0], 7)
        assert apool.instance().stats().in_use == 0
        await apool.close()

    run(main)


def test_bare_decorator_and_keyword_injection(run: Run, factory: Any) -> None:
    @apool.with_conn
    async def bare(conn: Any) -> Any:
        return conn

    @apool.with_conn(arg="conn")
    async def by_name(n: int, *, conn: Any) -> tuple[int, Any]:
        return n, conn

    async def main() -> None:
        await apool.initialize(factory, size=1)
        assert await bare() is factory.opened[0]
        assert await by_name(3) == (3, factory.opened[0])
        await apool.close()

    run(main)


def test_a_connection_passed_by_the_caller_is_used_as_is(run: Run, factory: Any) -> None:
    @apool.with_conn()
    async def load(conn: Any, n: int) -> Any:
        return conn

    @apool.with_conn(arg="conn")
    async def by_name(conn: Any = None) -> Any:
        return conn

    async def main() -> None:
        await apool.initialize(factory, size=1)
        mine = object()
        assert await load(mine, 1) is mine
        assert await load(conn=mine, n=1) is mine
        assert await by_name(conn=mine) is mine
        assert apool.instance().stats().checkouts == 0
        await apool.close()

    run(main)


def test_nested_calls_in_one_task_share_its_connection(run: Run, factory: Any) -> None:
    @apool.with_conn()
    async def inner(conn: Any) -> Any:
        return conn

    @apool.with_conn()
    async def outer(conn: Any) -> tuple[Any, Any]:
        async with apool.instance().connect() as direct:
            assert direct is conn
        return conn, await inner()

    async def main() -> None:
        await apool.initialize(factory, size=1, timeout=1)  # a second checkout would time out
        first, second = await outer()
        assert first is second
        assert len(factory.opened) == 1
        await apool.close()

    run(main)


def test_a_task_created_inside_gets_a_connection_of_its_own(run: Run, factory: Any) -> None:
    seen: list[tuple[str, Any]] = []

    @apool.with_conn()
    async def child(conn: Any) -> None:
        seen.append(("child", conn))
        await conn.execute("SELECT 1")  # FakeConnection asserts nobody else is inside

    @apool.with_conn()
    async def parent(conn: Any) -> None:
        seen.append(("parent", conn))
        # The children inherit the parent's context, connection value included:
        await asyncio.gather(child(), child(), conn.execute("SELECT 1"))

    async def main() -> None:
        await apool.initialize(factory, size=3)
        await parent()
        await apool.close()

    run(main)
    conns = [conn for _, conn in seen]
    assert len({id(c) for c in conns}) == 3, seen


def test_a_child_that_outlives_the_parent_call_never_shares_its_connection(
    run: Run, factory: Any
) -> None:
    async def main() -> None:
        await apool.initialize(factory, size=2)
        in_child = asyncio.Event()
        let_go = asyncio.Event()

        @apool.with_conn()
        async def child(conn: Any) -> Any:
            in_child.set()
            await let_go.wait()
            return conn

        @apool.with_conn()
        async def parent(conn: Any) -> tuple[Any, asyncio.Task[Any]]:
            task = asyncio.create_task(child())
            await in_child.wait()
            return conn, task

        conn, task = await parent()
        assert apool.instance().stats().in_use == 1  # the child's, not the parent's
        async with apool.instance().connect() as again:
            assert again is conn  # the parent's came back, and is free for others
            let_go.set()
            assert await task is not conn
        await apool.close()

    run(main)


def test_a_plain_function_is_refused() -> None:
    def plain(conn: Any) -> None:
        pass

    with pytest.raises(TypeError, match="async def"):
        apool.with_conn(plain)
    with pytest.raises(TypeError, match="async def"):
        apool.with_conn()(plain)


def test_an_async_generator_is_refused() -> None:
    async def rows(conn: Any) -> Any:
        yield 1

    with pytest.raises(TypeError, match="async generator"):
        apool.with_conn()(rows)


def test_a_call_before_initialize_raises(run: Run) -> None:
    @apool.with_conn()
    async def load(conn: Any) -> None:
        pass

    async def main() -> None:
        with pytest.raises(PoolNotInitializedError):
            await load()

    run(main)


def test_a_pool_given_to_the_decorator_is_used(run: Run, factory: Any) -> None:
    async def main() -> None:
        pool = BoundedPool(factory, size=1)

        @apool.with_conn(pool=pool)
        async def load(conn: Any) -> Any:
            return conn

        assert await load() is factory.opened[0]
        await pool.close()

    run(main)


def test_methods_get_the_connection_after_self(run: Run, factory: Any) -> None:
    class Repo:
        @apool.with_conn()
        async def load(self, conn: Any, n: int) -> tuple[Any, Any, int]:
            return self, conn, n

    async def main() -> None:
        await apool.initialize(factory, size=1)
        repo = Repo()
        assert await repo.load(2) == (repo, factory.opened[0], 2)
        await apool.close()

    run(main)


def test_an_error_in_the_function_rolls_back_and_propagates(run: Run, factory: Any) -> None:
    @apool.with_conn()
    async def fail(conn: Any) -> None:
        await conn.execute("BEGIN")
        raise KeyError("x")

    async def main() -> None:
        await apool.initialize(factory, size=1)
        with pytest.raises(KeyError):
            await fail()
        assert not factory.opened[0].in_transaction
        assert apool.instance().stats().idle == 1
        await apool.close()

    run(main)


@pytest.mark.parametrize("arg", [5, -1, "nope", 1.5])
def test_a_bad_arg_names_the_function(arg: Any) -> None:
    async def load(conn: Any) -> None:
        pass

    with pytest.raises(TypeError, match="load"):
        apool.with_conn(arg=arg)(load)


def test_initialize_drops_a_previous_pool_of_another_loop(
    make_loop: Any, factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = make_loop(), make_loop()
    try:
        old = first.run_until_complete(apool.initialize(factory, size=1))

        async def again() -> BoundedPool:
            new = await apool.initialize(factory, size=1)
            async with new.connect():
                pass
            return new

        new = second.run_until_complete(asyncio.wait_for(again(), 5))
        assert apool.instance() is new and new is not old
        assert "another event loop" in caplog.text
        second.run_until_complete(apool.close())
        first.run_until_complete(old.close())
    finally:
        first.close()
        second.close()
