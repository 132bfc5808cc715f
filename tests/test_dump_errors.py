"""Dump errors that point at the problem, and mason.dumperrors.check."""

from __future__ import annotations

import io
import pickle
import socket
import sqlite3
import threading
import types

import pytest

import mason
from mason.dumperrors import Unpicklable, check


class Step:
    def __init__(self, callback):
        self.callback = callback


class Pipeline:
    def __init__(self, steps):
        self.steps = steps


class Holder:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a, self.b = a, b


class CustomReduce:
    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        return (CustomReduce, (self.payload,))


def dump_error(obj, **kwargs) -> mason.PicklingError:
    with pytest.raises(mason.PicklingError) as caught:
        mason.dumps(obj, **kwargs)
    return caught.value


def test_path_through_attributes_lists_and_tuples_with_a_lock():
    obj = Holder(pipeline=Pipeline([("a", Step(print)), ("b", Step(len)),
                                    ("c", Step(threading.Lock()))]))
    err = dump_error(obj)
    assert err.path == "obj.pipeline.steps[2][1].callback"
    message = str(err)
    assert message.startswith("cannot pickle obj.pipeline.steps[2][1].callback, a _thread.lock")
    assert "why: a lock belongs to" in message
    assert "__getstate__" in message and "__setstate__" in message
    # still the errors pickle users catch
    assert isinstance(err, pickle.PicklingError) and isinstance(err, TypeError)
    assert isinstance(err, mason.MasonError)


def test_path_through_dict_keys_with_a_database_connection():
    conn = sqlite3.connect(":memory:")
    try:
        err = dump_error({"db": Holder(conn=conn), "name": "x"})
        assert err.path == "obj['db'].conn"
        assert "sqlite3.Connection" in str(err)
        assert "database connection" in str(err)
        assert "reconnect" in str(err)
    finally:
        conn.close()


def test_path_into_a_closure():
    lock = threading.RLock()

    def f():
        return lock

    err = dump_error(f)
    assert err.path == "f.__closure__[0].cell_contents"
    assert "RLock" in str(err) and "lock belongs to" in str(err)


def test_path_into_function_globals_defaults_and_class_attributes():
    namespace = {"__name__": "__main__"}
    exec("import threading\nLOCK = threading.Lock()\n"
         "def uses():\n    return LOCK\n"
         "def default(x=threading.Lock()):\n    return x\n"
         "class Service:\n    guard = threading.Lock()\n", namespace)
    assert dump_error(namespace["uses"]).path == "uses.__globals__['LOCK']"
    assert dump_error(namespace["default"]).path == "default.__defaults__[0]"
    assert dump_error(namespace["Service"]).path == "Service.guard"


def test_socket_open_file_and_generator():
    sock = socket.socket()
    try:
        err = dump_error([1, Holder(sock=sock)])
        assert err.path == "obj[1].sock" and "socket" in str(err)
        assert "connection" in str(err)
    finally:
        sock.close()
    with open(__file__, "rb") as fh:
        err = dump_error({"log": fh})
        assert err.path == "obj['log']" and "open file" in str(err)
        assert "path" in str(err)
    err = dump_error(Holder(items=(x for x in range(3))))
    assert err.path == "obj.items" and "generator" in str(err)
    assert "list(gen)" in str(err)


def test_slots_state_and_custom_reduce_paths():
    err = dump_error(Slotted(1, threading.Lock()))
    assert err.path == "obj.b"
    err = dump_error(CustomReduce(threading.Lock()))
    assert err.path == "obj.__reduce__()[1][0]"


def test_modules_and_local_functions_in_strict_mode():
    err = dump_error({"mod": types}, by_value=False)
    assert err.path == "obj['mod']" and "pickle does not pickle modules" in str(err)
    assert "by_value=True" in str(err)

    def local():
        pass

    err = dump_error([local], by_value=False)
    assert err.path == "obj[0]"
    assert "cannot be imported by name" in str(err) and "by_value=True" in str(err)
    assert isinstance(err, AttributeError)  # as pickle raises for local objects
    # and in the default mode, both pickle fine
    assert mason.loads(mason.dumps([types, local]), trusted=True)[0] is types


def test_pickler_dump_explains_too():
    buf = io.BytesIO()
    with pytest.raises(mason.PicklingError) as caught:
        mason.Pickler(buf).dump({"k": [threading.Lock()]})
    assert caught.value.path == "obj['k'][0]"


def test_the_first_problem_in_pickling_order_is_reported():
    obj = [1, Holder(first=threading.Lock(), second=(x for x in ()))]
    assert dump_error(obj).path == "obj[1].first"


def test_errors_of_user_code_pass_through_unchanged():
    class Boom:
        def __reduce__(self):
            raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError):
        mason.dumps([Boom()])


def test_check_reports_every_unpicklable_path_without_raising():
    conn = sqlite3.connect(":memory:")
    try:
        obj = {"lock": threading.Lock(), "ok": [1, 2], "nested": Holder(db=conn, fine="x"),
               "gen": (i for i in ())}
        problems = check(obj)
        assert [p.path for p in problems] == ["obj['lock']", "obj['nested'].db", "obj['gen']"]
        assert all(isinstance(p, Unpicklable) for p in problems)
        assert problems[1].type == "sqlite3.Connection"
        assert problems[0].why and problems[0].fix
        assert "cannot pickle obj['lock'], a _thread.lock" in str(problems[0])
    finally:
        conn.close()


def test_check_of_picklable_objects_is_empty():
    assert check({"a": [1, 2.0, "x"], "f": lambda: 1, "cls": Holder, "obj": Holder(a=1)}) == []
    # in strict mode the lambda is a problem, as pickle refuses it
    problems = check({"f": lambda: 1}, by_value=False)
    assert [p.path for p in problems] == ["obj['f']"]


def test_check_follows_shared_objects_once():
    lock = threading.Lock()
    problems = check([lock, lock, Holder(again=lock)])
    assert [p.path for p in problems] == ["obj[0]"]


def test_deep_structures_do_not_hit_the_recursion_limit_in_the_walk():
    deep = [threading.Lock()]
    for _ in range(5000):
        deep = [deep]
    problems = check(deep)
    assert len(problems) == 1 and problems[0].path.endswith("[0][0][0]")


def test_path_into_a_module_that_travels_by_value():
    module = types.ModuleType("made_here")
    module.LOCK = threading.Lock()

    def uses_module():
        return module.LOCK

    err = dump_error({"helper": uses_module})
    assert err.path == "obj['helper'].__closure__[0].cell_contents.LOCK"
    assert "module made_here" in str(err) and "travels by value" in str(err)
    assert "importable" in str(err)
