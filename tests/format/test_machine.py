"""The symbolic machine: what it builds, names and calls, and how it takes hostile streams."""

from __future__ import annotations

import collections
import copyreg
import datetime
import decimal
import io
import os
import pickle
import random
import tracemalloc

import pytest

from mason.errors import MalformedPickleError, TruncatedPickleError
from mason.format import machine
from mason.format.machine import (
    Buffer, Build, Call, Extend, Extension, Global, PersistentRef, Unhashable,
    UnresolvedGlobal, find_globals, simulate,
)
from mason.format.opcodes import BY_NAME
from mason.format.reader import LARGE, Payload, read_ops

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


class Bag(list):
    pass


class Table(dict):
    pass


class Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _data_objects():
    """Objects made of builtin containers and scalars only (bytes need protocol 3)."""
    recursive = [1]
    recursive.append(recursive)
    shared = ["shared"]
    return [
        None, True, False, 0, -1, 2**100, 1.5, "", "text", "\u2603", "x" * (LARGE + 1),
        (), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), ((1, (2, (3,))),), [], [1, [2, [3]]],
        {}, {"a": 1, (1, 2): [3]}, set(), {1, "b"}, frozenset({(1, 2)}),
        [shared, shared, {"k": shared}], list(range(3000)), {str(i): i for i in range(1500)},
    ]


def _real_objects():
    return [
        collections.OrderedDict(a=1, b=[2]), collections.Counter("abca"), collections.deque([1]),
        datetime.datetime(2024, 5, 6, 7, 8, 9), decimal.Decimal("3.14"), Point(1, [2]),
        Bag([1, 2, 3]), Table(k="v"), complex(1, 2), range(5), slice(1, 9, 2), b"bytes",
        bytearray(b"mutable"), {datetime.date(2020, 1, 1): Point("a", "b")}, len, Point,
    ]


class RecordingUnpickler(pickle.Unpickler):
    """The real C unpickler, noting every find_class call."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.asked = []

    def find_class(self, module, name):
        self.asked.append((module, name))
        return super().find_class(module, name)


def _same_shape(model, real, data):
    """Whether the machine's value models the real object (builtin containers only)."""
    seen = {}
    todo = [(model, real)]
    while todo:
        model, real = todo.pop()
        if isinstance(model, Payload):
            model = model.value(data)
        if id(model) in seen:
            if seen[id(model)] is not real:
                return False
            continue
        seen[id(model)] = real
        if type(model) is not type(real):
            return False
        if isinstance(real, (list, tuple)):
            if len(model) != len(real):
                return False
            todo.extend(zip(model, real))
        elif isinstance(real, dict):
            if model.keys() != real.keys():
                return False
            todo.extend((model[key], real[key]) for key in real)
        elif model != real:
            return False
    return True


def _key(node):
    # Nodes compare by identity, as the objects they stand for: compare their fields.
    return (node.module, node.name, node.offset, node.opcode_name)


# --- faithful to the unpickler ------------------------------------------------------------

@pytest.mark.parametrize("proto", PROTOCOLS)
def test_plain_data_is_modelled_by_real_containers(proto):
    for obj in _data_objects():
        if proto < 4 and isinstance(obj, (set, frozenset)):
            continue  # before protocol 4, sets are pickled as calls of set / frozenset
        data = pickle.dumps(obj, protocol=proto)
        run = simulate(data)
        assert run.ok and run.globals == [] and run.calls == [], (proto, obj)
        assert _same_shape(run.value, pickle.loads(data), data), (proto, obj)
        assert run.end == len(data)
        assert run.protocol == (proto if proto >= 2 else 0)


