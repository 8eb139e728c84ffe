"""@with_conn: inject the calling thread's connection into a function.

Measured on our machines, a wrapt FunctionWrapper costs ~1 us per call and a method call
through an ObjectProxy ~0.6 us more, while a plain function costs ~0.3 us. So:
- plain functions get a plain function, compiled from inject_source's template for the
  function's own parameters where they allow it (functools.update_wrapper keeps name, doc
  and signature);
- functions defined in a class body get wrapt's FunctionWrapper, whose descriptor binding is
  right whatever `staticmethod`/`classmethod` is stacked on top;
- the function receives the driver's connection itself, not a proxy: the decorator owns
  the release, so there is nothing for a proxy to intercept. (A connection the function
  closes anyway fails the pool's liveness check at the next checkout and is replaced.)
Everything about *where* to inject is worked out once, at decoration time.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

import wrapt

from qdbpool import _global, inject_source
from qdbpool.errors import PoolNotInitializedError
from qdbpool.inject_source import ABSENT, build, exact_shape, generic_shape
from qdbpool.session import SessionWrapper

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C")  # the injected parameter's type, or `self`'s for a method
P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Injected(Generic[C, P, R_co]):
    """How type checkers see a function decorated with `@with_conn` / `@with_conn()`.

    Typing only: at run time the decorated function is a plain function (or a wrapt
    wrapper for methods). Called directly it takes the parameters after the injected
    first one (`P`). Looked up on an instance it is a method: the first parameter was
    `self`, so the injected connection is the second one and the bound method takes the
    rest (`Q`, what `P` holds after it).
    """

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        raise NotImplementedError  # never instantiated: see the class docstring

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> Injected[C, P, R_co]: ...
    @overload
    def __get__(
        self: Injected[C, Concatenate[Any, Q], R], instance: C, owner: type[Any]
    ) -> Callable[Q, R]: ...
    def __get__(self, instance: Any, owner: Any) -> Any:
        raise NotImplementedError


class _InjectFirst(Protocol):
    """What `@with_conn()` returns, for type checkers: the decorator of the positional form."""

    def __call__(self, fn: Callable[Concatenate[C, P], R], /) -> Injected[C, P, R]: ...


_NOT_INITIALIZED = (
    "the global connection pool is not initialized: call qdbpool.initialize(...) "
    "before calling functions decorated with @with_conn"
)


@dataclass(frozen=True)
class _Plan:
    """Where the connection goes, in terms of the call's own (unbound) arguments."""

    keyword: str | None  # inject as this keyword argument ...
    index: int  # ... or at this position
    name: str | None  # the parameter's name at that position (callers may pass it by name)
    fills_all: int  # len(args) at which the caller has already filled the position
    ambiguous: bool  # caller-passed connection can only be told by its type
    # Every parameter's name, connection first, when all of them are plain (positional or
    # keyword, no default) and the connection is the first: such a function gets a wrapper
    # with exact parameters (see inject_source.py).
    plain: tuple[str, ...] | None = None


