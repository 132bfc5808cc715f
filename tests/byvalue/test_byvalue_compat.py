"""By value and pickle: identical output for what pickle can pickle, by_value=False refuses
exactly what pickle refuses, the hooks of pickle's Pickler keep working."""

from __future__ import annotations

import collections
import copyreg
import datetime
import decimal
import fractions
import functools
import io
import os
import pickle
import sys
import threading
import types
from pathlib import Path

import pytest

import mason
from mason import byvalue


class Plain:
    def __init__(self, a=1):
        self.a = a

    def __eq__(self, other):
        return type(other) is Plain and other.a == self.a

    def method(self):
        return self.a


class WithSlots:
    __slots__ = ("x",)

    def __init__(self):
        self.x = 1


def local_function():
    def inner():
        pass
    return inner


PICKLABLE = [
    None, True, 1, 2 ** 100, 1.5, 1j, "text", b"bytes", bytearray(b"ba"), (1, "a"), [1, [2]],
    {"k": {"n": 1}}, {1, 2}, frozenset({"a"}), range(5), slice(1, 2),
    datetime.datetime(2024, 1, 2, 3, 4, 5), decimal.Decimal("1.5"), fractions.Fraction(1, 3),
    collections.OrderedDict(a=1), collections.Counter("abc"), collections.deque([1, 2]),
    Plain(5), Plain, Plain.method, Plain(3).method, functools.partial(max, 1), len, os.path.join,
    Path("/tmp/x"), ValueError("boom"), type(None), NotImplemented, Ellipsis, WithSlots(),
    functools.reduce, collections.defaultdict(list, {"a": [1]}),
]

UNPICKLABLE_BY_PICKLE = [
    lambda: 1, local_function(), staticmethod(len), classmethod(len), property(len),
    types.MappingProxyType({"a": 1}), {}.keys(), {"a": 1}.values(), {"a": 1}.items(),
    memoryview(b"abc"), local_function().__code__, types, types.CellType(3),
]

NEVER_PICKLABLE = [threading.Lock(), (i for i in ()), sys._getframe()]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_output_is_pickles_for_what_pickle_pickles(protocol):
    for obj in PICKLABLE:
        if protocol < 2 and type(obj) is WithSlots:
            continue  # pickle refuses slotted instances below protocol 2
        expected = pickle.dumps(obj, protocol)
        assert mason.dumps(obj, protocol) == expected, obj
        assert mason.dumps(obj, protocol, by_value=False) == expected, obj
        buf = io.BytesIO()
        mason.Pickler(buf, protocol).dump(obj)
        assert buf.getvalue() == expected, obj
        buf = io.BytesIO()
        mason.dump(obj, buf, protocol, by_value=False)
        assert buf.getvalue() == expected, obj


def test_a_mixed_object_keeps_pickle_bytes_for_its_picklable_parts():
    # the by-value Pickler (not the plain path) writes the same bytes for ordinary parts
    obj = [PICKLABLE, lambda: 1]
    data = mason.dumps(obj)
    assert pickle.dumps(PICKLABLE, 5)[2:-1].split(b"\x94")[1] in data
    assert mason.loads(data, trusted=True)[0][:20] == PICKLABLE[:20]


def test_strict_mode_refuses_exactly_what_pickle_refuses():
    for obj in UNPICKLABLE_BY_PICKLE + NEVER_PICKLABLE:
        with pytest.raises(Exception) as by_pickle:
            pickle.dumps(obj)
        with pytest.raises(mason.PicklingError) as by_mason:
            mason.dumps(obj, by_value=False)
        # the same kind of error, so code catching pickle's errors keeps working
        assert isinstance(by_mason.value, type(by_pickle.value)), obj
        assert str(by_pickle.value) in str(by_mason.value)
        with pytest.raises(type(by_pickle.value)):
            mason.Pickler(io.BytesIO(), by_value=False).dump(obj)


def test_default_mode_pickles_what_pickle_cannot():
    for obj in UNPICKLABLE_BY_PICKLE:
        loaded = mason.loads(mason.dumps(obj), trusted=True)
        assert type(loaded) is type(obj) or isinstance(obj, memoryview), obj
    for obj in NEVER_PICKLABLE:
        with pytest.raises(mason.PicklingError):
            mason.dumps(obj)


