"""Checked stand-ins for numpy's reconstructors, and the check of numpy dtypes that a stream
builds.  Used by the ``numpy`` preset (``mason.presets``); documented in ``docs/models.md``.

Why numpy needs more than an allowlist
--------------------------------------
A numpy dtype pickles as ``numpy.dtype('V16', False, True)`` followed by BUILD with a state
tuple ``(version, byteorder, subarray, names, fields, itemsize, alignment, flags)``, and
numpy's ``dtype.__setstate__`` stores those values *without checking them*: a field at an
offset far beyond the itemsize, a subarray larger than the element, or the flags of an
object dtype on a float64 (numpy then reads eight bytes of the stream as a pointer to a
Python object).  Any array built on such a dtype reads or writes outside its memory, which
is as good as running code.  The array's own BUILD (``ndarray.__setstate__``) is native code
that mason cannot interpose, so the dtypes are checked before the load runs:
``check_dtypes`` runs the stream on mason's symbolic machine (which imports and calls
nothing), rebuilds every dtype the stream builds on a scratch copy, and requires that it be
exactly the dtype numpy's own constructor makes from its public description (names,
formats, offsets, itemsize, alignment, subarray shape, byte order, datetime unit).  It also
requires that a dtype be BUILT at most once and before anything else uses it, since
changing a dtype under an existing array changes how much memory the array spans.

The other reconstructors are replaced by functions that take only what numpy writes:

* ``numpy._core.multiarray._reconstruct(ndarray, (0,), b'b')``: an empty array of an
  allowed class, which BUILD then fills (numpy checks that the data has the size its shape
  and dtype say, and that an object array's data is a list of already-loaded objects);
* ``numpy._core.numeric._frombuffer(buffer, dtype, shape, order)``: a view of a buffer, for
  a dtype without objects, whose size must match exactly;
* ``numpy._core.multiarray.scalar(dtype, data)``: a scalar from exactly ``itemsize`` bytes,
  or, for the object dtype, the (already loaded) object itself.
"""

from __future__ import annotations

import re

from .errors import UnsafeGlobalError

__all__ = ["dtype", "bind_reconstruct", "frombuffer", "scalar", "rebuild_array", "check_dtypes",
           "check_dtype"]

# Type strings as numpy writes them in dtype pickles: a type character and a size
# ("f8", "V16", "U5", "M8", "O8", "b1").  No commas, no brackets: nothing else is parsed.
_TYPESTR = re.compile(r"[<>|=]?[a-zA-Z][0-9]{0,12}")
_ORDERS = ("C", "F", "A", "K")
_MAX_DTYPE_DEPTH = 32


def _state_value(item, depth: int, node_value):
    """A dtype state component (from the symbolic machine) as a real value: literals and
    containers as they are, any other node through ``node_value``, which refuses what it
    does not know."""
    if depth > _MAX_DTYPE_DEPTH:
        _refuse("a numpy dtype state nests too deep")
    if isinstance(item, _LITERALS):
        return item
    if type(item) is tuple:
        return tuple(_state_value(x, depth + 1, node_value) for x in item)
    if type(item) is list:
        return [_state_value(x, depth + 1, node_value) for x in item]
    if type(item) is dict:
        return {_state_value(k, depth + 1, node_value): _state_value(v, depth + 1, node_value)
                for k, v in item.items()}
    return node_value(item)


def _exact_size(what: str, buffer, shape: tuple, dtype) -> int:
    """The size of ``buffer`` in bytes, refused unless it is exactly what ``shape`` elements
    of ``dtype`` take: an array over a buffer must neither read past it nor leave part of it
    unexplained."""
    size = memoryview(buffer).nbytes
    count = 1
    for n in shape:
        count *= n
    if size != count * dtype.itemsize:
        _refuse(f"{what}: a buffer of {size} bytes for shape {shape} of {dtype} "
                f"({count * dtype.itemsize} bytes)")
    return size


def _refuse(message: str):
    raise UnsafeGlobalError(message)


def _np():
    import numpy
    return numpy


# --- dtypes --------------------------------------------------------------------------------

