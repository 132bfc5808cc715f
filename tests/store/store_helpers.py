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


def space_of(path: str, store=None) -> tuple[list[tuple[int, int]], int]:
    """``(free extents, end)`` of an SQLite store's values file, as its space map has them,
    plus the extents ``store``'s process freed and has not put back on the map yet."""
    import mmap

    from mason.store import _space

    with open(path + "-values", "rb") as f:
        view = mmap.mmap(f.fileno(), _space.REGION, access=mmap.ACCESS_READ)
        try:
            free = _space._entries(view)
            end = _space._U64.unpack_from(view, _space._END_AT)[0]
        finally:
            view.close()
    if store is not None:
        free += [(off, size) for off, size, _ in store._backend._pending]
    return sorted(free), end


def assert_space_consistent(path: str) -> None:
    """The values file's live and free extents do not overlap and lie below its end, as the
    next writer finds them (a map a killed writer left untrusted is rebuilt first)."""
    from mason.store import Store

    with Store(path) as store:
        with store.transaction():  # a write transaction: an untrusted map is rebuilt
            pass
        backend = store._backend
        live = backend._live_extents(backend._holder().cur)
        free, end = space_of(path)
    extents = sorted(live + free)
    assert all(a + n <= b for (a, n), (b, _) in zip(extents, extents[1:])), extents
    assert not extents or extents[-1][0] + extents[-1][1] <= end
    assert all(off >= 1 << 20 for off, _ in extents)  # never inside the map itself


def in_forked_child(work) -> None:
    """Run ``work()`` in a forked child, which leaves with ``os._exit`` (no cleanup of what it
    inherited); fail the test unless ``work`` returned."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child failed"


def run_together(code: str, argvs: list[list[str]], timeout: float = 300) -> None:
    """One child Python per argument list, each running ``code`` with that list plus a start
    time a moment ahead (so they collide as much as possible); fail the test with the output
    of any child that did not exit cleanly after printing "done"."""
    import time

    start_at = str(time.time() + 1.5)
    procs = [subprocess.Popen([sys.executable, "-c", code, *argv, start_at], env=python_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in argvs]
    failures = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0 or "done" not in out:
            failures.append(f"exit {proc.returncode}:\n{out}\n{err}")
    assert not failures, "\n".join(failures)
