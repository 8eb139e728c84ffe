"""What the test beds promise about processes: a forked child leaves its parent's servers
alone, servers go away with the process that started them however it dies, and a
PostgreSQL-only user needs no MySQL driver.

Each scenario runs in a child Python process of its own (a script below), so that it can
exit, fork or be killed for real without touching the pytest process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qdbpool.testing._process import become_subreaper, children, process_alive, reap
from qdbpool.testing.availability import require_mariadb, require_pgbouncer, require_postgres

pytestmark = pytest.mark.timeout(90)

GONE_WITHIN = 15.0  # seconds for a killed starter's servers to go away

# Starts a server, prints what the test needs, then sleeps until it is killed.
STARTERS = {
    "postgres": """
from qdbpool.testing import _watchdog
from qdbpool.testing.postgres import PostgresCluster
c = PostgresCluster(standbys=1).start()
print(c.primary.pid, c.primary.port, c.root, _watchdog.watchdog_pid(), flush=True)
""",
    "pgbouncer": """
from qdbpool.testing import _watchdog
from qdbpool.testing.pgbouncer import PgBouncer
from qdbpool.testing.postgres import PostgresCluster
c = PostgresCluster(standbys=0).start()
b = PgBouncer(c).start()
print(b.pid, b.port, b.directory, _watchdog.watchdog_pid(), flush=True)
""",
    "mariadb": """
from qdbpool.testing import _watchdog
from qdbpool.testing.mariadb import MariaDBServer
s = MariaDBServer()
print(s.pid, s.port, s.base_dir, _watchdog.watchdog_pid(), flush=True)
""",
}


def python(script: str, stderr: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=os.getcwd(),
    )


def port_refuses(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:  # refused (or, on a busy machine, no answer): nothing serves it
            return True
    return False


def wait_for(condition: str, check: Callable[[], bool], timeout: float) -> float:
    """Poll `check()` until true, at most `timeout` seconds; return the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{condition}: not within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
def starter_reaper() -> Iterator[list[int]]:
    """Pids the test's killed starter orphaned, which come back to us: reaped at the end."""
    become_subreaper()
    orphans: list[int] = []
    yield orphans
    reap(orphans, timeout=5)


# -- a process killed by a signal takes its servers with it ------------------------------------


REQUIRE: dict[str, list[Callable[[], object]]] = {
    "postgres": [require_postgres],
    "pgbouncer": [require_postgres, require_pgbouncer],
    "mariadb": [require_mariadb],
}


