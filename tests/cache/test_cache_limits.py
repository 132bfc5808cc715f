"""Size limit with least-recently-used eviction, age limit, and cleanup of dead writers'
temporary files."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mason.cache import Memory

KEY = b"0123456789abcdef0123456789abcdef"
BLOB = 100_000   # each result: about 100 KB on disk


def entries(location) -> list[Path]:
    return list(Path(location).rglob("*.mason"))


def total_size(location) -> int:
    return sum(p.stat().st_size for p in entries(location))


def age(path: Path, seconds: float) -> None:
    """Make an entry look last used ``seconds`` ago."""
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_size_limit_evicts_least_recently_used(location):
    memory = Memory(location, key=KEY, max_size=550_000)
    calls = []

    @memory.cache
    def blob(i):
        calls.append(i)
        return bytes([i]) * BLOB

    for i in range(5):
        blob(i)
        age(Path(blob.directory) / f"{blob.cache_key(i)}.mason", 100 - i)   # 0 oldest
    assert len(entries(location)) == 5
    # Use 0 and 1 again: now 2 is the least recently used, then 3.
    assert blob(0) == bytes([0]) * BLOB and blob(1) == bytes([1]) * BLOB
    assert calls == [0, 1, 2, 3, 4]
    blob(5)   # 6 x 100 KB > 550 KB: evict down to 90% (495 KB), oldest first
    assert total_size(location) <= 550_000 * 0.9
    assert not blob.check_call_in_cache(2) and not blob.check_call_in_cache(3)
    for i in (0, 1, 4, 5):
        assert blob.check_call_in_cache(i), i
    assert blob(2) == bytes([2]) * BLOB
    assert calls == [0, 1, 2, 3, 4, 5, 2]
    assert total_size(location) <= 550_000


def test_size_limit_holds_under_many_writes(location):
    memory = Memory(location, key=KEY, max_size=1_000_000)

    @memory.cache
    def blob(i):
        return os.urandom(BLOB)

    for i in range(40):
        blob(i)
        assert total_size(location) <= 1_000_000 + BLOB
    assert total_size(location) <= 1_000_000
    assert blob.check_call_in_cache(39)   # the newest survive


def test_size_limit_sees_other_writers_at_the_next_scan(location):
    a = Memory(location, key=KEY, max_size=600_000)
    b = Memory(location, key=KEY)

    @b.cache
    def other(i):
        return b"o" * BLOB

    for i in range(5):
        other(i)   # written by a Memory without a limit
    for path in entries(location):
        age(path, 50)

    @a.cache
    def mine(i):
        return b"m" * BLOB

    mine(0)   # a's first store scans: 600 KB > limit, evict the old ones first
    assert total_size(location) <= 600_000 * 0.9
    assert mine.check_call_in_cache(0)


def test_age_limit(location):
    memory = Memory(location, key=KEY, max_age=60)
    calls = []

    @memory.cache
    def f(x):
        calls.append(x)
        return x

    f(1)
    f(1)
    assert calls == [1]
    # An entry created long ago is a miss, even if it was used recently.
    older = Memory(location, key=KEY, max_age=0.5)
    g = older.cache(f.func)
    time.sleep(0.6)
    assert not g.check_call_in_cache(1)
    g(1)
    assert calls == [1, 1]
    assert f.check_call_in_cache(1)   # rewritten just now


def test_reduce_size_removes_expired_entries_and_dead_writers_files(location):
    memory = Memory(location, key=KEY, max_age=3600)

    @memory.cache
    def f(x):
        return x

    for i in range(3):
        f(i)
    old_entry = Path(f.directory) / f"{f.cache_key(0)}.mason"
    age(old_entry, 7200)
    dead = Path(f.directory) / ".mason-deadbeef.tmp"
    dead.write_bytes(b"half an entry")
    age(dead, 7200)
    live = Path(f.directory) / ".mason-cafe0123.tmp"
    live.write_bytes(b"a writer at work")
    assert memory.reduce_size() == 1
    assert not old_entry.exists() and not dead.exists()
    assert live.exists()   # young: its writer may still be running
    assert f.check_call_in_cache(1) and f.check_call_in_cache(2)


def test_an_entry_larger_than_the_limit_is_still_returned(location):
    memory = Memory(location, key=KEY, max_size=50_000)

    @memory.cache
    def big():
        return b"x" * BLOB

    assert big() == b"x" * BLOB
    assert big() == b"x" * BLOB


def test_hits_refresh_last_use(location):
    memory = Memory(location, key=KEY)

    @memory.cache
    def f(x):
        return x

    f(1)
    path = Path(f.directory) / f"{f.cache_key(1)}.mason"
    age(path, 1000)
    before = path.stat().st_mtime
    fresh = Memory(location, key=KEY).cache(f.func)   # another process, in effect
    fresh(1)
    assert path.stat().st_mtime > before + 900
