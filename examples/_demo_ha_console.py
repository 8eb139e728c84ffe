"""The terminal side of `make demo-ha`: a live status line, event lines, rates over the
last second, and Ctrl-C.

On a terminal the status line is rewritten in place (`\\r`); into a pipe or a file it is
printed once a second instead, so that logs and tests read whole lines.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import TextIO

POLL = 0.05  # how often the main thread looks for a stop request while it waits


class StopRequest:
    """Ctrl-C (SIGINT) and SIGTERM only raise a flag, which the main thread polls.

    A KeyboardInterrupt could cut a step of the test bed in half (a server started but
    not yet recorded, a primary frozen but not yet killed), and what the cluster does not
    know about it cannot stop. Every step is bounded, so a stop is still prompt. (Not a
    threading.Event: set() takes a lock that the interrupted main thread may be holding.)
    """

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal or signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        """What a shell reports for a program killed by the signal (130 for Ctrl-C)."""
        return 128 + (self.signal or signal.SIGINT)

    def sleep_until(self, deadline: float, done: Callable[[], bool] | None = None) -> bool:
        """Wait until `deadline` (monotonic) or `done()`; True at once on a stop request."""
        while not self.requested:
            left = deadline - time.monotonic()
            if left <= 0 or (done is not None and done()):
                return False
            time.sleep(min(left, POLL))
        return True


class Console:
    """stdout shared by the status thread and the main thread (one lock for both)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._out = stream or sys.stdout
        self.live = self._out.isatty()
        self._lock = threading.Lock()
        self._status = ""  # the status line on screen (terminal only)

    def say(self, text: str) -> None:
        """A line of its own; on a terminal it goes above the status line, which stays."""
        with self._lock:
            if self.live and self._status:
                self._out.write("\r" + " " * len(self._status) + "\r")
            self._out.write(text + "\n")
            if self.live and self._status:
                self._out.write(self._status)
            self._out.flush()

    def status(self, text: str) -> None:
        with self._lock:
            if not self.live:
                self._out.write(text + "\n")
            else:
                # A line longer than the terminal would wrap, and `\r` only goes back to the
                # start of the last row: cut it to fit. Pad to erase a longer previous one.
                text = text[: shutil.get_terminal_size().columns - 1]
                self._out.write("\r" + text.ljust(len(self._status)))
                self._status = text
            self._out.flush()

    def end_status(self) -> None:
        """Leave the last status line on screen and move below it."""
        with self._lock:
            if self.live and self._status:
                self._out.write("\n")
                self._status = ""
            self._out.flush()


class RateMeter:
    """Per-second rates of cumulative counters, over (at least) the last `window` seconds."""

    def __init__(self, window: float = 1.0) -> None:
        self._window = window
        self._samples: deque[tuple[float, tuple[int, ...]]] = deque()

    def update(self, now: float, *counts: int) -> tuple[float, ...]:
        samples = self._samples
        samples.append((now, counts))
        # Keep one sample at least `window` old as the base, and nothing older than it.
        while len(samples) > 2 and now - samples[1][0] >= self._window:
            samples.popleft()
        then, base = samples[0]
        elapsed = now - then
        if elapsed <= 0:
            return tuple(0.0 for _ in counts)
        return tuple((count - old) / elapsed for count, old in zip(counts, base, strict=True))


class Ticker:
    """A thread that shows `line()` as the status every `interval` seconds until stopped."""

    def __init__(self, console: Console, line: Callable[[], str], interval: float) -> None:
        self._console = console
        self._line = line
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic() + self._interval
        # Ticks on a fixed schedule, so that elapsed times read 1.0, 2.0, ... in a pipe.
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            try:
                text = self._line()
            except Exception as exc:  # keep ticking: the demo goes on without one line
                text = f"(status unavailable: {type(exc).__name__})"
            self._console.status(text)
            next_at += self._interval

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5)
        self._console.end_status()


class LogToConsole(logging.Handler):
    """qdbpool's own log lines ("host ... is down", "... is now primary") as event lines:
    they show the pool finding the new primary by itself."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a log line must never break a worker
            self._console.say(f"        [{record.name}] {record.getMessage()}")
