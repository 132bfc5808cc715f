"""Bytes -> opcodes: a fast decoder for pickle streams.

``read_ops(data)`` yields one ``Op(offset, opcode, arg, end)`` per opcode, with the argument
decoded as ``pickletools.genops`` decodes it, but faster (see ``benchmarks/bench_decode.py``)
and without copying large payloads.  It reads bytes, bytearray, memoryview and mmap in place:
nothing is copied but the arguments it returns.

Where it differs from ``pickletools`` on purpose:

* A byte or string payload longer than ``threshold`` (4 KiB) comes back as a
  ``Payload(offset, length, kind)`` placeholder instead of a copy, so walking a pickle that
  holds a 200 MB array costs nothing.  ``copy_large=True`` returns real values.
* GLOBAL and INST give a ``(module, name)`` pair, and GLOBAL, INST and PERSID decode their
  lines as the unpickler does (UTF-8 / ASCII, no escapes): pickletools joins the pair with a
  space and undoes backslash escapes, which the unpickler never does, and a safety tool must
  see the names the unpickler will see.
* A declared length is checked against the bytes really present *before* anything is
  allocated, FRAME included; a short stream raises ``TruncatedPickleError`` and a bad one
  ``MalformedPickleError``, both carrying the byte offset and naming the opcode.

Everything about the opcodes themselves comes from ``opcodes.OPCODES``; this module only knows
how each *argument format* (pickletools' ``arg_name``: "uint4", "unicodestring8", ...) is laid
out and decoded.
"""

from __future__ import annotations

import codecs
import mmap
import struct
from collections.abc import Iterator
from operator import itemgetter
from typing import Any, NamedTuple

from ..errors import MalformedPickleError, TruncatedPickleError
from .opcodes import OPCODES, Opcode, Role

__all__ = ["Op", "Payload", "read_ops", "pickle_spans", "LARGE"]

LARGE = 4096
"""Byte and string payloads longer than this come back as ``Payload`` placeholders."""


class Op(tuple):
    """One decoded opcode: it starts at ``offset`` and its argument ends just before ``end``.

    A tuple ``(offset, opcode, arg, end)`` with named fields, like a NamedTuple.  It is not one
    because a NamedTuple's ``__new__`` is a Python function, and making one object per opcode
    is the largest cost of decoding: this class keeps tuple's C constructor, so
    ``Op((offset, opcode, arg, end))`` takes the four fields as one tuple.
    """

    __slots__ = ()
    _fields = ("offset", "opcode", "arg", "end")

    offset: int = property(itemgetter(0), doc="Byte offset of the opcode.")
    opcode: Opcode = property(itemgetter(1), doc="The opcode's entry in the table.")
    arg: Any = property(itemgetter(2), doc="The decoded argument, or None.")
    end: int = property(itemgetter(3), doc="Byte offset just past the argument.")

    def __repr__(self) -> str:
        offset, opcode, arg, end = self
        return f"Op(offset={offset}, opcode={opcode.name}, arg={arg!r}, end={end})"

    def __getnewargs__(self):
        return (tuple(self),)


class Payload(NamedTuple):
    """A large byte or string argument, left in the input instead of copied.

    ``offset`` is where the payload's bytes start (after the length field) and ``length`` how
    many there are; ``kind`` is the argument format (``"bytes8"``, ``"unicodestring4"``, ...).
    A str payload is not checked for valid UTF-8 until ``value`` decodes it.
    """

    offset: int
    length: int
    kind: str

    @property
    def type(self) -> type:
        """The type of the value this stands for: bytes, bytearray or str."""
        return _PAYLOAD_TYPES[self.kind]

    def value(self, data) -> bytes | bytearray | str:
        """The real value, read from ``data`` (the buffer that was decoded)."""
        raw = memoryview(data).cast("B")[self.offset:self.offset + self.length]
        if len(raw) != self.length:
            raise ValueError("this payload does not lie inside the given data")
        return _CONVERT[self.kind](raw)


