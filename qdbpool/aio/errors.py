"""The one error qdbpool.aio adds to qdbpool.errors' hierarchy (whose errors it raises too)."""

from __future__ import annotations

from qdbpool.errors import QdbPoolError

__all__ = ["WrongEventLoopError"]


class WrongEventLoopError(QdbPoolError, RuntimeError):
    """An asyncio pool was used outside the event loop it serves (another loop, another
    thread, or no running loop): its connections and waiters belong to that one loop.
    Make one pool per event loop (for instance, inside the coroutine `asyncio.run` runs)."""
