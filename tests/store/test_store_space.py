"""The values file's space map (mason.store._space): the C and Python twins of take and give
agree step by step; an untrusted map (half-changed, from another boot, of another database) is
rebuilt from the rows; freed extents come back after their commit, at close and after a
rollback, and are never free twice; two processes sharing the map never lose or overlap an
extent; large bytes values come back as bytes."""

from __future__ import annotations

import importlib.util
import os
import pickle
import random
import sqlite3
import struct
import types

import pytest

from mason.store import Store, StoreError, _space
from mason.store._keys import encode_key
from mason.store._space import CAPACITY, REGION

from store_helpers import assert_space_consistent, run_python, run_together, space_of

PAGE = 4096
BIG = 100_000     # a large value's length in these tests...
SLOT = 25 * PAGE  # ...and its extent: nonces and pickle included, 25 whole pages
GEN_AT, END_AT, STATE_AT, COUNT_AT, ENTRIES_AT = 40, 48, 56, 60, 64
UID, BOOT = bytes(range(16)), bytes(range(16, 32))


def _blob(tag) -> bytes:
    """BIG bytes that differ everywhere from any other tag's."""
    return random.Random(f"blob {tag}").randbytes(BIG)


# -- the two twins ---------------------------------------------------------------------------

def _python_twins():
    """The pure-Python take and give: _space.py run again as a module without a package, where
    its relative import of the C twins fails and its own functions stay."""
    spec = importlib.util.spec_from_file_location("_mason_space_pure", _space.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.take, types.FunctionType)
    assert isinstance(module.give, types.FunctionType)
    return module.take, module.give


def _c_twins():
    statements = pytest.importorskip("mason.store._statements")
    return statements.space_take, statements.space_give


@pytest.fixture
def twins():
    """``(c_take, c_give, py_take, py_give)``."""
    return (*_c_twins(), *_python_twins())


@pytest.fixture(params=["c", "python"])
def twin(request):
    """Each implementation's ``(take, give)`` in turn."""
    return _c_twins() if request.param == "c" else _python_twins()


def _new_map(gen: int, entries=(), end: int = REGION) -> bytearray:
    """A map's REGION bytes, as SpaceMap.rebuild leaves them."""
    view = bytearray(REGION)
    _space._HEAD.pack_into(view, 0, _space.MAGIC, UID, BOOT, gen, end, 0, len(entries))
    for i, entry in enumerate(entries):
        struct.pack_into("<QQ", view, ENTRIES_AT + 16 * i, *entry)
    return view


def _meaning(view) -> bytes:
    """The header and the ``count`` entries: every byte that means something (the slots past
    ``count`` hold stale entries, which the twins may leave in different orders)."""
    count = struct.unpack_from("<I", view, COUNT_AT)[0]
    return bytes(view[:ENTRIES_AT + 16 * count])


def _check_map(view, live) -> None:
    """Not half-changed; free entries and live extents disjoint, in [REGION, end)."""
    assert struct.unpack_from("<I", view, STATE_AT)[0] == 0
    end = struct.unpack_from("<Q", view, END_AT)[0]
    extents = sorted(_space._entries(view) + [(off, size) for off, size, _ in live])
    assert all(a + n <= b for (a, n), (b, _) in zip(extents, extents[1:])), "overlap"
    assert not extents or (extents[0][0] >= REGION and extents[-1][0] + extents[-1][1] <= end)


def _differential(twins, rng, c_map, live, steps: int, needs) -> None:
    """``steps`` random takes and gives on ``c_map`` and a copy, one twin each; the returned
    offsets and the maps stay identical.  ``live`` holds ``(off, len, gen)`` taken and not
    given back yet; an extent given with a stale generation is dropped, so it leaks."""
    c_take, c_give, py_take, py_give = twins
    py_map = bytearray(c_map)
    for _ in range(steps):
        gen = struct.unpack_from("<Q", c_map, GEN_AT)[0]
        roll = rng.random()
        if roll < 0.03:  # a rebuild elsewhere: the map's generation moves on
            for view in (c_map, py_map):
                struct.pack_into("<Q", view, GEN_AT, gen + 1)
            continue
        if live and roll < 0.5:
            freed = []
            for _ in range(rng.randint(0, min(4, len(live)))):
                off, size, when = live.pop(rng.randrange(len(live)))
                if rng.random() < 0.2:  # freed under another generation than the map's
                    when = rng.choice([when - 1, when + 1, gen ^ (1 << 40)])
                freed.append((off, size, when))
            assert c_give(c_map, list(freed)) is None
            assert py_give(py_map, list(freed)) is None
        else:
            need = PAGE * rng.choice(needs)
            off = c_take(c_map, need)
            assert py_take(py_map, need) == off
            live.append((off, need, gen))
        assert _meaning(c_map) == _meaning(py_map)
        _check_map(c_map, live)


