"""mason.dumps and mason.loads as compiled callables (mason._entry): they look and behave like
the Python functions they stand for, which stay reachable as ``__wrapped__`` and are what an
installation without a compiler uses."""

from __future__ import annotations

import copyreg
import datetime
import inspect
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

import mason
from mason import pickler, unpickler

entry = pytest.importorskip("mason._entry")

OBJECTS = [None, 1, "__main__", {"__main__": [1, 2.5, None]}, (1, 2), list(range(100)),
           b"x" * 1000, {"when": datetime.date(2026, 11, 25)}, {1, 2}, frozenset("ab")]


@pytest.mark.parametrize("name", ["dumps", "loads"])
def test_entry_points_look_like_the_functions(name):
    compiled = getattr(mason, name)
    assert isinstance(compiled, entry.Entry)
    python = compiled.__wrapped__
    assert inspect.isfunction(python)
    assert inspect.signature(compiled) == inspect.signature(python)
    assert compiled.__doc__ == python.__doc__ and compiled.__doc__
    assert compiled.__name__ == name and repr(compiled) == f"<function mason.{name}>"
    assert pickle.loads(pickle.dumps(compiled)) is compiled
    assert mason.loads(mason.dumps(compiled), trusted=True) is compiled


def test_compiled_and_python_dumps_write_the_same_bytes():
    for obj in OBJECTS:
        for protocol in (None, 0, 2, 4, 5, -1):
            assert mason.dumps(obj, protocol) == pickler.dumps.__wrapped__(obj, protocol)
    with pytest.raises(ValueError):
        mason.dumps(1, 99)


def test_compiled_and_python_loads_give_the_same_results_and_errors():
    for obj in OBJECTS:
        for protocol in range(6):
            data = pickle.dumps(obj, protocol)
            assert mason.loads(data) == unpickler.loads.__wrapped__(data) == obj
    for bad in (b"", b"\x80\x05K", b"cos\nsystem\n(S'true'\ntR.", b"N)R."):
        with pytest.raises(mason.UnpicklingError) as compiled:
            mason.loads(bad)
        with pytest.raises(mason.UnpicklingError) as python:
            unpickler.loads.__wrapped__(bad)
        assert type(compiled.value) is type(python.value)
        assert str(compiled.value) == str(python.value)


def test_keywords_and_other_arities_take_the_full_functions():
    assert mason.loads(mason.dumps([1], protocol=2), fix_imports=False) == [1]
    assert mason.loads(mason.dumps(datetime.date(2026, 1, 1), 5, by_value=False),
                       allow=["datetime.date"]) == datetime.date(2026, 1, 1)
    with pytest.raises(TypeError, match="loads"):
        mason.loads()
    with pytest.raises(TypeError, match="dumps"):
        mason.dumps()
    with pytest.raises(TypeError):
        mason.dumps(1, 5, True)


def test_lambdas_and_registered_modules_still_travel_by_value(tmp_path, monkeypatch):
    assert mason.loads(mason.dumps(lambda x: x * 3), trusted=True)(2) == 6
    module = tmp_path / "entry_by_value_mod.py"
    module.write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import entry_by_value_mod
    by_reference = mason.dumps(entry_by_value_mod.triple)
    mason.register_by_value(entry_by_value_mod)
    try:
        by_value = mason.dumps(entry_by_value_mod.triple)
        assert by_value == pickler.dumps.__wrapped__(entry_by_value_mod.triple)
        assert len(by_value) > len(by_reference)
    finally:
        mason.unregister_by_value(entry_by_value_mod)


def test_extension_codes_take_the_python_path():
    copyreg.add_extension("datetime", "date", 0x7A11)
    try:
        obj = datetime.date(2026, 11, 25)
        assert mason.dumps(obj, 2) == pickler.dumps.__wrapped__(obj, 2) == pickle.dumps(obj, 2)
    finally:
        copyreg.remove_extension("datetime", "date", 0x7A11)


def test_main_classes_travel_by_value_across_processes(tmp_path):
    script = textwrap.dedent("""
        import sys, mason
        class Point:
            def __init__(self, x):
                self.x = x
            def double(self):
                return 2 * self.x
        sys.stdout.buffer.write(mason.dumps(Point(21)))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    data = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env,
                          check=True).stdout
    assert mason.loads(data, trusted=True).double() == 42


def test_the_output_search_finds_main_at_every_offset():
    # dumps_plain declines (NotImplemented) when its output names __main__: the search runs
    # 64, then 16 positions at a time, then one by one, so try every length and offset.
    for length in range(0, 150, 7):
        for at in range(length + 1):
            text = "a" * at + "__main__" + "b" * (length - at)
            assert entry.dumps_plain(text) is NotImplemented, (length, at)
            near_miss = "a" * at + "__mai_n_" + "b" * (length - at)
            assert entry.dumps_plain(near_miss) == pickle.dumps(near_miss, 5)
