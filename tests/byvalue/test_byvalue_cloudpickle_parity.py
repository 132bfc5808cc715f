"""Everything cloudpickle 3.x pickles, mason pickles: a corpus of cloudpickle's documented
behaviours, each pickled by both and checked after loading."""

from __future__ import annotations

import abc
import collections
import dataclasses
import enum
import functools
import io
import logging
import operator
import pickle
import types
import typing
import weakref

import cloudpickle
import pytest

import mason

from byvalue_helpers import define

assert int(cloudpickle.__version__.split(".")[0]) >= 3, "the bar is cloudpickle 3.x"


def _corpus():
    ns = define("""
        import math, collections, functools, typing, enum, dataclasses, abc

        GLOBAL = 10

        def uses_global(x):
            return x + GLOBAL

        def uses_module(x):
            return math.floor(x)

        class WithSuper(dict):
            def __init__(self, *a):
                super().__init__(*a)
                self.extra = 1

        class RaisesCustom(Exception):
            def __init__(self, msg, code):
                super().__init__(msg, code)
                self.code = code

        class CustomReduce:
            def __init__(self, v):
                self.v = v
            def __reduce__(self):
                return (CustomReduce, (self.v * 2,))

        class Counter:
            count = 0
            def __init__(self):
                Counter.count += 1
    """)
    closure_value = [1, 2, 3]

    def closure():
        return len(closure_value)

    def make_nested():
        def level1():
            def level2():
                return "deep"
            return level2
        return level1

    class Local:
        attr = "class attr"

        def method(self):
            return self.attr

    @dataclasses.dataclass
    class DC:
        a: int
        b: list = dataclasses.field(default_factory=list)

    class E(enum.IntEnum):
        ONE = 1
        TWO = 2

    T = typing.TypeVar("T")

    class G(typing.Generic[T]):
        pass

    class ABCThing(abc.ABC):
        @abc.abstractmethod
        def run(self):
            ...

    class Impl(ABCThing):
        def run(self):
            return "ran"

    text_file = open(__file__, encoding="utf-8")
    text_file.readline()
    with open(__file__, encoding="utf-8") as fh:
        second_line = fh.readlines()[1]
    odict = collections.OrderedDict(a=1, b=2)

    fn_no_module = lambda: "nomod"  # noqa: E731
    fn_no_module.__module__ = None

    return [
        ("lambda", lambda x: x + 1, lambda r: r(1) == 2),
        ("closure", closure, lambda r: r() == 3),
        ("nested", make_nested(), lambda r: r()() == "deep"),
        ("global", ns["uses_global"], lambda r: r(1) == 11),
        ("module global", ns["uses_module"], lambda r: r(2.5) == 2),
        ("super()", ns["WithSuper"]({"a": 1}), lambda r: r == {"a": 1} and r.extra == 1),
        ("exception", ns["RaisesCustom"]("m", 3), lambda r: r.code == 3 and r.args == ("m", 3)),
        ("custom reduce", ns["CustomReduce"](2), lambda r: r.v == 4),
        ("class counter", ns["Counter"], lambda r: r.count == 0),
        ("local class", Local, lambda r: r().method() == "class attr"),
        ("local instance", Local(), lambda r: r.method() == "class attr"),
        ("bound method", Local().method, lambda r: r() == "class attr"),
        ("dataclass", DC(1), lambda r: r.a == 1 and dataclasses.fields(r)[1].name == "b"),
        ("int enum", E.TWO, lambda r: r == 2 and type(r)(1).name == "ONE"),
        ("typevar", T, lambda r: isinstance(r, typing.TypeVar) and r.__name__ == "T"),
        ("generic alias", G[int], lambda r: typing.get_args(r) == (int,)),
        ("abc", Impl(), lambda r: r.run() == "ran"),
        ("partial of lambda", functools.partial(lambda a, b: a - b, 10),
         lambda r: r(3) == 7),
        ("classmethod object", classmethod(closure), lambda r: isinstance(r, classmethod)),
        ("staticmethod object", staticmethod(closure), lambda r: r.__func__() == 3),
        ("property object", property(closure), lambda r: isinstance(r, property)),
        ("cell", types.CellType("content"), lambda r: r.cell_contents == "content"),
        ("code", closure.__code__, lambda r: isinstance(r, types.CodeType)),
        ("importable module", operator, lambda r: r is operator),
        ("dynamic module", _dynamic_module(), lambda r: r.VALUE == 7),
        ("mappingproxy", types.MappingProxyType({"k": 1}), lambda r: r["k"] == 1),
        ("dict keys", {"a": 1}.keys(), lambda r: list(r) == ["a"]),
        ("dict values", {"a": 1}.values(), lambda r: list(r) == [1]),
        ("dict items", {"a": 1}.items(), lambda r: list(r) == [("a", 1)]),
        ("odict keys", odict.keys(), lambda r: list(r) == ["a", "b"]),
        ("odict items", odict.items(), lambda r: list(r) == [("a", 1), ("b", 2)]),
        ("memoryview", memoryview(b"abc"), lambda r: bytes(r) == b"abc"),
        ("text file", text_file, lambda r: r.readline() == second_line),
        ("logger", logging.getLogger("parity"), lambda r: r is logging.getLogger("parity")),
        ("weakset", weakref.WeakSet(), lambda r: len(r) == 0),
        ("builtin type", types.FunctionType, lambda r: r is types.FunctionType),
        ("NoneType", type(None), lambda r: r is type(None)),
        ("getset descriptor", int.__dict__["real"], lambda r: r is int.__dict__["real"]),
        ("function without module", fn_no_module, lambda r: r() == "nomod"),
        ("union of local", typing.Union[Local, None], lambda r: typing.get_args(r)[1] is type(None)),
        ("namedtuple", collections.namedtuple("NT", "a b")(1, 2), lambda r: r.b == 2),
        ("recursive list", _recursive(), lambda r: r[0] is r),
    ]


