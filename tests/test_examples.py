"""The README's first command runs examples/quickstart.py: it must keep working."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_quickstart_runs_and_shows_each_step():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")],
                            capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "plain data: 2026-11-25 12:00:00"
    assert "refused: ['geometry.Point']" in lines
    assert "allowed: [Point(1, 2), Point(3, 4)]" in lines
    assert "hostile pickle refused: ['os.system']" in lines
    assert "from file: sensor-7 [1, 2, 3]" in lines
    assert "renamed: Point(5, 6)" in lines
    assert "a lambda, by value: 49" in lines
