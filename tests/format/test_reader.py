"""The decoder against pickletools, on pickles the standard library writes, and on bad input."""

from __future__ import annotations

import array
import collections
import copyreg
import datetime
import decimal
import math
import mmap
import pickle
import pickletools
import random
import tracemalloc

import pytest

from mason.errors import MalformedPickleError, TruncatedPickleError
from mason.format.opcodes import BY_NAME
from mason.format.reader import LARGE, Op, Payload, pickle_spans, read_ops

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self):
        self.a, self.b = 1, [2]


class OldStyleArgs:
    # __getinitargs__ makes protocols 0 and 1 use INST / OBJ.
    def __init__(self, *args):
        self.args = args

    def __getinitargs__(self):
        return self.args


class KwOnly:
    def __new__(cls, *, flag):
        self = super().__new__(cls)
        self.flag = flag
        return self

    def __getnewargs_ex__(self):
        return (), {"flag": self.flag}


def _objects():
    recursive = [1, 2]
    recursive.append(recursive)
    shared = ("shared", 1)
    return [
        None, True, False, 0, 1, -1, 255, 256, 65535, 65536, -2**31, 2**31 - 1, 2**31,
        2**64, -2**200, 1.5, -0.0, math.inf, math.nan, 1e300,
        "", "ascii", "é", "snowman \u2603", "\ud800 lone surrogate", "x" * 300,
        "y" * (LARGE + 1), "quote ' and \" and \\ backslash\n newline",
        b"", b"\x00\xff", b"z" * 300, b"w" * (LARGE + 10),
        bytearray(b"abc"), bytearray(LARGE + 1),
        (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), [], [1, [2, [3, [4]]]], {}, {"a": 1, 2: "b"},
        {(1, 2): frozenset({3})}, set(), {1, 2, 3}, frozenset(), frozenset({"x"}),
        [shared, shared, shared], recursive,
        collections.OrderedDict(a=1), collections.deque([1, 2]), collections.Counter("aab"),
        datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.date(2020, 2, 29),
        decimal.Decimal("1.25"), Point(1, "two"), Slotted(), OldStyleArgs(1, "a"),
        KwOnly(flag=True), Point, len, pickle.loads, slice(1, 2), range(3), complex(1, 2),
        list(range(2000)), {str(i): i for i in range(2000)}, set(range(1500)),
        Ellipsis, NotImplemented, type(None),
    ]


def _genops_view(data):
    """pickletools' reading, with GLOBAL/INST as (module, name) pairs like read_ops."""
    out = []
    for opcode, arg, pos in pickletools.genops(data):
        if opcode.name in ("GLOBAL", "INST"):
            arg = tuple(arg.split(" ", 1))
        out.append((pos, opcode.name, _norm(arg)))
    return out


def _norm(arg):
    # NaN is not equal to itself; compare floats by their repr.
    return ("float", repr(arg)) if isinstance(arg, float) else arg


def _read_view(data, **kwargs):
    return [(op.offset, op.opcode.name, _norm(op.arg)) for op in read_ops(data, **kwargs)]


def _pickles(protocols=PROTOCOLS):
    """(protocol, object, pickle) for every object that the protocol can pickle."""
    for proto in protocols:
        for obj in _objects():
            try:
                yield proto, obj, pickle.dumps(obj, protocol=proto)
            except TypeError:  # __slots__ without __getstate__, keyword-only __new__: < 2
                assert proto < 2


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_matches_pickletools_on_every_object(proto):
    count = 0
    for _, obj, data in _pickles([proto]):
        assert _read_view(data, copy_large=True) == _genops_view(data), (proto, obj)
        count += 1
    assert count >= len(_objects()) - 2


def test_matches_pickletools_on_one_big_pickle_of_everything():
    for proto in PROTOCOLS:
        objects = [obj for _, obj, _ in _pickles([proto])]
        data = pickle.dumps(objects, protocol=proto)
        assert _read_view(data, copy_large=True) == _genops_view(data)


def test_ops_are_contiguous_and_end_at_stop():
    for proto, obj, data in _pickles():
        ops = list(read_ops(data))
        assert ops[0].offset == 0
        for before, after in zip(ops, ops[1:]):
            assert before.end == after.offset
        assert ops[-1].opcode.name == "STOP" and ops[-1].end == len(data)


