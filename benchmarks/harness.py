"""The timing harness shared by mason's benchmarks.

Every benchmark here asks the same question: how long does mason take, as a ratio to a
baseline (stdlib pickle) and perhaps to a peer (cloudpickle, dill, ...), measured side by side
in one process on the same machine at the same moment.  The harness answers it with three
pieces:

* ``Contender(name, prepare)``: one way of doing the work.  ``prepare(workload)`` returns a
  zero-argument callable that does the workload's operation once (or ``None`` when the
  contender does not take part in that workload).  Bind arguments with ``functools.partial``
  where you can: it adds no Python frame to the timed call.
* ``Workload(name, op, data, target=..., check=...)``: what to time.  ``data`` is for the
  contenders' ``prepare``; ``target`` is the largest acceptable ratio of the subject to the
  baseline; ``check(result)`` (optional) returns an error message, or ``None`` when the result
  of the untimed warm-up call is right.
* ``measure(contenders, workloads, repeat)`` returns a ``Results`` (median time per call of
  every contender on every workload); ``report(results, baseline, subject=, peer=)`` prints
  the table of ratios.

How the timing is made robust on a small, shared, noisy machine:

* ``time.perf_counter_ns``; each sample repeats the call enough times (calibrated per
  contender after a warm-up call) to last at least ``min_time`` (20 ms by default), so timer
  resolution and scheduler ticks do not matter;
* interleaving: each repeat takes one sample of every contender, round robin, and the order
  rotates from repeat to repeat, so a burst of load from a neighbour hits all contenders
  alike instead of one of them;
* the reported time is the median of the repeats (7 by default), which ignores the odd
  sample that a neighbour spoiled; ``Results.paired_ratios`` gives the ratio within each
  repeat, whose spread shows how far the noise could move a verdict;
* the cyclic garbage collector is off during each sample (as Unladen Swallow's pickle
  benchmark, from which pyperformance's descends, did, and as ``timeit`` does), and a full
  collection runs before each workload: otherwise a collection triggered by one contender's
  allocations lands in whichever sample happens to cross the threshold.  Reference counting
  still frees everything as usual.
"""

from __future__ import annotations

import fnmatch
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from itertools import repeat as _repeat
from typing import Any, Callable, Iterable, Sequence, TextIO

__all__ = ["Contender", "Workload", "Timing", "Results", "measure", "report", "select",
           "format_time", "environment"]

DEFAULT_REPEAT = 7
DEFAULT_MIN_TIME = 0.020  # seconds per sample


@dataclass(frozen=True)
class Contender:
    """One way of doing the work: ``prepare(workload)`` returns a zero-argument callable."""

    name: str
    prepare: Callable[["Workload"], Callable[[], Any] | None]
    description: str = ""


@dataclass(frozen=True)
class Workload:
    """What to time.  ``key`` (``"name op"``) names it in results and tables."""

    name: str
    op: str = ""
    data: Any = None
    target: float | None = None  # largest acceptable subject / baseline ratio
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)
    kind: str = ""  # free-form, e.g. "builtin" or "instances"

    @property
    def key(self) -> str:
        return f"{self.name} {self.op}" if self.op else self.name


@dataclass
class Timing:
    """One contender on one workload: seconds per call, one sample per repeat."""

    loops: int = 0
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples and not self.error else None

    @property
    def spread(self) -> float | None:
        """(max - min) / median of the samples: how noisy this measurement was."""
        med = self.median
        if not med:
            return None
        return (max(self.samples) - min(self.samples)) / med


