"""Saving and loading large arrays: mason's container against the formats people use.

    python benchmarks/bench_arrays.py              # 5 repeats, full sizes (256 MiB, 200 MiB)
    python benchmarks/bench_arrays.py --quick      # 3 repeats, sizes / 4
    python benchmarks/bench_arrays.py --only "state dict*" --repeat 9

Three workloads, each saved, loaded and loaded memory-mapped:

* ``array``: one float32 array of 256 MiB;
* ``state dict``: a dict of 200 float32 arrays of 1 MiB each;
* ``torch``: a torch state dict of 200 MiB (linear layers of a small transformer, plus
  biases and norms).  Its ``load`` row loads the file that ``torch.save`` wrote: mason reads
  the checkpoint itself (``mason.load(path)``, the torch preset) against
  ``torch.load(weights_only=True)``.

Contenders, side by side in one process (``harness.py``): ``raw`` (the baseline: the same
bytes written with one ``write`` / read with ``readinto`` into fresh memory / mapped), ``mason``
(``mason.dump(obj, path)`` / ``mason.load(path)``), ``mason+release`` (``mason.dump``, then
waiting for the background release of the file it replaced: the whole work of a save),
``memcpy`` (a copy of the data in memory, for scale), ``pickle5`` (stdlib pickle, protocol 5,
buffers in-band), ``joblib`` (``joblib.dump`` / ``joblib.load``, ``mmap_mode="r"``),
``numpy`` (``np.save`` / ``np.load``, ``mmap_mode="r"``; ``np.savez`` for a dict),
``torch`` (``torch.save`` /
``torch.load(weights_only=True)``, ``mmap=True``), ``safetensors``.  Files are written to a
temporary directory and read back from the page cache, as a second load of a model is.

After the table: the memory-mapped loads in absolute time (target: under 10 ms whatever the
size), and the peak memory of a full load above the data, measured as VmHWM in a fresh
subprocess (target: at most 1.1x the data).
"""

from __future__ import annotations

import argparse
import functools
import mmap
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
if HERE not in sys.path:
    sys.path.insert(0, HERE)
if SRC not in sys.path:
    sys.path.insert(0, SRC)

import numpy as np  # noqa: E402

import harness  # noqa: E402
import mason  # noqa: E402
from harness import Contender, Workload  # noqa: E402

MIB = 1 << 20
TARGETS = {"save": 1.2, "load": 1.2}
TORCH_TARGET_VS_TORCH = 0.5      # mason loads a torch checkpoint at least 2x faster
MMAP_LIMIT = 0.010               # seconds, whatever the size
PEAK_LIMIT = 1.1                 # peak memory of a full load / data size


