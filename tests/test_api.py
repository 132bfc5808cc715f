"""``import mason as pickle`` keeps ordinary pickle code working; the safety options
(``allow``, ``policy``, ``trusted``, ``renames``, ``limits``) work the same on ``loads``,
``load`` and ``Unpickler``."""

from __future__ import annotations

import builtins
import collections
import copyreg
import datetime
import decimal
import inspect
import io
import os
import pickle
import sys
import textwrap

import pytest

import mason

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)

# --------------------------------------------------------------------------------------------
# The drop-in surface


def test_public_names_of_pickle_exist():
    for name in ("dumps", "dump", "loads", "load", "Pickler", "Unpickler", "PickleBuffer",
                 "HIGHEST_PROTOCOL", "DEFAULT_PROTOCOL", "PickleError", "PicklingError",
                 "UnpicklingError"):
        assert hasattr(mason, name), name
    assert mason.PickleBuffer is pickle.PickleBuffer
    assert mason.HIGHEST_PROTOCOL == pickle.HIGHEST_PROTOCOL == 5
    assert mason.DEFAULT_PROTOCOL == 5


def test_error_classes_are_pickles():
    assert mason.PickleError is pickle.PickleError
    assert issubclass(mason.PicklingError, pickle.PicklingError)
    assert issubclass(mason.UnpicklingError, pickle.UnpicklingError)
    for cls in (mason.UnsafeGlobalError, mason.LimitError, mason.MalformedPickleError,
                mason.TruncatedPickleError):
        assert issubclass(cls, pickle.UnpicklingError)
        assert issubclass(cls, mason.MasonError)
    assert issubclass(mason.TruncatedPickleError, EOFError)  # as pickle's "Ran out of input"


def _params(func):
    return {p.name: p for p in inspect.signature(func).parameters.values()}


@pytest.mark.parametrize("name, reference", [
    ("dumps", pickle._dumps), ("dump", pickle._dump), ("loads", pickle._loads),
    ("load", pickle._load), ("Pickler", pickle._Pickler.__init__),
    ("Unpickler", pickle._Unpickler.__init__),
])
def test_signatures_accept_what_pickle_accepts(name, reference):
    ours = _params(getattr(mason, name))
    for pname, param in _params(reference).items():
        if pname == "self":
            continue
        if pname == "s":  # pickle._loads names its positional-only argument s, loads data
            pname = "data"
        assert pname in ours, f"mason.{name} lacks {pname}"
        mine = ours[pname]
        assert mine.kind == param.kind, (name, pname, mine.kind, param.kind)
        if param.default is not inspect.Parameter.empty:
            assert mine.default == param.default or (pname == "buffers" and mine.default
                                                     in (None, ())), (name, pname)


def test_keywords_as_pickle_callers_pass_them(tmp_path):
    obj = {"a": [1, 2.5, "x", b"y"], "b": (None, True)}
    for proto in PROTOCOLS:
        data = mason.dumps(obj, protocol=proto, fix_imports=True)
        assert mason.loads(data, fix_imports=True, encoding="ASCII", errors="strict") == obj
        f = io.BytesIO()
        mason.dump(obj, file=f, protocol=proto, fix_imports=False)
        f.seek(0)
        assert mason.load(file=f, fix_imports=False, encoding="latin1") == obj
    assert mason.loads(mason.dumps(obj, -1)) == obj   # protocol=-1 means the highest


def test_dumps_writes_what_pickle_writes():
    obj = [1, -5, 2**70, 1.5, "s", b"b", (1, 2), {"k": {1, 2}}, frozenset({3}), None, True,
           datetime.date(2020, 1, 2), decimal.Decimal("1.5"), collections.OrderedDict(a=1)]
    for proto in PROTOCOLS:
        assert mason.dumps(obj, proto) == pickle.dumps(obj, proto)
    assert mason.dumps(obj) == pickle.dumps(obj, 5)  # default protocol 5


