"""mason's core benchmark: dumps and loads against stdlib pickle, side by side.

    python benchmarks/run.py                  # everything: 7 repeats, samples of >= 20 ms
    python benchmarks/run.py --quick          # 3 repeats, samples of >= 5 ms
    python benchmarks/run.py --only instances --repeat 11
    python benchmarks/run.py --json out.json  # also save every sample

Three contenders run in one process, interleaved (see ``harness.py``):

* ``pickle``: the stdlib's C pickler (``pickle.dumps`` / ``pickle.loads``), the baseline;
* ``mason``: ``mason.dumps`` / ``mason.loads`` in the default safe mode, with ``allow=``
  naming the workload's classes where it has any;
* ``pickle-py``: the stdlib's pure-Python classes (``pickle._dumps`` / ``pickle._loads``),
  for scale: what a pickler written in Python costs.

Every contender pickles with the highest protocol (as pyperformance does) and loads the very
bytes that stdlib pickle wrote.  The table gives the stdlib's median time per call and each
other contender's ratio to it; mason's ratio is held against the targets below.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from functools import partial
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
import shapes  # noqa: E402
from harness import Contender, Workload  # noqa: E402

PROTOCOL = pickle.HIGHEST_PROTOCOL

# Largest acceptable mason / stdlib-C ratio, by kind of data and operation.
TARGETS = {
    ("builtin", "dumps"): 1.05,
    ("builtin", "loads"): 1.10,
    ("instances", "dumps"): 1.25,
    ("instances", "loads"): 1.25,
}


class Spec:
    """One shape: the objects pickled (one call each), their stdlib pickles, its allow list."""

    def __init__(self, objects: tuple, allow: list[str] | None = None):
        self.objects = objects
        self.blobs = tuple(pickle.dumps(obj, PROTOCOL) for obj in objects)
        self.allow = allow


def build_workloads() -> list[Workload]:
    points = shapes.make_points(100_000)
    orders = shapes.make_orders()
    specs = [
        ("pickle", "builtin", Spec((shapes.DICT, shapes.TUPLE, shapes.DICT_GROUP))),
        ("pickle_list", "builtin", Spec((shapes.LIST,))),
        ("pickle_dict", "builtin", Spec((shapes.MICRO_DICT,))),
        ("instances", "instances", Spec((points,), allow=shapes.allow_names(shapes.Point))),
        ("dataclasses", "instances",
         Spec((orders,), allow=shapes.allow_names(shapes.Order, shapes.Customer,
                                                  shapes.LineItem))),
    ]
    return [Workload(name, op, spec, target=TARGETS[kind, op], kind=kind)
            for name, kind, spec in specs for op in ("dumps", "loads")]


def _calls(calls: list[Callable[[], Any]]) -> Callable[[], Any]:
    if len(calls) == 1:
        return calls[0]  # a partial: no Python frame of ours in the timed call
    calls = tuple(calls)

    def each():
        for call in calls:
            call()
    return each


def _contender(dumps, loads, *, pass_allow: bool) -> Callable[[Workload], Callable[[], Any]]:
    def prepare(workload: Workload) -> Callable[[], Any]:
        spec: Spec = workload.data
        if workload.op == "dumps":
            calls = [partial(dumps, obj, PROTOCOL) for obj in spec.objects]
            for call, obj in zip(calls, spec.objects):
                if pickle.loads(call()) != obj:
                    raise AssertionError("dumps output does not load back equal")
        else:
            kwargs = {"allow": spec.allow} if pass_allow and spec.allow else {}
            calls = [partial(loads, blob, **kwargs) for blob in spec.blobs]
            for call, obj in zip(calls, spec.objects):
                if call() != obj:
                    raise AssertionError("loads result differs from the original")
        return _calls(calls)
    return prepare


CONTENDERS = [
    Contender("pickle", _contender(pickle.dumps, pickle.loads, pass_allow=False),
              "stdlib pickle, C (_pickle)"),
    Contender("mason", _contender(mason.dumps, mason.loads, pass_allow=True),
              "mason, default safe mode"),
    Contender("pickle-py", _contender(pickle._dumps, pickle._loads, pass_allow=False),
              "stdlib pickle, pure Python (pickle._Pickler / _Unpickler)"),
]


def _limits_status() -> str:
    from mason import unpickler
    used = [f"{fn.__module__}.{getattr(fn, '__qualname__', fn.__name__)}"
            for fn in (getattr(unpickler, "_check", None), getattr(unpickler, "StreamCheck", None))
            if fn is not None]
    one_pass = "mason._plainload built" if unpickler._plain_load is not None \
        else "mason._plainload not built"
    return f"{one_pass}; the loads check uses {' and '.join(used) or '?'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 repeats of >= 5 ms samples (a smoke run; noisier)")
    parser.add_argument("--repeat", type=int, default=None,
                        help=f"repeats per contender (default {harness.DEFAULT_REPEAT})")
    parser.add_argument("--min-time", type=float, default=None,
                        help="shortest sample, in seconds (default 0.02)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only these workloads (name, 'name op', or a shell pattern; "
                             "repeatable or comma-separated)")
    parser.add_argument("--keep-gc", action="store_true",
                        help="leave the cyclic garbage collector on during samples")
    parser.add_argument("--json", metavar="PATH", help="also write every sample to PATH")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 if a target is missed")
    args = parser.parse_args(argv)

    repeat = args.repeat or (3 if args.quick else harness.DEFAULT_REPEAT)
    min_time = args.min_time or (0.005 if args.quick else harness.DEFAULT_MIN_TIME)
    workloads = harness.select(build_workloads(), args.only)
    if not workloads:
        names = sorted({w.name for w in build_workloads()})
        parser.error(f"--only matched no workload; the workloads are: {', '.join(names)}")

    env = harness.environment()
    print(f"mason {getattr(mason, '__version__', '?')} from {os.path.dirname(mason.__file__)}")
    print(_limits_status())
    print(f"Python {env['python']} ({env['implementation']}) on {env['platform']}, "
          f"{env['cpus']} CPUs, load average {env['loadavg']}")
    print(f"protocol {PROTOCOL}; {repeat} repeats, samples >= {min_time * 1e3:g} ms, "
          f"gc {'on' if args.keep_gc else 'off'} during samples; medians per call")
    print(file=sys.stderr)
    results = harness.measure(CONTENDERS, workloads, repeat, min_time=min_time,
                              disable_gc=not args.keep_gc)
    print()
    ok = harness.report(results, "pickle", subject="mason")
    print(f"load average at the end: {harness.environment()['loadavg']}")
    if args.json:
        harness.save_json(results, args.json)
        print(f"\nsamples written to {args.json}")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