def _plan(fn: Callable[..., Any], arg: int | str, skip_first: bool) -> _Plan:
    where = f"@with_conn(arg={arg!r}) on {getattr(fn, '__qualname__', fn)!r}"
    if isinstance(arg, bool) or not isinstance(arg, (int, str)):
        raise TypeError(f"{where}: arg must be a position (int) or a parameter name (str)")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: trust the caller
        return _Plan(
            keyword=arg if isinstance(arg, str) else None,
            index=arg if isinstance(arg, int) else -1,
            name=arg if isinstance(arg, str) else None,
            fills_all=1 << 30,
            ambiguous=isinstance(arg, int),
        )
    if skip_first and params:
        params = params[1:]  # self / cls
    kind = inspect.Parameter
    positional = [p for p in params if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)]
    var_positional = any(p.kind is kind.VAR_POSITIONAL for p in params)
    var_keyword = any(p.kind is kind.VAR_KEYWORD for p in params)

    if isinstance(arg, str):
        names = {p.name for p in params if p.kind is not kind.POSITIONAL_ONLY}
        if arg not in names and not var_keyword:
            raise TypeError(f"{where}: the function has no parameter named {arg!r}")
        return _Plan(keyword=arg, index=-1, name=arg, fills_all=0, ambiguous=False)

    if arg < 0:
        raise TypeError(f"{where}: arg must be a position >= 0 or a parameter name")
    if not var_positional and arg >= len(positional):
        raise TypeError(
            f"{where}: the function takes only {len(positional)} positional "
            f"parameter{'s' if len(positional) != 1 else ''}"
        )
    name = positional[arg].name if arg < len(positional) else None
    if name is not None and positional[arg].kind is kind.POSITIONAL_ONLY:
        name = None
    # With no *args and no defaults after the connection, a call that fills every positional
    # parameter has passed its own connection; otherwise only the argument's type can tell.
    later_defaults = any(p.default is not kind.empty for p in positional[arg:])
    unlimited = var_positional
    plain = arg == 0 and all(
        p.kind is kind.POSITIONAL_OR_KEYWORD
        and p.default is kind.empty
        and inject_source.usable_name(p.name)
        for p in params
    )
    return _Plan(
        keyword=None,
        index=arg,
        name=name,
        fills_all=1 << 30 if unlimited else len(positional),
        ambiguous=unlimited or later_defaults,
        plain=tuple(p.name for p in params) if plain else None,
    )


def _is_connection(value: Any) -> bool:
    pool = _global.current
    return isinstance(value, SessionWrapper) or (
        pool is not None and type(value) in pool._conn_types
    )


def _injecting(
    fn: Callable[..., Any], plan: _Plan, read_only: bool, offset: int
) -> Callable[..., Any]:
    """The wrapper around `fn`; `offset` counts a bound self/cls at the head of its args.

    This is every decorated call's path, so whatever can be is decided here, once: the
    per-call code is inject_source's template, filled in for this function's shape.
    """
    index = plan.index + offset
    checked_out = functools.partial(_call_checked_out, read_only, fn, plan.keyword, index)
    if offset == 0 and plan.plain is not None:
        conn_name, *rest = plan.plain
        shape = exact_shape(conn_name, rest, read_only)
        by_caller: Callable[..., Any] | None = _own_connection_call(fn, conn_name, rest)
    else:
        shape = generic_shape(
            keyword=plan.keyword,
            index=index,
            name=plan.name,
            fills=index + 1 if plan.ambiguous else plan.fills_all + offset,
            ambiguous=plan.ambiguous,
            read_only=read_only,
        )
        by_caller = None
    return build(shape, fn, by_caller, checked_out, _global, ABSENT, _is_connection)


def _own_connection_call(
    fn: Callable[..., Any], conn_name: str, rest: Sequence[str]
) -> Callable[..., Any]:
    """For the exact wrapper (see inject_source.exact_shape): the call of a caller who
    passed a connection, as one positional argument more than the wrapper's or by name."""

    def call(*values: Any) -> Any:
        *given, more, conn = values
        if conn is ABSENT:  # fn's arguments, all of them by position
            return fn(*given, more)
        if more is ABSENT:  # the connection by name, and the rest bound by the wrapper
            return fn(conn, *given)
        return fn(*given, more, **{conn_name: conn})  # both: fn says what is wrong

    return call


