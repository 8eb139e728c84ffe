"""@with_conn for `async def` functions: inject the task's connection.

The wrapper is one ordinary coroutine function: `async with pool.connect() as conn`, then
the function with `conn` in its place. Where the connection goes is worked out once, at
decoration time (`_plan`). Nested decorated calls in one task share its connection (the
pool keeps it in a context variable, checked against the task that holds it, so a task
created inside the call gets a connection of its own and never shares one).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

from qdbpool.aio import _global
from qdbpool.aio.pool import BoundedPool
from qdbpool.errors import ArgumentTypeError, PoolNotInitializedError

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C")
P = ParamSpec("P")
R = TypeVar("R")


class _InjectFirst(Protocol):
    """What `@with_conn()` returns, for type checkers: the decorator of the positional form."""

    def __call__(
        self, fn: Callable[Concatenate[C, P], Awaitable[R]], /
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...


@dataclass(frozen=True)
class _Plan:
    keyword: str | None  # inject as this keyword argument ...
    index: int  # ... or at this position of the call's arguments
    name: str | None  # the parameter's name there (a caller may pass it by name)
    fills_all: int  # len(args) from which the caller has surely passed it itself


def _plan(fn: Callable[..., Any], arg: int | str) -> _Plan:
    where = f"@with_conn(arg={arg!r}) on {getattr(fn, '__qualname__', fn)!r}"
    if isinstance(arg, bool) or not isinstance(arg, (int, str)):
        raise ArgumentTypeError(f"{where}: arg must be a position (int) or a parameter name (str)")
    params = list(inspect.signature(fn).parameters.values())
    offset = 0
    if _is_method(fn, params):
        params, offset = params[1:], 1  # self / cls comes first in the call's arguments
    kind = inspect.Parameter
    positional = [p for p in params if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)]
    var_positional = any(p.kind is kind.VAR_POSITIONAL for p in params)
    if isinstance(arg, str):
        names = {p.name for p in params if p.kind is not kind.POSITIONAL_ONLY}
        if arg not in names and not any(p.kind is kind.VAR_KEYWORD for p in params):
            raise ArgumentTypeError(f"{where}: the function has no parameter named {arg!r}")
        return _Plan(keyword=arg, index=-1, name=arg, fills_all=1 << 30)
    if arg < 0 or (not var_positional and arg >= len(positional)):
        raise ArgumentTypeError(
            f"{where}: the function takes {len(positional)} positional parameter(s) "
            f"(after self/cls)"
        )
    param = positional[arg] if arg < len(positional) else None
    name = param.name if param is not None and param.kind is not kind.POSITIONAL_ONLY else None
    # With no *args and no defaults from the connection on, a call that fills every
    # positional parameter has passed its own connection.
    unsure = var_positional or any(p.default is not kind.empty for p in positional[arg:])
    fills_all = 1 << 30 if unsure else len(positional) + offset
    return _Plan(keyword=None, index=arg + offset, name=name, fills_all=fills_all)


def _is_method(fn: Callable[..., Any], params: list[inspect.Parameter]) -> bool:
    """A function defined in a class body whose first parameter is `self` or `cls`."""
    parent, _, _ = getattr(fn, "__qualname__", "").rpartition(".")
    in_class = bool(parent) and not parent.endswith("<locals>")
    return in_class and bool(params) and params[0].name in ("self", "cls")


def _decorate(fn: Any, arg: int | str, read_only: bool, fixed: BoundedPool | None) -> Any:
    if isinstance(fn, (staticmethod, classmethod)):
        raise ArgumentTypeError(
            f"put @{type(fn).__name__} above @qdbpool.aio.with_conn, not below it"
        )
    if not inspect.iscoroutinefunction(fn):
        what = "an async generator function" if inspect.isasyncgenfunction(fn) else repr(fn)
        raise ArgumentTypeError(
            f"qdbpool.aio.with_conn decorates `async def` functions, not {what}: "
            f"for a plain function use qdbpool.with_conn (the threaded pools)"
        )
    plan = _plan(fn, arg)
    keyword, index, name, fills_all = plan.keyword, plan.index, plan.name, plan.fills_all

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        pool = fixed if fixed is not None else _global.current
        # The caller's own connection, by name or by position: nothing to inject.
        if name is not None and name in kwargs:
            return await fn(*args, **kwargs)
        if len(args) >= fills_all or (
            keyword is None
            and len(args) > index
            and pool is not None
            and type(args[index]) in pool._conn_types
        ):
            return await fn(*args, **kwargs)
        if pool is None:
            raise PoolNotInitializedError(_global.NOT_INITIALIZED)
        async with pool.connect(read_only=read_only) as conn:
            if keyword is not None:
                kwargs[keyword] = conn
                return await fn(*args, **kwargs)
            return await fn(*args[:index], conn, *args[index:], **kwargs)

    return functools.update_wrapper(wrapper, fn)


@overload
def with_conn(
    _fn: Callable[Concatenate[C, P], Awaitable[R]], /
) -> Callable[P, Coroutine[Any, Any, R]]: ...
@overload
def with_conn(  # type: ignore[overload-overlap]
    *, arg: Literal[0] = 0, read_only: bool = False, pool: BoundedPool | None = None
) -> _InjectFirst: ...
@overload
def with_conn(
    *, arg: int | str, read_only: bool = False, pool: BoundedPool | None = None
) -> Callable[[F], F]: ...
def with_conn(
    _fn: Any = None,
    /,
    *,
    arg: int | str = 0,
    read_only: bool = False,
    pool: BoundedPool | None = None,
) -> Any:
    """Inject the calling task's connection into an `async def` function.

    `@with_conn` / `@with_conn()` inject it as the first argument (after self/cls for a
    method whose first parameter is so named), `@with_conn(arg=1)` at another position,
    `@with_conn(arg="conn")` as a keyword argument. A caller that passes its own connection
    there gets no injection. Nested decorated calls in one task share one connection; a
    task created inside one (`asyncio.create_task`, `gather`) gets its own.

    `pool` takes the connection from that pool rather than the global one (looked up at
    each call, so it may be initialized after decoration). `read_only=True` asks a factory
    that routes reads for a replica, as `connect(read_only=True)` does.

    Raises:
        ArgumentTypeError: The function is not an `async def` (a TypeError), or `arg` does
            not fit its signature.
    """
    if not isinstance(read_only, bool):
        raise ArgumentTypeError(f"with_conn(read_only=...) takes a bool, not {read_only!r}")
    if pool is not None and not isinstance(pool, BoundedPool):
        raise ArgumentTypeError(f"with_conn(pool=...) takes a qdbpool.aio pool, not {pool!r}")
    if _fn is None:
        return lambda fn: _decorate(fn, arg, read_only, pool)
    return _decorate(_fn, arg, read_only, pool)
