"""How `probe --watch` shows its rounds (without --json).

On a terminal, one screen redrawn in place each round, like watch(1): the table, and under
it the latest changes. It uses the terminal's alternate screen, so that the shell's screen
comes back untouched when it ends; the last round is then printed there, where it stays.

Anywhere else (a pipe, a file, a log), a line per change: a host's role changing (up or
down included) and the primary appearing, moving or disappearing, each with a timestamp.
The first round says where every host stands. Such a log is short and greps well.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import TextIO

from qdbpool.cli.checks import HostResult
from qdbpool.cli.table import host_table
from qdbpool.cluster import Role

# ANSI (ECMA-48 / xterm) control sequences, understood by every terminal in use today.
ENTER_ALTERNATE_SCREEN = "\x1b[?1049h"
LEAVE_ALTERNATE_SCREEN = "\x1b[?1049l"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"
CURSOR_HOME = "\x1b[H"
ERASE_TO_END_OF_LINE = "\x1b[K"
ERASE_TO_END_OF_SCREEN = "\x1b[J"

RECENT_CHANGES = 50  # kept for the screen; as many of the latest as fit are shown

_TROUBLE = (Role.DOWN, Role.UNKNOWN)  # roles whose error text says why


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal that understands cursor movement."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return tty and os.environ.get("TERM") != "dumb"


def _primary(results: Sequence[HostResult]) -> HostResult | None:
    return next((r for r in results if r.role is Role.PRIMARY), None)


def _state(result: HostResult) -> str:
    if result.role in _TROUBLE and result.error:
        return f"{result.role.value}: {result.error}"
    return result.role.value


def describe_changes(
    previous: Sequence[HostResult] | None, current: Sequence[HostResult]
) -> list[str]:
    """What differs from the round before, one line each (no timestamp); with no round
    before, where every host stands and which is the primary. Only roles count: response
    times, lag and the wording of an error change every round and would drown the rest."""
    primary = _primary(current)
    now = "no primary" if primary is None else f"primary is {primary.address}"
    if previous is None:
        return [*(f"{r.address}  {_state(r)}" for r in current), now]
    before = {r.address: r for r in previous}
    lines = []
    for r in current:
        old = before.get(r.address)
        if old is not None and old.role is not r.role:
            lines.append(f"{r.address}  {old.role.value} -> {_state(r)}")
    was = _primary(previous)
    if (None if was is None else was.address) != (None if primary is None else primary.address):
        lines.append(now if was is None else f"{now} (was {was.address})")
    return lines


def _timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class ChangeLog:
    """A line per change on `stream` (a pipe or file): see `describe_changes`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._previous: Sequence[HostResult] | None = None

    def show(self, results: Sequence[HostResult]) -> None:
        stamp = _timestamp()
        lines = describe_changes(self._previous, results)
        self._previous = results
        if lines:
            self._stream.write("".join(f"{stamp}  {line}\n" for line in lines))
            self._stream.flush()  # a pipe is block-buffered: each change must reach it now


class LiveScreen:
    """The rounds on a terminal, redrawn in place; use it as a context manager, which
    restores the terminal (cursor shown, the shell's screen back) however the watch ends."""

    def __init__(self, stream: TextIO, title: str) -> None:
        self._stream = stream
        self._title = title
        self._previous: Sequence[HostResult] | None = None
        self._changes: collections.deque[str] = collections.deque(maxlen=RECENT_CHANGES)
        self._last_table: str | None = None

    def __enter__(self) -> LiveScreen:
        self._write(ENTER_ALTERNATE_SCREEN + HIDE_CURSOR + CURSOR_HOME + ERASE_TO_END_OF_SCREEN)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._write(ERASE_TO_END_OF_SCREEN + SHOW_CURSOR + LEAVE_ALTERNATE_SCREEN)
        if self._last_table is not None:  # what the screen showed last stays in view
            self._write(f"{self._last_table}\n")

    def show(self, results: Sequence[HostResult]) -> None:
        stamp = _timestamp()
        if self._previous is not None:
            for line in describe_changes(self._previous, results):
                self._changes.append(f"{stamp}  {line}")
        self._previous = results
        table = host_table(results)
        self._last_table = f"{stamp}\n{table}"
        width, height = _terminal_size(self._stream)
        self._write(self._frame(stamp, table.splitlines(), width, height))

    def _frame(self, stamp: str, table: list[str], width: int, height: int) -> str:
        # The time first: a long DSN may be cut by the window's edge.
        lines = [f"{stamp}   {self._title}", "", *table]
        # The last row stays free for the progress line (and so nothing ever scrolls).
        room = height - 1 - len(lines) - 2
        if self._changes and room > 0:
            lines += ["", "changes:", *list(self._changes)[-room:]]
        # One column short of the width: a line that fills the row leaves the cursor in
        # the margin, where erasing to the end of the line would take its last character.
        fitted = [line[: max(1, width - 1)] for line in lines[: max(1, height - 1)]]
        body = "".join(f"{line}{ERASE_TO_END_OF_LINE}\n" for line in fitted)
        return CURSOR_HOME + body + ERASE_TO_END_OF_SCREEN

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


def _terminal_size(stream: TextIO) -> tuple[int, int]:
    """Read every round: the window may have been resized since."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return 80, 24
    return size.columns, size.lines


@contextlib.contextmanager
def terminated_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) while inside, so that `finally` blocks (which restore
    the terminal) run as they do for Ctrl-C. Only the main thread can set signal handlers;
    elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, exit_on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
