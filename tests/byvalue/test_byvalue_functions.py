"""Functions by value: lambdas, closures, nested and recursive functions, globals, defaults,
annotations, docstrings, function attributes, partial and wraps."""

from __future__ import annotations

import asyncio
import functools
import io
import pickle
import types

import pytest

import mason
from mason import byvalue
from mason.errors import UnsafeCodeError

from byvalue_helpers import define


def roundtrip(obj, **kwargs):
    data = mason.dumps(obj, **kwargs)
    return mason.loads(data, trusted=True)


def test_lambda():
    f = lambda x, y=2: x * y + 1  # noqa: E731
    g = roundtrip(f)
    assert g is not f
    assert g(3) == 7 and g(3, 3) == 10
    assert g.__name__ == "<lambda>"
    assert g.__defaults__ == (2,)


def test_stdlib_pickle_loads_a_by_value_pickle():
    f = lambda x: x + 41  # noqa: E731
    assert pickle.loads(mason.dumps(f))(1) == 42
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(mason.dumps(f, protocol))(1) == 42


def test_closure_values_and_cells_shared_between_functions():
    def counter():
        count = 0

        def inc(step=1):
            nonlocal count
            count += step
            return count

        def get():
            return count
        return inc, get

    inc, get = roundtrip(counter())
    assert inc() == 1 and inc(5) == 6
    # both functions close over the same cell: after loading too
    assert get() == 6
    assert inc.__closure__[0] is get.__closure__[0]


def test_closure_refers_to_the_function_itself_and_to_each_other():
    def make():
        def even(n):
            return True if n == 0 else odd(n - 1)

        def odd(n):
            return False if n == 0 else even(n - 1)

        def fact(n):
            return 1 if n <= 1 else n * fact(n - 1)
        return even, odd, fact

    even, odd, fact = roundtrip(make())
    assert even(10) and odd(7) and not odd(4)
    assert fact(6) == 720
    # the cell holding fact holds the loaded fact, not a copy
    assert fact.__closure__[0].cell_contents is fact


def test_empty_cell_survives():
    def make(assign):
        def early():
            return later
        if assign:
            later = "assigned"
        return early

    empty = make(False)
    with pytest.raises(ValueError):
        empty.__closure__[0].cell_contents  # an empty cell: pickled as one
    loaded = roundtrip(empty)
    with pytest.raises(ValueError):
        loaded.__closure__[0].cell_contents
    with pytest.raises(NameError, match="later"):
        loaded()
    assert roundtrip(make(True))() == "assigned"


def test_nested_and_recursive_globals():
    ns = define("""
        import math
        SCALE = 3
        UNUSED = object()

        def helper(x):
            return x + 1

        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        def uses(x):
            def inner(y):
                return math.sqrt(y) * SCALE
            return inner(x) + helper(x) + fib(5)
    """)
    data = mason.dumps(ns["uses"])
    f = mason.loads(data, trusted=True)
    assert f(4) == 6.0 + 5 + 5
    # only the globals the function (and the code nested in it) references travel
    assert "UNUSED" not in f.__globals__
    assert set(f.__globals__) >= {"math", "SCALE", "helper", "fib"}
    assert f.__globals__["fib"](10) == 55


def test_globals_travel_with_their_current_values():
    ns = define("""
        LIMIT = 1
        def over(x):
            return x > LIMIT
    """)
    ns["LIMIT"] = 10
    f = roundtrip(ns["over"])
    assert f(5) is False and f(11) is True


def test_functions_of_one_namespace_share_their_globals_after_loading():
    ns = define("""
        state = []
        def push(x):
            state.append(x)
        def total():
            return sum(state)
    """)
    push, total = roundtrip([ns["push"], ns["total"]])
    push(3)
    push(4)
    assert total() == 7
    assert push.__globals__ is total.__globals__


def test_global_statement_writes_to_the_loaded_namespace():
    ns = define("""
        hits = 0
        def hit():
            global hits
            hits += 1
            return hits
    """)
    f = roundtrip(ns["hit"])
    assert f() == 1 and f() == 2
    assert ns["hits"] == 0  # the original namespace is untouched


def test_defaults_kwdefaults_annotations_doc_and_attributes():
    def f(a: int, b: str = "x", *, c: float = 1.5, d=None) -> str:
        """The docstring."""
        return f"{a}{b}{c}{d}"
    f.tag = {"owner": "me"}
    f.__qualname__ = "renamed.f"

    g = roundtrip(f)
    assert g(1) == "1x1.5None"
    assert g(1, "y", c=2, d=3) == "1y23"
    assert g.__defaults__ == ("x",)
    assert g.__kwdefaults__ == {"c": 1.5, "d": None}
    assert g.__annotations__ == f.__annotations__ == {"a": "int", "b": "str", "c": "float",
                                                     "return": "str"}
    assert g.__doc__ == "The docstring."
    assert g.tag == {"owner": "me"}
    assert g.__qualname__ == "renamed.f"
    assert g.__name__ == "f"


