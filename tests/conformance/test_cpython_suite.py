"""CPython's own pickle conformance suite, run against mason.

``test.pickletester`` ships with the interpreter and holds the abstract test classes that
``test.test_pickle`` runs against pickle's C and pure-Python engines.  Here the same classes
run against mason, the way ``test_pickle`` wires them up:

* dumping always goes through ``mason.Pickler`` / ``mason.dumps`` / ``mason.dump``;
* loading runs in trusted mode (``trusted=True``) wherever a test pickles classes of its own,
  since those are exactly what the default policy refuses;
* ``AbstractUnpickleTests`` also runs in the default, safe mode (``SafeUnpickleTests``).  The
  tests of that class that load globals outside the default policy cannot pass there by
  design; for each of them, the safe run asserts instead that mason refuses the stream with
  an ``UnsafeGlobalError`` naming the global (``SAFE_MODE_REFUSES`` below), while the trusted
  run (``TrustedUnpickleTests``) requires the original test to pass;
* streams crossing between the engines: mason dumps / stdlib loads, and stdlib dumps / mason
  loads (as ``test_pickle`` crosses the C and Python engines).

* pickling runs twice: with ``by_value=False`` (mason then refuses exactly what pickle
  refuses, so every test applies unchanged) and as mason comes, pickling by value what
  pickle cannot.

Excluded tests are listed in ``EXCLUDED`` with the reason: the bigmem tests; in the
by-value classes only, the three tests that assert that pickle cannot pickle local
functions or method descriptors; and the pure-Python-pickler crossing's
``test_local_lookup_error``, which tests the stdlib's own whichmodule() (torch breaks it).  An excluded test is removed from its class (set to None,
as ``test_pickle`` itself does for ``test_framed_write_sizes_with_delayed_writer``).  The
skips that remain are the suite's own: six tests only meaningful on 32-bit builds.
Not run at all: ``test_pickle.SizeofTests`` (the byte sizes of ``_pickle``'s C structs, a
CPython implementation detail) and ``test_pickle.CompatPickleTests`` (the tables of
``_compat_pickle``, which mason uses as they are).

Run time: about 10 s for the whole module on an idle 2-core machine, 11-19 s wall while
other work shares it (``PYTHONPATH=src python3 -m pytest tests/conformance``).
"""

from __future__ import annotations

import collections
import inspect
import io
import pickle
import unittest

import pytest

# Some distributions package the interpreter's own tests separately (Debian: libpython3-test).
pytest.importorskip("test.pickletester", reason="CPython's test package is not installed")

from test import test_pickle as cpython_test_pickle  # noqa: E402
from test.pickletester import (AbstractCustomPicklerClass,  # noqa: E402
                               AbstractDispatchTableTests,
                               AbstractHookTests, AbstractIdentityPersistentPicklerTests,
                               AbstractPersistentPicklerTests, AbstractPickleModuleTests,
                               AbstractPickleTests, AbstractPicklerUnpicklerObjectTests,
                               AbstractUnpickleTests, BigmemPickleTests)

import mason  # noqa: E402

# --------------------------------------------------------------------------------------------
# Engines under test


class TrustedUnpickler(mason.Unpickler):
    """mason.Unpickler in trusted mode: the tests pickle classes of their own."""

    def __init__(self, file, **kwargs):
        kwargs.setdefault("trusted", True)
        super().__init__(file, **kwargs)


# mason pickles by value what pickle cannot (lambdas, local functions and classes); with
# by_value=False it refuses exactly what pickle refuses, which is what the suite checks.
_HAS_BY_VALUE = "by_value" in inspect.signature(mason.dumps).parameters


class StrictPickler(mason.Pickler):
    """mason.Pickler with by_value=False."""

    def __init__(self, file, protocol=None, **kwargs):
        if _HAS_BY_VALUE:
            kwargs.setdefault("by_value", False)
        super().__init__(file, protocol, **kwargs)


def strict_dumps(obj, protocol=None, **kwargs):
    if _HAS_BY_VALUE:
        kwargs.setdefault("by_value", False)
    return mason.dumps(obj, protocol, **kwargs)


def trusted_loads(data, /, **kwargs):
    return mason.loads(data, trusted=True, **kwargs)


def trusted_load(file, /, **kwargs):
    return mason.load(file, trusted=True, **kwargs)


