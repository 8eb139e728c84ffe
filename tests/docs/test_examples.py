"""Every Python example in README.md and docs/ runs as written.

A page is read top to bottom, so its ```python blocks run in order in one namespace, in a
temporary directory, with no global pool before and the global pool closed after. Only
three things differ from what a reader does:

- addresses: the hosts of a `postgresql://` or `mysql://` URL (and pymysql's `host=`,
  `port=`) become those of a server the test starts (user `app`, password `secret`,
  database `app`, with the tables the examples use);
- names a page uses without defining them (a `get_conn`, the hooks in a list of options):
  its PRELUDE below defines them, and says so;
- `quasardb.Cluster`, which has no server here: a mock.

Marks in an HTML comment on the line before a block (invisible on the site):
`<!-- example: raises NameError -->` (the block must raise that exception, by name) and
`<!-- example: not run, <why> -->` (a signature or a list of forms, not a program).
Blocks with a top-level `await` (the asyncio peers in the migration guides) run in a fresh
event loop. Functions named `test_*` that a page defines are called: they are examples of
tests.
"""

from __future__ import annotations

import ast
import asyncio
import re
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import quasardb

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

BLOCK = re.compile(
    r"(?:^[ \t]*<!--\s*example:\s*(?P<mark>.*?)\s*-->[ \t]*\n)?"
    r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)

# What a page takes for granted, defined before its first block. `bed` starts servers.
PRELUDE = {
    "docs/concepts/closing.md": """
import sqlite3
import qdbpool as pool
pool.initialize(lambda: sqlite3.connect(":memory:"))
""",
    "docs/concepts/pools.md": """
import sqlite3
def get_conn():
    return sqlite3.connect(":memory:")
""",
    "docs/concepts/validation.md": """
import qdbpool as pool
from qdbpool.factories import SQLite
factory = SQLite(":memory:")
def on_connect(conn): pass
def on_release(conn): pass
""",
    "docs/concepts/with-conn.md": """
import qdbpool as pool
from qdbpool.factories import Postgres
pool.initialize(Postgres(bed.postgres_dsn()))
job_id = 1
""",
    "docs/factories.md": """
import qdbpool as pool
import psycopg
DSN = bed.postgres_dsn()
""",
    "docs/guides/quasardb.md": """
USER_PRIVATE_KEY = "SU1Nf8hY...private key of user app"
CLUSTER_PUBLIC_KEY = "PpSNf2lY...public key of the cluster"
""",
    "docs/testing.md": """
cluster = bed.postgres
""",
}


@dataclass
class Block:
    page: str
    line: int
    code: str
    mark: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    text = path.read_text()
    page = path.relative_to(REPO).as_posix()
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        code = textwrap.dedent(match["code"])
        found.append(Block(page, line, code, match["mark"] or ""))
    return found


EXAMPLES = {path.relative_to(REPO).as_posix(): blocks_of(path) for path in PAGES}
RUN_PAGES = [page for page, blocks in EXAMPLES.items() if blocks]


