"""Fork from any thread of a busy process (issue 11 §1), on real PostgreSQL and MariaDB.

16 threads mid-query and one reading stats(); forks from the main thread and from workers;
children leaving by os._exit, a normal exit, pool.close(), a call of their own, or forking
again. The parent must see no error and keep every session; every child exits within 5 s.
Run through the fault suite's fork scenarios (bench/soak.py), in a subprocess, because they
fork and own the global pool.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qdbpool.testing.availability import require_mariadb, require_postgres

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("scenario", ["fork", "fork-mariadb"])
def test_forks_under_load_leave_the_parents_sessions_alone(scenario: str) -> None:
    require_postgres() if scenario == "fork" else require_mariadb()
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", f"--only={scenario}", "--seconds=2", "--forks=40"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "[held] 0 parent sessions replaced" in done.stdout, output
    assert "[held] the parent's calls see 0 errors" in done.stdout, output
    assert "[held] every child exits by itself within 5 s" in done.stdout, output
    assert "[BROKEN]" not in done.stdout, output
