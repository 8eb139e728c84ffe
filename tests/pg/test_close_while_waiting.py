"""A caller waiting for a host when the pool closes gets PoolClosedError (issue 11 §4), not
NoHostAvailableError("the pool's factory is closed"): in a close/initialize race the old
code gave 45% of such callers the wrong error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import qdbpool
from qdbpool import PoolClosedError, SingletonPool

CALLERS = 16


def test_callers_waiting_for_a_primary_get_pool_closed_error_when_the_pool_closes(
    pool_cls: type[qdbpool.Pool], make_pool: Callable[..., qdbpool.Pool], free_port: int
) -> None:
    # No server at all: every caller waits (up to acquire_timeout) for a primary to appear.
    dsn = f"postgresql://app@127.0.0.1:{free_port}/app"
    pool = make_pool(dsn, pool_cls=pool_cls, acquire_timeout=30, refresh_delay=0.05)
    outcomes: list[BaseException | None] = []
    lock = threading.Lock()
    started = threading.Barrier(CALLERS + 1, timeout=30)

    def caller() -> None:
        started.wait()
        try:
            pool.connect().close()
            outcome: BaseException | None = None
        except BaseException as exc:
            outcome = exc
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.2)  # not synchronisation: let the callers get into their wait
    closed_at = time.monotonic()
    pool.close(timeout=0)
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert time.monotonic() - closed_at < 10
    kinds = sorted({type(o).__name__ for o in outcomes})
    assert kinds == ["PoolClosedError"], (pool_cls.__name__, kinds, outcomes[:3])
    assert all(isinstance(o, PoolClosedError) for o in outcomes)


def test_closing_the_previous_pool_of_a_shared_factory_leaves_the_new_pools_callers_waiting(
    free_port: int, pg: Any
) -> None:
    # initialize(factory) again makes the new pool before it closes the old one: the old
    # pool's close() must not close the factory under the new pool's waiting callers.
    dsn = f"postgresql://app@127.0.0.1:{free_port}/app"
    factory = pg.factory(dsn, acquire_timeout=30, refresh_delay=0.05)
    qdbpool.initialize(factory)
    new = qdbpool.initialize(factory)  # closes the first pool
    outcome: list[BaseException] = []
    waiting = threading.Thread(target=lambda: outcome.append(catch(new.connect)))
    waiting.start()
    time.sleep(0.2)  # not synchronisation: let the caller get into its wait
    other = SingletonPool(factory)
    other.close()  # a third user of the factory comes and goes
    waiting.join(0.5)
    assert waiting.is_alive(), outcome  # still waiting for a primary: the factory is open
    new.close(timeout=0)
    waiting.join(10)
    assert [type(o) for o in outcome] == [PoolClosedError]


def catch(fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("expected an error")
