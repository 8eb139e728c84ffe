"""@with_conn: injects the calling thread's driver connection from the global pool."""

from __future__ import annotations

import inspect
import sqlite3
import threading
import traceback

import pytest

import qdbpool
from qdbpool import SessionWrapper, with_conn

# ----------------------------------------------------------------- what gets injected


def test_bare_decorator_injects_the_driver_connection_as_first_argument(global_pool, recorder):
    @with_conn
    def use(conn, x):
        return conn, x

    conn, x = use(7)
    assert x == 7
    assert type(conn) is sqlite3.Connection  # the driver's connection, not a SessionWrapper
    assert conn is recorder.created[0]


def test_called_decorator_injects_the_driver_connection_as_first_argument(global_pool, recorder):
    @with_conn()
    def use(conn, x):
        return conn, x

    conn, x = use(7)
    assert (conn, x) == (recorder.created[0], 7)
    assert not isinstance(conn, SessionWrapper)


@pytest.mark.parametrize("args", [(), (1,), (1, 2), (1, 2, 3)])
@pytest.mark.parametrize("kwargs", [{}, {"z": 9}])
def test_a_warm_thread_passes_every_argument_through_in_order(global_pool, recorder, args, kwargs):
    # Calls with few positional arguments take their own call shapes on the fast path.
    @with_conn
    def use(conn, a=None, b=None, *rest, **named):
        return conn, a, b, rest, named

    use()  # the thread's connection exists: the calls below take the fast path
    padded = (*args, None, None)
    expected = (recorder.created[0], padded[0], padded[1], args[2:], kwargs)
    assert use(*args, **kwargs) == expected
    assert use(*args, **kwargs) == expected  # again, now that nothing is new
    assert global_pool.stats().created == 1


# The call forms of a function whose parameters are all plain, on a warm thread.


def plain_0(conn):
    return (conn,)


def plain_1(conn, a):
    return conn, a


def plain_3(conn, a, b, c):
    return conn, a, b, c


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "given"),
    [
        (plain_0, (), {}, ()),
        (plain_1, (1,), {}, (1,)),
        (plain_1, (), {"a": 1}, (1,)),
        (plain_3, (1, 2, 3), {}, (1, 2, 3)),
        (plain_3, (1,), {"c": 3, "b": 2}, (1, 2, 3)),
    ],
)
def test_a_plain_function_on_a_warm_thread_takes_its_arguments_by_position_or_name(
    global_pool, recorder, fn, args, kwargs, given
):
    use = with_conn(fn)
    for _ in range(3):  # the first call opens the connection; the others take the fast path
        assert use(*args, **kwargs) == (recorder.created[0], *given)
    assert global_pool.stats().created == 1
    assert global_pool.stats().checkouts == 3


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("own", 1, 2, 3), {}),  # every parameter by position
        ((1, 2, 3), {"conn": "own"}),  # the others by position, the connection by name
        ((), {"c": 3, "conn": "own", "a": 1, "b": 2}),  # everything by name
    ],
)
def test_a_plain_function_given_a_connection_in_any_form_runs_with_it(
    global_pool, recorder, own_conn, args, kwargs
):
    use = with_conn(plain_3)
    use(1, 2, 3)  # warm: the thread holds a connection
    args = tuple(own_conn if a == "own" else a for a in args)
    kwargs = {k: own_conn if v == "own" else v for k, v in kwargs.items()}
    assert use(*args, **kwargs) == (own_conn, 1, 2, 3)
    assert global_pool.stats().checkouts == 1  # the caller's own calls check nothing out


def test_a_plain_function_called_wrongly_raises_typeerror_naming_it(global_pool, own_conn):
    use = with_conn(plain_3)
    with pytest.raises(TypeError, match=r"plain_3\(\) missing 1 required positional argument: 'c'"):
        use(1, 2)
    with pytest.raises(TypeError, match="plain_3"):
        use(own_conn, 1, 2, 3, 4)  # one more than the function takes
    with pytest.raises(TypeError, match="multiple values for argument 'conn'"):
        use(own_conn, 1, 2, 3, conn=own_conn)
    assert global_pool.stats().in_use == 0


def test_parameters_named_like_the_wrappers_own_variables_are_passed_through(global_pool, recorder):
    @with_conn
    def use(conn, fn, pooled, pool, raw, wrapper):
        return conn, fn, pooled, pool, raw, wrapper

    for _ in range(2):
        assert use(1, 2, 3, 4, 5) == (recorder.created[0], 1, 2, 3, 4, 5)