# --------------------------------------------------------------------------------------------
# Exclusions: "Class.test_name" -> why the test does not apply to mason.

_BIGMEM = ("bigmem test: needs 2-8 GiB x several of RAM to build its input (CPython only runs "
           "it with regrtest -M); mason's dumping is the C engine's, unchanged")

EXCLUDED: dict[str, str] = {
    "InMemoryPickleTests.test_huge_long_32b": _BIGMEM,
    "InMemoryPickleTests.test_huge_bytes_32b": _BIGMEM,
    "InMemoryPickleTests.test_huge_bytes_64b": _BIGMEM,
    "InMemoryPickleTests.test_huge_str_32b": _BIGMEM,
    "InMemoryPickleTests.test_huge_str_64b": _BIGMEM,
}


_BY_VALUE = ("asserts that pickle cannot pickle a local function or a staticmethod / "
             "classmethod descriptor; mason pickles those by value, by design (DESIGN.md: "
             "'ship a lambda to another process').  The test passes unchanged in the same "
             "class with by_value=False (PicklerTests, InMemoryPickleTests, ...)")
for _cls in ("ByValuePicklerTests", "ByValueInMemoryPickleTests", "ByValueDumpStdlibLoadTests"):
    for _test in ("test_local_lookup_error", "test_py_methods", "test_c_methods"):
        EXCLUDED[f"{_cls}.{_test}"] = _BY_VALUE


# The stdlib's pure-Python pickler, when a function has no importable home, looks for it in
# every module of sys.modules and lets any error but AttributeError escape; torch's
# torch._classes module raises RuntimeError for every attribute, so once torch is imported
# (the model tests import it) this test fails in pickle itself, before mason reads a byte.
EXCLUDED["PyStdlibDumpMasonLoadTests.test_local_lookup_error"] = (
    "exercises the stdlib pure-Python pickler's whichmodule(), which torch breaks when "
    "imported in the same process; the class tests what mason reads, and this test reads "
    "nothing")


def _apply_exclusions(namespace: dict) -> None:
    for key in EXCLUDED:
        cls_name, test_name = key.split(".")
        cls = namespace[cls_name]
        assert hasattr(cls, test_name), f"excluded test {key} does not exist"
        setattr(cls, test_name, None)


# --------------------------------------------------------------------------------------------
# Unpickling (AbstractUnpickleTests)


class TrustedUnpickleTests(AbstractUnpickleTests, unittest.TestCase):
    """Every unpickling test, through mason.Unpickler(file, trusted=True).load()."""

    bad_stack_errors = (pickle.UnpicklingError,)
    truncated_errors = (pickle.UnpicklingError,)

    def loads(self, buf, **kwds):
        return TrustedUnpickler(io.BytesIO(buf), **kwds).load()


# Tests of AbstractUnpickleTests that load globals outside the default policy, and the
# globals mason must name when it refuses them in safe mode.
SAFE_MODE_REFUSES: dict[str, list[str]] = {
    # DATA0-4 and the 2.x "classic instance" pickles hold instances of the test's class C
    "test_load_from_data0": ["__main__.C"],
    "test_load_from_data1": ["__main__.C"],
    "test_load_from_data2": ["__main__.C"],
    "test_load_from_data3": ["__main__.C"],
    "test_load_from_data4": ["__main__.C"],
    "test_load_classic_instance": ["__main__.C"],
    # functools.reduce and dbm.whichdb are functions; refusing them is the point of safety
    "test_compat_unpickle": ["functools.reduce"],
    # a SimpleCookie (http.cookies) is not a default-policy type
    "test_unpickle_from_2x": ["http.cookies.SimpleCookie"],
}


class SafeUnpickleTests(AbstractUnpickleTests, unittest.TestCase):
    """Every unpickling test through mason's default, safe loading: mason.loads(data) and
    mason.Unpickler(file).load() must agree on each stream."""

    bad_stack_errors = (pickle.UnpicklingError,)
    truncated_errors = (pickle.UnpicklingError,)

    def loads(self, buf, **kwds):
        try:
            from_file = mason.Unpickler(io.BytesIO(buf), **kwds).load()
        except BaseException as exc:
            file_error = exc
        else:
            file_error = None
        try:
            in_memory = mason.loads(buf, **kwds)
        except BaseException as exc:
            # Both paths must fail alike; re-raise the in-memory error for the test to judge.
            assert file_error is not None and type(file_error) is type(exc), (
                f"load() gave {file_error!r}, loads() raised {exc!r} on {buf!r}")
            raise
        assert file_error is None, f"loads() succeeded but load() raised {file_error!r}"
        return in_memory