class Servers:
    """The servers the examples' addresses are pointed at, started on first use."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    @property
    def postgres(self) -> Any:
        return self._request.getfixturevalue("docs_postgres")

    @property
    def mariadb(self) -> Any:
        return self._request.getfixturevalue("docs_mariadb")

    def postgres_dsn(self) -> str:
        return str(self.postgres.primary.dsn())

    def substitute(self, code: str) -> str:
        """The code with the examples' database hosts replaced by the test servers'."""
        if "postgresql://" in code:
            hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.postgres.nodes)
            code = re.sub(r"(postgresql://[^@\s\"']*@)[^/\s\"'?]+", rf"\g<1>{hosts}", code)
        if "mysql://" in code or 'host="db1"' in code:
            pair = self.mariadb
            hosts = ",".join(f"127.0.0.1:{node.port}" for node in pair.nodes)
            code = re.sub(r"(mysql://[^@\s\"']*@)[^/\s\"'?]+", rf"\g<1>{hosts}", code)
            code = re.sub(
                r'host="db1", port=3306', f'host="127.0.0.1", port={pair.primary.port}', code
            )
        return code


@pytest.fixture(scope="module")
def docs_postgres() -> Iterator[Any]:
    """A primary and two standbys, user app/secret, database app, the examples' tables."""
    from qdbpool.testing.availability import require_postgres
    from qdbpool.testing.postgres import PostgresCluster

    require_postgres()
    with PostgresCluster(standbys=2, user="app", password="secret", dbname="app") as cluster:
        import psycopg

        with psycopg.connect(cluster.primary.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("CREATE TABLE orders (item text)")
            conn.execute("CREATE TABLE jobs (id int PRIMARY KEY, state text)")
            conn.execute("INSERT INTO jobs VALUES (1, 'new')")
            # The SQLAlchemy guide's create_all() finds it, and the replicas have it by the
            # time the guide reads there (a table created by the example itself may not
            # have reached them yet: replicas lag).
            conn.execute("CREATE TABLE customers (id serial PRIMARY KEY, name varchar(100))")
        cluster.wait_replicated()
        yield cluster


@pytest.fixture(scope="module")
def docs_mariadb() -> Iterator[Any]:
    """A primary and a replica, user app/secret, database app, the examples' tables."""
    from qdbpool.testing.availability import require_mariadb
    from qdbpool.testing.mariadb import MariaDBReplicaPair

    require_mariadb()
    with MariaDBReplicaPair() as pair:
        pair.create_user("app", "secret", "app")
        pair.sql("CREATE TABLE app.counters (k VARCHAR(64) PRIMARY KEY, n INT)")
        pair.sql("INSERT INTO app.counters VALUES ('hits', 0)")
        pair.sql("CREATE TABLE app.kv (k VARCHAR(64) PRIMARY KEY, v TEXT)")
        pair.wait_replicated()
        yield pair


def run_block(block: Block, namespace: dict[str, Any], bed: Servers) -> None:
    source = "\n" * (block.line - 1) + bed.substitute(block.code)  # tracebacks: the doc's lines
    # dont_inherit: this file's `from __future__ import annotations` is not the reader's.
    code = compile(
        source, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    if code.co_flags & 0x80:  # CO_COROUTINE: a top-level await
        asyncio.run(eval(code, namespace))
    else:
        exec(code, namespace)


def expected_error(block: Block) -> str | None:
    match = re.fullmatch(r"raises (\w+)", block.mark)
    return match[1] if match else None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("page", RUN_PAGES)
def test_the_examples_of_a_page_run_as_written(
    page: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mocker: Any,
) -> None:
    monkeypatch.chdir(tmp_path)
    # No quasardb server here. Specced, so that an example calling what quasardb's
    # Cluster or Table does not have fails as it would against a real server.
    cluster = mocker.patch("quasardb.Cluster", autospec=True)
    cluster.return_value.table.return_value = mocker.create_autospec(quasardb.Table, instance=True)
    bed = Servers(request)
    # A module of its own, as a reader's script is: libraries that resolve annotations
    # through sys.modules[cls.__module__] (dataclasses, SQLAlchemy's ORM) find it.
    module = types.ModuleType("__example__")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace: dict[str, Any] = module.__dict__
    namespace["bed"] = bed
    if page in PRELUDE:
        exec(PRELUDE[page], namespace)
    for block in EXAMPLES[page]:
        if block.mark.startswith("not run"):
            continue
        error = expected_error(block)
        if error is None:
            run_block(block, namespace, bed)
            continue
        with pytest.raises(Exception) as raised:
            run_block(block, namespace, bed)
        assert type(raised.value).__name__ == error, f"{block.id}: {raised.value!r}"
    for name, value in list(namespace.items()):
        if name.startswith("test_") and isinstance(value, types.FunctionType):
            value()  # the global pool, if any, is closed by the autouse no_global_pool


def test_every_mark_is_one_the_runner_knows() -> None:
    for blocks in EXAMPLES.values():
        for block in blocks:
            assert not block.mark or block.mark.startswith("not run, ") or expected_error(block), (
                f"{block.id}: unknown mark {block.mark!r}"
            )


def test_blocks_left_unrun_are_few_and_say_why() -> None:
    unrun = [b.id for blocks in EXAMPLES.values() for b in blocks if b.mark.startswith("not")]
    assert len(unrun) <= 4, unrun
