"""An exception that a signal handler raises (KeyboardInterrupt on Ctrl-C, a SIGALRM
timeout) in the middle of a checkout or a release: whatever it leaves behind for that
thread, the pool must stay usable by every other thread. A lock left held would block
them all for good.

The handler raises only while the interrupted frame is qdbpool's (elsewhere it re-arms its
timer): Python's own threading module makes no such promise, so frames of it are not
what this test is about.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

import qdbpool

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "setitimer"), reason="needs signal.setitimer (POSIX)"
)

QDBPOOL_DIR = str(Path(qdbpool.__file__).parent)
MAX_INTERRUPTIONS, SECONDS = 2_000, 3.0
JOIN = 10.0


class Interrupted(Exception):
    pass


def another_thread_can_check_out(pool: qdbpool.Pool) -> bool:
    done = threading.Event()

    def use() -> None:
        with pool.connect() as conn:
            conn.execute("SELECT 1").fetchone()
        done.set()

    thread = threading.Thread(target=use, daemon=True)
    thread.start()
    return done.wait(JOIN)


# Raised in a __del__, the interruption is printed and dropped by Python itself.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_exception_from_a_signal_handler_mid_checkout_never_blocks_other_threads(
    recorder, pool_cls
):
    armed = False
    where: list[tuple[str, int]] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal armed
        if not armed:
            return
        if frame is not None and frame.f_code.co_filename.startswith(QDBPOOL_DIR):
            armed = False
            where.append((Path(frame.f_code.co_filename).name, frame.f_lineno))
            raise Interrupted
        signal.setitimer(signal.ITIMER_REAL, random.uniform(1e-6, 3e-5))

    previous = signal.signal(signal.SIGALRM, handler)
    pools: list[qdbpool.Pool] = []
    blocked: list[tuple[str, int]] = []
    deadline = time.monotonic() + SECONDS
    try:
        while len(where) < MAX_INTERRUPTIONS and time.monotonic() < deadline:
            # A new pool each time: the interrupted checkout may stay out for good.
            pool = pool_cls(recorder)
            pools.append(pool)
            try:
                armed = True
                signal.setitimer(signal.ITIMER_REAL, random.uniform(1e-6, 3e-5))
                for _ in range(200):
                    with pool.connect() as conn:
                        conn.execute("SELECT 1")
            except Interrupted:
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                armed = False
            if not another_thread_can_check_out(pool):
                blocked.append(where[-1])
                break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        for pool in pools:
            pool.close(timeout=0)
    assert len(where) > 100, "too few interruptions landed in qdbpool's code to judge"
    assert blocked == [], f"another thread blocked after an interruption at {blocked}"
