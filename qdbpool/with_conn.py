"""@with_conn: inject the calling thread's connection into a function.

The wrapper is one ordinary closure (`_injecting`): ask the pool for the thread's connection
(`_checkout`), call the function with it, give it back (`_checkin`). Everything about *where*
the connection goes is worked out once, at decoration time (`_plan`).

- Functions defined in a class body are also wrapped in wrapt's FunctionWrapper, whose
  descriptor binding tells a method (self or cls bound) from a staticmethod stacked on top.
- The function receives the driver's connection itself, not a proxy: the decorator owns
  the release, so there is nothing for a proxy to intercept. (A connection the function
  closes anyway fails the pool's liveness check at the next checkout and is replaced.)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

import wrapt

from qdbpool import _global
from qdbpool.errors import ArgumentTypeError, PoolNotInitializedError
from qdbpool.pool import Pool
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
    wrapper for functions defined in a class body). Called directly it takes the
    parameters after the injected first one (`P`). Looked up on an instance it is a
    method: the first parameter was `self`, so the injected connection is the second one
    and the bound method takes the rest (`Q`, what `P` holds after it).
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
        raise ArgumentTypeError(f"{where}: arg must be a position (int) or a parameter name (str)")
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
            raise ArgumentTypeError(f"{where}: the function has no parameter named {arg!r}")
        return _Plan(keyword=arg, index=-1, name=arg, fills_all=0, ambiguous=False)

    if arg < 0:
        raise ArgumentTypeError(f"{where}: arg must be a position >= 0 or a parameter name")
    if not var_positional and arg >= len(positional):
        raise ArgumentTypeError(
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


@dataclass(frozen=True)
class _Source:
    """Which pool a decorated function takes its connection from: a pool given as such,
    or a global one looked up at each call (so that it may be initialized, or replaced,
    after the function was decorated): the default (name None) or a named one."""

    pool: Pool | None
    name: str | None

    def lookup(self) -> Pool | None:
        if self.pool is not None:
            return self.pool
        return _global.current if self.name is None else _global.named.get(self.name)


_DEFAULT = _Source(None, None)


def _source(pool: object) -> _Source:
    if pool is None:
        return _DEFAULT
    if isinstance(pool, Pool):
        return _Source(pool, None)
    if isinstance(pool, str) and pool:
        return _Source(None, pool)
    raise ArgumentTypeError(
        f"with_conn(pool=...) takes a Pool or the name of a global pool, not {pool!r}"
    )


def _is_connection(value: Any, source: _Source) -> bool:
    pool = source.lookup()
    return isinstance(value, SessionWrapper) or (
        pool is not None and type(value) in pool._conn_types
    )


def _injecting(
    fn: Callable[..., Any], plan: _Plan, read_only: bool, offset: int, source: _Source
) -> Callable[..., Any]:
    """The wrapper around `fn`; `offset` counts a bound self/cls at the head of its args."""
    index = plan.index + offset
    keyword = plan.keyword
    name = plan.name
    # The caller has passed its own connection once it names the parameter, or reaches its
    # position (where, if `ambiguous`, only the argument's type can tell).
    if keyword is not None:
        reached = 1 << 30
    elif plan.ambiguous:
        reached = index + 1
    else:
        reached = plan.fills_all + offset
    ambiguous = plan.ambiguous
    fixed, pool_name = source.pool, source.name
    not_initialized = _NOT_INITIALIZED if pool_name is None else _global.not_initialized(pool_name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # The caller's own connection, by name or by position: nothing to inject.
        if kwargs and name in kwargs:
            if keyword is None and index < len(args) < reached:
                # ... by name, with the parameters after it by position: those follow it
                kwargs = dict(kwargs)
                own = kwargs.pop(name)
                return fn(*args[:index], own, *args[index:], **kwargs)
            return fn(*args, **kwargs)
        if len(args) >= reached and (not ambiguous or _is_connection(args[index], source)):
            return fn(*args, **kwargs)
        # source.lookup(), inlined: this is every call's path.
        pool: Pool | None
        if fixed is not None:
            pool = fixed
        elif pool_name is None:
            pool = _global.current
        else:
            pool = _global.named.get(pool_name)
        if pool is None:
            raise PoolNotInitializedError(not_initialized)
        pooled = pool._checkout(read_only)
        try:
            if keyword is not None:
                kwargs[keyword] = pooled.raw
                return fn(*args, **kwargs)
            if index:
                return fn(*args[:index], pooled.raw, *args[index:], **kwargs)
            # Calls with exact arguments cost half a *args/**kwargs call (CPython inlines
            # them): worth it for the shapes most calls have.
            if not kwargs:
                n = len(args)
                if n == 0:
                    return fn(pooled.raw)
                if n == 1:
                    return fn(pooled.raw, args[0])
                if n == 2:
                    return fn(pooled.raw, args[0], args[1])
            return fn(pooled.raw, *args, **kwargs)
        except BaseException as exc:
            pool._on_error(pooled, exc)
            raise
        finally:
            pool._checkin(pooled)

    return wrapper


def _defined_in_class_body(fn: Callable[..., Any]) -> bool:
    qualname: str = getattr(fn, "__qualname__", "")
    parent, _, _ = qualname.rpartition(".")
    return bool(parent) and not parent.endswith("<locals>")


def _refuse_deferred_bodies(fn: Any) -> None:
    """The connection is given back when the call returns: for a generator, a coroutine or
    an async generator function that is before its body runs, which would then use a
    connection that is back in the pool (maybe another thread's by then)."""
    name = getattr(fn, "__qualname__", fn)
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise ArgumentTypeError(
            f"@with_conn on {name!r}: an async function runs after the call returns, when "
            "the connection is back in the pool; use qdbpool.aio.with_conn"
        )
    if inspect.isgeneratorfunction(fn):
        raise ArgumentTypeError(
            f"@with_conn on {name!r}: a generator's body runs after the call returns, when "
            "the connection is back in the pool; decorate a function that returns a list, "
            "or iterate inside a decorated function"
        )


def _decorate(fn: Any, arg: int | str, read_only: bool, source: _Source) -> Any:
    _refuse_deferred_bodies(getattr(fn, "__func__", fn))
    if isinstance(fn, (staticmethod, classmethod)):
        # We sit under the descriptor, so we know exactly what the call's args hold.
        bound_first = isinstance(fn, classmethod)
        inner = fn.__func__
        plan = _plan(inner, arg, skip_first=bound_first)
        wrapper = _injecting(inner, plan, read_only, int(bound_first), source)
        return type(fn)(_keep_metadata(wrapper, inner))
    if not callable(fn):
        raise ArgumentTypeError(
            f"@with_conn decorates functions and methods, not {type(fn).__name__}"
        )
    if _defined_in_class_body(fn):
        # Whether it will be bound (a method) or not (a staticmethod stacked on top of us)
        # shows only at call time: `arg` must fit at least one of the two readings.
        as_function = _injecting(fn, _plan(fn, arg, skip_first=False), read_only, 0, source)
        try:
            as_method: Callable[..., Any] | None = _injecting(
                fn, _plan(fn, arg, skip_first=True), read_only, 1, source
            )
        except TypeError as exc:
            as_method, method_error = None, str(exc)

        def bind(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            # wrapt tells us what was bound (self, or cls for a classmethod); no instance
            # means nothing was (a staticmethod stacked on top of us) -- or, from Python
            # 3.13 on, a classmethod stacked on top, which calls us with cls first itself.
            if instance is None:
                if not (args and _called_by_classmethod(args[0], wrapper)):
                    return as_function(*args, **kwargs)
                instance, args = args[0], args[1:]
            if as_method is None:
                raise ArgumentTypeError(method_error)
            return as_method(instance, *args, **kwargs)

        wrapper = wrapt.FunctionWrapper(fn, bind)
        return wrapper
    plan = _plan(fn, arg, skip_first=False)
    return _keep_metadata(_injecting(fn, plan, read_only, 0, source), fn)


def _called_by_classmethod(first: Any, wrapper: Any) -> bool:
    """Whether `first` is a class where `wrapper` sits under a classmethod."""
    if not isinstance(first, type):
        return False
    for klass in first.__mro__:
        found = vars(klass).get(wrapper.__name__)
        if isinstance(found, classmethod) and found.__func__ is wrapper:
            return True
    return False


def _keep_metadata(wrapper: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    # __name__, __doc__, __qualname__, __module__ and __wrapped__ (which inspect.signature follows)
    return functools.update_wrapper(wrapper, fn)


@overload
def with_conn(_fn: Callable[Concatenate[C, P], R], /) -> Injected[C, P, R]: ...
# `arg=0` also fits the next overload; checkers take the first that fits, which is meant.
@overload
def with_conn(  # type: ignore[overload-overlap]
    *, arg: Literal[0] = 0, read_only: bool = False, pool: Pool | str | None = None
) -> _InjectFirst: ...
@overload
def with_conn(
    *, arg: int | str, read_only: bool = False, pool: Pool | str | None = None
) -> Callable[[F], F]: ...
def with_conn(
    _fn: Any = None,
    /,
    *,
    arg: int | str = 0,
    read_only: bool = False,
    pool: Pool | str | None = None,
) -> Any:
    """Inject the calling thread's connection from the global pool.

    `@with_conn` / `@with_conn()` inject it as the first argument (after self/cls for
    methods), `@with_conn(arg=1)` at another position, `@with_conn(arg="conn")` as a
    keyword argument; `read_only=True` asks for a replica from factories that route.
    A caller that passes its own connection there gets no injection. Nested decorated
    calls in one thread share one connection.

    `pool` takes the connection from another pool: a name given to `initialize(...,
    name=...)` (looked up at each call, so it may be initialized after decoration), or a
    `Pool` itself. Each pool keeps its own connection per thread: a function of one pool
    called inside a function of another gets its own pool's connection.

    Typing: in the positional form at position 0 (`@with_conn`, `@with_conn()`,
    `@with_conn(read_only=True)`) type checkers see the function without its connection
    parameter and check the rest of every call, for functions and methods alike (see
    `Injected`). With another `arg` the signature is left as written.
    """
    # A bad `arg` is reported when the function is known, so that the error can name it.
    if not isinstance(read_only, bool):
        raise ArgumentTypeError(f"with_conn(read_only=...) takes a bool, not {read_only!r}")
    source = _source(pool)
    if _fn is None:
        return lambda fn: _decorate(fn, arg, read_only, source)
    if not callable(_fn) and not isinstance(_fn, (staticmethod, classmethod)):
        raise ArgumentTypeError(
            f"with_conn takes keyword arguments only (with_conn(arg=...)), not {_fn!r}"
        )
    return _decorate(_fn, arg, read_only, source)
