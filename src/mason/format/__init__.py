"""The pickle format: the opcode table, the decoder and the symbolic machine.

``opcodes`` is the table; ``reader.read_ops`` turns bytes into opcodes; ``machine.simulate``
runs them on placeholders, importing and calling nothing, and ``machine.find_globals`` lists
every global a stream names.
"""

from .machine import (
    Buffer, Build, Call, Extend, Extension, Global, Node, PersistentRef, Run, Unhashable,
    UnresolvedGlobal, find_globals, simulate,
)
from .reader import LARGE, Op, Payload, pickle_spans, read_ops

__all__ = [
    "LARGE", "Buffer", "Build", "Call", "Extend", "Extension", "Global", "Node", "Op",
    "Payload", "PersistentRef", "Run", "Unhashable", "UnresolvedGlobal", "find_globals",
    "pickle_spans", "read_ops", "simulate",
]
