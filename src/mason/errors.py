"""mason's exceptions.

    MasonError
    ├── PicklingError        (also pickle.PicklingError)
    └── UnpicklingError      (also pickle.UnpicklingError)
        ├── UnsafeGlobalError     the stream names globals the policy does not allow
        ├── LimitError            the stream exceeds a resource limit (a bomb, or a knob to raise)
        └── MalformedPickleError  (also ValueError) the bytes are not a valid pickle
            └── TruncatedPickleError  (also EOFError) the stream ends early

Code that catches pickle's exceptions keeps working: every load error is a
``pickle.UnpicklingError`` and every dump error a ``pickle.PicklingError``.
"""

from __future__ import annotations

import pickle

PickleError = pickle.PickleError


class MasonError(Exception):
    """Base of every exception that mason raises."""


class PicklingError(MasonError, pickle.PicklingError):
    """An object could not be pickled."""


class UnpicklingError(MasonError, pickle.UnpicklingError):
    """A pickle could not be loaded."""


class UnsafeGlobalError(UnpicklingError):
    """The pickle names globals that the active policy does not allow.

    ``refused`` lists every refused global of the stream as ``(dotted_name, offset)`` pairs,
    ``offset`` being the byte offset of the opcode that names it (``None`` when unknown).
    """

    def __init__(self, message: str, refused: list[tuple[str, int | None]] = ()):
        super().__init__(message)
        self.refused = list(refused)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.refused]


class LimitError(UnpicklingError):
    """The pickle exceeds a resource limit: declared sizes, memo indexes or nesting depth."""

    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message)
        self.offset = offset


class MalformedPickleError(UnpicklingError, ValueError):
    """The bytes are not a valid pickle (bad opcode, bad argument, broken stack).

    Also a ``ValueError``: pickle raises ValueError for a bad literal (``I12JUNK``), a badly
    escaped string, a negative memo index or an unknown protocol, and code that catches it
    there must keep catching it when mason reports the same stream.
    """

    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message)
        self.offset = offset


class TruncatedPickleError(MalformedPickleError, EOFError):
    """The stream ends before the pickle does.  Also an ``EOFError``, as pickle's is."""
