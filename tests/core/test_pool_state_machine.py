"""A stateful property test of SingletonPool and BoundedPool (issue 11 §7, first bullet).

Hypothesis drives random interleavings of what user code does with a pool: checkouts held
across steps, released by `with`, `.close()` or `pool.release()`; nested `@with_conn` calls
with a `with pool.connect()` inside; errors raised in the body (a user error, a failed
query, a lost connection); threads that end with checkouts still out; garbage collection;
`close()` and a re-`initialize()` of the global pool; and, for BoundedPool, a checkout that
finds every connection taken and waits out its short timeout.

Each worker thread runs one command at a time, sent by the state machine, which waits for
the answer: the interleaving is the machine's, so every run replays and shrinks exactly.
The connections come from a fake DB-API driver (below) that records every connection
opened and closed, every use and the thread that made it. After every step the machine
checks that:
- no connection is in two threads' hands at once, and nobody but its holder uses it;
- a connection is never closed under a holder (unless its server went away);
- BoundedPool never has more than `max_size` connections open; SingletonPool never more
  than one per thread and route;
- a closed pool has closed every connection nobody holds;
- `stats()` agrees with the driver: open == opened - closed, created == opened,
  closed, connect errors, and checkouts counted by the machine.

The misuse rules of issue 11 §3 each get one rule more, in a machine of their own
(`TestIssue11Section3`); each of them found its bug in the code before the fix.

Runs: 9-20 s for the whole file on a 2-core machine, depending on its load.
`QDBPOOL_HYPOTHESIS_PROFILE=soak` runs 5x the examples, each twice as long (for
`make soak`); `quick`, a few (for `make test-lowest`, which proves the dependency floors).
"""

from __future__ import annotations

import functools
import gc
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import qdbpool
from qdbpool import BoundedPool, SingletonPool
from qdbpool.protocol import ConnectionFactory

JOIN = 10.0  # seconds: a bound on every wait for a worker, never reached when things work
WORKERS = 3
POOL_TIMEOUT = 0.02  # BoundedPool's wait for a connection: only ever waited out in full
CLOSE_TIMEOUT = 0.02  # close()'s wait for holders that this sequential test never releases
# A thread's connections close as CPython clears the thread's state, before join() returns;
# the test still polls a little (a bound, never reached when things work).
THREAD_END_GRACE = 1.0

# -- the fake driver ----------------------------------------------------------------------


class FakeConnectError(Exception):
    """The driver could not open a connection."""


class FakeDriverError(Exception):
    """A statement failed; the connection itself is fine."""


class FakeDisconnect(ConnectionError):
    """The server went away in the middle of a statement: the connection is broken."""


class FakeInterfaceError(Exception):
    """A closed or broken connection was used."""


class FakeConnection:
    """A DB-API-ish connection: cursor/execute/commit/rollback/close, `in_transaction`
    (as sqlite3's) and `closed` (as psycopg's: true once closed or broken)."""

    def __init__(self, registry: FakeRegistry, number: int, route: str, epoch: int) -> None:
        self.registry = registry
        self.number = number
        self.route = route
        self.epoch = epoch  # which pool of the test opened it (see FakeRegistry.epoch)
        self.opened_by = threading.current_thread().name
        self.in_transaction = False
        self.broken = False
        self.close_calls = 0

    @property
    def closed(self) -> bool:
        return self.close_calls > 0 or self.broken

    def _use(self, what: str) -> None:
        self.registry.record_use(self, what)
        if self.closed:
            raise FakeInterfaceError(f"connection {self.number} is closed")

    def execute(self, sql: str) -> None:
        self._use(sql)
        if sql == "FAIL":
            raise FakeDriverError("syntax error")
        if sql == "DISCONNECT":
            self.broken = True
            raise FakeDisconnect("server closed the connection unexpectedly")
        if sql.startswith(("BEGIN", "INSERT")):
            self.in_transaction = True

    def cursor(self) -> FakeCursor:
        self._use("cursor")
        return FakeCursor(self)

    def commit(self) -> None:
        self._use("commit")
        self.in_transaction = False

    def rollback(self) -> None:
        self._use("rollback")
        self.in_transaction = False

    def close(self) -> None:
        self.registry.record_close(self)

    def __repr__(self) -> str:
        return f"<FakeConnection {self.number} {self.route} epoch={self.epoch}>"


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def fetchall(self) -> list[tuple[int]]:
        return [(1,)]

    def close(self) -> None:
        pass


@dataclass
class Use:
    conn: FakeConnection
    thread: str
    what: str


