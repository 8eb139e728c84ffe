"""pool.subscribe(): an event for each connection opened and closed (with its reason) and
each caller that waited; the counts agree with stats(); a listener can neither break the
pool nor be called under its lock. Hosts' role changes and failovers, from a real cluster,
are in tests/pg/test_metrics.py."""

from __future__ import annotations

import collections
import contextlib
import gc
import sqlite3
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qdbpool
from qdbpool import ArgumentTypeError, BoundedPool, PoolTimeoutError, SingletonPool
from qdbpool.events import (
    DISCARD_REASONS,
    CheckoutWaited,
    ConnectionClosed,
    ConnectionOpened,
    Event,
)
from qdbpool.factories import SQLite
from qdbpool.protocol import Generation

JOIN = 30.0


class Recorded(list[Event]):
    """A listener that keeps every event, in order (appends are atomic)."""

    def __call__(self, event: Event) -> None:
        self.append(event)

    def reasons(self) -> list[str]:
        return [e.reason for e in self if isinstance(e, ConnectionClosed)]

    def opened(self) -> list[ConnectionOpened]:
        return [e for e in self if isinstance(e, ConnectionOpened)]


def subscribed(pool: qdbpool.Pool) -> Recorded:
    events = Recorded()
    pool.subscribe(events)
    return events


def run_in_thread(fn: Any) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(JOIN)
    assert not t.is_alive()
    if errors:
        raise errors[0]


# -- each reason, from the user's side --------------------------------------------------------


def test_opened_then_closed_when_the_pool_closes(make_pool, pool_cls):
    pool = make_pool(SQLite(), pool_cls=pool_cls)
    events = subscribed(pool)
    with pool.connect(read_only=False):
        pass
    [opened] = events.opened()
    assert opened.pool is pool and opened.read_only is False and 0 <= opened.seconds < JOIN
    pool.close()
    assert events.reasons() == ["pool_closed"]
    assert not events[-1].discarded


def test_a_connection_older_than_max_lifetime_is_closed_as_expired(make_pool, pool_cls, clock):
    pool = make_pool(SQLite(), pool_cls=pool_cls, max_lifetime=60)
    events = subscribed(pool)
    with pool.connect():
        pass
    clock.advance(61)
    with pool.connect():
        pass
    [closed] = [e for e in events if isinstance(e, ConnectionClosed)]
    assert closed.reason == "expired" and closed.discarded and pool.stats().discarded == 1
    assert len(events.opened()) == 2


def test_a_failed_pre_ping_closes_the_connection_as_ping_failed(make_pool, pool_cls, pingable):
    pool = make_pool(pingable, pool_cls=pool_cls, pre_ping=True)
    events = subscribed(pool)
    with pool.connect():
        pass
    pingable.created[0].ping_fails = True
    with pool.connect():
        pass
    assert events.reasons() == ["ping_failed"]


def test_a_connection_closed_by_its_user_is_closed_as_broken(make_pool, pool_cls):
    pool = make_pool(SQLite(), pool_cls=pool_cls)
    events = subscribed(pool)

    @qdbpool.with_conn(pool=pool)
    def close_it(conn: sqlite3.Connection) -> None:
        conn.close()

    close_it()
    assert events.reasons() == ["broken"]


def plain_sqlite() -> sqlite3.Connection:
    """A plain callable: its factory takes a ConnectionError for a lost connection (the
    SQLite factory knows an embedded database has no link to lose)."""
    return sqlite3.connect(":memory:", check_same_thread=False)


def test_an_error_meaning_the_connection_is_lost_closes_it_as_disconnect(make_pool, pool_cls):
    pool = make_pool(plain_sqlite, pool_cls=pool_cls)
    events = subscribed(pool)

    @qdbpool.with_conn(pool=pool)
    def lose_it(conn: sqlite3.Connection) -> None:
        raise ConnectionResetError("the server went away")

    with pytest.raises(ConnectionResetError):
        lose_it()
    assert events.reasons() == ["disconnect"]


