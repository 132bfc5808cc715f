"""mason.Memory against joblib.Memory and diskcache's memoize; mason.hash against joblib.hash.

    python benchmarks/bench_cache.py            # 7 repeats; a nested dict of 100k entries
    python benchmarks/bench_cache.py --quick    # 3 repeats; 20k entries
    python benchmarks/bench_cache.py --only "hit*" --repeat 11

Contenders, each in its default configuration, as its documentation shows:

* ``joblib.Memory(dir, verbose=0).cache`` (the baseline of the first table);
* ``mason.Memory(dir).cache``: entries are mason containers signed with the cache key,
  verified (signature and SHA-256 of every part) the first time a process loads them,
  large results memory-mapped;
* ``diskcache.Cache(dir).memoize()``: SQLite index, values over 32 KB in files of their own.

Workloads (the harness in ``harness.py`` takes interleaved medians: each repeat times every
contender once, in a rotating order):

* ``hit small args``: ``f(1, "abc", 2.5)`` already cached, returning a small dict;
* ``hit 100MB array arg``: ``f(a)`` already cached, ``a`` a float64 array of 100 MiB (the
  key is a hash of the array), returning a float;
* ``hit 10MB result``: a cached call returning a float64 array of 10 MiB, called again and
  again (mason verifies an entry once per process, then maps it again from the file it
  keeps open);
* ``hit 10MB result, new cache``: the same, through a new ``Memory`` / ``Cache`` object over
  the same directory for every call, as the first call of a new process would be (mason
  verifies the whole entry: SHA-256 of 10 MiB);
* ``miss+store 10MB result``: a call never made before (a fresh argument each time), that
  returns a new 10 MiB array: the function runs and the result is written;
* ``hash 100MB array``: ``mason.hash`` and ``joblib.hash`` of that array, and, for scale,
  ``xxhash.xxh3_128`` of its raw bytes (the fastest that hashing those bytes can be);
* ``hash nested dict``: a dict of N str keys to small dicts of an int, a list, a str and a
  tuple.

Targets (from the issue): hits at least 10x faster than joblib.Memory (ratio <= 0.10), and
array hashing at >= 80% of raw xxh3's speed on the same bytes (mason.hash / xxh3 <= 1.25).
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import shutil
import sys
import tempfile
import warnings
from functools import partial
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

try:
    import mason
except ImportError:  # not installed: use the working tree's src/
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
    import mason

import numpy as np  # noqa: E402

import harness  # noqa: E402
from harness import Contender, Results, Workload  # noqa: E402
from mason.cache import Memory  # noqa: E402
from mason.hashing import BUFFER_ALGORITHM, hash as mason_hash  # noqa: E402

HIT_TARGET = 0.10      # mason.Memory / joblib.Memory on hits
XXH3_TARGET = 1.25     # mason.hash / raw xxh3 on a large array (80% of its speed)
ARRAY_100MB = 100 * 1024 * 1024 // 8
ARRAY_10MB = 10 * 1024 * 1024 // 8


# -- the cached functions (module level: every library can name them) ------------------------

def small_args(a, b, c):
    return {"a": a, "b": b, "c": c, "sum": a + c}


def array_arg(a):
    return 1.5


def array_result(seed):
    return np.full(ARRAY_10MB, float(seed))


def fresh_result(i):
    return np.full(ARRAY_10MB, float(i))


# -- the contenders ----------------------------------------------------------------------------

class Library:
    name = ""

    def __init__(self, root: str):
        self.dir = tempfile.mkdtemp(prefix=self.name.replace(".", "_") + "-", dir=root)

    def decorate(self, func: Callable) -> Callable:
        raise NotImplementedError

    def cold_call(self, func: Callable, *args):
        """Call ``func`` through a new cache object over the same directory."""
        raise NotImplementedError

    def version(self) -> str:
        return ""


class MasonMemory(Library):
    name = "mason.Memory"

    def __init__(self, root: str):
        super().__init__(root)
        # An explicit key: the benchmark leaves the user's key file alone.  Same cost.
        self.key = secrets.token_bytes(32)
        self.memory = Memory(self.dir, key=self.key)

    def decorate(self, func):
        return self.memory.cache(func)

    def cold_call(self, func, *args):
        return Memory(self.dir, key=self.key).cache(func)(*args)

    def version(self) -> str:
        return f"mason {mason.__version__}, buffers hashed with {BUFFER_ALGORITHM}"


class JoblibMemory(Library):
    name = "joblib.Memory"

    def __init__(self, root: str):
        super().__init__(root)
        import joblib
        self.memory = joblib.Memory(self.dir, verbose=0)

    def decorate(self, func):
        return self.memory.cache(func)

    def cold_call(self, func, *args):
        import joblib
        return joblib.Memory(self.dir, verbose=0).cache(func)(*args)

    def version(self) -> str:
        import joblib
        return f"joblib {joblib.__version__}"


class DiskCacheMemoize(Library):
    name = "diskcache.memoize"

    def __init__(self, root: str):
        super().__init__(root)
        import diskcache
        self.cache = diskcache.Cache(self.dir)

    def decorate(self, func):
        return self.cache.memoize()(func)

    def cold_call(self, func, *args):
        import diskcache
        with diskcache.Cache(self.dir) as cache:
            return cache.memoize()(func)(*args)

    def version(self) -> str:
        import diskcache
        return f"diskcache {diskcache.__version__}"


class Case:
    """What a memoization workload needs: the function, and how to call it."""

    def __init__(self, func: Callable, args: tuple = (), fresh: bool = False,
                 cold: bool = False):
        self.func = func
        self.args = args
        self.fresh = fresh   # a new argument every call: always a miss
        self.cold = cold     # a new cache object every call


def memo_contender(library: Library) -> Contender:
    def prepare(workload: Workload):
        case: Case = workload.data
        cached = library.decorate(case.func)
        if case.fresh:
            counter = itertools.count(10 ** 6)
            return lambda: cached(next(counter))
        cached(*case.args)   # the miss that makes the entry
        if case.cold:
            return partial(library.cold_call, case.func, *case.args)
        return partial(cached, *case.args)
    return Contender(library.name, prepare)


def _is_small_result(value) -> str | None:
    return None if value == small_args(1, "abc", 2.5) else f"wrong result {value!r}"


def _is_array_result(value) -> str | None:
    ok = isinstance(value, np.ndarray) and value.shape == (ARRAY_10MB,) and value[0] == 7.0 \
        and value[-1] == 7.0
    return None if ok else "wrong result"


def memo_workloads(big: np.ndarray) -> list[Workload]:
    return [
        Workload("hit small args", data=Case(small_args, (1, "abc", 2.5)), target=HIT_TARGET,
                 check=_is_small_result),
        Workload("hit 100MB array arg", data=Case(array_arg, (big,)), target=HIT_TARGET,
                 check=lambda v: None if v == 1.5 else "wrong result"),
        Workload("hit 10MB result", data=Case(array_result, (7,)), check=_is_array_result),
        Workload("hit 10MB result, new cache", data=Case(array_result, (7,), cold=True),
                 check=_is_array_result),
        Workload("miss+store 10MB result", data=Case(fresh_result, fresh=True)),
    ]


# -- hashing -----------------------------------------------------------------------------------

def nested_dict(n: int) -> dict:
    return {f"key{i}": {"a": i, "b": [1.0, 2.0, float(i)], "c": "text", "d": (i, "x")}
            for i in range(n)}


def hash_contenders() -> list[Contender]:
    import joblib
    import xxhash

    def raw(workload: Workload):
        if not isinstance(workload.data, np.ndarray):
            return None
        view = memoryview(workload.data).cast("B")
        return lambda: xxhash.xxh3_128(view).hexdigest()

    return [Contender("joblib.hash", lambda w: partial(joblib.hash, w.data)),
            Contender("mason.hash", lambda w: partial(mason_hash, w.data)),
            Contender("xxh3 raw bytes", raw)]


# -- main --------------------------------------------------------------------------------------

def print_times(results: Results) -> None:
    """Every contender's median time per call, beside the table of ratios."""
    names = results.contenders
    rows = [[w.key] + [harness.format_time(results.median(w.key, n)) for n in names]
            for w in results.workloads]
    header = ["median per call"] + names
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for row in [header] + rows:
        print("  ".join(c.ljust(wd) if i == 0 else c.rjust(wd)
                        for i, (c, wd) in enumerate(zip(row, widths))).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, 20k dict entries")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--entries", type=int, default=None,
                        help="entries of the nested dict (100000)")
    parser.add_argument("--only", action="append", help="workload name or shell pattern")
    parser.add_argument("--json", metavar="PATH", help="also write every sample to PATH")
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 7)
    entries = args.entries or (20_000 if args.quick else 100_000)
    warnings.simplefilter("error")   # a cache warning would mean an entry did not load

    root = tempfile.mkdtemp(prefix="bench-cache-")
    try:
        big = np.random.default_rng(0).random(ARRAY_100MB)
        libraries: list[Library] = [JoblibMemory(root), MasonMemory(root),
                                    DiskCacheMemoize(root)]
        env = harness.environment()
        print(f"python {env['python']} on {env['platform']}, {env['cpus']} cpus, "
              f"load {env['loadavg']}")
        for library in libraries:
            print(f"  {library.name}: {library.version()}")
        print(f"{repeat} interleaved repeats, median per call\n", flush=True)

        contenders = [memo_contender(lib) for lib in libraries]
        memo = memo_workloads(big)
        hits = harness.select([w for w in memo if not w.name.startswith("miss")], args.only)
        misses = harness.select([w for w in memo if w.name.startswith("miss")], args.only)
        results = []
        if hits:
            results.append(harness.measure(contenders, hits, repeat=repeat, min_time=0.05))
        if misses:
            # One call per sample: every call writes 10 MB more to disk.
            results.append(harness.measure(contenders, misses, repeat=max(repeat, 5),
                                           min_time=0.0))
        ok = True
        if results:
            merged = Results([w for r in results for w in r.workloads],
                             results[0].contenders,
                             {k: v for r in results for k, v in r.timings.items()},
                             results[0].settings)
            print()
            ok = harness.report(merged, "joblib.Memory", subject="mason.Memory",
                                peer="diskcache.memoize") and ok
            print()
            print_times(merged)
            if args.json:
                harness.save_json(merged, args.json.replace(".json", "-memo.json"))

        hashing = harness.select([
            Workload("hash 100MB array", data=big),
            Workload(f"hash nested dict ({entries // 1000}k)", data=nested_dict(entries)),
        ], args.only)
        if hashing:
            print(flush=True)
            hashed = harness.measure(hash_contenders(), hashing, repeat=repeat, min_time=0.05)
            print()
            harness.report(hashed, "joblib.hash", subject="mason.hash")
            print()
            print_times(hashed)
            key = hashing[0].key
            ratio = hashed.ratio(key, "mason.hash", "xxh3 raw bytes")
            if ratio is not None:
                verdict = "PASS" if ratio <= XXH3_TARGET else "FAIL"
                ok = ok and verdict == "PASS"
                print(f"\n{key}: mason.hash / xxh3 raw bytes = {ratio:.2f}x "
                      f"({1 / ratio:.0%} of raw xxh3 speed; target <= {XXH3_TARGET:.2f}x, "
                      f"i.e. >= 80%): {verdict}")
            if args.json:
                harness.save_json(hashed, args.json.replace(".json", "-hash.json"))
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
