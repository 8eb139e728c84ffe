"""The failover record and the final summary of `make demo-ha`.

The summary's check of acknowledged writes asks the cluster's current primary directly,
over the test bed's own admin connection, not through the pool under test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from _demo_ha_workload import TABLE, Workload

from qdbpool.testing.postgres import Node, PostgresCluster

SHOWN_MISSING = 20  # ids listed when acknowledged writes are missing
LABEL = 28  # width of the summary's label column


def where(node: Node) -> str:
    return f"{node.name} ({node.host}:{node.port})"


def primaries(cluster: PostgresCluster, ports: list[int]) -> str:
    """The nodes on `ports` (those the pool takes for primaries): none, one, or a split."""
    nodes = {node.port: node for node in cluster.nodes}
    shown = [where(nodes[port]) if port in nodes else f"port {port}" for port in ports]
    return " + ".join(shown) if shown else "none known"


@dataclass
class FailoverRecord:
    """What the main thread did to the cluster; the status thread reads it."""

    killed_at: float | None = None  # monotonic, just before the kill
    old: Node | None = None
    new: Node | None = None
    took: float | None = None  # how long cluster.failover() took: kill, promote, re-point
    error: str | None = None

    def recovery(self, workload: Workload) -> float | None:
        """Seconds from the kill to the first write acknowledged by the new primary."""
        if self.killed_at is None or self.new is None:
            return None
        first = workload.first_ack_on(self.new.port)
        return None if first is None else first - self.killed_at


def ids_on_primary(cluster: PostgresCluster) -> tuple[set[int] | None, str]:
    """Every id in the demo table on the cluster's primary, or None and why not."""
    try:
        rows = cluster.primary.sql(f"SELECT id FROM {TABLE}")
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return {int(row[0]) for row in rows}, ""


def summarize(
    say: Callable[[str], None],
    *,
    cluster: PostgresCluster,
    workload: Workload,
    failover: FailoverRecord,
    pool_primaries: list[int],
    ran: float,
    interrupted: bool,
) -> bool:
    """Print the summary; True if every acknowledged write is on the primary."""

    def row(label: str, value: str) -> None:
        say(f"  {label:<{LABEL}}{value}")

    totals = workload.totals()
    acked = workload.acked_ids()
    present, why_not = ids_on_primary(cluster)
    which = "the new primary" if failover.new is not None else "the primary"

    say("")
    threads = len(workload.tallies)
    say(f"Summary ({ran:.1f} s, {threads} thread{'s' if threads != 1 else ''})")
    if interrupted:
        say("  INTERRUPTED: the run was cut short")
    row("writes acknowledged", str(len(acked)))
    intact = _check_writes(say, row, acked, present, why_not, which)
    row("reads ok", str(totals.reads_ok))
    errors = ", ".join(f"{kind} x{n}" for kind, n in workload.errors().most_common(4))
    row(
        "failures",
        f"writes {totals.write_failures}, reads {totals.read_failures}"
        + (f"  ({errors})" if errors else ""),
    )
    _failover_rows(row, failover, workload)
    agrees = "agrees" if pool_primaries == [cluster.primary.port] else "DISAGREES"
    row("primary now", f"{primaries(cluster, pool_primaries)} per the pool; the cluster {agrees}")
    if not intact:
        say(f"!!! ACKNOWLEDGED WRITES WERE LOST: {which} lacks writes it had confirmed.")
    return intact


def _check_writes(
    say: Callable[[str], None],
    row: Callable[[str, str], None],
    acked: list[int],
    present: set[int] | None,
    why_not: str,
    which: str,
) -> bool:
    label = f"present on {which}"
    if present is None:
        row(label, f"COULD NOT BE CHECKED: {why_not}")
        return False
    missing = [row_id for row_id in acked if row_id not in present]
    kept = len(acked) - len(missing)
    row(
        label,
        f"{kept} of {len(acked)} acknowledged: "
        + (f"{len(missing)} MISSING" if missing else "all there"),
    )
    if len(present) > kept:
        # A write whose connection died between its commit and the answer: it counts as
        # failed for the caller, yet it happened. Normal around a crash; nothing is lost.
        row("", f"(+{len(present) - kept} committed, but the answer never reached the client)")
    if missing:
        shown = ", ".join(str(row_id) for row_id in sorted(missing)[:SHOWN_MISSING])
        more = " ..." if len(missing) > SHOWN_MISSING else ""
        say(f"!!! MISSING ACKNOWLEDGED IDS: {shown}{more}")
    return not missing


def _failover_rows(
    row: Callable[[str, str], None], failover: FailoverRecord, workload: Workload
) -> None:
    if failover.old is None:
        row("failover", "none (the run ended before the primary was killed)")
        return
    if failover.new is None or failover.took is None:
        row("failover", f"FAILED after killing {where(failover.old)}: {failover.error}")
        return
    row(
        "failover",
        f"{where(failover.old)} killed; {where(failover.new)} promoted"
        f" ({failover.took:.2f} s for kill + promote + re-point)",
    )
    recovery = failover.recovery(workload)
    if recovery is None:
        row("time to recover", "NEVER: no write reached the new primary")
    else:
        row("time to recover", f"{recovery:.3f} s (kill -> first write acknowledged there)")
