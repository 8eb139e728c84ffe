"""A small supervisor that runs one command as a child subreaper and reaps every orphan.

    python qdbpool/testing/_subreaper.py [--cwd DIR] <command> [args...]

Patroni starts each postmaster through a short-lived helper that exits at once, so the
postmaster is an orphan from birth: it goes to the nearest child subreaper above it. Were that
the test process, it would collect zombies it never started and that no `subprocess.Popen`
of its own knows about. Under this supervisor they come here instead, and are reaped here.

The supervisor forwards SIGTERM, SIGINT, SIGQUIT and SIGHUP to the command. When the command
exits, what it left running (an orphaned postmaster, say) gets a short grace period, then
SIGKILL; the supervisor exits with the command's exit code once everything is reaped.

Killing the supervisor's whole tree (`_process.kill_tree` on its pid, which the watchdog does
when the test process dies) takes the command and every orphan with it: they are all its
descendants.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

GRACE = 5.0  # seconds what the command left behind has to exit on its own
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


def _become_subreaper() -> None:
    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _my_children() -> list[int]:
    me = os.getpid()
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if int(fields[1]) == me:
            kids.append(int(name))
    return kids


def _reap_all(block: bool) -> int | None:
    """Reap what has exited; the pid of one reaped process (or None). ChildProcessError: none."""
    pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
    if pid == 0:
        return None
    _statuses[pid] = status
    return pid


_statuses: dict[int, int] = {}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--cwd"] and len(argv) >= 2:
        # The command may run as another user, who cannot always enter our directory.
        os.chdir(argv[1])
        argv = argv[2:]
    if not argv:
        print("usage: _subreaper.py [--cwd DIR] <command> [args...]", file=sys.stderr)
        return 2
    _become_subreaper()
    child = os.posix_spawnp(argv[0], argv, dict(os.environ))

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)

    # Reap everything until the command itself exits.
    while child not in _statuses:
        try:
            _reap_all(block=True)
        except ChildProcessError:  # cannot happen while the command runs; be safe
            break
    for sig in _FORWARDED:
        signal.signal(sig, signal.SIG_DFL)

    # What it left behind: a grace period, then SIGKILL, and reap all.
    deadline = time.monotonic() + GRACE
    while True:
        try:
            while _reap_all(block=False) is not None:
                pass
        except ChildProcessError:
            break  # nothing left
        if time.monotonic() >= deadline:  # and again each round: orphans of orphans too
            for pid in _my_children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)

    status = _statuses.get(child)
    return os.waitstatus_to_exitcode(status) if status is not None else 1


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.exit(code if code >= 0 else 128 - code)
