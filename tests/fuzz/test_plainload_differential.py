"""Differential fuzzing of the one-pass load of plain data (mason._plainload) against the long
way (the limits check, then CPython's engine): whenever the one pass answers, the long way
loads the same object graph; where the long way refuses or fails, the one pass declines; and
mason.loads, which tries the one pass first, gives exactly the long way's result or error.

The seed is fixed so that a failure reproduces; MASON_FUZZ_ITERATIONS raises the count.
"""

import collections
import datetime
import decimal
import os
import pickle
import random
import subprocess
import sys

import pytest

import mason
from mason import unpickler

from test_limits_differential import mutate

plainload = pytest.importorskip("mason._plainload")

ITERATIONS = int(os.environ.get("MASON_FUZZ_ITERATIONS", "4000"))


def one_pass(data, max_depth=10_000, memo_slack=1 << 20):
    return plainload.loads(data, max_depth, memo_slack, unpickler._PLAIN_NAMES,
                           unpickler._plain_name)


def long_way(data, max_depth=10_000, memo_slack=1 << 20):
    """mason.loads with an explicit limits= takes the check-then-engine way."""
    try:
        return ("ok", mason.loads(data, limits=mason.Limits(max_depth=max_depth,
                                                            memo_slack=memo_slack)))
    except Exception as exc:
        return ("error", type(exc), str(exc))


