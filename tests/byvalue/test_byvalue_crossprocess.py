"""By value across real processes: dump in one interpreter, load in a fresh one that never
imported, and cannot import, the code that defined what it loads."""

from __future__ import annotations

import pickle
import textwrap

import pytest

from byvalue_helpers import run_python

SCRIPT = '''
import dataclasses, enum, functools, math, sys, typing
import mason

RATE = 3

def helper(x):
    return x * RATE

def compute(x, *, offset=1):
    """Compute things."""
    return helper(x) + offset + math.floor(2.5)

def make_counter():
    count = 0
    def inc():
        nonlocal count
        count += 1
        return count
    def get():
        return count
    return inc, get

class Base:
    __slots__ = ()
    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.family = "base"

class Shape(Base):
    __slots__ = ("w", "h")
    def __init__(self, w, h):
        self.w, self.h = w, h
    @property
    def area(self):
        return self.w * self.h
    @classmethod
    def square(cls, s):
        return cls(s, s)
    @staticmethod
    def sides():
        return 4

@dataclasses.dataclass
class Order:
    item: str
    qty: int = 1
    notes: list = dataclasses.field(default_factory=list)

class Level(enum.Enum):
    LOW = 1
    HIGH = 2

class Point(typing.NamedTuple):
    x: int
    y: int = 0

T = typing.TypeVar("T")

class Box(typing.Generic[T]):
    def __init__(self, item):
        self.item = item

inc, get = make_counter()
inc()
OBJECTS = {
    "compute": compute,
    "lambda": lambda v: v ** 2,
    "counter": (inc, get),
    "shape": Shape.square(3),
    "Shape": Shape,
    "order": Order("tea", 2),
    "level": Level.HIGH,
    "Level": Level,
    "point": Point(1, 2),
    "box": Box[int],
    "T": T,
    "partial": functools.partial(compute, offset=100),
}
'''

LOADER_CHECKS = '''
import sys, pickle
objs = {LOAD}
assert "dumper_defs" not in sys.modules
compute = objs["compute"]
assert compute(2) == 2 * 3 + 1 + 2, compute(2)
assert compute.__doc__ == "Compute things."
assert objs["lambda"](7) == 49
inc, get = objs["counter"]
assert inc() == 2 and get() == 2
shape = objs["shape"] if "shape" in objs else objs["Shape"].square(3)
assert shape.area == 9 and shape.sides() == 4 and shape.family == "base"
assert type(shape) is objs["Shape"]
assert not hasattr(shape, "__dict__")
if "order" in objs:
    order = objs["order"]
    assert order.qty == 2 and order.notes == []
    import dataclasses
    assert dataclasses.asdict(order) == {"item": "tea", "qty": 2, "notes": []}
level, Level = objs["level"], objs["Level"]
assert level is Level.HIGH and Level(2) is level
assert objs["point"].x == 1 and objs["point"]._fields == ("x", "y")
assert objs["box"].__args__ == (int,)
assert objs["partial"](1) == 3 + 100 + 2
print("ok")
'''


def _dump(dump_dir, name, body, *, env=None, extra=""):
    (dump_dir / "dumper_defs.py").write_text(textwrap.dedent(SCRIPT))
    code = f"""
import sys, mason
{body}
{extra}
sys.stdout.buffer.write(mason.dumps(OBJECTS))
"""
    return run_python(code, cwd=dump_dir, env=env).stdout


def test_main_script_objects_load_in_a_fresh_interpreter(workdir):
    dump_dir, load_dir = workdir
    # The definitions run as the script itself: everything is in __main__.
    data = run_python(SCRIPT + "\nsys.stdout.buffer.write(mason.dumps(OBJECTS))\n",
                      cwd=dump_dir).stdout
    out = run_python(LOADER_CHECKS.replace(
        "{LOAD}", "__import__('mason').loads(sys.stdin.buffer.read(), trusted=True)"),
        cwd=load_dir, input=data)
    assert out.stdout.strip() == b"ok"


def test_stdlib_pickle_loads_them_in_a_fresh_interpreter(workdir):
    dump_dir, load_dir = workdir
    data = run_python(SCRIPT + "\nsys.stdout.buffer.write(mason.dumps(OBJECTS))\n",
                      cwd=dump_dir).stdout
    out = run_python(LOADER_CHECKS.replace("{LOAD}", "pickle.loads(sys.stdin.buffer.read())"),
                     cwd=load_dir, input=data)
    assert out.stdout.strip() == b"ok"


