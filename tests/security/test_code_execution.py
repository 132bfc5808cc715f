"""Hostile streams that run code, write files or reach dangerous attributes.

Each payload would create ``marker`` (a file under tmp_path).  Every test asserts that:

1. mason's safe loading refuses the stream -- through ``loads``, ``load`` and ``Unpickler`` --
   with an ``UnsafeGlobalError`` (an ``UnpicklingError``) naming the global it refused;
2. the marker does not exist afterwards: nothing ran;
3. as a control, the standard library's ``pickle.loads`` on the same bytes, in a subprocess
   whose working directory is tmp_path, does create the marker, so the payload is live and
   the test cannot pass vacuously.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import sys

import pytest
from hostile import (APPEND, BUILD, EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, MARK, MEMOIZE, NEWOBJ,
                     NEWOBJ_EX, OBJ, POP, REDUCE, STOP, TUPLE, TUPLE1, TUPLE2, TUPLE3,
                     assert_control_creates, binget, binunicode, ext1, global_, inst, proto,
                     stack_global, string0, unicode0)

import mason


def mason_refuses(data: bytes, *names: str, **options) -> list[mason.UnsafeGlobalError]:
    """Load ``data`` safely in the three ways; each must raise UnsafeGlobalError, and, when
    ``names`` are given, the error must name the first of them and say how to allow it."""
    errors = []
    for how in ("loads", "load", "Unpickler"):
        with pytest.raises(mason.UnsafeGlobalError) as caught:
            if how == "loads":
                mason.loads(data, **options)
            elif how == "load":
                mason.load(io.BytesIO(data), **options)
            else:
                mason.Unpickler(io.BytesIO(data), **options).load()
        exc = caught.value
        assert isinstance(exc, pickle.UnpicklingError)
        if names:
            assert names[0] in exc.names, (how, str(exc))
            assert names[0] in str(exc)
            assert "allow=[" in str(exc) and repr(names[0]) in str(exc), str(exc)
        errors.append(exc)
    return errors


def check(marker, data: bytes, *names: str, setup: str = "", **options) -> None:
    mason_refuses(data, *names, **options)
    assert not marker.exists(), "the payload ran under mason"
    assert_control_creates(marker, data, setup=setup)


def touch(marker) -> str:
    return f"touch {marker}"


def write_code(marker) -> str:
    return f"open('{marker}', 'w').close()"


# --------------------------------------------------------------------------------------------
# Calling a dangerous function by name


def test_os_system_protocol_0(marker):
    data = global_("os", "system") + MARK + string0(touch(marker)) + TUPLE + REDUCE + STOP
    check(marker, data, "os.system")


def test_posix_system_protocol_2(marker):
    # os.system pickles under its real home, posix.system
    data = proto(2) + global_("posix", "system") + binunicode(touch(marker)) + TUPLE1 \
        + REDUCE + STOP
    check(marker, data, "posix.system")


def test_subprocess_run_protocol_4(marker):
    args = EMPTY_LIST + binunicode("touch") + APPEND + binunicode(str(marker)) + APPEND
    data = proto(4) + stack_global("subprocess", "run") + args + TUPLE1 + REDUCE + STOP
    check(marker, data, "subprocess.run")


def test_subprocess_check_call_protocol_0(marker):
    data = global_("subprocess", "check_call") + MARK + b"(lp0\n" + unicode0("touch") \
        + b"a" + unicode0(str(marker)) + b"a" + TUPLE + REDUCE + STOP
    check(marker, data, "subprocess.check_call")


def test_eval(marker):
    data = global_("builtins", "eval") + MARK + unicode0(write_code(marker)) + TUPLE \
        + REDUCE + STOP
    check(marker, data, "builtins.eval")


def test_exec_protocol_5(marker):
    data = proto(5) + stack_global("builtins", "exec") + binunicode(write_code(marker)) \
        + TUPLE1 + REDUCE + STOP
    check(marker, data, "builtins.exec")


def test_python2_builtin_eval(marker):
    # __builtin__ is mapped to builtins by fix_imports, before the policy looks
    data = proto(2) + global_("__builtin__", "eval") + binunicode(write_code(marker)) \
        + TUPLE1 + REDUCE + STOP
    check(marker, data, "builtins.eval")


def test_builtins_open(marker):
    data = proto(3) + global_("builtins", "open") + binunicode(str(marker)) + binunicode("w") \
        + TUPLE2 + REDUCE + STOP
    check(marker, data, "builtins.open")


def test_io_open_protocol_4(marker):
    data = proto(4) + stack_global("io", "open") + binunicode(str(marker)) + binunicode("w") \
        + TUPLE2 + REDUCE + STOP
    check(marker, data, "io.open")


def test_reduce_to_a_dangerous_callable_in_every_protocol(marker):
    """What an object whose __reduce__ returns (os.system, (cmd,)) pickles to, as pickle.dumps
    writes it in each protocol."""

    class Payload:
        def __reduce__(self):
            import os
            return os.system, (touch(marker),)

    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(Payload(), protocol)
        check(marker, data, "posix.system")


# --------------------------------------------------------------------------------------------
# The opcodes that call: INST, OBJ, NEWOBJ, NEWOBJ_EX, and EXT for the name


def test_inst_opcode(marker):
    # INST pops the items above MARK and calls the global with them
    data = MARK + string0(touch(marker)) + inst("os", "system") + STOP
    check(marker, data, "os.system")


def test_obj_opcode(marker):
    data = MARK + global_("os", "system") + string0(touch(marker)) + OBJ + STOP
    check(marker, data, "os.system")


def test_newobj_opcode(marker):
    # partial.__new__(partial, os.system, cmd) builds the call; REDUCE makes it
    data = proto(2) + global_("functools", "partial") + global_("os", "system") \
        + binunicode(touch(marker)) + TUPLE2 + NEWOBJ + EMPTY_TUPLE + REDUCE + STOP
    check(marker, data, "functools.partial")


def test_newobj_ex_opcode(marker):
    data = proto(4) + stack_global("functools", "partial") + stack_global("os", "system") \
        + binunicode(touch(marker)) + TUPLE2 + EMPTY_DICT + NEWOBJ_EX + EMPTY_TUPLE + REDUCE \
        + STOP
    check(marker, data, "functools.partial")


EXT_CODE = 0xF0
EXT_SETUP = f"import copyreg; copyreg.add_extension('posix', 'system', {EXT_CODE})"


@pytest.fixture
def posix_system_extension():
    """Register posix.system as extension code EXT_CODE for the test, then restore."""
    assert EXT_CODE not in copyreg._inverted_registry
    copyreg.add_extension("posix", "system", EXT_CODE)
    yield
    copyreg.remove_extension("posix", "system", EXT_CODE)


def test_ext_opcode(marker, posix_system_extension):
    data = proto(2) + ext1(EXT_CODE) + binunicode(touch(marker)) + TUPLE1 + REDUCE + STOP
    check(marker, data, "posix.system", setup=EXT_SETUP)


def test_ext_opcode_after_another_unpickler_cached_the_code(marker, posix_system_extension):
    """CPython's unpicklers share one cache of resolved extension codes
    (copyreg._extension_cache).  Once a trusted load has resolved the code, the C engine
    takes it from the cache without asking find_class: mason must still refuse it."""
    assert pickle.loads(proto(2) + ext1(EXT_CODE) + STOP) is __import__("os").system
    assert EXT_CODE in copyreg._extension_cache
    data = proto(2) + ext1(EXT_CODE) + binunicode(touch(marker)) + TUPLE1 + REDUCE + STOP
    check(marker, data, "posix.system", setup=EXT_SETUP)


def test_safe_load_does_not_leave_its_resolutions_in_the_shared_extension_cache():
    """The reverse: a stand-in that mason's policy resolved must not leak, through the shared
    cache, into a later load by the standard library's pickle."""
    import uuid
    code = 0xF1
    copyreg.add_extension("uuid", "SafeUUID", code)
    try:
        data = proto(2) + ext1(code) + STOP
        assert mason.loads(data) is uuid.SafeUUID
        assert pickle.loads(data) is uuid.SafeUUID
        copyreg.add_extension("builtins", "getattr", code + 1)
        data = proto(2) + ext1(code + 1) + STOP
        with pytest.raises(mason.UnpicklingError):
            mason.loads(data)  # the checked getattr cannot live in a process-wide cache
        assert pickle.loads(data) is getattr
    finally:
        copyreg.remove_extension("uuid", "SafeUUID", code)
        if copyreg._inverted_registry.get(code + 1):
            copyreg.remove_extension("builtins", "getattr", code + 1)


