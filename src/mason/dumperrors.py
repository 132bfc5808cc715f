"""Dump errors that point at the problem, and ``check``.

The C pickler says *what* it could not pickle ("cannot pickle '_thread.lock' object"), never
*where*.  When a dump fails, ``explain`` walks the object graph the way the pickler does
(same order, same reductions: the by-value hook, ``dispatch_table`` / ``copyreg``,
``__reduce_ex__``), finds the object that cannot be pickled and the path to it from the root
(``obj.pipeline.steps[2][1].callback``, ``obj['db'].conn``,
``f.__closure__[0].cell_contents``), and raises a ``PicklingError`` that gives the path and
the type, says why for well-known cases and what to do.  ``check`` runs the same walk to the
end and reports every unpicklable path without raising.

The walk runs only when a dump has failed (or when ``check`` is called): it costs ordinary
dumps nothing.  It is iterative (no recursion limit) and bounded (``_MAX_OBJECTS``).

The raised error is a ``mason.PicklingError`` (so a ``pickle.PicklingError``) and also an
instance of the error pickle raised (``TypeError``, ``AttributeError``), so code that
catches either keeps working.
"""

from __future__ import annotations

import copyreg
import functools
import pickle
import sys
import types
import weakref
from dataclasses import dataclass

from . import byvalue
from .errors import PicklingError

__all__ = ["check", "explain", "Unpicklable", "EXPLAINED"]

_MAX_OBJECTS = 2_000_000


class _Explained:
    """Marks a dump error that already carries a path (``path``, ``problems``)."""

    path: str | None = None
    problems: list = []


class PicklingTypeError(_Explained, PicklingError, TypeError):
    """A ``PicklingError`` where pickle raised ``TypeError`` (an object it cannot pickle)."""


class PicklingAttributeError(_Explained, PicklingError, AttributeError):
    """A ``PicklingError`` where pickle raised ``AttributeError`` (a local object)."""


class ExplainedPicklingError(_Explained, PicklingError):
    """A ``PicklingError`` with the path to the object that cannot be pickled."""


EXPLAINED = _Explained


@dataclass(frozen=True)
class Unpicklable:
    """One object that cannot be pickled: where it is, what it is, why, and what to do."""

    path: str       # from the root: "obj['db'].conn"
    type: str       # its type's qualified name: "sqlite3.Connection"
    error: str      # what the pickler said
    why: str | None  # the reason, for well-known cases
    fix: str        # what to do about it

    def __str__(self) -> str:
        lines = [f"cannot pickle {self.path}, a {self.type}: {self.error}"]
        if self.why:
            lines.append(f"  why: {self.why}")
        lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


def check(obj, *, protocol: int | None = None, by_value: bool = True) -> list[Unpicklable]:
    """Every path of ``obj`` that cannot be pickled, without raising (empty: it pickles).

    ``by_value`` as for ``mason.dumps``: with ``False``, functions and classes that cannot
    be imported by name are reported too, as pickle would refuse them.
    """
    from .pickler import DEFAULT_PROTOCOL

    proto = DEFAULT_PROTOCOL if protocol is None else protocol
    return _walk(obj, proto, by_value, None, first_only=False)


def explain(exc: BaseException, obj, protocol: int, by_value: bool, pickler=None):
    """The error to raise for ``exc``, raised while pickling ``obj``: with the path to the
    object that could not be pickled, why, and what to do."""
    error_class = _error_class(exc)
    try:
        problems = _walk(obj, protocol, by_value, pickler, first_only=True)
    except Exception:  # the walk must never hide the original error
        problems = []
    message = str(exc) or type(exc).__name__
    if problems:
        first = problems[0]
        if first.error != message and message not in first.error:
            first = Unpicklable(first.path, first.type, f"{first.error} ({message})"
                                if first.error else message, first.why, first.fix)
        err = error_class(str(first))
        err.path = first.path
        err.problems = [first]
    else:
        err = error_class(message)
        err.path = None
        err.problems = []
    return err


def _error_class(exc):
    if isinstance(exc, TypeError):
        return PicklingTypeError
    if isinstance(exc, AttributeError):
        return PicklingAttributeError
    return ExplainedPicklingError


# --------------------------------------------------------------------------------------------
# The walk

_ATOMIC = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray,
                     pickle.PickleBuffer, type(Ellipsis), type(NotImplemented)})


def _root_name(obj) -> str:
    if isinstance(obj, (types.FunctionType, type)):
        name = getattr(obj, "__name__", "")
        if isinstance(name, str) and name.isidentifier():
            return name
    return "obj"