def _make_refusal_test(test_name: str, names: list[str]):
    original = getattr(AbstractUnpickleTests, test_name)

    def test(self):
        # The original test must fail in safe mode, and only because of the policy.
        with self.assertRaises(mason.UnsafeGlobalError) as caught:
            original(self)
        refused = caught.exception.names
        self.assertEqual(refused[:1], names[:1], str(caught.exception))
        self.assertIn(f"allow=[{names[0]!r}", str(caught.exception))

    test.__name__ = test_name
    test.__doc__ = f"safe mode refuses {', '.join(names)} (the test passes when trusted)"
    return test


for _name, _globals in SAFE_MODE_REFUSES.items():
    setattr(SafeUnpickleTests, _name, _make_refusal_test(_name, _globals))


# --------------------------------------------------------------------------------------------
# Pickling and round trips (AbstractPickleTests), as test_pickle's CPicklerTests and
# InMemoryPickleTests


class PicklerTests(AbstractPickleTests, unittest.TestCase):
    """mason.Pickler(by_value=False) to a file, mason.Unpickler(trusted=True) from a file."""

    pickler = StrictPickler
    unpickler = TrustedUnpickler

    def dumps(self, arg, proto=None, **kwargs):
        f = io.BytesIO()
        p = self.pickler(f, proto, **kwargs)
        p.dump(arg)
        f.seek(0)
        return bytes(f.read())

    def loads(self, buf, **kwds):
        f = io.BytesIO(buf)
        u = self.unpickler(f, **kwds)
        return u.load()


class ByValuePicklerTests(PicklerTests):
    """mason.Pickler as it comes (functions and classes by value where pickle fails)."""

    pickler = mason.Pickler


class InMemoryPickleTests(AbstractPickleTests, AbstractUnpickleTests, BigmemPickleTests,
                          unittest.TestCase):
    """mason.dumps(by_value=False) / mason.loads(trusted=True), as test_pickle's
    InMemoryPickleTests."""

    bad_stack_errors = (pickle.UnpicklingError,)
    truncated_errors = (pickle.UnpicklingError,)
    # test_pickle's in-memory class has no pickler, and so skips or removes the three tests
    # that need one; here they run with mason's.
    pickler = StrictPickler

    def dumps(self, arg, protocol=None, **kwargs):
        return strict_dumps(arg, protocol, **kwargs)

    def loads(self, buf, **kwds):
        return mason.loads(buf, trusted=True, **kwds)


class ByValueInMemoryPickleTests(AbstractPickleTests, unittest.TestCase):
    """mason.dumps as it comes / mason.loads(trusted=True)."""

    pickler = mason.Pickler

    def dumps(self, arg, protocol=None, **kwargs):
        return mason.dumps(arg, protocol, **kwargs)

    def loads(self, buf, **kwds):
        return mason.loads(buf, trusted=True, **kwds)


class MasonDumpStdlibLoadTests(PicklerTests):
    """What mason writes, the stdlib's C unpickler reads."""

    unpickler = pickle.Unpickler


class MasonDumpPyStdlibLoadTests(PicklerTests):
    """What mason writes, the stdlib's pure-Python unpickler reads."""

    unpickler = pickle._Unpickler


class ByValueDumpStdlibLoadTests(ByValuePicklerTests):
    """What mason writes by value, the stdlib's C unpickler reads too (given mason)."""

    unpickler = pickle.Unpickler


class StdlibDumpMasonLoadTests(PicklerTests):
    """What the stdlib's C pickler writes, mason reads."""

    pickler = pickle.Pickler


class PyStdlibDumpMasonLoadTests(PicklerTests):
    """What the stdlib's pure-Python pickler writes, mason reads."""

    pickler = pickle._Pickler


# --------------------------------------------------------------------------------------------
# The module-level API (AbstractPickleModuleTests), as test_pickle's CPickleTests


class PickleModuleTests(AbstractPickleModuleTests, unittest.TestCase):
    dump = staticmethod(mason.dump)
    dumps = staticmethod(mason.dumps)
    load = staticmethod(trusted_load)
    loads = staticmethod(trusted_loads)
    Pickler = mason.Pickler
    Unpickler = TrustedUnpickler


