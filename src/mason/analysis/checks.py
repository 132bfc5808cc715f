"""What each checked stand-in accepts, checked on the arguments a stream gives it.

A policy maps some names to checked stand-ins (``mason._safe_constructors`` for the default
policy; ``mason._torch_checks`` and ``mason._numpy_checks`` for the presets): a stand-in
accepts the calls that pickle (or torch, or numpy) writes and refuses the rest when loading.
For a scan's ``safe`` to mean that loading succeeds, the scan must refuse what they refuse.
Each check here mirrors one stand-in, on the symbolic machine's values (or the survey's,
which may say ``OPAQUE`` where it did not model a value) and returns:

* ``None``: the stand-in accepts the call;
* ``NEED``: an argument the check needs is ``OPAQUE``: the symbolic machine must run;
* ``(severity, category, message, allow)`` or with a fifth item, the name to report.

Checks are keyed by the stand-in object itself, so that a policy that maps a name to the
real function (an explicit allow) is not checked.  A stand-in without a check here makes
the scan say ``needs-allow`` for its calls: the scan cannot know what it would refuse.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .. import _safe_constructors as _sc
from ..format.reader import Payload
from . import dangers
from ._survey import OPAQUE, EmptyCall, PidRef

__all__ = ["NEED", "Call", "check_for"]

NEED = object()


class Call:
    """One call of a stand-in, with what the checks need to look at its arguments."""

    def __init__(self, scanner, facts, module: str, name: str, context: str, torch,
                 offset: int = 0):
        self.scanner, self.facts = scanner, facts
        self.module, self.name = module, name
        self.dotted = f"{module}.{name}"
        self.context, self.torch = context, torch
        self.offset = offset   # of the call: what the stream did to an argument by then counts

    def opaque(self, *values) -> bool:
        return any(v is OPAQUE for v in values)

    def global_of(self, value) -> tuple[str, str] | None:
        """(module, name) of a global of the stream, mapped as loading maps it."""
        found = self.facts.global_of(value)
        if found is None:
            return None
        return self.scanner.fixed(found[0], found[1], self.facts.protocol)

    def pid_of(self, value):
        """The persistent id of a storage argument, or None if it is not one."""
        from ..format.machine import PersistentRef
        if type(value) is PidRef:
            return self.facts.pids[value][2]
        if isinstance(value, PersistentRef):
            return value.pid
        return None

    def empty_call(self, value):
        """(module, name) of a global called with no arguments, when ``value`` is its
        result and the stream applied no step to it before this call; else None."""
        from ..format.machine import Call as MCall
        if type(value) is EmptyCall:
            if value.modified:
                return None
            entry = self.facts.globals[value.global_index]
            return self.scanner.fixed(entry[0], entry[1], self.facts.protocol)
        if isinstance(value, MCall) and value.kind in ("REDUCE", "NEWOBJ") \
                and value.args == () and type(value.args) is tuple \
                and not any(e.offset < self.offset for e in value.effects):
            return self.global_of(value.func)
        return None

    def stand_in_of(self, value):
        """The stand-in a global of the stream resolves to, or None."""
        found = self.global_of(value)
        if found is None:
            return None
        state, stand_in = self.scanner.status(*found)
        return stand_in if state == "substitute" else None

    def refuse(self, category: str, message: str, allow: str | None = None):
        return ("dangerous", category, message, allow)

    def unknown(self, message: str, allow: str | None = None):
        return ("needs-allow", "not allowed", message, allow)


def _is_str(value) -> bool:
    return type(value) is str or (type(value) is Payload and value.type is str)


def _is_literal(value) -> bool:
    return value is None or type(value) in (int, bool, float, str, bytes, complex)


def _is_int(value) -> bool:
    return type(value) is int


# --- the default policy's stand-ins (mason._safe_constructors) ------------------------------

def _reconstructor(c: Call, args):
    if len(args) != 3:
        return None   # wrong arity: loading fails with a TypeError, not a refusal
    cls, base = args[0], args[1]
    if c.opaque(cls, base):
        return NEED
    if c.global_of(cls) is None or c.global_of(base) is None:
        return c.refuse(dangers.CODE, "copyreg._reconstructor called with something other "
                        "than a class and its base: it would call base.__init__ on data of "
                        "the stream's choosing (the stand-in refuses it)")
    return None


def _newobj(c: Call, args):
    if not args:
        return None
    if c.opaque(args[0]):
        return NEED
    if c.global_of(args[0]) is not None:
        return None
    return c.refuse(dangers.CODE, f"{c.dotted} called with something other than a class "
                    f"(the stand-in refuses it)")


def _codecs_encode(c: Call, args):
    if not 1 <= len(args) <= 3:
        return None
    obj = args[0]
    encoding = args[1] if len(args) > 1 else "utf-8"
    if c.opaque(obj, encoding):
        return NEED
    if _is_str(obj) and encoding in ("latin1", "latin-1"):
        return None
    return c.refuse(dangers.BOMB, f"_codecs.encode called with encoding {encoding!r:.40}: it "
                    f"reaches every codec, compressors included; pickle only writes it with "
                    f"'latin1' (the stand-in refuses anything else)", "_codecs.encode")


def _getattr(c: Call, args):
    if len(args) != 2:
        return None
    obj, attr = args
    if c.opaque(obj, attr):
        return NEED
    owner = c.global_of(obj)
    if owner is None or type(attr) is not str:
        return c.refuse(dangers.GADGET, "builtins.getattr called on something other than a "
                        "global class with a literal name: the classic way to reach any "
                        "method of any object (the stand-in refuses it)")
    module, qualname = owner
    derived = f"{qualname}.{attr}"
    # The stand-in looks the attribute up as the global module.qualname.attr, through the
    # policy (an enum member aside): report it as that global.
    found = c.scanner.name_finding(module, derived, via="builtins.getattr")
    return None if found is None else (*found, f"{module}.{derived}")


def _type_of(c: Call, args):
    if len(args) == 1:
        (arg,) = args
        if c.opaque(arg):
            return NEED
        if arg is None or c.global_of(arg) in (("builtins", "Ellipsis"),
                                               ("builtins", "NotImplemented")):
            return None
    elif c.opaque(*args):
        return NEED
    return c.refuse(dangers.CODE, "builtins.type called with arguments other than None, "
                    "Ellipsis or NotImplemented: with three it builds a class with methods of "
                    "the stream's choosing (the stand-in refuses it)")


def _range(c: Call, args):
    if c.opaque(*args):
        return NEED
    if not all(_is_int(a) for a in args):
        if all(_is_literal(a) for a in args):
            return None   # loading raises TypeError; nothing is refused
        return c.unknown(f"builtins.range called with values computed at load time: the scan "
                         f"cannot check its size (the stand-in caps it at "
                         f"{_sc.MAX_SAFE_RANGE} elements)", "builtins.range")
    try:
        size = len(range(*args))
    except (TypeError, ValueError):
        return None
    except OverflowError:   # more than sys.maxsize elements
        size = _sc.MAX_SAFE_RANGE + 1
    if size > _sc.MAX_SAFE_RANGE:
        return c.refuse(dangers.BOMB, f"range of {size} elements: an allowed constructor "
                        f"would materialize it (the stand-in refuses more than "
                        f"{_sc.MAX_SAFE_RANGE})", "builtins.range")
    return None


# Calls that give bytes or str, never an int: what protocols 0-2 pass to bytes() and
# bytearray().
_TEXT_MAKERS = {("_codecs", "encode"), ("builtins", "str"), ("builtins", "bytes")}


def _fill(c: Call, args):
    if not args:
        return None
    first = args[0]
    if c.opaque(first):
        return NEED
    if _is_int(first):
        if first > _sc.MAX_SAFE_FILL:
            return c.refuse(dangers.BOMB, f"{c.dotted}({first}) zero-fills {first} bytes: "
                            f"pickle never writes a size here (the stand-in refuses more "
                            f"than {_sc.MAX_SAFE_FILL})", c.dotted)
        return None
    if _is_literal(first) or type(first) is Payload or type(first) in (list, tuple):
        return None
    func = getattr(first, "func", None)
    if func is not None and c.global_of(func) in _TEXT_MAKERS:
        return None
    return c.unknown(f"{c.dotted} called with a value computed at load time: the scan cannot "
                     f"check its size", c.dotted)


def _fraction(c: Call, args):
    if c.opaque(*args):
        return NEED
    if not all(_is_int(a) or _is_str(a) for a in args):
        return c.refuse(dangers.BOMB, "fractions.Fraction called with values other than ints "
                        "and strings (the stand-in refuses them: converting a Decimal or a "
                        "float-like object can compute a huge integer)", "fractions.Fraction")
    if len(args) == 1 and _is_str(args[0]):
        text = args[0]
        if type(text) is not str or not re.fullmatch(r"\s*[-+]?\d+(/\d+)?\s*", text):
            shown = text[:40] if type(text) is str else "<a long string>"
            return c.refuse(dangers.BOMB, f"fractions.Fraction({shown!r}) parses an exponent "
                            f"of any size (the stand-in refuses it)", "fractions.Fraction")
    return None


def _decimal(c: Call, args):
    if c.opaque(*args):
        return NEED
    if len(args) == 1 and type(args[0]) is str:
        import decimal
        import sys
        try:
            value = decimal.Decimal(args[0])   # parsing a literal is bounded by its length
        except (decimal.InvalidOperation, ValueError, TypeError):
            return None
        limit = sys.get_int_max_str_digits()
        if limit and value.is_finite() and value.adjusted() >= limit:
            return c.refuse(dangers.BOMB, f"Decimal with {value.adjusted() + 1} integer "
                            f"digits: int() of it would take minutes (the stand-in refuses "
                            f"it)", "decimal.Decimal")
        return None
    if all(_is_literal(a) for a in args) or all(type(a) is tuple for a in args):
        return None
    return c.unknown("decimal.Decimal called with values computed at load time: the scan "
                     "cannot check their size", "decimal.Decimal")


# --- torch (mason._torch_checks) --------------------------------------------------------------

_FLOAT8 = {"Float8_e4m3fnStorage": 1, "Float8_e5m2Storage": 1}


def _empty_hooks(c: Call, hooks) -> bool:
    if hooks is None or (type(hooks) is dict and not hooks):
        return True
    return c.empty_call(hooks) == ("collections", "OrderedDict")


def _ints(value) -> tuple | None:
    if _is_int(value):
        value = (value,)
    if type(value) is not tuple or len(value) > 64 or not all(_is_int(n) for n in value):
        return None
    return value


def _rebuild_tensor(c: Call, args):
    if not 4 <= len(args) <= 7:
        return None
    if c.opaque(*args):
        return NEED
    storage, offset, size, stride = args[:4]
    requires_grad = args[4] if len(args) > 4 else False
    hooks = args[5] if len(args) > 5 else None
    metadata = args[6] if len(args) > 6 else None
    what = "torch _rebuild_tensor_v2"
    pid = c.pid_of(storage)
    if pid is None:
        return c.refuse(dangers.CODE, f"{what} called with something other than a storage of "
                        f"the checkpoint (the stand-in refuses it)")
    size, stride = _ints(size), _ints(stride)
    if not _is_int(offset) or offset < 0 or size is None or stride is None \
            or len(size) != len(stride) or any(n < 0 for n in size + stride) \
            or type(requires_grad) is not bool:
        return c.refuse(dangers.BOMB, f"{what} with a geometry torch never writes (the "
                        f"stand-in refuses it)")
    if not _empty_hooks(c, hooks):
        return c.refuse(dangers.CODE, f"{what} with backward hooks: functions that would run "
                        f"on the next backward pass (the stand-in refuses them)")
    if metadata:
        return c.refuse(dangers.CODE, f"{what} with tensor metadata (the stand-in refuses "
                        f"it)")
    if c.torch is not None and type(pid) is tuple and len(pid) >= 5 \
            and type(pid[2]) is str:
        record = c.torch.storage(pid[2])
        kind = c.global_of(pid[1])
        from .containers import STORAGE_SIZES
        itemsize = STORAGE_SIZES.get(kind[1]) if kind else None
        itemsize = itemsize or _FLOAT8.get(kind[1] if kind else "")
        if record is not None and itemsize:
            nbytes = record.info.file_size
            count = math.prod(size)
            if nbytes % itemsize:
                return c.refuse(dangers.BOMB, f"torch storage {pid[2]!r} has {nbytes} bytes, "
                                f"not a whole number of elements (the stand-in refuses it)")
            if count:
                last = offset + sum((n - 1) * s for n, s in zip(size, stride))
                if (last + 1) * itemsize > nbytes:
                    return c.refuse(dangers.BOMB, f"{what}: size {size} and stride {stride} "
                                    f"reach past storage {pid[2]!r} (the stand-in refuses "
                                    f"it)")
    return None


def _is_tensor(c: Call, value) -> bool:
    from ..format.machine import Call as MCall
    if not isinstance(value, MCall):
        return False
    from .. import _torch_checks as tc
    return c.stand_in_of(value.func) in (tc.rebuild_tensor_v2, tc.rebuild_parameter,
                                          tc.rebuild_parameter_with_state,
                                          tc.rebuild_from_type_v2)


def _rebuild_parameter(c: Call, args):
    if len(args) != 3:
        return None
    if c.opaque(*args):
        return NEED
    data, requires_grad, hooks = args
    if not _is_tensor(c, data) or type(requires_grad) is not bool:
        return c.refuse(dangers.CODE, "torch _rebuild_parameter expects a tensor and a bool "
                        "(the stand-in refuses anything else)")
    if not _empty_hooks(c, hooks):
        return c.refuse(dangers.CODE, "torch parameter with backward hooks (the stand-in "
                        "refuses them)")
    return None


def _rebuild_parameter_with_state(c: Call, args):
    if len(args) != 4:
        return None
    if c.opaque(*args):
        return NEED
    if args[3]:
        return c.refuse(dangers.CODE, "torch parameter with Python attributes: setting them "
                        "could call code (the stand-in refuses it)")
    return _rebuild_parameter(c, args[:3])


def _rebuild_from_type(c: Call, args):
    from .. import _torch_checks as tc
    if len(args) != 4:
        return None
    if c.opaque(*args):
        return NEED
    func, new_type, inner, state = args
    rebuild = c.stand_in_of(func)
    checks = {tc.rebuild_tensor_v2: _rebuild_tensor, tc.rebuild_parameter: _rebuild_parameter,
              tc.rebuild_parameter_with_state: _rebuild_parameter_with_state}
    if rebuild not in checks or c.global_of(new_type) not in (
            ("torch", "Tensor"), ("torch.nn", "Parameter"),
            ("torch.nn.parameter", "Parameter"), ("torch._tensor", "Tensor")) \
            or type(inner) is not tuple or state:
        return c.refuse(dangers.CODE, "torch _rebuild_from_type_v2 other than for a plain "
                        "tensor or parameter (the stand-in refuses it)")
    return checks[rebuild](c, inner)


def _storage_type(c: Call, args):
    return c.refuse(dangers.CODE, f"{c.dotted} called from the stream: a checkpoint names "
                    f"storage classes only inside persistent ids (the stand-in refuses it)")


# --- numpy (mason._numpy_checks) -------------------------------------------------------------

_TYPESTR = re.compile(r"[<>|=]?([a-zA-Z])([0-9]{0,12})")


def _dtype_call(c: Call, value):
    """The type string of a checked numpy.dtype(...) call, or None."""
    from .. import _numpy_checks as npc
    from ..format.machine import Call as MCall
    if isinstance(value, MCall) and c.stand_in_of(value.func) is npc.dtype \
            and type(value.args) is tuple and value.args and type(value.args[0]) is str:
        return value.args[0]
    return None


def _itemsize(typestr: str, dtype_call) -> int | None:
    """Bytes per element of a simple type string, or None when it depends on the state."""
    from ..format.machine import Build
    states = [e.state for e in getattr(dtype_call, "effects", ()) if isinstance(e, Build)]
    if states and type(states[-1]) is tuple and len(states[-1]) >= 6 \
            and _is_int(states[-1][5]) and states[-1][5] > 0:
        return states[-1][5]
    match = _TYPESTR.fullmatch(typestr)
    if not match or not match.group(2):
        return None
    size = int(match.group(2))
    return size * 4 if match.group(1) == "U" else size


def _np_dtype(c: Call, args):
    if not 1 <= len(args) <= 3:
        return None
    if c.opaque(*args):
        return NEED
    obj = args[0]
    flags = args[1:]
    if type(obj) is not str or not _TYPESTR.fullmatch(obj) \
            or not all(type(f) is bool for f in flags):
        return c.refuse(dangers.CODE, f"numpy.dtype called with {obj!r:.60}: numpy pickles a "
                        f"dtype as dtype(type string, False, True) (the stand-in refuses "
                        f"anything else)")
    return None


def _np_reconstruct(c: Call, args):
    if len(args) != 3:
        return None
    if c.opaque(*args):
        return NEED
    subtype, shape, typecode = args
    kind = c.global_of(subtype)
    code_ok = typecode in (b"b", "b")
    func = getattr(typecode, "func", None)
    if func is not None and c.global_of(func) == ("_codecs", "encode") \
            and getattr(typecode, "args", None) == ("b", "latin1"):
        code_ok = True
    if kind not in (("numpy", "ndarray"), ("numpy", "matrix")) or shape != (0,) \
            or not code_ok:
        return c.refuse(dangers.CODE, "numpy _reconstruct called other than as "
                        "_reconstruct(ndarray, (0,), b'b') (the stand-in refuses it)")
    return None


def _np_frombuffer(c: Call, args):
    if not 3 <= len(args) <= 4:
        return None
    if c.opaque(*args):
        return NEED
    buffer, dtype, shape = args[:3]
    order = args[3] if len(args) > 3 else "C"
    typestr = _dtype_call(c, dtype)
    shape = _ints(shape) if type(shape) is tuple else None
    if typestr is None or shape is None or any(n < 0 for n in shape) \
            or order not in ("C", "F", "A", "K"):
        return c.refuse(dangers.CODE, "numpy _frombuffer called other than numpy writes it "
                        "(the stand-in refuses it)")
    if typestr.lstrip("<>|=").startswith("O"):
        return c.refuse(dangers.CODE, "numpy _frombuffer with an object dtype would read "
                        "pointers from the stream (the stand-in refuses it)")
    itemsize = _itemsize(typestr, dtype)
    length = len(buffer) if type(buffer) in (bytes, bytearray) else \
        buffer.length if type(buffer) is Payload else None
    if itemsize is not None and length is not None and length != math.prod(shape) * itemsize:
        return c.refuse(dangers.BOMB, f"numpy _frombuffer: {length} bytes for shape {shape} "
                        f"of {typestr} (the stand-in refuses it)")
    if length is None or itemsize is None:
        return c.unknown("numpy _frombuffer over a buffer whose size the scan cannot check "
                         "against its shape")
    return None


def _np_scalar(c: Call, args):
    if not 1 <= len(args) <= 2:
        return None
    if c.opaque(*args):
        return NEED
    dtype = args[0]
    obj = args[1] if len(args) > 1 else None
    typestr = _dtype_call(c, dtype)
    if typestr is None:
        return c.refuse(dangers.CODE, "numpy scalar called without a numpy dtype (the "
                        "stand-in refuses it)")
    if typestr.lstrip("<>|=").startswith("O"):
        return None
    itemsize = _itemsize(typestr, dtype)
    length = None
    if type(obj) is bytes or type(obj) is str:
        length = len(obj)
    else:
        func = getattr(obj, "func", None)
        if func is not None and c.global_of(func) == ("_codecs", "encode") \
                and type(getattr(obj, "args", None)) is tuple and obj.args \
                and type(obj.args[0]) is str:
            length = len(obj.args[0])
    if length is None or (itemsize is not None and length != itemsize):
        return c.refuse(dangers.CODE, f"numpy scalar of {typestr} needs exactly its item's "
                        f"bytes (the stand-in refuses anything else)")
    return None


# --- lookup -----------------------------------------------------------------------------------

_DEFAULT = {
    _sc.reconstructor: _reconstructor, _sc.newobj: _newobj, _sc.newobj_ex: _newobj,
    _sc.codecs_encode: _codecs_encode, _sc.enum_member: _getattr, _sc.type_of: _type_of,
    _sc.bounded_range: _range, _sc.bounded_bytes: _fill, _sc.bounded_bytearray: _fill,
    _sc.fraction: _fraction,
}
if hasattr(_sc, "decimal_"):
    _DEFAULT[_sc.decimal_] = _decimal


def _preset_checks() -> dict[Any, Any]:
    found: dict[Any, Any] = {}
    try:
        from .. import _torch_checks as tc
    except ImportError:
        tc = None
    if tc is not None:
        found.update({tc.rebuild_tensor_v2: _rebuild_tensor,
                      tc.rebuild_parameter: _rebuild_parameter,
                      tc.rebuild_parameter_with_state: _rebuild_parameter_with_state,
                      tc.rebuild_from_type_v2: _rebuild_from_type})
    try:
        from .. import _numpy_checks as npc
    except ImportError:
        npc = None
    if npc is not None:
        found.update({npc.dtype: _np_dtype, npc.frombuffer: _np_frombuffer,
                      npc.scalar: _np_scalar})
    return found


_PRESETS: dict[Any, Any] | None = None


def check_for(stand_in):
    """The check of a stand-in, or None if the scan does not know it."""
    global _PRESETS
    found = _DEFAULT.get(stand_in)
    if found is not None:
        return found
    if _PRESETS is None:
        _PRESETS = _preset_checks()
    found = _PRESETS.get(stand_in)
    if found is not None:
        return found
    if type(stand_in).__name__ == "StorageType":
        return _storage_type
    if getattr(stand_in, "__name__", None) == "_reconstruct" \
            and getattr(stand_in, "__module__", "") == "mason._numpy_checks":
        return _np_reconstruct   # made per policy by bind_reconstruct
    return None