def _walk(root, protocol, by_value, pickler, first_only) -> list[Unpicklable]:
    ctx = byvalue._Context(pickler)
    hook = getattr(pickler, "reducer_override", None) if pickler is not None else None
    persistent_id = getattr(pickler, "persistent_id", None) if pickler is not None else None
    table = getattr(pickler, "dispatch_table", None) if pickler is not None else None
    if table is None:
        table = copyreg.dispatch_table
    seen: set[int] = set()
    keep = []  # objects made by reductions, alive until the walk ends (their ids stay unique)
    problems: list[Unpicklable] = []
    stack = [(root, _root_name(root), None)]
    visited = 0
    while stack:
        obj, path, note = stack.pop()
        t = type(obj)
        if t in _ATOMIC and t is not bytearray:
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        keep.append(obj)
        visited += 1
        if visited > _MAX_OBJECTS:
            break
        if persistent_id is not None:
            try:
                if persistent_id(obj) is not None:
                    continue
            except Exception:
                pass
        try:
            children = _children(obj, path, protocol, by_value, ctx, hook, table, keep)
        except RecursionError:
            raise
        except Exception as exc:
            problems.append(_problem(obj, path, exc, by_value, note))
            if first_only:
                break
            continue
        if type(obj) is types.ModuleType and children:
            note = (f"it is reached through the module {obj.__name__}, which cannot be "
                    "imported by name, so it travels by value with its whole namespace")
        stack.extend((child, child_path, note) for child, child_path in reversed(children))
    return problems


def _children(obj, path, protocol, by_value, ctx, hook, table, keep):
    """What pickling ``obj`` pickles next, with paths, in the pickler's order; raises what the
    pickler would raise for ``obj`` itself."""
    t = type(obj)
    if t is list or t is tuple:
        return [(item, f"{path}[{i}]") for i, item in enumerate(obj)]
    if t is dict:
        out = []
        for key, value in obj.items():
            out.append((key, f"{path} (key {_short(key)})"))
            out.append((value, f"{path}[{_short(key)}]"))
        return out
    if t is set or t is frozenset:
        return [(item, f"{path} (set item {_short(item)})") for item in obj]
    if t is bytearray:
        return []
    reduced = NotImplemented
    if hook is not None:
        reduced = hook(obj)
    elif by_value:
        reduced = byvalue.reduce_by_value(obj, ctx)
    if reduced is NotImplemented:
        if isinstance(obj, type) or t is types.FunctionType:
            _check_global(obj)
            return []
        reducer = table.get(t) if hasattr(table, "get") else None
        if reducer is not None:
            reduced = reducer(obj)
        else:
            reduce_ex = getattr(obj, "__reduce_ex__", None)
            if reduce_ex is None:
                raise TypeError(f"cannot pickle {t.__name__!r} object")
            reduced = reduce_ex(protocol)
    if isinstance(reduced, str):
        _check_global(obj, reduced)
        return []
    if not isinstance(reduced, tuple) or not 2 <= len(reduced) <= 6:
        raise pickle.PicklingError(f"{t.__name__}.__reduce__ must return a string or a "
                                   f"tuple of 2 to 6 items")
    keep.append(reduced)
    return _reduce_children(obj, path, reduced, protocol)


def _reduce_children(obj, path, reduced, protocol):
    func, args = reduced[0], reduced[1]
    state = reduced[2] if len(reduced) > 2 else None
    listitems = reduced[3] if len(reduced) > 3 else None
    dictitems = reduced[4] if len(reduced) > 4 else None
    if not callable(func):
        raise pickle.PicklingError("first item of the tuple returned by __reduce__ must be "
                                   "callable")
    if not isinstance(args, tuple):
        raise pickle.PicklingError("second item of the tuple returned by __reduce__ must be "
                                   "a tuple")
    out = []
    if func is byvalue._make_function:
        return _function_children(obj, path)
    if func in (byvalue._make_class, byvalue._make_enum, byvalue._make_namedtuple):
        return _class_children(obj, path, args, state)
    if func is byvalue._make_module:
        return [(value, _attr(path, name)) for name, value in args[2].items()]
    if isinstance(obj, functools.partial):
        out.append((obj.func, f"{path}.func"))
        out.extend((arg, f"{path}.args[{i}]") for i, arg in enumerate(obj.args))
        out.extend((value, f"{path}.keywords[{key!r}]") for key, value in obj.keywords.items())
        out.extend(_state_children(getattr(obj, "__dict__", None), path))
        return out
    if isinstance(obj, types.MethodType):
        return [(obj.__self__, f"{path}.__self__"), (obj.__func__, f"{path}.__func__")]
    name = getattr(func, "__name__", "")
    if name in ("__newobj__", "__newobj_ex__") and args:
        cls = args[0]
        if not isinstance(cls, type):
            raise pickle.PicklingError(f"first argument of {name} must be a class")
        out.append((cls, f"type({path})"))
        rest = args[1:]
        if name == "__newobj_ex__" and len(rest) == 2:
            out.extend((arg, f"{path}.__getnewargs_ex__()[0][{i}]")
                       for i, arg in enumerate(rest[0]))
            out.extend((value, f"{path}.__getnewargs_ex__()[1][{key!r}]")
                       for key, value in rest[1].items())
        else:
            out.extend((arg, f"{path}.__getnewargs__()[{i}]") for i, arg in enumerate(rest))
    elif func is copyreg._reconstructor and len(args) == 3:
        out.append((args[0], f"type({path})"))
        out.append((args[2], f"{path} (base state)"))
    else:
        out.append((func, f"{path}.__reduce__()[0]"))
        out.extend((arg, f"{path}.__reduce__()[1][{i}]") for i, arg in enumerate(args))
    out.extend(_state_children(state, path))
    if listitems is not None:
        out.extend((item, f"{path}[{i}]") for i, item in enumerate(list(listitems)))
    if dictitems is not None:
        for key, value in list(dictitems):
            out.append((key, f"{path} (key {_short(key)})"))
            out.append((value, f"{path}[{_short(key)}]"))
    return out