def dtype(obj, align=False, copy=False):
    """numpy.dtype, as numpy pickles a dtype: ``dtype('f8', False, True)``.

    Only a plain type string (``"f8"``, ``"V16"``, ``"M8"``) is accepted; the state that
    BUILD applies next is checked before the load by ``check_dtypes``.
    """
    if type(obj) is not str or not _TYPESTR.fullmatch(obj) \
            or type(align) is not bool or type(copy) is not bool:
        _refuse(f"numpy.dtype called with {obj!r:.60}, {align!r:.20}, {copy!r:.20}: numpy "
                "pickles a dtype as dtype(type string, False, True)")
    return _np().dtype(obj, align, copy)


dtype.__name__ = dtype.__qualname__ = "dtype"


def check_dtype(d, depth: int = 0) -> None:
    """Refuse a dtype that differs from the one numpy's constructor makes from its public
    description: fields, offsets, itemsize, alignment, flags, subarray, byte order."""
    np = _np()
    if depth > _MAX_DTYPE_DEPTH:
        _refuse("a numpy dtype nests more than 32 levels deep")
    if not isinstance(d, np.dtype):
        _refuse(f"expected a numpy dtype, got {type(d).__name__}")
    try:
        reference = _canonical(np, d, depth)
    except UnsafeGlobalError:
        raise
    except Exception as exc:  # the constructor refuses the description: so do we
        _refuse(f"numpy dtype {_show(d)} is inconsistent: {exc}")
    same = (type(reference) is type(d) and reference == d and reference.itemsize == d.itemsize
            and reference.alignment == d.alignment and reference.flags == d.flags
            and reference.hasobject == d.hasobject and reference.byteorder == d.byteorder
            and reference.names == d.names)
    if not same:
        _refuse(f"numpy dtype {_show(d)} from the stream is not what numpy makes of its own "
                f"description (itemsize {d.itemsize}, flags {d.flags}; expected itemsize "
                f"{reference.itemsize}, flags {reference.flags}): its state was forged")


def _show(d) -> str:
    try:
        return repr(d.descr)[:80] if d.names else str(d)[:80]
    except Exception:
        return "<unprintable>"


def _canonical(np, d, depth):
    if d.names is not None:
        if d.fields is None:
            _refuse("a numpy dtype has field names but no fields")
        names, formats, offsets, titles = [], [], [], []
        for name in d.names:
            entry = d.fields[name]
            child, offset = entry[0], entry[1]
            title = entry[2] if len(entry) > 2 else None
            check_dtype(child, depth + 1)
            names.append(name)
            formats.append(child)
            offsets.append(offset)
            titles.append(title)
        spec = {"names": names, "formats": formats, "offsets": offsets, "itemsize": d.itemsize}
        if any(title is not None for title in titles):
            spec["titles"] = titles
        made = np.dtype(spec, align=d.isalignedstruct)
        if type(d) is not type(made):
            _refuse(f"numpy dtype {_show(d)} has fields but is not a structured (void) dtype")
    elif d.subdtype is not None:
        base, shape = d.subdtype
        check_dtype(base, depth + 1)
        made = np.dtype((base, shape))
    else:
        made = np.dtype(d.str)
    if d.metadata is not None:
        made = np.dtype(made, metadata=dict(d.metadata))
    return made


# --- the check before a load ---------------------------------------------------------------

_LITERALS = (type(None), bool, int, float, str, bytes)


def stream_globals(data) -> list[tuple[str, str]] | None:
    """Every global the pickle ``data`` names, as ``(module, name)`` in stream order, or
    None when one cannot be read off the stream without running it.

    The compiled pass (``mason.limits.global_names``) first.  It gives up on a STACK_GLOBAL
    whose module string is a memo fetch, which the pickler writes whenever two globals
    share a module (mason's own arrays and tensors: ``mason.arrays.rebuild_storage`` after
    ``mason.arrays.rebuild_tensor_view``); then the opcode decoder, following memoized
    strings, so that such streams are not run on the symbolic machine for nothing."""
    try:
        from .unpickler import _global_names
        names = _global_names(data)
    except Exception:
        names = None
    if names is None:
        try:
            names = _globals_through_memo(data)
        except Exception:
            names = None
    return names