@pytest.mark.parametrize("seed", range(4))
def test_c_and_python_twins_agree_on_random_takes_and_gives(twins, seed):
    """Several hundred random steps: same offsets, same maps, never an overlap."""
    rng = random.Random(seed)
    live: list = []
    _differential(twins, rng, _new_map(rng.getrandbits(56)), live, 600,
                  needs=[1, 1, 2, 3, 5, 8, 13, 25, 25, 25, 64, 300])


def test_c_and_python_twins_agree_on_a_nearly_full_map(twins):
    """Near CAPACITY entries: gives that fill the map merge it, identically in both twins."""
    rng = random.Random(7)
    n = CAPACITY - 3
    # Every other page free, so no two entries are adjacent; the pages between are live.
    free = [(REGION + 2 * i * PAGE, PAGE) for i in range(n)]
    view = _new_map(11, free, end=REGION + 2 * n * PAGE)
    live = [(REGION + (2 * i + 1) * PAGE, PAGE, 11) for i in range(n)]
    _differential(twins, rng, view, live, 40, needs=[1, 1, 2, 3])


def test_a_full_map_that_merging_cannot_shrink_drops_what_is_given(twins):
    """CAPACITY entries, none adjacent: a give merges in vain and drops the extent (it leaks
    until the next rebuild), in both twins alike."""
    c_take, c_give, py_take, py_give = twins
    free = [(REGION + 2 * i * PAGE, PAGE) for i in reversed(range(CAPACITY))]
    c_map = _new_map(5, free, end=REGION + 2 * CAPACITY * PAGE)
    py_map = bytearray(c_map)
    given = [(REGION + PAGE, PAGE, 5)]
    c_give(c_map, list(given))
    py_give(py_map, list(given))
    assert _meaning(c_map) == _meaning(py_map)
    assert sorted(_space._entries(c_map)) == sorted(free)  # merged (so sorted), not grown
    _check_map(c_map, [(REGION + PAGE, PAGE, 5)])


def test_give_drops_extents_of_another_generation(twin):
    """An entry freed under another generation than the map's is dropped, not given: a
    rebuild since then already found it free."""
    take, give = twin
    view = _new_map(42, [(REGION, 3 * PAGE)], end=REGION + 10 * PAGE)
    before = bytes(view)
    give(view, [(REGION + 5 * PAGE, PAGE, 41), (REGION + 7 * PAGE, 2 * PAGE, 43),
                (REGION + 3 * PAGE, PAGE, 0)])
    assert bytes(view) == before
    give(view, [(REGION + 5 * PAGE, PAGE, 41), (REGION + 7 * PAGE, 2 * PAGE, 42)])
    assert sorted(_space._entries(view)) == [(REGION, 3 * PAGE), (REGION + 7 * PAGE, 2 * PAGE)]
    assert take(view, PAGE) == REGION + 7 * PAGE  # the best fit: the smaller of the two


# -- a store's values file -------------------------------------------------------------------

def _header(path: str) -> dict:
    with open(path + "-values", "rb") as f:
        magic, uid, boot, gen, end, state, count = _space._HEAD.unpack(f.read(64))
    return {"magic": magic, "uid": uid, "boot": boot, "gen": gen, "end": end, "state": state,
            "count": count}


def _patch(path: str, at: int, data: bytes) -> None:
    """Overwrite bytes of the values file (its map is a shared memory map: an open store sees
    the change at once)."""
    fd = os.open(path + "-values", os.O_RDWR)
    try:
        os.pwrite(fd, data, at)
    finally:
        os.close(fd)


