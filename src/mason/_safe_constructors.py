"""Checked stand-ins for reconstructors that ordinary pickles need but that are dangerous in
general.  The default policy maps each name on the left of ``SAFE_SUBSTITUTES`` to the function
here; a pickle that uses the name the way pickle itself does loads as before, and one that
uses it as a gadget is refused.

These functions are named in no stream: they are what ``find_class`` hands the engine in
place of the real name.  Each says which use it permits and why.
"""

from __future__ import annotations

import copyreg
import enum
import sys

from .errors import LimitError, UnsafeGlobalError

# Longest range the default policy builds.  A range is lazy, but an allowed constructor
# (list, set, deque, Counter, ...) given one materializes every element: range(2**40) is a
# 50-byte memory bomb.  Allow "builtins.range" explicitly to lift the cap.
MAX_SAFE_RANGE = 1 << 20
# Largest size that bytes(n) / bytearray(n) may zero-fill; pickle itself never calls them
# with a size, so any such call comes from a hand-made stream.
MAX_SAFE_FILL = 1 << 20


def _refuse(message: str):
    raise UnsafeGlobalError(message)


def reconstructor(cls, base, state):
    """copyreg._reconstructor, as protocols 0 and 1 use it: ``base.__new__(cls, state)``.

    cls and base reach us through the policy, so both are allowed; we only insist that they
    are classes and that cls really derives from base, which is all pickle ever writes.
    """
    if not (isinstance(cls, type) and isinstance(base, type) and issubclass(cls, base)):
        _refuse(f"copyreg._reconstructor called with {cls!r}, {base!r}: "
                "pickle only writes it with a class and one of its bases")
    return copyreg._reconstructor(cls, base, state)


def newobj(cls, *args):
    """copyreg.__newobj__: ``cls.__new__(cls, *args)`` for an allowed class."""
    if not isinstance(cls, type):
        _refuse(f"copyreg.__newobj__ called with {cls!r}, which is not a class")
    return cls.__new__(cls, *args)


def newobj_ex(cls, args, kwargs):
    """copyreg.__newobj_ex__: ``cls.__new__(cls, *args, **kwargs)`` for an allowed class."""
    if not isinstance(cls, type):
        _refuse(f"copyreg.__newobj_ex__ called with {cls!r}, which is not a class")
    return cls.__new__(cls, *args, **kwargs)


def codecs_encode(obj, encoding="utf-8", errors="strict"):
    """_codecs.encode, as protocols 0-2 use it for bytes: ``encode(text, 'latin1')``.

    Any other codec is refused: ``_codecs.encode`` reaches every codec, compressors included.
    """
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        _refuse(f"_codecs.encode called with encoding {encoding!r}: pickle only writes "
                "it with 'latin1' to carry bytes")
    return obj.encode(encoding, errors)


def enum_member(cls, name):
    """builtins.getattr, as enums pickle themselves: ``getattr(EnumClass, 'MEMBER')``.

    getattr is the classic gadget (``getattr(os, 'system')``), so only a member name of an
    allowed Enum class is looked up.  A policy binds this stand-in (``bind``) to also admit
    the way pickle writes methods: see ``class_attribute``.
    """
    if isinstance(cls, type) and issubclass(cls, enum.Enum) and isinstance(name, str) \
            and name in cls.__members__:
        return cls.__members__[name]
    _refuse(f"builtins.getattr called with {cls!r}, {name!r}: only enum members are looked "
            "up this way by the default policy")


def _bind_getattr(policy):
    """The getattr stand-in for ``policy``: enum members, and class attributes by name."""

    def class_attribute(obj, name):
        """builtins.getattr, as pickle writes a class's methods: ``getattr(Class, 'method')``
        (a classmethod or a bound method pickles this way in every protocol).

        It is looked up exactly as if the stream had named the global
        ``Class.__module__ + '.' + Class.__qualname__ + '.' + name``: the policy must allow
        that name (``allow=["pkg.mod.Class.method"]`` or a wildcard over ``pkg.mod``), with
        the same refusal of dunder walks.  So getattr gives a stream no name it could not
        have written as a GLOBAL.
        """
        if isinstance(obj, type) and issubclass(obj, enum.Enum) and isinstance(name, str) \
                and name in obj.__members__:
            return obj.__members__[name]
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if isinstance(obj, type) and isinstance(name, str) and name \
                and isinstance(module, str) and isinstance(qualname, str):
            dotted = f"{module}.{qualname}.{name}"
            try:
                return policy.resolve(module, f"{qualname}.{name}")
            except UnsafeGlobalError as exc:
                raise UnsafeGlobalError(
                    f"builtins.getattr({qualname}, {name!r}) in the stream looks up the global "
                    f"{dotted}: {exc}", [(dotted, None)]) from None
            except AttributeError:
                pass  # the class is not reachable by its name: nothing to look up safely
        _refuse(f"builtins.getattr called with {obj!r}, {name!r}: only enum members, and "
                "class attributes whose dotted name the policy allows, are looked up this "
                "way by the default policy")

    class_attribute.__name__ = class_attribute.__qualname__ = "getattr"
    return class_attribute