def test_a_function_of_the_real_main_module_travels_by_value():
    main = sys.modules["__main__"]
    source = "def in_main():\n    return 'by value'\n"
    namespace = {"__name__": "__main__"}
    exec(source, namespace)
    func = namespace["in_main"]
    main.in_main = func  # pickle can now find it by name: it would write a reference
    try:
        assert b"in_main" in pickle.dumps(func) and b"_make_function" not in pickle.dumps(func)
        data = mason.dumps({"f": func})
        assert b"_make_function" in data
        # strict mode writes what pickle writes: the reference
        assert mason.dumps({"f": func}, by_value=False) == pickle.dumps({"f": func}, 5)
        buf = io.BytesIO()
        mason.Pickler(buf, 5, by_value=False).dump({"f": func})
        assert buf.getvalue() == pickle.dumps({"f": func}, 5)
        # and so do the other entry points of the default mode, by value
        for proto in (0, 2, 5):
            assert b"_make_function" in mason.dumps([func], proto)
        assert b"_make_function" in mason.dumps([func], 5, fix_imports=False)
        del main.in_main
        assert mason.loads(data, trusted=True)["f"]() == "by value"
    finally:
        main.__dict__.pop("in_main", None)


def test_register_by_value_in_process(tmp_path, monkeypatch):
    (tmp_path / "tmp_by_value_mod.py").write_text(
        "FACTOR = 2\n"
        "def double(x):\n    return x * FACTOR\n"
        "class Thing:\n    def get(self):\n        return double(21)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import tmp_by_value_mod as mod
    by_name = mason.dumps([mod.double, mod.Thing()])
    assert b"_make_function" not in by_name
    byvalue.register_by_value(mod)
    try:
        data = mason.dumps([mod.double, mod.Thing()])
        assert b"_make_function" in data and b"_make_class" in data
        # the code is in the pickle: load it without the module
        del sys.modules["tmp_by_value_mod"]
        monkeypatch.syspath_prepend(str(tmp_path / "nowhere"))
        double, thing = mason.loads(data, trusted=True)
        assert double(4) == 8 and thing.get() == 42
        sys.modules["tmp_by_value_mod"] = mod
    finally:
        byvalue.unregister_by_value("tmp_by_value_mod")
    assert mason.dumps([mod.double]) == pickle.dumps([mod.double], 5)
    with pytest.raises(ValueError):
        byvalue.unregister_by_value(mod)
    with pytest.raises(ValueError):
        byvalue.register_by_value("no_such_module_imported")


def test_pickler_subclass_reducer_override_is_consulted_first():
    class MyPickler(mason.Pickler):
        def reducer_override(self, obj):
            if type(obj) is Plain:
                return str, ("replaced",)
            return NotImplemented

    buf = io.BytesIO()
    MyPickler(buf).dump([Plain(), lambda: "still by value"])
    text, f = mason.loads(buf.getvalue(), trusted=True)
    assert text == "replaced" and f() == "still by value"


def test_dispatch_table_and_copyreg_win_over_by_value_reducers():
    def reduce_proxy(obj):
        return dict, (dict(obj),)

    buf = io.BytesIO()
    p = mason.Pickler(buf)
    p.dispatch_table = copyreg.dispatch_table.copy()
    p.dispatch_table[types.MappingProxyType] = reduce_proxy
    p.dump(types.MappingProxyType({"a": 1}))
    assert type(mason.loads(buf.getvalue())) is dict
    # without the table, mason's own reduction: a mappingproxy again
    assert type(mason.loads(mason.dumps(types.MappingProxyType({})), trusted=True)) \
        is types.MappingProxyType


def test_buffer_callback_sees_each_buffer_once():
    buffers = []
    payload = pickle.PickleBuffer(bytearray(b"x" * 100))
    data = mason.dumps([payload, lambda: "f"], 5, buffer_callback=buffers.append)
    assert len(buffers) == 1
    loaded = mason.loads(data, trusted=True, buffers=buffers)
    assert bytes(loaded[0]) == b"x" * 100 and loaded[1]() == "f"


def test_pickler_keeps_nothing_alive():
    import gc
    import weakref
    gc.disable()
    try:
        f = lambda: 1  # noqa: E731
        ref = weakref.ref(f)
        p = mason.Pickler(io.BytesIO())
        p.dump(f)
        del p, f
        assert ref() is None
    finally:
        gc.enable()


def test_pickle_compatible_signatures():
    mason.dumps(1, 2, fix_imports=False)
    buf = io.BytesIO()
    mason.dump(1, buf, 2, fix_imports=True)
    mason.Pickler(buf, 4, fix_imports=False)
    assert mason.dumps([1]) == pickle.dumps([1], 5)


def test_clear_memo_forgets_the_by_value_records_too():
    def make():
        shared = [1]

        def f():
            return shared

        def g():
            return len(shared)
        return f, g

    f, g = make()
    buf = io.BytesIO()
    p = mason.Pickler(buf)
    p.dump(f)
    first = buf.getvalue()
    p.clear_memo()
    p.dump(g)
    second = buf.getvalue()[len(first):]
    assert b"_cell_of" not in second  # the second pickle stands alone
    assert mason.loads(second, trusted=True)() == 1
    # without clear_memo, the second refers to what the first pickled
    buf = io.BytesIO()
    p = mason.Pickler(buf)
    p.dump(f)
    p.dump(g)
    assert b"_cell_of" in buf.getvalue()
    buf.seek(0)
    unpickler = mason.Unpickler(buf, trusted=True)  # one memo for both, as pickle's
    f2, g2 = unpickler.load(), unpickler.load()
    assert f2() == [1] and g2() == 1
    assert f2.__closure__[0] is g2.__closure__[0]


class ReducesWithMason:
    """Its __reduce__ pickles by value itself, in the middle of an outer dump."""

    def __reduce__(self):
        inner = mason.dumps(lambda: "inner")
        return (_load_trusted, (inner,))


def _load_trusted(data):
    return mason.loads(data, trusted=True)


def test_dumps_inside_a_dump_and_from_threads():
    obj = [ReducesWithMason(), lambda: "outer"]
    inner, outer = mason.loads(mason.dumps(obj), trusted=True)
    assert inner() == "inner" and outer() == "outer"

    results = []

    def work(n):
        fs = [lambda x, n=n, i=i: x + n + i for i in range(50)]
        for _ in range(20):
            loaded = mason.loads(mason.dumps(fs), trusted=True)
            results.append(sum(f(0) for f in loaded) == 50 * n + sum(range(50)))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results and all(results)


class WriteOnly:
    """A file that can only be written to: no seek, no tell."""

    def __init__(self):
        self.chunks = []

    def write(self, data):
        self.chunks.append(bytes(data))
        return len(data)


def test_dump_to_files_of_every_kind():
    big = b"x" * (1 << 20)  # written to the file while pickling (a large payload)
    f = lambda: "after the payload"  # noqa: E731 - fails the plain path, after the payload
    for obj in ([big, f], [big, 1]):
        buf = io.BytesIO()
        buf.write(b"prefix")
        mason.dump(obj, buf)
        mason.dump("second", buf)
        buf.seek(6)
        first = mason.load(buf, trusted=True)
        assert first[0] == big and mason.load(buf) == "second"
        assert buf.read() == b""
        if callable(first[1]):
            assert first[1]() == "after the payload"
        # a file that cannot seek gets the same pickle
        sink = WriteOnly()
        mason.dump(obj, sink)
        assert mason.loads(b"".join(sink.chunks), trusted=True)[0] == big
    # in the middle of a file: written in place, what follows is kept
    buf = io.BytesIO(b"0123456789" * 100)
    mason.dump([1, 2], buf)
    assert buf.getvalue()[buf.tell():] == (b"0123456789" * 100)[buf.tell():]
    buf.seek(0)
    assert mason.load(buf) == [1, 2]


def test_dump_of_instances_is_the_plain_pickle():
    objs = [Plain(i) for i in range(100)]
    buf = io.BytesIO()
    mason.dump(objs, buf)
    assert buf.getvalue() == pickle.dumps(objs, 5)


def test_pickler_first_dump_is_the_plain_pickle_then_by_value_continues():
    objs = [Plain(i) for i in range(50)]
    buf = io.BytesIO()
    p = mason.Pickler(buf)
    p.dump(objs)
    assert buf.getvalue() == pickle.dumps(objs, 5)
    size = len(buf.getvalue())
    p.dump([objs[0], lambda: "later"])  # the memo carries on from the first pickle
    buf.seek(0)
    u = mason.Unpickler(buf, trusted=True)
    first, (again, f) = u.load(), u.load()
    assert again is first[0] and f() == "later"
    assert len(buf.getvalue()) > size
    # a first pickle that needs by value is made by value, and leaves nothing behind
    buf = io.BytesIO()
    p = mason.Pickler(buf)
    p.dump([b"y" * (1 << 20), lambda: "by value"])
    assert mason.loads(buf.getvalue(), trusted=True)[1]() == "by value"
