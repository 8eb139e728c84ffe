"""Races: threads using the pool while it is replaced and closed under them.

A connection a thread was handed must never be closed under it: a checkout that races
pool.close() either gets a working connection (closed when it is released) or
PoolClosedError, and a connection being released or reset is not closed under it either.
The stress test below looks for any interleaving that breaks this; the tests after it pin
down, deterministically, interleavings that it hits only now and then.
"""

from __future__ import annotations

import dis
import gc
import linecache
import multiprocessing
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

import qdbpool
from qdbpool import BoundedPool, Pool, PoolClosedError, SingletonPool, with_conn
from qdbpool.testing._process import wait_until

JOIN = 60.0


@with_conn
def select_one(conn):
    return conn.execute("SELECT 1").fetchone()[0]


def hammer(recorder: Any, send: Any, pool_kind: str) -> None:
    """64 threads use the global pool while another replaces and closes it, for ~1.5 s.

    `pool_kind` "bounded" makes the global pool a BoundedPool instead: one with a
    connection for every thread (its fast paths, racing close), or with 8 to 16 (its
    waiting line and burst, racing close).

    Runs in a forked child: a connection closed under a thread that is using it can crash
    the interpreter (sqlite3 then frees what the other thread is reading), and a crash
    must fail this test, not end the test run.
    """
    sys.setswitchinterval(2e-4)  # switch threads far more often than every 5 ms
    workers, max_calls, max_churns, seconds = 64, 20_000, 5_000, 1.5
    pools: list[Pool] = []
    errors: list[BaseException] = []
    calls = [0] * workers
    deadline = [0.0]

    def set_deadline() -> None:  # run once, as the barrier lets everybody go
        deadline[0] = time.monotonic() + seconds

    start = threading.Barrier(workers + 2, action=set_deadline)

    def past_deadline() -> bool:
        # Not before the pool was replaced a few times: on a loaded machine the churner
        # may get its first turn only after the workers' 1.5 s (bounded: 15 s more at most).
        now = time.monotonic()
        return now > deadline[0] + 15 or (now > deadline[0] and len(pools) >= 4)

    def work(n: int) -> None:
        start.wait(JOIN)
        for i in range(max_calls):
            if past_deadline():
                return
            if i % 4 == 0:
                time.sleep(0)  # let the GIL go now and then: the churner must get turns too
            try:
                if i % 2:
                    assert select_one() == 1
                else:
                    with qdbpool.instance().connect() as conn:
                        assert conn.execute("SELECT 1").fetchone()[0] == 1
                calls[n] += 1
            except PoolClosedError:
                pass
            except BaseException as exc:
                errors.append(exc)
                return

    def reset(conn: Any) -> None:
        # A reset hook that talks to its connection, as "DISCARD ALL" would: the connection
        # must still be open while it runs (qdbpool would swallow this error: record it).
        try:
            conn.execute("SELECT 1").fetchone()
        except BaseException as exc:
            errors.append(exc)

    def new_pool(i: int) -> Pool:
        # One in four has a reset hook, and so no fast path: the pool's own checkout and
        # release. A BoundedPool has a connection for every worker, or 8 to 16.
        hooks: dict[str, Any] = {"reset": reset} if i % 4 == 0 else {}
        if pool_kind == "singleton":
            return qdbpool.initialize(recorder, **hooks)
        sizes = {"size": workers} if i % 8 < 4 else {"size": 8, "max_size": 16, "burst_idle": 1e-6}
        return qdbpool.initialize(BoundedPool(recorder, timeout=JOIN, **sizes, **hooks))

    def churn() -> None:
        start.wait(JOIN)
        for i in range(max_churns):
            if past_deadline():
                return
            try:
                if i % 3 == 2:
                    qdbpool.close()
                else:
                    pools.append(new_pool(i))
            except BaseException as exc:
                errors.append(exc)
                return
            time.sleep(0)

    pools.append(new_pool(1))
    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(workers)]
    threads.append(threading.Thread(target=churn, daemon=True))
    for t in threads:
        t.start()
    start.wait(JOIN)
    for t in threads:
        t.join(JOIN)
    stuck = sum(t.is_alive() for t in threads)
    qdbpool.close()
    send.send(
        {
            "stuck threads": stuck,
            "errors": [repr(e) for e in errors[:3]],
            "calls": sum(calls),
            "pools": len(pools),
            "pools not closed": sum(not p.closed for p in pools),
            "connections open by stats": sum(p.stats().open for p in pools),
            "connections really open": len(recorder.still_open()),
        }
    )
    send.close()


