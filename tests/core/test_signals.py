"""An exception that a signal handler raises (KeyboardInterrupt on Ctrl-C, a SIGALRM
timeout) in the middle of a checkout or a release: whatever it leaves behind for that
thread, the pool must stay usable by every other thread. A lock left held would block
them all for good.

The handler raises only while the interrupted frame is qdbpool's (elsewhere it re-arms its
timer): Python's own threading module makes no such promise, so frames of it are not
what this test is about.
"""

from __future__ import annotations

import contextlib
import dis
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import qdbpool
import qdbpool.factories

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "setitimer"), reason="needs signal.setitimer (POSIX)"
)

QDBPOOL_DIR = str(Path(qdbpool.__file__).parent)
MAX_INTERRUPTIONS, SECONDS = 2_000, 3.0
JOIN = 10.0


class Interrupted(Exception):
    pass


def another_thread_can_check_out(pool: qdbpool.Pool) -> bool:
    done = threading.Event()

    def use() -> None:
        with pool.connect() as conn:
            conn.execute("SELECT 1").fetchone()
        done.set()

    thread = threading.Thread(target=use, daemon=True)
    thread.start()
    return done.wait(JOIN)


# Raised in a __del__, the interruption is printed and dropped by Python itself.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_exception_from_a_signal_handler_mid_checkout_never_blocks_other_threads(
    recorder, pool_cls
):
    armed = False
    where: list[tuple[str, int]] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal armed
        if not armed:
            return
        if frame is not None and frame.f_code.co_filename.startswith(QDBPOOL_DIR):
            armed = False
            where.append((Path(frame.f_code.co_filename).name, frame.f_lineno))
            raise Interrupted
        signal.setitimer(signal.ITIMER_REAL, random.uniform(1e-6, 3e-5))

    previous = signal.signal(signal.SIGALRM, handler)
    pools: list[qdbpool.Pool] = []
    blocked: list[tuple[str, int]] = []
    deadline = time.monotonic() + SECONDS
    try:
        while len(where) < MAX_INTERRUPTIONS and time.monotonic() < deadline:
            # A new pool each time: the interrupted checkout may stay out for good.
            pool = pool_cls(recorder)
            pools.append(pool)
            try:
                armed = True
                signal.setitimer(signal.ITIMER_REAL, random.uniform(1e-6, 3e-5))
                for _ in range(200):
                    with pool.connect() as conn:
                        conn.execute("SELECT 1")
            except Interrupted:
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                armed = False
            if not another_thread_can_check_out(pool):
                blocked.append(where[-1])
                break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        for pool in pools:
            pool.close(timeout=0)
    assert len(where) > 100, "too few interruptions landed in qdbpool's code to judge"
    assert blocked == [], f"another thread blocked after an interruption at {blocked}"


def interrupt_once_waiting(pool: qdbpool.BoundedPool) -> threading.Thread:
    """A thread that sends this one SIGALRM once a caller waits in `pool`'s line."""
    target = threading.get_ident()

    def interrupt() -> None:
        deadline = time.monotonic() + JOIN
        while pool.stats().waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        signal.pthread_kill(target, signal.SIGALRM)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    return thread


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


@pytest.mark.parametrize("holder_ends", ["released", "discarded"])
def test_a_checkout_interrupted_while_it_waits_in_line_leaves_nothing_behind(
    recorder, make_pool, holder_ends
):
    # Interrupted in line (Ctrl-C), the caller stayed in it: the next connection released
    # was handed to it and never came back, or the capacity of a discarded one was granted
    # to it for good. Every later checkout then timed out, nobody holding anything.
    pool = make_pool(recorder, pool_cls=qdbpool.BoundedPool, size=1, timeout=JOIN)
    got, let_go = threading.Event(), threading.Event()

    def hold() -> None:
        with contextlib.suppress(ConnectionError), pool.connect():
            got.set()
            let_go.wait(JOIN)
            if holder_ends == "discarded":
                raise ConnectionError("lost")  # the connection is discarded at release

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert got.wait(JOIN)
    previous = signal.signal(signal.SIGALRM, raise_interrupted)
    try:
        interrupter = interrupt_once_waiting(pool)
        with pytest.raises(Interrupted):
            pool.connect()  # waits in line for the held connection
        interrupter.join(JOIN)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert pool.stats().waiting == 0
    let_go.set()
    holder.join(JOIN)
    assert another_thread_can_check_out(pool)
    stats = pool.stats()
    assert (stats.in_use, stats.waiting) == (0, 0)


def test_an_interruption_in_the_release_reset_discards_the_connection(
    recorder, make_pool, pool_cls
):
    # Ctrl-C in the reset hook (or the factory's rollback) left the connection marked in use
    # for good: another thread of a BoundedPool of one timed out; a SingletonPool's thread
    # nested on the stuck checkout, whose transactions were never rolled back again.
    interrupt = [True]

    def reset(conn: Any) -> None:
        if interrupt[0]:
            interrupt[0] = False
            raise KeyboardInterrupt

    kwargs = {"size": 1, "timeout": 5.0} if pool_cls is qdbpool.BoundedPool else {}
    pool = make_pool(recorder, pool_cls=pool_cls, reset=reset, **kwargs)
    with pytest.raises(KeyboardInterrupt), pool.connect() as conn:
        first = conn.__wrapped__
    stats = pool.stats()
    assert (stats.in_use, stats.open, stats.discarded) == (0, 0, 1)
    assert recorder.still_open() == []
    assert another_thread_can_check_out(pool)
    with pool.connect() as conn:
        assert conn.__wrapped__ is not first


