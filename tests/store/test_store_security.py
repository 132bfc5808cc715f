"""Hostile bytes planted in a store are refused on read, and nothing they name runs.

Each payload would create a marker file if loaded; the control at the end of each test shows
that stdlib ``pickle.loads`` of the very same bytes does create it.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import struct

import pytest

import mason
from mason.store import Store
from mason.store._keys import encode_key
from mason.store._space import REGION


def payloads(tmp_path):
    """(name, bytes, marker path): pickles that create their marker file when loaded."""
    out = []

    class ViaEval:
        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):
            return eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",)

    class ViaOpen:
        def __init__(self, marker):
            self.marker = marker

        def __reduce__(self):
            return open, (str(self.marker), "w")

    marker = tmp_path / "marker-eval"
    out.append(("eval", pickle.dumps({"ok": 1, "evil": ViaEval(marker)}, protocol=5), marker))
    marker = tmp_path / "marker-open"
    out.append(("open", pickle.dumps([ViaOpen(marker)], protocol=2), marker))
    marker = tmp_path / "marker-system"
    # Protocol 0, written by hand: os.system("touch <marker>").
    out.append(("system", b"cos\nsystem\n(V touch %s\ntR." % str(marker).encode(), marker))
    return out


def _plant_sqlite(path: str, key, data: bytes) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute('UPDATE "store_default" SET value = ? WHERE key = ?', (data, encode_key(key)))
    conn.close()


def _assert_refused_everywhere(store: Store, key) -> None:
    with pytest.raises(mason.UnsafeGlobalError):
        store[key]
    with pytest.raises(mason.UnsafeGlobalError):
        store.get(key)
    with pytest.raises(pickle.UnpicklingError):  # what code written for pickle catches
        dict(store.items())
    with pytest.raises(mason.UnsafeGlobalError):
        list(store.values())
    with pytest.raises(mason.UnsafeGlobalError):
        store.pop(key)
    with pytest.raises(mason.UnsafeGlobalError):
        store.setdefault(key, 0)
    assert key in store  # refused, not removed


def test_planted_sqlite_values_are_refused(tmp_path):
    path = str(tmp_path / "store.db")
    for name, data, marker in payloads(tmp_path):
        with Store(path) as store:
            store[name] = "innocent"
            store["neighbour"] = [1, 2]
        _plant_sqlite(path, name, data)
        with Store(path) as store:
            _assert_refused_everywhere(store, name)
            assert store["neighbour"] == [1, 2]  # the rest of the store still reads
            del store[name]
        assert not marker.exists(), f"{name}: the payload ran"
        pickle.loads(data)  # the control: stdlib pickle runs it
        assert marker.exists(), f"{name}: the control did not create its marker"


def test_planted_redis_values_are_refused(tmp_path, redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    for name, data, marker in payloads(tmp_path):
        with Store(redis_url) as store:
            store["neighbour"] = [1, 2]
            client.hset(b"mason:{default}", encode_key(name), data)
            _assert_refused_everywhere(store, name)
            assert store["neighbour"] == [1, 2]
        assert not marker.exists(), f"{name}: the payload ran"
        pickle.loads(data)
        assert marker.exists()
    client.close()


def test_hostile_pickle_inside_a_buffer_frame_is_refused(tmp_path, redis_url):
    import redis

    name, data, marker = payloads(tmp_path)[0]
    # A well-formed frame of one out-of-band buffer, whose pickle is the payload.
    frame = struct.pack("<BI", 1, 1) + struct.pack("<BQ", 1, 4) + data + b"abcd"
    client = redis.Redis.from_url(redis_url)
    client.hset(b"mason:{default}", encode_key("framed"), frame)
    with Store(redis_url) as store:
        with pytest.raises(mason.UnsafeGlobalError):
            store["framed"]
    assert not marker.exists()
    client.close()


def test_trusted_store_does_load_them(tmp_path):
    """The refusal is the policy's doing: the same planted bytes load under trusted=True."""
    path = str(tmp_path / "store.db")
    name, data, marker = payloads(tmp_path)[0]
    with Store(path) as store:
        store[name] = 0
    _plant_sqlite(path, name, data)
    with Store(path, trusted=True) as store:
        assert store[name] == {"ok": 1, "evil": None}
    assert marker.exists()


