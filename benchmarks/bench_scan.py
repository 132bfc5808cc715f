"""Scan throughput: mason.analysis.scan against picklescan, fickling and modelscan.

    PYTHONPATH=src python3 benchmarks/bench_scan.py [--plain-mb 8] [--dense-mb 8]
        [--torch-mb 200] [--files 1000] [--repeat 3] [--only NAME] [--skip fickling]

Five workloads, each a file (or folder) on disk that every scanner reads from the path:

* ``plain``: a large plain-data pickle (records of str, int, float, lists, dicts, bytes);
* ``dense``: an opcode-dense pickle (millions of small ints, short strings and tuples),
  where decoding, not reading, is the cost;
* ``torch``: a ~200 MB torch checkpoint (``torch.save`` of a state dict: a zip with
  ``data.pkl`` and one stored member per tensor), written by torch when it is installed,
  else in the same layout by hand; mason scans it under the ``torch`` preset (which checks
  every tensor rebuild against its storage record, and the zip structure);
* ``small``: a folder of 1000 small pickles (a few KB each, varied), scanned as a folder.

Contenders: ``mason`` (``scan`` / ``scan_paths``, the compiled survey), ``mason-py`` (the
same with the pure-Python survey and limits check, for scale), ``picklescan``
(``scan_file_path`` / ``scan_directory_path``), ``fickling`` (``loader.scan_file``, or
``scan_zip_archive`` for the checkpoint), ``modelscan`` (``ModelScan().scan``), and
``genops``: ``pickletools.genops`` drained over the pickle bytes, the decoding reference
(for the checkpoint, over its data.pkl; for the folder, over each file).

The table gives each contender's median time as a ratio to picklescan's (below 1 is faster),
and then throughput in MB/s of input.  Targets: mason at least 10x picklescan's throughput on
``plain`` and ``dense``, 3x on ``small``, 1x on ``torch`` (ratios <= 0.1, 0.1, 0.33, 1.0).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import pickletools
import random
import struct
import sys
import tempfile
import warnings
import zipfile
from collections import deque
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Contender, Workload, format_time, measure, report, select  # noqa: E402

try:
    import mason  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from mason.analysis import scan as mason_scan  # noqa: E402
from mason.analysis import scan_paths  # noqa: E402

# The module (mason.analysis.scan), not the function the package exports under that name.
_scan_mod = sys.modules["mason.analysis.scan"]


# --- inputs ----------------------------------------------------------------------------------

def plain_data(megabytes: float) -> bytes:
    rng = random.Random(7)
    records = []
    size = 0
    while size < megabytes * 1e6:
        batch = [{"id": rng.randrange(10**9), "name": f"user-{rng.randrange(10**6)}",
                  "score": rng.random(), "tags": [f"t{rng.randrange(50)}" for _ in range(3)],
                  "active": rng.random() < 0.5, "blob": rng.randbytes(32),
                  "history": [rng.random() for _ in range(8)]}
                 for _ in range(2000)]
        records.extend(batch)
        size += len(pickle.dumps(batch))
    return pickle.dumps(records, pickle.DEFAULT_PROTOCOL)


def dense(megabytes: float) -> bytes:
    count = int(megabytes * 1e6 // 26)
    return pickle.dumps([(i, f"s{i % 1000}", (i % 251, -i)) for i in range(count)], 4)


def torch_checkpoint(path: str, megabytes: float) -> str:
    """A state dict of float32 tensors, about ``megabytes`` MB."""
    shapes = []
    total = 0
    layer = 0
    while total < megabytes * 1e6:
        for name, shape in (("attn.q", (512, 512)), ("attn.k", (512, 512)),
                            ("attn.v", (512, 512)), ("attn.o", (512, 512)),
                            ("mlp.fc1", (2048, 512)), ("mlp.fc2", (512, 2048)),
                            ("ln1.weight", (512,)), ("ln1.bias", (512,)),
                            ("ln2.weight", (512,)), ("ln2.bias", (512,))):
            shapes.append((f"layers.{layer}.{name}", shape))
            n = 1
            for d in shape:
                n *= d
            total += 4 * n
        layer += 1
    try:
        import torch
    except ImportError:
        return _torch_by_hand(path, shapes)
    gen = torch.Generator().manual_seed(0)
    state = {name: torch.randn(*shape, generator=gen) for name, shape in shapes}
    torch.save(state, path)
    return "torch.save"


def _torch_by_hand(path: str, shapes) -> str:
    """torch.save's layout without torch: data.pkl in protocol 2, storages stored, aligned."""
    def su(text):
        raw = text.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw
    body = b"\x80\x02}q\x00("
    for key, (name, shape) in enumerate(shapes):
        n = 1
        for d in shape:
            n *= d
        strides = []
        step = 1
        for d in reversed(shape):
            strides.insert(0, step)
            step *= d
        pid = b"(" + su("storage") + b"ctorch\nFloatStorage\n" + su(str(key)) + su("cpu") \
            + b"J" + struct.pack("<i", n) + b"tQ"
        ints = lambda xs: b"(" + b"".join(b"J" + struct.pack("<i", x) for x in xs) + b"t"
        body += su(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00" \
            + ints(shape) + ints(strides) + b"\x89ccollections\nOrderedDict\n)Rt" + b"R"
    body += b"u."
    rng = random.Random(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("model/data.pkl", body)
        archive.writestr("model/byteorder", "little")
        for key, (name, shape) in enumerate(shapes):
            n = 1
            for d in shape:
                n *= d
            archive.writestr(f"model/data/{key}", rng.randbytes(4 * n))
        archive.writestr("model/version", "3\n")
    return "by hand (torch not installed)"


def small_files(folder: str, count: int) -> int:
    rng = random.Random(3)
    os.makedirs(folder, exist_ok=True)
    total = 0
    for i in range(count):
        kind = i % 4
        if kind == 0:
            obj = {f"k{j}": rng.random() for j in range(rng.randrange(20, 200))}
        elif kind == 1:
            obj = [f"item-{rng.randrange(10**6)}" for _ in range(rng.randrange(20, 300))]
        elif kind == 2:
            obj = {"rows": [(j, rng.random(), str(j)) for j in range(rng.randrange(10, 120))]}
        else:
            obj = {"meta": {"name": f"run{i}", "epoch": i, "lr": 1e-3},
                   "losses": [rng.random() for _ in range(rng.randrange(50, 400))]}
        data = pickle.dumps(obj, rng.choice([2, 4, 5]))
        with open(os.path.join(folder, f"part-{i:04d}.pkl"), "wb") as handle:
            handle.write(data)
        total += len(data)
    return total


# --- contenders --------------------------------------------------------------------------------

@contextlib.contextmanager
def _pure_python():
    """mason with the reference survey and limits check instead of the compiled ones."""
    from mason import limits
    from mason.analysis import _survey
    saved = _scan_mod._survey, _scan_mod._limits_check
    _scan_mod._survey, _scan_mod._limits_check = _survey.survey, limits.check
    try:
        yield
    finally:
        _scan_mod._survey, _scan_mod._limits_check = saved


def _mason(workload, pure=False):
    path = workload.data["path"]
    kind = workload.name

    def run():
        if kind == "small":
            return list(scan_paths([path]))
        return mason_scan(path, preset="torch" if kind == "torch" else None)

    if not pure:
        return run

    def run_pure():
        with _pure_python():
            return run()
    return run_pure


def _picklescan(workload):
    from picklescan.scanner import scan_directory_path, scan_file_path
    path = workload.data["path"]
    if workload.name == "small":
        return partial(scan_directory_path, path)
    return partial(scan_file_path, path)


def _quiet(fn):
    def run():
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return fn()
    return run


def _fickling(workload):
    from fickling.loader import scan_file, scan_zip_archive
    path = workload.data["path"]
    if workload.name == "small":
        files = workload.data["files"]
        return _quiet(lambda: [scan_file(f, graceful=True) for f in files])
    if workload.name == "torch":
        return _quiet(partial(scan_zip_archive, path, graceful=True))
    return _quiet(partial(scan_file, path, graceful=True))


def _modelscan(workload):
    import logging
    logging.getLogger("modelscan").setLevel(logging.CRITICAL)
    from modelscan.modelscan import ModelScan
    scanner = ModelScan()
    return _quiet(partial(scanner.scan, workload.data["path"]))


def _genops(workload):
    blobs = workload.data["pickles"]

    def run():
        for blob in blobs:
            deque(pickletools.genops(blob), maxlen=0)
    return run


CONTENDERS = [
    Contender("picklescan", _picklescan, "picklescan.scanner"),
    Contender("mason", _mason, "mason.analysis.scan, compiled survey"),
    Contender("mason-py", partial(_mason, pure=True), "pure-Python survey and limits check"),
    Contender("fickling", _fickling, "fickling.loader"),
    Contender("modelscan", _modelscan, "modelscan.ModelScan"),
    Contender("genops", _genops, "pickletools.genops, decoding only"),
]


def _ok_for(kind: str):
    """The check on mason's untimed first call: the verdict a benign input must get."""
    def check(result):
        reports = result if isinstance(result, list) else [result]
        if not reports or not hasattr(reports[0], "verdict"):
            return None   # not mason's result
        bad = [r for r in reports if not r.ok]
        return f"mason says {bad[0].verdict} for {bad[0].source}" if bad else None
    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain-mb", type=float, default=8)
    parser.add_argument("--dense-mb", type=float, default=8)
    parser.add_argument("--torch-mb", type=float, default=200)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.02)
    parser.add_argument("--only", action="append", help="workloads to run (names, patterns)")
    parser.add_argument("--skip", action="append", default=[], help="contenders to leave out")
    parser.add_argument("--workdir", default=None, help="where to write the inputs")
    args = parser.parse_args()

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_scan_")
    os.makedirs(workdir, exist_ok=True)
    print(f"inputs in {workdir}", file=sys.stderr)
    workloads = []
    wanted = {w.name for w in select([Workload(n) for n in ("plain", "dense", "torch",
                                                                "small")], args.only)}
    if "plain" in wanted:
        data = plain_data(args.plain_mb)
        path = os.path.join(workdir, "plain.pkl")
        with open(path, "wb") as handle:
            handle.write(data)
        workloads.append(Workload("plain", data={"path": path, "pickles": [data],
                                                 "size": len(data)},
                                  target=0.1, check=_ok_for("plain")))
    if "dense" in wanted:
        data = dense(args.dense_mb)
        path = os.path.join(workdir, "dense.pkl")
        with open(path, "wb") as handle:
            handle.write(data)
        workloads.append(Workload("dense", data={"path": path, "pickles": [data],
                                                 "size": len(data)},
                                  target=0.1, check=_ok_for("dense")))
    if "torch" in wanted:
        path = os.path.join(workdir, "model.pt")
        how = torch_checkpoint(path, args.torch_mb)
        with zipfile.ZipFile(path) as archive:
            inner = [archive.read(n) for n in archive.namelist() if n.endswith("data.pkl")]
        print(f"torch checkpoint written {how}: {os.path.getsize(path) / 1e6:.0f} MB, "
              f"data.pkl {len(inner[0]) / 1e3:.0f} KB", file=sys.stderr)
        workloads.append(Workload("torch", data={"path": path, "pickles": inner,
                                                 "size": os.path.getsize(path)},
                                  target=1.0, check=_ok_for("torch")))
    if "small" in wanted:
        folder = os.path.join(workdir, "small")
        total = small_files(folder, args.files)
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
        blobs = []
        for f in files:
            with open(f, "rb") as handle:
                blobs.append(handle.read())
        workloads.append(Workload("small", data={"path": folder, "files": files,
                                                 "pickles": blobs, "size": total},
                                  target=1 / 3, check=_ok_for("small")))

    contenders = [c for c in CONTENDERS if c.name not in args.skip]
    print(f"mason from {os.path.dirname(os.path.dirname(_scan_mod.__file__))}; survey: "
          f"{getattr(_scan_mod._survey, '__module__', None) or 'mason._scan (compiled)'}",
          file=sys.stderr)
    results = measure(contenders, workloads, repeat=args.repeat, min_time=args.min_time)
    print()
    report(results, "picklescan", subject="mason", peer="fickling"
           if "fickling" not in args.skip else None)
    print("\nthroughput, MB/s of input (median):")
    names = [c.name for c in contenders]
    print("  " + "workload".ljust(10) + "".join(n.rjust(12) for n in names) + "   size")
    for w in workloads:
        cells = []
        for name in names:
            median = results.median(w.key, name)
            cells.append(f"{w.data['size'] / 1e6 / median:12.1f}" if median else
                         "error".rjust(12))
        print("  " + w.name.ljust(10) + "".join(cells) +
              f"   {w.data['size'] / 1e6:.1f} MB")
    print("\nmedian time of mason: " + ", ".join(
        f"{w.name} {format_time(results.median(w.key, 'mason'))}" for w in workloads))


if __name__ == "__main__":
    main()
