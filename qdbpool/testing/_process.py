"""Child processes and ports for the local test servers.

PID 1 on our machines does not reap orphans, so every server is started as our own child
(never daemonized through pg_ctl / mysqld_safe) and is always waited on after it is killed;
otherwise its zombie keeps the data directory locked.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


class ServerUnavailable(RuntimeError):
    """A server binary the test bed needs is not installed on this machine."""


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


def as_user_prefix(user: str) -> list[str]:
    """Command prefix that runs a program as `user` when we are root (servers refuse root)."""
    if os.geteuid() != 0:
        return []
    pwd.getpwnam(user)  # raises KeyError with the name if the OS user does not exist
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", user, "--"]


def chown_to(path: Path, user: str) -> None:
    """Give `path` (recursively) to `user` when we are root, so the server can write it."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def scratch_root() -> Path:
    """A fast place for data directories: tmpfs (/dev/shm) when present, else the temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    import tempfile

    return Path(tempfile.gettempdir())


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


class ChildProcess:
    """A server we started and must reap: kill/terminate by its own pid, always wait."""

    def __init__(self, argv: Sequence[str], *, log_path: Path, env: dict[str, str] | None = None):
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: signals reach its children too
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process and every process of its group, then reap it."""
        self.signal_group(signal.SIGKILL)
        self.wait(timeout=10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Ask politely, escalate to SIGKILL after `timeout`, and always reap."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
        self.wait(timeout=10)

    def wait(self, timeout: float) -> int | None:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if self.proc.returncode is not None and not self._log.closed:
                self._log.close()
        return code

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