def test_a_traceback_through_the_wrapper_shows_its_source_lines(global_pool):
    @with_conn
    def fails(conn, x):
        raise ValueError(x)

    for _ in range(2):  # a cold thread, then a warm one
        with pytest.raises(ValueError) as caught:
            fails(1)
        shown = "".join(traceback.format_tb(caught.value.__traceback__))
        assert "qdbpool/with_conn.py" in shown
        assert "return fn(pooled.raw, args[0])" in shown


def test_arg_position_injects_at_that_position(global_pool, recorder):
    @with_conn(arg=1)
    def use(a, conn, b):
        return a, conn, b

    assert use("a", "b") == ("a", recorder.created[0], "b")


def test_arg_name_injects_as_that_keyword_argument(global_pool, recorder):
    @with_conn(arg="conn")
    def use(x, conn=None):
        return x, conn

    assert use(1) == (1, recorder.created[0])


def test_arg_name_injects_a_keyword_only_parameter(global_pool, recorder):
    @with_conn(arg="conn")
    def use(x, *, conn):
        return x, conn

    assert use(1) == (1, recorder.created[0])


def test_arg_name_is_accepted_for_a_function_with_var_keyword(global_pool, recorder):
    @with_conn(arg="db")
    def use(**kwargs):
        return kwargs

    assert use(a=1) == {"a": 1, "db": recorder.created[0]}


def test_decorated_function_returns_its_result_and_releases_the_connection(
    make_global_pool, recorder
):
    pool = make_global_pool(recorder)

    @with_conn
    def use(conn):
        return conn.execute("SELECT 5").fetchone()

    assert use() == (5,)
    stats = pool.stats()
    assert (stats.checkouts, stats.open, stats.in_use) == (1, 1, 0)


def test_an_ordinary_error_propagates_unchanged_and_releases_the_connection(
    make_global_pool, recorder
):
    pool = make_global_pool(recorder)

    class Boom(Exception):
        pass

    @with_conn
    def use(conn):
        raise Boom("x")

    with pytest.raises(Boom, match="x"):
        use()
    assert pool.stats().in_use == 0


def test_repeated_calls_in_one_thread_reuse_one_connection(make_global_pool, recorder):
    make_global_pool(recorder)

    @with_conn
    def use(conn):
        return conn

    assert use() is use() is use()
    assert len(recorder.created) == 1


def test_calls_in_different_threads_get_different_connections(global_pool, recorder):
    @with_conn
    def use(conn):
        return conn

    got = []
    t = threading.Thread(target=lambda: got.append(use()))
    t.start()
    t.join(timeout=30)
    got.append(use())
    assert got[0] is not got[1]
    assert len(recorder.created) == 2


def test_nested_decorated_calls_in_one_thread_share_one_connection(make_global_pool, recorder):
    pool = make_global_pool(recorder)

    @with_conn
    def inner(conn):
        return conn, pool.stats().in_use

    @with_conn
    def outer(conn):
        return conn, inner()

    conn, (inner_conn, in_use) = outer()
    assert inner_conn is conn
    assert in_use == 1
    assert len(recorder.created) == 1
    assert pool.stats().in_use == 0


def test_read_only_on_a_non_routing_factory_uses_the_same_connection(make_global_pool, recorder):
    make_global_pool(recorder)

    @with_conn(read_only=True)
    def read(conn):
        return conn

    @with_conn
    def write(conn):
        return conn, read()

    conn, read_conn = write()
    assert read_conn is conn
    assert read() is conn
    assert len(recorder.created) == 1


def test_decorating_before_initialize_is_fine_and_the_pool_is_looked_up_per_call(recorder):
    @with_conn
    def use(conn):
        return conn

    qdbpool.initialize(recorder)
    assert use() is recorder.created[0]


# ----------------------------------------------------------------- every kind of callable


class Repo:
    """Every kind of callable a user decorates, each returning what it received."""

    @with_conn
    def method(self, conn, x):
        """A method."""
        return self, conn, x

    @with_conn
    @staticmethod
    def static_under(conn, x):
        """with_conn over staticmethod."""
        return None, conn, x

    @staticmethod
    @with_conn
    def static_over(conn, x):
        """staticmethod over with_conn."""
        return None, conn, x

    @with_conn
    @classmethod
    def class_under(cls, conn, x):
        """with_conn over classmethod."""
        return cls, conn, x

    @classmethod
    @with_conn
    def class_over(cls, conn, x):
        """classmethod over with_conn."""
        return cls, conn, x


class PlainRepo:
    """Repo without the decorator: what signatures, names and docs must look like."""

    def method(self, conn, x):
        """A method."""

    @staticmethod
    def static_under(conn, x):
        """with_conn over staticmethod."""

    @staticmethod
    def static_over(conn, x):
        """staticmethod over with_conn."""

    @classmethod
    def class_under(cls, conn, x):
        """with_conn over classmethod."""

    @classmethod
    def class_over(cls, conn, x):
        """classmethod over with_conn."""


