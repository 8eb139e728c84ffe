"""qdbpool's version, for `--version` and for the OpenTelemetry meter's scope."""

from __future__ import annotations

import importlib.metadata


def version() -> str:
    """qdbpool's version as installed (the package metadata's), or "unknown" when run
    from a source tree that was never installed."""
    try:
        return importlib.metadata.version("qdbpool")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