def run_script(script: str) -> str:
    """What ``script`` prints, run in a fresh interpreter (audit hooks stay there)."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                          check=True).stdout.strip()


def graph(obj):
    """The object graph as bytes: types, values, order, sharing and cycles all show."""
    try:
        return pickle.dumps(obj, 4)
    except Exception as exc:  # e.g. a cut-off stream's leftovers: compare what can be seen
        return repr((type(obj), type(exc)))


def shared_and_recursive():
    loop = []
    loop.append(loop)
    leaf = {"shared": [1, 2]}
    return {"k": [loop, loop], "a": leaf, "b": leaf, "t": (leaf, leaf)}


OBJECTS = [
    [1, 2.5, "x", b"y", None, True, False, (1, 2), {3}, frozenset([4]), 10**40, -(10**40)],
    shared_and_recursive(),
    {"when": datetime.datetime(2026, 1, 1, 12, 30, tzinfo=datetime.timezone.utc),
     "day": datetime.date(1980, 5, 7), "span": datetime.timedelta(days=3)},
    list(range(300)), "é" * 100, "\udc80 lone surrogate", b"z" * 70000,
    [(i, str(i), float(i)) for i in range(200)], (), [], {}, set(), frozenset(),
    [[[[[[["deep"]]]]]]], {(1, 2): "tuple key", 3.5: "float key", b"b": "bytes key"},
]
# Declined by the one pass (in some protocols), loaded the long way: checked stand-ins
# (Decimal; bytearray before protocol 5), SETITEMS on an OrderedDict.
LONG_WAY_OBJECTS = [{"price": decimal.Decimal("12.50")}, bytearray(b"ba"),
                    collections.OrderedDict(a=1)]


def seeds():
    out = [pickle.dumps(obj, proto) for obj in OBJECTS + LONG_WAY_OBJECTS for proto in range(6)]
    out += [b"cos\nsystem\n(S'echo hi'\ntR.", b"\x80\x04N\x94r\xff\xff\xff\x3f.",
            b"(" * 50 + b"l" * 50 + b".", b"N" + b"\x85" * 60 + b".",
            b"\x80\x05K\x01K\x02\x86\x94h\x00h\x00\x86."]
    return out


def test_honest_streams_load_in_one_pass_with_the_long_ways_result():
    answered = 0
    for obj in OBJECTS + LONG_WAY_OBJECTS:
        for proto in range(6):
            data = pickle.dumps(obj, proto)
            got = one_pass(data)
            expected = long_way(data)
            assert expected[0] == "ok"
            if got is not NotImplemented:
                answered += 1
                assert graph(got) == graph(expected[1]), (obj, proto)
            elif proto >= 3 and obj not in LONG_WAY_OBJECTS:
                # protocols 0-2 write bytes through _codecs.encode (a checked stand-in);
                # every other object of the list is plain data
                pytest.fail(f"declined protocol {proto} of {obj!r:.60}")
    assert answered >= len(OBJECTS) * 3


def test_one_pass_answers_only_what_the_long_way_loads_the_same():
    rng = random.Random(20261125)
    corpus = seeds()
    answered = 0
    for i in range(ITERATIONS):
        data = mutate(rng, rng.choice(corpus), corpus)
        depth = rng.choice([3, 50, 10_000])
        slack = rng.choice([0, 4, 1 << 20])
        got = one_pass(data, depth, slack)
        if got is NotImplemented:
            continue
        answered += 1
        expected = long_way(data, depth, slack)
        assert expected[0] == "ok", f"iteration {i}: {data!r} answered, long way {expected}"
        assert graph(got) == graph(expected[1]), f"iteration {i}: {data!r}"
    assert answered > ITERATIONS // 50   # the comparison is not vacuous


def test_loads_gives_the_long_ways_result_or_error_on_mutated_streams():
    rng = random.Random(7)
    corpus = seeds()
    for i in range(ITERATIONS // 2):
        data = mutate(rng, rng.choice(corpus), corpus)
        try:
            got = ("ok", mason.loads(data))
        except Exception as exc:
            got = ("error", type(exc), str(exc))
        expected = long_way(data)
        if got[0] == "ok" and expected[0] == "ok":
            assert graph(got[1]) == graph(expected[1]), f"iteration {i}: {data!r}"
        else:
            assert got == expected, f"iteration {i}: {data!r}"


def test_limits_hold_in_the_one_pass():
    nested = b"\x80\x05" + b"]" * 40 + b"a" * 39 + b"."
    assert one_pass(nested, max_depth=10) is NotImplemented
    with pytest.raises(mason.LimitError, match="max_depth=10"):
        mason.loads(nested, limits=mason.Limits(max_depth=10))
    assert len(one_pass(nested, max_depth=100)) == 1
    far_memo = b"\x80\x05N\x94r\xff\xff\xff\x3f."   # LONG_BINPUT 0x3FFFFFFF
    assert one_pass(far_memo) is NotImplemented
    with pytest.raises(mason.LimitError):
        mason.loads(far_memo)


def test_calls_only_globals_the_policy_lets_the_engine_call(tmp_path):
    marker = tmp_path / "ran"
    hostile = [
        pickle.dumps(None, 2)[:-1] + b"cos\nsystem\n(S'touch %s'\ntR." % str(marker).encode(),
        b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x0btouch " + str(marker).encode() + b"\x85R.",
        # REDUCE on something that is not a global: a str, a tuple
        b"\x80\x04\x8c\x01x)R.", b"\x80\x04))R.",
        # a plain global's result called again
        b"\x80\x04\x8c\x08datetime\x8c\x04date\x93K\x01K\x01K\x01\x87R)R.",
    ]
    for data in hostile:
        assert one_pass(data) is NotImplemented, data
        with pytest.raises(mason.UnpicklingError):
            mason.loads(data)
    assert not marker.exists()
    # the control: stdlib pickle runs the first stream and creates the marker
    pickle.loads(hostile[0])
    assert marker.exists()


def test_find_class_audit_events_as_the_engine_raises_them():
    script = (
        "import sys, datetime, pickle, mason\n"
        "seen = []\n"
        "sys.addaudithook(lambda event, args: seen.append(args) "
        "if event == 'pickle.find_class' else None)\n"
        "data = pickle.dumps([datetime.date(2026, 1, 1)] * 2, 5)\n"
        "assert mason.loads(data) == [datetime.date(2026, 1, 1)] * 2\n"
        "print(seen)\n")
    assert run_script(script) == "[('datetime', 'date')]"


def test_an_interrupt_during_the_one_pass_is_not_swallowed():
    # An audit hook that raises KeyboardInterrupt once, at the first global: the one pass
    # must let it through rather than decline and let the long way load the stream.
    script = (
        "import sys, datetime, pickle, mason\n"
        "fired = []\n"
        "def hook(event, args):\n"
        "    if event == 'pickle.find_class' and not fired:\n"
        "        fired.append(1)\n"
        "        raise KeyboardInterrupt\n"
        "sys.addaudithook(hook)\n"
        "data = pickle.dumps(datetime.date(2026, 1, 1), 5)\n"
        "try:\n"
        "    mason.loads(data)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n")
    assert run_script(script) == "interrupted"
