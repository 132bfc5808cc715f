"""Large values: out-of-band buffers go to their own rows (SQLite) or frame (Redis), never
into the pickle stream, and come back with their writability."""

from __future__ import annotations

import pickle
import sqlite3

import numpy
import pytest

import mason
from mason.store import Store
from mason.store._keys import encode_key
from mason.store._values import OOB_MIN

NUMPY = ["numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer", "numpy.dtype",
         "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct",
         "numpy.ndarray"]


def _rows(path):
    conn = sqlite3.connect(path)
    try:
        main = conn.execute('SELECT key, length(value), nbuf FROM "store_default"').fetchall()
        bufs = conn.execute('SELECT key, idx, readonly, length(data) FROM '
                            '"store_default_buffers" ORDER BY key, idx').fetchall()
    finally:
        conn.close()
    return {k: (n, b) for k, n, b in main}, bufs


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
    main, bufs = _rows(sqlite_path)
    length, nbuf = main[encode_key("arrays")]
    assert nbuf == 2
    assert length < 2_000, "the arrays' bytes were copied into the pickle stream"
    assert [(idx, ro, n) for _, idx, ro, n in bufs] == [(0, 0, a.nbytes), (1, 0, b.nbytes)]


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


def test_buffers_follow_their_value(sqlite_path):
    big = pickle.PickleBuffer(bytearray(OOB_MIN * 2))
    with Store(sqlite_path) as store:
        store["k"] = [big, big]
        assert len(_rows(sqlite_path)[1]) == 2
        store["k"] = [big]                  # replaced: the old buffers go
        assert len(_rows(sqlite_path)[1]) == 1
        store["k"] = "small now"            # no buffers at all
        assert _rows(sqlite_path)[1] == []
        store.update({"a": big, "b": [big, big]})
        assert len(_rows(sqlite_path)[1]) == 3
        del store["a"]
        assert len(_rows(sqlite_path)[1]) == 2
        assert store.pop("b") == [bytearray(OOB_MIN * 2)] * 2
        assert _rows(sqlite_path)[1] == []
        store.update({"c": big, "d": big})
        store.clear()
        assert _rows(sqlite_path) == ({}, [])


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
