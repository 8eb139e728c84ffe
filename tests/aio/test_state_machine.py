"""A stateful property test of qdbpool.aio.BoundedPool.

Hypothesis drives what tasks do with a pool of size 1 and burst_limit 2: start a task that
checks out (for writes or, over a factory that routes reads, for reads; maybe opening a
transaction, maybe nesting a second checkout), let a holder go,
let a holder go with its connection lost, cancel any task wherever it is (in line,
connecting, holding, resetting), make the next connect fail, close the pool. After each
step the loop runs until the pool's own work settles (a bounded number of turns), and the
machine checks that the stats agree with the fake driver and with the tasks:

- open == the driver's open connections == created - closed, and never above burst_limit;
- in_use == the tasks holding a connection, and no connection is in two tasks' hands;
- each task holds a connection of its own route;
- waiting == the tasks in line, and nobody waits while capacity is free or an idle
  connection of its route is there;
- no idle connection is in a transaction; beyond `size`, none is idle;
- once closed: nothing idle, nobody waiting; at the end, every connection closed.

`QDBPOOL_HYPOTHESIS_PROFILE=soak` runs 5x the examples; `quick`, a few.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from qdbpool.aio import BoundedPool
from qdbpool.errors import PoolClosedError

SIZE, BURST = 1, 2
MAX_TASKS = 7
SETTLE_TURNS = 100  # loop turns after each step: the pool's own work needs about 10

_PROFILES = {"default": 150, "quick": 8, "soak": 750}
_PROFILE = os.environ.get("QDBPOOL_HYPOTHESIS_PROFILE", "default")
EXAMPLES = _PROFILES.get(_PROFILE, _PROFILES["default"])
EXPECTED = (asyncio.CancelledError, PoolClosedError, ConnectionRefusedError)


class User:
    """One task: checks out, holds until told, and records what happened."""

    def __init__(self, pool: BoundedPool, begin: bool, nested: bool, ro: bool = False) -> None:
        self.pool = pool
        self.ro = ro
        self.begin = begin
        self.nested = nested
        self.state = "waiting"  # -> holding -> done
        self.conn: Any = None
        self.lose = False
        self.commit = False  # commit before letting go: the release then needs no reset
        self.then_cancel: User | None = None  # cancelled by this task as soon as it let go
        self.let_go = asyncio.Event()
        self.error: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        try:
            async with self.pool.connect(read_only=self.ro) as conn:
                self.conn, self.state = conn, "holding"
                if self.nested:
                    async with self.pool.connect(read_only=self.ro) as inner:
                        assert inner is conn
                if self.begin:
                    await conn.execute("BEGIN")
                await self.let_go.wait()
                if self.commit and self.begin:
                    await conn.execute("COMMIT")
                if self.lose:
                    conn.closed = True  # the server went away while we held it
            if self.then_cancel is not None:
                # In the very step of our release, which may have handed the connection
                # to this task: it is cancelled before it could run.
                self.then_cancel.task.cancel()
        except BaseException as exc:
            self.error = exc
            if not isinstance(exc, EXPECTED):
                raise
        finally:
            self.state = "done"


def _machine(factory_cls: type[Any], make_loop: Callable[[], asyncio.AbstractEventLoop]) -> Any:
    class AioPoolMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = make_loop()
            self.factory = factory_cls()
            self.routes = factory_cls.routes_reads
            self.users: list[User] = []
            self.closing: asyncio.Task[None] | None = None

            async def make() -> BoundedPool:
                return BoundedPool(self.factory, size=SIZE, burst_limit=BURST, timeout=60)

            self.pool = self.loop.run_until_complete(make())

        def settle(self) -> None:
            async def turns() -> None:
                for _ in range(SETTLE_TURNS):
                    await asyncio.sleep(0)

            self.loop.run_until_complete(turns())

        def live(self, state: str) -> list[User]:
            return [u for u in self.users if u.state == state]

        # -- rules ----------------------------------------------------------------------------

        def run_turns(self, turns: int) -> None:
            async def go() -> None:
                for _ in range(turns):
                    await asyncio.sleep(0)

            self.loop.run_until_complete(go())

        def cancel_soon(self, user: User, turns: int, twice: bool) -> None:
            """Cancel `user` after a few loop turns (and, if `twice`, again a few later:
            a task cancelled in its body may then be resetting its connection)."""
            self.run_turns(turns)
            user.task.cancel()
            if twice:
                self.run_turns(2)
                user.task.cancel()

        @precondition(lambda self: len(self.live("waiting") + self.live("holding")) < MAX_TASKS)
        @rule(
            begin=st.booleans(),
            nested=st.booleans(),
            cancel_after=st.none() | st.integers(0, 8),
            twice=st.booleans(),
            ro=st.booleans(),
        )
        def start(
            self, begin: bool, nested: bool, cancel_after: int | None, twice: bool, ro: bool
        ) -> None:
            """A new task; maybe cancelled a few turns in: in line, while its connection
            opens, or mid-BEGIN."""

            async def spawn() -> User:
                return User(self.pool, begin, nested, ro and self.routes)

            user = self.loop.run_until_complete(spawn())
            self.users.append(user)
            if cancel_after is not None:
                self.cancel_soon(user, cancel_after, twice)
            self.settle()

        @precondition(lambda self: len(self.live("waiting") + self.live("holding")) < MAX_TASKS)
        @rule(n=st.integers(2, 4), begin=st.booleans(), ro=st.lists(st.booleans(), min_size=4))
        def start_several(self, n: int, begin: bool, ro: list[bool]) -> None:
            """A crowd: more tasks than connections, so that some wait in line."""

            async def spawn() -> list[User]:
                return [
                    User(self.pool, begin, nested=False, ro=ro[i] and self.routes) for i in range(n)
                ]

            self.users.extend(self.loop.run_until_complete(spawn()))
            self.settle()

        @precondition(lambda self: self.live("holding"))
        @rule(data=st.data(), lose=st.booleans(), commit=st.booleans())
        def release(self, data: st.DataObject, lose: bool, commit: bool) -> None:
            user = data.draw(st.sampled_from(self.live("holding")))
            user.lose, user.commit = lose, commit
            user.let_go.set()
            self.settle()

        @precondition(lambda self: self.live("holding") and self.live("waiting"))
        @rule(data=st.data(), turns=st.none() | st.integers(0, 4))
        def release_and_cancel_the_next_in_line(
            self, data: st.DataObject, turns: int | None
        ) -> None:
            """The connection a holder gives back goes to the first in line, which is
            cancelled about then: in the step of the release itself (None), or a few loop
            turns later."""
            holder = data.draw(st.sampled_from(self.live("holding")))
            first = self.live("waiting")[0]
            holder.commit = True  # a clean release hands over in the step of the release
            if turns is None:
                holder.then_cancel = first
                holder.let_go.set()
            else:
                holder.let_go.set()
                self.cancel_soon(first, turns, twice=False)
            self.settle()

        @precondition(lambda self: self.live("holding") + self.live("waiting"))
        @rule(data=st.data(), turns=st.integers(0, 6), let_go=st.booleans(), twice=st.booleans())
        def cancel(self, data: st.DataObject, turns: int, let_go: bool, twice: bool) -> None:
            """Cancel a task in line or holding (if told to let go first, maybe while it
            resets its connection)."""
            user = data.draw(st.sampled_from(self.live("holding") + self.live("waiting")))
            if let_go:
                user.let_go.set()
            self.cancel_soon(user, turns, twice)
            self.settle()

        @precondition(lambda self: self.factory.fail_connects == 0)
        @rule()
        def fail_next_connect(self) -> None:
            self.factory.fail_connects = 1

        # Late in a run only: after close() the pool serves nobody, and the rest of the run
        # would test little.
        @precondition(lambda self: self.closing is None and len(self.users) >= 8)
        @rule()
        def close(self) -> None:
            self.closing = self.loop.create_task(self.pool.close(timeout=60))
            self.settle()

        # -- invariants -----------------------------------------------------------------------

        @invariant()
        def the_stats_agree_with_the_driver_and_the_tasks(self) -> None:
            stats = self.pool.stats()
            holding = self.live("holding")
            held = [u.conn for u in holding]
            assert stats.open == len(self.factory.open_now), (stats, self.factory.open_now)
            assert stats.open == stats.created - stats.closed
            assert stats.open <= BURST
            assert stats.in_use == len(holding), (stats, holding)
            assert len({id(c) for c in held}) == len(held), "a connection in two tasks' hands"
            assert all(u.conn.read_only is u.ro for u in holding), "a connection of the other route"
            assert not any(c.closed for c in held if not c.users)
            idle = [c for c in self.factory.open_now if all(c is not h for h in held)]
            assert len(idle) == stats.idle
            assert not any(c.in_transaction for c in idle)
            unexpected = [u.error for u in self.users if u.error is not None]
            assert all(isinstance(e, EXPECTED) for e in unexpected), unexpected
            if self.closing is None:
                assert stats.waiting == len(self.live("waiting"))
                if stats.waiting:  # nobody waits while a connection could be had
                    assert stats.open == BURST, stats
                    routes = {u.ro for u in self.live("waiting")}
                    assert not [c for c in idle if c.read_only in routes], (stats, idle)
                else:  # beyond size, nothing stays idle
                    assert stats.open <= max(SIZE, stats.in_use), stats
            else:
                assert (stats.waiting, stats.idle) == (0, 0), stats
                assert not self.live("waiting")

        def teardown(self) -> None:
            try:
                for user in self.users:
                    user.let_go.set()
                self.settle()
                # Everything is back by now: close() has nothing to wait for (a pool that
                # leaked a connection fails here, rather than wait out a timeout).
                self.loop.run_until_complete(self.pool.close(timeout=0))
                self.settle()
                assert self.closing is None or self.closing.done()
                assert not self.factory.open_now, self.factory.open_now
                assert all(u.state == "done" for u in self.users)
            finally:
                left = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for task in left:
                    task.cancel()
                if left:
                    self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
                self.loop.close()

    return AioPoolMachine


@pytest.mark.timeout(300)
@pytest.mark.parametrize("routes", [False, True], ids=["one-route", "routes-reads"])
def test_the_pool_keeps_its_invariants_under_random_use(
    routes: bool,
    fake_factory_cls: type[Any],
    routing_factory_cls: type[Any],
    make_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    machine = _machine(routing_factory_cls if routes else fake_factory_cls, make_loop)
    machine.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    machine.TestCase().runTest()