# The child is forked while the parent's threads run: the point of the test (Python 3.12+
# warns of it).
@pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
)
@pytest.mark.parametrize("pool_kind", ["singleton", "bounded"])
def test_hammering_the_global_pool_while_it_is_replaced_and_closed_leaks_nothing(
    recorder, pool_kind
):
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=hammer, args=(recorder, send, pool_kind), daemon=True)
    child.start()
    send.close()
    try:
        got = recv.recv() if recv.poll(2 * JOIN) else None
    except EOFError:
        got = None
    finally:
        child.join(JOIN)
        recv.close()

    assert child.exitcode == 0, f"the hammering process died (exit code {child.exitcode})"
    assert got is not None
    summary = {k: v for k, v in got.items() if k not in ("calls", "pools")}
    assert summary == {
        "stuck threads": 0,
        "errors": [],
        "pools not closed": 0,
        "connections open by stats": 0,
        "connections really open": 0,
    }
    assert got["calls"] > 0
    assert got["pools"] >= 3  # the global pool was replaced under the workers, more than once


# ------------------------------------------------------------------ pinned-down interleavings
#
# These pause one thread at a chosen point inside qdbpool with a trace function (the
# debugger's hook; nothing of qdbpool is replaced), let another thread run, then resume.


class PauseAt:
    """A trace function for one thread: pauses it at a named function's call or return."""

    def __init__(self, function: str, event: str) -> None:
        self.function, self.event = function, event
        self.paused, self.resume = threading.Event(), threading.Event()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event != "call" or frame.f_code.co_name != self.function or self.paused.is_set():
            return None
        if self.event == "call":
            self._pause()
            return None
        return self._local

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "return" and not self.paused.is_set():
            self._pause()
        return self._local

    def _pause(self) -> None:
        self.paused.set()
        self.resume.wait(JOIN)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        sys.settrace(self)
        try:
            return fn(*args)
        finally:
            sys.settrace(None)

    def wait_paused(self) -> None:
        if not self.paused.wait(10):
            pytest.fail(f"never paused at {self.function}: qdbpool changed, update this test")


