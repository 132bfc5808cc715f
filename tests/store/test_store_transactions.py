"""transaction(): all or nothing, read-your-writes, savepoints, waiting writers, timeouts."""

from __future__ import annotations

import threading
import time

import pytest

from mason.store import Store, StoreBusyError, TransactionLostError


class Boom(Exception):
    pass


def test_commit_all(location):
    with Store(location) as store:
        with store.transaction():
            for i in range(100):
                store[i] = i
            del store[0]
        assert len(store) == 99 and store[99] == 99 and 0 not in store
    with Store(location) as again:
        assert len(again) == 99


def test_exception_rolls_back_everything(location):
    with Store(location) as store:
        store.update({"keep": 1, "gone": 2})
        with pytest.raises(Boom):
            with store.transaction():
                store["new"] = 1
                store["keep"] = "changed"
                del store["gone"]
                store.update({"x": 1, "y": 2})
                raise Boom
        assert dict(store) == {"keep": 1, "gone": 2}
        with pytest.raises(Boom):
            with store.transaction():
                store.clear()
                assert len(store) == 0
                raise Boom
        assert dict(store) == {"keep": 1, "gone": 2}


def test_reads_inside_see_own_writes(location):
    with Store(location) as store:
        store.update({"a": 1, "b": 2})
        with store.transaction():
            store["c"] = 3
            del store["a"]
            assert "c" in store and "a" not in store
            assert store["c"] == 3 and store.get("a") is None
            assert len(store) == 2
            assert sorted(store) == ["b", "c"]
            assert dict(store.items()) == {"b": 2, "c": 3}
            store.clear()
            assert len(store) == 0 and list(store) == []
            store["d"] = 4
            assert dict(store) == {"d": 4} and len(store) == 1
        assert dict(store) == {"d": 4}


def test_nested_blocks_are_savepoints(location):
    with Store(location) as store:
        with store.transaction():
            store["outer"] = 1
            with pytest.raises(Boom):
                with store.transaction():
                    store["inner"] = 2
                    store["outer"] = "inner changed it"
                    raise Boom
            assert store["outer"] == 1 and "inner" not in store
            with store.transaction():
                store["inner2"] = 3
        assert dict(store) == {"outer": 1, "inner2": 3}


def test_others_do_not_see_uncommitted_writes(location):
    with Store(location) as store, Store(location) as other:
        store["k"] = "old"
        seen = {}
        with store.transaction():
            store["k"] = "new"
            store["added"] = 1

            def read():
                seen["k"] = other["k"]
                seen["added"] = "added" in other

            reader = threading.Thread(target=read)
            reader.start()
            reader.join(10)
        assert seen == {"k": "old", "added": False}
        assert other["k"] == "new"


def test_other_writers_wait_for_the_transaction(location):
    """A write from another thread during a transaction waits, then lands after it: the
    transaction's read-modify-write is not lost, and neither is the other write."""
    with Store(location) as store:
        store["n"] = 0
        started = threading.Event()
        done = threading.Event()

        def writer():
            started.set()
            store["n"] = 100  # a blind write
            store["w"] = "writer"
            done.set()

        with store.transaction():
            n = store["n"]
            thread = threading.Thread(target=writer)
            thread.start()
            started.wait(10)
            time.sleep(0.3)
            assert not done.is_set(), "a writer got in while a transaction was open"
            store["n"] = n + 1
        thread.join(30)
        assert done.is_set()
        assert store["n"] == 100 and store["w"] == "writer"


def test_busy_store_times_out_with_a_clear_error(location):
    with Store(location) as store, Store(location, timeout=0.5) as impatient:
        holding = threading.Event()
        release = threading.Event()

        def hold():
            with store.transaction():
                store["held"] = 1
                holding.set()
                release.wait(30)

        thread = threading.Thread(target=hold)
        thread.start()
        try:
            holding.wait(10)
            started = time.monotonic()
            with pytest.raises(StoreBusyError) as info:
                impatient["x"] = 1
            assert time.monotonic() - started < 20
            assert isinstance(info.value, TimeoutError)
            assert "timeout" in str(info.value)
            assert impatient.get("held") is None  # reading never waits
        finally:
            release.set()
            thread.join(30)
        impatient["x"] = 1
        assert store["x"] == 1 and store["held"] == 1


def test_transaction_returns_the_store(location):
    with Store(location) as store:
        with store.transaction() as same:
            same["a"] = 1
        assert same is store and store["a"] == 1


def test_redis_lock_expiry_writes_nothing(redis_url):
    with Store(redis_url, lock_ttl=0.3) as store:
        with pytest.raises(TransactionLostError, match="lock_ttl"):
            with store.transaction():
                store["a"] = 1
                time.sleep(0.8)  # the lock expires: another writer could have come in
                store["b"] = 2
        assert len(store) == 0
        store["after"] = 1  # the store is usable again


def test_redis_lock_is_renewed_while_used(redis_url):
    with Store(redis_url, lock_ttl=0.3) as store:
        with store.transaction():
            for i in range(12):
                store[i] = i
                time.sleep(0.05)  # 0.6 s in all, twice the ttl, touching the store throughout
        assert len(store) == 12


def test_redis_dead_holder_lock_expires(redis_url):
    """A client that died holding the lock (its lock key left behind) blocks writers for at
    most its ttl, and nothing of its transaction is visible."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.set(b"mason:{default}:lock", b"a-dead-client", px=500)
    with Store(redis_url, timeout=10) as store:
        started = time.monotonic()
        store["k"] = 1
        assert 0.3 < time.monotonic() - started < 5
        assert store["k"] == 1
    client.close()