class FakeRegistry:
    """Every connection the driver opened, every use and close, and which thread made it.

    `epoch` tags new connections with the pool the test is on (only the current global
    pool opens connections: a closed pool must not), so each pool's figures can be told
    apart. `fail_connects` makes that many next opens raise FakeConnectError."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connections: list[FakeConnection] = []
        self.uses: list[Use] = []
        self.failed: dict[int, int] = {}
        self.epoch = 0
        self.fail_connects = 0
        self.double_closes: list[FakeConnection] = []

    def connect(self, route: str = "rw") -> FakeConnection:
        with self._lock:
            if self.fail_connects:
                self.fail_connects -= 1
                self.failed[self.epoch] = self.failed.get(self.epoch, 0) + 1
                raise FakeConnectError("connection refused")
            conn = FakeConnection(self, len(self.connections), route, self.epoch)
            self.connections.append(conn)
            return conn

    def stray(self) -> FakeConnection:
        """A connection of this driver that no pool ever saw."""
        return FakeConnection(self, -1, "rw", -1)

    def record_use(self, conn: FakeConnection, what: str) -> None:
        with self._lock:
            self.uses.append(Use(conn, threading.current_thread().name, what))

    def record_close(self, conn: FakeConnection) -> None:
        with self._lock:
            if conn.close_calls:
                self.double_closes.append(conn)
            conn.close_calls += 1

    def of_epoch(self, epoch: int) -> list[FakeConnection]:
        with self._lock:
            return [c for c in self.connections if c.epoch == epoch]


class RoutingFactory(ConnectionFactory):
    """A factory that routes reads: `read_only` checkouts get connections of their own."""

    routes_reads = True

    def __init__(self, registry: FakeRegistry) -> None:
        self.registry = registry
        self.close_calls = 0

    def connect(self, *, read_only: bool = False) -> FakeConnection:
        return self.registry.connect("ro" if read_only else "rw")

    def is_usable(self, conn: FakeConnection) -> bool:
        return not conn.closed

    def needs_reset(self, conn: FakeConnection) -> bool:
        return conn.in_transaction

    def reset(self, conn: FakeConnection) -> None:
        conn.rollback()

    def close(self) -> None:
        self.close_calls += 1


# -- worker threads ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What a command did in its worker: its value, or the name of what it raised.

    The exception itself is not kept: its traceback would keep the command's frames, and
    with them the connections and wrappers the test wants garbage collected."""

    value: Any = None
    raised: str | None = None
    message: str = ""


Command = Callable[[dict[int, Any]], Any]
_STOP = object()


class Worker:
    """A thread that runs the machine's commands one at a time. Its wrappers live in the
    thread's own dict (`held`, handed to each command), so they go when the thread ends."""

    _names = itertools.count()

    def __init__(self, slot: int) -> None:
        self.name = f"sm-worker-{slot}-{next(self._names)}"
        self._commands: queue.Queue[Any] = queue.Queue()
        self._answers: queue.Queue[Outcome] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        held: dict[int, Any] = {}
        while True:
            command = self._commands.get()
            if command is _STOP:
                return
            try:
                outcome = Outcome(value=command(held))
            except BaseException as exc:
                outcome = Outcome(raised=type(exc).__name__, message=str(exc))
                del exc
            command = None
            self._answers.put(outcome)
            outcome = None  # type: ignore[assignment]

    def run(self, command: Command) -> Outcome:
        self._commands.put(command)
        try:
            return self._answers.get(timeout=JOIN)
        except queue.Empty:
            raise AssertionError(f"{self.name} did not answer within {JOIN}s") from None

    def stop(self) -> None:
        self._commands.put(_STOP)
        self.thread.join(JOIN)
        assert not self.thread.is_alive(), f"{self.name} did not end within {JOIN}s"


# -- decorated functions calling each other -----------------------------------------------


@dataclass(frozen=True)
class CallPlan:
    depth: int  # decorated calls nested in each other
    error_at: int | None  # the level that raises, if any
    error: str  # what it raises: "user", "query" or "disconnect"
    write_at: int | None  # the level that starts a transaction and leaves it open
    inner_connect: bool  # the innermost level also does `with pool.connect() as c:`
    read_only: bool
    # The level that hands its injected connection to pool.release(), which leaves it to
    # the call (it must stay this call's, and be given back once, when the call returns).
    release_at: int | None = None


@dataclass(frozen=True)
class Handout:
    """A connection as a checkout handed it over."""

    conn: FakeConnection
    in_transaction: bool
    closed: bool  # close() had been called on it


def handed(conn: FakeConnection) -> Handout:
    return Handout(conn, conn.in_transaction, conn.close_calls > 0)


def _body(conn: FakeConnection, plan: CallPlan, level: int, seen: list[Handout]) -> None:
    seen.append(handed(conn))
    conn.execute("SELECT 1")
    if plan.release_at == level:
        qdbpool.instance().release(conn)
        conn.execute("SELECT 1")  # still this call's
    if plan.write_at == level:
        conn.execute("INSERT INTO t VALUES (1)")
    if plan.error_at == level:
        raise_error(conn, plan.error)
    if level + 1 < plan.depth:
        (read_level if plan.read_only else write_level)(plan, level + 1, seen)
    elif plan.inner_connect:
        with qdbpool.instance().connect(read_only=plan.read_only) as inner:
            seen.append(handed(inner.__wrapped__))
            inner.execute("SELECT 2")


@qdbpool.with_conn
def write_level(conn, plan, level, seen):
    _body(conn, plan, level, seen)


@qdbpool.with_conn(read_only=True)
def read_level(conn, plan, level, seen):
    _body(conn, plan, level, seen)


def raise_error(conn: Any, kind: str) -> None:
    if kind == "user":
        raise KeyError("a bug in user code")
    conn.execute("FAIL" if kind == "query" else "DISCONNECT")


ERROR_TYPES = {"user": "KeyError", "query": "FakeDriverError", "disconnect": "FakeDisconnect"}

# -- the model -------------------------------------------------------------------------


@dataclass
class PoolRecord:
    pool: Any
    epoch: int
    kind: str
    max_size: int
    routes: bool
    closed: bool = False
    checkouts: int = 0  # successful checkouts, as the machine saw them


@dataclass
class Handle:
    """A wrapper a worker holds across steps (`pool.connect()` not yet released)."""

    hid: int
    worker: int
    record: PoolRecord
    route: str
    raw: FakeConnection
    released: bool = False


