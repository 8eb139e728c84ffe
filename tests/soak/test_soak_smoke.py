"""The fault suite (`make soak`, bench/soak.py) still runs: one short scenario, end to end.

It runs as a subprocess, as `make soak` runs it, because the suite owns the global pool,
forks and installs log handlers: none of that belongs in the test process.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from qdbpool.testing.availability import require_postgres

REPO = Path(__file__).resolve().parents[2]


def test_a_short_thread_churn_run_holds_every_promise_and_reports_its_figures() -> None:
    require_postgres()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--only=churn", "--pools=singleton", "--seconds=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for figure in ("calls", "errors", "wrong-role writes", "longest call", "sessions left"):
        assert figure in done.stdout, output
    assert "[held] after the threads end, the servers' sessions == stats().open" in done.stdout
    assert "[BROKEN]" not in done.stdout
    assert "OK: every promise held" in done.stdout
    assert elapsed < 30, f"the smoke run took {elapsed:.1f} s"