# --- argument formats --------------------------------------------------------------------
#
# Each argument format maps to a small-int "kind" that the decoding loop branches on, most
# frequent first.  Ints rather than an enum: the loop compares them once per opcode.

(K_NONE, K_U1, K_LEN1, K_I4, K_U4, K_U2, K_F8, K_U8, K_LEN4, K_LEN4S, K_LEN8,
 K_LINE, K_LINE2, K_STOP, K_FRAME) = range(15)

_KIND_OF_ARG = {
    None: K_NONE, "uint1": K_U1, "uint2": K_U2, "int4": K_I4, "uint4": K_U4, "uint8": K_U8,
    "float8": K_F8,
    "long1": K_LEN1, "string1": K_LEN1, "bytes1": K_LEN1, "unicodestring1": K_LEN1,
    "long4": K_LEN4S, "string4": K_LEN4S, "bytes4": K_LEN4, "unicodestring4": K_LEN4,
    "bytes8": K_LEN8, "bytearray8": K_LEN8, "unicodestring8": K_LEN8,
    "decimalnl_short": K_LINE, "decimalnl_long": K_LINE, "floatnl": K_LINE,
    "stringnl": K_LINE, "stringnl_noescape": K_LINE, "unicodestringnl": K_LINE,
    "stringnl_noescape_pair": K_LINE2,
}


def _utf8(raw) -> str:
    # "surrogatepass": pickle writes lone surrogates this way, and reads them back.
    return str(raw, "utf-8", "surrogatepass")


def _long(raw) -> int:
    return int.from_bytes(raw, "little", signed=True)


def _decimal_short(line: bytes) -> int:
    # Protocol 0 spells True and False as INT 01 / 00 (pickletools' and pickle's hack).
    if line == b"00":
        return False
    if line == b"01":
        return True
    return int(line)


def _decimal_long(line: bytes) -> int:
    return int(line[:-1] if line[-1:] == b"L" else line)


def _quoted_string(line: bytes) -> str:
    # STRING: a Python 2 repr, quoted, with backslash escapes.
    if len(line) < 2 or line[:1] not in (b'"', b"'") or line[-1:] != line[:1]:
        raise ValueError("string argument is not quoted")
    return codecs.escape_decode(line[1:-1])[0].decode("ascii")


# Decoders of the payload (LEN*) formats; they take any buffer and make exactly one copy.
_CONVERT = {
    "bytes1": bytes, "bytes4": bytes, "bytes8": bytes, "bytearray8": bytearray,
    "unicodestring1": _utf8, "unicodestring4": _utf8, "unicodestring8": _utf8,
    "string1": lambda raw: str(raw, "latin-1"), "string4": lambda raw: str(raw, "latin-1"),
    "long1": _long, "long4": _long,
}
# Long integers are never left as payloads: their value is what a reader wants.
_PAYLOAD_TYPES = {name: (bytearray if name == "bytearray8" else
                         bytes if name.startswith("bytes") else str)
                  for name in _CONVERT if not name.startswith("long")}

# Decoders of the line formats; they take the line without its newline.
_LINE = {
    "decimalnl_short": _decimal_short,
    "decimalnl_long": _decimal_long,
    "floatnl": float,
    "stringnl": _quoted_string,
    "stringnl_noescape": lambda line: line.decode("ascii"),  # PERSID, as the unpickler reads it
    "unicodestringnl": lambda line: str(line, "raw-unicode-escape"),
    "stringnl_noescape_pair": lambda line: line.decode("utf-8"),  # GLOBAL/INST, each line
}

_U2 = struct.Struct("<H").unpack_from
_I4 = struct.Struct("<i").unpack_from
_U4 = struct.Struct("<I").unpack_from
_U8 = struct.Struct("<Q").unpack_from
_F8 = struct.Struct(">d").unpack_from  # BINFLOAT is big-endian, unlike every other field


