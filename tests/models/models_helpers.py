"""Helpers of the model and array tests (conftest names collide across test directories,
so they live here): subprocesses with mason importable, and the stdlib-pickle control."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with mason's sources importable."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def stdlib_loads_in_subprocess(data: bytes, tmp_path: Path, then: str = "") -> \
        subprocess.CompletedProcess:
    """The control: the standard library's pickle.loads of ``data`` in a subprocess,
    followed by ``then`` (code using ``obj``)."""
    blob = tmp_path / "payload.pkl"
    blob.write_bytes(data)
    return run_python(f"""
        import pickle
        obj = pickle.loads(open({str(blob)!r}, 'rb').read())
        {then}
    """)
