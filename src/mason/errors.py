"""mason's exceptions.

    MasonError
    ├── PicklingError        (also pickle.PicklingError)
    └── UnpicklingError      (also pickle.UnpicklingError)
        ├── UnsafeGlobalError     the stream names globals the policy does not allow
        │   └── UnsafeCodeError   ... namely code pickled by value (functions, classes)
        ├── SignatureError        a signed envelope is missing, altered, or the key is wrong
        ├── LimitError            the stream exceeds a resource limit (a bomb, or a knob to raise)
        └── MalformedPickleError  (also ValueError) the bytes are not a valid pickle
            ├── TruncatedPickleError  (also EOFError) the stream ends early
            ├── OpcodeTypeError       (also TypeError) an opcode given the wrong kind of object
            └── OpcodeAttributeError  (also AttributeError) ... one without the method it needs

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


class UnsafeCodeError(UnsafeGlobalError):
    """The pickle carries code (a function or class pickled by value), which only a trusted
    load (``trusted=True``) or a verified signature (``key=``) runs.

    ``kind`` ("function", "class") and ``name`` ("module.qualname") say what it carries,
    when the stream got far enough to say.
    """

    def __init__(self, message: str, refused: list[tuple[str, int | None]] = (), *,
                 kind: str | None = None, name: str | None = None):
        super().__init__(message, refused)
        self.kind = kind
        self.name = name


class SignatureError(UnpicklingError):
    """A signed pickle failed verification: no envelope where one was required, a truncated
    or altered envelope, or a key that is not the one it was signed with.  Raised before a
    single opcode of the pickle runs."""


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


class OpcodeTypeError(MalformedPickleError, TypeError):
    """An opcode applied to the wrong kind of object: REDUCE calling None, or given arguments
    that are not a tuple.  Also a ``TypeError``, as pickle's is."""


class OpcodeAttributeError(MalformedPickleError, AttributeError):
    """An opcode applied to an object without the method it needs: APPEND onto an int,
    ADDITEMS onto a tuple.  Also an ``AttributeError``, as pickle's is."""
