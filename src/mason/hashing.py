"""Canonical, process-independent hashing of objects: ``mason.hash(obj)``.

The digest depends on the *value* of an object, never on where or how it was made: not on
``PYTHONHASHSEED`` (the iteration order of sets and of str-keyed structures), not on the
insertion order of a dict, not on ``id()``, not on which equal objects happen to be shared.
Two processes that build equal data get the same digest; the cache (``mason.cache``) keys
its entries with it.

How: the object is first rewritten into a *canonical tree* of plain values, which CPython's
C pickler then serializes in "fast" mode (no memo: an object shared twice is written twice,
exactly as two equal copies would be), and the bytes are hashed with BLAKE2b (16 bytes;
``hash`` returns 32 hex digits).  Pickle is an injective encoding of the tree, and the
tree is a function of the value only:

* ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``, ``bytearray``, and
  ``list`` / ``tuple`` of them, stand for themselves (``1``, ``1.0`` and ``True`` are three
  different values here, as for pickle);
* ``dict``: the items sorted by key when the keys are all ``str``, all ``int`` or all
  ``bytes``, otherwise by the encoding of the key; ``set`` and ``frozenset``: the items sorted
  the same way; so insertion and iteration order never matter;
* ``collections.OrderedDict``: items in order (its equality is order-sensitive);
* other subclasses of those containers and scalars (``defaultdict``, ``Counter``,
  namedtuples, a ``str`` subclass): the class, the base value as above, and the instance's
  ``__dict__`` if any; enum members: the class and the member's name;
* numpy arrays (``ndarray`` and ``memmap``): dtype, shape and the bytes in C order, read in
  place (a non-contiguous array is copied first); arrays of Python objects: their items;
  numpy scalars: dtype and bytes;
* functions: module, qualified name, the digest of their code (see ``code_digest``), their
  defaults and the contents of their closure; classes, modules and builtins: their names;
* anything else: its pickled state, as ``pickle`` would get it (``copyreg`` dispatch table,
  then ``__reduce_ex__(4)``), rewritten by the same rules: the callable by name, then the
  arguments, state, list items and dict items (dict items sorted unless the object is an
  ``OrderedDict``).

The rewritten nodes that plain values cannot express are tuples that start with an empty
``set``: user sets never survive the rewriting, so no user value can look like one.  (Not an
empty frozenset: CPython's C pickler miscounts its nesting depth in fast mode after pickling
one, and fails after fifty of them.)

Hashing is by value, so an object shared in many places is rewritten at each place: a
structure that shares objects deeply (a DAG that doubles at each level) costs as much as its
fully expanded tree.

Large buffers (array data, ``bytes`` and ``bytearray`` of 32 KiB and more) are hashed on
their own, in place, and only their digest enters the tree: with xxh3-128 when the
``xxhash`` package is installed (several GB/s), with BLAKE2b otherwise.  So the digest of a
large array differs between a process that has ``xxhash`` and one that has not (the tree
names the algorithm, so they cannot collide either); a cache shared between such processes
misses instead of answering wrong.  xxh3 is not a cryptographic hash: someone who controls
an array argument could make two arrays with the same digest on purpose.

Reference cycles become a back-reference to the depth of the object on the path from the
root, so ``a = []; a.append(a)`` hashes (the same in every process).

An object that cannot be hashed (a lock, an open socket, a generator: what pickle cannot
pickle either) raises ``HashError`` with the path to it: ``obj['cfg'].workers[3].lock``.
"""

from __future__ import annotations

import _pickle
import collections
import copyreg
import dis
import enum
import hashlib
import io
import sys
import threading
import types
import weakref
from operator import itemgetter
from typing import Any, Callable

from .errors import PicklingError

try:  # optional: xxh3 hashes large buffers at memory speed
    import xxhash as _xxhash
except ImportError:  # pragma: no cover - depends on the environment
    _xxhash = None

__all__ = ["hash", "digest", "HashError", "code_digest", "global_names", "buffer_digest",
           "encode", "BIG", "BUFFER_ALGORITHM"]

# Buffers at least this long are hashed on their own, in place (no copy into the encoding).
BIG = 1 << 15
BUFFER_ALGORITHM = "xxh3_128" if _xxhash is not None else "blake2b"
# Bump when the tree changes: digests (and cache keys) of one version never meet another's.
_VERSION = b"mason-hash-1\0"

_blake2b = hashlib.blake2b
_Pickler = _pickle.Pickler
_first = itemgetter(0)
_T = set()   # the first item of every rewritten node (see the module's docstring); never mutated


