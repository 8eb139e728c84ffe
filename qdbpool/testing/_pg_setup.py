"""Setting up PostgreSQL for the test bed: the server binaries, the user and environment the
tools run with, the settings every node gets, and the initdb template every node copies."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import pwd
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote, urlencode

from qdbpool.testing._child import ChildProcess
from qdbpool.testing._process import (
    LOOPBACK,
    ServerUnavailable,
    chown_to,
    close_at_exit,
    find_binary,
)
from qdbpool.testing._watchdog import remove_scratch_dir, scratch_dir

ADMIN_USER = "postgres"  # the superuser initdb creates; the test bed's own connections use it
ADMIN_DB = "postgres"  # always there, on every node, unlike the cluster's own database
SERVER_OS_USER = "postgres"  # who owns data directories and runs servers when we are root
DIR_PREFIX = "qdbpool-pg-"  # scratch directories are named DIR_PREFIX + creator pid + "-..."

# Appended to the template's postgresql.conf, so every node (and every base backup) has it.
# The port is not here: it goes on each node's command line.
BASE_SETTINGS: dict[str, str] = {
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


def server_user_prefix() -> list[str]:
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


def server_env() -> dict[str, str]:
    """Our environment minus libpq's PG* variables, which would silently redirect the tools."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def run_tools(commands: Sequence[Sequence[str]], *, logs: Sequence[Path], timeout: float) -> None:
    """Run one-shot server tools side by side (base backups overlap well); fail on any error."""
    deadline = time.monotonic() + timeout  # one budget for them all
    procs: list[ChildProcess] = []
    try:
        for argv, log_path in zip(commands, logs, strict=True):
            procs.append(
                ChildProcess([*server_user_prefix(), *argv], log_path=log_path, env=server_env())
            )
        for proc, argv in zip(procs, commands, strict=True):
            code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            name = Path(argv[0]).name
            if code is None:
                raise TimeoutError(f"{name} did not finish within {timeout}s")
            if code != 0:
                raise RuntimeError(f"{name} failed with exit code {code}:\n{proc.log_tail()}")
    finally:
        for proc in procs:  # on error or timeout: nothing may outlive us
            proc.kill()


def conf_value(value: object) -> str:
    """A postgresql.conf value: booleans as on/off, everything quoted."""
    if isinstance(value, bool):
        value = "on" if value else "off"
    return "'" + str(value).replace("'", "''") + "'"


def append_settings(conf: Path, settings: Mapping[str, object], why: str) -> None:
    lines = [f"\n# {why}\n"] + [f"{name} = {conf_value(v)}\n" for name, v in settings.items()]
    with open(conf, "a", encoding="utf-8") as f:
        f.writelines(lines)


# --------------------------------------------------------------------------------------------
# The initdb template: once per process, copied for every cluster
# --------------------------------------------------------------------------------------------

_template_lock = threading.Lock()
_templates: dict[Path, Path] = {}  # bindir -> template data directory


def new_scratch_dir(kind: str) -> Path:
    """A directory for a cluster or template, owned by the server user, swept if we die."""
    path = scratch_dir(DIR_PREFIX, kind)
    chown_to(path, SERVER_OS_USER)
    return path


def template(bindir: Path) -> Path:
    """A freshly initdb'ed, never started data directory with our settings, made once."""
    with _template_lock:
        cached = _templates.get(bindir)
        if cached is not None and (cached / "PG_VERSION").is_file():
            return cached
        holder = new_scratch_dir("template-")
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
        run_tools([argv], logs=[holder / "initdb.log"], timeout=120)
        append_settings(data / "postgresql.conf", BASE_SETTINGS, "qdbpool.testing")
        if not _templates:
            close_at_exit(_remove_templates, _remove_templates)
        _templates[bindir] = data
        return data


def _remove_templates() -> None:
    with _template_lock:
        for data in _templates.values():
            remove_scratch_dir(data.parent)
        _templates.clear()


# --------------------------------------------------------------------------------------------
# URLs and WAL positions
# --------------------------------------------------------------------------------------------


def url(
    user: str,
    password: str | None,
    hosts: Sequence[tuple[str, int]],
    dbname: str,
    params: Mapping[str, object],
) -> str:
    """postgresql://user:password@host:port,.../dbname?params, every part percent-encoded."""
    userinfo = quote(user, safe="")
    if password:
        userinfo += ":" + quote(password, safe="")
    netloc = ",".join(f"{host}:{port}" for host, port in hosts)
    query = ("?" + urlencode({k: str(v) for k, v in params.items()})) if params else ""
    return f"postgresql://{userinfo}@{netloc}/{quote(dbname, safe='')}{query}"


def lsn(text: str) -> int:
    """A WAL position ('16/B374D848') as a number."""
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)