def _extent(path: str, key) -> tuple[int, int] | None:
    """``(offset, length)`` of the committed extent of ``key``'s value, or None."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute('SELECT ext, size FROM "store_default" WHERE key = ?',
                           (encode_key(key),)).fetchone()
    finally:
        conn.close()
    return None if row is None or row[0] is None else (row[0], row[1])


def _live(path: str) -> list[tuple[int, int]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute('SELECT ext, size FROM "store_default" '
                            'WHERE ext IS NOT NULL').fetchall()
    finally:
        conn.close()


def _assert_tiled(path: str) -> None:
    """Every byte of [REGION, end) is in exactly one live or free extent: nothing leaked."""
    free, end = space_of(path)
    at = REGION
    for off, size in sorted(_live(path) + free):
        assert off == at, f"{'a gap' if off > at else 'an overlap'} at {at}"
        at = off + size
    assert at == end


def _filled(path: str) -> dict:
    """A store with six large values, two of them deleted (their extents free on the map);
    returns the four that remain."""
    values = {i: _blob(i) for i in range(6)}
    with Store(path) as store:
        for key, value in values.items():
            store[key] = value
        del store[1], store[3]
        del values[1], values[3]
    return values


def _other(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data)


# Untrusted maps, made while the store is closed: (offset, bytes to write there).
UNTRUSTED = {
    "half-changed": lambda path: (STATE_AT, struct.pack("<I", 1)),
    "another boot": lambda path: (24, _other(_space.boot_id())),
    "another database": lambda path: (8, _other(_header(path)["uid"])),
    "not a map": lambda path: (0, b"garbage!"),
}


def _write_large(store, key, value, how: str) -> None:
    if how == "transaction":
        with store.transaction():
            store[key] = value
    else:
        store[key] = value


@pytest.mark.parametrize("how", ["put", "transaction"])
@pytest.mark.parametrize("damage", sorted(UNTRUSTED))
def test_an_untrusted_map_is_rebuilt_at_the_next_write(sqlite_path, damage, how):
    """A map left half-changed, from another boot, of another database or not a map at all is
    rebuilt from the rows by the next write (a large put outside a transaction, or a write
    transaction), never used: it also claims a live extent free, which a put would overwrite."""
    values = _filled(sqlite_path)
    before = _header(sqlite_path)
    assert before["state"] == 0 and before["count"] == 2
    at, data = UNTRUSTED[damage](sqlite_path)
    _patch(sqlite_path, at, data)
    # The lie a trusted map would act on: key 0's extent is its only free entry.
    _patch(sqlite_path, COUNT_AT, struct.pack("<I", 1))
    _patch(sqlite_path, ENTRIES_AT, struct.pack("<QQ", *_extent(sqlite_path, 0)))
    with Store(sqlite_path) as store:
        _write_large(store, "new", _blob("new"), how)
        after = _header(sqlite_path)
        for key, value in values.items():
            assert store[key] == value
        assert store["new"] == _blob("new")
    assert after["magic"] == _space.MAGIC and after["state"] == 0
    assert after["boot"] == _space.boot_id() and after["uid"] == before["uid"]
    if damage == "not a map":
        assert after["gen"] != before["gen"]
    else:
        assert after["gen"] == before["gen"] + 1
    # The new value went into one of the two real gaps; the other is still free.
    assert _extent(sqlite_path, "new")[1] == SLOT and len(space_of(sqlite_path)[0]) == 1
    _assert_tiled(sqlite_path)
    assert_space_consistent(sqlite_path)


def test_a_map_at_the_last_generation_is_rebuilt(sqlite_path):
    """The u64 generation of a damaged map may be anything, its largest value included."""
    values = _filled(sqlite_path)
    _patch(sqlite_path, GEN_AT, struct.pack("<Q", 2 ** 64 - 1))
    _patch(sqlite_path, STATE_AT, struct.pack("<I", 1))
    with Store(sqlite_path) as store:
        store["new"] = _blob("new")
        assert all(store[key] == value for key, value in values.items())
    assert _header(sqlite_path)["state"] == 0
    assert_space_consistent(sqlite_path)


@pytest.mark.parametrize("how", ["put", "transaction"])
def test_a_freed_extent_is_reused(sqlite_path, how):
    """A written, A overwritten, B written: B goes where A's first value was, and the file
    holds two extents, not three."""
    with Store(sqlite_path) as store:
        _write_large(store, "A", _blob(1), how)
        first = _extent(sqlite_path, "A")
        _write_large(store, "A", _blob(2), how)
        _write_large(store, "B", _blob(3), how)
        assert store["A"] == _blob(2) and store["B"] == _blob(3)
    assert first[1] == SLOT and _extent(sqlite_path, "B") == first
    assert os.path.getsize(sqlite_path + "-values") <= REGION + 2 * SLOT
    _assert_tiled(sqlite_path)


@pytest.mark.parametrize("how", ["overwrite", "delete"])
def test_close_gives_back_what_the_process_freed(sqlite_path, how):
    """An extent freed by the last write before close() is on the map afterwards, not
    leaked."""
    with Store(sqlite_path) as store:
        store["A"] = _blob(1)
        old = _extent(sqlite_path, "A")
        if how == "overwrite":
            store["A"] = _blob(2)
        else:
            del store["A"]
        assert old in space_of(sqlite_path, store)[0]
        assert old not in space_of(sqlite_path)[0]  # waiting in the process, not on the map
    assert old in space_of(sqlite_path)[0]
    _assert_tiled(sqlite_path)
    with Store(sqlite_path) as store:
        store["B"] = _blob(3)
    assert _extent(sqlite_path, "B") == old


def test_an_extent_freed_before_a_rebuild_is_free_once(sqlite_path):
    """The rebuild finds the extent the process still holds as freed; giving it afterwards
    would make it free twice, so its stale generation drops it."""
    with Store(sqlite_path) as store:
        store["A"] = _blob(1)
        old = _extent(sqlite_path, "A")
        store["A"] = _blob(2)
        gen = _header(sqlite_path)["gen"]
        assert store._backend._pending == [(*old, gen)]
        _patch(sqlite_path, STATE_AT, struct.pack("<I", 1))
        with store.transaction():  # rebuilds the map, then gives what the process freed
            pass
        assert _header(sqlite_path)["gen"] == gen + 1
        assert space_of(sqlite_path, store)[0] == [old]
        store["B"] = _blob(3)
        store["C"] = _blob(4)
        assert _extent(sqlite_path, "B") == old and _extent(sqlite_path, "C") != old
        assert store["A"] == _blob(2) and store["B"] == _blob(3) and store["C"] == _blob(4)
    _assert_tiled(sqlite_path)


def test_a_rolled_back_transaction_gives_back_what_it_took(sqlite_path):
    """The extent a rolled-back transaction took is free after the next write transaction."""
    with Store(sqlite_path) as store:
        store["keep"] = _blob(0)
        end = space_of(sqlite_path)[1]
        with pytest.raises(ZeroDivisionError):
            with store.transaction():
                store["x"] = _blob(1)
                assert space_of(sqlite_path)[1] == end + SLOT  # taken from the end
                1 / 0
        assert "x" not in store
        with store.transaction():  # a later write transaction
            store["small"] = 1
        assert space_of(sqlite_path)[0] == [(end, SLOT)]
        store["y"] = _blob(2)
        assert _extent(sqlite_path, "y") == (end, SLOT)
        assert store["keep"] == _blob(0) and store["y"] == _blob(2)
    _assert_tiled(sqlite_path)


def test_a_rolled_back_savepoint_gives_back_what_it_took(sqlite_path):
    """A nested transaction rolled back inside one that commits: its extent is free after the
    next write transaction, the outer one's is live."""
    with Store(sqlite_path) as store:
        store["keep"] = _blob(9)
        end = space_of(sqlite_path)[1]
        with store.transaction():
            store["outer"] = _blob(0)
            with pytest.raises(ZeroDivisionError):
                with store.transaction():
                    store["inner"] = _blob(1)
                    1 / 0
        assert "inner" not in store and store["outer"] == _blob(0)
        assert _extent(sqlite_path, "outer") == (end, SLOT)
        with store.transaction():
            pass
        assert space_of(sqlite_path)[0] == [(end + SLOT, SLOT)]
    _assert_tiled(sqlite_path)


