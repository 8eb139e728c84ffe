"""Plain-text tables for terminal output: left-aligned columns, two spaces apart."""

from __future__ import annotations

from collections.abc import Sequence

_GAP = "  "


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
