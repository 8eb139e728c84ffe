"""A watchdog that stops our servers when the process that started them dies, SIGKILL included.

Each process that starts servers gets one watchdog, a small Python process of its own
session, spawned with the first server. The starter holds the write end of a pipe whose read
end is the watchdog's stdin, and tells it what to clean up, one line at a time:

    watch <pid> <start time>      kill this process tree if I die
    forget <pid>                  I reaped it myself
    dir <path>                    remove this directory if I die
    forget-dir <path>             I removed it myself

When the pipe reaches end of file while something is still watched, the starter has died
without cleaning up (a normal exit cleans up first): the watchdog kills each watched process
tree by its pid (only if that pid still names the process it was told about), removes the
shared memory those left, removes the directories and exits. Unlike a parent-death signal,
this does not depend on which thread forked the server nor on the user the server runs as.

A forked child closes its copy of the pipe at once: the parent's watchdog keeps watching the
parent, and a child that starts servers of its own gets its own watchdog.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from qdbpool.testing import _process

# -- the starter's side ------------------------------------------------------------------------

_lock = threading.Lock()
_pipe_fd: int | None = None  # write end of the pipe to our watchdog
_watchdog: subprocess.Popen[bytes] | None = None


def watch(pid: int) -> None:
    """Have the watchdog kill the process tree of `pid` should this process die."""
    started = _process.start_time(pid)
    if started is not None:
        _send(f"watch {pid} {started}\n")


def forget(pid: int) -> None:
    _send(f"forget {pid}\n")


def watch_dir(path: Path) -> None:
    """Have the watchdog remove `path` should this process die (after killing the servers)."""
    _send(f"dir {path}\n")


def forget_dir(path: Path) -> None:
    _send(f"forget-dir {path}\n")


def scratch_dir(prefix: str, kind: str = "") -> Path:
    """A new scratch directory (see `_process.new_scratch_dir`), removed should we die."""
    path = _process.new_scratch_dir(prefix, kind)
    watch_dir(path)
    return path


def remove_scratch_dir(path: Path) -> None:
    """Remove a scratch directory of this process's (a forked child leaves its parent's)."""
    if _process.ours_to_remove(path):
        shutil.rmtree(path, ignore_errors=True)
        forget_dir(path)


def watchdog_pid() -> int | None:
    """The pid of this process's watchdog, once it has one."""
    return _watchdog.pid if _watchdog is not None else None


def _send(line: str) -> None:
    data = line.encode()
    if b"\n" in data[:-1] or len(data) > 4096:  # one write of at most PIPE_BUF is atomic
        raise ValueError(f"cannot hand {line!r} to the watchdog")
    with _lock:
        for _attempt in range(2):
            if _pipe_fd is None:
                _spawn()
            assert _pipe_fd is not None
            try:
                os.write(_pipe_fd, data)
                return
            except OSError:  # the watchdog is gone (killed by someone): start another
                _close_pipe()
    _process.log.warning("no watchdog for the test servers: %r not delivered", line)


def _spawn() -> None:
    global _pipe_fd, _watchdog
    read_fd, write_fd = os.pipe()  # neither end is inherited by other subprocesses
    # The watchdog imports this package from where we found it, even if only sys.path
    # (not PYTHONPATH) points there.
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qdbpool.testing._watchdog"],
            stdin=read_fd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            # Its own session: a Ctrl-C (SIGINT to the terminal's foreground group) must not
            # end it while the test run it guards cleans up or dies.
            start_new_session=True,
        )
    finally:
        os.close(read_fd)
    _pipe_fd, _watchdog = write_fd, proc
    # Stopped last at exit, after the servers (registered later) were closed and forgotten.
    _process.close_at_exit(_STOP_KEY, _stop)


def _close_pipe() -> None:
    global _pipe_fd, _watchdog
    if _pipe_fd is not None:
        with contextlib.suppress(OSError):
            os.close(_pipe_fd)
    _pipe_fd = _watchdog = None


def _stop() -> None:
    """At our normal exit: end of file for the watchdog, which exits; reap it."""
    with _lock:
        proc = _watchdog
        _close_pipe()
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


_STOP_KEY = "qdbpool.testing watchdog"
_process.close_at_exit(_STOP_KEY, _stop)  # registered first, so it runs last


def _after_fork_in_child() -> None:
    # The lock may have been held by another thread of the parent at fork time: a new one.
    global _lock
    _lock = threading.Lock()
    if _watchdog is not None:
        # The parent's child, not ours: we can never wait for it, so Popen must not try.
        _watchdog.returncode = 0
    _close_pipe()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the watchdog's side -----------------------------------------------------------------------


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    processes: dict[int, int] = {}  # pid -> start time
    directories: dict[str, None] = {}  # ordered set
    for raw in sys.stdin.buffer:  # until end of file: the starter closed it or died
        command, _, argument = raw.decode(errors="replace").rstrip("\n").partition(" ")
        if command == "watch":
            pid, started = argument.split()
            processes[int(pid)] = int(started)
        elif command == "forget":
            processes.pop(int(argument), None)
        elif command == "dir":
            directories[argument] = None
        elif command == "forget-dir":
            directories.pop(argument, None)
    doomed: list[int] = []
    for pid, started in processes.items():
        if _process.start_time(pid) == started:  # still the process we were told about
            doomed += [pid, *_process.kill_tree(pid)]
    # Those of the whole trees: initdb's `postgres --single`, Patroni's postmasters.
    _process.release_shared_memory(*doomed)
    for path in directories:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