def test_registered_module_travels_by_value(workdir):
    dump_dir, load_dir = workdir
    data = _dump(dump_dir, "registered", "import dumper_defs\nfrom dumper_defs import OBJECTS",
                 extra="from mason.byvalue import register_by_value\n"
                       "register_by_value(dumper_defs)")
    assert b"dumper_defs" in data
    out = run_python(LOADER_CHECKS.replace(
        "{LOAD}", "__import__('mason').loads(sys.stdin.buffer.read(), trusted=True)") + '''
try:
    import dumper_defs
except ImportError:
    print("not importable")
''', cwd=load_dir, input=data)
    assert out.stdout.split() == [b"ok", b"not", b"importable"]


def test_without_registration_an_importable_module_is_referenced(workdir):
    dump_dir, load_dir = workdir
    data = _dump(dump_dir, "by reference", "import dumper_defs\nfrom dumper_defs import OBJECTS",
                 extra="OBJECTS = {'compute': dumper_defs.compute}")
    assert data == run_python(
        "import sys, pickle, dumper_defs\n"
        "sys.stdout.buffer.write(pickle.dumps({'compute': dumper_defs.compute}, 5))",
        cwd=dump_dir).stdout
    # and the loader, which cannot import the module, says so
    proc = run_python("import sys, mason\nmason.loads(sys.stdin.buffer.read(), trusted=True)",
                      cwd=load_dir, input=data, check=False)
    assert b"dumper_defs" in proc.stderr and b"ModuleNotFoundError" in proc.stderr


def test_unregister_by_value(workdir):
    dump_dir, _ = workdir
    data = _dump(dump_dir, "unregistered", "import dumper_defs\nfrom dumper_defs import OBJECTS",
                 extra="from mason.byvalue import register_by_value, unregister_by_value, "
                       "registered_by_value\n"
                       "register_by_value('dumper_defs')\n"
                       "assert registered_by_value() == {'dumper_defs'}\n"
                       "unregister_by_value(dumper_defs)\n"
                       "OBJECTS = {'compute': dumper_defs.compute}")
    assert b"_make_function" not in data and b"dumper_defs" in data


def test_same_bytes_in_every_process(workdir):
    dump_dir, load_dir = workdir
    script = SCRIPT + "\nsys.stdout.buffer.write(mason.dumps(OBJECTS))\n"
    first = run_python(script, cwd=dump_dir, env={"PYTHONHASHSEED": "1"}).stdout
    second = run_python(script, cwd=dump_dir, env={"PYTHONHASHSEED": "2024"}).stdout
    third = run_python(script, cwd=dump_dir, env={"PYTHONHASHSEED": "random"}).stdout
    assert first == second == third
    # Loaded in a fresh interpreter and pickled again there: the same bytes once more.
    again = run_python("import sys, mason\n"
                       "objs = mason.loads(sys.stdin.buffer.read(), trusted=True)\n"
                       "sys.stdout.buffer.write(mason.dumps(objs))",
                       cwd=load_dir, input=first, env={"PYTHONHASHSEED": "77"}).stdout
    # Pickled again after loading: the same bytes for the functions and classes.  (Not for
    # every kind of data: a partial's keyword names, or dict keys equal to a name of the
    # code, are strings whose identity pickle's memo follows; interned where they were
    # made, not where they were loaded.)
    only_code = script.replace('"partial": functools.partial(compute, offset=100),', "")
    only_code = only_code.replace("mason.dumps(OBJECTS)", "mason.dumps(list(OBJECTS.values()))")
    one = run_python(only_code, cwd=dump_dir, env={"PYTHONHASHSEED": "5"}).stdout
    chained = run_python("import sys, mason\n"
                         "objs = mason.loads(sys.stdin.buffer.read(), trusted=True)\n"
                         "sys.stdout.buffer.write(mason.dumps(objs))",
                         cwd=load_dir, input=one, env={"PYTHONHASHSEED": "9"}).stdout
    assert chained == one
    assert mason_loads_equal(again, first)


def mason_loads_equal(a: bytes, b: bytes) -> bool:
    import mason
    x, y = mason.loads(a, trusted=True), mason.loads(b, trusted=True)
    return x["compute"](5) == y["compute"](5) and x["order"] == y["order"]


def test_class_loaded_several_times_in_one_process_is_one_class(workdir):
    dump_dir, load_dir = workdir
    data = run_python(SCRIPT + "\nsys.stdout.buffer.write(mason.dumps(OBJECTS))\n",
                      cwd=dump_dir).stdout
    out = run_python('''
import sys, mason
data = sys.stdin.buffer.read()
a = mason.loads(data, trusted=True)
b = mason.loads(data, trusted=True)
assert a["Shape"] is b["Shape"]
assert isinstance(b["shape"], a["Shape"])
assert a["Level"] is b["Level"] and a["level"] is b["level"]
assert type(a["order"]) is type(b["order"])
assert a["T"] is b["T"]
print("same")
''', cwd=load_dir, input=data)
    assert out.stdout.strip() == b"same"


