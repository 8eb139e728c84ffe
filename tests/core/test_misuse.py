"""Misuse gets a clear error, never another thread's connection (issue 11 §3).

Use after release, checkouts dropped unreleased, foreign releases, a reset hook that leaves a
transaction open: each against both pool classes, with real sqlite3 connections.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

import qdbpool
import qdbpool.session
from qdbpool import BoundedPool, ConnectionReleasedError
from qdbpool.events import ConnectionOpened
from qdbpool.factories import SQLite

JOIN = 30.0


@pytest.fixture
def make(
    make_pool: Callable[..., qdbpool.Pool], pool_cls: type[qdbpool.Pool]
) -> Callable[..., qdbpool.Pool]:
    """A pool of each class in turn over real sqlite3 connections, closed after the test."""

    def make(factory: object = None, **kwargs: object) -> qdbpool.Pool:
        return make_pool(factory or SQLite(":memory:"), pool_cls=pool_cls, **kwargs)

    return make


def run_in_thread(fn: Callable[[], object]) -> object:
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(fn()))
    t.start()
    t.join(JOIN)
    assert not t.is_alive()
    return result[0]


# ------------------------------------------------------------------------ use after release


@pytest.mark.parametrize("release", ["with", "close", "pool.release", "pool.release(raw)"])
def test_every_use_of_a_released_wrapper_raises_and_touches_nothing(make, release):
    pool = make()
    conn = pool.connect()
    raw = conn.__wrapped__
    if release == "with":
        with conn:
            pass
    elif release == "close":
        conn.close()
    elif release == "pool.release":
        pool.release(conn)
    else:
        pool.release(raw)
    assert conn.released
    with pytest.raises(ConnectionReleasedError, match="released"):
        conn.execute("SELECT 1")
    with pytest.raises(ConnectionReleasedError):
        conn.isolation_level = None
    with pytest.raises(ConnectionReleasedError), conn:
        pass
    assert not raw.in_transaction and raw.isolation_level == ""  # untouched
    conn.close()  # releasing again is harmless
    pool.release(conn)
    assert pool.stats().in_use == 0


@contextlib.contextmanager
def another_thread_holding(pool: qdbpool.Pool) -> Iterator[None]:
    """Another thread checks out a connection and keeps a transaction open on it for the
    length of the block; at its end that transaction must still be open: nothing done
    in the block reached it."""
    holding, done = threading.Event(), threading.Event()
    still_open: list[bool] = []

    def hold() -> None:
        with pool.connect() as conn:
            conn.execute("BEGIN")
            holding.set()
            done.wait(JOIN)
            still_open.append(bool(conn.in_transaction))

    t = threading.Thread(target=hold)
    t.start()
    assert holding.wait(JOIN)
    try:
        yield
    finally:
        done.set()
        t.join(JOIN)
    assert still_open == [True]


def test_a_released_wrapper_cannot_reach_the_connection_another_thread_holds_now():
    # The bug this pins: an old wrapper's COMMIT ended another thread's transaction.
    pool = BoundedPool(SQLite(":memory:"), size=1)
    try:
        old = pool.connect()
        old.close()
        with another_thread_holding(pool), pytest.raises(ConnectionReleasedError):
            old.commit()
    finally:
        pool.close(timeout=0)


def test_a_thread_whose_last_connection_another_thread_holds_now_does_not_share_it():
    # After a release the thread's own slot may still point to that connection; another
    # thread has it now, so this thread's next checkout must wait for its own, and its
    # pool.release(raw) must not end the other thread's checkout.
    pool = BoundedPool(SQLite(":memory:"), size=1, timeout=0.2)
    try:
        with pool.connect() as mine:
            raw = mine.__wrapped__
        with another_thread_holding(pool):
            with pytest.raises(qdbpool.PoolTimeoutError):
                pool.connect()  # the one connection is the other thread's
            pool.release(raw)  # not this thread's checkout: changes nothing
            assert pool.stats().in_use == 1
    finally:
        pool.close(timeout=0)


def test_a_connection_handed_to_a_waiting_thread_is_not_shared_by_the_thread_that_gave_it(
    poll,
):
    # Handed straight to the waiter, it is the waiter's before the waiter has even woken:
    # its last holder, checking out again at once, must wait in line, not share it.
    pool = BoundedPool(SQLite(":memory:"), size=1, timeout=0.3)
    try:
        conn = pool.connect()
        got, done = threading.Event(), threading.Event()

        def waiter() -> None:
            with pool.connect():
                got.set()
                done.wait(JOIN)

        t = threading.Thread(target=waiter)
        t.start()
        poll(lambda: pool.stats().waiting == 1, timeout=JOIN, interval=0.001, what="waiting")
        conn.close()  # to the waiter
        with pytest.raises(qdbpool.PoolTimeoutError):
            pool.connect()
        assert got.wait(JOIN)
        done.set()
        t.join(JOIN)
    finally:
        pool.close(timeout=0)


# A released wrapper may be handed out again by the next connect(), but only when nothing
# else can reach it (qdbpool.session). Each way of keeping one must keep it released.


def _keep_strongly(conn: object) -> Callable[[], object]:
    return lambda: conn


def _keep_weakly(conn: object) -> Callable[[], object]:
    return weakref.ref(conn)


def _keep_in_a_cycle(conn: object) -> Callable[[], object]:
    cycle: list[object] = [conn]
    cycle.append(cycle)
    return lambda: cycle[0]


def _keep_in_another_thread(conn: object) -> Callable[[], object]:
    box: list[object] = []
    run_in_thread(lambda: box.append(conn))
    return lambda: box[0]


@pytest.mark.parametrize(
    "keep", [_keep_strongly, _keep_weakly, _keep_in_a_cycle, _keep_in_another_thread]
)
@pytest.mark.parametrize("release", ["with", "close", "pool.release"])
def test_a_released_wrapper_someone_keeps_stays_released_across_later_checkouts(
    make, keep, release
):
    pool = make()
    conn = pool.connect()
    if release == "with":
        with conn:
            pass
    elif release == "close":
        conn.close()
    else:
        pool.release(conn)
    kept = keep(conn)
    del conn
    for _ in range(3):  # the same thread, the same connection, as often as it likes
        with pool.connect() as again:
            again.execute("SELECT 1")
            old = kept()
            if old is None:  # a weak reference to a wrapper that is gone: nothing to reach
                continue
            assert old is not again
            with pytest.raises(ConnectionReleasedError):
                old.execute("SELECT 1")
            del old


@pytest.mark.parametrize("switch_at", ["_refcount", "getweakrefcount"])
def test_a_wrapper_another_thread_releases_during_a_checkout_stays_released(
    make, monkeypatch, switch_at
):
    # A worker thread closes a wrapper of this thread's connection just as this thread
    # checks out again (nested) and looks whether its spare wrapper may be reused: the
    # worker's wrapper lands in the spare slot then, and must not be the one reused.
    # The thread switch is forced where CPython may make it: at a call in that check.
    pool = make()
    outer = pool.connect()
    spare = pool.connect()
    spare.close()
    del spare  # only the record holds it now: reusable
    box = [outer]
    del outer
    real = getattr(qdbpool.session, switch_at)

    def switch_threads_here(obj: object) -> int:
        monkeypatch.setattr(qdbpool.session, switch_at, real)
        worker = threading.Thread(target=box[0].close)
        worker.start()
        worker.join(JOIN)
        return int(real(obj) - (1 if switch_at == "_refcount" else 0))  # not our frame's

    monkeypatch.setattr(qdbpool.session, switch_at, switch_threads_here)
    inner = pool.connect()
    closed_by_the_worker = box[0]
    assert closed_by_the_worker is not inner
    assert closed_by_the_worker.released
    with pytest.raises(ConnectionReleasedError):
        closed_by_the_worker.execute("SELECT 1")
    inner.execute("SELECT 1")
    inner.close()


def test_a_released_wrapper_says_so_in_its_repr(make):
    pool = make()
    with pool.connect() as conn:
        assert "sqlite3.Connection" in repr(conn)
    assert repr(conn) == "<released connection>"


# ------------------------------------------------------------------------ dropped checkouts


def test_a_wrapper_collected_unreleased_is_released_with_a_warning(make, caplog):
    pool = make()
    caplog.set_level(logging.WARNING, logger="qdbpool")
    conn = pool.connect()
    conn.execute("SELECT 1")
    del conn
    gc.collect()
    assert pool.stats().in_use == 0
    assert any("garbage collected" in r.message for r in caplog.records)
    started = time.monotonic()
    pool.close(timeout=5)
    assert time.monotonic() - started < 1  # nothing left for close() to wait for
    assert pool.stats().open == 0


def test_a_wrapper_dropped_inside_a_reference_cycle_is_closed_and_counted(
    make, pool_cls, closed_check
):
    # The usual way: an exception's traceback holds the frame that held the wrapper. The
    # cycle collector clears weak references before it runs finalizers, so the pool must
    # not rely on a WeakSet to know that the connection is still its own to close.
    pool = make(size=1, max_size=1, timeout=5) if pool_cls is BoundedPool else make()

    def check_out_into_a_cycle() -> object:
        conn = pool.connect()
        cycle: list[object] = [conn]
        cycle.append(cycle)
        return conn.__wrapped__

    # In a thread that ends: then nothing but the cycle refers to the connection's record.
    raw = run_in_thread(check_out_into_a_cycle)
    gc.collect()
    stats = pool.stats()
    assert (stats.open, stats.in_use, stats.closed) == (0, 0, 1)
    assert closed_check(raw)
    with pool.connect() as again:  # a BoundedPool got its capacity back
        assert again.execute("SELECT 1").fetchone() == (1,)


def test_a_wrapper_collected_unreleased_in_another_thread_frees_its_connection(make):
    pool = make()
    conn = run_in_thread(pool.connect)  # checked out there, never released
    assert isinstance(conn, qdbpool.SessionWrapper)
    assert pool.stats().in_use == 1
    del conn
    gc.collect()
    assert pool.stats().in_use == 0
    pool.close(timeout=5)
    assert pool.stats().open == 0


def test_close_ends_a_checkout_that_is_still_referenced_and_a_second_close_does_not_wait(
    make,
):
    pool = make()
    held = run_in_thread(pool.connect)  # referenced, never released
    raw = held.__wrapped__  # type: ignore[attr-defined]
    started = time.monotonic()
    pool.close(timeout=0.2)
    first = time.monotonic() - started
    stats = pool.stats()
    assert (stats.open, stats.in_use, stats.closed) == (0, 0, 1)
    started = time.monotonic()
    pool.close(timeout=5)
    assert time.monotonic() - started < 1
    assert 0.15 <= first < 5
    held.close()  # type: ignore[attr-defined]  # its holder lets go: now closed for good
    with pytest.raises(sqlite3.ProgrammingError):
        raw.execute("SELECT 1")


def test_reinitialize_does_not_wait_for_a_dropped_checkout():
    qdbpool.initialize(SQLite(":memory:"))
    conn = qdbpool.instance().connect()  # quasardb.pool style: never released
    conn.execute("SELECT 1")
    del conn
    gc.collect()
    started = time.monotonic()
    qdbpool.initialize(SQLite(":memory:"))
    assert time.monotonic() - started < 1
    qdbpool.close()


# ------------------------------------------------------------------------ foreign release


@pytest.mark.parametrize(
    "stranger",
    [lambda: sqlite3.connect(":memory:"), object, lambda: None],
    ids=["another sqlite3 connection", "an object", "None"],
)
def test_releasing_a_connection_the_pool_never_handed_out_raises_value_error(make, stranger):
    pool = make()
    with pool.connect(), pytest.raises(ValueError, match="did not hand out"):
        pool.release(stranger())
    assert pool.stats().in_use == 0


def test_releasing_a_wrapper_of_another_pool_raises_value_error(make):
    pool, other = make(), make()
    with other.connect() as conn, pytest.raises(ValueError, match="another pool"):
        pool.release(conn)


# ------------------------------------------------------------------------ reset hooks


def test_a_reset_hook_that_leaves_a_transaction_open_gets_the_connection_discarded(make):
    def reset(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")  # a buggy hook

    pool = make(reset=reset)
    with pool.connect() as conn:
        first = conn.__wrapped__
    with pool.connect() as conn:
        assert conn.__wrapped__ is not first  # never handed out inside that transaction
        assert not conn.in_transaction
    assert pool.stats().discarded >= 1


# ------------------------------------------------------------------------ a second connection


def test_the_factory_gives_a_second_separate_connection_in_one_thread(make):
    pool = make()
    with pool.connect() as conn:
        second = pool.factory.connect()
        try:
            assert second is not conn.__wrapped__
        finally:
            second.close()


@pytest.mark.parametrize("read_only", [False, True])
def test_a_configure_hook_that_uses_its_own_pool_is_refused_at_once(recorder, pool_cls, read_only):
    # Each new connection opened another for its own hook: a RecursionError after 142
    # SQLite connections; on a server, every free session slot taken at once.
    pool: qdbpool.Pool

    def configure(conn: sqlite3.Connection) -> None:
        with pool.connect() as other:
            other.execute("SELECT 1")

    # A full BoundedPool waited its whole timeout for the capacity its own opening held.
    pool = (
        BoundedPool(recorder, size=1, timeout=5, configure=configure)
        if pool_cls is BoundedPool
        else pool_cls(recorder, configure=configure)
    )
    try:
        # read_only=True on a factory that does not route is the same, one route
        with (
            pytest.raises(qdbpool.ConfigurationError, match="configure"),
            pool.connect(read_only=read_only),
        ):
            pass
        assert len(recorder.created) == 1
        assert recorder.still_open() == []
    finally:
        pool.close(timeout=0)


def test_a_connection_opened_listener_that_uses_its_own_pool_opens_nothing_more(
    recorder, pool_cls, caplog
):
    # An audit listener that records each new connection through the pool it listens to:
    # the SingletonPool opened 142 connections for one checkout (each listener call opened
    # the next), a BoundedPool(size=1) waited its whole timeout for its own opening.
    pool: qdbpool.Pool
    calls: list[ConnectionOpened] = []

    def audit(event: object) -> None:
        if isinstance(event, ConnectionOpened):
            calls.append(event)
            with pool.connect() as conn:
                conn.execute("SELECT 1")

    pool = (
        BoundedPool(recorder, size=1, timeout=5) if pool_cls is BoundedPool else pool_cls(recorder)
    )
    pool.subscribe(audit)
    try:
        with pool.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert len(recorder.created) == 1
        assert len(calls) == 1
        assert pool.stats().timeouts == 0
        assert "ConnectionOpened listener" in caplog.text  # the listener's error, logged
    finally:
        pool.close(timeout=0)


@pytest.mark.parametrize("read_only", ["yes", None, 1])
def test_connect_takes_a_bool_for_read_only(recorder, make_pool, pool_cls, read_only):
    pool = make_pool(recorder, pool_cls=pool_cls)
    with pytest.raises(qdbpool.ArgumentTypeError, match="read_only"):
        pool.connect(read_only=read_only)


def test_instance_takes_a_name_as_close_does():
    with pytest.raises(qdbpool.ArgumentTypeError, match="name"):
        qdbpool.instance(1)  # type: ignore[arg-type]


def test_a_configure_hook_may_use_its_pool_for_the_other_route(pool_cls):
    # What is refused is a hook that opens a connection of the route being opened (which
    # would recurse); a replica connection's hook may still check out a primary one.
    class Routing(SQLite):
        routes_reads = True

    first: list[bool] = []
    pool: qdbpool.Pool

    def configure(conn: sqlite3.Connection) -> None:
        if not first:
            first.append(True)
            with pool.connect() as other:  # the write route, from the read route's hook
                other.execute("SELECT 1")

    pool = pool_cls(Routing(":memory:"), configure=configure)
    try:
        with pool.connect(read_only=True) as conn:
            conn.execute("SELECT 1")
        assert pool.stats().created == 2
    finally:
        pool.close(timeout=0)