class HashError(PicklingError):
    """An object could not be hashed (nor pickled).  ``path`` says where it is inside the
    object that was hashed, as Python would write it (``obj['cfg'].workers[3]``)."""

    def __init__(self, message: str, path: str = "obj", reason: str = ""):
        super().__init__(message)
        self.path = path
        self.reason = reason


class _Unhashable(Exception):
    """Raised inside the rewriter; collects the path on its way up, one segment a level."""

    def __init__(self, reason: str, obj: Any):
        super().__init__(reason)
        self.reason = reason
        self.segments: list[str] = []
        self.type_name = type(obj).__qualname__


if _xxhash is not None:
    _xxh3_128 = _xxhash.xxh3_128

    def buffer_digest(data) -> bytes:
        """The 16-byte digest of a buffer (xxh3-128 when xxhash is installed, else BLAKE2b),
        computed in place."""
        return _xxh3_128(data).digest()
else:  # pragma: no cover - depends on the environment
    def buffer_digest(data) -> bytes:
        """The 16-byte digest of a buffer (xxh3-128 when xxhash is installed, else BLAKE2b),
        computed in place."""
        return _blake2b(data, digest_size=16).digest()


def hash(obj: Any) -> str:  # noqa: A001 - the public name, as joblib.hash
    """The canonical digest of ``obj``: 32 hex digits, equal for equal values in every
    process (whatever ``PYTHONHASHSEED``, dict insertion order or set iteration order).

    Raises ``HashError`` (a ``mason.PicklingError``) with the path to an object that cannot
    be hashed.
    """
    return _blake2b(encode(obj), digest_size=16).hexdigest()


def digest(obj: Any) -> bytes:
    """``hash(obj)`` as 16 bytes."""
    return _blake2b(encode(obj), digest_size=16).digest()


def encode(obj: Any) -> bytes:
    """The canonical encoding of ``obj`` that ``hash`` hashes: the pickle of its canonical
    tree, in which large buffers appear as their digests."""
    try:
        tree = _canon(obj, {})
    except _Unhashable as exc:
        path = "obj" + "".join(reversed(exc.segments))
        raise HashError(f"cannot hash {path} (a {exc.type_name}): {exc.reason}", path,
                        exc.reason) from None
    except RecursionError:
        raise HashError("cannot hash obj: it is nested too deeply (RecursionError); hash a "
                        "flatter structure, or give the cache a key= function", "obj",
                        "too deep") from None
    return _VERSION + _pickled(tree)


_local = threading.local()


def _pickled(tree) -> bytes:
    # One pickler per thread, kept: making one costs more than pickling a small tree.  The
    # tree holds only builtins, so dump() never calls back into Python code that could
    # reach this function again on the same thread.
    try:
        buf, pickler = _local.pickler
    except AttributeError:
        buf = io.BytesIO()
        pickler = _Pickler(buf, 5)
        pickler.fast = True   # no memo: shared and equal objects are written alike
        _local.pickler = buf, pickler
    try:
        pickler.dump(tree)
        data = buf.getvalue()
    finally:
        buf.seek(0)
        buf.truncate()
    if len(data) > 1 << 20:   # do not keep a large buffer around
        del _local.pickler
    return data


# --------------------------------------------------------------------------------------------
# The rewriter.  ``active`` maps the id of each container on the path from the root to its
# depth: a container met again while it is still on the path is a cycle, written as a
# back-reference to that depth.  Only ancestors are in it (each is removed when done), and
# ancestors are alive, so an id cannot be reused while it is there.

# Types that the C pickler writes canonically by themselves, and that hold nothing else.
_LEAF = frozenset({int, float, str, bool, type(None), complex})
# Key types whose natural order is total and canonical.
_ORDERED = frozenset({str, int, bytes})


def _canon(obj, active: dict):
    t = type(obj)
    if t in _LEAF:
        return obj
    handler = _CANON.get(t)
    if handler is None:
        handler = _handler_for(t)
    return handler(obj, active)


def _enter(obj, active: dict):
    """Push a container on the path; on a cycle, return the back-reference node instead."""
    key = id(obj)
    depth = active.get(key)
    if depth is not None:
        return (_T, "@", depth)
    active[key] = len(active)
    return None


def _seq(obj, active: dict, segment: str = "[{}]") -> list:
    """The rewritten items of a sequence (a new list)."""
    out = []
    append = out.append
    i = -1
    try:
        for i, x in enumerate(obj):
            append(x if type(x) in _LEAF else _canon(x, active))
    except _Unhashable as exc:
        exc.segments.append(segment.format(i))
        raise
    return out