@dataclass
class Config:
    kind: str
    routing: bool
    size: int = 1
    max_size: int = 1
    via_arguments: bool = False  # qdbpool.initialize(get_conn) rather than a pool object
    reset_hook: Callable[[Any], object] | None = field(default=None)


def _leave_transaction_open(conn: Any) -> None:
    """A user reset hook that starts a transaction and leaves it open (issue 11 §3)."""
    if conn.in_transaction is False:
        conn.execute("BEGIN")


class PoolMachine(RuleBasedStateMachine):
    """The pool as user code drives it, checked against what the fake driver saw."""

    reset_hook: Callable[[Any], object] | None = None
    #: Set by the machines of TestIssue11Section3: take paths that meet today's bugs.
    meets_known_bugs = False

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.registry = FakeRegistry()
        self.workers: list[Worker | None] = [None] * WORKERS
        self.handles: dict[int, Handle] = {}
        self.records: list[PoolRecord] = []
        self.factory: Any = None
        self.config: Config | None = None
        self._hids = itertools.count()

    # -- setup ---------------------------------------------------------------------------

    @initialize(
        routing=st.booleans(),
        size=st.integers(1, 2),
        extra=st.integers(0, 1),
        via_arguments=st.booleans(),
    )
    def start(self, routing: bool, size: int, extra: int, via_arguments: bool) -> None:
        self.config = Config(
            kind=self.kind,
            routing=routing,
            size=size,
            max_size=min(size + extra, 2),
            via_arguments=via_arguments and self.kind == "singleton",
            reset_hook=self.reset_hook,
        )
        self.factory = self._new_factory()
        self._initialize()

    def _new_factory(self) -> Any:
        assert self.config is not None
        if self.config.routing:
            return RoutingFactory(self.registry)
        return self.registry.connect  # a plain zero-argument callable

    def _initialize(self) -> None:
        config = self.config
        assert config is not None
        self.registry.epoch = len(self.records)
        hooks = {} if config.reset_hook is None else {"reset": config.reset_hook}
        if config.kind == "bounded":
            pool = qdbpool.initialize(
                BoundedPool(
                    self.factory,
                    size=config.size,
                    max_size=config.max_size,
                    timeout=POOL_TIMEOUT,
                    **hooks,
                )
            )
        elif config.via_arguments:
            pool = qdbpool.initialize(self.factory, **hooks)
        else:
            pool = qdbpool.initialize(SingletonPool(self.factory, **hooks))
        assert qdbpool.instance() is pool
        if self.records:
            self.records[-1].closed = True  # initialize() closed the previous pool
        self.records.append(
            PoolRecord(
                pool=pool,
                epoch=self.registry.epoch,
                kind=config.kind,
                max_size=config.max_size if config.kind == "bounded" else 0,
                routes=config.routing,
            )
        )

    @property
    def current(self) -> PoolRecord:
        return self.records[-1]

    # -- helpers -------------------------------------------------------------------------

    def worker(self, slot: int) -> Worker:
        found = self.workers[slot]
        if found is None:
            found = self.workers[slot] = Worker(slot)
        return found

    def route_of(self, record: PoolRecord, read_only: bool) -> str:
        return "ro" if read_only and record.routes else "rw"

    def live_held(self, record: PoolRecord) -> dict[int, set[int]]:
        """Connection number -> worker slots, for the unreleased wrappers of `record`
        whose connection the driver has not closed (what the pool still counts as out)."""
        out: dict[int, set[int]] = {}
        for h in self.handles.values():
            if h.record is record and not h.released and not h.raw.close_calls:
                out.setdefault(h.raw.number, set()).add(h.worker)
        return out

    def held_by(self, slot: int, record: PoolRecord, route: str) -> list[FakeConnection]:
        return [
            h.raw
            for h in self.handles.values()
            if h.worker == slot
            and h.record is record
            and h.route == route
            and not h.released
            and not h.raw.close_calls
        ]

    def expect_checkout(self, slot: int, read_only: bool) -> str:
        """ "ok", "closed" or "timeout": what a checkout in `slot` must do now. (With
        connect failures armed, "ok" may also be the driver's FakeConnectError.)"""
        record = self.current
        if record.closed:
            return "closed"
        route = self.route_of(record, read_only)
        if (
            record.kind == "bounded"
            and not self.held_by(slot, record, route)
            and len(self.live_held(record)) >= record.max_size
        ):
            return "timeout"
        return "ok"

    def check_outcome(
        self, outcome: Outcome, expected: str, user_error: str | None, broken_held: bool = False
    ) -> bool:
        """Whether the checkout succeeded; fails the test if it did what it must not.

        `broken_held`: the thread holds a connection whose server went away, which a nested
        checkout may share (BoundedPool) and the body then fails on."""
        event(f"checkout expected {expected}, raised {outcome.raised}")
        if expected == "closed":
            assert outcome.raised == "PoolClosedError", outcome
            return False
        if expected == "timeout":
            assert outcome.raised == "PoolTimeoutError", outcome
            return False
        if outcome.raised == "FakeConnectError":
            return False  # checked against the driver's count by the stats invariant
        if (
            outcome.raised == "PoolTimeoutError"
            and "could be opened in time" in outcome.message
            and self.registry.failed.get(self.current.epoch, 0) > 0
        ):
            return False  # backing off after a failed connect, past the (tiny) pool timeout
        if broken_held and outcome.raised == "FakeInterfaceError":
            return True
        assert outcome.raised == user_error, outcome
        return True

    def before_checkout(
        self, slot: int, read_only: bool
    ) -> tuple[PoolRecord, list[FakeConnection]]:
        """The current pool, and what `slot` holds of it on the route asked for."""
        record = self.current
        return record, self.held_by(slot, record, self.route_of(record, read_only))

    def check_handed_out(
        self, slot: int, route: str, got: Handout, before: tuple[PoolRecord, list[FakeConnection]]
    ) -> None:
        """A connection handed to `slot`: the one it held already (`before`, from
        `self.before_checkout`), or one nobody else holds, clean."""
        record, mine = before
        raw = got.conn
        assert raw.epoch == record.epoch, f"{raw} from another pool than {record.epoch}"
        assert raw.route == route, f"{raw} handed out for route {route}"
        others = {n for n, slots in self.live_held(record).items() if slots - {slot}}
        assert raw.number not in others, f"{raw} handed to {slot} while another thread holds it"
        usable = [c for c in mine if not c.broken]
        if usable:
            assert raw is usable[0], f"nested checkout got {raw}, not the held {usable[0]}"
        elif not mine:
            assert not got.in_transaction, f"{raw} handed out inside a transaction"
        assert not got.closed, f"{raw} handed out closed"

    def run(self, slot: int, command: Command) -> Outcome:
        """Run a command in a worker; check that it used no connection another holds."""
        before = len(self.registry.uses)
        others_before = self._held_elsewhere(slot)
        outcome = self.worker(slot).run(command)
        name = self.worker(slot).name
        others_after = self._held_elsewhere(slot)
        for use in self.registry.uses[before:]:
            assert use.thread == name, f"{use} during a command of {name}"
            number = use.conn.number
            assert number not in others_before | others_after, (
                f"{name} used {use.conn} ({use.what}) which another thread holds"
            )
        return outcome

    def _held_elsewhere(self, slot: int) -> set[int]:
        return {
            h.raw.number
            for h in self.handles.values()
            if h.worker != slot and not h.released and not h.raw.close_calls
        }

    def pick(self, index: int, handles: list[Handle]) -> Handle:
        return sorted(handles, key=lambda h: h.hid)[index % len(handles)]

    def unreleased(self) -> list[Handle]:
        return [h for h in self.handles.values() if not h.released]

    def _live_unreleased_of_open_pools(self) -> list[Handle]:
        return [h for h in self.unreleased() if not h.record.closed]

    # -- rules: checkouts ----------------------------------------------------------------

    @rule(slot=st.integers(0, WORKERS - 1), read_only=st.booleans())
    def connect_and_hold(self, slot: int, read_only: bool) -> None:
        before = record, _ = self.before_checkout(slot, read_only)
        route = self.route_of(record, read_only)
        expected = self.expect_checkout(slot, read_only)
        hid = next(self._hids)

        def command(held: dict[int, Any]) -> Handout:
            wrapper = qdbpool.instance().connect(read_only=read_only)
            held[hid] = wrapper
            return handed(wrapper.__wrapped__)

        outcome = self.run(slot, command)
        if not self.check_outcome(outcome, expected, None):
            return
        raw = outcome.value.conn
        self.check_handed_out(slot, route, outcome.value, before)
        record.checkouts += 1
        self.handles[hid] = Handle(hid, slot, record, route, raw)

    @rule(
        pick=st.integers(0, 7),
        how=st.sampled_from(["close", "pool.release", "__exit__"]),
        keep=st.booleans(),
    )
    @precondition(lambda self: self.unreleased())
    def release(self, pick: int, how: str, keep: bool) -> None:
        """Release a held wrapper; `keep`: the worker keeps a reference to it afterwards."""
        handle = self.pick(pick, self.unreleased())
        pool = handle.record.pool
        hid = handle.hid

        def command(held: dict[int, Any]) -> None:
            wrapper = held[hid] if keep else held.pop(hid)
            if how == "close":
                wrapper.close()
            elif how == "pool.release":
                pool.release(wrapper)
            else:
                wrapper.__exit__(None, None, None)

        outcome = self.run(handle.worker, command)
        # Once its pool closed, the checkout may have been ended already (issue 11 §3).
        allowed = (None, "ValueError") if handle.record.closed else (None,)
        assert outcome.raised in allowed, outcome
        handle.released = True
        if not keep:
            del self.handles[hid]
        if not self.held_by(handle.worker, handle.record, handle.route):
            # The holder's last checkout of it ended: reset (or closed, if it broke).
            raw = handle.raw
            assert not raw.in_transaction or raw.close_calls, f"{raw} released in a transaction"

    @rule(pick=st.integers(0, 7), how=st.sampled_from(["close", "pool.release"]))
    @precondition(lambda self: any(h.released for h in self.handles.values()))
    def release_again(self, pick: int, how: str) -> None:
        """Releasing a wrapper twice changes nothing (today silently; ValueError is fine)."""
        handle = self.pick(pick, [h for h in self.handles.values() if h.released])
        pool, hid = handle.record.pool, handle.hid

        def command(held: dict[int, Any]) -> None:
            if how == "close":
                held[hid].close()
            else:
                pool.release(held[hid])

        outcome = self.run(handle.worker, command)
        assert outcome.raised in (None, "ValueError"), outcome

    @rule(pick=st.integers(0, 7))
    @precondition(lambda self: len(self.records) > 1)
    def release_into_another_pool(self, pick: int) -> None:
        """A wrapper given to a pool that did not hand it out: ValueError, nothing changes."""
        candidates = [h for h in self.handles.values() if h.record is not self.current]
        if not candidates:
            return
        handle = self.pick(pick, candidates)
        pool, hid = self.current.pool, handle.hid
        outcome = self.run(handle.worker, lambda held: pool.release(held[hid]))
        assert outcome.raised in ("ValueError", "ConfigurationError"), outcome

    @rule(
        pick=st.integers(0, 7),
        action=st.sampled_from(["select", "write", "commit", "cursor", "query", "disconnect"]),
    )
    @precondition(lambda self: self._live_unreleased_of_open_pools())
    def use_held(self, pick: int, action: str) -> None:
        handle = self.pick(pick, self._live_unreleased_of_open_pools())
        hid, raw = handle.hid, handle.raw
        was_closed = raw.closed

        def command(held: dict[int, Any]) -> None:
            wrapper = held[hid]
            if action == "select":
                wrapper.execute("SELECT 1")
            elif action == "write":
                wrapper.execute("INSERT INTO t VALUES (1)")
            elif action == "commit":
                wrapper.commit()
            elif action == "cursor":
                cursor = wrapper.cursor()
                cursor.execute("SELECT 1")
                cursor.fetchall()
                cursor.close()
            else:
                raise_error(wrapper, action)

        outcome = self.run(handle.worker, command)
        if was_closed:
            assert outcome.raised == "FakeInterfaceError", outcome
        elif action in ("query", "disconnect"):
            assert outcome.raised == ERROR_TYPES[action], outcome
        else:
            assert outcome.raised is None, outcome

    @rule(
        slot=st.integers(0, WORKERS - 1),
        depth=st.integers(1, 3),
        error_at=st.none() | st.integers(0, 2),
        error=st.sampled_from(sorted(ERROR_TYPES)),
        write_at=st.none() | st.integers(0, 2),
        inner_connect=st.booleans(),
        read_only=st.booleans(),
        release_at=st.none() | st.integers(0, 2),
    )
    def call_nested(
        self,
        slot: int,
        depth: int,
        error_at: int | None,
        error: str,
        write_at: int | None,
        inner_connect: bool,
        read_only: bool,
        release_at: int | None,
    ) -> None:
        """Decorated functions calling each other, maybe raising, maybe with a
        `with pool.connect()` inside: every level gets the thread's one connection."""
        if error_at is not None and error_at >= depth:
            error_at = None
        if release_at is not None and (
            release_at >= depth
            # pool.release(raw) would end a connect() of it this worker holds: not this rule's
            or any(h.worker == slot and not h.released for h in self.handles.values())
        ):
            release_at = None
        plan = CallPlan(depth, error_at, error, write_at, inner_connect, read_only, release_at)
        before = record, mine = self.before_checkout(slot, read_only)
        route = self.route_of(record, read_only)
        expected = self.expect_checkout(slot, read_only)
        seen: list[Handout] = []

        def command(held: dict[int, Any]) -> None:
            (read_level if read_only else write_level)(plan, 0, seen)

        broken_held = any(c.broken for c in mine)
        outcome = self.run(slot, command)
        record.checkouts += len(seen)  # one entry per checkout that succeeded
        user_error = ERROR_TYPES[error] if error_at is not None else None
        if not self.check_outcome(outcome, expected, user_error, broken_held):
            if expected != "ok":
                assert not seen, f"the body ran although the checkout failed: {outcome}"
            return
        if not broken_held:
            levels = depth if error_at is None else error_at + 1
            assert len(seen) == levels + (inner_connect and error_at is None), seen
        raw = seen[0].conn
        self.check_handed_out(slot, route, seen[0], before)
        assert all(got.conn is raw for got in seen), f"nested calls got different ones: {seen}"
        if not self.held_by(slot, record, route):
            assert not raw.in_transaction or raw.close_calls, f"{raw} left in a transaction"
        if raw.broken and not self.held_by(slot, record, route):
            assert raw.close_calls == 1, f"{raw} lost its server but was kept"

    @rule(
        slot=st.integers(0, WORKERS - 1),
        error=st.none() | st.sampled_from(sorted(ERROR_TYPES)),
        write=st.booleans(),
        read_only=st.booleans(),
    )
    def with_block(self, slot: int, error: str | None, write: bool, read_only: bool) -> None:
        """`with pool.connect() as conn:`, maybe raising inside."""
        before = record, mine = self.before_checkout(slot, read_only)
        route = self.route_of(record, read_only)
        expected = self.expect_checkout(slot, read_only)
        seen: list[Handout] = []

        def command(held: dict[int, Any]) -> None:
            with qdbpool.instance().connect(read_only=read_only) as conn:
                seen.append(handed(conn.__wrapped__))
                if write:
                    conn.execute("INSERT INTO t VALUES (1)")
                if error is not None:
                    raise_error(conn, error)

        broken_held = any(c.broken for c in mine)
        outcome = self.run(slot, command)
        record.checkouts += len(seen)
        if not self.check_outcome(outcome, expected, error and ERROR_TYPES[error], broken_held):
            return
        raw = seen[0].conn
        self.check_handed_out(slot, route, seen[0], before)
        if not self.held_by(slot, record, route):
            assert not raw.in_transaction or raw.close_calls, f"{raw} left in a transaction"

    @rule(count=st.integers(1, 2))
    def fail_next_connects(self, count: int) -> None:
        self.registry.fail_connects = count

    # -- rules: threads, garbage, close, initialize --------------------------------------

    def holds_in_closed_pool(self, slot: int) -> bool:
        return any(
            h.worker == slot and h.record.closed and not h.raw.close_calls
            for h in self.unreleased()
        )

    def holds_what_another_wrapper_wraps(self, slot: int) -> bool:
        """Whether `slot` holds a checkout of a connection that a wrapper of another
        worker (released long ago) also wraps: the pool's record of it then outlives the
        thread, and today nothing releases it (see DroppedCheckout)."""
        mine = {h.raw.number for h in self.unreleased() if h.worker == slot}
        return any(h.raw.number in mine for h in self.handles.values() if h.worker != slot)

    @rule(slot=st.integers(0, WORKERS - 1))
    @precondition(lambda self: any(self.workers))
    def end_thread(self, slot: int) -> None:
        """The worker ends, with whatever it still holds (its wrappers go with it)."""
        worker = self.workers[slot]
        if worker is None:
            return
        if not self.meets_known_bugs and (
            self.holds_in_closed_pool(slot)  # see ThreadEndsHoldingACheckoutOfAClosedPool
            or self.holds_what_another_wrapper_wraps(slot)  # see DroppedCheckout
        ):
            return
        self._end_thread(slot, worker)

    def _end_thread(self, slot: int, worker: Worker) -> None:
        worker.stop()
        self.workers[slot] = None
        for hid in [h.hid for h in self.handles.values() if h.worker == slot]:
            del self.handles[hid]
        gc.collect()
        if self.kind == "singleton":
            # Its connections, of every pool, close with the thread.
            deadline = time.monotonic() + THREAD_END_GRACE
            while True:
                left = [
                    c
                    for c in self.registry.connections
                    if c.opened_by == worker.name and not c.close_calls
                ]
                if not left or time.monotonic() > deadline:
                    break
                time.sleep(0.001)
            assert not left, f"{left} still open after their thread ended"

    @rule(pick=st.integers(0, 7), by=st.integers(1, WORKERS - 1))
    @precondition(lambda self: self.unreleased())
    def drop_unreleased_in_another_thread(self, pick: int, by: int) -> None:
        """A worker lets go of a wrapper it never released, and the garbage collector
        releases it in another worker's thread: the checkout ends; the connection stays
        its holder's while that holds another checkout of it, else it is closed
        (SingletonPool) or back in the pool, reset (BoundedPool)."""
        handle = self.pick(pick, self.unreleased())
        collector = (handle.worker + by) % WORKERS
        handed_over: list[Any] = []
        hid = handle.hid

        outcome = self.run(handle.worker, lambda held: handed_over.append(held.pop(hid)))
        assert outcome.raised is None, outcome
        # Not the holder's any more: the collector may reset it, unless the holder nests.
        del self.handles[hid]
        outcome = self.run(collector, lambda held: (handed_over.clear(), gc.collect()))
        assert outcome.raised is None, outcome
        raw = handle.raw
        if self.held_by(handle.worker, handle.record, handle.route):
            return  # nested: the holder's own release ends it
        if handle.record.kind == "singleton" and not handle.record.closed:
            assert raw.close_calls, f"{raw}: another thread's, left open by its collector"
        assert raw.close_calls or not raw.in_transaction, f"{raw} back in a transaction"

    @rule(pick=st.integers(0, 7))
    @precondition(lambda self: any(h.released for h in self.handles.values()))
    def drop_released_wrappers(self, pick: int) -> None:
        """A worker lets go of its released wrappers; collecting them changes nothing."""
        slot = self.pick(pick, [h for h in self.handles.values() if h.released]).worker
        gone = [h.hid for h in self.handles.values() if h.worker == slot and h.released]

        def command(held: dict[int, Any]) -> None:
            for hid in gone:
                del held[hid]
            gc.collect()

        assert self.run(slot, command).raised is None
        for hid in gone:
            del self.handles[hid]

    @rule(by=st.none() | st.integers(0, WORKERS - 1), then_reinitialize=st.booleans())
    def close_pool(self, by: int | None, then_reinitialize: bool) -> None:
        """close() from the main thread or a worker (which may hold checkouts itself),
        and maybe a new pool at once (where the last step does not forbid it)."""
        record = self.current
        others = {n for n, slots in self.live_held(record).items() if slots - {by}}
        timeout = CLOSE_TIMEOUT if others else 5.0
        if by is None:
            record.pool.close(timeout)
        else:
            assert self.run(by, lambda held: record.pool.close(timeout)).raised is None
        record.closed = True
        if then_reinitialize and not self.live_held(record):
            self.reinitialize(same_factory=True)

    @rule(same_factory=st.booleans())
    def reinitialize(self, same_factory: bool) -> None:
        """A new global pool (the same factory object, or a new one): the old one closes."""
        # Checked here, not as a precondition: whether a held connection is closed yet may
        # depend on another thread (a worker ending, a pool closing), and hypothesis
        # requires preconditions that replay identically (FlakyStrategyDefinition).
        if self.live_held(self.current):
            return
        if not same_factory:
            self.factory = self._new_factory()
        self._initialize()

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def stats_agree_with_the_driver(self) -> None:
        for record in self.records:
            conns = self.registry.of_epoch(record.epoch)
            closed = sum(1 for c in conns if c.close_calls)
            stats = record.pool.stats()
            held = len(self.live_held(record))
            assert stats.created == len(conns), (stats, conns)
            if record.closed:
                # close() counts a connection still out as closed once its timeout runs
                # out; its holder closes it when it lets go (issue 11 §3).
                assert closed <= stats.closed <= closed + held, (stats, conns, held)
                assert stats.open == len(conns) - stats.closed, (stats, conns)
                assert stats.in_use <= held, f"{stats}: in use, but workers hold {held}"
            else:
                assert stats.closed == closed, (stats, conns)
                assert stats.open == len(conns) - closed, (stats, conns)
                assert stats.in_use == held, f"{stats}: in use, but workers hold {held}"
            assert stats.connect_errors == self.registry.failed.get(record.epoch, 0), stats
            assert stats.checkouts == record.checkouts, (stats, record.checkouts)

    @invariant()
    def never_too_many_open(self) -> None:
        for record in self.records:
            open_now = [c for c in self.registry.of_epoch(record.epoch) if not c.close_calls]
            if record.kind == "bounded":
                assert len(open_now) <= record.max_size, open_now
            else:
                keys = [(c.opened_by, c.route) for c in open_now]
                assert len(keys) == len(set(keys)), f"two open for one thread: {open_now}"

    @invariant()
    def no_connection_in_two_hands_nor_closed_under_its_holder(self) -> None:
        for record in self.records:
            for number, slots in self.live_held(record).items():
                assert len(slots) == 1, f"connection {number} held by workers {slots}"
        for h in self.unreleased():
            if not h.record.closed and not h.raw.broken:
                assert not h.raw.close_calls, f"{h.raw} closed under its holder"

    @invariant()
    def a_closed_pool_closed_all_nobody_holds(self) -> None:
        for record in self.records:
            if record.closed:
                held = self.live_held(record)
                for c in self.registry.of_epoch(record.epoch):
                    assert c.close_calls or c.number in held, f"{c} open in a closed pool"

    @invariant()
    def never_closed_twice(self) -> None:
        assert not self.registry.double_closes, self.registry.double_closes

    # -- teardown: release everything, then nothing may stay open ------------------------

    def teardown(self) -> None:
        try:
            for handle in self.unreleased():
                worker = self.workers[handle.worker]
                if worker is not None:
                    hid = handle.hid
                    worker.run(lambda held, hid=hid: held[hid].close())
                    handle.released = True
            for slot, worker in enumerate(self.workers):
                if worker is not None:
                    worker.stop()
                    self.workers[slot] = None
            self.handles.clear()
            for record in self.records:
                record.pool.close(0)
            gc.collect()
            left = [c for c in self.registry.connections if not c.close_calls]
            assert not left, f"open after every holder released and the pool closed: {left}"
        finally:
            for worker in self.workers:
                if worker is not None:
                    worker.stop()


