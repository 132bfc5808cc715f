"""Differential fuzzing: the compiled limits check and the reference one must agree on every
input — honest pickles, and the same pickles with random bytes flipped, inserted, deleted
and spliced — on the verdict, the end offset, the bytes still needed, the protocol, the
imports flag, where a malformed stream stopped, and the limit error's message and offset.

The seed is fixed so that a failure reproduces; MASON_FUZZ_ITERATIONS raises the count.
"""

import collections
import datetime
import decimal
import os
import pickle
import random

import mason
from mason import _limits, limits

ITERATIONS = int(os.environ.get("MASON_FUZZ_ITERATIONS", "4000"))


def outcome(cls, data, max_depth, slack):
    check = cls(max_depth, slack)
    try:
        result = check.feed(data, 0)
    except mason.LimitError as exc:
        return ("limit", str(exc), exc.offset)
    return ("ok", result, check.proto, check.imports, check.stopped_at)


def corpus():
    loop = []
    loop.append(loop)
    objects = [[1, 2.5, "x", b"y", None, True, (1, 2), {3}, frozenset([4]), 10**40, 1j],
               {"k": [loop, loop], "d": collections.OrderedDict(a=1)},
               datetime.datetime(2026, 1, 1), list(range(300)), "é" * 100, b"z" * 70000]
    seeds = [pickle.dumps(obj, proto) for obj in objects for proto in range(6)]
    seeds += [b"cos\nsystem\n(S'echo hi'\ntR.", b"\x80\x04N\x94r\xff\xff\xff\x3f.",
              b"(" * 50 + b"l" * 50 + b".", b"N" + b"\x85" * 60 + b"."]
    return seeds


def mutate(rng, data, seeds):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        pos = rng.randrange(len(data) + 1)
        if choice < 0.4 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif choice < 0.6:
            data[pos:pos] = bytes([rng.randrange(256)])
        elif choice < 0.75 and data:
            del data[pos:pos + rng.randint(1, 8)]
        elif choice < 0.9:
            other = rng.choice(seeds)
            start = rng.randrange(len(other))
            data[pos:pos] = other[start:start + rng.randint(1, 16)]
        else:
            data[pos:pos] = rng.choice([b"\n", b"(", b"0", b"1", b"\x94", b"h\x00", b"q\x05"])
    return bytes(data)


def test_compiled_and_reference_checks_agree_on_mutated_streams():
    rng = random.Random(20261125)
    seeds = corpus()
    for i in range(ITERATIONS):
        data = mutate(rng, rng.choice(seeds), seeds)
        depth = rng.choice([3, 50, 10_000])
        slack = rng.choice([0, 4, 1 << 20])
        expected = outcome(limits.StreamCheck, data, depth, slack)
        got = outcome(_limits.StreamCheck, data, depth, slack)
        assert got == expected, f"iteration {i}: {data!r}"


def test_compiled_and_reference_checks_agree_on_every_prefix():
    for data in corpus():
        for cut in range(0, len(data), max(1, len(data) // 50)):
            prefix = data[:cut]
            assert outcome(_limits.StreamCheck, prefix, 10_000, 1 << 20) == \
                outcome(limits.StreamCheck, prefix, 10_000, 1 << 20)


def check_outcome(fn, data, max_depth, slack):
    try:
        return ("ok", fn(data, max_depth, slack))
    except mason.LimitError as exc:
        return ("limit", str(exc), exc.offset)


def test_compiled_and_reference_fast_checks_agree_on_mutated_streams():
    rng = random.Random(1125)
    seeds = corpus()
    for i in range(ITERATIONS):
        data = mutate(rng, rng.choice(seeds), seeds)
        depth = rng.choice([3, 50, 10_000])
        slack = rng.choice([0, 4, 1 << 20])
        assert check_outcome(_limits.check, data, depth, slack) == \
            check_outcome(limits.check, data, depth, slack), f"iteration {i}: {data!r}"


def test_compiled_and_reference_global_names_agree_on_mutated_streams():
    rng = random.Random(7)
    seeds = corpus() + [pickle.dumps([collections.OrderedDict(), datetime.date(2026, 1, 1)], p)
                        for p in range(6)]
    for i in range(ITERATIONS):
        data = mutate(rng, rng.choice(seeds), seeds)
        assert _limits.global_names(data) == limits.global_names(data), f"iteration {i}: {data!r}"


def test_global_names_reads_what_the_pickler_wrote():
    obj = [collections.OrderedDict(a=datetime.date(2026, 1, 1)), decimal.Decimal("1.5")]
    for proto in range(6):
        names = limits.global_names(pickle.dumps(obj, proto))
        assert names is not None
        assert ("collections", "OrderedDict") in names and ("decimal", "Decimal") in names
        assert names == _limits.global_names(pickle.dumps(obj, proto))
