"""Many processes and threads on one store: no lost write, no lost update, no lock error."""

from __future__ import annotations

import os
import threading

import pytest

from mason.store import Store
from store_helpers import assert_space_consistent, in_forked_child, run_together

WRITER = r"""
import sys, time
from mason.store import Store
location, wid, n, start_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
store = Store(location)
while time.time() < start_at:   # start together, to collide as much as possible
    time.sleep(0.001)
for i in range(n):
    store[(wid, i)] = {"writer": wid, "i": i, "pad": "x" * (i % 50)}
    if i % 4 == 0:
        with store.transaction():              # read-modify-write of one shared key
            store["counter"] = store.get("counter", 0) + 1
    if i % 10 == 0:
        store.update({("batch", wid, i, j): j for j in range(5)})
    if i % 25 == 0:
        store.setdefault(("first", i), wid)
        store.pop(("gone", wid), None)
        len(store)
store.close()
print("done", wid)
"""


def _run_writers(location: str, writers: int, n: int) -> None:
    run_together(WRITER, [[location, str(w), str(n)] for w in range(writers)])


@pytest.mark.parametrize("writers", [4])
def test_processes_write_concurrently(location, writers):
    n = 200
    Store(location).close()  # created before the race (opening concurrently is tested below)
    _run_writers(location, writers, n)
    with Store(location) as store:
        for w in range(writers):
            for i in range(n):
                assert store[(w, i)] == {"writer": w, "i": i, "pad": "x" * (i % 50)}
            for i in range(0, n, 10):
                for j in range(5):
                    assert store[("batch", w, i, j)] == j
        assert store["counter"] == writers * len(range(0, n, 4)), "lost updates"
        for i in range(0, n, 25):
            assert store[("first", i)] in range(writers)
        expected = writers * n + writers * len(range(0, n, 10)) * 5 + 1 + len(range(0, n, 25))
        assert len(store) == expected


def test_processes_create_the_store_concurrently(tmp_path):
    location = str(tmp_path / "fresh.db")
    _run_writers(location, 4, 20)
    with Store(location) as store:
        assert store["counter"] == 4 * 5
        assert all(store[(w, i)]["i"] == i for w in range(4) for i in range(20))


def test_threads_share_one_store(location):
    threads_n, n = 8, 150
    errors = []
    with Store(location) as store:
        store["counter"] = 0
        barrier = threading.Barrier(threads_n)

        def work(t):
            try:
                barrier.wait(10)
                for i in range(n):
                    store[(t, i)] = [t, i]
                    if i % 5 == 0:
                        with store.transaction():
                            store["counter"] += 1
                    if i % 30 == 0:
                        assert store[(t, i)] == [t, i]
                        sum(1 for _ in store.items())
            except BaseException as exc:  # reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert store["counter"] == threads_n * len(range(0, n, 5))
        assert all(store[(t, i)] == [t, i] for t in range(threads_n) for i in range(n))


def test_sqlite_thread_connections_are_closed_when_threads_end(sqlite_path):
    with Store(sqlite_path) as store:
        store["a"] = 1

        def touch():
            assert store["a"] == 1

        for _ in range(20):
            thread = threading.Thread(target=touch)
            thread.start()
            thread.join()
        # one connection per live thread: the 20 finished threads left none behind
        assert len(store._backend._conns) == 1


def test_forked_child_uses_its_own_connection(location):
    with Store(location) as store:
        store["parent"] = 1
        with store.transaction():
            store["before fork"] = 2
        def child():  # writes through the inherited Store object
            store["child"] = store["parent"] + 1
            with store.transaction():
                store["child txn"] = 3
            store.close()

        in_forked_child(child)
        # the parent's connection still works, and sees the child's writes
        store["parent again"] = 4
        assert store["child"] == 2 and store["child txn"] == 3
        assert len(store) == 5


def test_forked_child_never_gives_back_what_its_parent_freed(sqlite_path):
    """The parent freed an extent and has not put it back on the space map yet when it forks:
    only the parent may put it back (two processes giving one extent would each reuse it)."""
    big = [bytes([i]) * 100_000 for i in range(4)]
    with Store(sqlite_path) as store:
        store["a"] = big[0]
        store["a"] = big[1]  # frees the first extent; put back at this process's next write
        assert store._backend._pending
        def child():
            for i in range(3):  # writes that would put back the parent's extent
                store[f"child{i}"] = big[2]
            store.close()

        in_forked_child(child)
        for i in range(3):
            store[f"parent{i}"] = big[3]
        assert store["a"] == big[1]
        assert all(store[f"child{i}"] == big[2] and store[f"parent{i}"] == big[3]
                   for i in range(3))
    assert_space_consistent(sqlite_path)


def _checkpoint_threads():
    return [t for t in threading.enumerate() if t.name == "mason-store-checkpoint"]


def test_checkpoints_run_on_a_thread_that_ends_with_the_store(sqlite_path):
    from mason.store._sqlite import _CHECKPOINT_EVERY

    before = set(_checkpoint_threads())
    store = Store(sqlite_path)
    assert set(_checkpoint_threads()) == before  # started by writes, not by opening
    for i in range(_CHECKPOINT_EVERY + 1):
        store[i] = i
    started = set(_checkpoint_threads()) - before
    assert len(started) == 1
    store.close()
    thread, = started
    assert not thread.is_alive()  # close() ends it
    with Store(sqlite_path) as store:
        assert all(store[i] == i for i in range(_CHECKPOINT_EVERY + 1))


def test_a_store_dropped_without_close_ends_its_thread(sqlite_path):
    import gc

    from mason.store._sqlite import _CHECKPOINT_EVERY

    before = set(_checkpoint_threads())
    store = Store(sqlite_path)
    for i in range(_CHECKPOINT_EVERY + 1):
        store[i] = i
    started = set(_checkpoint_threads()) - before
    del store
    gc.collect()
    for thread in started:
        thread.join(60)
        assert not thread.is_alive()


def test_the_wal_stays_bounded(sqlite_path):
    """However many commits, the WAL stays near the automatic checkpoint's size (10,000 pages),
    and every value is there afterwards."""
    from mason.store._sqlite import _AUTOCHECKPOINT, _PAGE_SIZE

    with Store(sqlite_path) as store:
        for round_ in range(3):
            for i in range(12_000):
                store[i] = (round_, i)
            assert os.path.getsize(sqlite_path + "-wal") <= \
                1.2 * _AUTOCHECKPOINT * (_PAGE_SIZE + 24)
        assert all(store[i] == (2, i) for i in range(0, 12_000, 7))