# -- the misuse rules of issue 11 §3, one rule each -----------------------------------------
#
# Each rule reaches its case from any state (it makes the checkout it needs when there is
# none), so that a few examples find a regression every time.


class KnownBugMachine(PoolMachine):
    def hold_one(self, slot: int) -> Handle | None:
        """A checkout held by a worker of the current pool (made now if need be, in `slot`
        or, when a BoundedPool is full, by a holder); None if the pool cannot give one."""
        if self.current.closed and not self.live_held(self.current):
            self.reinitialize(same_factory=True)
        mine = [h for h in self.unreleased() if h.record is self.current and not h.raw.closed]
        if mine:
            return self.pick(slot, mine)
        self.registry.fail_connects = 0
        known = set(self.handles)
        self.connect_and_hold(slot=slot, read_only=False)
        made = [self.handles[hid] for hid in self.handles if hid not in known]
        return made[0] if made else None


class UseAfterRelease(KnownBugMachine):
    @rule(slot=st.integers(0, WORKERS - 1), action=st.sampled_from(["execute", "commit", "cursor"]))
    def use_released_wrapper(self, slot: int, action: str) -> None:
        """Every use of a released wrapper raises a qdbpool error and touches nothing."""
        handle = self.hold_one(slot)
        if handle is None:
            return
        # Release exactly this handle, as user code would, then use it.
        hid = handle.hid
        assert self.run(handle.worker, lambda held: held[hid].close()).raised is None
        handle.released = True
        before = len(self.registry.uses)

        def command(held: dict[int, Any]) -> bool:
            try:
                if action == "execute":
                    held[hid].execute("COMMIT")
                elif action == "commit":
                    held[hid].commit()
                else:
                    held[hid].cursor()
            except qdbpool.QdbPoolError:
                return True
            return False

        outcome = self.worker(handle.worker).run(command)
        assert outcome.value is True, f"a released wrapper's {action} raised no qdbpool error"
        assert len(self.registry.uses) == before, self.registry.uses[before:]