def test_a_failing_reset_hook_closes_the_connection_as_reset_failed(make_pool, pool_cls):
    def reset(conn: sqlite3.Connection) -> None:
        raise RuntimeError("cannot reset")

    pool = make_pool(SQLite(), pool_cls=pool_cls, reset=reset)
    events = subscribed(pool)
    with pool.connect():
        pass
    assert events.reasons() == ["reset_failed"]


class Moving(SQLite):
    """SQLite whose connections all go stale when the test moves `generation` on, as a
    routing factory's do when their host changes role."""

    def __init__(self) -> None:
        super().__init__()
        self.generation = Generation()

    def generation_of(self, conn: sqlite3.Connection) -> tuple[Generation, int]:
        return self.generation, self.generation.value


def test_a_connection_the_factory_made_unfit_is_closed_as_stale(make_pool, pool_cls):
    factory = Moving()
    pool = make_pool(factory, pool_cls=pool_cls)
    events = subscribed(pool)
    with pool.connect():
        pass
    factory.generation.value += 1
    with pool.connect():
        pass
    assert events.reasons() == ["stale"]


def test_a_singleton_pool_connection_is_closed_when_its_thread_ends(make_pool, poll):
    pool = make_pool(SQLite(), pool_cls=SingletonPool)
    events = subscribed(pool)

    def use() -> None:
        with pool.connect():
            pass

    run_in_thread(use)
    gc.collect()
    poll(lambda: events.reasons() == ["thread_ended"], what="the thread_ended event")
    assert pool.stats().open == 0


def test_a_singleton_checkout_dropped_in_another_thread_is_closed_as_abandoned(make_pool):
    pool = make_pool(SQLite(), pool_cls=SingletonPool)
    events = subscribed(pool)
    held: list[Any] = []
    kept = threading.Event()
    finish = threading.Event()

    def hold() -> None:
        held.append(pool.connect())  # never released; the thread stays alive
        kept.set()
        finish.wait(JOIN)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert kept.wait(JOIN)
        held.clear()  # its last reference goes away in this thread
        gc.collect()
        assert events.reasons() == ["abandoned"]
    finally:
        finish.set()
        t.join(JOIN)


def test_a_bounded_pool_closes_idle_burst_connections(make_pool, clock):
    pool = make_pool(SQLite(), pool_cls=BoundedPool, size=1, max_size=2, burst_idle=5)
    events = subscribed(pool)
    with pool.connect():
        run_in_thread(lambda: pool.connect().close())  # a second connection: a burst one
    clock.advance(6)
    with pool.connect():
        pass
    assert events.reasons() == ["burst_idle"]
    assert pool.stats().open == 1


def test_a_caller_that_waited_is_reported_with_how_long_and_whether_it_gave_up(make_pool):
    pool = make_pool(SQLite(), pool_cls=BoundedPool, size=1, max_size=1, timeout=0.2)
    events = subscribed(pool)
    with pool.connect(), pytest.raises(PoolTimeoutError):
        run_in_thread(lambda: pool.connect().close())
    [gave_up] = [e for e in events if isinstance(e, CheckoutWaited)]
    assert gave_up.timed_out and gave_up.seconds >= 0.2 and gave_up.pool is pool

    # Now one that is served: the holder lets go once the waiter is in line.
    held = pool.connect()
    waiter = threading.Thread(target=lambda: pool.connect().close())
    waiter.start()
    deadline = threading.Event()
    for _ in range(1000):  # bounded: until the waiter is in line (or 10 s)
        if pool.stats().waiting:
            break
        deadline.wait(0.01)
    held.close()
    waiter.join(JOIN)
    served = [e for e in events if isinstance(e, CheckoutWaited)][1:]
    assert [e.timed_out for e in served] == [False]


def test_a_checkout_that_did_not_wait_emits_nothing(make_pool, pool_cls):
    pool = make_pool(SQLite(), pool_cls=pool_cls)
    with pool.connect():
        pass
    events = subscribed(pool)
    for _ in range(100):
        with pool.connect():
            pass
    assert events == []


# -- the hook itself ---------------------------------------------------------------------------


