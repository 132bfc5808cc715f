"""Resource bombs: a few hundred bytes that ask for gigabytes, fail fast with a mason error.

Each case runs in a fresh interpreter under a 2 GiB address-space limit
(``resource.setrlimit(RLIMIT_AS)``), and is loaded four ways: ``mason.loads``, ``mason.load``
from a real file, and ``mason.load`` from a non-seekable pipe, buffered (with ``peek``) and
raw (without).  Every way must raise a mason error (an ``UnpicklingError``) -- never a
``MemoryError``, never a dead process -- within seconds, and the child's peak memory must stay
far below what the stream asks for: the check refused it before anything was allocated.
"""

from __future__ import annotations

import json
import pickle
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hostile import (APPEND, REDUCE, STOP, TUPLE1, binunicode, global_, proto, stack_global,
                     unicode0)

import mason

# The child imports the same mason as the tests (from src/ or from an installed package).
MASON_HOME = str(Path(mason.__file__).resolve().parents[1])

CHILD = textwrap.dedent("""
    import json, os, resource, sys, threading, time
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    import mason

    path = sys.argv[1]
    with open(path, "rb") as f:
        data = f.read()

    def from_pipe(buffered):
        r, w = os.pipe()
        def feed():
            try:
                os.write(w, data)
            finally:
                os.close(w)
        threading.Thread(target=feed, daemon=True).start()
        with os.fdopen(r, "rb", buffering=-1 if buffered else 0) as f:
            assert not f.seekable()
            return mason.load(f)

    def from_file():
        with open(path, "rb") as f:
            return mason.load(f)

    ways = {"loads": lambda: mason.loads(data), "load(file)": from_file,
            "load(buffered pipe)": lambda: from_pipe(True),
            "load(raw pipe)": lambda: from_pipe(False)}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = {}
    for way, run in ways.items():
        start = time.monotonic()
        try:
            run()
        except BaseException as exc:
            results[way] = {"error": type(exc).__name__,
                            "mason": isinstance(exc, mason.MasonError),
                            "unpickling": isinstance(exc, mason.UnpicklingError),
                            "message": str(exc)[:300]}
        else:
            results[way] = {"error": None}
        results[way]["seconds"] = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"results": results, "grew_kib": peak - base}))
""")


def run_bomb(data: bytes, tmp_path) -> dict:
    env = {**os.environ,
           "PYTHONPATH": MASON_HOME + os.pathsep + os.environ.get("PYTHONPATH", "")}
    path = tmp_path / "bomb.pkl"
    path.write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)],
                          capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0, (
        f"the child died (status {proc.returncode}):\n{proc.stderr.decode(errors='replace')}")
    return json.loads(proc.stdout)


Q = lambda n: struct.pack("<Q", n)   # noqa: E731
I = lambda n: struct.pack("<I", n)   # noqa: E731
i = lambda n: struct.pack("<i", n)   # noqa: E731
FILLER = b"x" * 200