KINDS = ["method", "static_under", "static_over", "class_under", "class_over"]


def expected_first(kind: str, repo: Repo) -> object:
    return {"method": repo, "static_under": None, "static_over": None}.get(kind, Repo)


@pytest.mark.parametrize("kind", KINDS)
def test_injects_into_every_kind_of_method_called_on_an_instance(global_pool, recorder, kind):
    repo = Repo()
    first, conn, x = getattr(repo, kind)(7)
    assert first is expected_first(kind, repo)
    assert conn is recorder.created[0]
    assert x == 7


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "method"])
def test_injects_into_static_and_class_methods_called_on_the_class(global_pool, recorder, kind):
    first, conn, x = getattr(Repo, kind)(7)
    assert first is expected_first(kind, Repo())
    assert conn is recorder.created[0]
    assert x == 7


def test_injects_into_a_method_called_through_the_class_with_an_explicit_self(
    global_pool, recorder
):
    repo = Repo()
    assert Repo.method(repo, 7) == (repo, recorder.created[0], 7)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_method_keeps_name_doc_and_signature(kind):
    decorated, plain = getattr(Repo, kind), getattr(PlainRepo, kind)
    assert decorated.__name__ == plain.__name__ == kind
    assert decorated.__doc__ == plain.__doc__
    assert inspect.signature(decorated) == inspect.signature(plain)
    bound, plain_bound = getattr(Repo(), kind), getattr(PlainRepo(), kind)
    assert inspect.signature(bound) == inspect.signature(plain_bound)


@pytest.mark.parametrize("decorator", [with_conn, with_conn(), with_conn(arg="conn")])
def test_a_decorated_function_keeps_name_doc_and_signature(decorator):
    def load(conn, table: str, limit: int = 10) -> list[str]:
        """Load rows."""
        return []

    decorated = decorator(load)
    assert decorated.__name__ == "load"
    assert decorated.__qualname__ == load.__qualname__
    assert decorated.__doc__ == "Load rows."
    assert decorated.__module__ == load.__module__
    assert inspect.signature(decorated) == inspect.signature(load)


class PositionedRepo:
    """Methods whose connection is not the first parameter after self/cls."""

    @with_conn(arg=1)
    def method(self, x, conn):
        return x, conn

    @with_conn(arg="conn")
    def method_kw(self, x, conn=None):
        return x, conn

    @classmethod
    @with_conn(arg=1)
    def class_over(cls, x, conn):
        return x, conn

    @with_conn(arg=1)
    @classmethod
    def class_under(cls, x, conn):
        return x, conn

    @with_conn(arg=1)
    @staticmethod
    def static_under(x, conn):
        return x, conn


@pytest.mark.parametrize(
    "name", ["method", "method_kw", "class_over", "class_under", "static_under"]
)
def test_arg_position_and_name_work_on_methods(global_pool, recorder, name):
    assert getattr(PositionedRepo(), name)("x") == ("x", recorder.created[0])


def test_arg_position_works_with_staticmethod_stacked_over_the_decorator(global_pool, recorder):
    class Stacked:
        @staticmethod
        @with_conn(arg=1)
        def static_over(x, conn):
            return x, conn

    assert Stacked.static_over("x") == ("x", recorder.created[0])
    assert Stacked().static_over("x") == ("x", recorder.created[0])


# ----------------------------------------------------------------- the caller's own connection


@pytest.fixture
def own_conn():
    conn = sqlite3.connect(":memory:")
    yield conn
    conn.close()


def test_a_connection_passed_positionally_in_every_parameter_is_not_replaced(
    global_pool, recorder, own_conn
):
    @with_conn
    def use(conn, x):
        return conn, x

    assert use(own_conn, 1) == (own_conn, 1)
    assert recorder.created == []


def test_a_connection_passed_by_the_parameter_name_is_not_replaced(global_pool, recorder, own_conn):
    @with_conn
    def use(conn, x):
        return conn, x

    assert use(x=1, conn=own_conn) == (own_conn, 1)
    assert recorder.created == []


def test_a_connection_passed_as_the_injection_keyword_is_not_replaced(
    global_pool, recorder, own_conn
):
    @with_conn(arg="conn")
    def use(x, conn=None):
        return x, conn

    assert use(1, conn=own_conn) == (1, own_conn)
    assert recorder.created == []