def test_cross_loading_with_stdlib():
    obj = {"when": datetime.datetime(2020, 1, 2, 3, 4, 5), "n": [1, 2**100], "s": {"x"}}
    for proto in PROTOCOLS:
        assert pickle.loads(mason.dumps(obj, proto)) == obj
        assert mason.loads(pickle.dumps(obj, proto)) == obj


def test_loads_refuses_text():
    with pytest.raises(TypeError):
        mason.loads("N.")


def test_python2_strings_with_encoding():
    assert mason.loads(b"S'caf\\xe9'\n.", encoding="latin1") == "caf\xe9"
    assert mason.loads(b"U\x04caf\xe9.", encoding="bytes") == b"caf\xe9"
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(b"U\x04caf\xe9.")
    with pytest.raises((UnicodeDecodeError, pickle.UnpicklingError)):
        mason.loads(b"U\x04caf\xe9.")


def test_out_of_band_buffers():
    buffers = []
    data = mason.dumps(mason.PickleBuffer(bytearray(b"payload")), protocol=5,
                       buffer_callback=buffers.append)
    assert b"payload" not in data
    assert mason.loads(data, buffers=buffers) == bytearray(b"payload")
    with pytest.raises(pickle.UnpicklingError):
        mason.loads(data)


def test_picklebuffer_needs_protocol_5():
    with pytest.raises(pickle.PicklingError):
        mason.dumps(mason.PickleBuffer(b"x"), protocol=4)


def test_pickler_and_unpickler_objects_several_pickles_in_one_file(tmp_path):
    path = tmp_path / "many.pkl"
    with open(path, "wb") as f:
        p = mason.Pickler(f, protocol=2)
        for i in range(3):
            p.dump({"i": i, "shared": [i]})
    with open(path, "rb") as f:
        u = mason.Unpickler(f)
        assert [u.load()["i"] for _ in range(3)] == [0, 1, 2]
        assert f.read() == b""
        with pytest.raises(EOFError):
            u.load()
    # independent pickles: mason.load leaves the file just after the one it read
    with open(path, "wb") as f:
        for i in range(3):
            mason.dump({"i": i}, f, protocol=0)
    with open(path, "rb") as f:
        assert mason.load(f) == {"i": 0}
        assert pickle.load(f) == {"i": 1}
        assert mason.load(f) == {"i": 2}


# --------------------------------------------------------------------------------------------
# Hooks: persistent_id / persistent_load, dispatch_table, reducer_override, find_class


class Ref:
    def __init__(self, key):
        self.key = key


def test_persistent_id_and_load_as_methods_and_attributes():
    class P(mason.Pickler):
        def persistent_id(self, obj):
            return f"ref:{obj.key}" if isinstance(obj, Ref) else None

    class U(mason.Unpickler):
        def persistent_load(self, pid):
            return ("loaded", pid)

    f = io.BytesIO()
    P(f, 2).dump([Ref("a"), 1])
    assert U(io.BytesIO(f.getvalue())).load() == [("loaded", "ref:a"), 1]
    # the same hooks set on instances
    f = io.BytesIO()
    p = mason.Pickler(f, 4)
    p.persistent_id = lambda obj: obj.key if isinstance(obj, Ref) else None
    p.dump([Ref("b")])
    u = mason.Unpickler(io.BytesIO(f.getvalue()))
    u.persistent_load = lambda pid: pid.upper()
    assert u.load() == ["B"]
    # without the hook, a persistent id is an error, as with pickle
    with pytest.raises(pickle.UnpicklingError):
        mason.loads(f.getvalue())


def test_dispatch_table_and_reducer_override():
    table = copyreg.dispatch_table.copy()
    table[Ref] = lambda obj: (str, (f"ref {obj.key}",))
    f = io.BytesIO()
    p = mason.Pickler(f)
    p.dispatch_table = table
    p.dump(Ref("x"))
    assert mason.loads(f.getvalue()) == "ref x"

    class Overriding(mason.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, Ref):
                return int, (len(obj.key),)
            return NotImplemented

    f = io.BytesIO()
    Overriding(f).dump([Ref("four"), "kept"])
    assert mason.loads(f.getvalue()) == [4, "kept"]