def test_functools_partial_and_wraps():
    def add(a, b, *, c=0):
        return a + b + c

    p = functools.partial(add, 1, c=10)
    q = roundtrip(p)
    assert isinstance(q, functools.partial)
    assert q(2) == 13

    def deco(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return ("wrapped", func(*args, **kwargs))
        return wrapper

    @deco
    def hello(name):
        """Say hello."""
        return f"hello {name}"

    w = roundtrip(hello)
    assert w("you") == ("wrapped", "hello you")
    assert w.__name__ == "hello" and w.__doc__ == "Say hello."
    assert w.__wrapped__("me") == "hello me"


def test_generator_and_coroutine_functions():
    def gen(n):
        yield from range(n)

    async def coro(x):
        await asyncio.sleep(0)
        return x * 2

    g, c = roundtrip([gen, coro])
    assert list(g(3)) == [0, 1, 2]
    assert asyncio.run(c(21)) == 42


def test_comprehension_with_set_constant():
    f = lambda xs: [x for x in xs if x in {"alpha", "beta", "gamma"}]  # noqa: E731
    assert roundtrip(f)(["beta", "delta", "gamma"]) == ["beta", "gamma"]


def test_imported_submodule_is_imported_on_load():
    ns = define("""
        import xml.etree.ElementTree
        import xml
        def parse(text):
            return xml.etree.ElementTree.fromstring(text).tag
    """)
    data = mason.dumps(ns["parse"])
    f = pickle.loads(data)
    assert f("<root/>") == "root"
    assert b"xml.etree.ElementTree" in data or b"ElementTree" in data


def test_module_objects_travel_by_reference():
    import json
    data = mason.dumps(json)
    assert mason.loads(data, trusted=True) is json
    with pytest.raises(mason.UnsafeGlobalError, match="module json"):
        mason.loads(data)


def test_dynamic_module_travels_by_value():
    mod = types.ModuleType("made_up_module")
    exec("X = 5\ndef twice(v):\n    return v * X\n", mod.__dict__)
    loaded = roundtrip(mod)
    assert isinstance(loaded, types.ModuleType) and loaded.__name__ == "made_up_module"
    assert loaded.X == 5 and loaded.twice(2) == 10


def test_importable_functions_stay_by_reference():
    import os.path
    data = mason.dumps([os.path.join, functools.reduce, byvalue.importable])
    assert data == pickle.dumps([os.path.join, functools.reduce, byvalue.importable], 5)


def test_main_functions_travel_by_value_not_by_name():
    ns = define("""
        def main_func():
            return "from main"
    """)
    data = mason.dumps(ns["main_func"])
    assert b"_make_function" in data
    assert mason.loads(data, trusted=True)() == "from main"


def test_a_thousand_lambdas_share_their_code():
    fs = [lambda x, i=i: x + i for i in range(1000)]
    data = mason.dumps(fs)
    loaded = mason.loads(data, trusted=True)
    assert [f(1) for f in loaded] == list(range(1, 1001))
    assert len({id(f.__code__) for f in loaded}) == 1
    assert len(data) < 40 * len(fs)


def test_pickler_and_dump_write_by_value():
    f = lambda: "via file"  # noqa: E731
    buf = io.BytesIO()
    mason.dump(f, buf)
    mason.Pickler(buf).dump(f)
    buf.seek(0)
    assert mason.load(buf, trusted=True)() == "via file"
    assert mason.load(buf, trusted=True)() == "via file"


def test_same_function_pickles_to_the_same_bytes():
    ns = define("""
        WORDS = {"b", "a", "c"}
        def f(x):
            return x in WORDS or x in {"q", "r"}
    """)
    assert mason.dumps(ns["f"]) == mason.dumps(ns["f"])
    # sets of strings are written sorted, whatever the hash seed
    assert mason.dumps(ns["f"]).index(b"\x8c\x01a") < mason.dumps(ns["f"]).index(b"\x8c\x01b")


def test_safe_loading_refuses_code_and_names_the_function():
    def secret_sauce(x):
        return x
    data = mason.dumps(secret_sauce)
    with pytest.raises(UnsafeCodeError) as caught:
        mason.loads(data)
    message = str(caught.value)
    assert "carries code" in message
    assert "secret_sauce" in message
    assert "trusted=True" in message and "key=" in message
    assert caught.value.kind == "function"
    assert caught.value.name.endswith("secret_sauce")
    # UnsafeCodeError is an UnsafeGlobalError, and so a pickle.UnpicklingError
    assert isinstance(caught.value, mason.UnsafeGlobalError)
    assert isinstance(caught.value, pickle.UnpicklingError)
    with pytest.raises(UnsafeCodeError):
        mason.Unpickler(io.BytesIO(data)).load()


def test_safe_loading_refuses_code_nested_in_data():
    data = mason.dumps({"config": [1, 2, {"hook": lambda: 1}]})
    with pytest.raises(UnsafeCodeError, match="<lambda>"):
        mason.loads(data)


def test_explicit_allow_of_the_rebuilders_is_the_users_choice():
    data = mason.dumps(lambda: 5)
    assert mason.loads(data, allow=["mason.byvalue.*", "builtins.getattr"])() == 5


def test_a_cell_pickled_with_its_function_is_the_functions_cell():
    def make():
        value = ["shared"]

        def f():
            return value
        return f

    f = make()
    for obj in ([f, f.__closure__[0]], [f.__closure__[0], f]):
        loaded = roundtrip(obj)
        g, cell = (loaded[0], loaded[1]) if callable(loaded[0]) else (loaded[1], loaded[0])
        assert g.__closure__[0] is cell
        assert cell.cell_contents == ["shared"] and g() is cell.cell_contents