# --------------------------------------------------------------------------------------------
# Names assembled at run time


def test_stack_global_names_from_the_memo(marker):
    # Both halves of the name are pushed, memoized and popped long before STACK_GLOBAL
    # reassembles them from the memo.
    data = (proto(4) + binunicode("posix") + MEMOIZE + POP + binunicode("system") + MEMOIZE
            + POP + binunicode("harmless") + POP + binget(0) + binget(1) + b"\x93"
            + binunicode(touch(marker)) + TUPLE1 + REDUCE + STOP)
    check(marker, data, "posix.system")


def test_protocol_4_dotted_name_through_an_allowed_module(marker):
    """allow=["os.path.*"] admits posixpath's own names only: "os.path" "os.system" walks
    into the module os, where system is not allowed."""
    data = proto(4) + stack_global("os.path", "os.system") + binunicode(touch(marker)) \
        + TUPLE1 + REDUCE + STOP
    check(marker, data, "os.path.os.system", allow=["os.path.*"])


# --------------------------------------------------------------------------------------------
# Gadgets: getattr, attrgetter, methodcaller and the checked stand-ins


def test_getattr_of_an_imported_module(marker):
    # getattr(__import__("os"), "system")(cmd)
    data = (proto(2) + global_("builtins", "getattr") + global_("builtins", "__import__")
            + binunicode("os") + TUPLE1 + REDUCE + binunicode("system") + TUPLE2 + REDUCE
            + binunicode(touch(marker)) + TUPLE1 + REDUCE + STOP)
    check(marker, data, "builtins.__import__")


