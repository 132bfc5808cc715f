"""mason.Store against the persistent dicts people use today: shelve, sqlitedict, diskcache.

    python benchmarks/bench_store.py               # 100k small, 1k x 100 KB; 5 repeats
    python benchmarks/bench_store.py --quick       # 10k small, 200 x 100 KB; 3 repeats
    python benchmarks/bench_store.py --only "small*" --repeat 9
    python benchmarks/bench_store.py --redis redis://127.0.0.1:6379/0   # add a Redis column

Contenders, each in its default configuration, used as its documentation shows:

* ``mason.Store``: SQLite in WAL mode, synchronous=NORMAL; every put is its own committed
  transaction (``store[k] = v``), and the "batched" rows wrap the loop in
  ``store.transaction()``; values of 16 KiB and more (and arrays' out-of-band buffers) are
  written to the values file beside the database before the row that points to them commits;
  values are loaded under its default policy (plus numpy's two names for the array rows),
  the peers load with pickle;
* ``shelve``: the standard library's, on whichever dbm this Python has (the table says which);
  its writes are durable only at ``sync()`` / ``close()``, which the put rows include;
* ``sqlitedict.SqliteDict``: default ``autocommit=False``, ``commit()`` at the end of the loop
  (its batched row is the same thing);
* ``diskcache.Cache``: every set is its own transaction; the batched row wraps the loop in
  ``cache.transact()``.  Values over 32 KB go to files of their own, by its design.

Workloads (one timed call does the whole loop; the harness in ``harness.py`` takes interleaved
medians: each repeat times every contender once, in a rotating order):

* ``small put`` / ``small put batched`` / ``small get``: N small records (a dict of 4 fields,
  about 80 bytes pickled) written under N keys, then read back; the put loops overwrite the
  same N keys with new values on every call after the first;
* ``100KB put`` / ``100KB get``: M values of 100 KB of bytes;
* ``array put`` / ``array get``: M numpy float64 arrays of 100 KB (mason sends their memory
  out of band; the peers pickle it in band);
* ``2 writers``: two processes write N/4 distinct keys each into one store at once, every
  write committed on its own where the library can (mason.Store and diskcache by default,
  sqlitedict with ``autocommit=True``; shelve cannot, and syncs at close); the wall time per
  write, and how many of the 2 x N/4 writes are missing afterwards (lost writes), or the error
  a writer died with.

Per-operation times are the median call divided by the number of operations.  The verdict
column holds mason.Store against the fastest peer on each row, and lost writes against zero.
The output starts with what one put of each contender guarantees (atomic commit, survives a
killed process, fsync), because the contenders do not all do the same work for a put.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

try:
    import mason
except ImportError:  # not installed: use the working tree's src/
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
    import mason

import harness  # noqa: E402
from harness import Contender, Workload  # noqa: E402
from mason.store import Store  # noqa: E402

NUMPY_ALLOW = ["numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer",
               "numpy.dtype"]


def small_value(i: int, version: int) -> dict:
    return {"id": i, "name": f"user-{i}", "score": i * 0.5 + version, "tags": ["a", "b"]}


# -- the contenders ----------------------------------------------------------------------------

class Peer:
    """One library: how to open it, write a loop, read a loop and close it."""

    name = ""
    durability = ""  # what one put guarantees, printed above the table

    def __init__(self, root: str):
        self.dir = tempfile.mkdtemp(prefix=f"{self.name.replace('.', '_')}-", dir=root)
        self.db = None

    def open(self, tag: str):
        raise NotImplementedError

    def put_all(self, db, items, batched: bool) -> None:
        for key, value in items:
            db[key] = value

    def get_all(self, db, keys) -> None:
        for key in keys:
            db[key]

    def close(self, db) -> None:
        db.close()

    def version(self) -> str:
        return ""


class MasonStore(Peer):
    name = "mason.Store"
    durability = ("each put an atomic committed transaction (WAL, synchronous=NORMAL): "
                  "survives a killed process; no fsync per put (fsync at checkpoints)")

    def __init__(self, root: str, location: str | None = None):
        super().__init__(root)
        self.location = location

    def open(self, tag: str):
        if self.location:
            return Store(self.location, name=f"bench_{tag}", allow=NUMPY_ALLOW)
        return Store(os.path.join(self.dir, f"{tag}.db"), allow=NUMPY_ALLOW)

    def put_all(self, db, items, batched: bool) -> None:
        if batched:
            with db.transaction():
                for key, value in items:
                    db[key] = value
        else:
            for key, value in items:
                db[key] = value

    def version(self) -> str:
        import sqlite3

        try:
            from mason import _limits  # noqa: F401
            check = "compiled limits check"
        except ImportError:
            check = "pure-Python limits check"
        return f"mason {getattr(mason, '__version__', '?')} ({check}), SQLite " \
               f"{sqlite3.sqlite_version}"


class MasonRedis(MasonStore):
    name = "mason.Store redis"
    durability = "each put one HSET on the server; durability is the server's configuration"

    def version(self) -> str:
        return f"Redis at {self.location}"


class Shelve(Peer):
    name = "shelve"
    durability = ("no transaction, no fsync: dbm.dumb overwrites the value in place; its "
                  "index is written at sync() (a killed process can lose or tear writes)")

    def open(self, tag: str):
        import shelve

        return shelve.open(os.path.join(self.dir, tag))

    def put_all(self, db, items, batched: bool) -> None:
        for key, value in items:
            db[key] = value
        db.sync()  # shelve's writes are durable only here

    def version(self) -> str:
        import dbm

        probe = os.path.join(self.dir, "probe")
        dbm.open(probe, "c").close()
        return f"shelve on {dbm.whichdb(probe)}"


class SqliteDictPeer(Peer):
    name = "sqlitedict"
    durability = ("one commit at the end of each loop (autocommit=False); journal_mode=DELETE, "
                  "synchronous=OFF: no fsync")

    def open(self, tag: str):
        from sqlitedict import SqliteDict

        return SqliteDict(os.path.join(self.dir, f"{tag}.sqlite"))

    def put_all(self, db, items, batched: bool) -> None:
        for key, value in items:
            db[key] = value
        db.commit()

    def version(self) -> str:
        import sqlitedict

        return f"sqlitedict {sqlitedict.__version__}"


class DiskCachePeer(Peer):
    name = "diskcache"
    durability = ("each set its own committed transaction (WAL, synchronous=NORMAL); values "
                  "over 32 KB in files of their own, not fsynced")

    def open(self, tag: str):
        import diskcache

        return diskcache.Cache(os.path.join(self.dir, tag))

    def put_all(self, db, items, batched: bool) -> None:
        if batched:
            with db.transact():
                for key, value in items:
                    db[key] = value
        else:
            for key, value in items:
                db[key] = value

    def version(self) -> str:
        import diskcache

        return f"diskcache {diskcache.__version__}"


# -- workloads ---------------------------------------------------------------------------------

class Data:
    """The items a put writes: ``versions`` lists of (key, value) over the same keys, with
    different values, taken in turn by successive calls.  (Writing a value identical to the
    stored one would flatter SQLite, which skips rewriting pages whose bytes are unchanged.)"""

    def __init__(self, tag: str, versions: list, op: str, batched: bool = False):
        self.tag, self.versions, self.op, self.batched = tag, versions, op, batched
        self.keys = [key for key, _ in versions[0]]


VERSIONS = 3


def make_workloads(n_small: int, n_large: int) -> list[Workload]:
    import random

    import numpy

    rng = random.Random(7)
    small = [[(f"key:{i}", small_value(i, v)) for i in range(n_small)] for v in range(VERSIONS)]
    blobs = [rng.randbytes(100_000) for _ in range(VERSIONS)]
    large = [[(f"blob:{i}", blobs[(i + v) % VERSIONS]) for i in range(n_large)]
             for v in range(VERSIONS)]
    base = [numpy.frombuffer(blob, dtype=numpy.float64).copy() for blob in blobs]  # 100 KB
    arrays = [[(f"array:{i}", base[(i + v) % VERSIONS]) for i in range(n_large)]
              for v in range(VERSIONS)]
    return [
        Workload("small put", "", Data("small", small, "put"), kind=str(n_small)),
        Workload("small put batched", "", Data("small", small, "put", batched=True),
                 kind=str(n_small)),
        Workload("small get", "", Data("small", small, "get"), kind=str(n_small)),
        Workload("100KB put", "", Data("large", large, "put"), kind=str(n_large)),
        Workload("100KB get", "", Data("large", large, "get"), kind=str(n_large)),
        Workload("array put", "", Data("arrays", arrays, "put"), kind=str(n_large)),
        Workload("array get", "", Data("arrays", arrays, "get"), kind=str(n_large)),
    ]


def contender(peer: Peer) -> tuple[Contender, Callable[[], None]]:
    """The harness contender for ``peer``, and a function that closes what it opened."""
    opened: dict[str, Any] = {}

    def prepare(workload: Workload) -> Callable[[], Any] | None:
        data: Data = workload.data
        db = opened.get(data.tag)
        if db is None:
            db = opened[data.tag] = peer.open(data.tag)
        if data.op == "put":
            calls = iter(range(1 << 62))
            versions = data.versions
            return lambda: peer.put_all(db, versions[next(calls) % VERSIONS], data.batched)
        missing = [k for k in data.keys[:: max(1, len(data.keys) // 50)] if k not in db]
        if missing:
            raise RuntimeError(f"{peer.name}: {len(missing)} sampled keys missing before get")
        return lambda: peer.get_all(db, data.keys)

    def close_all() -> None:
        for db in opened.values():
            peer.close(db)
        opened.clear()

    return Contender(peer.name, prepare, description=peer.version()), close_all


# -- two writers at once -----------------------------------------------------------------------

WRITER = r"""
import os, sys, time
sys.path[:0] = [p for p in os.environ.get("BENCH_PATH", "").split(os.pathsep) if p]
kind, path, wid, n, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
if kind == "mason.Store":
    from mason.store import Store
    db = Store(path)
