"""qdbpool.sqlalchemy on a real cluster: the ORM's Session writes through one engine (the
primary) and reads through another (replicas), threads never reconnect by themselves, and a
failover (SIGKILL + promote) or a demotion (primary made read-only, a standby promoted)
costs each writer at most one failed transaction; writes then land on the new primary."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Integer, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from qdbpool.factories import Postgres
from qdbpool.sqlalchemy import create_engine

pytestmark = pytest.mark.postgres

PACE = 0.01
PORT = text("SELECT inet_server_port()")


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "sa_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    writer: Mapped[int]
    n: Mapped[int]


@dataclass(frozen=True)
class Call:
    began: float
    port: int | None
    error: BaseException | None


class OrmLoad:
    """Writer threads (an ORM insert, committed, on the write engine) and reader threads
    (an ORM count on the read engine), each session a `with` block, each call logged with
    the port of the server that answered."""

    def __init__(self, writes: sessionmaker[Session], reads: sessionmaker[Session]) -> None:
        self.stop = threading.Event()
        self.writes: list[list[Call]] = [[] for _ in range(3)]
        self.reads: list[list[Call]] = [[] for _ in range(2)]
        self.threads = [
            threading.Thread(target=self._work, args=(log, self._write(writes, i)), daemon=True)
            for i, log in enumerate(self.writes)
        ] + [
            threading.Thread(target=self._work, args=(log, self._read(reads)), daemon=True)
            for log in self.reads
        ]
        for t in self.threads:
            t.start()

    @staticmethod
    def _write(sessions: sessionmaker[Session], writer: int) -> Any:
        counter = iter(range(1_000_000))

        def call() -> int:
            with sessions() as session, session.begin():
                session.add(Event(writer=writer, n=next(counter)))
                session.flush()
                return int(session.execute(PORT).scalar_one())

        return call

    @staticmethod
    def _read(sessions: sessionmaker[Session]) -> Any:
        def call() -> int:
            with sessions() as session:
                session.execute(select(func.count()).select_from(Event)).scalar_one()
                return int(session.execute(PORT).scalar_one())

        return call

    def _work(self, log: list[Call], fn: Any) -> None:
        for _ in range(100_000):  # bounded; stop ends it long before
            if self.stop.is_set():
                return
            began = time.monotonic()
            try:
                port, error = fn(), None
            except Exception as exc:
                port, error = None, exc
            log.append(Call(began, port, error))
            self.stop.wait(PACE)

    def successes(self, log: list[Call], port: int, after: float) -> int:
        return sum(1 for c in list(log) if c.port == port and c.began >= after)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)
        assert not any(t.is_alive() for t in self.threads), "a worker is stuck"


@pytest.fixture
def orm(cluster: Any, poll: Any, pg: Any) -> Iterator[tuple[Any, Postgres, OrmLoad]]:
    factory = Postgres(cluster.multi_host_dsn(), driver=pg.name)
    engine = create_engine(factory)
    read_engine = create_engine(factory, read_only=True)
    try:
        factory.ready(1, 2, timeout=10)
        Base.metadata.create_all(engine)
        cluster.wait_replicated()
        load = OrmLoad(sessionmaker(engine), sessionmaker(read_engine))
        try:
            poll(lambda: all(len(log) >= 5 for log in load.writes + load.reads))
            yield cluster, factory, load
        finally:
            load.close()
    finally:
        engine.dispose()
        read_engine.dispose()
        factory.close()


def assert_writes_moved(load: OrmLoad, new_port: int, allowed: set[str | None]) -> None:
    for log in load.writes:
        failed = [c.error for c in log if c.error is not None]
        assert len(failed) <= 1, failed
        for error in failed:
            original = getattr(error, "orig", error)
            # psycopg names it sqlstate, psycopg2 pgcode
            state = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
            assert state in allowed, repr(error)
        resumed = next(i for i, c in enumerate(log) if c.port == new_port)
        assert all(c.port == new_port for c in log[resumed:])


def test_orm_writers_and_readers_carry_on_through_a_failover(orm: Any, poll: Any) -> None:
    cluster, _, load = orm
    killed_at = time.monotonic()
    new = cluster.failover()
    (replica,) = cluster.standbys
    poll(
        lambda: all(load.successes(log, new.port, killed_at) >= 5 for log in load.writes),
        timeout=15,
        what="every ORM writer committing on the new primary",
    )
    poll(
        lambda: all(load.successes(log, replica.port, killed_at) >= 5 for log in load.reads),
        timeout=15,
        what="every ORM reader reading from the remaining replica",
    )
    load.close()
    # A connection killed mid-transaction: the driver's own error (no SQLSTATE), once.
    assert_writes_moved(load, new.port, allowed={None, "57P01"})
    for log in load.reads:
        assert [c.error for c in log if c.error is not None] == []


def test_orm_writes_move_to_the_promoted_host_after_a_demotion(
    orm: Any, poll: Any, promote_another: Any
) -> None:
    cluster, _, load = orm
    old = cluster.primary
    old.set_read_only(True)
    new = promote_another(cluster)
    promoted_at = time.monotonic()
    poll(
        lambda: all(load.successes(log, new.port, promoted_at) >= 5 for log in load.writes),
        timeout=15,
        what="every ORM writer committing on the promoted host",
    )
    load.close()
    assert_writes_moved(load, new.port, allowed={"25006"})  # refused as read-only, once


def test_a_pooled_connection_to_a_demoted_primary_is_replaced_at_checkout(
    cluster: Any, poll: Any, pg: Any
) -> None:
    """No error at all when the demotion happens while the connection sits in SQLAlchemy's
    pool: the checkout event sees its host's role changed, with no I/O, and SQLAlchemy
    takes a new connection (to the new primary)."""
    factory = Postgres(cluster.multi_host_dsn(), driver=pg.name)
    engine = create_engine(factory, pool_size=1)
    assert engine.dialect.driver == pg.name
    try:
        factory.ready(1, 2, timeout=10)
        old = cluster.primary
        with engine.connect() as conn:
            assert conn.execute(PORT).scalar_one() == old.port
        old.set_read_only(True)
        cluster.wait_replicated()
        new = cluster.standbys[0]
        new.promote()
        poll(
            lambda: (
                {h.address.port: h.role.value for h in factory.hosts()}.get(new.port) == "primary"
                and {h.address.port: h.role.value for h in factory.hosts()}.get(old.port)
                == "replica"
            ),
            what="the factory seeing the switchover",
        )
        with engine.begin() as conn:
            assert conn.execute(PORT).scalar_one() == new.port
            conn.execute(text("CREATE TABLE after_switchover (x int)"))  # a write: accepted
    finally:
        engine.dispose()
        factory.close()
