"""Plain-text tables for terminal output: left-aligned columns, two spaces apart."""

from __future__ import annotations

from collections.abc import Sequence

from qdbpool.cli.checks import HostResult

_GAP = "  "

HOST_COLUMNS = ("HOST", "ROLE", "RESPONSE", "LAG", "ERROR")


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """`headers` and `rows` as aligned lines joined by newlines (no final newline).

    Trailing blanks are stripped from every line, so a row whose last cells are empty
    ends where its text ends (nicer to copy, and to compare in tests).
    """
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {list(row)!r} has {len(row)} cells, not {len(headers)}")
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for cells in (headers, *rows):
        padded = _GAP.join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True))
        lines.append(padded.rstrip())
    return "\n".join(lines)


def host_table(results: Sequence[HostResult]) -> str:
    """One round of `probe` as the table it prints: a row per host, in the DSN's order."""
    rows = [
        (
            str(r.address),
            r.role.value,
            "" if r.response_ms is None else f"{r.response_ms:.1f} ms",
            "" if r.lag_s is None else f"{r.lag_s:.1f} s",
            r.error or "",
        )
        for r in results
    ]
    return render_table(HOST_COLUMNS, rows)