def test_resource_bombs_are_refused(tmp_path):
    """A memo bomb planted in a store fails fast under the store's limits."""
    path = str(tmp_path / "store.db")
    with Store(path) as store:
        store["bomb"] = 0
    # LONG_BINPUT 0x3FFFFFFF: stdlib would try to allocate a 16 GiB memo.
    _plant_sqlite(path, "bomb", b"\x80\x05N" + b"r" + struct.pack("<I", 0x3FFFFFFF) + b".")
    with Store(path) as store:
        with pytest.raises(mason.LimitError):
            store["bomb"]


def _plant_values_file(path: str, key, data: bytes) -> None:
    """Write ``data`` as the pickle of ``key``'s extent in the values file, with the nonces
    its row expects, and make the row describe it: what someone who can write both files
    would do."""
    conn = sqlite3.connect(path)
    ext, size, nonce = conn.execute('SELECT ext, size, nonce FROM "store_default" WHERE key = ?',
                                    (encode_key(key),)).fetchone()
    assert len(data) + 16 <= size
    tag = struct.pack("<Q", nonce)
    with open(path + "-values", "r+b") as f:
        f.seek(ext)
        f.write(tag + data + tag)
    with conn:
        conn.execute('UPDATE "store_default" SET value = ?, nbuf = 0 WHERE key = ?',
                     (struct.pack("<Q", len(data) << 1), encode_key(key)))
    conn.close()


def test_planted_values_file_bytes_are_refused(tmp_path):
    path = str(tmp_path / "store.db")
    for name, data, marker in payloads(tmp_path):
        with Store(path) as store:
            store[name] = b"innocent and large" * 2000  # in the values file, not the row
            store["neighbour"] = pickle.PickleBuffer(bytearray(50_000))
        _plant_values_file(path, name, data)
        with Store(path) as store:
            _assert_refused_everywhere(store, name)
            assert store["neighbour"] == bytearray(50_000)
            del store[name]
        assert not marker.exists(), f"{name}: the payload ran"
        pickle.loads(data)  # the control: stdlib pickle runs it
        assert marker.exists(), f"{name}: the control did not create its marker"


def test_damaged_values_file_is_reported(tmp_path):
    path = str(tmp_path / "store.db")
    with Store(path) as store:
        store["big"] = pickle.PickleBuffer(bytearray(100_000))  # out of band
        store["bytes"] = bytes(100_000)                         # a large pickle
    with open(path + "-values", "r+b") as f:
        f.seek(REGION)
        f.write(b"\xff" * 8)  # the first extent's leading nonce (after the space map)
    with Store(path) as store:
        damaged = []
        for key in ("big", "bytes"):
            try:
                store[key]
            except mason.store.StoreError as exc:
                assert "damaged" in str(exc)
                damaged.append(key)
        assert len(damaged) == 1  # the other value is intact
    os.truncate(path + "-values", REGION + 4096)  # both values lose their bytes
    with Store(path) as store:
        for key in ("big", "bytes"):
            with pytest.raises(mason.store.StoreError, match="damaged"):
                store[key]
        with pytest.raises(mason.store.StoreError, match="damaged"):
            list(store.items())


def test_values_file_must_be_a_regular_file(tmp_path):
    path = str(tmp_path / "store.db")
    os.mkfifo(path + "-values")  # opening it must neither block nor succeed
    with pytest.raises(mason.store.StoreError, match="not a regular file"):
        Store(path)


@pytest.mark.parametrize("planted", ["a text value", 12345, 1.5, b""])
def test_values_of_the_wrong_kind_are_errors_not_crashes(tmp_path, planted):
    path = str(tmp_path / "store.db")
    with Store(path) as store:
        store["k"] = 0
    conn = sqlite3.connect(path)
    with conn:
        conn.execute('UPDATE "store_default" SET value = ? WHERE key = ?',
                     (planted, encode_key("k")))
    conn.close()
    with Store(path) as store:
        with pytest.raises((mason.store.StoreError, mason.UnpicklingError)):
            store["k"]
        with pytest.raises((mason.store.StoreError, mason.UnpicklingError)):
            list(store.items())


def test_empty_redis_value_is_an_error(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.hset(b"mason:{default}", encode_key("k"), b"")
    with Store(redis_url) as store:
        with pytest.raises(mason.UnpicklingError):
            store["k"]
    client.close()
