"""The source of @with_conn's wrappers: one template, compiled once per call shape.

Why generated code. Most of what a decorated call costs is CPython's own work, not ours:
a wrapper taking `*args, **kwargs` builds a dict on every call, and CPython 3.11 cannot
inline a call into it (the call starts a fresh C-level eval loop). A wrapper whose
parameters are the function's own, less the connection, is called like any plain Python
function: inlined, nothing built. Measured with callgrind on a warm thread, `f(conn)` costs
1,100 instructions called directly, 3,170 through a ten-line `*args, **kwargs` decorator
and 1,710 through the same decorator with exact parameters.

So a function whose parameters are all plain (positional-or-keyword, no defaults, no
`*args`/`**kwargs`, the connection first) gets a wrapper with exactly those parameters,
plus two that default to a marker, so that a caller can still pass its own connection:
by position (one argument more than the wrapper's own) or by name. Every other function
gets the `*args, **kwargs` form of the same template. The template is the only copy of the
fast path; the parts that differ by shape are filled in below, each from a few lines.

Compiling costs ~0.4 ms, so the source does not name the function's parameters: the
exact form is compiled once per parameter count, with stand-in names (`_qdb_a0`, ...), and
each wrapper's code object then gets the real names (CPython finds arguments by position
in the bytecode and by these names only when binding keywords). Every name the template
uses starts with `_qdb_`, so no parameter of the user's can hide one (a function with such
a parameter gets the `*args, **kwargs` form).
"""

from __future__ import annotations

import keyword
import linecache
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

PREFIX = "_qdb_"

# The fast path: this thread already holds an idle connection and the pool needs no checks
# at checkout, so nothing of the pool's runs but one no-I/O look at the connection after use.
# Every other case goes through the pool's own `_checkout` / `_checkin`.
_TEMPLATE = """\
def _qdb_build(_qdb_fn, _qdb_by_caller, _qdb_checked_out, _qdb_global, _qdb_absent,
               _qdb_is_connection):
    def _qdb_wrapper({params}):
{by_caller}
        _qdb_pool = _qdb_global.current
        # Each test below jumps only a few bytecodes: CPython 3.11 does not specialize a
        # compare whose jump is far enough to need an EXTENDED_ARG.
        try:
            _qdb_held = {slot}
        except AttributeError:  # no pool, a pool without this path, or no connection yet
            return _qdb_checked_out(_qdb_pool, {args}, {kwargs})
        if _qdb_held.depth != 0:  # nested in another call of this thread
            return _qdb_checked_out(_qdb_pool, {args}, {kwargs})
        _qdb_held.depth = 1  # in use *before* the test below: see Pool._claim_idle
        # Stale if its host changed role, or closed (see PooledConnection.mark_closed).
        if _qdb_held.watched.value != _qdb_held.generation:
            _qdb_held.depth = 0
            return _qdb_checked_out(_qdb_pool, {args}, {kwargs})
        _qdb_count = _qdb_held.checkouts + 1
        if _qdb_count < 256:  # a cached small int: counting allocates nothing
            _qdb_held.checkouts = _qdb_count
        else:
            _qdb_pool._count_checkouts(_qdb_held, _qdb_count)
        _qdb_raw = _qdb_held.raw
        try:
{call}
        except BaseException as _qdb_exc:
            _qdb_pool._on_error(_qdb_held, _qdb_exc)
            raise
        finally:
            if _qdb_held.depth != 1:  # released or retired during the call
                _qdb_pool._checkin(_qdb_held)
            else:
                _qdb_look = _qdb_pool._after_use_hint  # an attribute: no method lookup
                try:
                    _qdb_dirty = _qdb_look(_qdb_raw)
                except Exception:
                    _qdb_dirty = True
                if _qdb_dirty:  # maybe a transaction left open, or a lost connection
                    _qdb_pool._settle_after_use(_qdb_held)
                _qdb_held.depth = 0  # stays this thread's as it is,
                if _qdb_held.closed:  # unless it was dropped, or the pool closed meanwhile
                    _qdb_pool._retire(_qdb_held, "the pool closed")
    return _qdb_wrapper
"""

_ROUTE_RW = "_qdb_pool._fast_local.rw"
_ROUTE_RO = "(_qdb_pool._fast_local.ro if _qdb_pool._routes else _qdb_pool._fast_local.rw)"