def _call_checked_out(
    read_only: bool,
    fn: Callable[..., Any],
    keyword: str | None,
    index: int,
    pool: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """The full path: the pool's own checkout (validation, opening) and checkin (reset)."""
    if pool is None:
        raise PoolNotInitializedError(_NOT_INITIALIZED)
    pooled = pool._checkout(read_only)
    try:
        if keyword is not None:
            kwargs[keyword] = pooled.raw
            return fn(*args, **kwargs)
        return fn(*args[:index], pooled.raw, *args[index:], **kwargs)
    except BaseException as exc:
        pool._on_error(pooled, exc)
        raise
    finally:
        pool._checkin(pooled)


def _defined_in_class_body(fn: Callable[..., Any]) -> bool:
    qualname: str = getattr(fn, "__qualname__", "")
    parent, _, _ = qualname.rpartition(".")
    return bool(parent) and not parent.endswith("<locals>")


def _decorate(fn: Any, arg: int | str, read_only: bool) -> Any:
    if isinstance(fn, (staticmethod, classmethod)):
        # We sit under the descriptor, so we know exactly what the call's args hold.
        bound_first = isinstance(fn, classmethod)
        inner = fn.__func__
        plan = _plan(inner, arg, skip_first=bound_first)
        return type(fn)(_keep_metadata(_injecting(inner, plan, read_only, int(bound_first)), inner))
    if not callable(fn):
        raise TypeError(f"@with_conn decorates functions and methods, not {type(fn).__name__}")
    if _defined_in_class_body(fn):
        # Whether it will be bound (a method) or not (a staticmethod stacked on top of us)
        # shows only at call time: `arg` must fit at least one of the two readings.
        as_function = _injecting(fn, _plan(fn, arg, skip_first=False), read_only, 0)
        try:
            as_method: Callable[..., Any] | None = _injecting(
                fn, _plan(fn, arg, skip_first=True), read_only, 1
            )
        except TypeError as exc:
            as_method, method_error = None, str(exc)

        def bind(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            # wrapt tells us what was bound (self, or cls for a classmethod); no instance
            # means nothing was (a staticmethod stacked on top of us).
            if instance is None:
                return as_function(*args, **kwargs)
            if as_method is None:
                raise TypeError(method_error)
            return as_method(instance, *args, **kwargs)

        return wrapt.FunctionWrapper(fn, bind)
    return _keep_metadata(_injecting(fn, _plan(fn, arg, skip_first=False), read_only, 0), fn)


def _keep_metadata(wrapper: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    # __name__, __doc__, __qualname__, __module__ and __wrapped__ (which inspect.signature follows)
    return functools.update_wrapper(wrapper, fn)


@overload
def with_conn(_fn: Callable[Concatenate[C, P], R], /) -> Injected[C, P, R]: ...
# `arg=0` also fits the next overload; checkers take the first that fits, which is meant.
@overload
def with_conn(  # type: ignore[overload-overlap]
    *, arg: Literal[0] = 0, read_only: bool = False
) -> _InjectFirst: ...
@overload
def with_conn(*, arg: int | str, read_only: bool = False) -> Callable[[F], F]: ...
def with_conn(_fn: Any = None, /, *, arg: int | str = 0, read_only: bool = False) -> Any:
    """Inject the calling thread's connection from the global pool.

    `@with_conn` / `@with_conn()` inject it as the first argument (after self/cls for
    methods), `@with_conn(arg=1)` at another position, `@with_conn(arg="conn")` as a
    keyword argument; `read_only=True` asks for a replica from factories that route.
    A caller that passes its own connection there gets no injection. Nested decorated
    calls in one thread share one connection.

    Typing: in the positional form at position 0 (`@with_conn`, `@with_conn()`,
    `@with_conn(read_only=True)`) type checkers see the function without its connection
    parameter and check the rest of every call, for functions and methods alike (see
    `Injected`). With another `arg` the signature is left as written.
    """
    # A bad `arg` is reported when the function is known, so that the error can name it.
    if not isinstance(read_only, bool):
        raise TypeError(f"with_conn(read_only=...) takes a bool, not {read_only!r}")
    if _fn is None:
        return lambda fn: _decorate(fn, arg, read_only)
    if not callable(_fn) and not isinstance(_fn, (staticmethod, classmethod)):
        raise TypeError(f"with_conn takes keyword arguments only (with_conn(arg=...)), not {_fn!r}")
    return _decorate(_fn, arg, read_only)