def test_op_is_a_tuple_with_named_fields():
    data = pickle.dumps(7, protocol=2)
    ops = list(read_ops(data))
    assert ops[1] == (2, BY_NAME["BININT1"], 7, 4)
    assert (ops[1].offset, ops[1].opcode.name, ops[1].arg, ops[1].end) == (2, "BININT1", 7, 4)
    assert repr(ops[1]) == "Op(offset=2, opcode=BININT1, arg=7, end=4)"
    assert Op._fields == ("offset", "opcode", "arg", "end")
    assert list(read_ops(data, plain=True)) == [tuple(op) for op in ops]
    assert pickle.loads(pickle.dumps(ops[1])) == ops[1]


def test_protocol_0_lines():
    # Python 2 pickles: quoted STRING with escapes, INT 00/01 for bools, LONG with L.
    data = (b"(S'a\\n\\'b'\nI01\nI00\nI-12\nL123456789012345678901234L\nF-1.25\n"
            b"Vsnow \\u2603\nPpid-1\ntp0\n.")
    args = [op.arg for op in read_ops(data)]
    assert args == [None, "a\n'b", True, False, -12, 123456789012345678901234, -1.25,
                    "snow \u2603", "pid-1", None, 0, None]
    assert _read_view(data) == _genops_view(data)


def test_global_and_inst_name_pairs_are_read_as_the_unpickler_reads_them():
    # pickletools undoes backslash escapes in GLOBAL; the unpickler does not, and the names
    # it imports are what matter.
    data = b"cmy\\x41mod\nname\n."
    (op, _) = read_ops(data)
    assert op.arg == ("my\\x41mod", "name")
    data = b"(S'ls'\nios\nsystem\n."
    assert [op.arg for op in read_ops(data)][2] == ("os", "system")


def test_extension_codes_and_persistent_ids():
    copyreg.add_extension(__name__, "Point", 0xF0)
    copyreg.add_extension(__name__, "Slotted", 0x1F00)
    copyreg.add_extension(__name__, "OldStyleArgs", 0x7FFF0000)
    try:
        data = pickle.dumps([Point, Slotted, OldStyleArgs], protocol=2)
        names = [(op.opcode.name, op.arg) for op in read_ops(data)
                 if op.opcode.name.startswith("EXT")]
        assert names == [("EXT1", 0xF0), ("EXT2", 0x1F00), ("EXT4", 0x7FFF0000)]
        assert _read_view(data) == _genops_view(data)
    finally:
        copyreg.remove_extension(__name__, "Point", 0xF0)
        copyreg.remove_extension(__name__, "Slotted", 0x1F00)
        copyreg.remove_extension(__name__, "OldStyleArgs", 0x7FFF0000)

    class Persisting(pickle.Pickler):
        def persistent_id(self, obj):
            return f"id-{obj}" if isinstance(obj, str) and obj.startswith("ref") else None

    import io
    for proto in PROTOCOLS:
        out = io.BytesIO()
        Persisting(out, protocol=proto).dump(["ref1", "plain"])
        data = out.getvalue()
        assert _read_view(data) == _genops_view(data)
        assert any(op.opcode.persistent for op in read_ops(data))


def test_out_of_band_buffers():
    buffers = []
    data = pickle.dumps([pickle.PickleBuffer(b"ro"), pickle.PickleBuffer(bytearray(b"rw"))],
                        protocol=5, buffer_callback=buffers.append)
    names = [op.opcode.name for op in read_ops(data)]
    assert names.count("NEXT_BUFFER") == 2 and names.count("READONLY_BUFFER") == 1
    assert _read_view(data) == _genops_view(data)


# --- large payloads -----------------------------------------------------------------------

@pytest.mark.parametrize("value", [b"b" * (LARGE + 1), "s" * (LARGE + 1), "\u2603" * 2000,
                                   bytearray(b"a" * (LARGE + 1))])
