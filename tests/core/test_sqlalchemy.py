"""qdbpool.sqlalchemy without a server: an ORM round trip on SQLite, a connection its
factory made unfit is replaced at checkout, and wrong arguments are named. Routing,
failover and demotion on a real cluster are in tests/pg/test_sqlalchemy.py."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import String, event, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from qdbpool import ArgumentTypeError
from qdbpool.factories import ConnectionFactory, SQLite
from qdbpool.protocol import Generation
from qdbpool.sqlalchemy import create_engine


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Counting(SQLite):
    """SQLite counting the connections it opens and closes; the test moves `generation`
    on to make every open connection unfit, as a host's role change does."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.generation = Generation()
        self.opened = 0
        self.closed = 0

    def connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        self.opened += 1
        return super().connect(read_only=read_only)

    def generation_of(self, conn: sqlite3.Connection) -> tuple[Generation, int]:
        return self.generation, self.generation.value

    def close_connection(self, conn: sqlite3.Connection) -> None:
        self.closed += 1
        super().close_connection(conn)


def test_the_orm_round_trips_through_a_qdbpool_factory(tmp_path: Path) -> None:
    engine = create_engine(SQLite(str(tmp_path / "app.db")))
    try:
        Base.metadata.create_all(engine)
        with Session(engine) as session, session.begin():
            session.add_all([User(name="ada"), User(name="grace")])
        with Session(engine) as session:
            assert session.scalars(select(User.name).order_by(User.id)).all() == ["ada", "grace"]
        assert engine.dialect.name == "sqlite"
    finally:
        engine.dispose()


def test_a_connection_its_factory_made_unfit_is_replaced_at_checkout(tmp_path: Path) -> None:
    factory = Counting(str(tmp_path / "app.db"))
    engine = create_engine(factory, pool_size=1)
    try:
        for _ in range(3):
            with engine.connect() as conn:
                conn.execute(text("select 1"))
        assert (factory.opened, factory.closed) == (1, 0)  # pooled by SQLAlchemy
        factory.generation.value += 1
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar_one() == 1
        assert (factory.opened, factory.closed) == (2, 1)  # the unfit one closed, by the factory
    finally:
        engine.dispose()
    assert factory.closed == 2


def test_an_error_reconnecting_an_invalidated_connection_is_the_applications_to_see(
    tmp_path: Path,
) -> None:
    # A Connection invalidated by a lost server, used again while no server takes new
    # connections: qdbpool's handle_error hook read the Connection's DBAPI connection,
    # which reconnected (a second wait of acquire_timeout), raised in the hook, and so
    # replaced the error and kept the application's own handle_error listeners from it.
    factory = Counting(str(tmp_path / "app.db"))
    engine = create_engine(factory)
    seen: list[BaseException] = []
    event.listen(engine, "handle_error", lambda context: seen.append(context.original_exception))
    refused = sqlite3.OperationalError("no server takes connections")
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
            conn.invalidate()
            conn.rollback()  # as the application does before it tries again
            opened = factory.opened
            factory.connect = lambda *, read_only=False: (_ for _ in ()).throw(refused)  # type: ignore[method-assign]
            with pytest.raises(DBAPIError) as raised:
                conn.execute(text("select 1"))
        assert raised.value.orig is refused
        assert seen == [refused]  # the application's listener saw the driver's error
        assert factory.opened == opened  # the hook opened nothing of its own
    finally:
        engine.dispose()


def test_create_engine_names_what_was_wrong(tmp_path: Path) -> None:
    with pytest.raises(ArgumentTypeError, match=r"needs a qdbpool factory .* not function"):
        create_engine(lambda: sqlite3.connect(":memory:"))  # type: ignore[arg-type]
    for flag in ("false", 0, None):
        with pytest.raises(ArgumentTypeError, match=r"read_only=\.\.\.\) takes a bool"):
            create_engine(SQLite(), read_only=flag)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="makes the creator itself"):
        create_engine(SQLite(), creator=lambda: None)

    class Mine(ConnectionFactory):
        def connect(self, *, read_only: bool = False) -> sqlite3.Connection:
            return sqlite3.connect(":memory:")

    with pytest.raises(ArgumentTypeError, match="dialect of a Mine; pass url="):
        create_engine(Mine())
    engine = create_engine(Mine(), url="sqlite://")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select 7")).scalar_one() == 7
    finally:
        engine.dispose()


def test_without_sqlalchemy_the_import_error_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "try:\n    import qdbpool.sqlalchemy\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'qdbpool[sqlalchemy]'" in out.stdout, out.stderr