def _list(obj, active):
    if set(map(type, obj)) <= _LEAF:
        return obj
    ref = _enter(obj, active)
    if ref is not None:
        return ref
    try:
        return _seq(obj, active)
    finally:
        del active[id(obj)]


def _tuple(obj, active):
    if set(map(type, obj)) <= _LEAF:
        return obj
    ref = _enter(obj, active)
    if ref is not None:
        return ref
    try:
        return tuple(_seq(obj, active))
    finally:
        del active[id(obj)]


def _encoded(obj, active) -> bytes:
    """The encoding of one object on its own (to sort by)."""
    return _pickled(obj if type(obj) in _LEAF else _canon(obj, active))


def _key_segment(k) -> str:
    return f"[{k!r:.60}]"


def _dict(obj, active):
    key_types = set(map(type, obj))
    if len(key_types) == 1 and next(iter(key_types)) in _ORDERED:
        items = sorted(obj.items(), key=_first)
        if set(map(type, obj.values())) <= _LEAF:
            return dict(items)
        ref = _enter(obj, active)
        if ref is not None:
            return ref
        out = {}
        k = None
        try:
            for k, v in items:
                out[k] = v if type(v) in _LEAF else _canon(v, active)
        except _Unhashable as exc:
            exc.segments.append(_key_segment(k))
            raise
        finally:
            del active[id(obj)]
        if len(out) != len(items):  # pragma: no cover - distinct keys stay distinct
            raise _Unhashable("its keys changed while it was hashed", obj)
        return out
    ref = _enter(obj, active)
    if ref is not None:
        return ref
    try:
        return (_T, "d*", _pairs(obj.items(), active))
    finally:
        del active[id(obj)]


def _pairs(items, active) -> tuple:
    """Items as (encoded key, encoded value) pairs, sorted: for keys of mixed or unordered
    types, whose own order is not canonical."""
    pairs = []
    for k, v in items:
        try:
            kb = _encoded(k, active)
        except _Unhashable as exc:
            exc.segments.append(" (a dict key)")
            raise
        try:
            pairs.append((kb, _encoded(v, active)))
        except _Unhashable as exc:
            exc.segments.append(_key_segment(k))
            raise
    pairs.sort()
    return tuple(pairs)


def _set_items(obj, active) -> tuple:
    item_types = set(map(type, obj))
    if len(item_types) == 1 and next(iter(item_types)) in _ORDERED:
        return "", tuple(sorted(obj))
    try:
        return "*", tuple(sorted(_encoded(x, active) for x in obj))
    except _Unhashable as exc:
        exc.segments.append(" (a set item)")
        raise


def _set(obj, active):
    ref = _enter(obj, active)
    if ref is not None:
        return ref
    try:
        how, items = _set_items(obj, active)
    finally:
        del active[id(obj)]
    # set and frozenset share the encoding of their items and differ only in the tag
    return (_T, ("frozenset" if isinstance(obj, frozenset) else "set") + how, items)


def _buffer(tag: str, data, size: int):
    """Small buffers as bytes; large ones by their digest, computed in place."""
    if size >= BIG:
        return (_T, tag, BUFFER_ALGORITHM, size, buffer_digest(data))
    return bytes(data)


def _bytes(obj, active):
    return obj if len(obj) < BIG else _buffer("bytes", obj, len(obj))


def _bytearray(obj, active):
    return obj if len(obj) < BIG else _buffer("bytearray", obj, len(obj))


def _memoryview(obj, active):
    data = obj if obj.c_contiguous else obj.tobytes()
    try:
        flat = memoryview(data).cast("B")
    except TypeError:
        flat = memoryview(obj.tobytes())
    return (_T, "memoryview", obj.format, tuple(obj.shape),
            _buffer("buffer", flat, flat.nbytes))


def _class(obj, active):
    return (_T, "class", getattr(obj, "__module__", None),
            getattr(obj, "__qualname__", obj.__name__))


def _function(obj, active):
    # By name, plus what the code does: a function argument whose body changes changes the
    # digest.  Its defaults and closure are part of what it computes too.
    head = (_T, "function", obj.__module__, obj.__qualname__, code_digest(obj.__code__))
    if not (obj.__defaults__ or obj.__kwdefaults__ or obj.__closure__):
        return head
    ref = _enter(obj, active)
    if ref is not None:
        return ref
    try:
        cells = []
        for cell in obj.__closure__ or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                cells.append((_T, "empty cell"))
            else:
                cells.append(_canon(value, active))
        return head + (_canon(obj.__defaults__, active), _canon(obj.__kwdefaults__, active),
                       tuple(cells))
    except _Unhashable as exc:
        exc.segments.append(f" (in function {obj.__qualname__})")
        raise
    finally:
        del active[id(obj)]