def test_a_session_wrapper_passed_to_a_star_args_function_is_not_replaced(global_pool, recorder):
    @with_conn
    def use(conn, *rest):
        return conn, rest

    with global_pool.connect() as mine:
        got, rest = use(mine, 1, 2)
        assert got is mine
        assert rest == (1, 2)
        assert global_pool.stats().checkouts == 1


def test_a_connection_of_the_pools_type_passed_to_a_function_with_defaults_is_not_replaced(
    global_pool, recorder, own_conn
):
    @with_conn
    def use(conn, limit=10):
        return conn, limit

    injected, limit = use()  # the pool has now made a sqlite3.Connection
    assert (injected, limit) == (recorder.created[0], 10)
    assert use(own_conn) == (own_conn, 10)
    assert use(own_conn, 3) == (own_conn, 3)


def test_a_non_connection_value_in_a_function_with_defaults_gets_the_connection_before_it(
    global_pool, recorder
):
    @with_conn
    def use(conn, limit=10):
        return conn, limit

    assert use(3) == (recorder.created[0], 3)


def test_a_connection_passed_to_a_method_is_not_replaced(global_pool, recorder, own_conn):
    repo = Repo()
    assert repo.method(own_conn, 1) == (repo, own_conn, 1)
    assert Repo.static_over(own_conn, 1) == (None, own_conn, 1)
    assert Repo.class_under(own_conn, 1) == (Repo, own_conn, 1)
    assert Repo.class_over(own_conn, 1) == (Repo, own_conn, 1)
    assert recorder.created == []


# ----------------------------------------------------------------- bad arguments


def distinctive_function_name(conn, x):
    return conn, x


def no_params_function_name():
    return None


@pytest.mark.parametrize(
    ("arg", "fn"),
    [
        pytest.param(-1, distinctive_function_name, id="negative"),
        pytest.param(2, distinctive_function_name, id="beyond-the-parameters"),
        pytest.param(0, no_params_function_name, id="function-without-parameters"),
        pytest.param("nope", distinctive_function_name, id="unknown-name"),
        pytest.param("conn", no_params_function_name, id="name-on-function-without-parameters"),
        pytest.param(True, distinctive_function_name, id="bool"),
        pytest.param(1.0, distinctive_function_name, id="float"),
    ],
)
def test_a_bad_arg_raises_type_error_at_decoration_naming_the_function(arg, fn):
    with pytest.raises(TypeError, match=fn.__name__):
        with_conn(arg=arg)(fn)


def test_any_position_is_accepted_for_a_star_args_function(global_pool, recorder):
    @with_conn(arg=3)
    def use(*args):
        return args

    assert use("a", "b", "c", "d") == ("a", "b", "c", recorder.created[0], "d")


def test_an_arg_that_fits_no_method_reading_raises_type_error_naming_the_method_when_called():
    # In a class body the decorator cannot know yet whether a staticmethod will be stacked
    # on top, so a position that fits only the unbound reading may be reported at call time.
    class Repo:
        @with_conn
        def only_self(self):
            return self

    with pytest.raises(TypeError, match="only_self"):
        Repo().only_self()


def test_an_arg_that_fits_neither_reading_raises_type_error_naming_the_method_at_decoration():
    with pytest.raises(TypeError, match="two_params"):

        class Repo:
            @with_conn(arg=2)
            def two_params(self, conn):
                return conn


def test_a_caller_passing_its_own_connection_needs_no_initialized_pool():
    @with_conn()
    def first(conn, x):
        return conn.execute("SELECT ?", (x,)).fetchone()[0]

    @with_conn(arg="conn")
    def by_name(x, conn=None):
        return conn.execute("SELECT ?", (x,)).fetchone()[0]

    own = sqlite3.connect(":memory:")
    try:
        assert first(own, 7) == 7
        assert by_name(8, conn=own) == 8
        with pytest.raises(qdbpool.PoolNotInitializedError):
            first(9)  # an injection does need the pool
    finally:
        own.close()


def _rows(conn, n):
    yield from range(n)


async def _coroutine(conn):
    return conn


async def _async_rows(conn):
    yield conn


@pytest.mark.parametrize(
    ("fn", "says"),
    [(_rows, "generator"), (_coroutine, "qdbpool.aio"), (_async_rows, "qdbpool.aio")],
    ids=["generator", "coroutine", "async generator"],
)
@pytest.mark.parametrize("wrap", [None, staticmethod, classmethod])
def test_a_function_whose_body_runs_after_the_call_returns_is_refused(fn, says, wrap):
    # The connection is given back when the call returns: these bodies ran on it after
    # that, while the pool could hand it to another thread.
    with pytest.raises(qdbpool.ArgumentTypeError, match=says):
        with_conn(fn if wrap is None else wrap(fn))
