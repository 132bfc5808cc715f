"""The store's lean SQLite connection (mason.store._statements): it uses the sqlite3 module's own
SQLite library, reports errors as that module's exceptions (so "database is locked" is told
apart the same way), never touches a parent's connection from a forked child, and its one-call
large put does nothing when the space map is not to be trusted."""

from __future__ import annotations

import os
import sqlite3

import pytest

statements = pytest.importorskip("mason.store._statements")

from mason.store import Store  # noqa: E402
from mason.store._keys import encode_key  # noqa: E402
from mason.store._space import REGION  # noqa: E402
from store_helpers import in_forked_child  # noqa: E402


def _table(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (key BLOB PRIMARY KEY, value BLOB, ext INTEGER)")
    conn.close()


def test_it_links_the_sqlite_library_of_the_sqlite3_module():
    import _json
    import _sqlite3

    assert statements.same_library(_sqlite3.__file__)
    assert statements.sqlite_version == sqlite3.sqlite_version
    assert not statements.same_library(_json.__file__)  # links no SQLite at all


def test_run_and_put(tmp_path):
    path = str(tmp_path / "t.db")
    _table(path)
    conn = statements.Connection(path, 1000)
    put = conn.prepare("INSERT INTO t (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                       "SET value = excluded.value WHERE ext IS NULL")
    select = conn.prepare("SELECT key, value, ext FROM t ORDER BY key")
    assert conn.put(put, b"a", b"1", 2) == 1
    assert conn.put(put, b"b", b"2", 2) == 2  # every second change says so
    assert conn.run(select, (), True) == [(b"a", b"1", None), (b"b", b"2", None)]
    assert conn.run(select, ()) == (b"a", b"1", None)  # the first row
    conn.run(conn.prepare("UPDATE t SET ext = 5 WHERE key = ?"), (b"a",))
    assert conn.put(put, b"a", b"changed", 100) == 0  # the guard held: no row changed
    assert conn.run(conn.prepare("SELECT value FROM t WHERE key = ?"), (b"a",)) == (b"1",)
    with pytest.raises(ValueError, match="parameters"):
        conn.run(select, (1,))
    conn.close()
    with pytest.raises(ValueError, match="closed"):
        conn.run(select, ())


def test_errors_are_the_sqlite3_modules(tmp_path):
    path = str(tmp_path / "t.db")
    _table(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
    conn = statements.Connection(path, 50)
    put = conn.prepare("INSERT INTO t (key, value) VALUES (?, ?)")
    with pytest.raises(sqlite3.OperationalError, match="locked") as busy:
        conn.put(put, b"k", b"v", 100)
    assert busy.value.sqlite_errorcode & 0xFF == 5  # SQLITE_BUSY, as the module reports it
    holder.execute("ROLLBACK")
    assert conn.put(put, b"k", b"v", 100) == 1
    with pytest.raises(sqlite3.IntegrityError) as duplicate:
        conn.put(put, b"k", b"again", 100)
    assert duplicate.value.sqlite_errorcode & 0xFF == 19  # SQLITE_CONSTRAINT
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        conn.prepare("SELECT * FROM missing")
    with pytest.raises(sqlite3.Error):
        statements.Connection(str(tmp_path / "absent" / "t.db"), 50)  # never creates


def test_a_forked_child_leaves_the_parents_connection_alone(tmp_path):
    path = str(tmp_path / "t.db")
    _table(path)
    conn = statements.Connection(path, 1000)
    put = conn.prepare("INSERT INTO t (key, value) VALUES (?, ?)")
    conn.run(conn.prepare("BEGIN IMMEDIATE"), ())
    conn.put(put, b"parent", b"1", 1)
    def child():
        with pytest.raises(ValueError, match="parent"):
            conn.put(put, b"child", b"2", 1)
        conn.close()  # forgets it, does not close the parent's file or roll it back

    in_forked_child(child)
    conn.run(conn.prepare("COMMIT"), ())  # the parent's transaction survived the child
    check = sqlite3.connect(path)
    assert check.execute("SELECT key FROM t").fetchall() == [(b"parent",)]
    check.close()


def test_the_one_call_put_does_nothing_on_an_untrusted_map(sqlite_path):
    with Store(sqlite_path) as store:
        backend = store._backend
        holder = backend._holder()
        if holder.fast_extent is None:
            pytest.skip("no lean connection in this build")
        store["first"] = bytes(100_000)  # the map is made and trusted
        backend._space.map[56:60] = (1).to_bytes(4, "little")  # "a change in progress"
        before = os.path.getsize(sqlite_path + "-values")
        done = holder.fast_extent(holder.extent, encode_key("second"), b"x" * 20_000, [],
                                  backend._space.map, backend._uid, b"\0" * 16, backend._fd,
                                  False, [])
        assert done is None
        assert os.path.getsize(sqlite_path + "-values") == before
        assert "second" not in store
        store["second"] = b"y" * 20_000  # the ordinary way rebuilds the map, then writes
        assert store["second"] == b"y" * 20_000 and store["first"] == bytes(100_000)
        assert backend._space.valid(backend._uid, backend._space.map[24:40])
        assert os.path.getsize(sqlite_path + "-values") > REGION