class SafePickleModuleTests(AbstractPickleModuleTests, unittest.TestCase):
    """The module API with mason's own, safe-by-default load / loads / Unpickler.

    The out-of-band buffer tests pickle ZeroCopyBytes, a test class, rebuilt by its
    classmethod ``_reconstruct`` (written as ``getattr(ZeroCopyBytes, '_reconstruct')``):
    allowing exactly those two names loads them in safe mode."""

    dump = staticmethod(mason.dump)
    dumps = staticmethod(mason.dumps)
    Pickler = mason.Pickler
    Unpickler = mason.Unpickler
    _allow = ["test.pickletester.ZeroCopyBytes", "test.pickletester.ZeroCopyBytes._reconstruct"]

    def load(self, file, **kwargs):
        return mason.load(file, allow=self._allow, **kwargs)

    def loads(self, data, **kwargs):
        return mason.loads(data, allow=self._allow, **kwargs)


# --------------------------------------------------------------------------------------------
# persistent_id / persistent_load


class PersistentPicklerUnpicklerMixin(cpython_test_pickle.PersistentPicklerUnpicklerMixin):
    pickler = mason.Pickler
    unpickler = TrustedUnpickler


class PersPicklerTests(AbstractPersistentPicklerTests, PersistentPicklerUnpicklerMixin,
                       unittest.TestCase):
    pass


class SafePersPicklerTests(PersPicklerTests):
    """Persistent ids name no global: the default policy loads them through the hook."""

    unpickler = mason.Unpickler


class IdPersPicklerTests(AbstractIdentityPersistentPicklerTests,
                         PersistentPicklerUnpicklerMixin, unittest.TestCase):
    # The reference-cycle tests live in test_pickle.py itself (cpython_only there, and mason
    # runs on CPython): a mason Pickler / Unpickler must not keep itself alive either.
    test_pickler_reference_cycle = \
        cpython_test_pickle.PyIdPersPicklerTests.test_pickler_reference_cycle
    test_unpickler_reference_cycle = \
        cpython_test_pickle.PyIdPersPicklerTests.test_unpickler_reference_cycle
    test_custom_pickler_dispatch_table_memleak = \
        cpython_test_pickle.PyIdPersPicklerTests.test_custom_pickler_dispatch_table_memleak


class SafeIdPersPicklerTests(IdPersPicklerTests):
    unpickler = mason.Unpickler


# --------------------------------------------------------------------------------------------
# Pickler / Unpickler objects: memo, reuse, several pickles in one file


class PicklerUnpicklerObjectTests(AbstractPicklerUnpicklerObjectTests, unittest.TestCase):
    pickler_class = mason.Pickler
    unpickler_class = TrustedUnpickler

    # From test_pickle's CPicklerUnpicklerObjectTests: the memo setter checks its argument.
    test_issue18339 = cpython_test_pickle.CPicklerUnpicklerObjectTests.test_issue18339


class AllowLenUnpickler(mason.Unpickler):
    """The default policy plus builtins.len, the one global of these tests' data."""

    def __init__(self, file, **kwargs):
        super().__init__(file, allow=["builtins.len"], **kwargs)


class SafePicklerUnpicklerObjectTests(PicklerUnpicklerObjectTests):
    """The data of these tests is plain (lists, tuples, str, int, bytes) but for one
    function, builtins.len: the default policy with allow=["builtins.len"] loads it."""

    unpickler_class = AllowLenUnpickler


# --------------------------------------------------------------------------------------------
# dispatch_table and reducer_override


class DispatchTableTests(AbstractDispatchTableTests, unittest.TestCase):
    pickler_class = mason.Pickler

    def get_dispatch_table(self):
        return pickle.dispatch_table.copy()


class ChainDispatchTableTests(AbstractDispatchTableTests, unittest.TestCase):
    pickler_class = mason.Pickler

    def get_dispatch_table(self):
        return collections.ChainMap({}, pickle.dispatch_table)


class PicklerHookTests(AbstractHookTests, unittest.TestCase):
    class CustomMasonPicklerClass(mason.Pickler, AbstractCustomPicklerClass):
        pass

    pickler_class = CustomMasonPicklerClass


_apply_exclusions(globals())