def test_a_listener_that_raises_is_logged_and_the_pool_goes_on(make_pool, pool_cls, caplog):
    pool = make_pool(SQLite(), pool_cls=pool_cls)

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    pool.subscribe(broken)
    events = subscribed(pool)  # after the broken one: still called
    with pool.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert len(events.opened()) == 1
    assert "listener raised" in caplog.text


def test_unsubscribe_stops_the_events_and_is_harmless_twice(make_pool, pool_cls):
    pool = make_pool(SQLite(), pool_cls=pool_cls, max_lifetime=0.000001)
    events = Recorded()
    unsubscribe = pool.subscribe(events)
    with pool.connect():
        pass
    unsubscribe()
    unsubscribe()
    for _ in range(3):
        with pool.connect():
            pass
    assert len(events) == 1


def test_a_second_unsubscribe_leaves_another_subscription_of_the_same_listener(make_pool, pool_cls):
    pool = make_pool(SQLite(), pool_cls=pool_cls)
    events = Recorded()
    first = pool.subscribe(events)
    pool.subscribe(events)  # subscribed again, say by another part of the program
    first()
    first()
    with pool.connect():
        pass
    assert len(events.opened()) == 1  # the second subscription still delivers


def test_subscribing_something_not_callable_names_what_was_given(make_pool):
    pool = make_pool(SQLite())
    with pytest.raises(ArgumentTypeError, match="listener must be callable, not int"):
        pool.subscribe(42)  # type: ignore[arg-type]


def test_listeners_are_never_called_under_the_pool_lock(make_pool, pool_cls, clock):
    """A listener that needs the pool from another thread (a metrics exporter reading
    stats()) must not deadlock: every event is delivered after the lock is let go."""
    pool = make_pool(SQLite(), pool_cls=pool_cls, max_lifetime=60)
    blocked: list[Event] = []

    def needs_the_lock(event: Event) -> None:
        t = threading.Thread(target=pool.stats)
        t.start()
        t.join(5)
        if t.is_alive():
            blocked.append(event)

    pool.subscribe(needs_the_lock)
    with pool.connect():
        pass
    clock.advance(61)
    with pool.connect():  # expired: closed and reopened
        pass
    pool.close()
    assert blocked == []


def test_a_checkout_the_collector_releases_inside_the_pool_lock_calls_no_listener_under_it(
    make_pool, pool_cls, poll
):
    """The cycle collector runs finalizers wherever memory is allocated, the pool's own
    lock held included (a stats() call, say): a leaked wrapper's release then closed its
    broken connection, and called the listeners, under the lock."""
    pool = make_pool(SQLite(), pool_cls=pool_cls)
    under_lock: list[bool] = []
    pool.subscribe(lambda event: under_lock.append(pool._lock._is_owned()))

    leak_in_a_cycle(pool).__wrapped__.close()  # broken: its release closes it
    collect_inside_the_pool_lock(pool)
    poll(lambda: pool.stats().in_use == 0, what="the leaked checkout released")
    poll(lambda: len(under_lock) >= 2, what="opened and closed reported")
    assert under_lock == [False, False]


class _Holder:
    me: object
    conn: Any


def leak_in_a_cycle(pool: Any) -> Any:
    """A checkout held only by a reference cycle, that only the collector frees; returns
    the wrapper (not to be kept)."""
    holder = _Holder()
    holder.me = holder
    holder.conn = pool.connect()
    return holder.conn


def leak_in_an_ended_thread(pool: Any) -> None:
    """leak_in_a_cycle(pool), from a thread that then ends."""
    worker = threading.Thread(target=leak_in_a_cycle, args=(pool,))
    worker.start()
    worker.join(5)


def collect_inside_the_pool_lock(pool: object) -> None:
    """Run the cycle collector where it may run: inside the pool's own lock."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        with pool._lock:  # type: ignore[attr-defined]
            gc.collect()
    finally:
        if gc_was:
            gc.enable()


def test_a_thread_ended_holding_a_leak_has_it_closed_outside_the_pool_lock(
    make_pool, pool_cls, poll
):
    """A thread that ends holding a leaked checkout in a reference cycle: the collector
    frees its connection's record, whose finalizer closed the connection and called the
    listeners wherever the collector ran, inside the pool's lock too."""
    pool = make_pool(SQLite(), pool_cls=pool_cls)
    closed_under_lock: list[bool] = []
    pool.subscribe(
        lambda event: (
            isinstance(event, ConnectionClosed) and closed_under_lock.append(pool._lock._is_owned())
        )
    )

    leak_in_an_ended_thread(pool)
    collect_inside_the_pool_lock(pool)
    poll(lambda: pool.stats().in_use == 0, what="the leaked checkout released")
    pool.close()
    poll(lambda: closed_under_lock, what="its close reported")
    assert not any(closed_under_lock)


