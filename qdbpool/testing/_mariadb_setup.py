"""Setting up MariaDB for the test bed: the server binaries, the arguments every server gets,
the per-process mariadb-install-db template, scratch directories and small SQL helpers."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from qdbpool.testing._child import ChildProcess
from qdbpool.testing._process import (
    chown_to,
    close_at_exit,
    find_binary,
    sweep_stale_dirs,
)
from qdbpool.testing._watchdog import remove_scratch_dir, scratch_dir

log = logging.getLogger("qdbpool.testing.mariadb")

#: Where distributions put the server binaries; `QDBPOOL_MARIADB_BINDIR` is searched first.
_SEARCH_DIRS = ("/usr/sbin", "/usr/bin", "/usr/libexec", "/usr/local/mysql/bin")
#: The OS user the server runs as when we are root (mariadbd refuses to run as root).
SERVER_USER = "mysql"
#: Scratch directories are named DIR_PREFIX + creator pid + "-...", for the stale sweep.
DIR_PREFIX = "qdbpool-mariadb-"
#: Only plain identifiers are interpolated into SQL; everything else goes through parameters.
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_]{1,64}$")

#: Both install-db and the server need the same InnoDB sizes, or the server resizes the log.
INNODB_ARGS = (
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=16M",
    # Durability is pointless for a throw-away server on tmpfs, and fsyncs are slow here.
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--innodb-buffer-pool-load-at-startup=OFF",
    "--innodb-buffer-pool-dump-at-shutdown=OFF",
)


class MariaDBStartError(RuntimeError):
    """The server process exited or never answered; the message carries its log tail."""


# --------------------------------------------------------------------------- binaries


def mariadb_binaries() -> tuple[str, str]:
    """Paths of (`mariadbd`, `mariadb-install-db`); raises ServerUnavailable if missing."""
    dirs = [d for d in (os.environ.get("QDBPOOL_MARIADB_BINDIR"), *_SEARCH_DIRS) if d]
    return find_binary("mariadbd", *dirs), find_binary("mariadb-install-db", *dirs)


def _is_root() -> bool:
    return os.geteuid() == 0


def user_args() -> list[str]:
    # mariadbd drops privileges itself, so the pid we hold stays the server's own pid
    # (a runuser/su wrapper would sit in between and hide it).
    return [f"--user={SERVER_USER}"] if _is_root() else []


def make_private_dir(kind: str = "") -> Path:
    """A fresh directory under tmpfs that the server user can own and write."""
    path = scratch_dir(DIR_PREFIX, kind)
    chown_to(path, SERVER_USER)
    return path


_swept = False


def sweep_stale_servers() -> list[Path]:
    """Kill servers and remove directories left behind by processes that died uncleanly
    (once per process, before our first server starts). Returns the directories removed."""
    global _swept
    if _swept:
        return []
    _swept = True
    return sweep_stale_dirs(DIR_PREFIX)


# --------------------------------------------------------------------------- template

_template_lock = threading.Lock()
_template_dir: Path | None = None


def template_datadir() -> Path:
    """The per-process datadir made by mariadb-install-db, created on first use only."""
    global _template_dir
    with _template_lock:
        if _template_dir is None:
            _template_dir = _install_template()
            close_at_exit(_remove_template, _remove_template)
        return _template_dir


def _install_template() -> Path:
    _, install_db = mariadb_binaries()
    root = make_private_dir("template-")
    datadir = root / "data"
    argv = [
        install_db,
        "--no-defaults",  # must come first: never read /etc/mysql
        f"--datadir={datadir}",
        *user_args(),
        "--auth-root-authentication-method=normal",  # root@127.0.0.1 with an empty password
        "--skip-test-db",
        "--skip-name-resolve",
        *INNODB_ARGS,
    ]
    started = time.monotonic()
    proc = ChildProcess(argv, log_path=root / "install-db.log")
    code = proc.wait(timeout=120)
    if code is None:
        proc.kill()
    if code != 0:
        tail = proc.log_tail()
        remove_scratch_dir(root)
        raise MariaDBStartError(f"mariadb-install-db failed (exit {code}):\n{tail}")
    log.debug("mariadb-install-db took %.2fs", time.monotonic() - started)
    return datadir


def _remove_template() -> None:
    global _template_dir
    with _template_lock:
        if _template_dir is not None:
            remove_scratch_dir(_template_dir.parent)
            _template_dir = None


# --------------------------------------------------------------------------- helpers


def identifier(name: str) -> str:
    """`name` quoted as a SQL identifier, after checking it is a plain one."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f"`{name}`"


def mysql_url(user: str, password: str, hostports: Sequence[str], database: str) -> str:
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    return f"mysql://{auth}@{','.join(hostports)}/{quote(database, safe='')}"


def gtid_seqs(gtid_pos: str) -> dict[int, int]:
    """'0-1-42,1-3-7' -> {0: 42, 1: 7}: the last sequence number per replication domain.

    Sequence numbers grow within a domain whichever server wrote them, so comparing them
    tells whether one position includes another.
    """
    seqs: dict[int, int] = {}
    for gtid in filter(None, (g.strip() for g in gtid_pos.split(","))):
        domain, _server, seq = gtid.split("-")
        seqs[int(domain)] = int(seq)
    return seqs