def test_getattr_on_an_instance_of_an_allowed_type(marker):
    """pathlib.PosixPath is a value of the default policy, but getattr(path, "touch")() would
    create the file: the getattr stand-in looks up no attribute of an instance."""
    data = (proto(2) + global_("builtins", "getattr") + global_("pathlib", "PosixPath")
            + binunicode(str(marker)) + TUPLE1 + REDUCE + binunicode("touch") + TUPLE2
            + REDUCE + EMPTY_TUPLE + REDUCE + STOP)
    mason_refuses(data)
    assert not marker.exists()
    assert_control_creates(marker, data)


def test_getattr_of_a_method_of_an_allowed_class(marker):
    """getattr(PosixPath, "touch")(PosixPath(marker)): the stand-in treats getattr(Class, name)
    as the global pathlib.PosixPath.touch, which the default policy does not allow."""
    data = (proto(2) + global_("builtins", "getattr") + global_("pathlib", "PosixPath")
            + binunicode("touch") + TUPLE2 + REDUCE
            + global_("pathlib", "PosixPath") + binunicode(str(marker)) + TUPLE1 + REDUCE
            + TUPLE1 + REDUCE + STOP)
    check(marker, data, "pathlib.PosixPath.touch")


def test_getattr_dunder_walk_from_an_allowed_class():
    # getattr(object, "__subclasses__") is the first step of the classic sandbox escape
    data = proto(2) + global_("builtins", "getattr") + global_("builtins", "object") \
        + binunicode("__subclasses__") + TUPLE2 + REDUCE + STOP
    errors = mason_refuses(data)
    assert "builtins.object.__subclasses__" in str(errors[0])
    assert pickle.loads(data) == object.__subclasses__  # live in the stdlib


def test_operator_attrgetter(marker):
    data = (proto(2) + global_("operator", "attrgetter") + binunicode("touch") + TUPLE1
            + REDUCE + global_("pathlib", "PosixPath") + binunicode(str(marker)) + TUPLE1
            + REDUCE + TUPLE1 + REDUCE + EMPTY_TUPLE + REDUCE + STOP)
    check(marker, data, "operator.attrgetter")


def test_operator_methodcaller(marker):
    data = (proto(2) + global_("operator", "methodcaller") + binunicode("touch") + TUPLE1
            + REDUCE + global_("pathlib", "PosixPath") + binunicode(str(marker)) + TUPLE1
            + REDUCE + TUPLE1 + REDUCE + STOP)
    check(marker, data, "operator.methodcaller")


def test_copyreg_reconstructor_with_a_dangerous_class(marker):
    """copyreg._reconstructor(cls, base, state) runs base.__init__(obj, state): with
    logging.FileHandler that opens (creates) the file.  The stand-in gets only allowed
    classes, and logging.FileHandler is not one."""
    data = (global_("copyreg", "_reconstructor") + MARK + global_("logging", "FileHandler")
            + global_("logging", "FileHandler") + unicode0(str(marker)) + TUPLE + REDUCE
            + STOP)
    check(marker, data, "logging.FileHandler")


def test_copyreg_reconstructor_stand_in_refuses_what_pickle_never_writes():
    # cls must be a class: here an allowed non-class (the checked getattr)
    data = (global_("copyreg", "_reconstructor") + MARK + global_("builtins", "getattr")
            + global_("builtins", "object") + b"N" + TUPLE + REDUCE + STOP)
    errors = mason_refuses(data)
    assert "copyreg._reconstructor" in str(errors[0])


def test_codecs_encode_stand_in_allows_only_latin1():
    # protocols 0-2 write bytes as _codecs.encode(text, "latin1"); other codecs are refused
    good = proto(2) + global_("_codecs", "encode") + binunicode("\xff\x00") \
        + binunicode("latin1") + TUPLE2 + REDUCE + STOP
    assert mason.loads(good) == b"\xff\x00"
    for codec in ("rot13", "utf-16", "zlib_codec", "hex", "idna"):
        bad = proto(2) + global_("_codecs", "encode") + binunicode("abc") \
            + binunicode(codec) + TUPLE2 + REDUCE + STOP
        mason_refuses(bad)