class DroppedCheckout(KnownBugMachine):
    meets_known_bugs = True  # also: a thread ends with a checkout an old wrapper wraps too

    @rule(slot=st.integers(0, WORKERS - 1))
    def drop_unreleased_wrapper(self, slot: int) -> None:
        """A wrapper garbage collected unreleased is released (quasardb.pool style code)."""
        handle = self.hold_one(slot)
        if handle is None:
            return
        hid = handle.hid

        def command(held: dict[int, Any]) -> None:
            del held[hid]
            gc.collect()

        assert self.worker(handle.worker).run(command).raised is None
        del self.handles[hid]  # released: the invariants now expect it back in the pool


class ForeignRelease(KnownBugMachine):
    @rule(slot=st.integers(0, WORKERS - 1))
    def release_a_connection_never_handed_out(self, slot: int) -> None:
        stray, pool = self.registry.stray(), self.current.pool
        outcome = self.run(slot, lambda held: pool.release(stray))
        assert outcome.raised in ("ValueError", "ConfigurationError"), (
            f"pool.release(stray) raised {outcome.raised}"
        )


class CloseEndsLeakedCheckouts(KnownBugMachine):
    @rule(slot=st.integers(0, WORKERS - 1))
    def close_with_checkouts_out(self, slot: int) -> None:
        """close(timeout) ends checkouts still out once it runs out, counts them closed;
        a second close() and the next initialize() do not wait again."""
        if self.hold_one(slot) is None:
            return
        record = self.current
        record.pool.close(CLOSE_TIMEOUT)
        record.closed = True
        stats = record.pool.stats()
        assert stats.open == 0, f"close() left {stats.open} open: {stats}"
        started = time.monotonic()
        record.pool.close()
        self._initialize()
        waited = time.monotonic() - started
        assert waited < 1.0, f"a second close() and initialize() waited {waited:.1f}s"
        # Counted closed, interrupted, never freed under its holder (a C driver could crash):
        # the holder closes the driver connection when it lets go of it.