class _Absent:
    """The default of the exact wrapper's two extra parameters: 'the caller gave none'."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<not given>"


ABSENT = _Absent()


@dataclass(frozen=True)
class Shape:
    """What the template needs to know about one decorated function."""

    params: str  # the wrapper's parameter list, in stand-in names
    real_names: tuple[str, ...] | None  # what the code object's arguments are then called
    by_caller: str  # the test for a connection the caller passed itself
    args: str  # the call's positional arguments, as a tuple (for the full path)
    kwargs: str  # and its keyword arguments, as a dict
    call: str  # the call of the function with the thread's connection
    read_only: bool


def _indent(lines: Sequence[str], depth: int) -> str:
    return "\n".join(" " * depth + line for line in lines)


def usable_name(name: str) -> bool:
    """Whether a parameter can keep its name in the exact wrapper: one of the template's own
    would clash with it."""
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith(PREFIX)


def exact_shape(conn_name: str, rest: Sequence[str], read_only: bool) -> Shape:
    """`fn(conn_name, *rest)`, every parameter plain: the wrapper takes `rest` as they are.

    The caller's own connection arrives either as one positional argument more than
    `rest` (in `_qdb_more`: then `rest` holds fn's first arguments) or by its name.
    """
    stand_ins = [f"_qdb_a{i}" for i in range(len(rest))]
    given = ", ".join(stand_ins)
    return Shape(
        params=", ".join([*stand_ins, "_qdb_more=_qdb_absent", "_qdb_conn=_qdb_absent"]),
        real_names=(*rest, "_qdb_more", conn_name),
        by_caller=_indent(
            [
                "if _qdb_more is not _qdb_absent or _qdb_conn is not _qdb_absent:",
                f"    return _qdb_by_caller({given}{', ' if rest else ''}_qdb_more, _qdb_conn)",
            ],
            8,
        ),
        args=f"({given}{',' if rest else ''})",
        kwargs="{}",
        call=_indent([f"return _qdb_fn(_qdb_raw{', ' if rest else ''}{given})"], 12),
        read_only=read_only,
    )


def generic_shape(
    *,
    keyword: str | None,
    index: int,
    name: str | None,
    fills: int,
    ambiguous: bool,
    read_only: bool,
) -> Shape:
    """Any other function: `*args, **kwargs`, and where the connection goes worked out here.

    The caller has passed its own connection once it names the parameter, or reaches its
    position (where, if `ambiguous`, only the argument's type can tell).
    """
    named = f"(_qdb_kwargs and {name!r} in _qdb_kwargs)" if name is not None else "False"
    reached = f"len(_qdb_args) >= {fills}" if keyword is None else "False"
    test = f"{reached} or {named}"
    if ambiguous:
        test = f"({test}) and ({named} or _qdb_is_connection(_qdb_args[{index}]))"
    if keyword is not None:
        call = [f"_qdb_kwargs[{keyword!r}] = _qdb_raw", "return _qdb_fn(*_qdb_args, **_qdb_kwargs)"]
    elif index == 0:
        # Calls with exact arguments are inlined by 3.11; `*args` and `**kwargs` are not.
        call = [
            "if _qdb_kwargs:",
            "    return _qdb_fn(_qdb_raw, *_qdb_args, **_qdb_kwargs)",
            "_qdb_n = len(_qdb_args)",
            "if _qdb_n == 0:",
            "    return _qdb_fn(_qdb_raw)",
            "if _qdb_n == 1:",
            "    return _qdb_fn(_qdb_raw, _qdb_args[0])",
            "if _qdb_n == 2:",
            "    return _qdb_fn(_qdb_raw, _qdb_args[0], _qdb_args[1])",
            "return _qdb_fn(_qdb_raw, *_qdb_args)",
        ]
    else:
        call = [
            f"return _qdb_fn(*_qdb_args[:{index}], _qdb_raw, *_qdb_args[{index}:], **_qdb_kwargs)"
        ]
    return Shape(
        params="*_qdb_args, **_qdb_kwargs",
        real_names=None,
        by_caller=_indent([f"if {test}:", "    return _qdb_fn(*_qdb_args, **_qdb_kwargs)"], 8),
        args="_qdb_args",
        kwargs="_qdb_kwargs",
        call=_indent(call, 12),
        read_only=read_only,
    )


_builders: dict[str, Callable[..., Any]] = {}
_builders_lock = threading.Lock()


def _builder(shape: Shape) -> Callable[..., Any]:
    """The compiled template for `shape` (compiled once per distinct source)."""
    source = _TEMPLATE.format(
        params=shape.params,
        by_caller=shape.by_caller,
        args=shape.args,
        kwargs=shape.kwargs,
        slot=_ROUTE_RO if shape.read_only else _ROUTE_RW,
        call=shape.call,
    )
    with _builders_lock:
        found = _builders.get(source)
        if found is None:
            filename = f"<qdbpool.with_conn wrapper #{len(_builders)}>"
            namespace: dict[str, Any] = {}
            exec(compile(source, filename, "exec"), namespace)  # our template; names checked
            # Tracebacks through the wrapper show its lines, as for any other source file.
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            found = _builders[source] = namespace["_qdb_build"]
    return found


def build(shape: Shape, fn: Callable[..., Any], *closure: Any) -> Callable[..., Any]:
    """A wrapper of `shape` around `fn`; `closure` is what the template's `_qdb_build` takes
    after `fn`. Its code carries fn's name and, for the exact shape, fn's parameter names."""
    made: Any = _builder(shape)(fn, *closure)
    code = made.__code__
    name = getattr(fn, "__name__", None)
    changes: dict[str, Any] = {}
    if isinstance(name, str) and name.isidentifier():
        # TypeErrors about the call's arguments ("f() missing 1 required ...") name it.
        changes["co_name"] = name
        if hasattr(code, "co_qualname"):  # CPython 3.11+
            changes["co_qualname"] = getattr(fn, "__qualname__", name)
    if shape.real_names is not None:
        count = code.co_argcount
        changes["co_varnames"] = shape.real_names + code.co_varnames[count:]
    if not changes:
        return made  # type: ignore[no-any-return]
    wrapper = types.FunctionType(
        code.replace(**changes),
        made.__globals__,
        made.__name__,
        made.__defaults__,
        made.__closure__,
    )
    return wrapper
