"""How functions, classes and modules travel by value, and how they are rebuilt.

pickle saves a function or a class by *reference*: the module and qualified name, imported
again on load.  That fails for whatever cannot be imported by name where the pickle is loaded:
lambdas, nested functions, local classes, everything defined in ``__main__`` (a script, a
notebook), and modules registered with ``register_by_value``.  Those travel by *value*: their
code, and the data they need, as a standard pickle whose rebuild functions are the
``_make_*`` functions of this module.  ``pickle.loads`` of the standard library loads such a
pickle wherever mason is installed, so this module's names are a stable format: **never
rename or remove a rebuild function, or change its signature incompatibly** (old pickles name
them).

Dump side (``reducer_override``; see ``make_hook``), in the order the hook consults it:

1. an exact-type table (``_REDUCERS``): functions, classes, code, cells, modules, and the
   objects pickle cannot pickle at all that by-value classes are made of (classmethod,
   staticmethod, property, mappingproxy, dict views, ...);
2. any other class (an instance of a metaclass);
3. everything else: ``NotImplemented``, so the C engine pickles it exactly as pickle does.

A function or class that can be imported by name (its module is in ``sys.modules``, is not
``__main__`` nor registered by value, and holds it under its qualified name) returns
``NotImplemented`` too: what pickle can pickle is pickled as pickle does.

Every by-value function and class starts with a *header*, ``_header(FORMAT, TAG, kind,
module, qualname)``: the first call its payload makes.  It checks the format version and the
Python version (code objects only load on the bytecode version that made them) before any
code object is built, and it names the function or class: in safe mode the unpickler hands
``refusal_stand_in`` the names of this module, and the header's stand-in refuses with a
message that names what the pickle would have run.

Determinism: the same function or class pickles to the same bytes in every process of the
same Python version.  Names are interned (the C pickler memoizes strings by identity, and
identity of equal strings differs between a process that compiled them and one that
unpickled them); frozensets and sets of plain values are written sorted (their iteration
order follows string hashing); class dictionaries are written sorted by name; only the
globals a function references are written, in bytecode order; and a class is identified
across processes by a *key* derived from its definition, not from ``id`` or a random id.
(What a function or class carries as data follows pickle's rules: after loading and
pickling again, a string that was interned where it was made may be written differently,
e.g. a partial's keyword names.)

How a class is rebuilt, and what that implies:

* as cloudpickle does, a *skeleton* first (``types.new_class`` with its metaclass, bases,
  ``__module__``, ``__qualname__``, ``__doc__``, ``__slots__`` and its plain-valued
  attributes), memoized, then the rest of its dict (methods, descriptors, nested classes,
  anything that may refer back to the class).  The class body does not run again:
  ``__init_subclass__`` and the metaclass see the skeleton; keyword arguments of the class
  statement (``class A(B, flag=1)``) are not kept; a metaclass that needs the finished body
  in ``__new__`` may not rebuild.  Enums are made by their metaclass from their members;
  namedtuples by ``collections.namedtuple``;
* a class loaded in the process that pickled it is that class (nothing is rebuilt); a class
  loaded several times in another process is one class, and the attributes of the latest
  load win (cloudpickle's rule);
* ``__main__`` objects travel by value even where pickle would write a reference: a script
  loading its own earlier pickles gets the pickled classes, not its current ones.

Code objects load only on the Python that compiled them (``TAG``); loading on another
raises an ``UnpicklingError`` that says so, before any code object is built.  Protocols 0
and 1 cannot pickle instances with ``__slots__`` (pickle's rule), which includes a
dataclass's fields.
"""

from __future__ import annotations

import abc
import builtins
import collections
import copyreg
import dataclasses
import enum
import functools
import hashlib
import io
import opcode
import sys
import threading
import types
import typing
import weakref
from importlib import import_module
from importlib.util import MAGIC_NUMBER

from .errors import UnpicklingError, UnsafeCodeError

__all__ = ["register_by_value", "unregister_by_value", "registered_by_value", "make_hook",
           "importable", "FORMAT", "TAG"]

# --------------------------------------------------------------------------------------------
# Versions

# The by-value payload format.  Bump it when a rebuild function changes meaning; rebuild
# functions refuse payloads of a newer format with a message instead of misreading them.
FORMAT = 1
# Bytecode compatibility: code objects load only on the interpreter that made them.  The
# cache tag names the version ("cpython-311"); the magic number tells pre-releases apart.
TAG = f"{sys.implementation.cache_tag}-{int.from_bytes(MAGIC_NUMBER[:2], 'little')}"

_PY311 = sys.version_info >= (3, 11)

# --------------------------------------------------------------------------------------------
# Modules registered by value

_BY_VALUE_MODULES: set[str] = set()
# Bytes the plain dump path searches its output for: a pickle naming one of these modules
# must be redone by value (see pickler.dumps).
_BY_VALUE_NEEDLES: list[bytes] = []  # updated in place: the pickler holds this list


def register_by_value(module) -> None:
    """Pickle the functions and classes of ``module`` (and its submodules) by value.

    For code that does not exist where the pickle is loaded: a module under development, a
    script's helper module.  ``module`` is a module object or its name; it must be imported.
    """
    name = _module_name(module)
    if name not in sys.modules:
        raise ValueError(f"module {name!r} is not imported: import it before registering it")
    _BY_VALUE_MODULES.add(name)
    _update_needles()


def unregister_by_value(module) -> None:
    """Undo ``register_by_value``: ``module`` is pickled by reference again."""
    name = _module_name(module)
    if name not in _BY_VALUE_MODULES:
        raise ValueError(f"module {name!r} is not registered by value")
    _BY_VALUE_MODULES.discard(name)
    _update_needles()


def registered_by_value() -> frozenset[str]:
    """The names of the modules registered by value."""
    return frozenset(_BY_VALUE_MODULES)


def _module_name(module) -> str:
    if isinstance(module, types.ModuleType):
        return module.__name__
    if isinstance(module, str) and module:
        return module
    raise TypeError(f"expected a module or a module name, not {type(module).__name__}")