class ThreadEndsHoldingACheckoutOfAClosedPool(KnownBugMachine):
    meets_known_bugs = True

    @rule(slot=st.integers(0, WORKERS - 1))
    def close_then_end_a_holder_thread(self, slot: int) -> None:
        """close() marks a checkout still out closed, so that when its thread ends (with
        the wrapper) nobody closes the connection."""
        handle = self.hold_one(slot)
        if handle is None:
            return
        self.current.pool.close(CLOSE_TIMEOUT)
        self.current.closed = True
        worker = self.workers[handle.worker]
        assert worker is not None
        self._end_thread(handle.worker, worker)


class ResetHookLeavesTransaction(KnownBugMachine):
    """A user `reset` hook that leaves a transaction open: the connection is discarded,
    never handed to the next borrower inside that transaction."""

    reset_hook = staticmethod(_leave_transaction_open)

    @rule(slot=st.integers(0, WORKERS - 1))
    def two_checkouts_in_a_row(self, slot: int) -> None:
        if self.current.closed and not self.live_held(self.current):
            self.reinitialize(same_factory=True)
        self.registry.fail_connects = 0
        self.with_block(slot=slot, error=None, write=False, read_only=False)
        self.with_block(slot=slot, error=None, write=False, read_only=False)


# -- the tests -----------------------------------------------------------------------------