def _builtin(obj, active):
    module = getattr(obj, "__module__", None)
    owner = getattr(obj, "__self__", None)
    if module is None and owner is not None and not isinstance(owner, (types.ModuleType, type)):
        # A method of an object (``[].append``): the object is part of its value.
        return (_T, "method", type(owner).__qualname__, obj.__name__, _canon(owner, active))
    if module is None and isinstance(owner, type):
        module = f"{owner.__module__}.{owner.__qualname__}"
    return (_T, "global", module, getattr(obj, "__qualname__", obj.__name__))


def _module(obj, active):
    return (_T, "module", obj.__name__)


def _code(obj, active):
    return (_T, "code", code_digest(obj))


def _enum_member(obj, active):
    cls = type(obj)
    return (_T, "enum", cls.__module__, cls.__qualname__, obj.name)


def _singleton(name: str):
    node = (_T, "global", "builtins", name)
    return lambda obj, active: node


_CANON: dict[type, Callable] = {
    list: _list, tuple: _tuple, dict: _dict, set: _set, frozenset: _set,
    bytes: _bytes, bytearray: _bytearray, memoryview: _memoryview,
    type(Ellipsis): _singleton("Ellipsis"), type(NotImplemented): _singleton("NotImplemented"),
    types.FunctionType: _function, types.BuiltinFunctionType: _builtin,
    types.ModuleType: _module, types.CodeType: _code, type: _class,
}

_BUILTIN_HANDLERS = dict(_CANON)

# Base types whose plain subclasses are hashed as "class + base value + instance __dict__".
_BASES = (dict, list, tuple, set, frozenset, str, int, float, bytes, bytearray, complex)


