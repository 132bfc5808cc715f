"""Helpers for the security tests: hand-made opcodes, the marker file, and the control
that runs the same bytes through the standard library's pickle in a subprocess.

Every payload here is assembled opcode by opcode (no ``pickle.dumps``), so that the tests
do not depend on how a pickler chooses to write something.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Opcodes, hand-assembled


def proto(n: int) -> bytes:
    return b"\x80" + bytes([n])


def global_(module: str, name: str) -> bytes:
    """GLOBAL: 'c' module '\\n' name '\\n' (protocols 0-3)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def unicode0(text: str) -> bytes:
    """UNICODE (protocol 0): raw-unicode-escape up to a newline."""
    assert "\n" not in text and "\\" not in text
    return b"V" + text.encode("raw-unicode-escape") + b"\n"


def string0(text: str) -> bytes:
    """STRING (protocol 0): a quoted Python 2 str."""
    assert "'" not in text and "\\" not in text and "\n" not in text
    return b"S'" + text.encode() + b"'\n"


def binunicode(text: str) -> bytes:
    """SHORT_BINUNICODE or BINUNICODE, whichever fits."""
    raw = text.encode()
    if len(raw) < 256:
        return b"\x8c" + bytes([len(raw)]) + raw
    return b"X" + struct.pack("<I", len(raw)) + raw


def stack_global(module: str, name: str) -> bytes:
    """STACK_GLOBAL with both names pushed just before (protocol 4+)."""
    return binunicode(module) + binunicode(name) + b"\x93"


MARK, STOP, TUPLE, TUPLE1, TUPLE2, TUPLE3 = b"(", b".", b"t", b"\x85", b"\x86", b"\x87"
REDUCE, BUILD, EMPTY_TUPLE, EMPTY_DICT = b"R", b"b", b")", b"}"
MEMOIZE, NEWOBJ, NEWOBJ_EX, OBJ, POP = b"\x94", b"\x81", b"\x92", b"o", b"0"
EMPTY_LIST, APPEND = b"]", b"a"


def inst(module: str, name: str) -> bytes:
    """INST: 'i' module '\\n' name '\\n'; calls the class with the items above the MARK."""
    return b"i" + module.encode() + b"\n" + name.encode() + b"\n"


def binget(index: int) -> bytes:
    return b"h" + bytes([index])


def binput(index: int) -> bytes:
    return b"q" + bytes([index])


def ext1(code: int) -> bytes:
    return b"\x82" + bytes([code])


# --------------------------------------------------------------------------------------------
# The marker file and the control run


def run_with_stdlib(data: bytes, cwd: Path, *, setup: str = "", allow_error: bool = True,
                    timeout: float = 60) -> subprocess.CompletedProcess:
    """Load ``data`` with the standard library's pickle.loads in a fresh interpreter.

    ``setup`` runs first (e.g. to register a copyreg extension, or put a module on sys.path).
    The load may fail after the payload ran (a payload's result is rarely what the rest of
    the stream expects); its exit status is returned for the caller to judge.
    """
    script = textwrap.dedent("""
        import pickle, sys
        {setup}
        data = sys.stdin.buffer.read()
        pickle.loads(data)
    """).format(setup=setup)
    result = subprocess.run([sys.executable, "-c", script], input=data, cwd=cwd,
                            capture_output=True, timeout=timeout,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    if not allow_error:
        assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def assert_control_creates(marker: Path, data: bytes, **kwargs) -> None:
    """The control: stdlib pickle, given the same bytes, does create the marker, so the
    payload is live and a test that finds no marker after mason did not pass vacuously."""
    assert not marker.exists(), "the marker exists before the control ran"
    result = run_with_stdlib(data, marker.parent, **kwargs)
    assert marker.exists(), (
        "control failed: stdlib pickle did not create the marker, so this payload proves "
        "nothing\n" + result.stderr.decode(errors="replace"))
    marker.unlink()
