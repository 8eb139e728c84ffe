"""`make demo-ha` end to end: examples/demo_ha.py run as a user runs it, in a subprocess,
on real local PostgreSQL servers, then checked for what it reports and what it leaves."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import quote

import pytest

from qdbpool.testing.availability import require_postgres
from qdbpool.testing.postgres import process_alive

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo_ha.py"
# The demo takes its cluster's password from here, so that the test can look for it.
SECRET = "demo-SENTINEL-p@ss:w/rd"
RUN_TIMEOUT = 90.0  # a 6 s run takes about 8 s here
# A status line as printed into a pipe, once a second, with writes going on.
RUNNING = re.compile(r"^\s*\d+\.\ds\s+writes\s+[1-9]\d*/s\s+reads\s+\d+/s")


def _env() -> dict[str, str]:
    return {**os.environ, "QDBPOOL_DEMO_PASSWORD": SECRET}


def _command(*args: str) -> list[str]:
    return [sys.executable, str(DEMO), *args]


def _field(label: str, pattern: str, output: str) -> re.Match[str]:
    """The summary row `label` (two spaces in, then the value) matching `pattern`."""
    match = re.search(rf"^  {re.escape(label)}\s+{pattern}", output, re.MULTILINE)
    assert match is not None, f"no {label!r} row matching {pattern!r} in:\n{output}"
    return match


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def assert_no_server_left(output: str) -> None:
    """The servers the demo listed are gone, and so is the directory they ran in."""
    root = re.search(r"data directory: (\S+)", output)
    assert root is not None, output
    pids = [int(pid) for pid in re.findall(r"^  node\d\s.*\bpid (\d+)$", output, re.MULTILINE)]
    assert len(pids) == 3, output
    # A pid may have been reused since: only a process still naming the directory counts.
    left = [pid for pid in pids if process_alive(pid) and root[1].encode() in _cmdline(pid)]
    assert left == [], f"servers still running: {left}"
    others = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and root[1].encode() in _cmdline(int(entry.name))
    ]
    assert others == [], f"processes still using {root[1]}: {others}"
    assert not Path(root[1]).exists()


def assert_secret_not_shown(output: str) -> None:
    assert SECRET not in output
    assert quote(SECRET, safe="") not in output


def test_the_demo_fails_over_and_keeps_every_acknowledged_write() -> None:
    require_postgres()
    done = subprocess.run(
        _command("--seconds", "6"),
        cwd=REPO,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output

    _field(
        "failover",
        r"node\d \(127\.0\.0\.1:\d+\) killed; node\d \(127\.0\.0\.1:\d+\) promoted",
        output,
    )
    acked = int(_field("writes acknowledged", r"(\d+)$", output)[1])
    kept, of = _field(
        "present on the new primary", r"(\d+) of (\d+) acknowledged: all there", output
    ).groups()
    assert acked > 0
    assert int(kept) == int(of) == acked
    recovery = float(_field("time to recover", r"(\d+\.\d+) s", output)[1])
    assert 0 < recovery < 10
    _field("primary now", r".* per the pool; the cluster agrees$", output)
    assert "[failover at " in output  # the status lines marked it
    assert "Traceback" not in output
    assert_secret_not_shown(output)
    assert_no_server_left(output)


class Demo:
    """The demo running in the background; a reader thread collects its output (stderr
    merged in), so that the test can wait for a line with a deadline."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            _command(*args),
            cwd=REPO,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._new: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:  # ends at EOF, when the demo exits
            self.lines.append(line)
            self._new.put(line)
        self._new.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, wanted: Callable[[str], bool], timeout: float) -> str:
        """The first line for which `wanted` holds; AssertionError at the deadline or if
        the demo exits first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"not seen within {timeout:g}s:\n{self.output}") from None
            if line is None:
                raise AssertionError(f"the demo exited ({self.proc.wait()}):\n{self.output}")
            if wanted(line):
                return line

    def finish(self, timeout: float) -> int:
        """The exit status, once the demo has exited and its output is all read."""
        status = self.proc.wait(timeout)
        self._reader.join(10)
        return status

    def stop(self) -> None:
        """If it still runs (the test failed): SIGTERM, which it also cleans up after."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)


def test_ctrl_c_mid_run_stops_promptly_and_leaves_no_server_behind() -> None:
    require_postgres()
    demo = Demo("--seconds", "60")
    try:
        demo.wait_for(lambda line: RUNNING.match(line) is not None, timeout=RUN_TIMEOUT)
        demo.proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        status = demo.finish(timeout=30)
        took = time.monotonic() - sent
    finally:
        demo.stop()

    output = demo.output
    assert status == 128 + signal.SIGINT, output
    assert took < 10, f"{took:.1f} s to exit after SIGINT"
    assert "Traceback" not in output
    assert "SIGINT received" in output
    assert "INTERRUPTED" in output
    _field("present on the primary", r"(\d+) of \1 acknowledged: all there", output)
    assert_secret_not_shown(output)
    assert_no_server_left(output)