# -- two processes ---------------------------------------------------------------------------

KEYS, ROUNDS = 20, 50

BLOB_SOURCE = r"""
import random

def blob(key, writer, round_):
    head = b"%02d:%d:%02d:" % (key, writer, round_)
    return head + random.Random(head).randbytes(100_000 - len(head))

def written(key, value):
    '''Whether value is one that a writer wrote to key.'''
    try:
        key_, writer, round_ = (int(part) for part in value[:8].split(b":")[:3])
    except ValueError:
        return False
    return key_ == key and value == blob(key, writer, round_)
"""

WRITER = BLOB_SOURCE + r"""
import sys, time
from mason.store import Store
location, wid, keys, rounds, start_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), float(sys.argv[5])
rng = random.Random(wid)
store = Store(location)
while time.time() < start_at:   # start together, to collide as much as possible
    time.sleep(0.001)
for round_ in range(rounds):
    order = list(range(keys))
    rng.shuffle(order)
    if round_ % 5 == 4:   # some rounds in transactions of four puts
        for i in range(0, keys, 4):
            with store.transaction():
                for key in order[i:i + 4]:
                    store[key] = blob(key, wid, round_)
    else:
        for key in order:
            store[key] = blob(key, wid, round_)
            other = rng.randrange(keys)
            value = store.get(other)
            if value is not None and not written(other, value):
                sys.exit(f"writer {wid} read a damaged value of key {other}")
with store.transaction():   # gives back what this process freed (close() tries only once)
    pass
store.close()
print("done", wid)
"""


