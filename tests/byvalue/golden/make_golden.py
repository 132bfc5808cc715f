"""Write the golden pickles of mason's own formats (by-value payloads, signed envelopes).

    PYTHONPATH=src python tests/byvalue/golden/make_golden.py

Run it under each new Python version mason supports and commit the files: old pickles must
keep loading (by-value ones on the interpreter that made them; elsewhere they must fail with
the version error), and their rebuild functions must keep their names.
"""

from __future__ import annotations

import pathlib
import textwrap

import mason
from mason.byvalue import TAG

HERE = pathlib.Path(__file__).parent
GOLDEN_KEY = b"mason golden signing key, 32 b.."

SOURCE = textwrap.dedent('''
    import enum, dataclasses

    RATE = 7

    def scaled(x, *, by=2):
        """Scale x."""
        return x * by + RATE

    def counter():
        n = 0
        def inc():
            nonlocal n
            n += 1
            return n
        return inc

    @dataclasses.dataclass
    class Point:
        x: int
        y: int = 0

        def norm1(self):
            return abs(self.x) + abs(self.y)

    class Mode(enum.Enum):
        FAST = "fast"
        SAFE = "safe"
''')


def objects() -> dict:
    namespace = {"__name__": "__main__"}
    exec(compile(SOURCE, "<golden>", "exec"), namespace)
    return {"scaled": namespace["scaled"], "inc": namespace["counter"](),
            "point": namespace["Point"](3, -4), "mode": namespace["Mode"].SAFE}


def main() -> None:
    (HERE / f"byvalue-{TAG}.pkl").write_bytes(mason.dumps(objects()))
    (HERE / "signed-envelope-v1.bin").write_bytes(
        mason.dumps({"numbers": [1, 2.5, -3], "text": "golden"}, 2, key=GOLDEN_KEY))


if __name__ == "__main__":
    main()
