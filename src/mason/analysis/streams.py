"""The pickle streams of a file, in any container ``scan`` reads, run on the symbolic machine:
what ``show`` and ``dis`` print."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..policy import Policy
from .scan import DEFAULT_MAX_SIZE, _Scanner, _Source

__all__ = ["Part", "streams"]


@dataclass
class Part:
    """One pickle stream: where it is, how it was read, and the machine's run of it."""

    member: str
    data: Any
    start: int
    context: str
    run: Any
    jumps: dict[int, int] = field(default_factory=dict)   # joblib array data: from -> to


def streams(source, *, policy: Policy | None = None, max_size: int = DEFAULT_MAX_SIZE,
            problems: list | None = None) -> list[Part]:
    """Every pickle stream in ``source`` (a path, bytes or a binary file), in file order
    (a joblib object array's own pickle before the stream that holds it).  Container
    problems (a damaged archive, a decompression bomb) go to ``problems`` as findings."""
    held = _Source(source, None)
    scanner = _Scanner(policy or Policy.default(), None, max_size, details=False,
                       machine_only=True)
    parts: list[Part] = []

    def visit(data, start, member, context, facts):
        parts.append(Part(member, data, start, context, facts.run, dict(facts.jumps)))

    scanner.visitor = visit
    scanner.explore(held.data, "")
    if problems is not None:
        problems.extend(f for f in scanner.findings
                        if f.category in ("archive",) or (f.name is None
                                                          and f.severity == "dangerous"))
    return parts