_PROFILES = {
    # 2-8 s per machine on a 2-core machine, depending on its load.
    "default": {"max_examples": 60, "stateful_step_count": 30},
    # For `make soak`: 5x the examples, each twice as long (7.5 min at 500 examples with
    # the machine's load at 8; this is about 4 min then, ~1.5 min on an idle machine).
    "soak": {"max_examples": 300, "stateful_step_count": 60},
    # For `make test-lowest`, which proves the dependency floors: hypothesis 6.100 runs
    # these machines ~8x slower than today's hypothesis (over 9 minutes at "default").
    "quick": {"max_examples": 8, "stateful_step_count": 15},
}
_PROFILE_NAME = os.environ.get("QDBPOOL_HYPOTHESIS_PROFILE", "default")
if _PROFILE_NAME not in _PROFILES:
    raise ValueError(
        f"QDBPOOL_HYPOTHESIS_PROFILE must be one of {sorted(_PROFILES)}, not {_PROFILE_NAME!r}"
    )
_PROFILE = _PROFILES[_PROFILE_NAME]
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], **_PROFILE)
# Each misuse machine reaches its case in a few examples; shrinking would only cost time.
KNOWN_BUG_SETTINGS = settings(
    SETTINGS,
    max_examples=min(30, _PROFILE["max_examples"]),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    report_multiple_bugs=False,
    database=None,
    derandomize=True,  # the same examples every run
)
KINDS = ["singleton", "bounded"]
# Hypothesis shrinks a failure for up to 5 minutes: let it finish and print the example.
pytestmark = pytest.mark.timeout(1800 if _PROFILE_NAME == "soak" else 420)


