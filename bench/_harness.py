"""The code of the method every bench/ script follows; docs/benchmarks.md states it."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def argument_parser(doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """The script's parser; its --help starts with the script's first paragraph, which
    says what it measures."""
    return argparse.ArgumentParser(
        prog=prog,
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def pin_to_one_cpu() -> str:
    """Pin this process (and servers it starts later) to one CPU: loopback client/server
    throughput swings ~3x when they sit on different CPUs."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


@dataclass
class Variant:
    name: str
    make_call: Callable[[], Callable[[], object]]
    """Called once per thread (in that thread): returns the zero-argument call to time."""
    samples: list[float] = field(default_factory=list)  # ns per call, one per round


def _time_slice(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        call()
    return (time.perf_counter_ns() - start) / calls


def run_threads(variant: Variant, threads: int, calls: int) -> float:
    """ns per call over `threads` threads each making `calls` calls (wall time / total calls).

    The clock runs from just before the threads may start their calls until the last one
    has made them: their start-up, warm-up and exit (where SingletonPool closes a thread's
    connection, a cost of short-lived threads, not of each call) are outside it.
    """
    if threads == 1:
        return _time_slice(variant.make_call(), calls)
    warmed = threading.Barrier(threads + 1)
    done = threading.Barrier(threads + 1)
    go = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            call = variant.make_call()
            call()  # warm: the thread's connection exists before timing starts
            warmed.wait()
            go.wait()
            for _ in range(calls):
                call()
        except BaseException as exc:
            errors.append(exc)
            warmed.abort()
            done.abort()
            return
        done.wait()

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        warmed.wait()
        # Read before any worker may run: one released by a barrier could hold the GIL
        # for a whole switch interval (5 ms) before this thread got to read the clock.
        start = time.perf_counter_ns()
        go.set()
        done.wait()
        elapsed = time.perf_counter_ns() - start
    except threading.BrokenBarrierError:
        elapsed = 0
    go.set()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return elapsed / (threads * calls)


class Gang:
    """`threads` threads running one variant's call, each keeping its connection across rounds.

    (run_threads starts new threads every slice, which would also open and close a
    connection per thread per round: that backend churn lands in whichever slice runs next.)
    """

    def __init__(self, variant: Variant, threads: int, setup_timeout: float = 60.0) -> None:
        self.variant = variant
        self.threads = threads
        self._ready = threading.Barrier(threads + 1, timeout=setup_timeout)
        self._start = threading.Barrier(threads + 1)
        self._done = threading.Barrier(threads + 1)
        self._calls = 0
        self._stopping = False
        self._errors: list[BaseException] = []
        self._workers = [
            threading.Thread(target=self._work, name=f"{variant.name}#{i}", daemon=True)
            for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()
        try:
            self._ready.wait()  # every thread has its connection and made one warm call
        except threading.BrokenBarrierError:
            self.stop()
            raise self._failure() from None

    def _failure(self) -> BaseException:
        if self._errors:
            return self._errors[0]
        return RuntimeError(f"{self.variant.name}: worker threads did not get ready")

    def _work(self) -> None:
        try:
            call = self.variant.make_call()
            call()
        except BaseException as exc:
            self._errors.append(exc)
            self._ready.abort()
            return
        try:
            self._ready.wait()
            while True:
                self._start.wait()
                if self._stopping:
                    return
                for _ in range(self._calls):
                    call()
                self._done.wait()
        except threading.BrokenBarrierError:
            return
        except BaseException as exc:
            self._errors.append(exc)
            self._done.abort()

    def run(self, calls_per_thread: int) -> float:
        """One slice: ns per call over all threads (wall time / total calls)."""
        self._calls = calls_per_thread
        # The clock starts first: a worker released by the barrier could otherwise run
        # (holding the GIL) before this thread gets to read it.
        start = time.perf_counter_ns()
        self._start.wait()
        try:
            self._done.wait()
        except threading.BrokenBarrierError:
            raise self._failure() from None
        return (time.perf_counter_ns() - start) / (self.threads * calls_per_thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._start.abort()  # wakes every idle worker; they return
        self._done.abort()
        for worker in self._workers:
            worker.join(timeout)


def compare(
    variants: Sequence[Variant],
    *,
    threads: int,
    rounds: int,
    calls: int,
    seed: int = 1,
) -> list[Variant]:
    """Run every variant once per round, in a fresh shuffled order each round."""
    rng = random.Random(seed)
    order = list(variants)
    for _ in range(rounds):
        rng.shuffle(order)
        for v in order:
            v.samples.append(run_threads(v, threads, calls))
    return list(variants)


def ratio(v: Variant, base: Variant) -> float:
    """Median over rounds of v's time / base's time in the same round."""
    return statistics.median(a / b for a, b in zip(v.samples, base.samples, strict=True))


def pooled(groups: Sequence[Sequence[float]]) -> list[float]:
    """All groups' values in one list."""
    return [v for group in groups for v in group]


def median_ci(
    groups: Sequence[Sequence[float]],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """A bootstrap confidence interval for the median of per-round values, given in groups
    that each ran on their own threads and connections (one group: plain rounds).

    The interval says how closely this run pins down the median ratio of the setup it
    measured; the median of another run scatters wider. Groups are resampled first, then
    rounds within each: a group's threads and connections can be slower or faster as a
    whole, and a run's rounds alone would not show that.
    """
    values = pooled(groups)
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    rng = random.Random(seed)
    medians = []
    for _ in range(resamples):
        drawn: list[float] = []
        for group in rng.choices(groups, k=len(groups)):
            drawn.extend(rng.choices(group, k=len(group)))
        medians.append(statistics.median(drawn))
    medians.sort()
    tail = (1.0 - confidence) / 2
    return medians[int(tail * resamples)], medians[int((1.0 - tail) * resamples) - 1]


def interval(groups: Sequence[Sequence[float]]) -> str:
    """The median of per-round values with its 95% interval, e.g. '1.12 (95% CI 1.08..1.17)'."""
    low, high = median_ci(groups)
    return f"{statistics.median(pooled(groups)):.3f} (95% CI {low:.3f}..{high:.3f})"


def verdict(
    groups: Sequence[Sequence[float]],
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    quick: bool = False,
) -> str:
    """The median of per-round ratios with its interval, judged against its target: 'met'
    when this run's whole 95% interval meets it, 'MISSED' when the whole interval misses it,
    'across the target' when the noise could decide either way. A quick (smoke) run has too
    few rounds to judge anything: it gets the figure and its interval alone."""
    shown = interval(groups)
    if quick:
        return shown
    low, high = median_ci(groups)
    if at_least is not None:
        target, meets, misses = f">= {at_least}", low >= at_least, high < at_least
    elif at_most is not None:
        target, meets, misses = f"<= {at_most}", high <= at_most, low > at_most
    else:
        raise ValueError("verdict() needs a target: at_least or at_most")
    judged = "met" if meets else "MISSED" if misses else "across the target"
    return f"{shown}; target {target}: {judged}"


def table(title: str, variants: Sequence[Variant], base: Variant) -> str:
    width = max(len(v.name) for v in variants)
    lines = [title, f"  {'variant':<{width}}  {'median ns/call':>14}  {'x ' + base.name:>14}"]
    for v in variants:
        lines.append(
            f"  {v.name:<{width}}  {statistics.median(v.samples):>14.0f}  {ratio(v, base):>14.2f}"
        )
    return "\n".join(lines)