def _table() -> list:
    # One entry per opcode byte: (opcode, kind, decoder), or None for an unknown byte.
    table: list = [None] * 256
    for op in OPCODES:
        kind = _KIND_OF_ARG[op.arg_name]
        if op.role is Role.STOP:
            kind = K_STOP
        elif op.role is Role.FRAME:
            kind = K_FRAME
        decode = _CONVERT.get(op.arg_name) or _LINE.get(op.arg_name)
        table[op.code] = (op, kind, decode)
    return table


_TABLE = _table()


# The decoding loop's views of the table, as plain lists indexed by the opcode byte.  The loop
# decodes the frequent, fixed-shape kinds inline and hands everything else (long payloads,
# lines, frames, unknown bytes) to ``_decode_one``, the careful path; ``K_SLOW`` marks those.
# Two more inline kinds exist only for inputs whose slices are bytes (bytes, mmap): a short
# str decoded by the bytes.decode method, and short bytes taken as sliced, without a call.
K_STR1, K_BYTES1, K_SLOW = 253, 254, 255
_INLINE = {K_NONE, K_U1, K_LEN1, K_I4, K_U4, K_U2, K_F8, K_STOP}
_OPS = [entry and entry[0] for entry in _TABLE]
_DECODERS = [entry and entry[2] for entry in _TABLE]
_KINDS = [entry[1] if entry and entry[1] in _INLINE else K_SLOW for entry in _TABLE]
_KINDS_BYTES = [K_STR1 if entry and entry[0].arg_name == "unicodestring1" else
                K_BYTES1 if entry and entry[0].arg_name == "bytes1" else kind
                for entry, kind in zip(_TABLE, _KINDS)]
# With a threshold under 255 even a 1-byte length may call for a Payload: all careful path.
_KINDS_SMALL_THRESHOLD = [K_SLOW if kind == K_LEN1 else kind for kind in _KINDS]


# --- errors -------------------------------------------------------------------------------

def _truncated(op: Opcode, offset: int, what: str) -> TruncatedPickleError:
    return TruncatedPickleError(
        f"pickle data was truncated: {op.name} at byte {offset} {what}", offset)


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count} bytes"


def _malformed(op: Opcode, offset: int, what: str) -> MalformedPickleError:
    return MalformedPickleError(f"malformed pickle: {op.name} at byte {offset} {what}", offset)


# --- input buffers ------------------------------------------------------------------------

def _buffers(data):
    """Returns ``(buf, find_newline)`` for any bytes-like input, without copying it.

    ``buf`` is indexed (giving ints), sliced and given to ``struct``.  A bytearray is sliced
    through a memoryview, so that an argument is copied once (by its decoder), not twice.
    ``find_newline(pos)`` finds the next b"\\n", which a memoryview cannot do by itself.
    """
    if isinstance(data, (bytes, mmap.mmap)):
        return data, lambda pos: data.find(b"\n", pos)
    if isinstance(data, bytearray):
        return memoryview(data), lambda pos: data.find(b"\n", pos)
    if isinstance(data, str):
        raise TypeError("read_ops() needs a bytes-like object, not str")
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")  # indexing must give unsigned bytes, whatever the input's items

    def find_newline(pos: int) -> int:
        # Look in chunks that double in size: lines are short, and a hostile stream with one
        # enormous line still costs only linear time.
        size = 64
        while pos < len(view):
            found = bytes(view[pos:pos + size]).find(b"\n")
            if found >= 0:
                return pos + found
            pos += size
            size *= 2
        return -1

    return view, find_newline


# --- the decoder --------------------------------------------------------------------------

