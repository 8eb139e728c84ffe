"""A real PostgreSQL streaming-replication cluster on 127.0.0.1, for tests, demos and benchmarks.

    with PostgresCluster(standbys=2, user="app", password="s3cret") as cluster:
        dsn = cluster.multi_host_dsn()          # postgresql://app:s3cret@127.0.0.1:p1,...:p3/postgres
        cluster.primary.sql("CREATE TABLE t (x int)")
        cluster.wait_replicated()
        new_primary = cluster.failover()        # SIGKILL the primary, promote, re-point the rest

Choices, and why:

* Servers are our own children (`postgres -D ...`, never `pg_ctl start`): PID 1 here does not
  reap orphans, and a zombie postmaster keeps its data directory locked forever.
* When we run as root the servers run as the OS user `postgres` through `setpriv`, which execs
  in place. `runuser` would stay in between as a watching parent, so the pid we hold would not
  be the postmaster's and a fast-shutdown signal would not reach it as such.
* Everything lives on tmpfs with fsync off: a 3-node cluster starts in about 0.4 s here.
  `initdb` runs once per process; every node of every cluster starts as a copy of that
  template, standbys included (a copy of a cleanly shut down data directory is a valid base
  backup, and pg_basebackup was the slowest step by far). Only `rebuild_standby`, which needs
  the current primary's data, runs pg_basebackup.
* Authentication: the test bed itself talks to each node over its Unix socket, in a directory
  only the server user (and root) can enter, with `trust`. Standbys stream over loopback TCP as
  the superuser `postgres`, also `trust`. Clients over TCP get `trust` too, unless the cluster
  has a password: then every TCP client login needs SCRAM, so a wrong password really fails.
* A postmaster's children each call setsid(), so killing the postmaster's process group does
  not reach them. `kill()` freezes the postmaster, SIGKILLs its children and then it, and reaps
  them all (this process becomes a child subreaper so that the orphans come back to us).
* Every cluster directory is named after the pid that made it; a later run removes directories
  (and kills servers) left behind by a process that died without cleaning up.

Not thread-safe: drive a cluster from one thread. `Node.sql` opens its own connection per call.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import glob
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql as pgsql
from psycopg.abc import Params

from qdbpool.testing._process import (
    LOOPBACK,
    ChildProcess,
    ServerUnavailable,
    chown_to,
    find_binary,
    free_port,
    scratch_root,
    wait_until,
)

__all__ = [
    "Node",
    "PostgresCluster",
    "Role",
    "ServerUnavailable",
    "find_postgres_bindir",
    "process_alive",
    "sweep_stale_clusters",
]

log = logging.getLogger("qdbpool.testing")

Role = Literal["primary", "standby", "retired"]
StopMode = Literal["smart", "fast", "immediate"]
SqlText = str | pgsql.SQL | pgsql.Composed  # what Node.sql accepts

ADMIN_USER = "postgres"  # the superuser initdb creates; the test bed's own connections use it
ADMIN_DB = "postgres"  # always there, on every node, unlike the cluster's own database
SERVER_OS_USER = "postgres"  # who owns data directories and runs servers when we are root
DIR_PREFIX = "qdbpool-pg-"  # scratch directories are named DIR_PREFIX + creator pid + "-..."

_SHUTDOWN_SIGNALS: dict[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,  # waits for clients to leave
    "fast": signal.SIGINT,  # disconnects clients, checkpoints, exits
    "immediate": signal.SIGQUIT,  # no checkpoint: crash recovery at next start
}

# Appended to the template's postgresql.conf, so every node (and every base backup) has it.
# The port is not here: it goes on each node's command line.
_BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": LOOPBACK,
    # Durability buys nothing for a throwaway cluster and costs a lot on these disks.
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    # With asynchronous commit the walwriter decides when WAL reaches the standbys;
    # a short delay keeps replication lag at a few milliseconds.
    "wal_writer_delay": "10ms",
    "shared_buffers": "32MB",
    "max_connections": "100",
    "jit": "off",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "64MB",  # a standby restarted later still finds the WAL it needs
    "hot_standby": "on",
    "hot_standby_feedback": "on",  # queries on standbys are not cancelled by vacuum on the primary
    "wal_receiver_status_interval": "1s",  # pg_stat_replication's positions stay fresh
    # A standby whose primary went away retries every 5 s by default; tests want fast repair.
    "wal_retrieve_retry_interval": "100ms",
    # Detect a silent (stalled, not closed) replication peer in seconds rather than a minute.
    "wal_receiver_timeout": "5s",
    "wal_sender_timeout": "5s",
    "logging_collector": "off",  # logs go to stderr, which each node writes to its own file
    # Dynamic shared memory as files in the data directory rather than in /dev/shm, where a
    # killed server would leave them behind for good.
    "dynamic_shared_memory_type": "mmap",
}


# --------------------------------------------------------------------------------------------
# Finding and running the server binaries
# --------------------------------------------------------------------------------------------


def _version_key(bindir: str) -> tuple[int, ...]:
    """Sort key for /usr/lib/postgresql/<version>/bin: newest version first after reverse."""
    version = Path(bindir).parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version))


@functools.lru_cache(maxsize=1)
def find_postgres_bindir() -> Path:
    """The directory of `postgres`, `initdb` and `pg_basebackup` (all three from one version).

    Looks where `pg_config --bindir` says, then in /usr/lib/postgresql/*/bin (newest first),
    then on PATH. Raises ServerUnavailable naming what is missing.
    """
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(done.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    try:
        bindir = Path(find_binary("postgres", *candidates)).parent
    except ServerUnavailable as exc:
        raise ServerUnavailable(
            f"the PostgreSQL server is not installed ({exc}); "
            "install it, e.g. `apt-get install postgresql`"
        ) from None
    # Mixing tools of two major versions fails in confusing ways, so all come from one place.
    missing = [tool for tool in ("initdb", "pg_basebackup") if not (bindir / tool).is_file()]
    if missing:
        raise ServerUnavailable(f"{', '.join(missing)} not found next to {bindir / 'postgres'}")
    return bindir


def _server_user_prefix() -> list[str]:
    """Command prefix that runs a server tool as SERVER_OS_USER when we are root.

    PostgreSQL refuses to run as root. `setpriv` switches user and then execs the tool itself,
    so the pid we start is the postmaster's own.
    """
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise ServerUnavailable(
            f"running as root needs an OS user {SERVER_OS_USER!r} to run PostgreSQL"
        ) from None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise ServerUnavailable("running as root needs `setpriv` (util-linux) to drop to postgres")
    return [
        setpriv,
        f"--reuid={SERVER_OS_USER}",
        f"--regid={SERVER_OS_USER}",
        "--init-groups",
        "--",
    ]


def _server_env() -> dict[str, str]:
    """Our environment minus libpq's PG* variables, which would silently redirect the tools."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _run_tools(commands: Sequence[Sequence[str]], *, logs: Sequence[Path], timeout: float) -> None:
    """Run one-shot server tools side by side (base backups overlap well); fail on any error."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for argv, log_path in zip(commands, logs, strict=True):
            with open(log_path, "ab") as out:
                procs.append(
                    subprocess.Popen(
                        [*_server_user_prefix(), *argv],
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=_server_env(),
                    )
                )
        deadline = _Deadline(timeout)
        for proc, argv, log_path in zip(procs, commands, logs, strict=True):
            code = proc.wait(timeout=deadline.left())
            if code != 0:
                tail = _tail(log_path)
                raise RuntimeError(f"{Path(argv[0]).name} failed with exit code {code}:\n{tail}")
    finally:
        for proc in procs:  # on error or timeout: nothing may outlive us
            if proc.poll() is None:
                proc.kill()
            proc.wait()


class _Deadline:
    """Seconds left until a fixed point in time, for several waits sharing one budget."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self._end - time.monotonic())


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _conf_value(value: object) -> str:
    """A postgresql.conf value: booleans as on/off, everything quoted."""
    if isinstance(value, bool):
        value = "on" if value else "off"
    return "'" + str(value).replace("'", "''") + "'"


def _append_settings(conf: Path, settings: Mapping[str, object], why: str) -> None:
    lines = [f"\n# {why}\n"] + [f"{name} = {_conf_value(v)}\n" for name, v in settings.items()]
    with open(conf, "a", encoding="utf-8") as f:
        f.writelines(lines)


# --------------------------------------------------------------------------------------------
# The initdb template: once per process, copied for every cluster
# --------------------------------------------------------------------------------------------

_template_lock = threading.Lock()
_templates: dict[Path, Path] = {}  # bindir -> template data directory


def _new_scratch_dir(kind: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-{kind}", dir=scratch_root()))
    chown_to(path, SERVER_OS_USER)
    return path


def _template(bindir: Path) -> Path:
    """A freshly initdb'ed, never started data directory with our settings, made once."""
    with _template_lock:
        cached = _templates.get(bindir)
        if cached is not None and (cached / "PG_VERSION").is_file():
            return cached
        holder = _new_scratch_dir("template-")
        data = holder / "data"
        argv = [
            str(bindir / "initdb"),
            f"--pgdata={data}",
            f"--username={ADMIN_USER}",
            "--auth=trust",  # replaced by each cluster's own pg_hba.conf
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
            # 1 MB WAL segments instead of 16: every copy of the template is 15 MB smaller.
            "--wal-segsize=1",
        ]
        _run_tools([argv], logs=[holder / "initdb.log"], timeout=120)
        _append_settings(data / "postgresql.conf", _BASE_SETTINGS, "qdbpool.testing")
        _templates[bindir] = data
        return data


def _remove_templates() -> None:
    with _template_lock:
        for data in _templates.values():
            shutil.rmtree(data.parent, ignore_errors=True)
        _templates.clear()


# --------------------------------------------------------------------------------------------
# Processes: killing a postmaster together with its children, and reaping them
# --------------------------------------------------------------------------------------------


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; the fields after the last ')' do not.
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def process_alive(pid: int) -> bool:
    """True while `pid` is a running process (a zombie is not running)."""
    state = _proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            state = _proc_state(int(name))
            if state is not None and state[1] == pid:
                kids.append(int(name))
    return kids


@functools.lru_cache(maxsize=1)
def _become_subreaper() -> bool:
    """Make orphaned descendants (a killed postmaster's children) our children, to reap them.

    Process-wide and harmless: without it those orphans go to PID 1, which never reaps them
    here, and each leaves a zombie behind (pid_max is 32768 on these machines).
    """
    if sys.platform != "linux":
        return False
    pr_set_child_subreaper = 36
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0)
    return False


def _kill_postmaster_tree(pid: int) -> list[int]:
    """SIGKILL a postmaster and all its children at once; return the children's pids.

    The postmaster is frozen first so that it can neither fork a new backend nor react to its
    children dying (it would start crash recovery) while we list and kill them.
    """
    _become_subreaper()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)

    def frozen_or_gone() -> bool:
        state = _proc_state(pid)
        return state is None or state[0] in ("T", "t", "Z", "X")

    with contextlib.suppress(TimeoutError):  # SIGKILL below works whatever its state
        wait_until(frozen_or_gone, timeout=5, interval=0.001, what=f"postmaster {pid} stopped")
    kids = _children(pid)
    for victim in [*kids, pid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
    return kids


def _reap(pids: Iterable[int], timeout: float = 10.0) -> None:
    """Collect the exit status of killed descendants that came back to us (best effort)."""
    pending = set(pids)

    def all_reaped() -> bool:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (no subreaper) or already collected
                done = pid
            if done:
                pending.discard(pid)
        return not pending

    try:
        wait_until(all_reaped, timeout=timeout, interval=0.005, what="killed backends reaped")
    except TimeoutError:
        log.warning("could not reap PostgreSQL backends %s", sorted(pending))


def sweep_stale_clusters(root: Path | None = None) -> list[Path]:
    """Kill servers and remove directories left behind by test processes that died uncleanly.

    Only directories named for a process that no longer runs are touched, and only servers
    whose command line names such a directory are killed. Returns the directories removed.
    """
    root = root or scratch_root()
    removed: list[Path] = []
    for entry in root.iterdir():
        match = re.match(rf"{re.escape(DIR_PREFIX)}(\d+)-", entry.name)
        if match is None or not entry.is_dir():
            continue
        owner = int(match[1])
        if owner == os.getpid() or process_alive(owner):
            continue
        for pidfile in entry.glob("*/postmaster.pid"):
            _kill_stale_server(pidfile)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _kill_stale_server(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return  # no such process any more
    if str(pidfile.parent).encode() in cmdline and process_alive(pid):
        log.warning("killing PostgreSQL %s left running by a dead process", pid)
        kids = _kill_postmaster_tree(pid)
        # Orphans normally belong to PID 1; if we are a subreaper they are ours to collect.
        # The postmaster first: only once it is gone do its children become ours.
        _reap([pid], timeout=2)
        _reap(kids, timeout=2)
    _release_shared_memory(pidfile.parent)


def _release_shared_memory(data_dir: Path) -> None:
    """Remove the SysV segment a killed postmaster leaves behind, before its data goes.

    A restart on the same directory would reclaim it; once the directory is deleted nothing
    will, and each one counts against the system's limit. Only a segment created by the
    postmaster named in the directory's postmaster.pid, with nothing attached, is removed.
    """
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, shmid = int(lines[0]), int(lines[6].split()[1])
        table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except (OSError, IndexError, ValueError):
        return  # shut down cleanly (no pid file), or not Linux
    for row in table:
        # Columns: key shmid perms size cpid lpid nattch ...
        fields = row.split()
        if int(fields[1]) == shmid and int(fields[4]) == pid and int(fields[6]) == 0:
            ipc_rmid = 0
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).shmctl(shmid, ipc_rmid, None)