def test_type_stand_in_refuses_class_creation():
    # type("X", (object,), {}) would build a class from the stream's dictionary
    data = (proto(2) + global_("builtins", "type") + binunicode("X")
            + global_("builtins", "object") + TUPLE1 + EMPTY_DICT + TUPLE3 + REDUCE + STOP)
    mason_refuses(data)
    assert isinstance(pickle.loads(data), type)


# --------------------------------------------------------------------------------------------
# Module wildcards: re-exports, imported modules, dunder walks


@pytest.fixture
def evil_package(tmp_path, monkeypatch):
    """A package that re-exports os.system, imports os, and holds a builtin function."""
    root = tmp_path / "pkgs"
    (root / "evilpkg").mkdir(parents=True)
    (root / "evilpkg" / "__init__.py").write_text(
        "from os import system\nimport os\nhelper = len\n\n"
        "class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop("evilpkg", None)


def _setup_path(root) -> str:
    return f"sys.path.insert(0, {str(root)!r})"


def test_wildcard_does_not_admit_a_reexported_function(marker, evil_package):
    data = global_("evilpkg", "system") + MARK + string0(touch(marker)) + TUPLE + REDUCE + STOP
    check(marker, data, "evilpkg.system", allow=["evilpkg.*"], setup=_setup_path(evil_package))
    assert mason.loads(global_("evilpkg", "Thing") + STOP, allow=["evilpkg.*"]).__name__ \
        == "Thing"  # the wildcard does admit the package's own class


def test_wildcard_does_not_admit_an_imported_module(marker, evil_package):
    data = proto(4) + stack_global("evilpkg", "os.system") + binunicode(touch(marker)) \
        + TUPLE1 + REDUCE + STOP
    check(marker, data, "evilpkg.os.system", allow=["evilpkg.*"],
          setup=_setup_path(evil_package))


def test_dunder_walk_is_refused_even_under_a_wildcard(marker, evil_package):
    # helper is the builtin len; len.__self__ is the builtins module; .exec runs code
    data = proto(4) + stack_global("evilpkg", "helper.__self__.exec") \
        + binunicode(write_code(marker)) + TUPLE1 + REDUCE + STOP
    errors = mason_refuses(data, "evilpkg.helper.__self__.exec", allow=["evilpkg.*"])
    assert "dunder" in str(errors[0])
    assert not marker.exists()
    assert_control_creates(marker, data, setup=_setup_path(evil_package))


def test_dunder_walk_is_refused_even_when_named_exactly(marker, evil_package):
    data = proto(4) + stack_global("evilpkg", "helper.__self__.exec") \
        + binunicode(write_code(marker)) + TUPLE1 + REDUCE + STOP
    mason_refuses(data, allow=["evilpkg.helper.__self__.exec"])
    assert not marker.exists()


def test_numpy_wildcard_does_not_reach_os_through_f2py(marker):
    pytest.importorskip("numpy")
    data = proto(4) + stack_global("numpy", "f2py.os.system") + binunicode(touch(marker)) \
        + TUPLE1 + REDUCE + STOP
    check(marker, data, "numpy.f2py.os.system", allow=["numpy.*"])


def test_numpy_builtins_eval_dunder_walk():
    """numpy.__builtins__.eval: a module's __builtins__ is a dict in CPython, so the stdlib
    fails on this name too (no control is possible); mason refuses it before any walk."""
    pytest.importorskip("numpy")
    data = proto(4) + stack_global("numpy", "__builtins__.eval") + binunicode("1+1") + TUPLE1 \
        + REDUCE + STOP
    errors = mason_refuses(data, "numpy.__builtins__.eval", allow=["numpy.*"])
    assert "dunder" in str(errors[0])


# --------------------------------------------------------------------------------------------
# One error lists every refused global


def test_every_refused_global_is_listed_with_its_offset(marker):
    first = proto(4) + stack_global("posix", "system")
    second_at = len(first) + len(binunicode(touch(marker))) + 2
    data = (first + binunicode(touch(marker)) + TUPLE1 + REDUCE
            + global_("builtins", "eval") + binunicode("1") + TUPLE1 + REDUCE
            + stack_global("subprocess", "run") + binunicode("true") + TUPLE1 + REDUCE
            + global_("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE  # allowed
            + TUPLE3 + POP + b"N" + STOP)
    assert data[second_at:second_at + 1] == b"c"
    for exc in mason_refuses(data, "posix.system"):
        assert exc.names == ["posix.system", "builtins.eval", "subprocess.run"], str(exc)
        offsets = dict(exc.refused)
        assert offsets["builtins.eval"] == second_at
        assert f"at byte {second_at}" in str(exc)
        assert "allow=['posix.system', 'builtins.eval', 'subprocess.run']" in str(exc)
        assert "collections.OrderedDict" not in str(exc)
    assert not marker.exists()
    assert_control_creates(marker, data)