def test_safe_mode_in_the_loader_names_what_it_refuses(workdir):
    dump_dir, load_dir = workdir
    data = run_python(SCRIPT + "\nsys.stdout.buffer.write(mason.dumps(OBJECTS['compute']))\n",
                      cwd=dump_dir).stdout
    out = run_python('''
import sys, mason
from mason.errors import UnsafeCodeError
try:
    mason.loads(sys.stdin.buffer.read())
except UnsafeCodeError as exc:
    print(exc)
''', cwd=load_dir, input=data)
    message = out.stdout.decode()
    assert "carries code" in message and "compute" in message and "trusted=True" in message


def test_a_signed_pickle_loads_trusted_elsewhere(workdir):
    dump_dir, load_dir = workdir
    key = "k" * 32
    data = run_python(SCRIPT + f"\nsys.stdout.buffer.write(mason.dumps(OBJECTS, key={key!r}))\n",
                      cwd=dump_dir).stdout
    out = run_python(LOADER_CHECKS.replace(
        "{LOAD}", f"__import__('mason').loads(sys.stdin.buffer.read(), key={key!r})"),
        cwd=load_dir, input=data)
    assert out.stdout.strip() == b"ok"


def test_other_python_version_is_refused_with_a_clear_error(workdir):
    dump_dir, load_dir = workdir
    data = run_python(SCRIPT + "\nsys.stdout.buffer.write(mason.dumps(OBJECTS['compute']))\n",
                      cwd=dump_dir).stdout
    from mason.byvalue import TAG
    assert TAG.encode() in data
    forged = data.replace(TAG.encode(), b"cpython-399-9999")
    out = run_python('''
import sys, mason
try:
    mason.loads(sys.stdin.buffer.read(), trusted=True)
except mason.UnpicklingError as exc:
    print(type(exc).__name__, exc)
''', cwd=load_dir, input=forged)
    message = out.stdout.decode()
    assert "cpython-399" in message and "cpython-3" in message
    assert "compute" in message and "Python version" in message


def test_interactive_session_definitions_travel(workdir):
    """A function typed at the interactive prompt (python -i reading stdin)."""
    dump_dir, load_dir = workdir
    import os
    import subprocess
    import sys
    from byvalue_helpers import SRC
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = SRC
    session = (b"import mason, sys\n"
               b"def typed(x):\n    return x + 1000\n\n"
               b"class Typed:\n    def m(self):\n        return 'typed'\n\n"
               b"open('out.bin', 'wb').write(mason.dumps([typed, Typed()]))\n")
    subprocess.run([sys.executable, "-i", "-q"], input=session, cwd=dump_dir, env=env,
                   capture_output=True, timeout=120, check=True)
    data = (dump_dir / "out.bin").read_bytes()
    typed, obj = pickle.loads(data)
    assert typed(1) == 1001 and obj.m() == "typed"
    out = run_python("import sys, pickle\nf, o = pickle.loads(sys.stdin.buffer.read())\n"
                     "print(f(1), o.m())", cwd=load_dir, input=data)
    assert out.stdout.split() == [b"1001", b"typed"]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_protocol_across_processes(workdir, protocol):
    dump_dir, load_dir = workdir
    data = run_python(SCRIPT + f"\nsys.stdout.buffer.write(mason.dumps(OBJECTS, {protocol}))\n",
                      cwd=dump_dir).stdout
    out = run_python(LOADER_CHECKS.replace("{LOAD}", "pickle.loads(sys.stdin.buffer.read())"),
                     cwd=load_dir, input=data)
    assert out.stdout.strip() == b"ok"


@pytest.mark.parametrize("protocol", [0, 1])
def test_text_protocols_across_processes(workdir, protocol):
    """Protocols 0 and 1 cannot pickle instances with __slots__ (pickle's rule; a dataclass's
    fields are such instances); the rest travels."""
    dump_dir, load_dir = workdir
    data = run_python(SCRIPT + "\ndel OBJECTS['shape'], OBJECTS['order']\n"
                      f"sys.stdout.buffer.write(mason.dumps(OBJECTS, {protocol}))\n",
                      cwd=dump_dir).stdout
    checks = LOADER_CHECKS.replace("{LOAD}", "pickle.loads(sys.stdin.buffer.read())")
    out = run_python(checks, cwd=load_dir, input=data)
    assert out.stdout.strip() == b"ok"
    failed = run_python(SCRIPT + f"\nmason.dumps(OBJECTS, {protocol})\n", cwd=dump_dir,
                        check=False)
    assert b"cannot pickle obj['shape']" in failed.stderr
    assert b"protocol 2 or higher" in failed.stderr
