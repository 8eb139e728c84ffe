"""`python -m qdbpool ...`: see qdbpool.cli."""

from __future__ import annotations


def _main() -> int:
    try:
        # Imported here so that a Ctrl-C even during the imports ends without a traceback.
        from qdbpool.cli import main

        return main()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(_main())