def _state_children(state, path):
    if state is None:
        return []
    if type(state) is dict:
        return [(value, _attr(path, key)) for key, value in state.items()]
    if type(state) is tuple and len(state) == 2 and \
            (state[0] is None or type(state[0]) is dict) and type(state[1]) is dict:
        out = []
        for part in state:
            if part:
                out.extend((value, _attr(path, key)) for key, value in part.items())
        return out
    return [(state, f"{path}.__getstate__()")]


def _function_children(func, path):
    out = []
    info = byvalue._code_info(func.__code__)
    g = func.__globals__
    for name in info.global_names:
        if name in g:
            out.append((g[name], f"{path}.__globals__[{name!r}]"))
    for i, value in enumerate(func.__defaults__ or ()):
        out.append((value, f"{path}.__defaults__[{i}]"))
    for key, value in (func.__kwdefaults__ or {}).items():
        out.append((value, f"{path}.__kwdefaults__[{key!r}]"))
    for i, cell in enumerate(func.__closure__ or ()):
        value = byvalue._cell_contents(cell)
        if value is not byvalue._EMPTY:
            out.append((value, f"{path}.__closure__[{i}].cell_contents"))
    for key, value in func.__annotations__.items():
        out.append((value, f"{path}.__annotations__[{key!r}]"))
    for key, value in func.__dict__.items():
        out.append((value, _attr(path, key)))
    return out


def _class_children(cls, path, args, state):
    out = [(type(cls), f"type({path})")]
    out.extend((base, f"{path}.__bases__[{i}]") for i, base in enumerate(cls.__bases__))
    if state:
        attrs = state[0]
        out.extend((value, _attr(path, name)) for name, value in attrs.items())
    for arg in args:
        if type(arg) is dict:  # the namespace the skeleton is made with
            out.extend((value, _attr(path, name)) for name, value in arg.items())
    return out


def _attr(path, name) -> str:
    if isinstance(name, str) and name.isidentifier():
        return f"{path}.{name}"
    return f"{path}.__dict__[{name!r}]"


def _short(value) -> str:
    text = repr(value) if isinstance(value, (str, bytes, int, float, bool, type(None),
                                             tuple)) else f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _check_global(obj, name=None):
    """What pickle does to save ``obj`` by name; raises what it raises."""
    if name is None:
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(name, str):
        raise pickle.PicklingError(f"Can't pickle {obj!r}: it has no name")
    module_name = pickle.whichmodule(obj, name)
    if "<locals>" in name:
        raise AttributeError(f"Can't pickle local object {name!r}")
    try:
        __import__(module_name, level=0)
        found = sys.modules[module_name]
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, KeyError, AttributeError):
        raise pickle.PicklingError(
            f"Can't pickle {obj!r}: it's not found as {module_name}.{name}") from None
    if found is not obj:
        raise pickle.PicklingError(
            f"Can't pickle {obj!r}: it's not the same object as {module_name}.{name}")


# --------------------------------------------------------------------------------------------
# Why, and what to do

_GENERIC_FIX = ("give its class __getstate__ / __setstate__ (leave out what cannot be "
                "pickled, rebuild it when loading) or __reduce__, or register a reducer for "
                "it with copyreg.pickle({type}, reducer)")