enum_member.bind = _bind_getattr


def type_of(*args):
    """builtins.type, as pickle uses it for ``type(None)``, ``type(...)`` and
    ``type(NotImplemented)``.  Called with three arguments type() builds a class; refused."""
    if len(args) == 1 and (args[0] is None or args[0] is Ellipsis or args[0] is NotImplemented):
        return type(args[0])
    shown = ", ".join(repr(arg)[:40] for arg in args)
    _refuse(f"builtins.type called with ({shown}): pickle only writes it for the types of "
            "None, Ellipsis and NotImplemented")


def bounded_range(*args):
    """builtins.range, capped at MAX_SAFE_RANGE elements (see above)."""
    r = range(*args)
    if len(r) > MAX_SAFE_RANGE:
        raise LimitError(f"range of {len(r)} elements refused: an allowed constructor would "
                         f"materialize it; allow 'builtins.range' if this data is honest")
    return r


def _bounded_fill(kind):
    def build(*args):
        if args and isinstance(args[0], int) and not isinstance(args[0], bool) \
                and args[0] > MAX_SAFE_FILL:
            raise LimitError(f"{kind.__name__}({args[0]}) refused: pickle never writes a size "
                             f"here, so this zero-fill of {args[0]} bytes is a memory bomb")
        return kind(*args)
    build.__name__ = build.__qualname__ = kind.__name__
    build.__doc__ = f"builtins.{kind.__name__}, refusing zero-fills larger than MAX_SAFE_FILL."
    return build


bounded_bytes = _bounded_fill(bytes)
bounded_bytearray = _bounded_fill(bytearray)


def fraction(*args):
    """fractions.Fraction from what pickle writes: two ints (Python 3.11 on) or a 'n/d'
    string (earlier Pythons).  Fraction() also parses '1e100000000', and converts a Decimal
    exactly: either way it computes a 100-million-digit integer, for minutes."""
    import fractions
    import re
    if not all(isinstance(arg, (int, str)) for arg in args):
        _refuse(f"fractions.Fraction called with {', '.join(type(a).__name__ for a in args)}: "
                "pickle writes fractions as two ints or as 'numerator/denominator'")
    if len(args) == 1 and isinstance(args[0], str) \
            and not re.fullmatch(r"\s*[-+]?\d+(/\d+)?\s*", args[0]):
        _refuse(f"fractions.Fraction({args[0][:40]!r}) refused: pickle writes fractions as "
                "'numerator/denominator'")
    return fractions.Fraction(*args)


def decimal_(*args):
    """decimal.Decimal, refusing magnitudes that the allowed int() would expand for minutes.

    A Decimal is digits and an exponent, so Decimal('1e100000000') is small; but int() of it
    (int is allowed) writes out every digit, in time quadratic in their number: 25 s for
    10**6 digits.  A Decimal whose integer part has more digits than the interpreter parses
    into an int (``sys.get_int_max_str_digits()``, 4300 by default) is refused; allow
    "decimal.Decimal" explicitly to lift the cap.
    """
    import decimal
    value = decimal.Decimal(*args)
    limit = sys.get_int_max_str_digits()
    if limit and value.is_finite() and value.adjusted() >= limit:
        raise LimitError(f"Decimal with {value.adjusted() + 1} integer digits refused: int() "
                         f"of it would take minutes (the interpreter parses ints of at most "
                         f"{limit} digits); allow 'decimal.Decimal' if this data is honest")
    return value


decimal_.__name__ = decimal_.__qualname__ = "Decimal"


# dotted name -> the stand-in that the default policy resolves it to
SAFE_SUBSTITUTES = {
    "copyreg._reconstructor": reconstructor,
    "copyreg.__newobj__": newobj,
    "copyreg.__newobj_ex__": newobj_ex,
    "_codecs.encode": codecs_encode,
    "builtins.getattr": enum_member,
    "builtins.type": type_of,
    "builtins.range": bounded_range,
    "builtins.bytes": bounded_bytes,
    "builtins.bytearray": bounded_bytearray,
    "fractions.Fraction": fraction,
    "decimal.Decimal": decimal_,
}
