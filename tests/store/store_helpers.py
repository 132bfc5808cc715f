"""Helpers shared by the store tests (a module of its own, so tests can import it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mason

SRC = str(Path(mason.__file__).resolve().parent.parent)


def python_env() -> dict[str, str]:
    """The environment for a child Python that imports this same mason."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python; fail the test with its output if it fails."""
    proc = subprocess.run([sys.executable, "-c", code, *args], env=python_env(),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"child python exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


class Point:
    """A plain class that no default policy allows: loading one needs allow= or trusted."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)

    def __repr__(self):
        return f"Point({self.x!r}, {self.y!r})"
