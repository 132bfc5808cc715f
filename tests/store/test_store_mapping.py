"""The whole mapping API, on both backends."""

from __future__ import annotations

import collections
import datetime
import decimal
import pickle
import threading

import pytest

import mason
from mason.store import Store, StoreError
from store_helpers import Point

VALUES = [
    None, True, 0, -(2 ** 100), 1.5, "text", "ünï\U0001F600", b"\x00\xff", bytearray(b"ab"),
    [1, [2, [3]]], (1, "a"), {"a": {"b": [1, 2]}}, {1, 2, 3}, frozenset({"x"}),
    datetime.datetime(2024, 5, 6, 7, 8, 9), datetime.date(2020, 1, 1), decimal.Decimal("1.10"),
    collections.OrderedDict([("z", 1), ("a", 2)]), complex(1, 2),
]


def test_set_get_round_trip(location):
    with Store(location) as store:
        for i, value in enumerate(VALUES):
            store[f"v{i}"] = value
        for i, value in enumerate(VALUES):
            got = store[f"v{i}"]
            assert got == value and type(got) is type(value)
        assert len(store) == len(VALUES)


def test_missing_key(location):
    with Store(location) as store:
        with pytest.raises(KeyError) as info:
            store["nope"]
        assert info.value.args == ("nope",)
        assert store.get("nope") is None
        assert store.get("nope", 7) == 7
        with pytest.raises(KeyError):
            del store["nope"]


def test_overwrite_and_delete(location):
    with Store(location) as store:
        store["k"] = 1
        store["k"] = [2]
        assert store["k"] == [2] and len(store) == 1
        del store["k"]
        assert "k" not in store and len(store) == 0


def test_key_types_are_distinct_and_round_trip(location):
    keys = ["1", b"1", 1, -1, 2 ** 200, (1,), ("1",), (1, (b"x", "y")), (), "", b"",
            "lone \udc80 surrogate", ("a", 1, b"b", (2, ()))]
    with Store(location) as store:
        for i, key in enumerate(keys):
            store[key] = i
        assert len(store) == len(keys)
        for i, key in enumerate(keys):
            assert store[key] == i
            assert key in store
        assert sorted(map(repr, store)) == sorted(map(repr, keys))
        for key in store:
            assert type(key) in (str, bytes, int, tuple)


def test_refused_key_types(location):
    with Store(location) as store:
        for bad in (True, 1.5, None, [1], frozenset(), ("ok", 2.0)):
            with pytest.raises(TypeError):
                store[bad] = 1
        assert 1.5 not in store and [1] not in store and True not in store
        assert store.get(1.5, "d") == "d"
        assert len(store) == 0


def test_views(location):
    data = {"a": 1, "b": [2], ("t", 3): {"c": 3}}
    with Store(location) as store:
        store.update(data)
        assert set(store.keys()) == set(data)
        assert sorted(map(repr, store.values())) == sorted(map(repr, data.values()))
        assert dict(store.items()) == data
        assert ("a", 1) in store.items() and ("a", 2) not in store.items()
        assert "b" in store.keys() and len(store.keys()) == 3
        assert store == data and dict(store) == data


def test_iteration_spans_pages(location):
    n = 1300  # more than two pages of 512 rows
    with Store(location) as store:
        store.update((i, i * i) for i in range(n))
        assert sorted(store) == list(range(n))
        assert dict(store.items()) == {i: i * i for i in range(n)}
        assert sum(store.values()) == sum(i * i for i in range(n))


def test_update_forms(location):
    with Store(location) as store:
        store.update({"a": 1})
        store.update([("b", 2)])
        store.update(c=3)
        store.update({"d": 4}, e=5)

        class KeysOnly:
            def keys(self):
                return ["f"]

            def __getitem__(self, key):
                return 6

        store.update(KeysOnly())
        assert dict(store) == {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}


def test_update_writes_nothing_when_a_value_cannot_be_pickled(location):
    with Store(location) as store:
        with pytest.raises(TypeError, match="cannot pickle"):
            store.update({"ok": 1, "bad": threading.Lock()})
        assert len(store) == 0


