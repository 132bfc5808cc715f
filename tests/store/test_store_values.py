"""How values are pickled: standard protocol 5 pickles, as mason.dumps writes them."""

from __future__ import annotations

import pickle
import threading

import pytest

import mason
from mason.store import Store
from mason.store._values import Codec


def test_packed_values_are_mason_pickles():
    for value in [1, "s", {"a": [1, 2.5, None]}, (b"x", frozenset({1}))]:
        data, buffers = Codec.pack(value)
        assert data == mason.dumps(value) and not buffers
        assert pickle.loads(data) == value  # a standard pickle that stdlib reads


def test_each_value_is_standalone():
    shared = ["shared"]
    first, _ = Codec.pack([shared, shared])
    second, _ = Codec.pack(shared)  # no memo carried over from the first value
    assert pickle.loads(second) == ["shared"]
    assert second == mason.dumps(shared) and pickle.loads(first) == [["shared"]] * 2


class Reentrant:
    """Pickling it pickles another value through the same thread's packer."""

    def __reduce__(self):
        inner, _ = Codec.pack({"inner": 1})
        return bytes, (inner,)


def test_reentrant_packing():
    data, _ = Codec.pack([Reentrant(), "after"])
    inner, after = pickle.loads(data)
    assert pickle.loads(inner) == {"inner": 1} and after == "after"
    assert Codec.pack("next")[0] == mason.dumps("next")


def test_a_failed_pickle_leaves_no_trace():
    with pytest.raises(TypeError):
        Codec.pack(["start", threading.Lock()])
    assert Codec.pack(["clean"])[0] == mason.dumps(["clean"])


def test_threads_pack_independently(sqlite_path):
    errors = []
    with Store(sqlite_path) as store:
        def work(t):
            try:
                for i in range(300):
                    store[(t, i)] = {"t": t, "i": i, "pad": [t] * (i % 7)}
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        assert all(store[(t, i)] == {"t": t, "i": i, "pad": [t] * (i % 7)}
                   for t in range(4) for i in range(300))