def test_shared_and_recursive_references_keep_identity():
    shared = ["s"]
    recursive = [shared, shared]
    recursive.append(recursive)
    for proto in PROTOCOLS:
        value = simulate(pickle.dumps(recursive, protocol=proto)).value
        assert value[0] is value[1] and value[2] is value


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_globals_are_exactly_what_the_unpickler_asks_for(proto):
    for obj in _data_objects() + _real_objects():
        data = pickle.dumps(obj, protocol=proto)
        unpickler = RecordingUnpickler(data)
        unpickler.load()
        run = simulate(data)
        assert run.ok
        assert [(g.module, g.name) for g in run.globals] == unpickler.asked, (proto, obj)
        assert list(map(_key, find_globals(data))) == list(map(_key, run.globals))
        for node in run.globals:
            assert data[node.offset] == BY_NAME[node.opcode_name].code
            assert node.dotted == f"{node.module}.{node.name}"
        called = [op.offset for op in read_ops(data) if op.opcode.name in
                  ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST")]
        assert [call.offset for call in run.calls] == called


def test_calls_and_effects_are_recorded_on_their_targets():
    data = pickle.dumps(Point(1, [2]), protocol=2)
    run = simulate(data)
    point = run.value
    assert isinstance(point, Call) and point.kind == "NEWOBJ"
    assert point.func.dotted == f"{__name__}.Point" and point.args == ()
    (build,) = point.effects
    assert isinstance(build, Build) and build.target is point
    assert build.state == {"x": 1, "y": [2]}
    assert run.effects == [build]

    bag = simulate(pickle.dumps(Bag([1, 2, 3]), protocol=4)).value
    (extend,) = [e for e in bag.effects if isinstance(e, Extend)]
    assert extend.method == "extend" and extend.items == [1, 2, 3]

    table = simulate(pickle.dumps(Table(k="v"), protocol=2)).value
    (setitems,) = [e for e in table.effects if isinstance(e, Extend)]
    assert setitems.method == "__setitem__" and setitems.items == [("k", "v")]


def test_newobj_ex_and_inst_and_obj():
    class_name = f"{__name__}.Point"
    # INST (protocol 0) and OBJ (protocol 1), as old-style pickles make them.
    inst = b"(I1\nI2\ni" + __name__.encode() + b"\nPoint\n."
    run = simulate(inst)
    assert run.value.kind == "INST" and run.value.args == (1, 2)
    assert run.value.func.dotted == class_name and run.value.func.opcode_name == "INST"
    obj = b"(c" + __name__.encode() + b"\nPoint\nK\x01K\x02o."
    run = simulate(obj)
    assert run.value.kind == "OBJ" and run.value.args == (1, 2)
    newobj_ex = (b"\x80\x04c" + __name__.encode() + b"\nPoint\n)}\x8c\x01x\x94K\x01s\x92.")
    run = simulate(newobj_ex)
    assert run.value.kind == "NEWOBJ_EX" and run.value.kwargs == {"x": 1}


def test_persistent_ids_buffers_and_payloads():
    class Persisting(pickle.Pickler):
        def persistent_id(self, obj):
            return f"row-{obj}" if isinstance(obj, int) and obj > 100 else None

    for proto in PROTOCOLS:
        out = io.BytesIO()
        Persisting(out, protocol=proto).dump([1, 500])
        run = simulate(out.getvalue())
        (ref,) = run.persistent
        assert isinstance(ref, PersistentRef) and run.value == [1, ref]
        assert ref.pid == "row-500"

    buffers = []
    data = pickle.dumps([pickle.PickleBuffer(b"ro"), pickle.PickleBuffer(bytearray(b"rw"))],
                        protocol=5, buffer_callback=buffers.append)
    run = simulate(data)
    assert [type(b) for b in run.value] == [Buffer, Buffer]
    assert [(b.index, b.readonly) for b in run.value] == [(0, True), (1, False)]

    big = b"z" * (LARGE * 3)
    data = pickle.dumps({"blob": big}, protocol=5)
    payload = simulate(data).value["blob"]
    assert isinstance(payload, Payload) and payload.value(data) == big


def test_extension_codes():
    copyreg.add_extension(__name__, "Point", 0xABCD)
    try:
        data = pickle.dumps(Point, protocol=2)
    finally:
        copyreg.remove_extension(__name__, "Point", 0xABCD)
    assert b"\x83\xcd\xab" in data
    run = simulate(data)
    (ext,) = run.unresolved  # no longer registered here: the code names nothing we know
    assert isinstance(ext, Extension) and ext.code == 0xABCD and ext.opcode_name == "EXT2"
    copyreg.add_extension(__name__, "Point", 0xABCD)
    try:
        run = simulate(data)
    finally:
        copyreg.remove_extension(__name__, "Point", 0xABCD)
    (node,) = run.globals
    assert node.dotted == f"{__name__}.Point" and node.opcode_name == "EXT2"
    assert simulate(b"\x80\x02\x82\x00.").error is not None  # code 0 is never valid


# --- STACK_GLOBAL -------------------------------------------------------------------------

def test_stack_global_with_module_string_from_the_memo():
    data = pickle.dumps([collections.OrderedDict, collections.Counter], protocol=4)
    assert [op.opcode.name for op in read_ops(data)].count("BINGET") >= 1
    run = simulate(data)
    assert [g.dotted for g in run.globals] == ["collections.OrderedDict", "collections.Counter"]
    assert run.value == run.globals


def test_hostile_stack_global_from_memoized_strings():
    # "os" and "system" are pushed, memoized and dropped; later GETs bring them back.
    data = (b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94" + b"0" * 2 + b"h\x00h\x01\x93"
            b"\x8c\x0aecho pwned\x85R.")
    run = simulate(data)
    assert run.ok
    (system,) = run.globals
    assert (system.module, system.name, system.opcode_name) == ("os", "system", "STACK_GLOBAL")
    assert system.offset == data.index(b"\x93")
    (call,) = run.calls
    assert call.func is system and call.args == ("echo pwned",) and run.value is call
    assert list(map(_key, find_globals(data))) == [_key(system)]


def test_stack_global_of_non_strings_is_unresolved():
    # The module "name" is itself the result of a call: only known when the stream runs.
    data = (b"\x80\x04cbuiltins\nstr\n\x8c\x02os\x85R\x8c\x06system\x93N\x85R.")
    run = simulate(data)
    assert [g.dotted for g in run.globals] == ["builtins.str"]
    (unresolved,) = run.unresolved
    assert isinstance(unresolved, UnresolvedGlobal) and isinstance(unresolved.module, Call)
    assert unresolved.name == "system" and unresolved.offset == data.index(b"\x93")
    assert run.calls[-1].func is unresolved
    run = simulate(b"\x80\x04K\x01K\x02\x93.")
    assert isinstance(run.value, UnresolvedGlobal) and run.value.module == 1


def test_large_string_payloads_still_resolve():
    name = "a" * (LARGE + 5)
    data = b"\x80\x04\x8c\x02os\x58" + len(name).to_bytes(4, "little") + name.encode() + b"\x93."
    assert simulate(data).value.name == name


# --- hostile and broken streams ------------------------------------------------------------

def test_hostile_global_via_protocol_0_and_2():
    for proto in (0, 2):
        data = pickle.dumps(Hostile(), protocol=proto)
        run = simulate(data)
        (system,) = run.globals
        assert system.name == "system" and system.module in ("os", "posix", "nt")
        assert system.opcode_name == "GLOBAL" and data[system.offset:].startswith(b"c")
        assert run.calls[0].func is system and run.calls[0].args == ("echo pwned",)


def test_a_stream_that_calls_then_breaks_keeps_what_it_did():
    data = b"cos\nsystem\n(S'echo pwned'\ntRcsubprocess\nPopen\n(\x00"
    run = simulate(data)
    assert run.value is None and isinstance(run.error, MalformedPickleError)
    assert run.error.offset == len(data) - 1 and run.end == len(data) - 1
    assert "0x00" in str(run.error) and f"byte {len(data) - 1}" in str(run.error)
    assert [g.dotted for g in run.globals] == ["os.system", "subprocess.Popen"]
    assert run.calls[0].func is run.globals[0]
    assert [g.dotted for g in find_globals(data)] == ["os.system", "subprocess.Popen"]
    with pytest.raises(MalformedPickleError):
        simulate(data, strict=True)


def test_find_globals_goes_past_a_structural_break():
    # TUPLE2 finds one object where it needs two: the C unpickler stops there, but the
    # globals spelled out after it are listed too.
    data = b"cos\nsystem\n\x86cbuiltins\neval\n(ibuiltins\nexec\n."
    run = simulate(data)
    assert "TUPLE2" in str(run.error) and run.error.offset == 11
    assert [g.dotted for g in run.globals] == ["os.system"]
    found = find_globals(data)
    assert [(g.dotted, g.offset) for g in found] == [
        ("os.system", 0), ("builtins.eval", 12), ("builtins.exec", 28)]


def test_truncated_streams_record_the_error_and_the_globals_before_it():
    data = pickle.dumps([Hostile(), collections.OrderedDict(a=1), Point(1, 2)], protocol=4)
    full = [g.dotted for g in find_globals(data)]
    assert len(full) == 3
    for cut in range(len(data)):
        run = simulate(data[:cut])
        assert isinstance(run.error, TruncatedPickleError) and run.value is None
        names = [g.dotted for g in find_globals(data[:cut])]
        assert names == full[:len(names)]


@pytest.mark.parametrize("data, fragment", [
    (b".", "STOP at byte 0 finds the stack empty"),
    (b"(.", "STOP at byte 1 finds the stack empty"),
    (b"0.", "POP at byte 0 finds the stack empty"),
    (b"N(0t.", "TUPLE at byte 3 has no MARK"),
    (b"N\x85\x86.", "TUPLE2 at byte 2 needs 2 objects"),
    (b"Na.", "APPEND at byte 1 finds the stack empty"),
    (b"]Nu.", "SETITEMS at byte 2 has no MARK"),
    (b"}(Nu.", "SETITEMS at byte 3 has an odd number of items"),
    (b"(Nd.", "DICT at byte 2 has an odd number of items"),
    (b"h\x05.", "BINGET at byte 0 reads memo entry 5"),
    (b"\x80\x09N.", "PROTO at byte 0 declares protocol 9"),
    (b"(o.", "OBJ at byte 1 needs 1 object above the MARK"),
    (b"Np-1\n.", "PUT at byte 1 has a negative memo index"),
])
def test_broken_stack_discipline_is_an_error_naming_opcode_and_offset(data, fragment):
    run = simulate(data)
    assert fragment in str(run.error)
    assert run.value is None


def test_pop_after_mark_drops_the_mark_as_the_c_unpickler_does():
    data = b"N(0."
    assert pickle.loads(data) is None
    run = simulate(data)
    assert run.ok and run.value is None


def test_huge_memo_indexes_cost_one_entry():
    data = b"\x80\x02Nr\xff\xff\xff\x3fj\xff\xff\xff\x3f\x86."
    tracemalloc.start()
    try:
        run = simulate(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert run.ok and run.value == (None, None)
    assert peak < 100_000


def test_deep_nesting_needs_no_recursion():
    depth = 200_000
    lists = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    run = simulate(lists)
    assert run.ok
    value, levels = run.value, 0
    while value:
        value, levels = value[0], levels + 1
    assert levels == depth - 1
    tuples = b"\x80\x02N" + b"\x85" * depth + b"."
    assert simulate(tuples).ok


def test_unhashable_and_too_deep_keys_are_wrapped():
    # A list as a dict key: the unpickler would fail there, the machine goes on.
    run = simulate(b"\x80\x02}]K\x01s.")
    (key,) = run.value.keys()
    assert isinstance(key, Unhashable) and key.value == [] and run.value[key] == 1
    # A key nested far deeper than any honest pickle: hashing it would overflow the C stack.
    deep = b"\x80\x02}N" + b"\x85" * 100_000 + b"K\x01s."
    (key,) = simulate(deep).value.keys()
    assert isinstance(key, Unhashable)
    shallow = b"\x80\x02}N" + b"\x85" * 50 + b"K\x01s."
    (key,) = simulate(shallow).value.keys()
    assert type(key) is tuple
    deep_set = b"\x80\x04(N" + b"\x85" * 100_000 + b"\x91."
    (member,) = simulate(deep_set).value
    assert isinstance(member, Unhashable)
    assert machine.MAX_HASH_DEPTH < 1000


@pytest.mark.parametrize("seed", range(5))
def test_random_corruption_never_raises(seed):
    rnd = random.Random(seed)
    objects = _data_objects()[:20] + _real_objects() + [Hostile()]
    samples = [pickle.dumps(obj, protocol=seed) for obj in objects]
    samples.append(pickle.dumps(objects, protocol=seed))
    for data in samples:
        for _ in range(120):
            corrupt = bytearray(data)
            for _ in range(rnd.randint(1, 4)):
                corrupt[rnd.randrange(len(corrupt))] = rnd.randrange(256)
            if rnd.random() < 0.3:
                del corrupt[rnd.randrange(len(corrupt)):]
            corrupt = bytes(corrupt)
            run = simulate(corrupt)
            if run.error is not None:
                assert run.value is None and 0 <= run.error.offset <= len(corrupt)
                with pytest.raises(MalformedPickleError):
                    simulate(corrupt, strict=True)
            for node in find_globals(corrupt):
                assert isinstance(node, Global) and isinstance(node.module, str)


def test_random_opcode_soup_never_raises():
    # Streams of valid opcodes in random order stress the stack discipline, not the decoder.
    rnd = random.Random(99)
    pieces = [b"N", b"(", b")", b"]", b"}", b"\x8f", b"t", b"l", b"d", b"\x85", b"\x86", b"\x87",
              b"a", b"e", b"s", b"u", b"\x90", b"\x91", b"b", b"R", b"\x81", b"\x92", b"o",
              b"0", b"1", b"2", b"\x94", b"q\x00", b"h\x00", b"q\x01", b"h\x01", b"\x93",
              b"K\x07", b"\x8c\x02os", b"\x8c\x06system", b"cos\nsystem\n", b"\x97", b"\x98",
              b"Q", b"\x88", b"\x89"]
    for _ in range(3000):
        data = b"\x80\x05" + b"".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 30)))
        data += b"." if rnd.random() < 0.8 else b""
        run = simulate(data)
        assert run.ok or run.error.offset <= len(data)
        find_globals(data)