def replica_idle_and_a_writer_holding(
    pool: qdbpool.BoundedPool,
) -> tuple[threading.Thread, threading.Event]:
    """In a BoundedPool of two over a factory that routes reads: a replica connection
    idle (the one a waiting writer trades in) and a thread holding a primary one until
    the event returned is set."""
    with pool.connect(read_only=True):
        pass
    got, let_go = threading.Event(), threading.Event()

    def hold() -> None:
        with pool.connect():
            got.set()
            let_go.wait(JOIN)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert got.wait(JOIN)
    return holder, let_go


class Stopped(BaseException):
    """What Ctrl-C raises, for this test alone (not an Exception: nothing swallows it)."""


def test_a_waiter_interrupted_while_it_closes_the_connection_it_traded_for_leaks_nothing(
    make_pool,
):
    # A BoundedPool of two over a factory that routes reads: a replica connection idles, a
    # writer holds the other; a second writer waits, trades the idle replica connection
    # in after 50 ms, and is interrupted while that one closes (a slow server). Both the
    # capacity the trade reserved for it and the traded connection's were lost for good.
    closing, finish_close = threading.Event(), threading.Event()

    class SlowClose(qdbpool.factories.SQLite):
        routes_reads = True

        def close_connection(self, conn: Any) -> None:
            if not finish_close.is_set():
                closing.set()
                finish_close.wait(JOIN)  # the interruption lands here
            super().close_connection(conn)

    pool = make_pool(SlowClose(":memory:"), pool_cls=qdbpool.BoundedPool, size=2, timeout=JOIN)
    holder, let_go = replica_idle_and_a_writer_holding(pool)
    target = threading.get_ident()

    def interrupt_the_close() -> None:
        if closing.wait(JOIN):
            signal.pthread_kill(target, signal.SIGALRM)

    def raise_stopped(signum: int, frame: FrameType | None) -> None:
        finish_close.set()  # later closes go through
        raise Stopped

    previous = signal.signal(signal.SIGALRM, raise_stopped)
    try:
        interrupter = threading.Thread(target=interrupt_the_close, daemon=True)
        interrupter.start()
        with pytest.raises(Stopped), pool.connect():
            pass
        interrupter.join(JOIN)
    finally:
        signal.signal(signal.SIGALRM, previous)
    let_go.set()
    holder.join(JOIN)
    both = threading.Barrier(3, timeout=JOIN)

    def use(read_only: bool) -> None:
        with pool.connect(read_only=read_only):
            both.wait()  # two connections at once: the pool's whole capacity

    users = [threading.Thread(target=use, args=(ro,), daemon=True) for ro in (False, True)]
    for user in users:
        user.start()
    both.wait()
    for user in users:
        user.join(JOIN)
    stats = pool.stats()
    assert (stats.in_use, stats.timeouts) == (0, 0)


def _raise_at_line(code: Any, line: int) -> Callable[..., Any]:
    """A trace function raising Stopped once `code` reaches `line`: an exception from a
    signal handler, landing there."""

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "line" and frame.f_lineno == line:
                sys.settrace(None)
                frame.f_trace = None
                raise Stopped
            return local

        return local

    return tracer


class _Routing(qdbpool.factories.SQLite):
    routes_reads = True


def _interrupted_at(make_pool: Any, line: int) -> bool:
    """A BoundedPool of two, a replica connection idle and a writer holding the other: a
    second writer, waiting (and trading the replica one in after 50 ms), is interrupted at
    `line` of `_wait_in_line`. Whether the pool can still serve two at once after."""
    code = qdbpool.BoundedPool._wait_in_line.__code__
    pool = make_pool(_Routing(":memory:"), pool_cls=qdbpool.BoundedPool, size=2, timeout=JOIN)
    holder, let_go = replica_idle_and_a_writer_holding(pool)
    sys.settrace(_raise_at_line(code, line))
    try:
        with contextlib.suppress(Stopped), pool.connect():
            pass
    finally:
        sys.settrace(None)
    let_go.set()
    holder.join(JOIN)
    both = threading.Barrier(3, timeout=JOIN)

    def use(read_only: bool) -> None:
        with pool.connect(read_only=read_only):
            both.wait()

    users = [threading.Thread(target=use, args=(ro,), daemon=True) for ro in (False, True)]
    for user in users:
        user.start()
    try:
        both.wait(timeout=5)
        served = True
    except threading.BrokenBarrierError:
        served = False
    for user in users:
        user.join(JOIN)
    pool.close(timeout=0)
    return served


def test_a_waiter_interrupted_at_any_line_of_its_wait_and_trade_leaks_nothing(make_pool):
    # As above, with the interruption at each line of the wait instead: between the trade
    # and the retirement of the traded connection it leaked the reservation, the traded
    # connection, or both (found by a review of the fix above).
    code = qdbpool.BoundedPool._wait_in_line.__code__
    lines = sorted({line for _, line in dis.findlinestarts(code) if line is not None})
    assert len(lines) > 10
    assert [line for line in lines if not _interrupted_at(make_pool, line)] == []