BOMBS = {
    # declared lengths far beyond the data present
    "BINBYTES8 2**60": proto(4) + b"\x8e" + Q(2**60) + FILLER + STOP,
    "BINUNICODE8 2**62": proto(4) + b"\x8d" + Q(2**62) + FILLER + STOP,
    "BYTEARRAY8 2**40": proto(5) + b"\x96" + Q(2**40) + FILLER + STOP,
    "BINBYTES 4 GiB": proto(3) + b"B" + I(0xFFFFFFFF) + FILLER + STOP,
    "BINUNICODE 4 GiB": proto(3) + b"X" + I(0xFFFFFFFF) + FILLER + STOP,
    "BINSTRING 2 GiB": b"T" + i(0x7FFFFFFF) + FILLER + STOP,
    "LONG4 2 GiB": proto(2) + b"\x8b" + i(0x7FFFFFFF) + FILLER + STOP,
    "FRAME 2**62": proto(4) + b"\x95" + Q(2**62) + b"N" + STOP,
    "FRAME 2**31 with data": proto(4) + b"\x95" + Q(2**31) + b"N" * 200 + STOP,
    # memo indexes: the engine allocates its memo table up to the largest index
    "LONG_BINPUT 0x3FFFFFFF": proto(4) + b"N" + b"r" + I(0x3FFFFFFF) + STOP,
    "LONG_BINPUT 0x7FFFFFFF": proto(2) + b"N" + b"r" + I(0x7FFFFFFF) + STOP,
    "PUT 1073741823": b"N" + b"p1073741823\n" + STOP,
    "many LONG_BINPUTs": proto(2) + b"N" + b"".join(b"r" + I(0x3FFFFFFF - k * 4096)
                                                     for k in range(30)) + STOP,
    # allowed constructors asked to build something huge
    "list(range(2**40))": proto(2) + global_("builtins", "list") + global_("builtins", "range")
    + b"\x8a\x06" + (2**40).to_bytes(6, "little") + TUPLE1 + REDUCE + TUPLE1 + REDUCE + STOP,
    "bytes(2**40)": proto(2) + global_("builtins", "bytes") + b"\x8a\x06"
    + (2**40).to_bytes(6, "little") + TUPLE1 + REDUCE + STOP,
    "bytearray(2**31)": proto(4) + stack_global("builtins", "bytearray") + b"\x8a\x05"
    + (2**31).to_bytes(5, "little") + TUPLE1 + REDUCE + STOP,
    # a decimal string of 10**8 digits, had int() or Fraction() expanded it
    "int(Decimal('1e100000000'))": proto(2) + global_("builtins", "int")
    + global_("decimal", "Decimal") + binunicode("1e100000000") + TUPLE1 + REDUCE + TUPLE1
    + REDUCE + STOP,
    "Fraction(Decimal('1e100000000'))": proto(2) + global_("fractions", "Fraction")
    + global_("decimal", "Decimal") + binunicode("1e100000000") + TUPLE1 + REDUCE + TUPLE1
    + REDUCE + STOP,
    "Fraction('1e100000000')": proto(2) + global_("fractions", "Fraction")
    + binunicode("1e100000000") + TUPLE1 + REDUCE + STOP,
    # IP networks are values of the default policy, and iterate over every address
    "list(IPv4Network('0.0.0.0/0'))": proto(2) + global_("builtins", "list")
    + global_("ipaddress", "IPv4Network") + binunicode("0.0.0.0/0") + TUPLE1 + REDUCE
    + TUPLE1 + REDUCE + STOP,
    "set(IPv6Network('::/0')), protocol 4": proto(4) + stack_global("builtins", "set")
    + stack_global("ipaddress", "IPv6Network") + binunicode("::/0") + TUPLE1 + REDUCE
    + TUPLE1 + REDUCE + STOP,
    "Python 2 list() of a memoized network": global_("__builtin__", "list") + b"("
    + global_("ipaddress", "IPv4Network") + b"(" + unicode0("0.0.0.0/0") + b"tRp0\n0g0\ntR.",
    "deque(network, 0) consuming it": proto(2) + global_("collections", "deque")
    + global_("ipaddress", "IPv6Network") + binunicode("::/0") + TUPLE1 + REDUCE
    + b"K\x00" + b"\x86" + REDUCE + STOP,
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_fails_fast_with_bounded_memory(name, tmp_path):
    data = BOMBS[name]
    assert len(data) < 600
    report = run_bomb(data, tmp_path)
    for way, result in report["results"].items():
        assert result["error"] is not None, f"{way}: the bomb loaded"
        assert result["error"] != "MemoryError", (way, result)
        assert result["mason"] and result["unpickling"], (way, result)
        assert result["seconds"] < 5, (way, result)
    # The stream asks for gigabytes; refusing it must cost next to nothing.
    assert report["grew_kib"] < 64 * 1024, report


def test_memo_index_bomb_names_the_limit_and_offset(tmp_path):
    report = run_bomb(BOMBS["LONG_BINPUT 0x3FFFFFFF"], tmp_path)
    for way, result in report["results"].items():
        assert result["error"] == "LimitError", (way, result)
        assert "memo index 1073741823" in result["message"], (way, result)
        assert "byte 3" in result["message"], (way, result)


def test_declared_length_bomb_is_a_truncation_at_its_offset(tmp_path):
    report = run_bomb(BOMBS["BINBYTES8 2**60"], tmp_path)
    for way, result in report["results"].items():
        assert result["error"] == "TruncatedPickleError", (way, result)
        assert "byte 2" in result["message"], (way, result)


def _nested_lists(depth: int) -> bytes:
    return proto(2) + b"]" * depth + APPEND * (depth - 1) + STOP


def _nested_tuples(depth: int) -> bytes:
    return proto(2) + b"N" + TUPLE1 * depth + STOP


@pytest.mark.parametrize("build", [_nested_lists, _nested_tuples])
def test_deep_nesting_is_refused(build, tmp_path):
    report = run_bomb(build(50_000), tmp_path)
    for way, result in report["results"].items():
        assert result["error"] == "LimitError", (way, result)
        assert "max_depth" in result["message"], (way, result)
    # and an honest depth within the limit loads, in process
    assert mason.loads(build(1_000)) is not None


def test_deep_nesting_limit_can_be_raised():
    data = _nested_lists(20_000)
    with pytest.raises(mason.LimitError):
        mason.loads(data)
    loaded = mason.loads(data, limits=mason.Limits(max_depth=30_000))
    depth = 0
    while loaded:
        loaded, depth = loaded[0], depth + 1
    assert depth == 19_999


def test_network_iteration_is_refused_and_live_in_the_stdlib():
    """The network bombs above are refused because of the call, not the size: a small
    network passed to list() is refused too, and the stdlib really does expand it."""
    data = proto(2) + global_("builtins", "list") + global_("ipaddress", "IPv4Network") \
        + binunicode("10.0.0.0/12") + TUPLE1 + REDUCE + TUPLE1 + REDUCE + STOP
    with pytest.raises(mason.LimitError, match="IP network"):
        mason.loads(data)
    assert len(pickle.loads(data)) == 2**20
    # a network as a value, in containers and as a dict key, loads
    import ipaddress
    value = {ipaddress.IPv6Network("::/0"): [ipaddress.IPv4Network("0.0.0.0/0")]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert mason.loads(pickle.dumps(value, protocol)) == value