def make_data(scale: float):
    import torch

    rng = np.random.default_rng(0)
    array = rng.standard_normal(int(64 * MIB * scale), dtype=np.float32)   # 256 MiB
    state = {f"layer{i}.weight": rng.standard_normal(int(MIB // 4 * scale), dtype=np.float32)
             for i in range(200)}                                           # 200 x 1 MiB
    tensors = {}
    width = int(1024 * scale ** 0.5)
    for block in range(12):
        for name in ("q", "k", "v", "o"):
            tensors[f"blocks.{block}.attn.{name}.weight"] = torch.randn(width, width)
            tensors[f"blocks.{block}.attn.{name}.bias"] = torch.randn(width)
        tensors[f"blocks.{block}.norm.weight"] = torch.ones(width)
    return {"array": array, "state dict": state, "torch": tensors}


def nbytes(obj) -> int:
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    return obj.nbytes if hasattr(obj, "nbytes") else obj.numel() * obj.element_size()


class Files:
    """Where each contender's files live; each is written once before its loads."""

    def __init__(self, root: str):
        self.root = root

    def path(self, contender: str, workload: str, suffix: str = "") -> str:
        return os.path.join(self.root, f"{contender}-{workload.replace(' ', '_')}{suffix}")


# --- the raw limits ------------------------------------------------------------------------

def _raw_bytes(obj) -> list:
    if isinstance(obj, dict):
        return [memoryview(_numpy_of(v)).cast("B") for v in obj.values()]
    return [memoryview(_numpy_of(obj)).cast("B")]


def _numpy_of(value):
    if isinstance(value, np.ndarray):
        return value
    return value.detach().reshape(-1).view(__import__("torch").uint8).numpy()


def raw_save(views, path):
    with open(path, "wb", buffering=0) as f:
        for view in views:
            done = 0
            while done < len(view):
                done += f.write(view[done:])


def raw_load(path, size):
    out = np.empty(size, np.uint8)
    with open(path, "rb", buffering=0) as f:
        f.readinto(out)
    return out


def raw_mmap(path):
    with open(path, "rb") as f:
        return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)


# --- contenders ----------------------------------------------------------------------------

def contenders(data, files: Files) -> list[Contender]:
    import torch

    presets = ["numpy", "torch"]

    def raw(w):
        obj = data[w.name]
        path = files.path("raw", w.name)
        views = _raw_bytes(obj)
        if w.op == "save":
            return functools.partial(raw_save, views, path)
        raw_save(views, path)
        if w.op == "load":
            return functools.partial(raw_load, path, sum(v.nbytes for v in views))
        return functools.partial(raw_mmap, path)

    def memcpy(w):
        if w.op != "load":
            return None
        views = _raw_bytes(data[w.name])
        return lambda: [np.array(v, copy=True) for v in views]

    def mason_(w):
        obj = data[w.name]
        path = files.path("mason", w.name, ".mason")
        if w.op == "save":
            return functools.partial(mason.dump, obj, path)
        if w.name == "torch":
            # the checkpoint that torch.save wrote, read by mason without torch's loader
            path = files.path("torch", w.name, ".pt")
            torch.save(obj, path)
            return functools.partial(mason.load, path, mmap=w.op == "mmap")
        mason.dump(obj, path)
        return functools.partial(mason.load, path, mmap=w.op == "mmap", preset=presets)

    def mason_settled(w):
        # mason.dump returns once the new file is in place; the file it replaced is freed
        # on a background thread (with discard, freeing a large file's blocks takes about
        # as long as writing it).  This row waits for that too: the whole work of a save,
        # to set beside raw, whose open(..., "wb") frees the old file before it writes.
        if w.op != "save":
            return None
        obj = data[w.name]
        path = files.path("mason-settled", w.name, ".mason")

        def save():
            before = set(threading.enumerate())
            mason.dump(obj, path)
            for thread in set(threading.enumerate()) - before:   # this dump's own only
                if thread.name == "mason-release":
                    thread.join()
        return save

    def mason_container(w):
        if w.name != "torch" or w.op == "save":
            return None
        path = files.path("mason", w.name, ".mason")
        mason.dump(data[w.name], path)
        return functools.partial(mason.load, path, mmap=w.op == "mmap", preset=presets)

    def pickle5(w):
        obj = data[w.name]
        path = files.path("pickle", w.name, ".pkl")

        def save():
            with open(path, "wb") as f:
                pickle.dump(obj, f, 5)

        if w.op == "save":
            return save
        if w.op == "mmap":
            return None
        save()

        def load():
            with open(path, "rb") as f:
                return pickle.load(f)
        return load

    def joblib_(w):
        import joblib
        obj = data[w.name]
        path = files.path("joblib", w.name, ".joblib")
        if w.op == "save":
            return functools.partial(joblib.dump, obj, path)
        joblib.dump(obj, path)
        return functools.partial(joblib.load, path, mmap_mode="r" if w.op == "mmap" else None)

    def numpy_(w):
        obj = data[w.name]
        if w.name == "torch":
            return None
        if w.name == "array":
            path = files.path("numpy", w.name, ".npy")
            if w.op == "save":
                return functools.partial(np.save, path, obj)
            np.save(path, obj)
            return functools.partial(np.load, path, mmap_mode="r" if w.op == "mmap" else None)
        path = files.path("numpy", w.name, ".npz")
        if w.op == "save":
            return functools.partial(np.savez, path, **obj)
        if w.op == "mmap":
            return None
        np.savez(path, **obj)

        def load():
            with np.load(path) as archive:
                return {k: archive[k] for k in archive.files}
        return load

    def torch_(w):
        if w.name != "torch":
            return None
        obj = data[w.name]
        path = files.path("torch", w.name, ".pt")
        if w.op == "save":
            return functools.partial(torch.save, obj, path)
        torch.save(obj, path)
        return functools.partial(torch.load, path, weights_only=True, mmap=w.op == "mmap")

    def safetensors_(w):
        if w.op == "mmap":
            return None
        obj = data[w.name]
        path = files.path("safetensors", w.name, ".safetensors")
        if w.name == "torch":
            from safetensors.torch import load_file, save_file
        else:
            from safetensors.numpy import load_file, save_file
            if w.name == "array":
                obj = {"array": obj}
        if w.op == "save":
            return functools.partial(save_file, obj, path)
        save_file(obj, path)
        return functools.partial(load_file, path)

    return [
        Contender("raw", raw, "one write / readinto of the same bytes / mmap"),
        Contender("mason", mason_, "mason.dump(obj, path) / mason.load(path)"),
        Contender("mason+release", mason_settled, "mason.dump, and the replaced file freed"),
        Contender("mason-container", mason_container, "torch tensors in a mason container"),
        Contender("memcpy", memcpy, "a copy in memory"),
        Contender("pickle5", pickle5, "stdlib pickle, protocol 5, in-band"),
        Contender("joblib", joblib_, "joblib.dump / joblib.load"),
        Contender("numpy", numpy_, "np.save / np.load (np.savez for a dict)"),
        Contender("torch", torch_, "torch.save / torch.load(weights_only=True)"),
        Contender("safetensors", safetensors_, "safetensors save_file / load_file"),
    ]


def workloads(data) -> list[Workload]:
    found = []
    for name in data:
        for op in ("save", "load", "mmap"):
            found.append(Workload(name, op, None, target=TARGETS.get(op), kind=name))
    return found


# --- peak memory ---------------------------------------------------------------------------

PEAK_CODE = """
import sys
sys.path.insert(0, {src!r})
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) * 1024
import numpy, torch, mason, joblib, pickle
before = hwm()
{load}
print(hwm() - before)
"""


def peak_memory(files: Files, data) -> list[tuple[str, str, float]]:
    rows = []
    loads = {
        "mason": ("mason", ".mason", "obj = mason.load({path!r}, preset=['numpy', 'torch'])"),
        "joblib": ("joblib", ".joblib", "obj = joblib.load({path!r})"),
        "pickle5": ("pickle", ".pkl", "obj = pickle.load(open({path!r}, 'rb'))"),
        "torch": ("torch", ".pt", "obj = torch.load({path!r}, weights_only=True)"),
        "mason (torch.save file)": ("torch", ".pt", "obj = mason.load({path!r})"),
    }
    for workload in data:
        size = nbytes(data[workload])
        for label, (prefix, suffix, code) in loads.items():
            path = files.path(prefix, workload, suffix)
            if not os.path.exists(path):
                continue
            program = PEAK_CODE.format(src=SRC, load=code.format(path=path))
            out = subprocess.run([sys.executable, "-c", textwrap.dedent(program)],
                                 capture_output=True, text=True)
            if out.returncode:
                rows.append((workload, label, float("nan")))
                continue
            rows.append((workload, label, int(out.stdout.split()[-1]) / size))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, sizes / 4")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--only", action="append", help="workload patterns (shell style)")
    parser.add_argument("--json", help="also save every sample to this file")
    parser.add_argument("--no-peak", action="store_true", help="skip the peak-memory runs")
    args = parser.parse_args(argv)
    scale = 0.25 if args.quick else 1.0
    repeat = args.repeat or (3 if args.quick else 5)
    data = make_data(scale)
    root = tempfile.mkdtemp(prefix="mason-bench-arrays-")
    try:
        files = Files(root)
        chosen = harness.select(workloads(data), args.only)
        print(f"# {harness.environment()}", flush=True)
        sizes = ", ".join(f"{name} {nbytes(obj) / MIB:.0f} MiB" for name, obj in data.items())
        print(f"# data: {sizes}; repeat {repeat}", flush=True)
        results = harness.measure(contenders(data, files), chosen, repeat=repeat,
                                  min_time=0.0)
        print()
        ok = harness.report(results, "raw", subject="mason", peer="torch")
        print("\nmemory-mapped loads (absolute):")
        for w in chosen:
            if w.op != "mmap":
                continue
            row = results.timings.get(w.key, {})
            cells = [f"{name} {harness.format_time(t.median)}" for name, t in row.items()
                     if t.median is not None]
            mason_time = results.median(w.key, "mason")
            verdict = "PASS" if mason_time is not None and mason_time < MMAP_LIMIT else "FAIL"
            ok = ok and verdict == "PASS"
            print(f"  {w.name:<11} {', '.join(cells)}  [mason < 10 ms: {verdict}]")
        if any(w.name == "torch" for w in chosen):
            print("\ntorch checkpoint (the file torch.save wrote):")
            for op in ("load", "mmap"):
                mine = results.median(f"torch {op}", "mason")
                theirs = results.median(f"torch {op}", "torch")
                if mine and theirs:
                    target = TORCH_TARGET_VS_TORCH if op == "load" else 1.0
                    verdict = "PASS" if mine / theirs <= target else "FAIL"
                    ok = ok and verdict == "PASS"
                    print(f"  {op}: mason {harness.format_time(mine)}, torch.load "
                          f"{harness.format_time(theirs)}: {mine / theirs:.2f}x "
                          f"(target <= {target:.2f}x) {verdict}")
        if not args.no_peak:
            print("\npeak memory of a full load, above the data (VmHWM, fresh process):")
            for workload, label, ratio in peak_memory(files, data):
                verdict = "" if label != "mason" else \
                    ("  PASS" if ratio <= PEAK_LIMIT else "  FAIL")
                if label == "mason":
                    ok = ok and ratio <= PEAK_LIMIT
                print(f"  {workload:<11} {label:<24} {ratio:.2f}x{verdict}")
        if args.json:
            harness.save_json(results, args.json)
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