@pytest.mark.parametrize("kind", KINDS)
def test_pool_state_machine(kind: str) -> None:
    run_state_machine_as_test(functools.partial(PoolMachine, kind), settings=SETTINGS)


@pytest.mark.parametrize("kind", KINDS)
class TestIssue11Section3:
    """The misuse rules of issue 11 §3, each a rule more in a machine of its own (each of
    these found its bug in the code before the fix)."""

    def test_use_after_release_raises(self, kind: str) -> None:
        run_state_machine_as_test(
            functools.partial(UseAfterRelease, kind), settings=KNOWN_BUG_SETTINGS
        )

    def test_dropped_checkout_is_released(self, kind: str) -> None:
        run_state_machine_as_test(
            functools.partial(DroppedCheckout, kind), settings=KNOWN_BUG_SETTINGS
        )

    def test_foreign_release_raises(self, kind: str) -> None:
        run_state_machine_as_test(
            functools.partial(ForeignRelease, kind), settings=KNOWN_BUG_SETTINGS
        )

    def test_close_ends_leaked_checkouts(self, kind: str) -> None:
        run_state_machine_as_test(
            functools.partial(CloseEndsLeakedCheckouts, kind), settings=KNOWN_BUG_SETTINGS
        )

    def test_thread_end_closes_checkouts_of_a_closed_pool(self, kind: str) -> None:
        run_state_machine_as_test(
            functools.partial(ThreadEndsHoldingACheckoutOfAClosedPool, kind),
            settings=KNOWN_BUG_SETTINGS,
        )

    def test_reset_hook_leaving_a_transaction_discards_the_connection(self, kind: str) -> None:
        run_state_machine_as_test(
            functools.partial(ResetHookLeavesTransaction, kind), settings=KNOWN_BUG_SETTINGS
        )