def outcome_of(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:
        return exc


def test_a_decorated_call_racing_close_never_gets_a_connection_closed_under_it(recorder):
    """close() has seen this thread's connection idle and is about to close it, when the
    thread starts a decorated call: it must get PoolClosedError, not the doomed connection."""
    pool = qdbpool.initialize(recorder)
    pause = PauseAt("_retire", "call")
    owns_idle, go, reached, proceed = (threading.Event() for _ in range(4))
    result: list[Any] = []

    @with_conn
    def use(conn):
        reached.set()
        proceed.wait(JOIN)
        return conn.execute("SELECT 1").fetchone()

    def user() -> None:
        select_one()  # this thread now owns an idle connection
        owns_idle.set()
        go.wait(JOIN)
        result.append(outcome_of(use))
        reached.set()

    user_thread = threading.Thread(target=user, daemon=True)
    user_thread.start()
    assert owns_idle.wait(JOIN)
    closer = threading.Thread(target=pause.run, args=(pool.close,), daemon=True)
    closer.start()
    pause.wait_paused()  # close() found the connection idle and is about to close it

    go.set()
    assert reached.wait(JOIN)  # the call is under way (or already refused)
    pause.resume.set()
    closer.join(JOIN)
    proceed.set()
    user_thread.join(JOIN)

    [outcome] = result
    assert isinstance(outcome, PoolClosedError) or outcome == (1,), repr(outcome)
    assert recorder.still_open() == []


def test_a_connect_racing_close_never_gets_a_connection_closed_under_it(recorder, make_pool):
    """close() runs while a new connection is being handed out (opened and registered,
    not yet marked in use): the caller must get PoolClosedError, or a connection that works."""
    pool = make_pool(recorder)
    pause = PauseAt("_open", "return")
    result: list[Any] = []

    def user() -> None:
        def connect_and_use() -> Any:
            with pool.connect() as conn:
                return conn.execute("SELECT 1").fetchone()

        result.append(outcome_of(lambda: pause.run(connect_and_use)))

    user_thread = threading.Thread(target=user, daemon=True)
    user_thread.start()
    pause.wait_paused()  # opened and registered by the pool, not yet handed out

    closing = PauseAt("wait_for", "call")  # close() has dealt with idle connections
    closer = threading.Thread(target=closing.run, args=(pool.close,), daemon=True)
    closer.start()
    closing.wait_paused()
    pause.resume.set()
    closing.resume.set()  # (it holds the pool's lock while paused: let it go on)
    user_thread.join(JOIN)
    closer.join(JOIN)

    [outcome] = result
    assert isinstance(outcome, PoolClosedError) or outcome == (1,), repr(outcome)
    assert recorder.still_open() == []


def test_a_release_racing_close_is_not_closed_under_the_reset_hook(
    recorder, make_pool, closed_check
):
    """close() runs while a released connection is still being reset: the reset must finish
    on an open connection (close() closes it afterwards), never on one closed under it."""
    in_reset, go = threading.Event(), threading.Event()
    closed_under_reset: list[bool] = []

    def reset(conn) -> None:
        if threading.current_thread() is user_thread:
            in_reset.set()
            go.wait(JOIN)
            closed_under_reset.append(closed_check(conn))

    pool = make_pool(recorder, reset=reset)

    def user() -> None:
        with pool.connect() as conn:
            conn.execute("SELECT 1")

    user_thread = threading.Thread(target=user, daemon=True)
    user_thread.start()
    assert in_reset.wait(JOIN)

    closing = PauseAt("wait_for", "call")  # close() has dealt with idle connections
    closer = threading.Thread(target=closing.run, args=(pool.close, 30.0), daemon=True)
    closer.start()
    closing.wait_paused()
    go.set()
    closing.resume.set()
    user_thread.join(JOIN)
    closer.join(JOIN)

    assert closed_under_reset == [False]
    assert recorder.still_open() == []
    assert pool.stats().open == 0


class PauseAtInstruction(PauseAt):
    """Pauses a thread before the bytecode instruction at `offset` of `function` runs: for
    interleavings inside one line (between reading an attribute and storing it back)."""

    def __init__(self, function: Callable[..., Any], offset: int) -> None:
        super().__init__(function.__name__, "opcode")
        self.code, self.offset = function.__code__, offset

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code is self.code and not self.paused.is_set():
            frame.f_trace_opcodes = True
            frame.f_trace = self._opcode  # from 3.13 on, opcode events need it set here
            return self._opcode
        return None

    def _opcode(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode" and frame.f_lasti == self.offset and not self.paused.is_set():
            self._pause()
        return self._opcode


def waiting_for_lock_or_ended(thread: threading.Thread) -> bool:
    """Whether `thread` ended, or stands at a `with self._lock:` (waiting for the lock)."""
    frame = sys._current_frames().get(thread.ident or 0)
    if frame is None:
        return not thread.is_alive()
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    return line.strip() == "with self._lock:"


def started(fn: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def while_paused(
    pause: PauseAtInstruction,
    reached: Callable[[], bool],
    other: Callable[[], threading.Thread],
    other_stopped: Callable[[threading.Thread], bool],
) -> threading.Thread:
    """Once `reached()` (the paused thread stands at its instruction, or went past it
    without stopping there), start the other thread's part (`other()`); once that one
    `other_stopped` (ended, or waits: for the paused one perhaps), let the first go on.
    Returns the other thread."""
    wait_until(reached, timeout=JOIN, interval=0.001, what="the first thread to pause")
    thread = other()
    wait_until(lambda: other_stopped(thread), timeout=JOIN, interval=0.001,
               what="the other thread to end or wait")  # fmt: skip
    pause.resume.set()
    return thread


@pytest.fixture
def no_collector_in_this_thread() -> Any:
    """The cycle collector off while a test pauses threads inside the pool: in the test's
    own thread it could run a finalizer that takes the lock a paused thread holds, and
    wait for it forever (the paused thread waits for this one)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def every_instruction(
    *names: str, pool_classes: tuple[type[Pool], ...] = (SingletonPool, BoundedPool)
) -> list[Any]:
    """(pool class, function, offset) for every bytecode instruction of the functions named,
    in each pool class: where one thread may stand when another runs."""
    return [
        pytest.param(
            pool_cls,
            getattr(pool_cls, name),
            instruction.offset,
            id=f"{pool_cls.__name__}.{name}@{instruction.offset}",
        )
        for pool_cls in pool_classes
        for name in names
        for instruction in dis.get_instructions(getattr(pool_cls, name))
    ]


# The collecting thread's part, and the owner's: nesting on the dropped checkout, ending it.
DROP_RACE = every_instruction(
    "_release_dropped", "_checkout", "_checkout_checked", "_checkin", "_checkin_checked"
)


@pytest.mark.usefixtures("no_collector_in_this_thread")
@pytest.mark.parametrize(("pool_cls", "paused_in", "offset"), DROP_RACE)
def test_a_checkout_dropped_in_another_thread_races_its_owner_safely(
    recorder, make_pool, pool_cls, paused_in, offset
):
    """A thread leaks a connect() wrapper, then nests a checkout on it; the wrapper is
    collected in another thread meanwhile. Whatever instruction either thread stands at
    when the other runs, the owner's connection is never closed under it, nor handed to
    another thread, and once both are done nothing is counted in use."""
    sizes = {"size": 2} if pool_cls is BoundedPool else {}  # the owner's and one more
    pool = make_pool(recorder, pool_cls=pool_cls, **sizes)
    pause = PauseAtInstruction(paused_in, offset)
    owner_paused = paused_in.__name__ != "_release_dropped"
    releasing = paused_in.__name__.startswith("_checkin")  # else it pauses while nesting
    leaked: list[Any] = []
    ready, nest, inside, leave = (threading.Event() for _ in range(4))
    errors: list[BaseException] = []
    mine: list[Any] = []

    def use_again() -> None:
        with pool.connect() as conn:  # nests on the leaked checkout
            conn.execute("SELECT 1")
            mine.append(conn.__wrapped__)
            inside.set()
            assert leave.wait(JOIN)
            conn.execute("SELECT 1")  # after the collector ran: still ours, still open
        with pool.connect() as conn:
            conn.execute("SELECT 1")

    def owner() -> None:
        try:
            leaked.append(pool.connect())  # never released by this thread
            ready.set()
            assert nest.wait(JOIN)
            if owner_paused:
                pause.run(use_again)
            else:
                use_again()
        except BaseException as exc:
            errors.append(exc)
            inside.set()

    owner_thread = started(owner)
    assert ready.wait(JOIN)

    def nest_now() -> threading.Thread:
        nest.set()
        return owner_thread

    if owner_paused:
        nest.set()
        if releasing:
            leave.set()
        collector = while_paused(
            pause,
            lambda: pause.paused.is_set() or inside.is_set() or not owner_thread.is_alive(),
            lambda: started(leaked.clear),
            waiting_for_lock_or_ended,
        )
    else:
        collector = started(lambda: pause.run(leaked.clear))
        while_paused(
            pause,
            lambda: pause.paused.is_set() or not collector.is_alive(),
            nest_now,
            lambda owner: inside.is_set() or waiting_for_lock_or_ended(owner),
        )
    collector.join(JOIN)
    if not releasing:  # the owner is inside its nested checkout, which is nobody else's
        assert inside.wait(JOIN)
        with pool.connect() as other:
            assert mine == [] or other.__wrapped__ is not mine[0]
    leave.set()
    owner_thread.join(JOIN)

    assert not owner_thread.is_alive() and not collector.is_alive()
    assert errors == []
    assert pool.stats().in_use == 0
    pool.close()
    assert recorder.still_open() == []


def blocked_or_ended(thread: threading.Thread) -> bool:
    """Whether `thread` ended, or waits: for a lock at `with self._lock:`, or in threading
    (a Condition, an Event)."""
    frame = sys._current_frames().get(thread.ident or 0)
    if frame is None:
        return not thread.is_alive()
    return frame.f_code.co_filename == threading.__file__ or waiting_for_lock_or_ended(thread)


# close()'s part, and the user's: checking out its idle connection, releasing it.
CLOSE_RACE = every_instruction(
    "close", "_claim_idle", "_checkout", "_checkout_checked", "_checkin", "_checkin_checked"
)


@pytest.mark.usefixtures("no_collector_in_this_thread")
@pytest.mark.parametrize(("pool_cls", "paused_in", "offset"), CLOSE_RACE)
def test_close_racing_a_checkout_never_closes_a_connection_under_its_user(
    recorder, make_pool, pool_cls, paused_in, offset
):
    """A thread checks out its idle connection, uses it and releases it while another
    thread closes the pool; either one stands at any instruction of its path when the
    other runs. The user gets PoolClosedError or a connection that stays open while it
    uses it; afterwards every connection is closed and none is counted open."""
    pool = make_pool(recorder, pool_cls=pool_cls)
    pause = PauseAtInstruction(paused_in, offset)
    user_paused = paused_in.__name__ not in ("close", "_claim_idle")
    outcome: list[object] = []
    warmed, go = threading.Event(), threading.Event()

    def use() -> None:
        try:
            with pool.connect() as conn:
                conn.execute("SELECT 1")
                conn.execute("SELECT 2")
            outcome.append("used")
        except BaseException as exc:
            outcome.append(exc)

    def user() -> None:
        use()  # the thread's connection exists, idle: the race is with its usual checkout
        warmed.set()
        assert go.wait(JOIN)
        if user_paused:
            pause.run(use)
        else:
            use()

    def closing() -> None:
        pool.close(JOIN)

    user_thread = started(user)
    assert warmed.wait(JOIN)

    def go_now() -> threading.Thread:
        go.set()
        return user_thread

    if user_paused:
        go.set()
        closer = while_paused(
            pause,
            lambda: pause.paused.is_set() or not user_thread.is_alive(),
            lambda: started(closing),
            blocked_or_ended,
        )
    else:
        closer = started(lambda: pause.run(closing))
        while_paused(
            pause,
            lambda: pause.paused.is_set() or not closer.is_alive(),
            go_now,
            lambda user: len(outcome) == 2 or waiting_for_lock_or_ended(user),
        )
    user_thread.join(JOIN)
    closer.join(JOIN)

    assert not user_thread.is_alive() and not closer.is_alive()
    assert outcome[0] == "used"
    assert outcome[1] == "used" or isinstance(outcome[1], PoolClosedError), outcome
    assert recorder.still_open() == []
    assert pool.stats().open == 0


# A release's part, and the part of a checkout that arrives meanwhile and has to wait.
HANDOFF_RACE = every_instruction(
    *("_checkin", "_checkin_checked", "_give_back"),
    *("_checkout", "_checkout_checked", "_acquire", "_wait", "_wait_in_line"),
    pool_classes=(BoundedPool,),
)


@pytest.mark.usefixtures("no_collector_in_this_thread")
@pytest.mark.parametrize(("pool_cls", "paused_in", "offset"), HANDOFF_RACE)
def test_a_connection_released_while_another_thread_arrives_for_it_is_handed_over(
    recorder, make_pool, pool_cls, paused_in, offset
):
    """A BoundedPool of one: a thread releases the connection just as another one asks for
    it, and either stands at any instruction of its path when the other runs. The second
    gets the connection (no lost wakeup: it would wait out the timeout), once."""
    pool = make_pool(recorder, pool_cls=BoundedPool, size=1, timeout=JOIN)
    pause = PauseAtInstruction(paused_in, offset)
    releasing = paused_in.__name__ in ("_checkin", "_checkin_checked", "_give_back")
    held = pool.connect()  # the holder's: this thread's
    outcome: list[object] = []

    def release() -> None:
        held.close()

    def arrive() -> None:
        try:
            with pool.connect() as conn:
                conn.execute("SELECT 1")
            outcome.append("used")
        except BaseException as exc:
            outcome.append(exc)

    if releasing:
        releaser = started(lambda: pause.run(release))
        arriver = while_paused(
            pause,
            lambda: pause.paused.is_set() or not releaser.is_alive(),
            lambda: started(arrive),
            blocked_or_ended,
        )
    else:
        arriver = started(lambda: pause.run(arrive))
        releaser = while_paused(
            pause,
            lambda: pause.paused.is_set() or blocked_or_ended(arriver),
            lambda: started(release),
            blocked_or_ended,
        )
    releaser.join(JOIN)
    arriver.join(JOIN)

    assert not releaser.is_alive() and not arriver.is_alive()
    assert outcome == ["used"]
    stats = pool.stats()
    assert (stats.open, stats.in_use, stats.idle, stats.waiting) == (1, 0, 1, 0)


class RunAtInstruction:
    """A trace function for one thread: calls `action()` once, before the bytecode
    instruction at `offset` of `function` runs, in that thread: what the cycle collector
    does when an allocation there triggers it and it runs a finalizer."""

    def __init__(self, function: Callable[..., Any], offset: int, action: Callable[[], Any]):
        self.code, self.offset, self.action = function.__code__, offset, action
        self.ran = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code is self.code and not self.ran:
            frame.f_trace_opcodes = True
            frame.f_trace = self._opcode  # from 3.13 on, opcode events need it set here
            return self._opcode
        return None

    def _opcode(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode" and frame.f_lasti == self.offset and not self.ran:
            self.ran = True
            self.action()
        return self._opcode


class RecordInstructions:
    """A trace function for one thread: records the offsets of `functions`' instructions
    that run, by function."""

    def __init__(self, *functions: Callable[..., Any]) -> None:
        self.ran: dict[Any, list[int]] = {f.__code__: [] for f in functions}

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code in self.ran:
            frame.f_trace_opcodes = True
            frame.f_trace = self._opcode  # from 3.13 on, opcode events need it set here
            return self._opcode
        return None

    def _opcode(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            self.ran[frame.f_code].append(frame.f_lasti)
        return self._opcode


def leaked_connection(make_pool: Any, recorder: Any) -> tuple[BoundedPool, list[Any]]:
    """A BoundedPool of one whose connection another thread took with connect() and
    dropped: the wrapper's last reference is in the list returned."""
    pool = make_pool(recorder, pool_cls=BoundedPool, size=1, timeout=0.2)
    leaked: list[Any] = []
    leaker = started(lambda: leaked.append(pool.connect()))
    leaker.join(JOIN)
    assert pool.stats().in_use == 1
    return pool, leaked


@pytest.mark.usefixtures("no_collector_in_this_thread")
def test_a_leaked_connection_finalized_inside_a_checkout_is_not_missed_by_it(recorder, make_pool):
    """Another thread leaked the one connection of a BoundedPool (a connect() wrapper it
    dropped unreleased). The collector finalizes that wrapper in the thread that asks for
    a connection, at any instruction of its way into the line: the pool's lock is
    re-entrant, so the release may land after the checkout found nothing free and before
    its waiter was in line to be handed it. The checkout gets the connection; it waited
    out its whole timeout with it idle (at 24 of the instructions walked, on Python 3.11)."""
    functions = (BoundedPool._acquire, BoundedPool._enqueue_locked)
    pool, leaked = leaked_connection(make_pool, recorder)
    record = RecordInstructions(*functions)
    sys.settrace(record)
    try:
        with pytest.raises(qdbpool.PoolTimeoutError):  # the way into the line, walked
            pool.connect()
    finally:
        sys.settrace(None)
    walked = [(f, offset) for f in functions for offset in record.ran[f.__code__]]
    assert len(walked) > 20, "qdbpool changed: update this test"

    missed = []
    for function, offset in walked:
        pool, leaked = leaked_connection(make_pool, recorder)
        trace = RunAtInstruction(function, offset, leaked.clear)  # its __del__ releases it
        sys.settrace(trace)
        try:
            with pool.connect() as conn:
                conn.execute("SELECT 1")
        except qdbpool.PoolTimeoutError:
            missed.append(f"{function.__name__}@{offset}")
        finally:
            sys.settrace(None)
        assert trace.ran
        pool.close(timeout=0)
    assert missed == []
