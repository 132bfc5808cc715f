"""Helpers shared by the cache tests: running a child Python on this same mason, and
counting calls of cached functions across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mason

SRC = str(Path(mason.__file__).resolve().parent.parent)


def python_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python that imports this same mason (and sees the test's
    isolated HOME and key settings)."""
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_python(code: str, *args: str, timeout: float = 120, cwd=None,
               **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python; fail the test with its output if it fails."""
    proc = subprocess.run([sys.executable, "-c", code, *args], env=python_env(**env),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if proc.returncode != 0:
        pytest.fail(f"child python exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def count_lines(path: Path) -> int:
    """How many calls a function that appends a line per call to ``path`` has made."""
    return len(path.read_text().splitlines()) if path.exists() else 0
