"""The pickle format: the opcode table, the decoder and the symbolic machine."""

from .reader import LARGE, Op, Payload, pickle_spans, read_ops

__all__ = ["LARGE", "Op", "Payload", "pickle_spans", "read_ops"]