def test_restricting_find_class_as_the_python_docs_show():
    """The 'Restricting Globals' recipe of the pickle documentation, on mason.Unpickler."""
    safe_builtins = {"range", "complex", "set", "frozenset", "slice"}

    class RestrictedUnpickler(mason.Unpickler):
        def find_class(self, module, name):
            if module == "builtins" and name in safe_builtins:
                return getattr(builtins, name)
            raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden")

    def restricted_loads(s):
        return RestrictedUnpickler(io.BytesIO(s)).load()

    assert restricted_loads(pickle.dumps([1, 2, range(15)])) == [1, 2, range(15)]
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        restricted_loads(b"cos\nsystem\n(S'echo hello world'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        restricted_loads(b"cbuiltins\neval\n(S'getattr(__import__(\"os\"), \"system\")"
                         b"(\"echo hello world\")'\ntR.")


def test_find_class_override_that_calls_super_keeps_the_policy():
    seen = []

    class Logging(mason.Unpickler):
        def find_class(self, module, name):
            seen.append((module, name))
            return super().find_class(module, name)

    assert Logging(io.BytesIO(pickle.dumps(datetime.date(2020, 1, 1)))).load() \
        == datetime.date(2020, 1, 1)
    assert ("datetime", "date") in seen
    with pytest.raises(mason.UnsafeGlobalError):
        Logging(io.BytesIO(b"cos\nsystem\n(S'true'\ntR.")).load()


# --------------------------------------------------------------------------------------------
# allow=, policy=, trusted=, renames=, limits=: the same on loads, load and Unpickler


def load_three_ways(data, **options):
    results = [mason.loads(data, **options), mason.load(io.BytesIO(data), **options),
               mason.Unpickler(io.BytesIO(data), **options).load()]
    return results


def refused_three_ways(data, **options) -> list[mason.UnsafeGlobalError]:
    errors = []
    for load in (lambda: mason.loads(data, **options),
                 lambda: mason.load(io.BytesIO(data), **options),
                 lambda: mason.Unpickler(io.BytesIO(data), **options).load()):
        with pytest.raises(mason.UnsafeGlobalError) as caught:
            load()
        errors.append(caught.value)
    return errors


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """pkg/mod.py (Class, Other), pkg/sub/deep.py (Deep), old and new homes for renames."""
    root = tmp_path / "pkgs"
    files = {
        "pkg/__init__.py": "",
        "pkg/mod.py": """
            class Class:
                def __init__(self, v=0): self.v = v
                def __eq__(self, o): return type(o) is type(self) and o.v == self.v
            class Other(Class): pass
        """,
        "pkg/sub/__init__.py": "class AtSub:\n    pass\n",
        "pkg/sub/deep.py": "class Deep:\n    pass\n",
        "newhome/__init__.py": "",
        "newhome/models.py": "class Model:\n    pass\nclass Renamed:\n    pass\n",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in list(sys.modules):
        if name.split(".")[0] in ("pkg", "newhome"):
            del sys.modules[name]


def test_allow_exact_name(packages):
    from pkg.mod import Class, Other
    data = pickle.dumps(Class(3))
    for loaded in load_three_ways(data, allow=["pkg.mod.Class"]):
        assert loaded == Class(3)
    # exact: the other class of the same module stays out
    errors = refused_three_ways(pickle.dumps(Other(1)), allow=["pkg.mod.Class"])
    assert errors[0].names == ["pkg.mod.Other"]
    # "module:qualname" is the same name
    assert mason.loads(data, allow=["pkg.mod:Class"]) == Class(3)
    # allow= adds to the default policy
    both = pickle.dumps([Class(1), datetime.date(2000, 1, 1)])
    assert mason.loads(both, allow=["pkg.mod.Class"])[1] == datetime.date(2000, 1, 1)


def test_allow_module_wildcard(packages):
    from pkg.sub import AtSub
    from pkg.sub.deep import Deep
    for obj in (AtSub, Deep):
        for loaded in load_three_ways(pickle.dumps(obj), allow=["pkg.sub.*"]):
            assert loaded is obj
    from pkg.mod import Class
    refused_three_ways(pickle.dumps(Class), allow=["pkg.sub.*"])


def test_allowing_a_class_allows_nothing_else():
    np = pytest.importorskip("numpy")
    assert mason.loads(pickle.dumps(np.ndarray), allow=["numpy.ndarray"]) is np.ndarray
    # an array pickle names numpy's reconstructor and dtype too: exactly those are listed
    errors = refused_three_ways(pickle.dumps(np.arange(3)), allow=["numpy.ndarray"])
    assert "numpy.ndarray" not in errors[0].names
    assert any(name.startswith("numpy.") for name in errors[0].names), errors[0].names
    refused_three_ways(pickle.dumps(np.float64), allow=["numpy.ndarray"])


def test_policy_objects_and_their_union(packages):
    from pkg.mod import Class
    data = pickle.dumps([Class(2), datetime.date(2001, 2, 3)])
    only_class = mason.Policy(["pkg.mod.Class"])
    # a policy replaces the default: the date is not in it
    errors = refused_three_ways(data, policy=only_class)
    assert errors[0].names == ["datetime.date"]
    combined = mason.Policy.default() | only_class
    for loaded in load_three_ways(data, policy=combined):
        assert loaded == [Class(2), datetime.date(2001, 2, 3)]
    # policy= and allow= together
    for loaded in load_three_ways(data, policy=mason.Policy.default(), allow=["pkg.mod.*"]):
        assert loaded[0] == Class(2)
    with pytest.raises(TypeError):
        mason.loads(data, policy=["pkg.mod.Class"])
    with pytest.raises(ValueError):
        mason.Policy(["*"])


def test_trusted_loads_anything_and_excludes_allow(packages):
    from pkg.mod import Other
    data = pickle.dumps(Other(5))
    for loaded in load_three_ways(data, trusted=True):
        assert loaded == Other(5)
    with pytest.raises(ValueError):
        mason.loads(data, trusted=True, allow=["pkg.mod.Other"])
    with pytest.raises(ValueError):
        mason.Unpickler(io.BytesIO(data), trusted=True, policy=mason.Policy())


def _global_pickle(module: str, name: str, proto: int) -> bytes:
    """A pickle of the global module.name (as pickle writes a class), by hand."""
    if proto >= 4:
        m, n = module.encode(), name.encode()
        return (b"\x80\x04\x8c" + bytes([len(m)]) + m + b"\x8c" + bytes([len(n)]) + n
                + b"\x93.")
    return (b"\x80\x02" if proto == 2 else b"") + b"c" + module.encode() + b"\n" \
        + name.encode() + b"\n."


def test_renames_of_a_class_and_of_a_module(packages):
    from newhome.models import Model, Renamed
    for proto in (0, 2, 4):
        old_class = _global_pickle("oldhome.models", "OldName", proto)
        old_module = _global_pickle("oldhome.models", "Model", proto)
        renames = {"oldhome.models.OldName": "newhome.models.Renamed",
                   "oldhome.models": "newhome.models"}
        for loaded in load_three_ways(old_class, renames=renames, allow=["newhome.*"]):
            assert loaded is Renamed
        for loaded in load_three_ways(old_module, renames=renames, trusted=True):
            assert loaded is Model


def test_renames_do_not_bypass_the_policy(packages):
    data = _global_pickle("harmless", "thing", 2)
    errors = refused_three_ways(data, renames={"harmless.thing": "os.system"})
    assert errors[0].names == ["os.system"]
    errors = refused_three_ways(data, renames={"harmless": "posix"},
                                allow=["harmless.*"])
    assert errors[0].names == ["posix.thing"]


def test_limits_option_on_every_entry_point():
    data = b"\x80\x02" + b"]" * 60 + b"a" * 59 + b"."
    tight = mason.Limits(max_depth=50)
    for load in (lambda: mason.loads(data, limits=tight),
                 lambda: mason.load(io.BytesIO(data), limits=tight),
                 lambda: mason.Unpickler(io.BytesIO(data), limits=tight).load()):
        with pytest.raises(mason.LimitError):
            load()
    assert len(load_three_ways(data, limits=mason.Limits(max_depth=100))) == 3


# --------------------------------------------------------------------------------------------
# Errors say what, where and how


def test_refusal_names_global_offset_and_allow_argument():
    data = b"\x80\x02" + b"cos\nsystem\n" + b"X\x04\x00\x00\x00true\x85R."
    for exc in refused_three_ways(data):
        assert isinstance(exc, pickle.UnpicklingError)
        assert exc.names == ["os.system"]
        assert exc.refused == [("os.system", 2)]
        message = str(exc)
        assert "os.system" in message and "at byte 2" in message
        assert "allow=['os.system']" in message
        assert "trusted=True" in message


def test_truncated_stream_is_eof_and_unpickling_error():
    for data in (b"", b"\x80\x04\x95", b"\x80\x03X\x05\x00\x00\x00ab"):
        with pytest.raises(mason.TruncatedPickleError) as caught:
            mason.loads(data)
        assert isinstance(caught.value, EOFError)
        assert isinstance(caught.value, pickle.UnpicklingError)


def test_malformed_stream_errors_are_what_pickle_raises():
    # pickle raises ValueError for a bad literal and UnpicklingError for a bad opcode
    with pytest.raises(ValueError):
        mason.loads(b"I12JUNK\n.")
    with pytest.raises(pickle.UnpicklingError):
        mason.loads(b"\xff.")


def test_loads_and_load_accept_memoryview_bytearray_and_real_files(tmp_path):
    data = pickle.dumps({"k": [1, 2, 3]}, 4)
    assert mason.loads(memoryview(data)) == {"k": [1, 2, 3]}
    assert mason.loads(bytearray(data)) == {"k": [1, 2, 3]}
    path = tmp_path / "f.pkl"
    path.write_bytes(data + data)
    with open(path, "rb") as f:
        assert mason.load(f) == mason.load(f) == {"k": [1, 2, 3]}
    with open(path, "rb", buffering=0) as f:
        assert mason.load(f) == {"k": [1, 2, 3]}
        assert f.tell() == len(data)
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as f:
        assert mason.load(f) == {"k": [1, 2, 3]}


def test_protocol_4_dotted_names_resolve_only_through_allowed_names():
    import posixpath

    def stack_global(module, name):
        m, n = module.encode(), name.encode()
        return b"\x80\x04\x8c" + bytes([len(m)]) + m + b"\x8c" + bytes([len(n)]) + n + b"\x93."

    # the exact name, however the stream splits it between module and qualname
    for module, name in (("os.path", "join"), ("os", "path.join")):
        assert mason.loads(stack_global(module, name), allow=["os.path.join"]) \
            is posixpath.join
        refused_three_ways(stack_global(module, name))
    # allowing a function allows nothing next to it, nor below it
    refused_three_ways(stack_global("os.path", "exists"), allow=["os.path.join"])
    refused_three_ways(stack_global("os", "path.os.system"), allow=["os.path.join"])
    # a wildcard admits what lives in the module: os.path is posixpath under another name,
    # so "os.path.*" admits none of posixpath's functions (the error says to allow the name)
    errors = refused_three_ways(stack_global("os.path", "join"), allow=["os.path.*"])
    assert "allow=['os.path.join']" in str(errors[0])
    # and it does not reach the module os that posixpath imports
    errors = refused_three_ways(stack_global("os.path", "os.system"), allow=["os.path.*"])
    assert errors[0].names == ["os.path.os.system"]
    # nor does it pass through a dunder
    errors = refused_three_ways(stack_global("os.path", "join.__globals__"),
                                allow=["os.path.*"])
    assert "dunder" in str(errors[0])
