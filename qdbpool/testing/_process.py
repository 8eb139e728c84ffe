"""Processes the test beds start, and cleaning up after them: one implementation for all.

PID 1 on our machines does not reap orphans, so every server is started as our own child
(never daemonized through pg_ctl / mysqld_safe), this process becomes a child subreaper so
that a killed server's own children come back to us, and everything killed is waited on;
otherwise its zombie keeps the data directory locked.

Scratch directories are named after the pid that made them, so a later run can sweep what a
process that died without cleaning up left behind (`sweep_stale_dirs`). A process killed by a
signal is normally cleaned up sooner, by its watchdog (see `_watchdog.py`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"

log = logging.getLogger("qdbpool.testing")


class ServerUnavailable(RuntimeError):
    """A server binary the test bed needs is not installed on this machine."""


# --------------------------------------------------------------------------------------------
# Small helpers the test beds share
# --------------------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A currently free TCP port on `host`, from the kernel's ephemeral (high) range."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def find_binary(name: str, *search_dirs: str | Path) -> str:
    """Absolute path of a server binary, looked up in `search_dirs` first, then on PATH."""
    for d in search_dirs:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        looked = [str(d) for d in search_dirs]
        raise ServerUnavailable(f"{name!r} is not installed (looked in {looked} and PATH)")
    return found


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll `probe` until it returns something other than None/False, with a hard deadline."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
            if result is not None and result is not False:
                return result
        except Exception as exc:  # the thing polled for is not ready yet
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f": last error {last_error!r}" if last_error else ""
            raise TimeoutError(f"{what} not reached within {timeout:.1f}s{detail}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file ('' if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# Scratch directories
# --------------------------------------------------------------------------------------------


def scratch_root() -> Path:
    """A fast place for data directories: tmpfs (/dev/shm) when present, else the temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(tempfile.gettempdir())


def chown_to(path: Path, user: str) -> None:
    """Give `path` (recursively) to `user` when we are root, so the server can write it."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


# Each scratch directory's maker. A forked child inherits its parent's servers' objects, and
# leaving a `with` block (a sys.exit() in the child, say) closes them there too: the
# directories of servers that still run for the parent must stay.
_made_by: dict[Path, int] = {}


def new_scratch_dir(prefix: str, kind: str = "") -> Path:
    """A fresh directory under scratch_root() named `prefix` + our pid + "-" + `kind`...

    The pid in the name is what lets `sweep_stale_dirs` find it should we die uncleanly.
    """
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-{kind}", dir=scratch_root()))
    _made_by[path] = os.getpid()
    return path


def ours_to_remove(path: Path) -> bool:
    """Whether this process made the scratch directory `path` (not its parent before a
    fork), and so may remove it; forgotten once said."""
    if _made_by.get(path, os.getpid()) != os.getpid():
        return False
    _made_by.pop(path, None)
    return True


def sweep_stale_dirs(prefix: str, root: Path | None = None) -> list[Path]:
    """Kill servers and remove directories left behind by processes that died uncleanly.

    Only directories named `prefix` + the pid of a process that no longer runs are touched,
    and only processes whose command line names such a directory are killed (with their
    children). Returns the directories removed.
    """
    root = root or scratch_root()
    removed: list[Path] = []
    for entry in root.iterdir():
        match = re.match(rf"{re.escape(prefix)}(\d+)-", entry.name)
        if match is None or not entry.is_dir():
            continue
        owner = int(match[1])
        if owner == os.getpid() or process_alive(owner):
            continue
        for pid in processes_naming(entry):
            log.warning("killing server %s left running by dead process %s", pid, owner)
            kill_and_release(pid, timeout=2)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def processes_naming(directory: Path) -> list[int]:
    """Running processes whose command line has an argument inside `directory`."""
    needle = str(directory).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        inside = any(arg == needle or needle + b"/" in arg for arg in argv)
        if inside and process_alive(int(name)):
            found.append(int(name))
    return found


# --------------------------------------------------------------------------------------------
# Process state, killing a process tree, reaping
# --------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; the fields after the last ')' do not.
    return text[text.rfind(")") + 2 :].split()


def process_alive(pid: int) -> bool:
    """True while `pid` is a running process (a zombie is not running)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot): with the pid, it names one process for
    good, even after the pid is reused. None if there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def _parents() -> dict[int, int]:
    """Every process's parent, from one pass over /proc."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None:
                parents[int(name)] = int(fields[1])
    return parents


def children(pid: int) -> list[int]:
    """The direct children of `pid`."""
    return [kid for kid, parent in _parents().items() if parent == pid]


def _descendants(pid: int, parents: dict[int, int]) -> set[int]:
    found: set[int] = set()
    generation = {pid}
    while generation:
        generation = {kid for kid, parent in parents.items() if parent in generation} - found
        found |= generation
    return found


@functools.lru_cache(maxsize=1)
def become_subreaper() -> bool:
    """Make orphaned descendants (a killed server's children) our children, to reap them.

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


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and all its descendants at once; return the descendants' pids.

    The process is frozen first so that it can neither fork a new child nor react to its
    children dying (a postmaster would start crash recovery) while we list and kill them.
    A process group would not do: each PostgreSQL backend calls setsid().
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGSTOP)

    def frozen_or_gone() -> bool:
        fields = _stat_fields(pid)
        return fields is None or fields[0] in ("T", "t", "Z", "X")

    with contextlib.suppress(TimeoutError):  # SIGKILL below works whatever its state
        wait_until(frozen_or_gone, timeout=5, interval=0.001, what=f"process {pid} stopped")
    # One pass over /proc for the whole tree (a pass per process took tens of milliseconds
    # under load, and a failover test measures from the kill). A descendant other than the
    # frozen process may still fork meanwhile: passes go on until one finds nobody new.
    descendants: set[int] = set()
    for _ in range(10):  # bounded, whatever /proc says
        found = _descendants(pid, _parents())
        if found <= descendants:
            break
        descendants |= found
        for victim in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    return sorted(descendants)


