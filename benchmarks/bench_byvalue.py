"""Functions and classes by value: mason against cloudpickle and dill, side by side.

    python benchmarks/bench_byvalue.py              # 7 repeats, samples of >= 20 ms
    python benchmarks/bench_byvalue.py --quick      # 3 repeats, samples of >= 5 ms
    python benchmarks/bench_byvalue.py --split      # also dumps and loads on their own

Each workload is one round trip, ``loads(dumps(obj))``, of something pickle cannot pickle:
a lambda, a closure, a function using module globals, a local class with methods, and a list
of 1000 lambdas.  Everything is defined in this script, so in ``__main__``: every contender
pickles it by value.

* ``cloudpickle``: ``pickle.loads(cloudpickle.dumps(obj))`` (the baseline);
* ``mason``: ``mason.loads(mason.dumps(obj), trusted=True)`` (by-value code loads only
  trusted);
* ``dill``: ``dill.loads(dill.dumps(obj, recurse=True))``.

Targets: mason / cloudpickle <= 0.9 on every workload, and mason at least 5x faster than dill
(mason / dill <= 0.2).  Timing: ``harness.py`` (interleaved medians, gc off in samples).
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
from functools import partial

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
try:
    import mason
except ImportError:  # not installed: use the working tree's src/
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
    import mason

import cloudpickle  # noqa: E402
import dill  # noqa: E402

import harness  # noqa: E402
from harness import Contender, Workload  # noqa: E402

CLOUDPICKLE_TARGET = 0.9
DILL_TARGET = 0.2

# --------------------------------------------------------------------------------------------
# What is pickled: all of it in __main__

SCALE = 2.5
OFFSETS = (1, 2, 3)


def helper(x):
    return x + OFFSETS[0]


def uses_globals(x):
    """A function that reads module globals: a constant, a tuple, a module, a function."""
    return math.sqrt(abs(x)) * SCALE + helper(x) + len(OFFSETS)


def make_closure():
    factor = 3
    names = ["a", "b"]

    def closure(x):
        return x * factor + len(names)
    return closure


def make_class():
    class Vector:
        dims = 2

        def __init__(self, x, y):
            self.x, self.y = x, y

        def norm(self):
            return math.hypot(self.x, self.y)

        def __add__(self, other):
            return Vector(self.x + other.x, self.y + other.y)

        @property
        def pair(self):
            return (self.x, self.y)

        @classmethod
        def zero(cls):
            return cls(0, 0)

        @staticmethod
        def kind():
            return "vector"

        def __repr__(self):
            return f"Vector({self.x}, {self.y})"
    return Vector


def _workloads(split: bool) -> list[Workload]:
    cases = [
        ("lambda", lambda x: x * 2 + 1, lambda f: f(3) == 7),
        ("closure", make_closure(), lambda f: f(2) == 8),
        ("function using globals", uses_globals, lambda f: f(4) == 4 * 1.25 + 5 + 3),
        ("local class with methods", make_class(),
         lambda c: (c(3, 4) + c.zero()).norm() == 5.0 and c.kind() == "vector"),
        ("1000 lambdas", [lambda x, i=i: x + i for i in range(1000)],
         lambda fs: len(fs) == 1000 and fs[999](1) == 1000),
    ]
    ops = ["dumps+loads"] + (["dumps", "loads"] if split else [])
    workloads = []
    for name, obj, ok in cases:
        for op in ops:
            check = (lambda result, ok=ok: None if ok(result) else "wrong result") \
                if op != "dumps" else None
            workloads.append(Workload(name, op, (obj, ok),
                                      target=CLOUDPICKLE_TARGET if op == "dumps+loads" else None,
                                      check=check))
    return workloads


def _roundtrip(dumps, loads, obj):
    return loads(dumps(obj))


def _contender(dumps, loads):
    def prepare(workload: Workload):
        obj, _ = workload.data
        if workload.op == "dumps+loads":
            return partial(_roundtrip, dumps, loads, obj)
        if workload.op == "dumps":
            return partial(dumps, obj)
        return partial(loads, dumps(obj))
    return prepare


CONTENDERS = [
    Contender("cloudpickle", _contender(cloudpickle.dumps, pickle.loads),
              f"cloudpickle {cloudpickle.__version__}"),
    Contender("mason", _contender(mason.dumps, partial(mason.loads, trusted=True)),
              "mason, loads(trusted=True)"),
    Contender("dill", _contender(partial(dill.dumps, recurse=True), dill.loads),
              f"dill {dill.__version__}, recurse=True"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats of >= 5 ms samples")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--min-time", type=float, default=None)
    parser.add_argument("--split", action="store_true",
                        help="also time dumps and loads on their own")
    parser.add_argument("--only", action="append", metavar="NAME")
    parser.add_argument("--json", metavar="PATH", help="also write every sample to PATH")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if a target is missed")
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else harness.DEFAULT_REPEAT)
    min_time = args.min_time or (0.005 if args.quick else harness.DEFAULT_MIN_TIME)
    workloads = harness.select(_workloads(args.split), args.only)

    env = harness.environment()
    print(f"mason {getattr(mason, '__version__', '?')}, cloudpickle {cloudpickle.__version__}, "
          f"dill {dill.__version__}")
    print(f"Python {env['python']} on {env['platform']}, {env['cpus']} CPUs, "
          f"load average {env['loadavg']}")
    print(f"{repeat} repeats, samples >= {min_time * 1e3:g} ms, medians per call; "
          f"targets: mason / cloudpickle <= {CLOUDPICKLE_TARGET}, mason / dill <= {DILL_TARGET}")
    results = harness.measure(CONTENDERS, workloads, repeat, min_time=min_time)
    print()
    ok = harness.report(results, "cloudpickle", subject="mason", peer="dill")
    print()
    for w in workloads:
        if w.op != "dumps+loads":
            continue
        ratio = results.ratio(w.key, "mason", "dill")
        verdict = "ERROR" if ratio is None else ("PASS" if ratio <= DILL_TARGET else "FAIL")
        ok = ok and verdict == "PASS"
        speedup = f"{1 / ratio:.1f}x faster" if ratio else "-"
        print(f"mason vs dill, {w.name}: {speedup} ({verdict}, target >= {1 / DILL_TARGET:g}x)")
    if args.json:
        harness.save_json(results, args.json)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