@dataclass
class Results:
    workloads: list[Workload]
    contenders: list[str]
    timings: dict[str, dict[str, Timing]]  # workload key -> contender name -> Timing
    settings: dict[str, Any] = field(default_factory=dict)

    def median(self, key: str, contender: str) -> float | None:
        timing = self.timings.get(key, {}).get(contender)
        return timing.median if timing else None

    def medians(self) -> dict[str, dict[str, float | None]]:
        """Median seconds per call: ``{workload key: {contender: seconds}}``."""
        return {key: {name: t.median for name, t in row.items()}
                for key, row in self.timings.items()}

    def ratio(self, key: str, contender: str, baseline: str) -> float | None:
        """Ratio of the medians: above 1 means ``contender`` is slower than ``baseline``."""
        a, b = self.median(key, contender), self.median(key, baseline)
        return a / b if a is not None and b else None

    def paired_ratios(self, key: str, contender: str, baseline: str) -> list[float]:
        """The ratio within each repeat (the two samples were taken next to each other)."""
        row = self.timings.get(key, {})
        a, b = row.get(contender), row.get(baseline)
        if not a or not b or a.error or b.error:
            return []
        return [x / y for x, y in zip(a.samples, b.samples) if y]

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "contenders": self.contenders,
            "workloads": [
                {"name": w.name, "op": w.op, "kind": w.kind, "target": w.target,
                 "timings": {name: {"loops": t.loops, "samples": t.samples, "median": t.median,
                                    "error": t.error}
                             for name, t in self.timings.get(w.key, {}).items()}}
                for w in self.workloads],
        }


def select(workloads: Iterable[Workload], patterns: Sequence[str] | None) -> list[Workload]:
    """The workloads whose name, op or key matches one of the shell patterns (all if none)."""
    workloads = list(workloads)
    if not patterns:
        return workloads
    pats = [p.strip() for pattern in patterns for p in pattern.split(",") if p.strip()]
    return [w for w in workloads
            if any(fnmatch.fnmatchcase(w.name, p) or fnmatch.fnmatchcase(w.key, p)
                   or (w.op and fnmatch.fnmatchcase(w.op, p)) for p in pats)]


def _run(fn: Callable[[], Any], loops: int, disable_gc: bool) -> int:
    """Nanoseconds taken by ``loops`` calls of ``fn``."""
    gc_was_enabled = gc.isenabled()
    if disable_gc:
        gc.disable()
    try:
        it = _repeat(None, loops)
        t0 = time.perf_counter_ns()
        for _ in it:
            fn()
        t1 = time.perf_counter_ns()
    finally:
        if gc_was_enabled:
            gc.enable()
    return t1 - t0


def _calibrate(fn: Callable[[], Any], min_ns: int, disable_gc: bool) -> int:
    """The smallest loop count (found by growing it) whose sample lasts ``min_ns``."""
    loops = 1
    while True:
        took = _run(fn, loops, disable_gc)
        if took >= min_ns:
            return loops
        # Aim 20% above the minimum so that a slightly faster sample still clears it.
        wanted = math.ceil(loops * min_ns * 1.2 / max(took, 1))
        loops = min(max(wanted, loops + 1), loops * 100)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def measure(contenders: Sequence[Contender], workloads: Sequence[Workload],
            repeat: int = DEFAULT_REPEAT, *, min_time: float = DEFAULT_MIN_TIME,
            disable_gc: bool = True, log: TextIO | None = sys.stderr) -> Results:
    """Time every contender on every workload; return the medians (and the samples).

    For each workload: prepare each contender, call it once untimed (warm-up and ``check``),
    calibrate its loop count, then take ``repeat`` rounds of one sample per contender, in an
    order that rotates each round.  A contender that fails to prepare, raises, or fails the
    check gets a ``Timing`` with ``error`` set; the others go on.
    """
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"contender names must be unique: {names}")
    min_ns = int(min_time * 1e9)
    timings: dict[str, dict[str, Timing]] = {}
    for workload in workloads:
        started = time.perf_counter()
        row: dict[str, Timing] = {}
        ready: list[tuple[str, Callable[[], Any]]] = []
        for contender in contenders:
            timing = Timing()
            try:
                fn = contender.prepare(workload)
                if fn is None:
                    continue
                result = fn()
                if workload.check is not None:
                    problem = workload.check(result)
                    if problem:
                        raise AssertionError(problem)
                del result
                timing.loops = _calibrate(fn, min_ns, disable_gc)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                timing.error = _describe(exc)
            else:
                ready.append((contender.name, fn))
            row[contender.name] = timing
        gc.collect()
        for r in range(repeat):
            shift = r % len(ready) if ready else 0
            for name, fn in ready[shift:] + ready[:shift]:
                timing = row[name]
                if timing.error:
                    continue
                try:
                    took = _run(fn, timing.loops, disable_gc)
                except Exception as exc:  # noqa: BLE001
                    timing.error = _describe(exc)
                    continue
                timing.samples.append(took / timing.loops / 1e9)
        timings[workload.key] = row
        if log is not None:
            print(f"  {workload.key}: {time.perf_counter() - started:.1f} s", file=log,
                  flush=True)
    settings = {"repeat": repeat, "min_time": min_time, "disable_gc": disable_gc,
                **environment()}
    return Results(list(workloads), names, timings, settings)