def _update_needles() -> None:
    _BY_VALUE_NEEDLES[:] = sorted(name.encode() for name in _BY_VALUE_MODULES)


def _is_registered(module_name: str) -> bool:
    if not _BY_VALUE_MODULES:
        return False
    while True:
        if module_name in _BY_VALUE_MODULES:
            return True
        module_name, dot, _ = module_name.rpartition(".")
        if not dot:
            return False


def needs_by_value(data, end: int) -> bool:
    """Whether a pickle written by the plain C pickler names something that travels by value
    (``__main__``, or a registered module) in ``data[:end]``: a fast substring search;
    false positives only cost a redo."""
    if data.find(b"__main__", 0, end) >= 0:
        return True
    for needle in _BY_VALUE_NEEDLES:
        if data.find(needle, 0, end) >= 0:
            return True
    return False


# --------------------------------------------------------------------------------------------
# By reference or by value?

def importable(obj) -> bool:
    """Whether the function or class ``obj`` can be pickled by reference: loaded again by
    importing its module and walking its qualified name."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(qualname, str) or "<" in qualname:   # <lambda>, <locals>
        return False
    if module_name is None:
        module_name = _which_module(obj, qualname)
        if module_name is None:
            return False
    if module_name == "__main__" or not isinstance(module_name, str):
        return False
    if _BY_VALUE_MODULES and _is_registered(module_name):
        return False
    module = sys.modules.get(module_name)
    if module is None:
        return False
    found = module
    try:
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:
        return False
    return found is obj


def _which_module(obj, qualname: str) -> str | None:
    """The module holding ``obj`` under ``qualname``, as pickle's whichmodule finds it, but
    never ``__main__`` by default (an object found nowhere travels by value)."""
    for name, module in list(sys.modules.items()):
        if name in ("__main__", "__mp_main__") or not isinstance(module, types.ModuleType):
            continue
        try:
            found = module
            for part in qualname.split("."):
                found = getattr(found, part)
        except Exception:
            continue
        if found is obj:
            return name
    return None


# --------------------------------------------------------------------------------------------
# Deterministic output helpers

_intern = sys.intern


def _istr(value):
    """Intern an exact str: equal names become one object, so the C pickler's memo (keyed by
    identity) writes them the same way in every process."""
    return _intern(value) if type(value) is str else value


class _Call:
    """An object that pickles as the call ``func(*args)``."""

    __slots__ = ("func", "args")

    def __init__(self, func, args):
        self.func = func
        self.args = args


_PLAIN = (str, bytes, int, float, complex, bool, type(None))


def _plain(value) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if type(value) is tuple:
        return all(_plain(item) for item in value)
    return False


def _sort_key(value):
    return (type(value).__name__, repr(value))


def _canonical(value):
    """A set or frozenset of plain values, written in sorted order (its iteration order
    depends on string hashing, which differs per process); anything else, unchanged."""
    t = type(value)
    if (t is frozenset or t is set) and value and all(_plain(item) for item in value):
        items = [_istr(item) for item in sorted(value, key=_sort_key)]
        return _Call(t, (items,))
    return value


def _interned(value):
    """A plain value or __slots__ with its strings interned."""
    t = type(value)
    if t is str:
        return _intern(value)
    if t is tuple or t is list:
        return t(_interned(item) for item in value)
    if t is dict:
        return {_interned(k): v for k, v in value.items()}
    return value


def _canonical_const(value):
    t = type(value)
    if t is str:
        return _intern(value)
    if t is tuple:
        return tuple(_canonical_const(item) for item in value)
    if t is frozenset:
        return _canonical(frozenset(_canonical_const(item) for item in value))
    return value


# --------------------------------------------------------------------------------------------
# Code objects

if _PY311:
    _CODE_FIELDS = (
        "co_argcount", "co_posonlyargcount", "co_kwonlyargcount", "co_nlocals", "co_stacksize",
        "co_flags", "co_code", "co_consts", "co_names", "co_varnames", "co_filename",
        "co_name", "co_qualname", "co_firstlineno", "co_linetable", "co_exceptiontable",
        "co_freevars", "co_cellvars")
else:  # 3.10
    _CODE_FIELDS = (
        "co_argcount", "co_posonlyargcount", "co_kwonlyargcount", "co_nlocals", "co_stacksize",
        "co_flags", "co_code", "co_consts", "co_names", "co_varnames", "co_filename",
        "co_name", "co_firstlineno", "co_linetable", "co_freevars", "co_cellvars")
_NAME_FIELDS = frozenset({"co_names", "co_varnames", "co_freevars", "co_cellvars"})
_STR_FIELDS = frozenset({"co_filename", "co_name", "co_qualname"})

_LOAD_GLOBAL = opcode.opmap["LOAD_GLOBAL"]
_GLOBAL_OPS = frozenset({_LOAD_GLOBAL, opcode.opmap["STORE_GLOBAL"],
                         opcode.opmap["DELETE_GLOBAL"]})
_EXTENDED_ARG = opcode.EXTENDED_ARG


class _CodeInfo:
    """What mason needs of a code object, computed once per code object."""

    __slots__ = ("args", "global_names", "all_names", "digest", "__weakref__")

    def __init__(self, code: types.CodeType):
        fields = []
        for field in _CODE_FIELDS:
            value = getattr(code, field)
            if field in _NAME_FIELDS:
                value = tuple(_intern(name) for name in value)
            elif field in _STR_FIELDS:
                value = _intern(value)
            elif field == "co_consts":
                value = tuple(_canonical_const(const) for const in value)
            fields.append(value)
        self.args = (TAG, *fields)
        # Globals read or written by the code and the code nested in it, in bytecode order
        # (a dict keeps the first-seen order, which is the same in every process).
        names: dict[str, None] = {}
        everything: dict[str, None] = {}
        _scan_globals(code, names, everything)
        self.global_names = tuple(names)
        self.all_names = frozenset(everything)
        self.digest = None


def _scan_globals(code, names: dict, everything: dict) -> None:
    co_names = code.co_names
    for name in co_names:
        everything[name] = None
    raw = code.co_code
    ext = 0
    for i in range(0, len(raw), 2):
        op = raw[i]
        if op == _EXTENDED_ARG:
            ext = (ext | raw[i + 1]) << 8
            continue
        if op in _GLOBAL_OPS:
            arg = ext | raw[i + 1]
            if op == _LOAD_GLOBAL and _PY311:
                arg >>= 1  # the low bit says whether to push NULL
            names[_intern(co_names[arg])] = None
        ext = 0
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _scan_globals(const, names, everything)


# Code objects are immutable: what mason derives from one is cached, keyed by identity (code
# equality ignores co_filename) and dropped when the code object dies.
_CODE_INFO: dict[int, tuple[weakref.ref, _CodeInfo]] = {}


def _code_info(code: types.CodeType) -> _CodeInfo:
    entry = _CODE_INFO.get(id(code))
    if entry is not None and entry[0]() is code:
        return entry[1]
    info = _CodeInfo(code)
    key = id(code)
    _CODE_INFO[key] = (weakref.ref(code, lambda _ref, key=key: _CODE_INFO.pop(key, None)),
                       info)
    return info


def _code_digest(code: types.CodeType) -> str:
    """A digest of what the code does (not where it was written: file and line numbers are
    left out), the same in every process."""
    info = _code_info(code)
    if info.digest is None:
        h = hashlib.sha256()
        for field in ("co_argcount", "co_posonlyargcount", "co_kwonlyargcount", "co_flags",
                      "co_code", "co_names", "co_varnames", "co_freevars", "co_cellvars",
                      "co_name"):
            h.update(repr(getattr(code, field)).encode())
            h.update(b"\0")
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                h.update(_code_digest(const).encode())
            else:
                h.update(_const_repr(const).encode())
            h.update(b"\0")
        info.digest = h.hexdigest()
    return info.digest


def _const_repr(value) -> str:
    if isinstance(value, (frozenset, set)):
        return "{" + ",".join(sorted(_const_repr(item) for item in value)) + "}"
    if type(value) is tuple:
        return "(" + ",".join(_const_repr(item) for item in value) + ")"
    if _plain(value) or value is Ellipsis:
        return repr(value)
    return type(value).__qualname__


def _reduce_code(code, ctx):
    return _make_code, _code_info(code).args


# --------------------------------------------------------------------------------------------
# The per-pickler context and the hook

class _Context:
    """State of one Pickler's by-value reductions.  Holds no reference to the pickler (a
    weak one only), so a pickler and what it pickled are freed without the cycle collector."""

    __slots__ = ("pickler", "globals_ref", "cells", "headers", "__weakref__")

    def __init__(self, pickler=None):
        self.pickler = weakref.ref(pickler) if pickler is not None else None
        # id(func.__globals__) -> (that dict, the base globals dict written for it): the
        # functions of one namespace share one namespace after loading.  Holding the dict
        # keeps its id from being reused while the pickler lives.
        self.globals_ref: dict[int, tuple[dict, dict]] = {}
        # id(cell) -> where the loader finds that cell: (function, index) for a cell of a
        # closure pickled by value (made empty with its function, filled by the function's
        # state: its contents may refer back to the function), or the cell itself when it
        # was pickled on its own.  Functions that share a cell share it after loading too.
        self.cells: dict[int, tuple] = {}
        # One header per (kind, module, qualname): the pickler memoizes it, so a thousand
        # lambdas of one name carry one header call.
        self.headers: dict[tuple, _Call] = {}

    def reset(self) -> None:
        """Forget everything pickled (with the pickler's memo: ``clear_memo``)."""
        self.globals_ref.clear()
        self.cells.clear()
        self.headers.clear()

    def header(self, kind: str, module, qualname) -> _Call:
        key = (kind, module, qualname)
        header = self.headers.get(key)
        if header is None:
            header = self.headers[key] = _Call(
                _header, (FORMAT, TAG, kind, _istr(module), _istr(qualname)))
        return header

    def dispatch_table_has(self, t) -> bool:
        """Whether the pickler's own dispatch_table (or copyreg's) has a reducer for ``t``:
        then the table's reducer wins over mason's, as it would in pickle."""
        if t in copyreg.dispatch_table:
            return True
        pickler = self.pickler() if self.pickler is not None else None
        table = getattr(pickler, "dispatch_table", None)
        if table is not None:
            try:
                return t in table
            except TypeError:
                return False
        return False


def make_hook(pickler=None, user_hook=None, ctx=None):
    """The ``reducer_override`` of a by-value Pickler: a plain function (fast to call) that
    closes over its context (``ctx``, made here if not given), not over the pickler.
    ``user_hook``, a subclass's own ``reducer_override``, is consulted first; by value
    applies where it returns NotImplemented."""
    if ctx is None:
        ctx = _Context(pickler)
    reducers = _REDUCERS
    reduce_class = _reduce_class

    if user_hook is None:
        def reducer_override(obj):
            reducer = reducers.get(type(obj))
            if reducer is not None:
                return reducer(obj, ctx)
            if isinstance(obj, type):
                return reduce_class(obj, ctx)
            return NotImplemented
    else:
        def reducer_override(obj):
            result = user_hook(obj)
            if result is not NotImplemented:
                return result
            reducer = reducers.get(type(obj))
            if reducer is not None:
                return reducer(obj, ctx)
            if isinstance(obj, type):
                return reduce_class(obj, ctx)
            return NotImplemented
    return reducer_override


def reduce_by_value(obj, ctx=None):
    """The by-value reduction of ``obj`` (as the hook computes it), or NotImplemented."""
    ctx = ctx if ctx is not None else _Context()
    reducer = _REDUCERS.get(type(obj))
    if reducer is not None:
        return reducer(obj, ctx)
    if isinstance(obj, type):
        return _reduce_class(obj, ctx)
    return NotImplemented


# --------------------------------------------------------------------------------------------
# Functions

_EMPTY_NAMESPACE_KEYS = ("__name__", "__package__")


class _EmptyType:
    """The contents of an empty closure cell (a variable not assigned yet)."""

    __slots__ = ()

    def __reduce__(self):
        return "_EMPTY"

    def __repr__(self):
        return "<empty cell>"


_EMPTY = _EmptyType()


def _reduce_function(func, ctx):
    if id(func) in _OWN or importable(func):
        return NotImplemented
    code = func.__code__
    info = _code_info(code)
    g = func.__globals__
    entry = ctx.globals_ref.get(id(g))
    if entry is None:
        base = {}
        for key in _EMPTY_NAMESPACE_KEYS:
            if key in g:
                base[key] = _istr(g[key])
        ctx.globals_ref[id(g)] = (g, base)
    else:
        base = entry[1]
    # Only the globals the code uses travel, with their current values.
    f_globals = {}
    for name in info.global_names:
        if name in g:
            f_globals[name] = _canonical(g[name])
    closure = func.__closure__
    if closure is None:
        cells = values = None
    else:
        cells = _closure_spec(func, closure, ctx)
        values = tuple(_canonical(_cell_contents(cell)) for cell in closure)
    extra = None
    name = func.__name__
    if name != code.co_name:
        extra = {"__name__": _istr(name)}
    qualname = func.__qualname__
    if qualname != (code.co_qualname if _PY311 else name):
        extra = extra or {}
        extra["__qualname__"] = _istr(qualname)
    consts = code.co_consts
    default_doc = consts[0] if consts and type(consts[0]) is str else None
    doc = func.__doc__
    if doc is not default_doc and doc != default_doc:
        extra = extra or {}
        extra["__doc__"] = _istr(doc)
    module = func.__module__
    if module != base.get("__name__"):
        extra = extra or {}
        extra["__module__"] = _istr(module)
    annotations = func.__annotations__
    if annotations:
        extra = extra or {}
        extra["__annotations__"] = {_istr(k): v for k, v in annotations.items()}
    if func.__dict__:
        extra = extra or {}
        extra["__dict__"] = {_istr(k): v for k, v in func.__dict__.items()}
    type_params = getattr(func, "__type_params__", None)
    if type_params:
        extra = extra or {}
        extra["__type_params__"] = type_params
    if f_globals:
        submodules = _submodules(info, f_globals.values(), values)
        if submodules:
            extra = extra or {}
            extra["_submodules"] = submodules
    header = ctx.header("function", module, qualname)
    kwdefaults = func.__kwdefaults__
    if kwdefaults:
        kwdefaults = {_istr(k): v for k, v in kwdefaults.items()}
    state = (f_globals or None, func.__defaults__, kwdefaults, values, extra)
    return (_make_function, (header, code, base, cells), state, None, None,
            _function_setstate)


def _closure_spec(func, closure, ctx):
    """The closure argument of ``_make_function``: None for a cell the function makes (new,
    empty), else where to find a cell made before (by another function, or on its own)."""
    cells = ctx.cells
    spec = []
    for index, cell in enumerate(closure):
        where = cells.get(id(cell))
        if where is None:
            cells[id(cell)] = (func, index, cell)  # holding the cell keeps its id unique
            spec.append(None)
        elif len(where) == 3:
            spec.append(_Call(_cell_of, (where[0], where[1])))
        else:
            spec.append(where[0])
    return tuple(spec)


def _cell_contents(cell):
    try:
        return cell.cell_contents
    except ValueError:
        return _EMPTY


def _submodules(info: _CodeInfo, *groups) -> list | None:
    """Imported submodules the code reaches as attributes of a package it uses
    (``concurrent.futures`` through the global ``concurrent``): importing them on load is
    what makes the attribute exist there.  Found by extending each package's name with the
    code's names, so the order is the code's, the same in every process."""
    found = []
    names = info.all_names
    for group in groups:
        if not group:
            continue
        for value in group:
            if type(value) is not types.ModuleType or not hasattr(value, "__path__"):
                continue
            todo = [value.__name__]
            while todo:
                prefix = todo.pop()
                for name in sorted(names):
                    sub = sys.modules.get(f"{prefix}.{name}")
                    if sub is not None and sub not in found:
                        found.append(sub)
                        if hasattr(sub, "__path__"):
                            todo.append(sub.__name__)
    return found or None


# --------------------------------------------------------------------------------------------
# Classes

_HEAPTYPE = 1 << 9
# Static types pickle saves by itself (as type(None), ...) though they have no name to import.
_SAVED_BY_PICKLE = frozenset({type(None), type(NotImplemented), type(Ellipsis)})
_BUILTIN_TYPE_NAMES = {value: name for name, value in vars(types).items()
                       if type(value) is type and not importable(value)}
_class_lock = threading.RLock()
# A class pickled by value is identified by a key: a digest of its definition plus an
# ordinal among live classes of the same definition.  The same class gets the same key in
# every process (so pickles are deterministic), a loaded class keeps the key it came with
# (so loading the same class again yields the same class object), and two live classes of
# identical definition (made by one factory) still get different keys.
# Keyed by id, not by the class: a metaclass may make its classes unhashable.
_KEY_OF: dict[int, tuple[weakref.ref, str]] = {}
_BY_KEY: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
# Classes of this process that were pickled by value (not rebuilt from a pickle): loading
# them here yields them unchanged.
_ORIGINALS: dict[int, weakref.ref] = {}


def _key_of(obj) -> str | None:
    entry = _KEY_OF.get(id(obj))
    if entry is not None and entry[0]() is obj:
        return entry[1]
    return None


def _set_key(obj, key: str, original: bool) -> None:
    """Record ``key`` for ``obj`` (under ``_class_lock``); entries leave with the object."""
    ident = id(obj)

    def forget(_ref, ident=ident):
        entry = _KEY_OF.get(ident)
        if entry is not None and entry[0]() is None:
            del _KEY_OF[ident]
        ref = _ORIGINALS.get(ident)
        if ref is not None and ref() is None:
            del _ORIGINALS[ident]

    ref = weakref.ref(obj, forget)
    _KEY_OF[ident] = (ref, key)
    _BY_KEY[key] = obj
    if original:
        _ORIGINALS[ident] = ref


def _is_original(obj) -> bool:
    ref = _ORIGINALS.get(id(obj))
    return ref is not None and ref() is obj


def _class_key(cls) -> str:
    key = _key_of(cls)
    if key is not None:
        return key
    digest = _definition_digest(cls)
    with _class_lock:
        key = _key_of(cls)
        if key is None:
            ordinal = 0
            while True:
                key = f"{digest}-{ordinal}"
                if _BY_KEY.get(key) is None:
                    break
                ordinal += 1
            _set_key(cls, key, original=True)
    return key


def _definition_digest(cls) -> str:
    """A digest of a class's definition: names, bases, metaclass, and the code of its
    methods (not attribute values, which may change at run time)."""
    h = hashlib.sha256()

    def put(*parts):
        for part in parts:
            h.update(str(part).encode())
            h.update(b"\0")

    put(FORMAT, cls.__module__, cls.__qualname__, _type_name(type(cls)))
    for base in cls.__bases__:
        put(_type_name(base))
    for name in sorted(cls.__dict__):
        value = cls.__dict__[name]
        put(name, type(value).__qualname__)
        for func in _functions_of(value):
            put(_code_digest(func.__code__))
        if isinstance(cls, enum.EnumMeta) and name in cls._member_map_:
            put(_const_repr(getattr(value, "_value_", None)))
    return h.hexdigest()[:32]


def _type_name(cls) -> str:
    if importable(cls) or not cls.__flags__ & _HEAPTYPE:
        return f"{cls.__module__}.{cls.__qualname__}"
    return _class_key(cls)


def _functions_of(value):
    if isinstance(value, types.FunctionType):
        return (value,)
    if isinstance(value, (classmethod, staticmethod)):
        func = value.__func__
        return (func,) if isinstance(func, types.FunctionType) else ()
    if isinstance(value, property):
        return tuple(f for f in (value.fget, value.fset, value.fdel)
                     if isinstance(f, types.FunctionType))
    return ()


# Attributes that the class statement or the metaclass makes, not the class body.
# (__slotnames__ is copyreg's cache, present or not depending on what was pickled before.)
_MADE_BY_TYPE = frozenset({"__dict__", "__weakref__", "__orig_bases__", "__slotnames__"})
_ENUM_INTERNALS = frozenset({
    "_member_names_", "_member_map_", "_member_type_", "_value2member_map_",
    "_unhashable_values_", "_new_member_", "_use_args_", "_value_repr_", "_boundary_",
    "_flag_mask_", "_all_bits_", "_singles_mask_", "_inverted_", "__new_member__",
})
# What is written into the namespace the skeleton class is created with: what the class
# statement needs at creation (__slots__) and plain values, which cannot refer back to the
# class and which __init_subclass__ or a metaclass may read.  Everything else is set on the
# skeleton afterwards (it may refer to the class: methods, nested classes, instances).
_NAMESPACE_ALWAYS = frozenset({"__module__", "__qualname__", "__doc__", "__slots__"})


def _class_state(cls, skip=frozenset()):
    """Split a class's own dict into (namespace at creation, state set afterwards)."""
    d = cls.__dict__
    namespace = {}
    attrs = {}
    for name in sorted(d):
        if name in skip or name in _MADE_BY_TYPE:
            continue
        value = d[name]
        t = type(value)
        if (t is types.MemberDescriptorType or t is types.GetSetDescriptorType) \
                and getattr(value, "__objclass__", None) is cls:
            continue  # made by __slots__, or the __dict__ / __weakref__ descriptors
        name = _istr(name)
        if name in _NAMESPACE_ALWAYS or (not _is_dunder(name) and _plain(value)):
            namespace[name] = _interned(value)
        elif t is tuple and value and all(type(item) is str for item in value):
            attrs[name] = _interned(value)  # __match_args__ and the like: names
        else:
            attrs[name] = _canonical(value)
    qualname = getattr(cls, "__qualname__", None)
    if type(qualname) is str and "__qualname__" not in skip:
        namespace["__qualname__"] = _intern(qualname)  # kept by the type, not in its dict
    extra = None
    if isinstance(cls, abc.ABCMeta):
        attrs.pop("_abc_impl", None)
        registry = [ref() for ref in abc._get_dump(cls)[0]]
        registry = [sub for sub in registry if sub is not None]
        if registry:
            registry.sort(key=lambda sub: (sub.__module__, sub.__qualname__))
            extra = {"abc_registry": registry}
    return namespace, attrs, extra


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _reduce_class(cls, ctx):
    if importable(cls):
        return NotImplemented
    meta = type(cls)
    if meta is not type and ctx.dispatch_table_has(meta):
        return NotImplemented  # copyreg / dispatch_table reduce this metaclass's classes
    if not cls.__flags__ & _HEAPTYPE:
        if cls in _SAVED_BY_PICKLE:
            return NotImplemented
        name = _BUILTIN_TYPE_NAMES.get(cls)
        if name is not None:
            return _builtin_type, (name,)
        return NotImplemented  # a static type we cannot rebuild: pickle says why
    if isinstance(cls, enum.EnumMeta):
        return _reduce_enum(cls, ctx)
    if _is_namedtuple(cls):
        return _reduce_namedtuple(cls, ctx)
    key = _class_key(cls)
    namespace, attrs, extra = _class_state(cls)
    bases = cls.__dict__.get("__orig_bases__", cls.__bases__)
    header = ctx.header("class", cls.__module__, cls.__qualname__)
    return (_make_class, (header, meta, _istr(cls.__name__), bases, namespace, key),
            (attrs, extra), None, None, _class_setstate)


def _reduce_enum(cls, ctx):
    key = _class_key(cls)
    members = [(_istr(name), member._value_) for name, member in cls.__members__.items()]
    skip = set(cls.__members__) | _ENUM_INTERNALS
    namespace, attrs, extra = _class_state(cls, frozenset(skip))
    namespace.pop("__module__", None)
    namespace.pop("__qualname__", None)
    # Enum members are made by the metaclass from the values; what their own __init__ or
    # __new__ set on them (beyond the enum's own _sunder_ attributes) is restored after.
    member_dicts = {}
    for name, member in cls.__members__.items():
        if member._name_ != name:
            continue  # an alias
        own = {_istr(k): v for k, v in getattr(member, "__dict__", {}).items()
               if not (k.startswith("_") and k.endswith("_"))}
        if own:
            member_dicts[_istr(name)] = own
    if member_dicts:
        extra = extra or {}
        extra["members"] = member_dicts
    attrs.update(namespace)
    header = ctx.header("class", cls.__module__, cls.__qualname__)
    return (_make_enum, (header, cls.__bases__, _istr(cls.__name__), _istr(cls.__qualname__),
                         _istr(cls.__module__), members, key),
            (attrs, extra), None, None, _class_setstate)


def _nested_codes(code):
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield const
            yield from _nested_codes(const)


_NAMEDTUPLE_CODES = frozenset(_nested_codes(collections.namedtuple.__code__))
_NAMEDTUPLE_MADE = frozenset({"__new__", "__slots__", "_fields", "_field_defaults",
                              "__match_args__", "__getnewargs__", "__module__",
                              "__qualname__"})


def _is_namedtuple(cls) -> bool:
    d = cls.__dict__
    return issubclass(cls, tuple) and "_fields" in d and "_make" in d and "__new__" in d


def _reduce_namedtuple(cls, ctx):
    """A namedtuple class is made again by ``collections.namedtuple``; what the class body
    added (typing.NamedTuple methods, a docstring) is set afterwards."""
    key = _class_key(cls)
    d = cls.__dict__
    fields = tuple(_istr(name) for name in cls._fields)
    skip = set(_NAMEDTUPLE_MADE) | set(fields)
    for name, value in d.items():
        funcs = _functions_of(value)
        if funcs and all(f.__code__ in _NAMEDTUPLE_CODES for f in funcs):
            skip.add(name)
    _, attrs, extra = _class_state(cls, frozenset(skip))
    for name in sorted(d):
        if name not in skip and name not in attrs and name not in _MADE_BY_TYPE:
            value = d[name]
            if type(value) is not types.GetSetDescriptorType:
                attrs[_istr(name)] = _canonical(value)
    defaults = tuple(cls._field_defaults[f] for f in fields if f in cls._field_defaults)
    header = ctx.header("class", cls.__module__, cls.__qualname__)
    return (_make_namedtuple, (header, _istr(cls.__name__), fields, defaults or None,
                               _istr(cls.__module__), _istr(cls.__qualname__), key),
            (attrs, extra), None, None, _class_setstate)


# --------------------------------------------------------------------------------------------
# Other objects that by-value classes and functions are made of (pickle refuses them all)

def _reduce_cell(cell, ctx):
    where = ctx.cells.get(id(cell))
    if where is not None and len(where) == 3:
        return _cell_of, (where[0], where[1])  # made by its function, already pickled
    ctx.cells[id(cell)] = (cell,)
    return _make_cell, (), (_cell_contents(cell),), None, None, _cell_set


def _reduce_module(module, ctx):
    name = module.__name__
    if sys.modules.get(name) is module and not _is_registered(name):
        return _import_module, (_istr(name),)
    namespace = {_istr(k): _canonical(v) for k, v in module.__dict__.items()
                 if k not in ("__builtins__", "__loader__", "__spec__", "__cached__")}
    return _make_module, (FORMAT, _istr(name), namespace)


def _reduce_classmethod(obj, ctx):
    if ctx.dispatch_table_has(type(obj)):
        return NotImplemented
    return type(obj), (obj.__func__,)


def _reduce_property(obj, ctx):
    if ctx.dispatch_table_has(type(obj)):
        return NotImplemented
    return type(obj), (obj.fget, obj.fset, obj.fdel, _istr(obj.__doc__))


def _reduce_cached_property(obj, ctx):
    if ctx.dispatch_table_has(type(obj)):
        return NotImplemented
    return _make_cached_property, (obj.func, _istr(obj.attrname), _istr(obj.__doc__))


def _reduce_mappingproxy(obj, ctx):
    if ctx.dispatch_table_has(type(obj)):
        return NotImplemented
    return types.MappingProxyType, (dict(obj),)


def _reduce_descriptor(obj, ctx):
    if ctx.dispatch_table_has(type(obj)):
        return NotImplemented
    # Not getattr(cls, name): for type.__dict__["__dict__"] that runs the descriptor.
    return _class_attribute, (obj.__objclass__, _istr(obj.__name__))


def _reduce_weakset(obj, ctx):
    if ctx.dispatch_table_has(type(obj)):
        return NotImplemented
    return type(obj), (list(obj),)


def _reduce_memoryview(obj, ctx):
    if ctx.dispatch_table_has(type(obj)):
        return NotImplemented
    return bytes, (obj.tobytes(),)


def _reduce_typevar(obj, ctx):
    module = getattr(obj, "__module__", None)
    home = sys.modules.get(module) if isinstance(module, str) else None
    if home is not None and module != "__main__" and not _is_registered(module) \
            and getattr(home, obj.__name__, None) is obj:
        return NotImplemented
    key = _typevar_key(obj)
    if isinstance(obj, typing.TypeVar):
        return _make_typevar, (FORMAT, _istr(obj.__name__), obj.__bound__,
                               obj.__constraints__, obj.__covariant__, obj.__contravariant__,
                               key)
    return _make_paramspec, (FORMAT, _istr(obj.__name__), obj.__bound__, obj.__covariant__,
                             obj.__contravariant__, key)


def _typevar_key(obj) -> str:
    key = _key_of(obj)
    if key is not None:
        return key
    digest = hashlib.sha256(repr((
        FORMAT, type(obj).__name__, getattr(obj, "__module__", None), obj.__name__,
        repr(obj.__bound__), repr(getattr(obj, "__constraints__", ())), obj.__covariant__,
        obj.__contravariant__)).encode()).hexdigest()[:32]
    with _class_lock:
        key = _key_of(obj)
        if key is None:
            ordinal = 0
            while _BY_KEY.get(f"{digest}-{ordinal}") is not None:
                ordinal += 1
            key = f"{digest}-{ordinal}"
            _set_key(obj, key, original=True)
    return key


def _reduce_text_file(obj, ctx):
    """A text file open for reading travels as a StringIO of its contents (cloudpickle does
    the same); stdout and stderr as references.  Other files refuse, and the dump error
    says why."""
    if ctx.dispatch_table_has(type(obj)):
        return NotImplemented
    if obj is sys.stdout:
        return getattr, (sys, "stdout")
    if obj is sys.stderr:
        return getattr, (sys, "stderr")
    if obj is sys.stdin or obj.closed or not obj.readable() or obj.isatty() \
            or not getattr(obj, "name", None):
        return NotImplemented
    try:
        position = obj.tell()
        obj.seek(0)
        contents = obj.read()
        obj.seek(position)
    except (OSError, io.UnsupportedOperation):
        return NotImplemented
    return _make_text_file, (contents, position, obj.name)


def _reduce_dict_view(kind: str, ordered: bool):
    def reduce(obj, ctx):
        if ctx.dispatch_table_has(type(obj)):
            return NotImplemented
        items = dict(obj) if kind == "items" else list(obj)
        return _make_dict_view, (kind, items, ordered)
    return reduce


def _reduce_global(name):
    """Singletons of the standard library that must stay themselves (dataclasses compares
    fields against them with ``is``): written as the global they are (pickle would write a
    new instance)."""
    def reduce(obj, ctx):
        attr = name if isinstance(name, str) else name(obj)
        if getattr(dataclasses, attr, None) is obj:
            return attr
        return NotImplemented
    return reduce


_REDUCERS: dict[type, typing.Callable] = {
    types.FunctionType: _reduce_function,
    type: _reduce_class,
    types.CodeType: _reduce_code,
    types.CellType: _reduce_cell,
    types.ModuleType: _reduce_module,
    _Call: lambda obj, ctx: (obj.func, obj.args),
    classmethod: _reduce_classmethod,
    staticmethod: _reduce_classmethod,
    abc.abstractclassmethod: _reduce_classmethod,
    abc.abstractstaticmethod: _reduce_classmethod,
    property: _reduce_property,
    abc.abstractproperty: _reduce_property,
    functools.cached_property: _reduce_cached_property,
    types.MappingProxyType: _reduce_mappingproxy,
    types.GetSetDescriptorType: _reduce_descriptor,
    types.MemberDescriptorType: _reduce_descriptor,
    memoryview: _reduce_memoryview,
    weakref.WeakSet: _reduce_weakset,
    typing.TypeVar: _reduce_typevar,
    typing.ParamSpec: _reduce_typevar,
    io.TextIOWrapper: _reduce_text_file,
    type({}.keys()): _reduce_dict_view("keys", False),
    type({}.values()): _reduce_dict_view("values", False),
    type({}.items()): _reduce_dict_view("items", False),
    type(collections.OrderedDict().keys()): _reduce_dict_view("keys", True),
    type(collections.OrderedDict().values()): _reduce_dict_view("values", True),
    type(collections.OrderedDict().items()): _reduce_dict_view("items", True),
    type(dataclasses.MISSING): _reduce_global("MISSING"),
    type(dataclasses.KW_ONLY): _reduce_global("KW_ONLY"),
    type(dataclasses._HAS_DEFAULT_FACTORY): _reduce_global("_HAS_DEFAULT_FACTORY"),
    dataclasses._FIELD_BASE: _reduce_global(lambda obj: obj.name),
}


# --------------------------------------------------------------------------------------------
# Rebuild functions: stable names, named by pickles.  They run on load, in trusted mode only
# (mason's default policy allows none of them; see refusal_stand_in).

def _header(fmt, tag, kind, module, qualname):
    """First call of every by-value function or class: checks versions before any code
    object is built."""
    if fmt > FORMAT:
        raise UnpicklingError(
            f"the pickle carries the {kind} {module}.{qualname} in by-value format {fmt}, "
            f"newer than this mason's ({FORMAT}): upgrade mason to load it")
    if tag != TAG:
        raise UnpicklingError(_version_message(f"the {kind} {module}.{qualname}", tag))
    return None


def _version_message(what: str, tag: str) -> str:
    made = tag.rsplit("-", 1)[0] if isinstance(tag, str) else repr(tag)
    here = TAG.rsplit("-", 1)[0]
    detail = "" if made != here else f" (bytecode {tag}, here {TAG})"
    return (f"the pickle carries {what} by value, compiled by {made}; this is {here}"
            f"{detail}. Bytecode does not move between Python versions: load it with "
            f"{made}, or pickle it again under {here}")


def _make_code(tag, *fields):
    if tag != TAG:
        raise UnpicklingError(_version_message("a code object", tag))
    return types.CodeType(*fields)


def _make_function(header, code, globals_, closure):
    globals_.setdefault("__builtins__", builtins.__dict__)
    if closure is not None:
        closure = tuple(_new_cell() if cell is None else cell for cell in closure)
    return types.FunctionType(code, globals_, None, None, closure)


_new_cell = types.CellType


def _cell_of(func, index):
    """A closure cell made by a function loaded before (closures sharing a variable)."""
    return func.__closure__[index]


def _function_setstate(func, state):
    f_globals, defaults, kwdefaults, values, extra = state
    if f_globals:
        func.__globals__.update(f_globals)
    if defaults is not None:
        func.__defaults__ = defaults
    if kwdefaults is not None:
        _intern_keys(kwdefaults)
        func.__kwdefaults__ = kwdefaults
    if values is not None:
        for cell, value in zip(func.__closure__, values):
            if value is not _EMPTY:
                cell.cell_contents = value
    if extra:
        for name, value in extra.items():
            if name == "__dict__":
                func.__dict__.update(value)
            elif name == "__annotations__":
                _intern_keys(value)
                func.__annotations__ = value
            elif name != "_submodules":  # imported by being loaded: nothing to set
                setattr(func, name, value)
    return func


def _make_cell(*value):
    return types.CellType(*value)


def _cell_set(cell, state):
    value = state[0]
    if value is not _EMPTY:
        cell.cell_contents = value
    return cell


def _intern_keys(mapping: dict) -> None:
    """Intern a dict's str keys in place (the dict stays the same object)."""
    if any(type(k) is str for k in mapping):
        items = [(_istr(k), v) for k, v in mapping.items()]
        mapping.clear()
        mapping.update(items)


def _tracked(key):
    with _class_lock:
        return _BY_KEY.get(key)


def _track(key, cls):
    with _class_lock:
        existing = _BY_KEY.get(key)
        if existing is not None:
            return existing
        _set_key(cls, key, original=False)
        return cls


def _make_class(header, metaclass, name, bases, namespace, key):
    existing = _tracked(key)
    if existing is not None:
        return existing
    if getattr(metaclass, "__module__", None) == "typing" \
            and metaclass.__name__ == "_TypedDictMeta" and bases == (dict,):
        bases = ()
    # Names interned as the class statement interns them (``__slots__``, plain values): the
    # instances' state is keyed by them, and the C pickler memoizes strings by identity.
    namespace = {k: _interned(v) for k, v in namespace.items()}
    cls = types.new_class(name, bases, {"metaclass": metaclass},
                          lambda ns: ns.update(namespace))
    return _track(key, cls)


def _make_enum(header, bases, name, qualname, module, members, key):
    existing = _tracked(key)
    if existing is not None:
        return existing
    metaclass = type(bases[-1]) if bases else enum.EnumMeta
    classdict = metaclass.__prepare__(name, bases)
    classdict["__module__"] = module
    classdict["__qualname__"] = qualname
    for member_name, value in members:
        classdict[member_name] = value
    cls = metaclass.__new__(metaclass, name, bases, classdict)
    return _track(key, cls)


def _make_namedtuple(header, name, fields, defaults, module, qualname, key):
    existing = _tracked(key)
    if existing is not None:
        return existing
    cls = collections.namedtuple(name, fields, defaults=defaults, module=module)
    cls.__qualname__ = qualname
    return _track(key, cls)


def _class_setstate(cls, state):
    if _is_original(cls):
        return cls  # this process's own class, pickled and loaded here: already complete
    attrs, extra = state
    for name, value in attrs.items():
        if type(value) is dict and _is_dunder(name):
            _intern_keys(value)  # __annotations__, __dataclass_fields__: names, as compiled
        elif type(value) is tuple and value and all(type(item) is str for item in value):
            value = _interned(value)
        setattr(cls, name, value)
    fields = attrs.get("__dataclass_fields__")
    if type(fields) is dict:
        for field in fields.values():
            if type(getattr(field, "name", None)) is str:
                field.name = _intern(field.name)
    if extra:
        for sub in extra.get("abc_registry", ()):
            cls.register(sub)
        for member_name, own in extra.get("members", {}).items():
            cls.__members__[member_name].__dict__.update(own)
    return cls


def _make_typevar(fmt, name, bound, constraints, covariant, contravariant, key):
    existing = _tracked(key)
    if existing is not None:
        return existing
    tv = typing.TypeVar(name, *constraints, bound=bound, covariant=covariant,
                        contravariant=contravariant)
    return _track(key, tv)


def _make_paramspec(fmt, name, bound, covariant, contravariant, key):
    existing = _tracked(key)
    if existing is not None:
        return existing
    return _track(key, typing.ParamSpec(name, bound=bound, covariant=covariant,
                                        contravariant=contravariant))


def _import_module(name):
    return import_module(name)


def _make_module(fmt, name, namespace):
    module = types.ModuleType(name)
    module.__dict__.update(namespace)
    module.__dict__["__builtins__"] = builtins.__dict__
    return module


def _builtin_type(name):
    return getattr(types, name)


def _class_attribute(cls, name):
    return cls.__dict__[name]


def _make_cached_property(func, attrname, doc):
    prop = functools.cached_property(func)
    prop.attrname = attrname
    prop.__doc__ = doc
    return prop


def _make_text_file(contents, position, name):
    stream = io.StringIO(contents)
    stream.seek(position)
    stream.name = name
    return stream


def _make_dict_view(kind, items, ordered):
    mapping = collections.OrderedDict if ordered else dict
    if kind == "keys":
        return mapping.fromkeys(items).keys()
    if kind == "values":
        return mapping(enumerate(items)).values()
    return mapping(items).items()


# --------------------------------------------------------------------------------------------
# Safe mode: what the unpickler calls instead of this module's functions

_HOW_TO_LOAD = (
    "Loading it runs that code. If you trust where this pickle comes from, load it with "
    "trusted=True (mason.loads(data, trusted=True)), or have it signed when dumped "
    "(mason.dumps(obj, key=...)) and load it with the same key= .")


def _refuse_header(fmt=None, tag=None, kind="object", module="?", qualname="?", *_):
    raise UnsafeCodeError(
        f"the pickle carries code: the {kind} {qualname} (module {module}), pickled by value. "
        + _HOW_TO_LOAD, [("mason.byvalue._header", None)], kind=kind,
        name=f"{module}.{qualname}")


def _refusing(name: str):
    def refuse(*args, **kwargs):
        if name == "_import_module" and args:
            what = f"imports the module {args[0]} and hands it over"
        elif name in ("_make_code", "_make_function", "_make_class", "_make_enum",
                      "_make_namedtuple", "_make_module"):
            what = "carries code (a function, class or module pickled by value)"
        else:
            what = f"calls mason.byvalue.{name}, which rebuilds objects pickled by value"
        raise UnsafeCodeError(f"the pickle {what}. " + _HOW_TO_LOAD,
                              [(f"mason.byvalue.{name}", None)], kind=None, name=None)
    return refuse


def refusal_stand_in(module: str, name: str):
    """What a safe-mode unpickler hands the engine for a refused name of mason's own by-value
    or signing machinery: a callable that refuses with a message saying what the pickle
    carries and how to load it.  ``None`` for any other name (the plain refusal applies)."""
    if module == "mason.byvalue":
        if name == "_header":
            return _refuse_header
        return _refusing(name)
    if module == "mason.signing" and name == "signed":
        from .signing import signed
        return signed  # it only ever raises: "this pickle is signed, pass key="
    return None


# The ids of this module's own functions (the rebuild functions every by-value payload names):
# they are importable by construction, and pickled by name without a check.
_OWN = frozenset(id(value) for value in list(globals().values())
                 if isinstance(value, types.FunctionType) and value.__module__ == __name__)
