"""Hand-assembled pickles for the hostile tests: each uses only names that a preset admits
(plus, where the point is that the policy still applies inside an allowed object, one name
that it does not), so that what refuses them is mason's checks, not a missing name."""

from __future__ import annotations

import struct

MARK, STOP, TUPLE, TUPLE1, TUPLE2, TUPLE3 = b"(", b".", b"t", b"\x85", b"\x86", b"\x87"
REDUCE, BUILD, EMPTY_TUPLE, EMPTY_DICT, EMPTY_LIST = b"R", b"b", b")", b"}", b"]"
NONE, NEWTRUE, NEWFALSE, APPENDS, SETITEMS, DICT = b"N", b"\x88", b"\x89", b"e", b"u", b"d"
MEMOIZE, BINGET, POP = b"\x94", b"h", b"0"


def proto(n: int = 4) -> bytes:
    return b"\x80" + bytes([n])


def s(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw if len(raw) < 256 else \
        b"X" + struct.pack("<I", len(raw)) + raw


def b(raw: bytes) -> bytes:
    return b"C" + bytes([len(raw)]) + raw if len(raw) < 256 else \
        b"B" + struct.pack("<I", len(raw)) + raw


def i(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    return b"J" + struct.pack("<i", n)


def g(module: str, name: str) -> bytes:
    return s(module) + s(name) + b"\x93"


def call(func: bytes, *args: bytes) -> bytes:
    return func + MARK + b"".join(args) + TUPLE + REDUCE


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def dtype(typestr: str, state: bytes | None = None) -> bytes:
    """numpy.dtype(typestr, False, True), then BUILD with ``state`` (a pickled tuple)."""
    made = call(g("numpy", "dtype"), s(typestr), NEWFALSE, NEWTRUE)
    return made + (state + BUILD if state is not None else b"")


def dtype_state(byteorder="<", subarray=NONE, names=NONE, fields=NONE, elsize=-1,
                alignment=-1, flags=0) -> bytes:
    return tup(i(3), s(byteorder), subarray, names, fields, i(elsize), i(alignment), i(flags))


def system(command: str) -> bytes:
    return call(g("os", "system"), s(command))


def array_from_state(dtype_pickle: bytes, shape: tuple, raw: bytes | list) -> bytes:
    """numpy's own pickle of an array: _reconstruct(ndarray, (0,), b'b') then BUILD with
    (1, shape, dtype, False, raw)."""
    made = call(g("numpy._core.multiarray", "_reconstruct"), g("numpy", "ndarray"),
                tup(i(0)), b(b"b"))
    shape_p = tup(*(i(n) for n in shape))
    data = b(raw) if isinstance(raw, bytes) else EMPTY_LIST + MARK + b"".join(raw) + APPENDS
    return made + tup(i(1), shape_p, dtype_pickle, NEWFALSE, data) + BUILD


def whole(body: bytes) -> bytes:
    return proto(4) + body + STOP