@pytest.mark.parametrize("server", ["postgres", "pgbouncer", "mariadb"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_servers_go_away_when_their_starter_is_killed(
    server: str, sig: signal.Signals, starter_reaper: list[int]
) -> None:
    for require in REQUIRE[server]:
        require()
    starter = python(STARTERS[server] + "import time\ntime.sleep(60)\n")
    try:
        assert starter.stdout is not None
        pid_text, port_text, root_text, watchdog_text = starter.stdout.readline().split()
        pid, port, root = int(pid_text), int(port_text), Path(root_text)
        assert process_alive(pid) and not port_refuses(port) and root.is_dir()
        starter_reaper += [pid, *children(pid), int(watchdog_text)]
    finally:
        starter.send_signal(sig)  # no atexit, no close() under SIGKILL
        starter.wait()
    took = wait_for("server process gone", lambda: not process_alive(pid), GONE_WITHIN)
    wait_for("server port refusing", lambda: port_refuses(port), GONE_WITHIN - took)
    wait_for("scratch directory removed", lambda: not root.exists(), 5)


# -- a forked child that exits normally leaves its parent's servers alone ----------------------

# The parent starts a server, forks; the child exits normally (its interpreter runs the
# atexit hooks it inherited); the parent then checks that its server still answers.
FORK_THEN_CHECK = """
import os, sys, time
child = os.fork()
if child == 0:
    if CLOSES:
        started = time.monotonic()
        close()  # as leaving the parent's `with` block does, on the way out
        if time.monotonic() - started > 3:  # it waited for what it must leave alone
            sys.exit(3)
    sys.exit(0)  # a normal interpreter exit: atexit hooks run in the child
_, status = os.waitpid(child, 0)
assert os.waitstatus_to_exitcode(status) == 0
print(check(), flush=True)
"""

CHECKS = {
    "postgres": """
def check():
    return f"{c.primary.sql('SELECT 1')[0][0]} {c.root.is_dir()} {c.primary.data_dir.is_dir()}"
close = c.close
""",
    "mariadb": """
def check():
    return f"{s.sql('SELECT 1')[0][0]} {s.base_dir.is_dir()} {s.datadir.is_dir()}"
close = s.close
""",
}


@pytest.mark.parametrize("closes", [False, True], ids=["exits", "closes-then-exits"])
@pytest.mark.parametrize("server", ["postgres", "mariadb"])
def test_a_forked_child_exiting_normally_leaves_the_parents_servers_running(
    server: str, closes: bool
) -> None:
    # A child that leaves the parent's `with` block on its way out (a sys.exit() in it)
    # closes the servers there: their directories were deleted under the parent's servers.
    for require in REQUIRE[server]:
        require()
    script = STARTERS[server] + CHECKS[server] + f"CLOSES = {closes}\n" + FORK_THEN_CHECK
    parent = python(script, stderr=subprocess.PIPE)
    try:
        out, err = parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == 0, err
    lines = out.splitlines()
    assert lines[1] == "1 True True", err  # it answers, and its directories are still there


# -- importing a test bed needs only its own driver --------------------------------------------

POSTGRES_WITHOUT_PYMYSQL = """
import sys
sys.modules["pymysql"] = None  # any import of PyMySQL now raises ImportError
import qdbpool.testing
assert callable(qdbpool.testing.require_postgres)
from qdbpool.testing import PostgresCluster, require_postgres
from qdbpool.testing.availability import under_ci
import qdbpool.testing.postgres
try:
    qdbpool.testing.MariaDBServer
except ImportError as exc:
    print("mariadb needs:", exc.name)
print("pymysql" in sys.modules and sys.modules["pymysql"] is not None)
"""


def test_the_postgres_test_bed_imports_without_pymysql() -> None:
    child = python(POSTGRES_WITHOUT_PYMYSQL, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.splitlines() == ["mariadb needs: pymysql", "False"]


def test_unknown_names_are_attribute_errors() -> None:
    import qdbpool.testing

    with pytest.raises(AttributeError, match="no_such_thing"):
        qdbpool.testing.no_such_thing  # noqa: B018
    assert {"PostgresCluster", "MariaDBServer", "require_postgres"} <= set(dir(qdbpool.testing))


def test_a_watchdog_sees_no_work_after_a_normal_exit(tmp_path: Path) -> None:
    """A starter that exits normally closed its servers first: its watchdog kills nothing and
    exits with it (reaped, so no zombie is left)."""
    require_postgres()
    script = STARTERS["postgres"]
    starter = python(script, stderr=subprocess.PIPE)
    out, err = starter.communicate(timeout=60)
    assert starter.returncode == 0, err
    pid_text, _, root_text, watchdog_text = out.split()
    assert not process_alive(int(pid_text)) and not Path(root_text).exists()
    with contextlib.suppress(ChildProcessError):  # it was the starter's child, reaped there
        os.waitpid(int(watchdog_text), os.WNOHANG)
    assert not Path(f"/proc/{watchdog_text}").exists()


# -- a starter killed while its template is made leaves no shared memory -----------------------


def descendant_running(pid: int, argument: str) -> int | None:
    """A descendant of `pid` (to any depth) with `argument` on its command line."""
    generation, seen = {pid}, set()
    while generation:
        seen |= generation
        generation = {kid for parent in generation for kid in children(parent)} - seen
        for kid in generation:
            with contextlib.suppress(OSError):
                if argument.encode() in Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0"):
                    return kid
    return None


def segments_made_by(pid: int) -> int:
    rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return sum(1 for row in rows if int(row.split()[4]) == pid)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_starter_killed_while_initdb_runs_leaves_no_shared_memory(
    sig: signal.Signals, starter_reaper: list[int]
) -> None:
    # initdb's `postgres --single` makes a segment; the watchdog (SIGKILL) removed only
    # those of the processes it was told of (initdb itself), and an interrupted start
    # (SIGINT) none at all: one segment left per kill, until the machine reboots.
    require_postgres()
    starter = python(
        "from qdbpool.testing.postgres import PostgresCluster\n"
        "PostgresCluster(standbys=0).start()\n"
        "import time\ntime.sleep(60)\n",
        stderr=subprocess.DEVNULL,
    )
    try:
        single = None
        deadline = time.monotonic() + 60
        while single is None and time.monotonic() < deadline and starter.poll() is None:
            single = descendant_running(starter.pid, "--single")
            time.sleep(0.005)
        assert single is not None, "initdb's postgres --single never seen"
        wait_for("its segment made", lambda: segments_made_by(single) > 0, 10)
        starter_reaper.append(starter.pid)
    finally:
        starter.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            starter.wait(timeout=30)
        if starter.poll() is None:
            starter.kill()
            starter.wait()
    wait_for("postgres --single gone", lambda: not process_alive(single), GONE_WITHIN)
    wait_for("its segment removed", lambda: segments_made_by(single) == 0, GONE_WITHIN)