def _dynamic_module():
    mod = types.ModuleType("parity_dynamic")
    mod.VALUE = 7
    return mod


def _with_cached_property():
    class Cached:
        @functools.cached_property
        def value(self):
            return 42
    return Cached


def _recursive():
    x = []
    x.append(x)
    return x


CORPUS = _corpus()


@pytest.mark.parametrize("name,obj,ok", CORPUS, ids=[c[0] for c in CORPUS])
def test_mason_pickles_what_cloudpickle_pickles(name, obj, ok):
    data = mason.dumps(obj)
    # (mason first: loading a class of this process, cloudpickle overwrites its attributes)
    by_cloudpickle = pickle.loads(cloudpickle.dumps(obj))
    assert ok(by_cloudpickle), f"corpus entry {name} is wrong"
    assert ok(mason.loads(data, trusted=True))
    assert ok(pickle.loads(data))  # and the stdlib loads mason's pickle


def test_beyond_cloudpickle():
    """What cloudpickle 3 refuses and mason pickles."""
    Cached = _with_cached_property()  # a cached_property holds an RLock on 3.11
    with pytest.raises(TypeError):
        cloudpickle.dumps(Cached)
    assert mason.loads(mason.dumps(Cached), trusted=True)().value == 42
    # the descriptor itself, not what it computes on its class
    descriptor = type.__dict__["__dict__"]
    assert mason.loads(mason.dumps(descriptor), trusted=True) is descriptor
    assert pickle.loads(cloudpickle.dumps(descriptor)) is not descriptor
    # sibling closures keep sharing their cell
    def make():
        n = 0
        def inc():
            nonlocal n
            n += 1
        def get():
            return n
        return inc, get
    inc, get = pickle.loads(cloudpickle.dumps(make()))
    inc()
    assert get() == 0  # cloudpickle gave each function its own cell
    inc, get = mason.loads(mason.dumps(make()), trusted=True)
    inc()
    assert get() == 1


def test_the_corpus_covers_cloudpickle_reducers():
    # every type cloudpickle's Pickler reduces specially appears in the corpus
    covered = {type(obj) for _, obj, _ in CORPUS}
    special = set(cloudpickle.Pickler._dispatch_table) - {
        logging.RootLogger,  # a logger of another class: "logger" covers the reducer
        abc.abstractclassmethod, abc.abstractstaticmethod, abc.abstractproperty,
        abc.abstractmethod,  # a function in cloudpickle's table, never a type: never used
        type(collections.OrderedDict().values()), dataclasses._FIELD_BASE,
        types.MethodType,
    }
    assert special <= covered | {io.TextIOWrapper}, special - covered