def test_a_leak_collected_inside_the_pool_lock_is_released_even_if_no_thread_starts(
    make_pool, pool_cls, monkeypatch
):
    """The release is handed to a thread of its own; with none to be had (a thread limit,
    interpreter exit) it was lost, and the connection stayed in use for good."""
    pool = make_pool(SQLite(), pool_cls=pool_cls)
    start = threading.Thread.start

    def no_finalizer_thread(thread: threading.Thread) -> None:
        if thread.name.startswith("qdbpool-"):
            raise RuntimeError("can't start new thread")
        start(thread)

    leak_in_a_cycle(pool)
    monkeypatch.setattr(threading.Thread, "start", no_finalizer_thread)
    collect_inside_the_pool_lock(pool)
    monkeypatch.undo()
    assert pool.stats().in_use == 0
    with pool.connect() as conn:  # a BoundedPool waits for it otherwise
        conn.execute("select 1")


@pytest.mark.parametrize("first", [0, 1], ids=["one-order", "the-other"])
def test_a_leak_collected_with_its_ended_thread_is_never_closed_under_its_next_holder(
    make_pool, monkeypatch, first
):
    """A thread ends holding a leaked checkout in a cycle; the collector, run inside the
    pool's lock, finalizes the wrapper (a release) and the connection's record (a close),
    each deferred to a thread of its own. Run in either order, the release must not give
    the connection back for the next caller to have it closed under them."""
    pool = make_pool(SQLite(), pool_cls=BoundedPool, size=1)
    deferred: list[threading.Thread] = []
    start = threading.Thread.start

    def hold_back(thread: threading.Thread) -> None:
        if thread.name == "qdbpool-finalizer":
            deferred.append(thread)
        else:
            start(thread)

    leak_in_an_ended_thread(pool)
    monkeypatch.setattr(threading.Thread, "start", hold_back)
    collect_inside_the_pool_lock(pool)
    monkeypatch.undo()
    assert len(deferred) == 2
    start(deferred[first])
    deferred[first].join(5)
    with pool.connect() as conn:
        start(deferred[1 - first])
        deferred[1 - first].join(5)
        assert conn.execute("select 1").fetchone() == (1,)  # still open under us
        assert pool.stats().in_use == 1


# -- the counts agree with stats() -------------------------------------------------------------

ACTIONS = st.lists(
    st.sampled_from(["use", "close_it", "lose_it", "age", "dirty", "thread", "nested"]),
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(actions=ACTIONS, bounded=st.booleans())
def test_events_add_up_to_stats_whatever_happens(actions, bounded, clock):
    cls = BoundedPool if bounded else SingletonPool
    pool = cls(plain_sqlite, max_lifetime=60)
    events = subscribed(pool)

    @qdbpool.with_conn(pool=pool)
    def act(conn: sqlite3.Connection, action: str) -> None:
        if action == "close_it":
            conn.close()
        elif action == "lose_it":
            raise ConnectionResetError("lost")
        elif action == "dirty":
            conn.execute("BEGIN")
        elif action == "nested":
            act("use")

    try:
        for action in actions:
            if action == "age":
                clock.advance(61)
            elif action == "thread":
                run_in_thread(lambda: act("use"))
            else:
                with contextlib.suppress(ConnectionResetError):
                    act(action)
        gc.collect()
    finally:
        pool.close(timeout=1)
    stats = pool.stats()
    reasons = collections.Counter(events.reasons())
    assert len(events.opened()) == stats.created
    assert sum(reasons.values()) == stats.closed == stats.created
    assert sum(n for r, n in reasons.items() if r in DISCARD_REASONS) == stats.discarded