def _handler_for(t: type) -> Callable:
    """Find (and remember) the handler of a type met for the first time."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and issubclass(t, numpy.ndarray) and \
            (t is numpy.ndarray or issubclass(t, numpy.memmap)):
        handler = _ndarray
    elif numpy is not None and issubclass(t, numpy.generic):
        handler = _numpy_scalar
    elif issubclass(t, type):
        handler = _class   # a class whose metaclass is not type
    elif issubclass(t, enum.Enum):
        handler = _enum_member
    elif issubclass(t, collections.OrderedDict):
        handler = _ordered_dict
    elif t in (types.BuiltinMethodType, types.MethodWrapperType, types.WrapperDescriptorType,
               types.MethodDescriptorType, types.ClassMethodDescriptorType):
        handler = _builtin
    else:
        for base in _BASES:
            if issubclass(t, base) and _plain_subclass(t, base):
                handler = _subclass_of(base)
                break
        else:
            handler = _reduced
    if len(_CANON) >= 4096:
        # Classes made on the fly (one per call, say) must not pile up here for ever.
        _CANON.clear()
        _CANON.update(_BUILTIN_HANDLERS)
    _CANON[t] = handler
    return handler


def _plain_subclass(t: type, base: type) -> bool:
    """Whether a subclass of a builtin type pickles as its base value plus ``__dict__``: it
    does not define its own way of pickling."""
    for name in ("__reduce__", "__reduce_ex__", "__getstate__", "__getnewargs__",
                 "__getnewargs_ex__"):
        attr = getattr(t, name, None)
        if attr is None or attr is getattr(base, name, None) or \
                attr is getattr(object, name, None):
            continue
        # namedtuple's __getnewargs__ returns the tuple itself: still plain.
        if name == "__getnewargs__" and issubclass(t, tuple) and hasattr(t, "_fields"):
            continue
        return False
    return True


def _subclass_of(base: type) -> Callable:
    def handler(obj, active):
        cls = type(obj)
        ref = _enter(obj, active)
        if ref is not None:
            return ref
        try:
            value = _CANON[base](base(obj), active) if base not in _LEAF else base(obj)
            extra = None
            if isinstance(obj, collections.defaultdict):
                extra = _canon(obj.default_factory, active)
            state = getattr(obj, "__dict__", None)
            try:
                state = _canon(state, active) if state else None
            except _Unhashable as exc:
                exc.segments.append(".__dict__")
                raise
        finally:
            del active[id(obj)]
        return (_T, "subclass", cls.__module__, cls.__qualname__, value, extra, state)
    return handler


def _ordered_dict(obj, active):
    cls = type(obj)
    ref = _enter(obj, active)
    if ref is not None:
        return ref
    try:
        items = []
        k = None
        try:
            for k, v in obj.items():
                items.append((_canon(k, active), _canon(v, active)))
        except _Unhashable as exc:
            exc.segments.append(_key_segment(k))
            raise
        state = getattr(obj, "__dict__", None)
        state = _canon(state, active) if state else None
    finally:
        del active[id(obj)]
    return (_T, "ordered", cls.__module__, cls.__qualname__, tuple(items), state)


_DTYPES: dict = {}


def _dtype_text(dtype) -> str:
    text = _DTYPES.get(dtype)
    if text is None:
        text = dtype.str if dtype.fields is None and dtype.subdtype is None \
            else repr(dtype.descr)
        if len(_DTYPES) < 1024:
            _DTYPES[dtype] = text
    return text


def _ndarray(obj, active):
    dtype = obj.dtype
    if dtype.hasobject:
        # The bytes are pointers: hash the items themselves, in C order.
        ref = _enter(obj, active)
        if ref is not None:
            return ref
        try:
            items = _seq(obj.ravel(order="C").tolist() if dtype.fields is None
                         else list(obj.ravel(order="C")), active, ".flat[{}]")
        finally:
            del active[id(obj)]
        return (_T, "object array", _dtype_text(dtype), obj.shape, tuple(items))
    if not obj.flags.c_contiguous:
        obj = sys.modules["numpy"].ascontiguousarray(obj)
    try:
        flat = memoryview(obj).cast("B")
    except (TypeError, ValueError):
        # dtypes that the buffer protocol cannot describe (datetime64, ...): view as bytes.
        try:
            flat = memoryview(obj.reshape(-1).view("u1"))
        except (TypeError, ValueError):
            flat = memoryview(obj.tobytes())
    return (_T, "array", _dtype_text(dtype), obj.shape, _buffer("data", flat, flat.nbytes))


def _numpy_scalar(obj, active):
    return (_T, "scalar", _dtype_text(obj.dtype), obj.tobytes())


def _reduced(obj, active):
    """Anything else: what pickle would save of it, rewritten by the same rules."""
    t = type(obj)
    try:
        reducer = copyreg.dispatch_table.get(t)
        rv = reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
    except Exception as exc:  # noqa: BLE001 - becomes a HashError with the path
        raise _Unhashable(f"it cannot be pickled ({type(exc).__name__}: {exc})", obj) from None
    if isinstance(rv, str):
        # A global by name: a singleton, a builtin function...
        module = getattr(obj, "__module__", None) or _which_module(obj, rv)
        return (_T, "global", module, rv)
    if not isinstance(rv, tuple) or not 2 <= len(rv) <= 6:
        raise _Unhashable(f"its __reduce_ex__ returned {type(rv).__name__}, not a tuple of 2 "
                          "to 6 items", obj)
    ref = _enter(obj, active)
    if ref is not None:
        return ref
    try:
        func = _canon(rv[0], active)
        try:
            args = _canon(rv[1], active)
            state = _canon(rv[2], active) if len(rv) > 2 else None
        except _Unhashable as exc:
            _attribute_segment(exc)
            raise
        listitems = rv[3] if len(rv) > 3 else None
        if listitems is not None:
            listitems = tuple(_seq(listitems, active))
        dictitems = rv[4] if len(rv) > 4 else None
        if dictitems is not None:
            if isinstance(obj, collections.OrderedDict):
                dictitems = tuple((_canon(k, active), _canon(v, active))
                                  for k, v in dictitems)
            else:
                dictitems = _pairs(dictitems, active)
    finally:
        del active[id(obj)]
    return (_T, "reduce", func, args, state, listitems, dictitems)


def _attribute_segment(exc: _Unhashable) -> None:
    # The state of an instance is usually its __dict__, whose item segment (['name']) reads
    # better as an attribute (.name).
    if exc.segments:
        last = exc.segments[-1]
        if last.startswith("['") and last.endswith("']") and last[2:-2].isidentifier():
            exc.segments[-1] = "." + last[2:-2]


def _which_module(obj, name: str) -> str:
    import pickle
    try:
        return pickle.whichmodule(obj, name)
    except Exception:  # noqa: BLE001
        return "?"


# --------------------------------------------------------------------------------------------
# Code: what a function does, not where it was written.
#
# The digest of a code object covers its instructions as ``dis`` reads them (NOPs, which
# ``pass`` and line bookkeeping leave, are dropped; jump targets become instruction
# indexes), the constants the instructions load (by value: a docstring is never loaded, so
# it does not count; nested code objects by their own digest), the names, the argument
# counts and flags, and the exception table (which instructions a try block covers).  Line
# numbers, columns, the file name, comments and formatting never reach it.

_CONST_OPS = frozenset(dis.hasconst)
_JUMP_OPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs) | \
    frozenset(getattr(dis, "hasjump", ()))
_SKIP_OPS = frozenset(dis.opmap[name] for name in ("NOP", "EXTENDED_ARG", "CACHE")
                      if name in dis.opmap)
_GLOBAL_OPS = frozenset(dis.opmap[name] for name in ("LOAD_GLOBAL", "LOAD_NAME")
                        if name in dis.opmap)

_CODE_DIGESTS: dict[int, tuple[weakref.ref, bytes, tuple]] = {}


def code_digest(code: types.CodeType) -> bytes:
    """The 16-byte digest of what ``code`` does (see above), the same in every process of
    the same Python version.  Computed once per code object."""
    return _code_entry(code)[0]


def global_names(code: types.CodeType) -> tuple[str, ...]:
    """The global names that ``code`` and the code nested in it read, sorted."""
    return _code_entry(code)[1]


def _code_entry(code: types.CodeType) -> tuple[bytes, tuple]:
    key = id(code)
    entry = _CODE_DIGESTS.get(key)
    if entry is not None and entry[0]() is code:
        return entry[1], entry[2]
    names: set[str] = set()
    digest = _blake2b(_code_text(code, names), digest_size=16).digest()
    names_t = tuple(sorted(names))
    _CODE_DIGESTS[key] = (weakref.ref(code, lambda _r, key=key: _CODE_DIGESTS.pop(key, None)),
                          digest, names_t)
    return digest, names_t


def _code_text(code: types.CodeType, names: set) -> bytes:
    instructions = [ins for ins in dis.get_instructions(code) if ins.opcode not in _SKIP_OPS]
    # Offsets of dropped instructions map to the next kept one (a jump to a NOP lands there).
    position = {}
    index = 0
    for ins in dis.get_instructions(code):
        position.setdefault(ins.offset, index)
        if ins.opcode not in _SKIP_OPS:
            index += 1
    end = index

    def where(offset):
        if offset in position:
            return position[offset]
        later = [o for o in position if o > offset]
        return position[min(later)] if later else end

    parts = [f"{code.co_argcount},{code.co_posonlyargcount},{code.co_kwonlyargcount},"
             f"{code.co_flags}", repr(code.co_varnames), repr(code.co_freevars),
             repr(code.co_cellvars), code.co_name]
    nested = []
    for ins in instructions:
        op = ins.opcode
        if op in _CONST_OPS:
            parts.append(f"{ins.opname} {_const_text(ins.argval, nested)}")
        elif op in _JUMP_OPS:
            parts.append(f"{ins.opname} ->{where(ins.argval)}")
        else:
            if op in _GLOBAL_OPS:
                names.add(ins.argval)
            parts.append(f"{ins.opname} {ins.arg} {ins.argrepr}")
    parse = getattr(dis, "_parse_exception_table", None)
    if parse is not None:
        for entry in parse(code):
            parts.append(f"except {where(entry.start)}-{where(entry.end)}->"
                         f"{where(entry.target)} {entry.depth} {entry.lasti}")
    elif getattr(code, "co_exceptiontable", b""):  # pragma: no cover - other versions
        parts.append(code.co_exceptiontable.hex())
    text = "\n".join(parts).encode("utf-8", "surrogatepass")
    for sub in nested:
        sub_digest = _blake2b(_code_text(sub, names), digest_size=16).hexdigest()
        text += b"\ncode " + sub_digest.encode()
    return text


def _const_text(value, nested: list) -> str:
    t = type(value)
    if t is types.CodeType:
        nested.append(value)
        return f"<code #{len(nested) - 1}>"
    if t is tuple:
        return "(" + ",".join(_const_text(v, nested) for v in value) + ")"
    if t is frozenset:
        return "frozenset{" + ",".join(sorted(_const_text(v, nested) for v in value)) + "}"
    if t is float:
        return f"float:{value.hex()}"
    if t is complex:
        return f"complex:{value.real.hex()},{value.imag.hex()}"
    return f"{t.__name__}:{value!r}"