def read_ops(data, start: int = 0, *, until_stop: bool = True, copy_large: bool = False,
             threshold: int = LARGE, plain: bool = False) -> Iterator[Op]:
    """Decodes the pickle that starts at ``start`` in ``data``, one ``Op`` per opcode.

    Stops just after STOP.  With ``until_stop=False`` it goes on through any further pickles
    concatenated behind it, to the end of ``data`` (which must then end just after a STOP).
    Byte and string arguments longer than ``threshold`` bytes come back as ``Payload``
    placeholders unless ``copy_large`` is true.  ``plain=True`` yields plain tuples in
    ``Op``'s field order, which is markedly faster for a loop that unpacks them at once.

    Raises ``TruncatedPickleError`` if the data ends inside a pickle and
    ``MalformedPickleError`` if it holds something no unpickler can read; the opcodes before
    the bad one have been yielded by then.
    """
    if start < 0:
        raise ValueError("start must not be negative")
    buf, find_newline = _buffers(data)
    if start > len(buf):
        raise ValueError("start lies past the end of the data")
    limit = None if copy_large else threshold
    # The generator is made here, after the checks, so that bad arguments fail at the call.
    ops = _decode(buf, find_newline, start, until_stop, limit)
    # map() builds each Op with tuple's C constructor: cheaper than building it in the loop.
    return ops if plain else map(Op, ops)


def _decode(buf, find_newline, pos, until_stop, limit):
    # The hot loop.  Locals, not globals, and small-int kinds compared most frequent first
    # (a large share of any pickle is argument-less opcodes, memo bytes and short strings):
    # this runs once per opcode, and every name lookup shows.  Bounds are not checked
    # here: running off the end raises IndexError or struct.error, a bad str raises
    # ValueError, and the handler below asks the careful path to say what went wrong.
    n = len(buf)
    ops, decoders = _OPS, _DECODERS
    if limit is not None and limit < 255:
        kinds = _KINDS_SMALL_THRESHOLD
    else:
        kinds = _KINDS_BYTES if isinstance(buf, (bytes, mmap.mmap)) else _KINDS
    none, u1, len1, i4, u4, u2, f8, stop = K_NONE, K_U1, K_LEN1, K_I4, K_U4, K_U2, K_F8, K_STOP
    str1, bytes1 = K_STR1, K_BYTES1
    unpack_i4, unpack_u4, unpack_u2, unpack_f8 = _I4, _U4, _U2, _F8
    try:
        while True:
            code = buf[pos]
            kind = kinds[code]
            if kind == none:
                yield (pos, ops[code], None, pos + 1)
                pos += 1
            elif kind == u1:
                yield (pos, ops[code], buf[pos + 1], pos + 2)
                pos += 2
            elif kind == str1:
                end = pos + 2 + buf[pos + 1]
                if end > n:
                    raise IndexError  # a slice would quietly come back short
                # "surrogatepass": pickle writes lone surrogates this way, and reads them back.
                yield (pos, ops[code], buf[pos + 2:end].decode("utf-8", "surrogatepass"), end)
                pos = end
            elif kind == bytes1:
                end = pos + 2 + buf[pos + 1]
                if end > n:
                    raise IndexError
                yield (pos, ops[code], buf[pos + 2:end], end)
                pos = end
            elif kind == len1:
                end = pos + 2 + buf[pos + 1]
                if end > n:
                    raise IndexError  # a slice would quietly come back short
                yield (pos, ops[code], decoders[code](buf[pos + 2:end]), end)
                pos = end
            elif kind == i4:
                yield (pos, ops[code], unpack_i4(buf, pos + 1)[0], pos + 5)
                pos += 5
            elif kind == u4:
                yield (pos, ops[code], unpack_u4(buf, pos + 1)[0], pos + 5)
                pos += 5
            elif kind == u2:
                yield (pos, ops[code], unpack_u2(buf, pos + 1)[0], pos + 3)
                pos += 3
            elif kind == f8:
                yield (pos, ops[code], unpack_f8(buf, pos + 1)[0], pos + 9)
                pos += 9
            elif kind == stop:
                yield (pos, ops[code], None, pos + 1)
                pos += 1
                if until_stop or pos == n:
                    return
            else:
                op, arg, end = _decode_one(buf, find_newline, pos, limit)
                yield (pos, op, arg, end)
                pos = end
    except (IndexError, ValueError, struct.error):
        pass
    # Only a failed opcode gets here: the careful path decodes it again and raises the
    # precise error.  It cannot succeed where the fast path failed; if it ever did, say so.
    _decode_one(buf, find_newline, pos, limit)
    raise MalformedPickleError(f"malformed pickle: cannot decode the opcode at byte {pos}", pos)


