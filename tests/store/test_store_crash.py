"""A writer killed with SIGKILL mid-write loses at most its uncommitted work; the store reopens
clean, with every committed key present and intact."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time

from mason.store import Store
from store_helpers import assert_space_consistent, python_env

# Each committed step prints its number after the commit returned.  Steps alternate between
# single puts, transactions of five keys (all or nothing) and values with out-of-band buffers
# (a row plus its extent in the values file, which must never be seen apart).
WRITER = r"""
import sys
from pickle import PickleBuffer
from mason.store import Store
location, first = sys.argv[1], int(sys.argv[2])

def value(i, j=0):
    # A PickleBuffer of 20 KB travels out of band (it loads back as the bytearray).
    blob = PickleBuffer(bytearray((i * 7 + j + k) % 251 for k in range(20000 + i % 1000)))
    return {"i": i, "j": j, "blob": blob} if i % 3 == 2 else {"i": i, "j": j, "s": "v" * (i % 300)}

store = Store(location)
i = first
while True:
    if i % 2:
        with store.transaction():
            for j in range(5):
                store[("group", i, j)] = value(i, j)
    else:
        store[("single", i)] = value(i)
    print(i, flush=True)
    i += 1
"""


def expected(i, j=0):
    if i % 3 == 2:
        return {"i": i, "j": j, "blob": bytearray((i * 7 + j + k) % 251
                                                  for k in range(20000 + i % 1000))}
    return {"i": i, "j": j, "s": "v" * (i % 300)}


def _kill_writer_midway(location: str, first: int, run_for: float) -> list[int]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, location, str(first)],
                            env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout))
    reader.start()
    deadline = time.monotonic() + 60
    while len(lines) < 20 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)  # let it get going (imports, open) before the clock starts
    time.sleep(run_for)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    reader.join(30)
    err = proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL, f"the writer died by itself:\n{err}"
    return [int(line) for line in lines]


def test_sigkill_loses_only_uncommitted_work(sqlite_path):
    rng = random.Random(1234)
    committed: list[int] = []
    for round_ in range(8):
        done = _kill_writer_midway(sqlite_path, round_ * 1_000_000, rng.uniform(0.05, 0.4))
        assert done, "the writer committed nothing before it was killed"
        committed.extend(done)
        # The store reopens clean after every kill, and everything committed is intact.
        conn = sqlite3.connect(sqlite_path)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        # the values file is exercised, and no two live or free extents overlap (a write
        # killed before its commit left its extent unused, not half-owned)
        assert sum(1 for _ in conn.execute('SELECT 1 FROM "store_default" '
                                           'WHERE ext IS NOT NULL')) > 0
        assert_space_consistent(sqlite_path)
        conn.close()
        with Store(sqlite_path) as store:
            for i in done:
                if i % 2:
                    for j in range(5):
                        assert store[("group", i, j)] == expected(i, j)
                else:
                    assert store[("single", i)] == expected(i)
            # A transaction is all or nothing, even the one the kill interrupted.
            groups: dict[int, set[int]] = {}
            for key in store:
                if key[0] == "group":
                    groups.setdefault(key[1], set()).add(key[2])
            assert all(js == set(range(5)) for js in groups.values()), groups
            # Nothing but committed steps, plus at most the one in flight when killed (its
            # commit may have returned without the print reaching us).
            found = {key[1] for key in store if key[0] in ("group", "single")}
            assert set(committed) <= found
            assert len(found - set(committed)) <= round_ + 1
            # Every value with buffers has all of them: no row without its extent.
            for key, value in store.items():
                assert value == expected(key[1], key[2] if key[0] == "group" else 0)
    with Store(sqlite_path) as store:
        store["after"] = "still writable"
        assert store["after"] == "still writable"
    assert len(committed) >= 8


def test_redis_sigkill_mid_transaction_writes_nothing(redis_url):
    code = r"""
import sys, time
from mason.store import Store
store = Store(sys.argv[1], lock_ttl=1.0)
store["committed"] = 1
with store.transaction():
    for j in range(100):
        store[("half", j)] = j
    print("in transaction", flush=True)
    time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", code, redis_url], env=python_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "in transaction", proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    with Store(redis_url, timeout=20) as store:
        assert dict(store) == {"committed": 1}
        started = time.monotonic()
        store["next writer"] = 2  # waits at most for the dead client's lock to expire
        assert time.monotonic() - started < 10
        assert dict(store) == {"committed": 1, "next writer": 2}