# --------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------


def _url(
    user: str,
    password: str | None,
    hosts: Sequence[tuple[str, int]],
    dbname: str,
    params: Mapping[str, object],
) -> str:
    userinfo = quote(user, safe="")
    if password:
        userinfo += ":" + quote(password, safe="")
    netloc = ",".join(f"{host}:{port}" for host, port in hosts)
    query = ("?" + urlencode({k: str(v) for k, v in params.items()})) if params else ""
    return f"postgresql://{userinfo}@{netloc}/{quote(dbname, safe='')}{query}"


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------


class Node:
    """One PostgreSQL server of a cluster: its own data directory, port and postmaster."""

    host = LOOPBACK

    def __init__(self, cluster: PostgresCluster, name: str, role: Role) -> None:
        self.cluster = cluster
        self.name = name
        self.role: Role = role
        self.data_dir = cluster.root / name
        self.log_path = cluster.root / f"{name}.log"
        self.port = free_port(LOOPBACK)
        # The node this standby streams from (None for a primary).
        self.upstream: Node | None = None
        self._proc: ChildProcess | None = None
        self._started_once = False

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "down"
        return f"<Node {self.name} {self.role} {self.host}:{self.port} {state}>"

    # -- state ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.running() else None

    def backend_pids(self) -> list[int]:
        """The postmaster's current children (checkpointer, walsenders, backends ...)."""
        pid = self.pid
        return _children(pid) if pid is not None else []

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    # -- connecting ----------------------------------------------------------------------------

    def dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str | None = None,
        **params: object,
    ) -> str:
        """A libpq URL for this node over TCP; defaults to the cluster's user and password.

        Pass password="" for a URL without one.
        """
        user, password = self.cluster._credentials(user, password)
        return _url(user, password, [(self.host, self.port)], dbname or self.cluster.dbname, params)

    def sql(
        self,
        query: SqlText,
        params: Params | None = None,
        *,
        dbname: str | None = None,
        timeout: float = 30.0,
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser over the Unix socket (autocommit); return its rows.

        A server-side statement_timeout bounds it, so a test can never hang here.
        """
        with self._admin_connection(dbname, statement_timeout=timeout) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

    def _admin_sql(
        self, query: SqlText, params: Params | None = None, timeout: float = 30.0
    ) -> list[tuple[Any, ...]]:
        """The test bed's own statements: in the admin database, which every node has."""
        return self.sql(query, params, dbname=ADMIN_DB, timeout=timeout)

    def _admin_connection(
        self,
        dbname: str | None = None,
        *,
        statement_timeout: float = 30.0,
        **gucs: str,
    ) -> psycopg.Connection[tuple[Any, ...]]:
        settings = {"statement_timeout": f"{int(statement_timeout * 1000)}", **gucs}
        options = " ".join(f"-c {name}={value}" for name, value in settings.items())
        return psycopg.connect(
            host=str(self.cluster.socket_dir),
            port=self.port,
            user=ADMIN_USER,
            dbname=dbname or self.cluster.dbname,
            autocommit=True,
            connect_timeout=5,
            options=options,
        )

    def is_in_recovery(self) -> bool:
        """True on a standby (the server's own view, not the test bed's bookkeeping)."""
        return bool(self._admin_sql("SELECT pg_is_in_recovery()")[0][0])

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Start the postmaster on this node's port; return once it accepts connections."""
        if self.running:
            return
        self._launch()
        self._await_started(timeout)

    def _launch(self) -> None:
        """Start the postmaster without waiting for it (the cluster starts nodes side by side)."""
        argv = [
            *_server_user_prefix(),
            str(self.cluster.bindir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-k", str(self.cluster.socket_dir),
            "-c", f"cluster_name={self.name}",  # names the processes in ps output
        ]  # fmt: skip
        self._proc = ChildProcess(argv, log_path=self.log_path, env=_server_env())

    def _await_started(self, timeout: float | None) -> None:
        timeout = timeout if timeout is not None else self.cluster.startup_timeout
        # A free port we picked can be taken by someone else before the server binds it: pick
        # another then, but only at the first start; later starts must keep the node's port.
        retries = 0 if self._started_once else 2
        while not self._await_ready(timeout):
            if retries == 0 or "could not bind" not in self.log_tail(10):
                raise RuntimeError(f"PostgreSQL {self.name} did not start:\n{self.log_tail()}")
            retries -= 1
            self.port = free_port(LOOPBACK)
            self._launch()
        self._started_once = True

    def _await_ready(self, timeout: float) -> bool:
        """True once the launched postmaster accepts connections, False if it exited."""
        proc = self._proc
        assert proc is not None, "_launch() first"
        try:
            outcome = wait_until(
                lambda: self._startup_outcome(proc),
                timeout=timeout,
                interval=0.005,
                what=f"PostgreSQL {self.name} accepting connections",
            )
        except BaseException:
            self._kill_process()
            raise
        if outcome == "exited":
            proc.wait(timeout=10)
            return False
        return True

    def _startup_outcome(self, proc: ChildProcess) -> str | None:
        """'ready' once the postmaster accepts connections, 'exited' if it died, else None."""
        if not proc.running():
            return "exited"
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        # Line 1 is the pid (a stale file from a killed run names another); line 8 the status.
        if (
            len(lines) >= 8
            and lines[0] == str(proc.pid)
            and lines[7].strip() in ("ready", "standby")
        ):
            return "ready"
        return None

    def stop(self, mode: StopMode = "fast", timeout: float = 30.0) -> None:
        """Shut down cleanly ("fast" by default), SIGKILL after `timeout`; always reaps."""
        proc = self._proc
        if proc is None:
            return
        self._signal(_SHUTDOWN_SIGNALS[mode])
        if proc.wait(timeout=timeout) is None:
            log.warning("PostgreSQL %s ignored a %s shutdown; killing it", self.name, mode)
            self._kill_process()

    def _signal(self, sig: int) -> None:
        """Signal the postmaster alone, if it still runs (never pid 0: our own group)."""
        pid = self.pid
        if pid is not None and pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill(self) -> None:
        """Crash the node: SIGKILL the postmaster and every child of it, then reap them all."""
        self._kill_process()

    def _kill_process(self) -> None:
        proc = self._proc
        if proc is None:
            return
        kids = _kill_postmaster_tree(proc.pid) if proc.running() else []
        proc.wait(timeout=10)
        _reap(kids)

    def restart(self, mode: StopMode = "fast") -> None:
        self.stop(mode)
        self.start()

    # -- replication ---------------------------------------------------------------------------

    def promote(self, timeout: float = 30.0) -> None:
        """Turn this standby into a primary; returns once it accepts writes."""
        promoted = self._admin_sql(
            "SELECT pg_promote(true, %s)", [int(timeout)], timeout=timeout + 5
        )
        if not promoted[0][0]:
            raise RuntimeError(
                f"{self.name} was not promoted within {timeout}s:\n{self.log_tail()}"
            )
        self.cluster._promoted(self)

    def repoint(self, new_primary: Node, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Make this standby stream from `new_primary` (no restart needed since PostgreSQL 13).

        With recovery_target_timeline 'latest' (the default) it follows the promoted node onto
        its new timeline, provided it had not received more WAL than the promoted node had.
        """
        if new_primary is self:
            raise ValueError(f"{self.name} cannot stream from itself")
        conninfo = self.cluster._replication_conninfo(new_primary, self.name)
        self._admin_sql(
            pgsql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(pgsql.Literal(conninfo))
        )
        self._admin_sql("SELECT pg_reload_conf()")
        self.upstream = new_primary
        if wait:
            self.cluster._wait_streaming([self], timeout)

    def set_read_only(self, read_only: bool = True, timeout: float = 10.0) -> None:
        """Make new transactions read-only (SQLSTATE 25006 on writes) or writable again.

        Returns once new sessions see the setting. Existing sessions pick it up at their next
        statement (the server processes a configuration reload before executing a command);
        a transaction already open keeps the mode it began with.
        """
        value = "on" if read_only else "off"
        self._admin_sql(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
        self._admin_sql("SELECT pg_reload_conf()")
        # pg_reload_conf() only signals the postmaster; wait until it has re-read the files.
        # The postmaster signals its children in the same step, before forking new sessions.
        wait_until(
            lambda: self._admin_sql("SHOW default_transaction_read_only")[0][0] == value,
            timeout=timeout,
            interval=0.005,
            what=f"{self.name} default_transaction_read_only={value}",
        )

    def replay_lsn(self) -> int | None:
        """How far this standby has replayed (None on a primary)."""
        text = self._admin_sql("SELECT pg_last_wal_replay_lsn()::text")[0][0]
        return _lsn(text) if text else None

    def receive_lsn(self) -> int | None:
        """How much WAL this standby has received from its upstream (None on a primary)."""
        text = self._admin_sql("SELECT pg_last_wal_receive_lsn()::text")[0][0]
        return _lsn(text) if text else None


# --------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------

_live_clusters: dict[int, PostgresCluster] = {}
_live_lock = threading.Lock()
_swept = False


def _close_all_at_exit() -> None:
    """Safety net: never leave a server running when the interpreter exits."""
    with _live_lock:
        clusters = list(_live_clusters.values())
    for cluster in clusters:
        with contextlib.suppress(Exception):
            cluster.close()
    _remove_templates()


atexit.register(_close_all_at_exit)


class PostgresCluster:
    """One primary and `standbys` streaming standbys on 127.0.0.1; a context manager.

    `user` is the role clients use (created if it is not the superuser, with LOGIN, CREATEDB,
    pg_monitor and CREATE on the database's public schema); with a `password` every TCP login
    needs SCRAM. `dbname` is created owned by `user` unless it is "postgres". `settings` are
    extra postgresql.conf entries for every node.
    """

    def __init__(
        self,
        standbys: int = 2,
        *,
        user: str = ADMIN_USER,
        password: str | None = None,
        dbname: str = "postgres",
        settings: Mapping[str, object] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if standbys < 0:
            raise ValueError("standbys must be >= 0")
        self.user = user
        self.password = password
        self.dbname = dbname
        self.settings = dict(settings or {})
        self.startup_timeout = startup_timeout
        self._standby_count = standbys
        self.nodes: list[Node] = []
        self._primary: Node | None = None
        self._closed = False
        self._root: Path | None = None
        self.bindir = find_postgres_bindir()

    def __repr__(self) -> str:
        return f"<PostgresCluster {self.nodes!r}>"

    # -- layout --------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The scratch directory holding every node's data directory, logs and sockets."""
        if self._root is None:
            raise RuntimeError("the cluster has not been started")
        return self._root

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def primary(self) -> Node:
        if self._primary is None:
            raise RuntimeError("the cluster has no primary (not started?)")
        return self._primary

    @property
    def standbys(self) -> list[Node]:
        return [node for node in self.nodes if node.role == "standby"]

    # -- start and close -----------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        """Bring every node up and wait until all standbys stream. Cleans up on failure."""
        if self._root is not None:
            raise RuntimeError("a PostgresCluster can be started once")
        global _swept
        if not _swept:
            _swept = True
            sweep_stale_clusters()
        with _live_lock:
            _live_clusters[id(self)] = self
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        template = _template(self.bindir)
        self._root = _new_scratch_dir("")
        os.chmod(self._root, 0o700)
        self.socket_dir.mkdir(mode=0o700)

        primary = Node(self, "node0", "primary")
        standbys = [Node(self, f"node{i}", "standby") for i in range(1, self._standby_count + 1)]
        self.nodes = [primary, *standbys]
        self._primary = primary
        # Every node starts as a copy of the same never-started template. A copy of a cleanly
        # shut down data directory is a valid base backup, and its WAL is exactly where the
        # primary's continues, so the standbys need no pg_basebackup (the slowest step by far).
        for node in self.nodes:
            shutil.copytree(template, node.data_dir)
            self._write_hba(node.data_dir)
            if self.settings:
                _append_settings(node.data_dir / "postgresql.conf", self.settings, "test settings")
        for node in standbys:
            self._configure_standby(node, primary)
        chown_to(self._root, SERVER_OS_USER)

        for node in self.nodes:  # side by side: each takes tens of milliseconds to come up
            node._launch()
        primary_port = primary.port
        for node in self.nodes:
            node._await_started(None)
        if primary.port != primary_port:  # it had to move to another port
            for node in standbys:
                node.repoint(primary, wait=False)
        self._create_roles()
        self._wait_streaming(standbys, self.startup_timeout)
        # The roles and database just made must be usable on the standbys too.
        self.wait_replicated(self.startup_timeout)

    def _configure_standby(self, node: Node, upstream: Node) -> None:
        # Written by hand rather than by pg_basebackup --write-recovery-conf, whose conninfo
        # names root's ~/.pgpass and every libpq default; ours is short and names the node.
        (node.data_dir / "standby.signal").touch()
        _append_settings(
            node.data_dir / "postgresql.auto.conf",
            {"primary_conninfo": self._replication_conninfo(upstream, node.name)},
            "standby of " + upstream.name,
        )
        node.role = "standby"
        node.upstream = upstream

    def _write_hba(self, data_dir: Path) -> None:
        client_auth = "scram-sha-256" if self.password else "trust"
        (data_dir / "pg_hba.conf").write_text(
            "# Written by qdbpool.testing for a throwaway cluster.\n"
            "# The test bed itself: Unix socket in a directory only the server user can enter.\n"
            "local  all          all                     trust\n"
            "# Standbys stream from the primary over loopback as the superuser.\n"
            f"host   replication  {ADMIN_USER}  127.0.0.1/32  trust\n"
            "# Clients: a password when the cluster has one, so wrong credentials really fail.\n"
            f"host   all          all       127.0.0.1/32  {client_auth}\n"
        )

    def _create_roles(self) -> None:
        primary = self.primary
        user = pgsql.Identifier(self.user)
        if self.user != ADMIN_USER:
            primary._admin_sql(
                pgsql.SQL("CREATE ROLE {} LOGIN CREATEDB IN ROLE pg_monitor").format(user)
            )
        if self.password:
            primary._admin_sql(
                pgsql.SQL("ALTER ROLE {} PASSWORD {}").format(user, pgsql.Literal(self.password))
            )
        if self.dbname != "postgres":
            primary._admin_sql(
                pgsql.SQL("CREATE DATABASE {} OWNER {}").format(pgsql.Identifier(self.dbname), user)
            )
        elif self.user != ADMIN_USER:
            primary._admin_sql(pgsql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(user))

    def close(self) -> None:
        """Stop every node by its own pid (all at once) and remove the data directories.

        Safe to call twice, and after a failed or partial start.
        """
        if self._closed:
            return
        self._closed = True
        try:
            # Immediate shutdown: no checkpoint to wait for, the data is thrown away anyway.
            # Signal all first so that the nodes shut down in parallel.
            for node in self.nodes:
                node._signal(signal.SIGQUIT)
            for node in self.nodes:
                node.stop("immediate", timeout=10)
                _release_shared_memory(node.data_dir)
        finally:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
            with _live_lock:
                _live_clusters.pop(id(self), None)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- URLs ----------------------------------------------------------------------------------

    def _credentials(self, user: str | None, password: str | None) -> tuple[str, str | None]:
        """Default to the cluster's user; its password only goes with its own name."""
        user = user or self.user
        if password is None and user == self.user:
            password = self.password
        return user, password or None

    def multi_host_dsn(
        self,
        user: str | None = None,
        password: str | None = None,
        dbname: str | None = None,
        *,
        nodes: Sequence[Node] | None = None,
        **params: object,
    ) -> str:
        """postgresql://user:pw@127.0.0.1:p1,127.0.0.1:p2,.../dbname over `nodes` (all)."""
        user, password = self._credentials(user, password)
        hosts = [(node.host, node.port) for node in (nodes if nodes is not None else self.nodes)]
        return _url(user, password, hosts, dbname or self.dbname, params)

    def _replication_conninfo(self, upstream: Node, application_name: str) -> str:
        # application_name lets the primary's pg_stat_replication say which node is which.
        return (
            f"host={upstream.host} port={upstream.port} user={ADMIN_USER} "
            f"application_name={application_name} connect_timeout=2"
        )

    # -- replication ---------------------------------------------------------------------------

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Wait until every running standby streams from its upstream."""
        self._wait_streaming([node for node in self.standbys if node.running], timeout)

    def _wait_streaming(self, standbys: Sequence[Node], timeout: float) -> None:
        by_upstream: dict[Node, set[str]] = {}
        for node in standbys:
            if node.upstream is None:
                raise RuntimeError(f"{node.name} has no upstream to stream from")
            by_upstream.setdefault(node.upstream, set()).add(node.name)
        for upstream, names in by_upstream.items():

            def streaming(upstream: Node = upstream, names: set[str] = names) -> bool:
                rows = upstream._admin_sql(
                    "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
                )
                return names <= {row[0] for row in rows}

            try:
                wait_until(streaming, timeout=timeout, interval=0.01, what="standbys streaming")
            except TimeoutError as exc:
                logs = "\n".join(f"--- {n.name}:\n{n.log_tail(10)}" for n in standbys)
                raise TimeoutError(
                    f"{sorted(names)} not streaming from {upstream.name}: {exc}\n{logs}"
                ) from None

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until every running standby has replayed everything committed on the primary."""
        with self.primary._admin_connection(
            ADMIN_DB, synchronous_commit="on", default_transaction_read_only="off"
        ) as conn:
            # A barrier: a transaction that writes WAL and commits synchronously flushes all
            # WAL before it, including asynchronous commits still waiting for the walwriter.
            # (Taking an xid is not enough: a transaction that wrote no WAL of its own commits
            # asynchronously whatever synchronous_commit says.) Everything committed so far is
            # then below the flush position, which is what walsenders send.
            conn.execute("SELECT pg_logical_emit_message(true, 'qdbpool.testing', 'barrier')")
            row = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        if row is None:
            raise RuntimeError("pg_current_wal_flush_lsn() returned nothing")
        target = _lsn(row[0])
        for node in self.standbys:
            if node.running:

                def caught_up(node: Node = node) -> bool:
                    return (node.replay_lsn() or 0) >= target

                wait_until(
                    caught_up, timeout=timeout, interval=0.005, what=f"{node.name} at {row[0]}"
                )

    def _promoted(self, node: Node) -> None:
        old = self._primary
        if old is not None and old is not node:
            old.role = "retired"  # it may still run: starting it again makes a split brain
        node.role = "primary"
        node.upstream = None
        self._primary = node

    def failover(self, to: Node | None = None, *, timeout: float = 30.0) -> Node:
        """What an orchestrator does when the primary dies: kill it, promote, re-point the rest.

        Promotes `to`, or else the standby that received the most WAL (only that one can be
        followed by all the others). Returns the new primary once every standby streams from it.
        """
        candidates = [node for node in self.standbys if node.running]
        if not candidates:
            raise RuntimeError("no running standby to promote")
        if to is not None and to not in candidates:
            raise ValueError(f"{to.name} is not a running standby")
        self.primary.kill()
        target = to or max(candidates, key=lambda node: node.receive_lsn() or 0)
        target.promote(timeout)
        others = [node for node in candidates if node is not target]
        for node in others:
            node.repoint(target, wait=False)
        self._wait_streaming(others, timeout)
        return target

    def rebuild_standby(self, node: Node, *, timeout: float = 30.0) -> None:
        """Throw away `node`'s data and make it a fresh standby of the current primary.

        Brings a retired (failed) primary back into the cluster after a failover; it keeps
        its name and port.
        """
        primary = self.primary
        if node is primary:
            raise ValueError(f"{node.name} is the primary")
        node.kill()
        _release_shared_memory(node.data_dir)
        shutil.rmtree(node.data_dir, ignore_errors=True)
        argv = [
            str(self.bindir / "pg_basebackup"),
            f"--pgdata={node.data_dir}",
            f"--dbname={self._replication_conninfo(primary, node.name)}",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-sync",
            "--no-manifest",  # its checksums cost time and nobody verifies this backup
        ]
        _run_tools([argv], logs=[self.root / f"{node.name}.basebackup.log"], timeout=timeout)
        # The copy carries the primary's own postgresql.auto.conf; our settings come after.
        self._configure_standby(node, primary)
        chown_to(node.data_dir, SERVER_OS_USER)
        node.start(timeout)
        self._wait_streaming([node], timeout)