def test_large_payloads_are_placeholders(value):
    for proto in range(1, 6):
        if isinstance(value, bytearray) and proto < 5:
            continue
        if isinstance(value, bytes) and proto < 3:
            continue  # protocols 0-2 pickle bytes through a REDUCE of a latin-1 str
        data = pickle.dumps(value, protocol=proto)
        payloads = [op.arg for op in read_ops(data) if isinstance(op.arg, Payload)]
        assert len(payloads) == 1
        payload = payloads[0]
        assert payload.value(data) == value
        assert type(payload.value(data)) is type(value) is payload.type
        assert data[payload.offset:payload.offset + payload.length] == (
            value.encode("utf-8") if isinstance(value, str) else value)
        copied = [op.arg for op in read_ops(data, copy_large=True)
                  if isinstance(op.arg, type(value))]
        assert copied == [value]


def test_threshold_is_adjustable_and_payload_length_is_exact():
    data = pickle.dumps(["abc", b"xy" * 100], protocol=4)
    payloads = [op.arg for op in read_ops(data, threshold=2) if isinstance(op.arg, Payload)]
    assert [p.value(data) for p in payloads] == ["abc", b"xy" * 100]
    strings = [op.arg for op in read_ops(data, threshold=3)
               if op.opcode.name == "SHORT_BINUNICODE"]
    assert strings == ["abc"]  # not above the threshold
    # Long integers are always decoded: the value is what a reader wants from them.
    data = pickle.dumps(2 ** (8 * LARGE * 2), protocol=2)
    assert [op.arg for op in read_ops(data)][1] == 2 ** (8 * LARGE * 2)