def test_two_processes_overwrite_the_same_keys(sqlite_path):
    """Two processes overwrite the same 20 large keys 50 times each, reading as they go: no
    value is ever read damaged, each ends as one writer's last, and the file stays bounded
    with no extent lost or shared."""
    Store(sqlite_path).close()
    run_together(WRITER, [[sqlite_path, str(w), str(KEYS), str(ROUNDS)] for w in range(2)])
    check: dict = {}
    exec(BLOB_SOURCE, check)
    with Store(sqlite_path) as store:
        assert len(store) == KEYS
        for key in range(KEYS):
            assert store[key] in (check["blob"](key, 0, ROUNDS - 1),
                                  check["blob"](key, 1, ROUNDS - 1))
    assert os.path.getsize(sqlite_path + "-values") <= REGION + KEYS * 4 * SLOT
    _assert_tiled(sqlite_path)
    assert_space_consistent(sqlite_path)


# -- large bytes -----------------------------------------------------------------------------

def test_large_bytes_come_back_as_bytes(location):
    """bytes stored out of band come back as exactly bytes, however they are read; a writable
    PickleBuffer's bytes come back as a bytearray."""
    big = _blob("bytes")
    with Store(location) as store:
        store["b"] = big
        store["edge"] = big[:16 * 1024]        # the smallest that travels out of band
        store["under"] = big[:16 * 1024 - 1]   # the largest that stays in band
        store["list"] = [big, big[1:]]
        store["pb"] = pickle.PickleBuffer(bytearray(big))
        store["ba"] = bytearray(big)
        with store.transaction():
            store["in tx"] = big
        for key, expected in [("b", big), ("edge", big[:16384]), ("under", big[:16383]),
                              ("in tx", big)]:
            got = store[key]
            assert type(got) is bytes and got == expected, key
        assert type(store.get("b")) is bytes
        assert [type(v) for v in store["list"]] == [bytes, bytes]
        assert store["list"] == [big, big[1:]]
        for key in ("pb", "ba"):
            got = store[key]
            assert type(got) is bytearray and got == big, key
        items = dict(store.items())
        assert type(items["b"]) is bytes and items["b"] == big
        assert type(items["pb"]) is bytearray and items["pb"] == big
        assert type(store.pop("b")) is bytes


@pytest.mark.parametrize("uid", ["not hex", "abcd", None])
def test_a_damaged_uid_is_a_store_error(sqlite_path, uid):
    """The uid ties the space map to its database: without a readable one the store is
    damaged, said as such, not a raw ValueError."""
    Store(sqlite_path).close()
    conn = sqlite3.connect(sqlite_path)
    with conn:
        if uid is None:
            conn.execute("DELETE FROM mason_meta WHERE name = 'uid'")
        else:
            conn.execute("UPDATE mason_meta SET value = ? WHERE name = 'uid'", (uid,))
    conn.close()
    with pytest.raises(StoreError, match="damaged.*uid"):
        Store(sqlite_path)


def test_the_store_works_without_its_compiled_connection(sqlite_path):
    """An install without a compiler: the sqlite3 module's connections and the Python twins
    of take and give do all of it, on the same files, with the same results."""
    code = r"""
import sys
sys.modules["mason.store._statements"] = None   # as if it had not been built
from mason.store import Store, _sqlite, _space
assert _sqlite._statements is None and _space.take.__module__ == "mason.store._space"
path = sys.argv[1]
big = [bytes([i]) * 100_000 for i in range(3)]
with Store(path) as store:
    assert store._backend._holder().lean is None
    for r in range(3):
        for i in range(5):
            store[i] = big[(i + r) % 3]          # large: the Python transaction path
            store[("small", i)] = {"r": r, "i": i}
        with store.transaction():
            store["t"] = big[r]
            del store[("small", 0)]
    assert [store[i] for i in range(5)] == [big[(i + 2) % 3] for i in range(5)]
    assert store["t"] == big[2] and ("small", 0) not in store
print("ok")
"""
    assert run_python(code, sqlite_path).stdout.strip() == "ok"
    with Store(sqlite_path) as store:  # and the compiled build reads what it wrote
        assert store["t"] == bytes([2]) * 100_000
        store[0] = b"again" * 10_000
    assert_space_consistent(sqlite_path)