def _globals_through_memo(data) -> list[tuple[str, str]] | None:
    """``stream_globals`` with memo fetches followed: only the last two pushes are tracked
    (str literals, or fetches of memo entries that held one); any other opcode forgets
    them, so a STACK_GLOBAL is read only when both its operands are known strings."""
    from .format.reader import read_ops

    actions = _memo_actions()
    memo: dict[int, str | None] = {}
    previous = last = None
    names = []
    for _, code, arg, _ in read_ops(data):
        action = actions[code.code]
        if action == _PUSH:
            previous, last = last, None
        elif action == _PUSH_STR:
            previous, last = last, arg if type(arg) is str else None
        elif action == _MEMOIZE:
            memo[len(memo)] = last
        elif action == _GET:
            previous, last = last, memo.get(arg)
        elif action == _PUT:
            memo[arg] = last
        elif action == _STACK_GLOBAL:
            if type(previous) is not str or type(last) is not str:
                return None
            names.append((previous, last))
            previous = last = None
        elif action == _GLOBAL:
            names.append(tuple(arg))
            previous = last = None
        elif action == _DUP:
            previous = last
        elif action == _FORGET:
            previous = last = None
        elif action == _UNKNOWN:
            return None   # extension codes: the name is in a process-wide table
    return names


(_PUSH, _PUSH_STR, _MEMOIZE, _GET, _PUT, _STACK_GLOBAL, _GLOBAL, _DUP, _FORGET, _KEEP,
 _UNKNOWN) = range(11)
_ACTIONS: list = []


def _memo_actions() -> list:
    """What ``_globals_through_memo`` does for each opcode byte, from the opcode table."""
    if not _ACTIONS:
        _ACTIONS.extend([_UNKNOWN] * 256)
        from .format.opcodes import OPCODES, Role

        by_role = {Role.PUSH: _PUSH, Role.MEMOIZE: _MEMOIZE, Role.GET: _GET, Role.PUT: _PUT,
                   Role.DUP: _DUP, Role.PROTO: _KEEP, Role.FRAME: _KEEP, Role.STOP: _KEEP}
        for code in OPCODES:
            if code.imports:
                action = {"STACK_GLOBAL": _STACK_GLOBAL, "GLOBAL": _GLOBAL,
                          "INST": _GLOBAL}.get(code.name, _UNKNOWN)
            elif code.role == Role.PUSH and code.pushes_str:
                action = _PUSH_STR
            else:
                action = by_role.get(code.role, _FORGET)
            _ACTIONS[code.code] = action
    return _ACTIONS


