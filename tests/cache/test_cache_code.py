"""Code tracking: editing what a cached function (or a helper of its module) does invalidates
its entries; edits that cannot change behaviour do not.  Each run is a real process that
imports a module file from disk, as a program does after its source was edited."""

from __future__ import annotations

import textwrap
import types
from pathlib import Path

import pytest

from mason.cache import Memory
from mason.hashing import code_digest

from cache_helpers import count_lines, run_python

BASE = '''
import os
from mason.cache import Memory
from othermod import external

memory = Memory(os.environ["CACHE_DIR"], track_code=os.environ.get("TRACK", "1") == "1")
CALLS = os.environ["CALLS_FILE"]


def inner(x):
    return x + 1


def helper(x):
    return inner(x) * 10


class Scaler:
    def scale(self, x):
        return x * 3


def ping(n):
    return 0 if n <= 0 else pong(n - 1) + 1


def pong(n):
    return 0 if n <= 0 else ping(n - 1) + 1


@memory.cache
def compute(x):
    """Compute the thing."""
    with open(CALLS, "a") as f:
        f.write("compute\\n")
    total = helper(x) + Scaler().scale(x) + external(x) + ping(3)
    return total
'''

OTHER = '''
def external(x):
    return x - 1
'''

RUN = "import mod; print(mod.compute(4))"


class Project:
    """A module file, a cache, and a count of real calls, run in child processes."""

    def __init__(self, root: Path):
        self.root = root
        self.calls = root / "calls.txt"
        self.cache = root / "cache"
        root.mkdir(exist_ok=True)
        self.write(BASE)
        (root / "othermod.py").write_text(OTHER)

    def write(self, source: str) -> None:
        (self.root / "mod.py").write_text(textwrap.dedent(source))
        for pyc in self.root.rglob("*.pyc"):
            pyc.unlink()

    def edit(self, old: str, new: str) -> None:
        source = (self.root / "mod.py").read_text()
        assert old in source, old
        self.write(source.replace(old, new, 1))

    def run(self, track: bool = True) -> tuple[int, str]:
        """Run the program once; return (new real calls, printed result)."""
        before = count_lines(self.calls)
        proc = run_python(RUN, cwd=str(self.root), CACHE_DIR=str(self.cache),
                          CALLS_FILE=str(self.calls), TRACK="1" if track else "0",
                          PYTHONPATH=str(self.root), PYTHONDONTWRITEBYTECODE="1")
        return count_lines(self.calls) - before, proc.stdout.strip()


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path / "proj")


def test_unchanged_code_hits_across_processes(project):
    assert project.run() == (1, "68")
    assert project.run() == (0, "68")


@pytest.mark.parametrize("old, new", [
    ('"""Compute the thing."""', '"""Compute the thing, documented at length.\n\n    More."""'),
    ('    return total', '    # a comment\n    return total  # the sum'),
    ('    total = helper(x) + Scaler().scale(x) + external(x) + ping(3)',
     '    total = (helper(x)\n             + Scaler().scale(x)\n             + external(x)\n'
     '             + ping(3))'),
    ('\nmemory = Memory', '\n\n\n\n# moved down by a few lines\nmemory = Memory'),
    ('def inner(x):\n    return x + 1', 'def inner(x):\n    """Add one."""\n    pass\n'
     '    return x + 1'),
])
def test_edits_that_cannot_change_behaviour_keep_entries(project, old, new):
    assert project.run()[0] == 1
    project.edit(old, new)
    assert project.run() == (0, "68")


@pytest.mark.parametrize("old, new, result", [
    ("    return total", "    return total + 1", "69"),                   # its own body
    ("    return inner(x) * 10", "    return inner(x) * 100", "518"),     # a helper
    ("    return x + 1\n", "    return x + 2\n", "78"),                   # a helper's helper
    ("        return x * 3", "        return x * 4", "72"),               # a class's method
    ("0 if n <= 0 else pong(n - 1) + 1", "0 if n <= 0 else pong(n - 1) + 2", "70"),  # cycle
    ('        f.write("compute\\n")', '        f.write("compute\\n")\n    x = x + 0.5', "75.0"),
])
def test_edits_to_behaviour_invalidate(project, old, new, result):
    assert project.run() == (1, "68")
    project.edit(old, new)
    assert project.run() == (1, result)
    assert project.run() == (0, result)
    project.edit(new, old)   # back to the first version: its entry is still there
    assert project.run() == (0, "68")


def test_other_modules_are_not_tracked(project):
    assert project.run() == (1, "68")
    (project.root / "othermod.py").write_text(OTHER.replace("x - 1", "x - 2"))
    # Documented: only the function's own module is followed.
    assert project.run() == (0, "68")


def test_track_code_false_ignores_code_changes(project):
    assert project.run(track=False) == (1, "68")
    project.edit("    return total", "    return total + 1")
    assert project.run(track=False) == (0, "68")
    assert project.run(track=True) == (1, "69")


# -- in one process: redefinitions are noticed without restarting --------------------------------

def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(textwrap.dedent(source), f"<{name}>", "exec"), module.__dict__)
    return module


def test_redefining_a_helper_in_the_same_process_invalidates(location):
    memory = Memory(location, key=b"k" * 32)
    mod = _module("notebook", """
        calls = []
        def helper(x):
            return x + 1
        def f(x):
            calls.append(x)
            return helper(x)
    """)
    f = memory.cache(mod.f)
    mod.f = f
    assert f(1) == 2 and f(1) == 2 and mod.calls == [1]
    exec("def helper(x):\n    return x + 5\n", mod.__dict__)   # a notebook cell run again
    assert f(1) == 6 and mod.calls == [1, 1]
    assert f(1) == 6 and mod.calls == [1, 1]
    mod.f.func.__code__ = (lambda x: helper(x) * 2).__code__   # noqa: F821 - mod's helper
    assert f(1) == 12


def test_code_digest_ignores_lines_and_names_of_files():
    a = compile("def f(x):\n    return x * 2\n", "a.py", "exec")
    b = compile("\n\n\n\ndef f(x):\n    # note\n    return (x\n            * 2)\n", "b.py", "exec")
    c = compile("def f(x):\n    return x * 3\n", "a.py", "exec")
    code = {name: [k for k in src.co_consts if isinstance(k, types.CodeType)][0]
            for name, src in (("a", a), ("b", b), ("c", c))}
    assert code_digest(code["a"]) == code_digest(code["b"])
    assert code_digest(code["a"]) != code_digest(code["c"])
