"""`python -m qdbpool ...`, and the `qdbpool` console script (see pyproject.toml): see
qdbpool.cli."""

from __future__ import annotations


def main() -> int:
    """Run the command line; the exit status. Ctrl-C at any point ends it quietly (130)."""
    try:
        # Imported here so that a Ctrl-C even during the imports ends without a traceback.
        from qdbpool.cli import main as run_command_line

        return run_command_line()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