def check_dtypes(data, find_class) -> None:
    """Check every numpy dtype the pickle ``data`` builds, before it is loaded.

    ``find_class(module, name)`` is the loader's own (renames, Python 2 names, policy): a
    global is a dtype constructor if it resolves to ``dtype`` above.
    """
    from .format.machine import Build, Call, Global, Node, simulate

    # Most streams name no dtype at all (mason's own arrays carry a .npy description): the
    # list of a stream's globals says so without running the machine.
    names = stream_globals(data)
    if names is not None:
        for module, name in names:
            try:
                if find_class(module, name) is dtype:
                    break
            except Exception:
                continue
        else:
            return
    run = simulate(data)
    # Which globals are numpy.dtype, as the loader resolves them (refused ones are not:
    # the engine refuses them when it gets there).
    resolved: dict[tuple[str, str], bool] = {}

    def is_dtype(node) -> bool:
        if not isinstance(node, Global):
            return False
        key = (node.module, node.name)
        if key not in resolved:
            try:
                resolved[key] = find_class(*key) is dtype
            except Exception:
                resolved[key] = False
        return resolved[key]

    made = {id(call): call for call in run.calls if is_dtype(call.func)}
    if not made:
        return
    # Protocols 0-2 write bytes (a datetime unit in a dtype state) as _codecs.encode(s,
    # 'latin1'): those calls may appear inside a dtype state, and are evaluated here.
    from ._safe_constructors import codecs_encode
    encodes = set()
    for call in run.calls:
        func = call.func
        if isinstance(func, Global):
            try:
                if find_class(func.module, func.name) is codecs_encode:
                    encodes.add(id(call))
            except Exception:
                pass
    # Effects and calls by offset, to see what happens between a dtype's birth and its BUILD.
    events = sorted([(c.offset, c) for c in run.calls] + [(e.offset, e) for e in run.effects],
                    key=lambda pair: pair[0])
    scratch: dict[int, object] = {}

    def value(item):
        """A state component as a real value, dtypes replaced by their checked scratch."""
        return _state_value(item, 0, node_value)

    def node_value(item):
        if isinstance(item, Call) and id(item) in made:
            return build(item)
        if isinstance(item, Call) and id(item) in encodes and type(item.args) is tuple \
                and all(type(a) is str for a in item.args):
            return codecs_encode(*item.args)
        if isinstance(item, Node):
            _refuse(f"a numpy dtype state holds {type(item).__name__} at byte "
                    f"{getattr(item, 'offset', '?')}: numpy writes only literals and dtypes")
        _refuse(f"a numpy dtype state holds a {type(item).__name__}")

    def build(call):
        key = id(call)
        if key in scratch:
            got = scratch[key]
            if got is None:
                _refuse("a numpy dtype state refers to the dtype being built")
            return got
        scratch[key] = None
        args = call.args
        if type(args) is not tuple or not 1 <= len(args) <= 3 \
                or any(not isinstance(a, (str, bool)) for a in args):
            _refuse(f"numpy.dtype at byte {call.offset} is called with {args!r:.80}")
        d = dtype(*args)
        builds = [e for e in call.effects]
        if len(builds) > 1:
            _refuse(f"the numpy dtype made at byte {call.offset} is built "
                    f"{len(builds)} times: changing a dtype under an array is refused")
        if builds:
            effect = builds[0]
            if not isinstance(effect, Build):
                _refuse(f"the numpy dtype made at byte {call.offset} is extended at byte "
                        f"{effect.offset}")
            _nothing_between(call, effect)
            state = value(effect.state)
            if not args[2]:
                # A dtype made without copy is numpy's shared instance: BUILD leaves it alone.
                pass
            else:
                try:
                    d.__setstate__(state)
                except Exception as exc:
                    _refuse(f"numpy refuses the dtype state at byte {effect.offset}: {exc}")
        check_dtype(d)
        scratch[key] = d
        return d

    def _nothing_between(call, effect):
        lo, hi = call.offset, effect.offset
        for offset, event in events:
            if offset <= lo:
                continue
            if offset >= hi:
                break
            target = event if isinstance(event, Call) else event.target
            if not (isinstance(target, Call) and (id(target) in made or (
                    target is event and id(target) in encodes))):
                _refuse(f"the numpy dtype made at byte {lo} is used at byte {offset} "
                        f"before its state is set at byte {hi}")

    for call in made.values():
        build(call)


# --- arrays and scalars --------------------------------------------------------------------

def _shape(shape) -> tuple:
    if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape) \
            or len(shape) > 64:
        _refuse(f"an array shape must be a tuple of non-negative ints, not {shape!r:.60}")
    return shape


def _checked_dtype(d):
    np = _np()
    if not isinstance(d, np.dtype):
        _refuse(f"expected a numpy dtype, got {type(d).__name__}")
    check_dtype(d)
    return d


def bind_reconstruct(classes):
    """The ``_reconstruct`` stand-in admitting ``classes`` (ndarray and allowed subclasses)."""

    def reconstruct(subtype, shape, typecode):
        """numpy's _reconstruct as numpy writes it: ``_reconstruct(ndarray, (0,), b'b')``."""
        np = _np()
        if subtype not in classes() or shape != (0,) or typecode not in (b"b", "b"):
            _refuse(f"numpy _reconstruct called with {subtype!r:.60}, {shape!r:.40}, "
                    f"{typecode!r:.20}: numpy writes it as _reconstruct(ndarray, (0,), b'b')")
        return np.ndarray.__new__(subtype, (0,), "b")

    reconstruct.__name__ = reconstruct.__qualname__ = "_reconstruct"
    return reconstruct