def _decode_one(buf, find_newline, pos: int, limit: int | None) -> tuple[Opcode, Any, int]:
    """Decodes the one opcode at ``pos``, checking everything: ``(opcode, arg, end)``."""
    n = len(buf)
    if pos >= n:
        raise TruncatedPickleError(
            f"pickle data was truncated: it ends at byte {pos} without a STOP opcode", pos)
    code = buf[pos]
    entry = _TABLE[code]
    if entry is None:
        raise MalformedPickleError(
            f"malformed pickle: unknown opcode 0x{code:02x} at byte {pos}", pos)
    op, kind, decode = entry
    p = pos + 1

    if kind == K_NONE or kind == K_STOP:
        return op, None, p

    if kind in _FIXED:
        size, unpack = _FIXED[kind]
        if p + size > n:
            raise _truncated(op, pos, f"needs {_bytes(size)} of argument, {n - p} remain")
        arg = unpack(buf, p)[0]
        if kind == K_FRAME and arg > n - p - size:
            # The unpickler reads the whole frame at once, and fails if it is not all there.
            raise _truncated(op, pos, f"declares a frame of {arg} bytes but only "
                                      f"{n - p - size} remain")
        return op, arg, p + size

    if kind in _LENGTH:
        size, unpack = _LENGTH[kind]
        if p + size > n:
            raise _truncated(op, pos, f"needs {_bytes(size)} of length, {n - p} remain")
        length = unpack(buf, p)[0]
        p += size
        if length < 0:
            raise _malformed(op, pos, f"declares a negative length ({length})")
        # Checked before anything is sliced: a stream cannot make us allocate more than its
        # own size, whatever length it declares.
        if length > n - p:
            raise _truncated(op, pos, f"declares {length} bytes but only {n - p} remain")
        if limit is not None and length > limit and op.arg_name in _PAYLOAD_TYPES:
            return op, Payload(p, length, op.arg_name), p + length
        try:
            return op, decode(buf[p:p + length]), p + length
        except ValueError as exc:  # UnicodeDecodeError is a ValueError
            raise _malformed(op, pos, f"has an undecodable argument: {exc}") from None

    # K_LINE, K_LINE2: newline-terminated text.
    lines = []
    for _ in range(2 if kind == K_LINE2 else 1):
        nl = find_newline(p)
        if nl < 0:
            raise _truncated(op, pos, "has no newline to end its argument")
        try:
            lines.append(decode(bytes(buf[p:nl])))
        except ValueError as exc:
            raise _malformed(op, pos, f"has an undecodable argument: {exc}") from None
        p = nl + 1
    return op, (tuple(lines) if kind == K_LINE2 else lines[0]), p


_FIXED = {K_U1: (1, struct.Struct("<B").unpack_from), K_U2: (2, _U2), K_I4: (4, _I4),
          K_U4: (4, _U4), K_U8: (8, _U8), K_F8: (8, _F8), K_FRAME: (8, _U8)}
_LENGTH = {K_LEN1: (1, struct.Struct("<B").unpack_from), K_LEN4: (4, _U4),
           K_LEN4S: (4, _I4), K_LEN8: (8, _U8)}


def pickle_spans(data, start: int = 0) -> Iterator[tuple[int, int]]:
    """Yields ``(start, end)`` of each pickle concatenated in ``data``, to its end.

    Such data comes from calling ``pickle.dump`` repeatedly on one file.  Raises as
    ``read_ops`` does if the data ends inside a pickle.
    """
    first = start
    if start == len(memoryview(data).cast("B")):
        return
    for offset, opcode, _, end in read_ops(data, start, until_stop=False, plain=True):
        if opcode.role is Role.STOP:
            yield first, end
            first = end