elif kind == "mason.Store redis":
    from mason.store import Store
    db = Store(path, name="bench_writers")
elif kind == "shelve":
    import shelve
    db = shelve.open(path)
elif kind == "sqlitedict":
    from sqlitedict import SqliteDict
    db = SqliteDict(path, autocommit=True)   # its mode that commits every write
elif kind == "diskcache":
    import diskcache
    db = diskcache.Cache(path)
while time.time() < start_at:
    time.sleep(0.0005)
for i in range(n):
    db[f"w{wid}:{i}"] = {"writer": wid, "i": i}
db.close()
"""


def two_writers(peer: Peer, n: int, round_: int) -> tuple[float | None, int | None, str]:
    """(wall seconds, lost writes, error) for two processes writing n keys each."""
    if isinstance(peer, MasonRedis):
        path = peer.location
        import redis

        redis.Redis.from_url(path).delete(b"mason:{bench_writers}")
    else:
        path = os.path.join(peer.dir, f"writers{round_}")
        if peer.name == "mason.Store":
            path += ".db"
    env = dict(os.environ)
    env["BENCH_PATH"] = os.pathsep.join(p for p in sys.path if p)
    start_at = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, peer.name, path, str(w), str(n),
                               str(start_at)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for w in range(2)]
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            last = [line for line in err.strip().splitlines() if line.strip()]
            errors.append(last[-1] if last else f"exit {proc.returncode}")
    elapsed = time.time() - start_at
    try:
        if isinstance(peer, MasonStore):
            db = Store(path, name="bench_writers") if isinstance(peer, MasonRedis) else \
                Store(path)
        elif peer.name == "shelve":
            import shelve

            db = shelve.open(path, "r")
        elif peer.name == "sqlitedict":
            from sqlitedict import SqliteDict

            db = SqliteDict(path, flag="r")
        else:
            import diskcache

            db = diskcache.Cache(path)
        present = sum(1 for w in range(2) for i in range(n) if f"w{w}:{i}" in db)
        db.close()
    except Exception as exc:  # noqa: BLE001 - a store the writers broke is a result too
        return elapsed, None, f"unreadable afterwards: {type(exc).__name__}: {exc}"
    return elapsed, 2 * n - present, "; ".join(errors)


# -- report ------------------------------------------------------------------------------------

def fmt_op(seconds: float | None) -> str:
    return "error" if seconds is None else harness.format_time(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller N, 3 repeats")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--small", type=int, default=None, help="N small records (100000)")
    parser.add_argument("--large", type=int, default=None, help="M 100 KB values (1000)")
    parser.add_argument("--only", action="append", help="workload name or shell pattern")
    parser.add_argument("--redis", metavar="URL", help="also time mason.Store on this Redis")
    parser.add_argument("--no-writers", action="store_true", help="skip the 2-writer test")
    parser.add_argument("--json", metavar="PATH", help="also write every sample to PATH")
    args = parser.parse_args(argv)
    n_small = args.small or (10_000 if args.quick else 100_000)
    n_large = args.large or (200 if args.quick else 1_000)
    repeat = args.repeat or (3 if args.quick else 5)

    root = tempfile.mkdtemp(prefix="bench-store-")
    try:
        peers: list[Peer] = [MasonStore(root), Shelve(root), SqliteDictPeer(root),
                             DiskCachePeer(root)]
        if args.redis:
            peers.insert(1, MasonRedis(root, args.redis))
        pairs = [contender(peer) for peer in peers]
        contenders = [c for c, _ in pairs]
        workloads = harness.select(make_workloads(n_small, n_large), args.only)
        env = harness.environment()
        print(f"python {env['python']} on {env['platform']}, {env['cpus']} cpus, "
              f"load {env['loadavg']}")
        for peer in peers:
            print(f"  {peer.name}: {peer.version()}")
        print("What one put does:")
        for peer in peers:
            print(f"  {peer.name}: {peer.durability}")
        print(f"N = {n_small:,} small records, M = {n_large:,} values of 100 KB; "
              f"{repeat} interleaved repeats, median per operation\n", flush=True)
        results = harness.measure(contenders, workloads, repeat=repeat, min_time=0.0)
        for _, close_all in pairs:
            close_all()

        names = [peer.name for peer in peers]
        subject, rivals = "mason.Store", [p.name for p in peers if not p.name.startswith("mason")]
        header = ["workload"] + names + ["mason / best peer", "result"]
        rows = []
        ok = True
        for w in workloads:
            count = int(w.kind)
            medians = {name: results.median(w.key, name) for name in names}
            per_op = {name: (m / count if m is not None else None) for name, m in medians.items()}
            peers_ok = [per_op[r] for r in rivals if per_op[r] is not None]
            best = min(peers_ok) if peers_ok else None
            mine = per_op[subject]
            ratio = mine / best if mine is not None and best else None
            verdict = "-" if ratio is None else ("PASS" if ratio <= 1.0 else "FAIL")
            ok = ok and verdict != "FAIL"
            rows.append([w.name] + [fmt_op(per_op[n]) for n in names]
                        + ["-" if ratio is None else f"{ratio:.2f}x", verdict])
        if not args.no_writers and (not args.only or any("writer" in o for o in args.only)):
            n_writes = max(1000, n_small // 4)
            wall: dict[str, list[float]] = {name: [] for name in names}
            lost: dict[str, list[int | None]] = {name: [] for name in names}
            errs: dict[str, str] = {}
            for r in range(repeat):
                order = peers[r % len(peers):] + peers[:r % len(peers)]
                for peer in order:
                    elapsed, missing, error = two_writers(peer, n_writes, r)
                    wall[peer.name].append(elapsed)
                    lost[peer.name].append(missing)
                    if error:
                        errs[peer.name] = error
            cells = []
            for name in names:
                seconds = statistics.median(wall[name]) / (2 * n_writes)
                worst = None if None in lost[name] else max(lost[name])
                cells.append(f"{harness.format_time(seconds)}, lost "
                             f"{'?' if worst is None else f'{worst:,}'}")
            # Speed counts only against peers that kept every write.
            mine = statistics.median(wall[subject])
            sound = [r for r in rivals if r not in errs and all(x == 0 for x in lost[r])]
            best_peer = min(statistics.median(wall[r]) for r in sound) if sound else mine
            my_lost = lost[subject]
            verdict = "PASS" if mine <= best_peer and all(x == 0 for x in my_lost) \
                and subject not in errs else "FAIL"
            ok = ok and verdict == "PASS"
            rows.append([f"2 writers x {n_writes:,}"] + cells
                        + [f"{mine / best_peer:.2f}x", verdict])
            for name, error in errs.items():
                print(f"note: 2 writers: {name}: {error}")
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print()
        print("  ".join(h.ljust(wd) if i == 0 else h.rjust(wd)
                        for i, (h, wd) in enumerate(zip(header, widths))).rstrip())
        print("  ".join("-" * wd for wd in widths))
        for row in rows:
            print("  ".join(c.ljust(wd) if i == 0 else c.rjust(wd)
                            for i, (c, wd) in enumerate(zip(row, widths))).rstrip())
        print("\nTimes are per operation (median call / operations per call); 'mason / best "
              "peer' compares mason.Store (SQLite) with the fastest of shelve, sqlitedict and "
              "diskcache on that row.  2 writers: wall time per write, and the writes missing "
              "afterwards (worst repeat); its ratio is to the fastest peer that lost none.")
        for key, row in results.timings.items():
            for name, timing in row.items():
                if timing.error:
                    print(f"note: {key}: {name}: {timing.error}")
        if args.json:
            harness.save_json(results, args.json)
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