def frombuffer(buffer, dtype, shape, order="C"):
    """numpy's _frombuffer (protocol 5): a view of ``buffer`` as an array, no copy."""
    np = _np()
    dtype = _checked_dtype(dtype)
    shape = _shape(shape)
    if dtype.hasobject:
        _refuse("numpy _frombuffer with an object dtype would read pointers from the stream")
    if order not in _ORDERS:
        _refuse(f"numpy _frombuffer called with order {order!r:.20}")
    size = _exact_size("numpy _frombuffer", buffer, shape, dtype)
    array = np.frombuffer(buffer, dtype=dtype) if size else np.empty(0, dtype)
    if order == "F":
        return array.reshape(shape, order="F")
    return array.reshape(shape, order="C")


frombuffer.__name__ = frombuffer.__qualname__ = "_frombuffer"


def scalar(dtype, obj=None):
    """numpy's scalar: ``scalar(dtype, raw bytes)``, or an object for the object dtype."""
    dtype = _checked_dtype(dtype)
    if dtype.hasobject:
        if dtype.kind == "O" and dtype.names is None:
            return obj  # numpy's object scalar is the object itself (already loaded)
        _refuse("numpy scalar of a structured dtype with object fields")
    if isinstance(obj, str):  # Python 2 pickles carry the bytes as a latin-1 str
        obj = obj.encode("latin-1")
    if not isinstance(obj, bytes) or len(obj) != dtype.itemsize:
        _refuse(f"numpy scalar of {dtype} needs exactly {dtype.itemsize} bytes")
    # The real function, now that its dtype is checked and its bytes have the right size.
    return _real_scalar()(dtype, obj)


def _real_scalar():
    np = _np()
    core = getattr(np, "_core", None) or np.core
    return core.multiarray.scalar


def rebuild_array(buffer, descr, shape, order="C"):
    """Rebuild an array that mason wrote out of band (``mason.arrays``).

    ``descr`` is the array's dtype as the .npy format describes it (a type string, or a
    list of ``(name, descr[, shape])``): numpy's own constructor makes it from that, so no
    state is set by hand and nothing needs checking after.  ``order`` is "C" or "F".
    """
    np = _np()
    from numpy.lib import format as npformat
    shape = _shape(shape)
    if not isinstance(descr, (str, list)) or order not in ("C", "F"):
        _refuse(f"mason rebuild_array called with {type(descr).__name__}, {order!r:.10}")
    try:
        d = npformat.descr_to_dtype(descr)
    except Exception as exc:
        _refuse(f"mason rebuild_array: not a dtype description ({exc})")
    if d.hasobject:
        _refuse("mason rebuild_array with an object dtype would read pointers from a buffer")
    if not _exact_size("mason rebuild_array", buffer, shape, d):
        return np.empty(shape, d, order=order)
    return np.frombuffer(buffer, dtype=d).reshape(shape, order=order)


def dtype_of_node(node, depth: int = 0):
    """The checked dtype that a ``numpy.dtype(...)`` call of the symbolic machine (with its
    BUILD) stands for; for formats that size raw data by a dtype (joblib)."""
    from .format.machine import Build, Call, Global

    if depth > _MAX_DTYPE_DEPTH:
        _refuse("a numpy dtype nests too deep")
    if not (isinstance(node, Call) and isinstance(node.func, Global)
            and node.func.name == "dtype" and node.func.module in ("numpy", "numpy.core",
                                                                   "numpy._core")):
        raise ValueError(f"not a numpy.dtype(...) call: {node!r:.80}")
    args = node.args
    if type(args) is not tuple or not 1 <= len(args) <= 3 \
            or not all(isinstance(a, (str, bool)) for a in args):
        raise ValueError("numpy.dtype called with something else than a type string")
    d = dtype(*args)
    builds = node.effects
    if len(builds) > 1 or (builds and not isinstance(builds[0], Build)):
        _refuse("a numpy dtype built more than once")

    def node_value(item):
        if isinstance(item, Call):
            return dtype_of_node(item, depth + 1)
        _refuse(f"a numpy dtype state holds a {type(item).__name__}")

    if builds and args[-1] is True:
        try:
            d.__setstate__(_state_value(builds[0].state, 0, node_value))
        except UnsafeGlobalError:
            raise
        except Exception as exc:
            _refuse(f"numpy refuses a dtype state: {exc}")
    check_dtype(d)
    return d