def reap(pids: Iterable[int], timeout: float = 10.0) -> None:
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
        wait_until(all_reaped, timeout=timeout, interval=0.005, what="killed processes reaped")
    except TimeoutError:
        log.warning("could not reap killed processes %s", sorted(pending))


def kill_and_reap(pid: int, timeout: float = 10.0) -> list[int]:
    """kill_tree(pid), then reap it and its descendants if they are (or become) ours;
    returns every pid killed.

    The process first: only once it is gone do its children become ours to collect.
    """
    become_subreaper()
    kids = kill_tree(pid)
    reap([pid], timeout=timeout)
    reap(kids, timeout=timeout)
    return [pid, *kids]


def kill_and_release(pid: int, timeout: float = 5.0) -> None:
    """kill_and_reap(pid), then remove the shared memory any process of the tree left."""
    release_shared_memory(*kill_and_reap(pid, timeout=timeout), timeout=timeout)


def release_shared_memory(*creator_pids: int, timeout: float = 5.0) -> None:
    """Remove the SysV shared memory segments killed processes created and left behind.

    A killed postmaster leaves one for a restart on the same directory to reclaim; once the
    directory is deleted nothing will, and each one counts against the system's limit. A
    segment can only go once nothing is attached: the killed processes that are not ours to
    reap may take a moment to die, so this waits up to `timeout` seconds for the last one to
    detach, then removes the segments of `creator_pids` that nobody holds.
    """
    creators = set(creator_pids)

    def segments() -> list[tuple[int, int]]:
        """(shmid, processes attached) of each segment one of `creators` made."""
        try:
            table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
        except OSError:
            return []  # not Linux
        # Columns: key shmid perms size cpid lpid nattch ...
        rows = [row.split() for row in table]
        return [(int(f[1]), int(f[6])) for f in rows if int(f[4]) in creators]

    with contextlib.suppress(TimeoutError):
        wait_until(
            lambda: all(attached == 0 for _, attached in segments()),
            timeout=timeout,
            interval=0.005,
            what="shared memory detached",
        )
    for shmid, attached in segments():
        if attached == 0:
            ipc_rmid = 0
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).shmctl(shmid, ipc_rmid, None)


# --------------------------------------------------------------------------------------------
# The at-exit safety net
# --------------------------------------------------------------------------------------------

# key -> (pid of the process that registered it, cleanup)
_at_exit: dict[object, tuple[int, Callable[[], None]]] = {}
_at_exit_lock = threading.Lock()


def close_at_exit(key: object, cleanup: Callable[[], None]) -> None:
    """Run `cleanup` when this interpreter exits, if it is the process that registered it.

    A forked child that exits normally runs its parent's atexit hooks too; it must not stop
    its parent's servers or delete their directories. `forget_at_exit(key)` unregisters.
    """
    with _at_exit_lock:
        _at_exit[key] = (os.getpid(), cleanup)


def forget_at_exit(key: object) -> None:
    with _at_exit_lock:
        _at_exit.pop(key, None)


def _run_at_exit() -> None:
    me = os.getpid()
    with _at_exit_lock:
        cleanups = [cleanup for owner, cleanup in _at_exit.values() if owner == me]
    for cleanup in reversed(cleanups):  # the last registered first: servers before templates
        try:
            cleanup()
        except Exception:  # keep cleaning up the rest
            log.exception("test bed cleanup at exit failed")


atexit.register(_run_at_exit)