_DB_MODULES = ("sqlite3", "psycopg", "psycopg2", "pymysql", "MySQLdb", "mysql.connector",
               "pymongo", "redis", "sqlalchemy", "asyncpg", "aiosqlite", "cx_Oracle",
               "oracledb", "pyodbc", "duckdb", "_sqlite3", "pymssql", "clickhouse_driver")


def _type_name(t) -> str:
    module = getattr(t, "__module__", None)
    qualname = getattr(t, "__qualname__", getattr(t, "__name__", "?"))
    if module in (None, "builtins"):
        return qualname
    return f"{module}.{qualname}"


def _mro_names(t) -> set[str]:
    return {_type_name(base) for base in getattr(t, "__mro__", (t,))}


def _problem(obj, path, exc, by_value, note=None) -> Unpicklable:
    t = type(obj)
    error = str(exc) or type(exc).__name__
    why, fix = _why(obj, t, by_value, error)
    fix = fix.format(type=_type_name(t))
    if note:
        why = f"{why}; {note}" if why else note
        fix += ("; or make that module importable where the pickle is loaded (mason then "
                "pickles it by name)")
    return Unpicklable(path, _type_name(t), error, why, fix)


def _why(obj, t, by_value, error=""):
    if "__slots__" in error and "__getstate__" in error:
        return ("protocols 0 and 1 pickle an instance through its __dict__, and this class "
                "has __slots__",
                "pickle with protocol 2 or higher (mason's default is 5), or give the class "
                "__getstate__ / __setstate__")
    names = _mro_names(t)
    module = getattr(t, "__module__", "") or ""
    if names & {"_thread.lock", "_thread.RLock", "threading.RLock", "threading._RLock",
                "multiprocessing.synchronize.Lock", "multiprocessing.synchronize.RLock",
                "asyncio.locks.Lock"}:
        return ("a lock belongs to the threads of one process: whether it is held, and by "
                "whom, means nothing anywhere else",
                "leave the lock out of the pickled state and create a new one when loading: "
                "__getstate__ drops it, __setstate__ makes it (or copyreg.pickle({type}, "
                "...))")
    if names & {"socket.socket", "ssl.SSLSocket", "_socket.socket"}:
        return ("a socket is a live connection owned by this process's operating system",
                "pickle the address instead and reconnect when loading (__getstate__ / "
                "__setstate__, or __reduce__)")
    if names & {"_io._IOBase", "io.IOBase", "_io.FileIO", "tempfile._TemporaryFileWrapper"}:
        return ("an open file is an operating-system handle of this process (mason pickles "
                "only text files open for reading, as their contents)",
                "pickle the file's path (and position) and reopen it when loading "
                "(__getstate__ / __setstate__)")
    if t in (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType) or \
            names & {"generator", "coroutine", "async_generator"}:
        return ("a generator is a paused computation: its frame cannot be saved",
                "pickle the values it produces (list(gen)) or the function and arguments "
                "that create it")
    if any(module == db or module.startswith(db + ".") for db in _DB_MODULES):
        return ("a database connection (or cursor) is a live session held by this process",
                "pickle the connection parameters and reconnect when loading (__getstate__ "
                "/ __setstate__), or keep the connection out of the pickled object")
    if t in (types.FrameType, types.TracebackType):
        return ("a frame or traceback is part of this process's call stack",
                "pickle the formatted text (traceback.format_exception) instead")
    if issubclass(t, (weakref.ref, weakref.ProxyType, weakref.CallableProxyType)):
        return ("a weak reference does not own its object",
                "pickle the object itself, or leave the reference out and recreate it when "
                "loading")
    if t is types.ModuleType:
        if not by_value:
            return ("pickle does not pickle modules",
                    "dump with by_value=True (mason's default), which pickles modules by "
                    "reference (imported by name when loaded)")
        return ("a module is pickled by reference when it can be imported by name, else by "
                "value with its whole namespace",
                "import it from a module that exists where the pickle is loaded, or "
                "mason.register_by_value(module) for code that does not exist there")
    if isinstance(obj, (types.FunctionType, type)):
        name = getattr(obj, "__qualname__", "?")
        if not by_value:
            return (f"pickle saves functions and classes by name, and {name} cannot be "
                    "imported by name (a lambda, a local or nested definition, or defined "
                    "in __main__)",
                    "dump with by_value=True (mason's default) to pickle it by value, or "
                    "define it at the top level of an importable module")
        return (f"{name} cannot be found by name in its module",
                "define it at the top level of an importable module, or "
                "mason.register_by_value(its module)")
    if isinstance(obj, (types.BuiltinFunctionType, types.MethodDescriptorType,
                        types.WrapperDescriptorType)):
        return ("a built-in function is pickled by name and this one cannot be found by "
                "name", _GENERIC_FIX)
    return None, _GENERIC_FIX
