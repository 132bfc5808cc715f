"""Large values: out-of-band buffers and large pickles go to the values file beside the
SQLite database (or a frame on Redis), never into the pickle stream, and come back with their
writability; their space is reused."""

from __future__ import annotations

import pickle
import sqlite3
import struct

import numpy
import pytest

import mason
from mason.store import Store
from mason.store._keys import encode_key
from mason.store._space import REGION
from mason.store._values import OOB_MIN

from store_helpers import space_of

NUMPY = ["numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer", "numpy.dtype",
         "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
         "numpy.ndarray"]


def _rows(path, store=None):
    """``({key: (pickle length, buffer lengths, extent)}, free extents)`` of a store (with
    ``store``: also the extents its process freed and has not put back on the map yet)."""
    conn = sqlite3.connect(path)
    try:
        main = conn.execute('SELECT key, value, ext, size, nbuf FROM "store_default"').fetchall()
    finally:
        conn.close()
    rows = {}
    for key, value, ext, size, nbuf in main:
        if ext is None:
            rows[key] = (len(value), [], None)
        else:
            lengths = [n >> 1 for (n,) in struct.iter_unpack("<Q", value)]
            assert len(lengths) == nbuf + 1
            rows[key] = (lengths[0], lengths[1:], (ext, size))
    return rows, space_of(path, store)[0]


def test_numpy_arrays_go_out_of_band(sqlite_path):
    a = numpy.arange(200_000, dtype=numpy.float64)   # 1.6 MB
    b = numpy.ones((300, 300), dtype=numpy.int32)    # 360 KB
    small = numpy.arange(10)                         # stays in band
    with Store(sqlite_path, allow=NUMPY) as store:
        store["arrays"] = {"a": a, "b": b, "small": small, "label": "x"}
        got = store["arrays"]
        assert numpy.array_equal(got["a"], a) and got["a"].dtype == a.dtype
        assert numpy.array_equal(got["b"], b) and got["b"].shape == (300, 300)
        assert numpy.array_equal(got["small"], small) and got["label"] == "x"
        assert got["a"].flags.writeable and got["b"].flags.writeable
        got["a"][0] = -1.0  # a writable copy of its own, not a view of the store's memory
        assert store["arrays"]["a"][0] == 0.0
    rows, _ = _rows(sqlite_path)
    length, buffers, extent = rows[encode_key("arrays")]
    assert buffers == [a.nbytes, b.nbytes] and extent is not None
    assert length < 2_000, "the arrays' bytes were copied into the pickle stream"


def test_small_values_stay_in_their_rows(sqlite_path):
    with Store(sqlite_path) as store:
        store["small"] = {"x": list(range(100))}
        store["big"] = list(range(10_000))  # a pickle over 16 KiB: the values file
        assert store["big"] == list(range(10_000))
    rows, _ = _rows(sqlite_path)
    assert rows[encode_key("small")][2] is None
    assert rows[encode_key("big")][2] is not None


def test_a_read_does_not_share_memory_with_the_store(sqlite_path):
    """A value read is the reader's: a later put (which may reuse the extent) cannot change
    it, read-only buffers included."""
    ro = numpy.arange(50_000, dtype=numpy.int64)
    ro.flags.writeable = False
    with Store(sqlite_path, allow=NUMPY) as store:
        store["ro"] = ro
        store["b"] = b"1" * 100_000
        got_ro, got_b = store["ro"], store["b"]
        for _ in range(3):  # overwrites that reuse the freed extents
            store["ro"] = numpy.zeros(50_000, dtype=numpy.int64)
            store["b"] = b"2" * 100_000
        assert numpy.array_equal(got_ro, ro) and not got_ro.flags.writeable
        assert got_b == b"1" * 100_000


def test_readonly_arrays_stay_readonly(location):
    a = numpy.arange(50_000, dtype=numpy.int64)
    a.flags.writeable = False
    with Store(location, allow=NUMPY) as store:
        store["ro"] = a
        got = store["ro"]
        assert numpy.array_equal(got, a) and not got.flags.writeable


def test_numpy_needs_allowing(location):
    with Store(location) as store:
        store["a"] = numpy.arange(100_000)
        with pytest.raises(mason.UnsafeGlobalError, match="numpy"):
            store["a"]


def test_pickle_buffers_without_numpy(location):
    data = bytearray(range(256)) * 400   # 100 KB
    with Store(location) as store:
        store["pb"] = {"w": pickle.PickleBuffer(data), "r": pickle.PickleBuffer(bytes(data)),
                       "tiny": pickle.PickleBuffer(bytearray(b"abc"))}
        got = store["pb"]
        assert got["w"] == data and type(got["w"]) is bytearray
        assert bytes(got["r"]) == bytes(data) and memoryview(got["r"]).readonly
        assert got["tiny"] == bytearray(b"abc")


def _live(path):
    return sorted(extent for _, _, extent in _rows(path)[0].values() if extent)


def _no_overlap(path, store=None):
    rows, free = _rows(path, store)
    extents = sorted([e for _, _, e in rows.values() if e] + free)
    assert all(a + n <= b for (a, n), (b, _) in zip(extents, extents[1:])), extents


