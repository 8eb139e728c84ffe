"""@with_conn: inject the calling thread's connection into a function.

Measured on our machines, a wrapt FunctionWrapper costs ~1 us per call and a method call
through an ObjectProxy ~0.6 us more, while a closure costs ~0.3 us. So:
- plain functions get a closure (functools.update_wrapper keeps name, doc and signature);
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

import wrapt

from qdbpool import _global
from qdbpool.errors import PoolNotInitializedError
from qdbpool.factories.base import LOST
from qdbpool.pool import PooledConnection
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
    return _Plan(
        keyword=None,
        index=arg,
        name=name,
        fills_all=1 << 30 if unlimited else len(positional),
        ambiguous=unlimited or later_defaults,
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

    This is every decorated call's path, so it is written for speed. On this CPython a
    bytecode costs ~40 machine instructions, so whatever can be is decided here, once,
    and the common case (this thread already holds an idle connection and the pool needs
    no checks at checkout) is handled inline with no call into the pool but the factory's
    one no-I/O look at the connection after use. Every other case goes through the pool's
    full `_checkout` / `_checkin`.
    """
    index = plan.index + offset
    keyword, name, ambiguous = plan.keyword, plan.name, plan.ambiguous
    first = keyword is None and index == 0  # the common case: fn(conn, ...)
    # The call may hold its own connection once it names the parameter or reaches its
    # position (where, if `ambiguous`, only the argument's type can tell).
    if keyword is not None:
        fills = 1 << 30  # never, by position
    elif ambiguous:
        fills = index + 1
    else:
        fills = plan.fills_all + offset

    def call(*args: Any, **kwargs: Any) -> Any:
        n = len(args)
        if (n >= fills or (kwargs and name in kwargs)) and (
            not ambiguous or name in kwargs or _is_connection(args[index])
        ):
            return fn(*args, **kwargs)  # the caller passed its own connection
        pool = _global.current
        if pool is None:
            raise PoolNotInitializedError(_NOT_INITIALIZED)
        # Each test below jumps only a few bytecodes: CPython 3.11 does not specialize a
        # compare whose jump is far enough to need an EXTENDED_ARG.
        if not pool._fast_path:
            return _call_checked_out(pool, read_only, fn, args, kwargs, keyword, index)
        try:
            pooled: PooledConnection = (
                pool._local.ro if read_only and pool._routes else pool._local.rw
            )
        except AttributeError:  # this thread holds no connection yet
            return _call_checked_out(pool, read_only, fn, args, kwargs, keyword, index)
        if pooled.depth != 0:  # nested in another call of this thread
            return _call_checked_out(pool, read_only, fn, args, kwargs, keyword, index)
        pooled.depth = 1  # in use *before* the test below: see Pool._claim_idle
        # Stale if its host changed role, or closed (see PooledConnection.mark_closed).
        if pooled.watched.value != pooled.generation:
            pooled.depth = 0
            return _call_checked_out(pool, read_only, fn, args, kwargs, keyword, index)
        pooled.checkouts += 1
        raw = pooled.raw
        try:
            if first:
                # Calls with exact arguments run in the caller's eval loop (3.11 inlines
                # them); `*args` builds a tuple, `**kwargs` a dict, and neither is inlined.
                if kwargs:
                    return fn(raw, *args, **kwargs)
                if n == 0:
                    return fn(raw)
                if n == 1:
                    return fn(raw, args[0])
                if n == 2:
                    return fn(raw, args[0], args[1])
                return fn(raw, *args)
            if keyword is not None:
                kwargs[keyword] = raw
                return fn(*args, **kwargs)
            return fn(*args[:index], raw, *args[index:], **kwargs)
        except BaseException as exc:
            pool._on_error(pooled, exc)
            raise
        finally:
            if pooled.depth != 1:  # released or retired during the call
                pool._checkin(pooled)
            else:
                look = pool._state_after_use  # cheaper than a method call
                try:
                    state = look(raw)  # false means CLEAN
                except Exception:
                    state = LOST
                if state and not pooled.closed:
                    # A transaction left open, or a lost connection: reset it or drop it
                    # while still marked in use, so that close() leaves it alone meanwhile.
                    pool._after_use(pooled, int(state))
                pooled.depth = 0  # stays this thread's as it is,
                if pooled.closed:  # unless it was dropped, or the pool closed meanwhile
                    pool._retire(pooled, "the pool closed")

    return call


def _call_checked_out(
    pool: Any,
    read_only: bool,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    keyword: str | None,
    index: int,
) -> Any:
    """The full path: the pool's own checkout (validation, opening) and checkin (reset)."""
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
