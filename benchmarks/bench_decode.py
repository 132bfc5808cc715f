"""Decoding speed: mason.format.read_ops against pickletools.genops, in MB/s of pickle.

    PYTHONPATH=src python3 benchmarks/bench_decode.py [--mb 50] [--big-mb 200] [--repeat 3]

Two inputs: a pickle of many small ints, strings and tuples (the per-opcode cost), and a
pickle holding one large bytes object (the per-byte cost, which read_ops avoids by leaving
large payloads in place).  Runs alternate between the two decoders so that drift in the
machine's speed hits both alike; the figure is the median of the repeats.
"""

from __future__ import annotations

import argparse
import pickle
import pickletools
import statistics
import time
from collections import deque

from mason.format.reader import read_ops


def small_items(megabytes: int) -> bytes:
    # About 27 bytes of pickle per item at protocol 5.
    count = megabytes * 1_000_000 // 27
    return pickle.dumps([(i, f"s{i}", (i % 251, -i)) for i in range(count)], protocol=5)


def one_big_bytes(megabytes: int) -> bytes:
    return pickle.dumps(bytes(megabytes * 1_000_000), protocol=5)


# Each iterator is drained by deque(maxlen=0), in C, so that the figures are the decoders'
# own cost rather than that of a Python loop around them.
DECODERS = {
    "read_ops": lambda data: deque(read_ops(data), maxlen=0),
    "read_ops(plain=True)": lambda data: deque(read_ops(data, plain=True), maxlen=0),
    "genops": lambda data: deque(pickletools.genops(data), maxlen=0),
}


def measure(name: str, data: bytes, repeat: int) -> None:
    count = sum(1 for _ in read_ops(data, plain=True))
    assert count == sum(1 for _ in pickletools.genops(data))
    times: dict[str, list[float]] = {label: [] for label in DECODERS}
    for _ in range(repeat):
        for label, drain in DECODERS.items():
            t0 = time.perf_counter()
            drain(data)
            times[label].append(time.perf_counter() - t0)
    size = len(data) / 1e6
    rates = {label: size / statistics.median(ts) for label, ts in times.items()}
    print(f"{name}: {size:.0f} MB, {count:,} opcodes")
    for label, rate in rates.items():
        print(f"  {label:21} {rate:12,.1f} MB/s  {rate / rates['genops']:8.1f}x genops")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50, help="size of the small-items pickle")
    parser.add_argument("--big-mb", type=int, default=200, help="size of the big bytes")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    measure("many small ints/strings/tuples", small_items(args.mb), args.repeat)
    measure("one large bytes object", one_big_bytes(args.big_mb), args.repeat)


if __name__ == "__main__":
    main()
