"""mason.hashing.hash: canonical digests, equal for equal values in every process."""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest

from mason.errors import PicklingError
from mason.hashing import BIG, BUFFER_ALGORITHM, HashError, encode, hash as mhash

from cache_helpers import python_env


# Objects defined here so that children can rebuild the same values by importing this file.
@dataclasses.dataclass
class Point:
    x: float
    y: float
    tags: set = dataclasses.field(default_factory=set)


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a, self.b = a, b


# -- distinct values, distinct digests ----------------------------------------------------------

def test_digest_is_32_hex_digits():
    digest = mhash({"a": [1, 2.5, "x"]})
    assert len(digest) == 32
    int(digest, 16)


@pytest.mark.parametrize("a, b", [
    (1, True), (1, 1.0), (0, False), (0.0, -0.0), (1, "1"), (b"a", "a"), (b"a", bytearray(b"a")),
    ([1, 2], (1, 2)), ([[1], 2], [1, [2]]), (["ab", "c"], ["a", "bc"]),
    ({1, 2}, frozenset({1, 2})),
    ({"a": 1}, {"a": 1.0}), ({"a": 1}, [("a", 1)]), ((), []), (None, 0), ({}, set()),
    ({1: "a", 2: "b"}, {1: "b", 2: "a"}), (collections.OrderedDict(a=1), {"a": 1}),
    (collections.Counter("ab"), {"a": 1, "b": 1}), (Color.RED, 1), (Color.RED, Color.GREEN),
    ((frozenset(), "set", ()), set()), ((set(), "set", ()), set()),   # shapes of rewritten nodes
    (Point(1, 2), Point(2, 1)), (Point(1, 2), {"x": 1, "y": 2, "tags": set()}),
    (Slotted(1, 2), Slotted(2, 1)), (int, float), (len, abs), (2 ** 100, 2 ** 100 + 1),
])
def test_different_values_hash_differently(a, b):
    assert mhash(a) != mhash(b)


def test_equal_values_built_differently_hash_equally():
    assert mhash({"a": 1, "b": [1, 2], "c": {"x": None}}) == \
        mhash(dict([("c", {"x": None}), ("b", [1, 2]), ("a", 1)]))
    assert mhash({3, 1, 2}) == mhash(set([2, 3, 1]))
    assert mhash(frozenset("abcdef")) == mhash(frozenset(reversed("abcdef")))
    assert mhash({(1, "a"): 1, 2.5: "x", None: 0}) == mhash({None: 0, 2.5: "x", (1, "a"): 1})
    assert mhash(Point(1.0, 2.0, {"b", "a"})) == mhash(Point(1.0, 2.0, {"a", "b"}))
    shared = [1, 2]
    assert mhash([shared, shared]) == mhash([[1, 2], [1, 2]])
    big = "x" * 100
    assert mhash([big, big]) == mhash([big, "".join(["x"] * 100)])
    dd = collections.defaultdict(list, {"b": [1], "a": [2]})
    dd2 = collections.defaultdict(list)
    dd2["a"].append(2)
    dd2["b"].append(1)
    assert mhash(dd) == mhash(dd2)
    assert mhash(dd) != mhash(collections.defaultdict(set, {"b": [1], "a": [2]}))


def test_ordered_dict_order_matters():
    a = collections.OrderedDict([("a", 1), ("b", 2)])
    b = collections.OrderedDict([("b", 2), ("a", 1)])
    assert a != b and mhash(a) != mhash(b)


def test_cycles_hash_and_differ_by_shape():
    a = []
    a.append(a)
    b = []
    b.append([b])
    d = {"self": None}
    d["self"] = d
    assert len({mhash(a), mhash(b), mhash(d)}) == 3
    a2 = []
    a2.append(a2)
    assert mhash(a) == mhash(a2)


def test_unhashable_object_raises_with_its_path():
    class Worker:
        def __init__(self):
            self.lock = threading.Lock()

    with pytest.raises(HashError) as info:
        mhash({"cfg": {"workers": [1, 2, 3, Worker()]}})
    assert info.value.path == "obj['cfg']['workers'][3].lock"
    assert "lock" in str(info.value) and "cannot be pickled" in str(info.value)
    assert isinstance(info.value, PicklingError)


def test_functions_hash_by_code():
    def make(k):
        return lambda x: x * k

    f1, f2, f3 = make(2), make(2), make(3)
    assert mhash(f1) == mhash(f2)
    assert mhash(f1) != mhash(f3)   # the closure holds 2 or 3
    g = eval("lambda x: x * 2")
    h = eval("lambda x: x + 2")
    assert mhash(g) != mhash(h)


# -- numpy ------------------------------------------------------------------------------------

def test_arrays_by_dtype_shape_and_bytes():
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert mhash(a) == mhash(a.copy())
    assert mhash(a) != mhash(a.astype(np.float32))
    assert mhash(a) != mhash(a.reshape(4, 3))
    assert mhash(a) != mhash(a.ravel())
    b = a.copy()
    b[2, 3] += 1e-12
    assert mhash(a) != mhash(b)
    # Same values, other memory layouts: same digest.
    assert mhash(np.asfortranarray(a)) == mhash(a)
    assert mhash(a[:, ::2]) == mhash(np.ascontiguousarray(a[:, ::2]))
    assert mhash(a.T) == mhash(np.ascontiguousarray(a.T))
    assert mhash(np.float64(1.5)) != mhash(np.float32(1.5))
    assert mhash(np.float64(1.5)) != mhash(1.5)