def test_setdefault_pop_popitem_clear(location):
    with Store(location) as store:
        assert store.setdefault("a", [1]) == [1]
        assert store.setdefault("a", [2]) == [1]
        assert store.setdefault("n") is None and store["n"] is None
        assert store.pop("a") == [1] and "a" not in store
        assert store.pop("a", "dflt") == "dflt"
        with pytest.raises(KeyError):
            store.pop("a")
        store.update({"x": 1, "y": 2})
        popped = dict(store.popitem() for _ in range(3))
        assert popped == {"x": 1, "y": 2, "n": None}
        with pytest.raises(KeyError):
            store.popitem()
        store.update({"x": 1, "y": 2})
        store.clear()
        assert len(store) == 0 and list(store) == []


def test_reopen_sees_everything(location):
    with Store(location) as store:
        store.update({i: str(i) for i in range(50)})
    with Store(location) as store:
        assert dict(store) == {i: str(i) for i in range(50)}


def test_names_are_separate_stores(location):
    with Store(location, name="one") as one, Store(location, name="two") as two:
        one["k"] = 1
        two["k"] = 2
        assert one["k"] == 1 and two["k"] == 2 and len(one) == len(two) == 1
        one.clear()
        assert two["k"] == 2


def test_closed_store_refuses_use(location):
    store = Store(location)
    store["a"] = 1
    store.close()
    store.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        store["a"]
    with pytest.raises(ValueError, match="closed"):
        store["b"] = 2


def test_repr_sync_and_not_picklable(location):
    with Store(location) as store:
        assert location in repr(store) and "mason.Store" in repr(store)
        store.sync()
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(store)


def test_default_policy_refuses_other_globals(location):
    with Store(location) as store:
        store["f"] = Point(1, 3)
        with pytest.raises(mason.UnsafeGlobalError) as info:
            store["f"]
        assert "store_helpers.Point" in str(info.value)
        # the refusal is a pickle.UnpicklingError too, as code catching pickle's errors expects
        assert isinstance(info.value, pickle.UnpicklingError)
        assert "f" in store  # refusing to load does not remove it
    with Store(location, allow=["store_helpers.Point"]) as store:
        assert store["f"] == Point(1, 3)
    with Store(location, policy=mason.Policy.default() | mason.Policy(["store_helpers.*"])) as store:
        assert store["f"] == Point(1, 3)
    with Store(location, trusted=True) as store:
        assert store["f"] == Point(1, 3)


def test_pop_of_a_refused_value_leaves_it(location):
    with Store(location) as store:
        store["f"] = Point(1, 3)
        with pytest.raises(mason.UnsafeGlobalError):
            store.pop("f")
        with pytest.raises(mason.UnsafeGlobalError):
            store.popitem()
        with pytest.raises(mason.UnsafeGlobalError):
            store.setdefault("f", 0)
        assert len(store) == 1


def test_policy_arguments_are_checked(sqlite_path):
    with pytest.raises(ValueError, match="trusted=True"):
        Store(sqlite_path, trusted=True, allow=["x.y"])
    with pytest.raises(TypeError, match="mason.Policy"):
        Store(sqlite_path, policy=["x.y"])
    with pytest.raises(TypeError, match="lock_ttl"):
        Store(sqlite_path, lock_ttl=3)
    with pytest.raises(TypeError, match="path or a redis"):
        Store(42)


def test_preset(sqlite_path):
    if hasattr(mason.Policy, "preset"):
        with Store(sqlite_path, preset="numpy") as store:
            import numpy

            store["a"] = numpy.arange(3)
            assert store["a"].tolist() == [0, 1, 2]
    else:
        with pytest.raises(NotImplementedError, match="Policy.preset"):
            Store(sqlite_path, preset="numpy")


def test_not_a_store_file(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StoreError, match="not a usable mason store"):
        Store(path)
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "no" / "such" / "dir" / "x.db")
    with pytest.raises(StoreError, match="file path"):
        Store(":memory:")


def test_redis_unreachable():
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    with pytest.raises(StoreError, match="cannot reach"):
        Store("redis://127.0.0.1:1/0", timeout=1)


def test_redis_refuses_sqlite_options(redis_url):
    with pytest.raises(TypeError, match="SQLite"):
        Store(redis_url, synchronous="FULL")


def test_new_sqlite_stores_use_small_pages(sqlite_path):
    import sqlite3

    with Store(sqlite_path) as store:
        store["k"] = "v"
    conn = sqlite3.connect(sqlite_path)
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 1024
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