def test_huge_payload_is_skipped_not_copied():
    big = bytes(50_000_000)
    data = pickle.dumps(big, protocol=5)
    del big
    tracemalloc.start()
    try:
        ops = list(read_ops(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ops[1].opcode.name == "BINBYTES"
    assert ops[1].arg == Payload(ops[1].offset + 5, 50_000_000, "bytes4")
    assert peak < 100_000


# --- input kinds --------------------------------------------------------------------------

def test_every_bytes_like_input_gives_the_same_ops(tmp_path):
    data = pickle.dumps(_objects(), protocol=5)
    expected = _read_view(data)
    assert any(isinstance(arg, Payload) for _, _, arg in expected)
    assert _read_view(bytearray(data)) == expected
    assert _read_view(memoryview(data)) == expected
    assert _read_view(memoryview(bytearray(data))) == expected
    assert _read_view(memoryview(b"pad" + data)[3:]) == expected
    path = tmp_path / "data.pkl"
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert _read_view(m) == expected
    for kind in (bytearray, memoryview):
        for op in read_ops(kind(data)):
            assert type(op.arg) in (type(None), bool, int, float, str, bytes, bytearray, tuple,
                                    Payload)


def test_protocol_0_lines_through_memoryview():
    data = pickle.dumps({"k": [1.5, "v" * 500]}, protocol=0)
    assert list(read_ops(memoryview(data))) == list(read_ops(data))
    # Items of other formats are read as their bytes; signed ones must not give negative codes.
    signed = pickle.dumps({"k": [1.5, "v" * 500]}, protocol=4)
    assert signed[0] >= 0x80
    for view in (array.array("b", signed), memoryview(signed).cast("c"),
                 memoryview(array.array("b", signed))):
        assert list(read_ops(view)) == list(read_ops(signed))
    with pytest.raises(TypeError):
        read_ops(data.decode("latin-1"))


def test_start_offset_and_concatenated_pickles():
    parts = [pickle.dumps(obj, protocol=proto) for proto, obj in enumerate([1, "a", [2], {3: 4},
                                                                            (5,), b"6"])]
    data = b"".join(parts)
    spans = list(pickle_spans(data))
    ends = [sum(map(len, parts[:i + 1])) for i in range(len(parts))]
    assert spans == list(zip([0] + ends[:-1], ends))
    second = list(read_ops(data, spans[1][0]))
    assert second[0].offset == spans[1][0] and second[-1].end == spans[1][1]
    everything = list(read_ops(data, until_stop=False))
    assert sum(op.opcode.name == "STOP" for op in everything) == len(parts)
    assert list(pickle_spans(data, len(data))) == []
    with pytest.raises(TruncatedPickleError):
        list(pickle_spans(data + parts[0][:-1]))
    with pytest.raises(ValueError):
        read_ops(data, len(data) + 1)


# --- bad input ----------------------------------------------------------------------------

def test_every_truncation_raises_truncated_with_an_offset():
    for proto in PROTOCOLS:
        data = pickle.dumps([1, "two", b"three", 4.0, (5, 6), {"s": {7}}, 2**70, None], proto)
        for cut in range(len(data)):
            with pytest.raises(TruncatedPickleError) as info:
                list(read_ops(data[:cut]))
            assert isinstance(info.value, EOFError)
            assert 0 <= info.value.offset <= cut
            assert f"byte {info.value.offset}" in str(info.value)


@pytest.mark.parametrize("data, name, offset, kind", [
    (b"\x80\x05\x8e" + (2**62).to_bytes(8, "little"), "BINBYTES8", 2, TruncatedPickleError),
    (b"\x80\x05\x8d" + (2**64 - 1).to_bytes(8, "little") + b"ab", "BINUNICODE8", 2,
     TruncatedPickleError),
    (b"\x80\x05\x96" + (2**40).to_bytes(8, "little"), "BYTEARRAY8", 2, TruncatedPickleError),
    (b"X\xff\xff\xff\xffabc.", "BINUNICODE", 0, TruncatedPickleError),
    (b"\x80\x02\x8b\xff\xff\xff\xff.", "LONG4", 2, MalformedPickleError),
    (b"T\xfe\xff\xff\xff.", "BINSTRING", 0, MalformedPickleError),
    (b"\x80\x04\x95" + (2**50).to_bytes(8, "little") + b"N.", "FRAME", 2, TruncatedPickleError),
    (b"\x80\x04\x8c\x02\xff\xfe.", "SHORT_BINUNICODE", 2, MalformedPickleError),
    (b"X\x02\x00\x00\x00\xc3(.", "BINUNICODE", 0, MalformedPickleError),
    (b"Iabc\n.", "INT", 0, MalformedPickleError),
    (b"(S'unterminated\n.", "STRING", 1, MalformedPickleError),
    (b"F1.0.0\n.", "FLOAT", 0, MalformedPickleError),
    (b"c\xff\xfe\nname\n.", "GLOBAL", 0, MalformedPickleError),
    (b"cos\nsystem", "GLOBAL", 0, TruncatedPickleError),
    (b"N\xff.", None, 1, MalformedPickleError),
])
def test_bad_streams_raise_naming_opcode_and_offset(data, name, offset, kind):
    with pytest.raises(kind) as info:
        list(read_ops(data))
    assert type(info.value) is kind
    assert info.value.offset == offset
    assert f"byte {offset}" in str(info.value)
    if name:
        assert name in str(info.value)
    else:
        assert "unknown opcode 0xff" in str(info.value)


def test_declared_lengths_never_allocate_beyond_the_input():
    tracemalloc.start()
    try:
        for head in (b"\x8e", b"\x8d", b"\x96"):
            with pytest.raises(TruncatedPickleError):
                list(read_ops(b"\x80\x05" + head + (2**40).to_bytes(8, "little") + b"x" * 100))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000


def test_ops_before_the_error_are_yielded():
    data = pickle.dumps([1, 2, 3], protocol=2)[:-3] + b"\xff"
    seen = []
    with pytest.raises(MalformedPickleError):
        for op in read_ops(data):
            seen.append(op.opcode.name)
    assert seen[:3] == ["PROTO", "EMPTY_LIST", "BINPUT"]


@pytest.mark.parametrize("seed", range(6))
def test_random_corruption_only_raises_mason_errors(seed):
    rnd = random.Random(seed)
    samples = [data for _, _, data in _pickles([seed])][seed::5]
    samples.append(pickle.dumps(_objects()[:40], protocol=seed))
    for data in samples:
        for _ in range(300):
            corrupt = bytearray(data)
            for _ in range(rnd.randint(1, 4)):
                corrupt[rnd.randrange(len(corrupt))] = rnd.randrange(256)
            if rnd.random() < 0.3:
                del corrupt[rnd.randrange(len(corrupt)):]
            try:
                for op in read_ops(bytes(corrupt), threshold=rnd.choice([0, 16, LARGE])):
                    assert op.end <= len(corrupt)
            except MalformedPickleError as exc:
                assert exc.offset is not None and 0 <= exc.offset <= len(corrupt)


def test_random_bytes_only_raise_mason_errors():
    rnd = random.Random(1234)
    for _ in range(3000):
        junk = bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 40)))
        try:
            list(read_ops(junk, until_stop=rnd.random() < 0.5))
        except MalformedPickleError:
            pass