def test_large_arrays_and_object_arrays():
    big = np.random.default_rng(0).random(BIG)   # 8 x BIG bytes: hashed apart, in place
    other = big.copy()
    other[-1] += 1
    assert mhash(big) == mhash(big.copy()) and mhash(big) != mhash(other)
    objects = np.array([{"b": 1, "a": 2}, [1, 2], "s"], dtype=object)
    same = np.array([{"a": 2, "b": 1}, [1, 2], "s"], dtype=object)
    assert mhash(objects) == mhash(same)
    assert mhash(objects) != mhash(np.array([{"a": 2, "b": 1}, [1, 3], "s"], dtype=object))
    dates = np.array(["2024-01-01", "2024-06-30"], dtype="datetime64[D]")
    assert mhash(dates) != mhash(dates + 1)
    structured = np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")])
    assert mhash(structured) != mhash(np.zeros(3, dtype=[("a", "<i4"), ("c", "<f8")]))


def test_array_hashing_reads_in_place():
    # numpy reports its allocations to tracemalloc: hashing 64 MB must not copy them.
    array = np.ones(8 * 1024 * 1024)
    tracemalloc.start()
    try:
        mhash(array)
        mhash({"a": array, "b": [array]})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"hashing a 64 MB array allocated {peak} bytes"


def test_large_buffers_enter_the_encoding_as_digests():
    data = bytes(range(256)) * 1024   # 256 KiB
    assert len(encode(data)) < 200
    assert len(encode(np.frombuffer(data, dtype=np.uint8))) < 250
    assert mhash(data) != mhash(data[:-1] + b"\x01")


# -- across processes -------------------------------------------------------------------------

CHILD = r"""
import collections, json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from mason.hashing import hash as mhash
from test_hash import Point, Color, Slotted

def values():
    words = ["w%d" % i for i in range(200)]
    return {
        "str set": set(words),
        "frozenset": frozenset(words[:50]),
        "mixed set": {1, "a", 2.5, (1, "b"), None, b"x"},
        "dict": {w: i for i, w in enumerate(words)},
        "dict reversed": {w: i for i, w in reversed(list(enumerate(words)))},
        "nested": {"a": [{"x": set(words[:10])}, {"y": frozenset({"p", "q"})}],
                   "b": {("t", 1): {"k": "v"}, "s": {1, 2, 3}}},
        "dataclass": Point(1.0, 2.0, set(words[:20])),
        "slots": Slotted({"z", "y"}, [1, 2]),
        "enum": [Color.RED, Color.GREEN],
        "counter": collections.Counter(words[:30] * 2),
        "defaultdict": collections.defaultdict(list, {w: [w] for w in words[:30]}),
        "array": np.arange(10000, dtype=np.float32).reshape(100, 100),
        "object array": np.array([set(words[:5]), {"k": 1}], dtype=object),
        "class": Point, "function": mhash,
    }

print(json.dumps({name: mhash(value) for name, value in values().items()}))
"""


def _child_digests(seed: str) -> dict:
    here = str(__import__("pathlib").Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-c", CHILD, here],
                          env=python_env(PYTHONHASHSEED=seed), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_same_digests_whatever_the_hash_seed():
    runs = {seed: _child_digests(seed) for seed in ("0", "1", "4242", "random")}
    first = runs["0"]
    assert len(first) == 15
    for seed, digests in runs.items():
        assert digests == first, f"PYTHONHASHSEED={seed} changed digests"
    # The two dicts differ only in insertion order.
    assert first["dict"] == first["dict reversed"]
    # And this process agrees, whatever its own seed.
    assert {name: mhash(value) for name, value in _parent_values().items()} == first


def _parent_values() -> dict:
    ns: dict = {}
    code = CHILD.replace("sys.path.insert(0, sys.argv[1])\n", "")
    code = code.rsplit("print(", 1)[0]
    exec(compile(code, "<child>", "exec"), ns)
    return ns["values"]()


def test_many_rewritten_nodes_hash_repeatedly():
    # Hundreds of rewritten nodes per call, many calls on one thread's reused pickler.
    values = [Point(float(i), 0.0, {str(i)}) for i in range(300)]
    first = mhash(values)
    for _ in range(100):
        assert mhash(values) == first
    assert mhash(values[:-1]) != first


NO_XXHASH = r"""
import sys
sys.modules["xxhash"] = None   # as if it were not installed
import numpy as np
from mason.hashing import BUFFER_ALGORITHM, hash as mhash
print(BUFFER_ALGORITHM, mhash(np.arange(100_000, dtype=np.float64)),
      mhash({"small": [1, 2], "s": {"b", "a"}}))
"""


def test_without_xxhash_large_buffers_use_blake2b():
    runs = []
    for seed in ("1", "2"):
        proc = subprocess.run([sys.executable, "-c", NO_XXHASH],
                              env=python_env(PYTHONHASHSEED=seed), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        runs.append(proc.stdout.split())
    assert runs[0] == runs[1]
    algorithm, big, small = runs[0]
    assert algorithm == "blake2b"
    # Large buffers name their algorithm: a process with xxhash never gets this digest (and
    # one without it, as this one would be without the package, gets exactly this one)...
    assert (big == mhash(np.arange(100_000, dtype=np.float64))) == \
        (BUFFER_ALGORITHM == "blake2b")
    # ...while everything without a large buffer hashes the same either way.
    assert small == mhash({"small": [1, 2], "s": {"b", "a"}})