def environment() -> dict[str, Any]:
    """What the numbers depend on, for the header of a report."""
    try:
        load = os.getloadavg()
    except (AttributeError, OSError):
        load = None
    return {"python": sys.version.split()[0], "implementation": platform.python_implementation(),
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in load] if load else None}


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            value = seconds / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{seconds * 1e9:.2f} ns"


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _quartiles(values: list[float]) -> tuple[float, float] | None:
    """First and third quartiles (the min and max when there are fewer than 4 values)."""
    if not values:
        return None
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def report(results: Results, baseline: str, *, subject: str | None = None,
           peer: str | None = None, file: TextIO | None = None) -> bool:
    """Print one row per workload: the baseline's median time, every other contender's ratio
    to it, the subject's ratio to ``peer`` if given, and, where the workload has a target,
    the subject's verdict.  Returns whether every target was met (no FAIL, no error).
    """
    out = file or sys.stdout
    others = [name for name in results.contenders if name != baseline]
    if subject is not None and subject in others:
        others.remove(subject)
        others.insert(0, subject)
    has_op = any(w.op for w in results.workloads)
    has_target = subject is not None and any(w.target is not None for w in results.workloads)
    headers = ["workload"] + (["op"] if has_op else []) + [f"{baseline} time"]
    headers += [f"{name} / {baseline}" for name in others]
    if peer is not None and subject is not None:
        headers.append(f"{subject} / {peer}")
    if subject is not None:
        headers.append(f"{subject} IQR")
    if has_target:
        headers += ["target", "result"]
    rows: list[list[str]] = []
    notes: list[str] = []
    ok = True
    for w in results.workloads:
        row = results.timings.get(w.key, {})
        cells = [w.name] + ([w.op] if has_op else [])
        base = row.get(baseline)
        cells.append(format_time(base.median) if base and not base.error else "error")
        for name in others:
            t = row.get(name)
            if t is None:
                cells.append("-")
            elif t.error:
                cells.append("error")
                notes.append(f"{w.key}: {name}: {t.error}")
            else:
                cells.append(_ratio_text(results.ratio(w.key, name, baseline)))
        if base is not None and base.error:
            notes.append(f"{w.key}: {baseline}: {base.error}")
        if peer is not None and subject is not None:
            cells.append(_ratio_text(results.ratio(w.key, subject, peer)))
        spread = None
        if subject is not None:
            spread = _quartiles(results.paired_ratios(w.key, subject, baseline))
            cells.append(f"{spread[0]:.2f}-{spread[1]:.2f}" if spread else "-")
        if has_target:
            ratio = results.ratio(w.key, subject, baseline)
            if w.target is None:
                cells += ["-", "-"]
            else:
                verdict = "ERROR" if ratio is None else ("PASS" if ratio <= w.target else "FAIL")
                ok = ok and verdict == "PASS"
                if spread and verdict != "ERROR" and spread[0] <= w.target < spread[1]:
                    verdict += "?"  # the noise straddles the target: rerun with more repeats
                cells += [f"<= {w.target:.2f}x", verdict]
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    left = 2 if has_op else 1  # text columns are left-aligned, numbers right-aligned

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(wd) if i < left else c.rjust(wd)
                         for i, (c, wd) in enumerate(zip(cells, widths))).rstrip()

    print(line(headers), file=out)
    print("  ".join("-" * wd for wd in widths), file=out)
    for cells in rows:
        print(line(cells), file=out)
    if subject is not None:
        print(f"\n{subject} IQR: interquartile range of the {subject} / {baseline} ratio within "
              f"each repeat (the two samples taken side by side); a result marked '?' has the "
              f"target inside that range: noise could flip it, rerun with more --repeat.",
              file=out)
    for note in notes:
        print(f"note: {note}", file=out)
    return ok


def save_json(results: Results, path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(results.to_json(), fh, indent=1)
        fh.write("\n")
