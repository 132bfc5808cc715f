"""The limits check: what it refuses, what it lets through, and where it says a pickle ends.

Every test runs against both implementations: the reference one in ``mason.limits`` and its
compiled twin ``mason._limits`` (the CI build compiles it; the suite fails if it did not).
"""

import pickle
import collections
import datetime

import pytest

import mason
from mason import limits as pure

from mason import _limits as compiled  # noqa: E402  (the build must have produced it)

IMPLEMENTATIONS = {"python": pure.StreamCheck, "compiled": compiled.StreamCheck}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def Check(request):
    return IMPLEMENTATIONS[request.param]


SAMPLES = [
    None, True, 0, -1, 2**31, 10**100, -(10**50), 1.5, 1j, "", "text", "é" * 300, b"", b"x" * 300,
    bytearray(b"abc"), (), (1,), (1, 2), (1, 2, 3), tuple(range(10)), [], [1, [2, [3]]],
    {}, {"a": 1, 2: [3]}, {1, 2}, frozenset({3}), collections.OrderedDict(a=1),
    datetime.datetime(2026, 1, 2, 3, 4, 5), list(range(2000)), {str(i): i for i in range(500)},
]


def shared_and_recursive():
    shared = [1, 2]
    loop = []
    loop.append(loop)
    return [shared, shared, loop, {"self": loop}]


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
def test_honest_pickles_pass_and_end_at_stop(Check, proto):
    for obj in SAMPLES + [shared_and_recursive()]:
        data = pickle.dumps(obj, proto)
        check = Check(10_000, 1 << 20)
        assert check.feed(data + b"trailing garbage", 0) == (True, len(data), 0)
        assert check.proto == (proto if proto >= 2 else 0)
        assert check.stopped_at is None


def test_imports_flag_is_set_only_by_globals(Check):
    plain = Check(100, 100)
    plain.feed(pickle.dumps([1, "a", {2: b"b"}], 5))
    assert plain.imports is False
    with_global = Check(100, 100)
    with_global.feed(pickle.dumps(collections.OrderedDict(), 5))
    assert with_global.imports is True
    persistent = Check(100, 100)
    persistent.feed(b"\x80\x05K\x01Q.")   # BINPERSID
    assert persistent.imports is True


def test_huge_memo_index_is_refused_before_any_allocation(Check):
    stream = b"\x80\x04N\x94r\xff\xff\xff\x3f."   # NONE, MEMOIZE, LONG_BINPUT 0x3FFFFFFF
    with pytest.raises(mason.LimitError) as info:
        Check(100, 1 << 20).feed(stream)
    assert info.value.offset == 4
    assert "LONG_BINPUT" in str(info.value) and "memo_slack" in str(info.value)


def test_text_memo_index_is_parsed_like_the_engine(Check):
    # PUT with a huge decimal index, and one hidden after a NUL byte that C stops at
    with pytest.raises(mason.LimitError):
        Check(100, 1000).feed(b"Np99999999999999999999\n.")
    with pytest.raises(mason.LimitError):
        Check(100, 1000).feed(b"Np5000\x00junk\n.")
    stream = b"Np 1_0 \n."
    assert Check(100, 1000).feed(stream) == (True, len(stream), 0)


def test_declared_length_beyond_the_data_asks_for_more(Check):
    stream = b"\x80\x05\x8e" + (2**60).to_bytes(8, "little") + b"abc"
    done, pos, need = Check(100, 100).feed(stream)
    assert (done, pos) == (False, 2)
    assert need == 2**60 - 3


def test_deep_nesting_is_refused(Check):
    for stream in (b"N" + b"\x85" * 200 + b".",             # TUPLE1 chain
                   b"(" * 200 + b"l" * 200 + b".",          # protocol 0 lists
                   b"]" * 200 + b"a" * 199 + b"."):         # EMPTY_LIST then APPENDs
        with pytest.raises(mason.LimitError) as info:
            Check(100, 100).feed(stream)
        assert "max_depth=100" in str(info.value)
    assert Check(201, 100).feed(b"N" + b"\x85" * 200 + b".")[0] is True


def test_malformed_opcode_stops_the_check_just_past_it(Check):
    check = Check(100, 100)
    assert check.feed(b"\x80\x05K\x01\xff..", 0) == (True, 5, 0)
    assert check.stopped_at == 4


def test_incremental_feeding_matches_whole_feeding(Check):
    data = pickle.dumps(shared_and_recursive() + SAMPLES, 2)
    check = Check(10_000, 1 << 20)
    buf, pos = b"", 0
    for i in range(0, len(data), 7):
        buf = data[: i + 7]
        done, pos, need = check.feed(buf, pos)
        if done:
            break
        assert need == -1 or need >= 1
    assert (done, pos) == (True, len(data))


def test_loads_refuses_bombs_with_mason_errors():
    with pytest.raises(mason.LimitError):
        mason.loads(b"\x80\x04N\x94r\xff\xff\xff\x3f.")
    with pytest.raises(mason.TruncatedPickleError):
        mason.loads(b"\x80\x05\x8e" + (2**60).to_bytes(8, "little") + b"abc.")
    with pytest.raises(mason.LimitError):
        mason.loads(b"N" + b"\x85" * 20_000 + b".")
    assert mason.loads(b"N" + b"\x85" * 20_000 + b".",
                       limits=mason.Limits(max_depth=30_000)) is not None