def test_extents_follow_their_value(sqlite_path):
    big = pickle.PickleBuffer(bytearray(OOB_MIN * 2))
    with Store(sqlite_path) as store:
        store["k"] = [big, big]
        assert len(_live(sqlite_path)) == 1
        first = _live(sqlite_path)[0]
        store["k"] = [big]                  # replaced: the old extent is free again
        assert first in _rows(sqlite_path, store)[1]
        store["k"] = "small now"            # no extent at all
        assert _live(sqlite_path) == []
        store.update({"a": big, "b": [big, big]})
        assert len(_live(sqlite_path)) == 2
        del store["a"]
        assert len(_live(sqlite_path)) == 1
        assert store.pop("b") == [bytearray(OOB_MIN * 2)] * 2
        assert _live(sqlite_path) == []
        store.update({"c": big, "d": big})
        store.clear()
        assert _rows(sqlite_path)[0] == {}
        _no_overlap(sqlite_path, store)


def test_overwrites_reuse_the_values_file(sqlite_path):
    """Overwriting values of the same size, one at a time or in transactions, keeps the values
    file at a bounded size: extents are reused, never two live values in one."""
    import os

    blobs = [bytes([i]) * 100_000 for i in range(3)]
    with Store(sqlite_path) as store:
        for round_ in range(30):
            if round_ % 3 == 2:
                with store.transaction():
                    for i in range(10):
                        store[i] = blobs[(i + round_) % 3]
            else:
                for i in range(10):
                    store[i] = blobs[(i + round_) % 3]
            _no_overlap(sqlite_path, store)
            assert all(store[i] == blobs[(i + round_) % 3] for i in range(10))
    # 10 live values of 25 pages; a transaction cannot reuse what it frees itself, and the
    # one after it cannot reuse what that one freed: at most about three times the live size.
    assert os.path.getsize(sqlite_path + "-values") <= REGION + 3 * 10 * 102_400


def test_free_space_is_merged_and_reused_for_larger_values(sqlite_path):
    import os

    with Store(sqlite_path) as store:
        for i in range(8):
            store[i] = bytes(20_000)
        for i in range(8):
            del store[i]
        store["large"] = bytes(150_000)  # fits only in the merged free space
        assert store["large"] == bytes(150_000)
        _no_overlap(sqlite_path, store)
    assert os.path.getsize(sqlite_path + "-values") <= REGION + 8 * 24_576


def test_buffers_roll_back_with_their_value(location):
    big = pickle.PickleBuffer(bytearray(b"z" * (OOB_MIN + 1)))
    with Store(location) as store:
        store["k"] = big
        with pytest.raises(ZeroDivisionError):
            with store.transaction():
                store["k"] = pickle.PickleBuffer(bytearray(b"y" * (OOB_MIN + 1)))
                store["k2"] = big
                assert store["k"] == bytearray(b"y" * (OOB_MIN + 1))
                1 / 0
        assert store["k"] == bytearray(b"z" * (OOB_MIN + 1)) and "k2" not in store
        assert list(store.items()) == [("k", bytearray(b"z" * (OOB_MIN + 1)))]


def test_large_in_band_values(location):
    blob = bytes(range(256)) * 4000   # 1 MB of bytes: pickled in band, as pickle does
    with Store(location) as store:
        for i in range(5):
            store[i] = blob[i:]
        assert all(store[i] == blob[i:] for i in range(5))


def test_redis_frame_keeps_buffers_beside_the_pickle(redis_url):
    import redis

    a = numpy.arange(100_000, dtype=numpy.float32)
    with Store(redis_url, allow=NUMPY) as store:
        store["a"] = a
        assert numpy.array_equal(store["a"], a)
    frame = redis.Redis.from_url(redis_url).hget(b"mason:{default}", encode_key("a"))
    assert frame[0] == 1 and len(frame) < a.nbytes + 1_000
    assert frame.endswith(a.tobytes())  # the buffer sits after the pickle, as it was


def test_a_transaction_never_reuses_what_it_freed(sqlite_path):
    """Inside a transaction other readers still see the committed values: the extents it
    frees must not be written before it commits, savepoints rolled back or not."""
    import sqlite3

    def committed_extents():
        conn = sqlite3.connect(sqlite_path)  # another reader: sees only what is committed
        try:
            return conn.execute('SELECT ext, size FROM "store_default" '
                                'WHERE ext IS NOT NULL').fetchall()
        finally:
            conn.close()

    with Store(sqlite_path) as store:
        for i in range(4):
            store[i] = bytes([i]) * 50_000
        with store.transaction():
            seen = committed_extents()
            with pytest.raises(ZeroDivisionError):
                with store.transaction():   # its epoch is rolled back with it
                    store[0] = b"x" * 50_000
                    1 / 0
            for i in range(4):
                store[i] = b"y" * 50_000    # frees the committed extents...
            store["new"] = b"z" * 50_000    # ...which the next allocation must not take
            mine = sorted(store._backend._holder().cur.execute(
                'SELECT ext, size FROM "store_default" WHERE ext IS NOT NULL').fetchall())
            for a, n in mine:
                assert all(a + n <= b or b + m <= a for b, m in seen), (mine, seen)
        assert all(store[i] == b"y" * 50_000 for i in range(4))
