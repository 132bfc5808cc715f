"""Helpers for the by-value tests: code defined in a ``__main__``-like namespace, and real
subprocesses that dump in one interpreter and load in a fresh one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def define(source: str) -> dict:
    """Execute ``source`` as if it were a script's ``__main__``: what it defines cannot be
    imported by name, so mason pickles it by value."""
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(textwrap.dedent(source), "<script>", "exec"), namespace)
    return namespace


def run_python(code: str, *, cwd, input: bytes | None = None, env: dict | None = None,
               pythonpath: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter whose path holds mason's src (and ``pythonpath``),
    never the test's own directories."""
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full_env["PYTHONPATH"] = os.pathsep.join([SRC, *(pythonpath or [])])
    full_env.update(env or {})
    script = Path(cwd) / f"_run_{abs(hash(code)) % 10**8}.py"
    script.write_text(textwrap.dedent(code))
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=cwd, input=input,
                              capture_output=True, env=full_env, timeout=120)
    finally:
        script.unlink()
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n"
                             f"{proc.stderr.decode(errors='replace')}")
    return proc
