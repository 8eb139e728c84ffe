"""The process-wide pool: qdbpool.initialize(), instance() and close()."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

import qdbpool
from qdbpool import PoolClosedError, PoolNotInitializedError, QdbPoolError, SingletonPool


def run_python(*args: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_instance_before_initialize_raises_pool_not_initialized_error():
    with pytest.raises(PoolNotInitializedError, match="initialize"):
        qdbpool.instance()


def test_pool_not_initialized_error_is_a_qdbpool_error_and_a_runtime_error():
    assert issubclass(PoolNotInitializedError, QdbPoolError)
    assert issubclass(PoolNotInitializedError, RuntimeError)


def test_instance_before_initialize_raises_also_under_python_dash_o():
    result = run_python(
        "-O",
        code="""
        import sys
        import qdbpool
        try:
            qdbpool.instance()
        except qdbpool.PoolNotInitializedError:
            outcome = "raised"
        else:
            outcome = "returned"
        print(sys.flags.optimize, outcome)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "raised"]


def test_calling_a_decorated_function_before_initialize_raises_pool_not_initialized_error():
    @qdbpool.with_conn
    def use(conn):
        return conn

    with pytest.raises(PoolNotInitializedError):
        use()


def test_initialize_forwards_its_arguments_to_singleton_pool(recorder):
    configured = []
    pool = qdbpool.initialize(recorder, configure=configured.append)

    assert type(pool) is SingletonPool
    with pool.connect() as conn:
        assert conn.__wrapped__ is recorder.created[0]
    assert configured == recorder.created


def test_initialize_returns_the_pool_that_instance_returns(recorder):
    pool = qdbpool.initialize(recorder)
    assert qdbpool.instance() is pool


def test_initialize_accepts_a_pool_instance_and_makes_it_the_global_pool(
    make_pool, pool_cls, recorder
):
    mine = make_pool(recorder, pool_cls=pool_cls)
    assert qdbpool.initialize(mine) is mine
    assert qdbpool.instance() is mine
    assert not mine.closed

    @qdbpool.with_conn
    def answer(conn):
        return conn.execute("SELECT 41 + 1").fetchone()[0]

    assert answer() == 42
    stats = mine.stats()
    assert (stats.checkouts, stats.in_use, stats.open) == (1, 0, 1)


def test_initialize_closes_the_previous_global_pool_and_its_connections(
    make_recorder, closed_check
):
    first_conns, second_conns = make_recorder(), make_recorder()
    first = qdbpool.initialize(first_conns)
    with first.connect() as conn:
        conn.execute("SELECT 1")

    second = qdbpool.initialize(second_conns)

    assert first.closed
    assert [closed_check(c) for c in first_conns.created] == [True]
    with pytest.raises(PoolClosedError):
        first.connect()
    assert qdbpool.instance() is second
    with second.connect() as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_initialize_with_the_current_global_pool_keeps_it_open(recorder):
    pool = qdbpool.initialize(recorder)
    assert qdbpool.initialize(pool) is pool
    assert not pool.closed
    with pool.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_decorated_functions_use_the_pool_of_the_latest_initialize(make_recorder):
    first_conns, second_conns = make_recorder(), make_recorder()

    @qdbpool.with_conn
    def which(conn):
        return conn

    qdbpool.initialize(first_conns)
    assert which() is first_conns.created[0]
    qdbpool.initialize(second_conns)
    assert which() is second_conns.created[0]


def test_module_close_closes_the_global_pool_and_its_connections(recorder, closed_check):
    pool = qdbpool.initialize(recorder)
    with pool.connect():
        pass

    qdbpool.close()

    assert pool.closed
    assert closed_check(recorder.created[0])
    assert pool.stats().open == 0


def test_instance_after_module_close_returns_the_closed_pool_which_refuses_to_connect(recorder):
    pool = qdbpool.initialize(recorder)
    qdbpool.close()

    assert qdbpool.instance() is pool
    with pytest.raises(PoolClosedError):
        qdbpool.instance().connect()


def test_decorated_function_after_module_close_raises_pool_closed_error(recorder):
    @qdbpool.with_conn
    def use(conn):
        return conn.execute("SELECT 1").fetchone()

    qdbpool.initialize(recorder)
    assert use() == (1,)
    qdbpool.close()

    with pytest.raises(PoolClosedError):
        use()


def test_module_close_before_initialize_does_nothing():
    qdbpool.close()
    with pytest.raises(PoolNotInitializedError):
        qdbpool.instance()


def test_pool_closed_error_is_a_qdbpool_error_and_a_runtime_error():
    assert issubclass(PoolClosedError, QdbPoolError)
    assert issubclass(PoolClosedError, RuntimeError)


def test_concurrent_initialize_leaves_exactly_one_open_global_pool(make_recorder):
    n = 16
    barrier = threading.Barrier(n)
    made: list[SingletonPool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def init() -> None:
        pool = SingletonPool(make_recorder())
        try:
            barrier.wait(timeout=30)
            qdbpool.initialize(pool)
        except BaseException as exc:
            errors.append(exc)
        with lock:
            made.append(pool)

    threads = [threading.Thread(target=init) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert not errors
    assert len(made) == n
    current = qdbpool.instance()
    assert current in made
    assert [p for p in made if not p.closed] == [current]


def test_initialize_registers_a_close_of_the_global_pool_at_exit():
    # atexit runs its handlers last-registered first: the marker registered *before*
    # initialize() runs after qdbpool's own handler, so "closed" must come before it.
    result = run_python(
        code="""
        import atexit
        import qdbpool

        atexit.register(print, "after qdbpool's exit handler", flush=True)

        class Conn:
            def close(self):
                print("closed", flush=True)

        qdbpool.initialize(Conn)

        @qdbpool.with_conn
        def use(conn):
            return conn

        use()
        print("exiting", flush=True)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["exiting", "closed", "after qdbpool's exit handler"]
