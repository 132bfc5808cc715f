"""The opcode table: every opcode of pickle protocols 0-5, one entry each.

This is the one place in mason that knows the pickle opcodes.  The decoder, the symbolic
machine, the scanner, ``dis``, the load-time limit check and its compiled twin all read it.

The facts (code, argument format, stack effect, protocol, documentation) come from the
standard library's ``pickletools`` table, which CPython keeps in step with its own engine; we
add what our consumers need on top: a *role* that says what the opcode does to the stack and
memo, and flags for the opcodes that import or call.
"""

from __future__ import annotations

import enum
import pickletools
from dataclasses import dataclass

__all__ = ["Arg", "Role", "Opcode", "OPCODES", "BY_CODE", "BY_NAME"]


class Arg(enum.IntEnum):
    """How an opcode's inline argument is laid out in the stream.

    The numeric values are shared with the compiled limit check (``mason/_limits.c``).
    """

    NONE = 0
    FIXED1 = 1       # uint1
    FIXED2 = 2       # uint2
    FIXED4 = 3       # int4 / uint4
    FIXED8 = 4       # uint8 / float8
    LEN1 = 5         # 1-byte length, then that many bytes
    LEN4 = 6         # 4-byte unsigned length, then data
    LEN4_SIGNED = 7  # 4-byte signed length (LONG4, BINSTRING): negative is an error
    LEN8 = 8         # 8-byte length, then data
    LINE = 9         # one newline-terminated line
    LINE2 = 10       # two newline-terminated lines (module, name)


class Role(enum.IntEnum):
    """What an opcode does to the stack and memo.  Shared with ``mason/_limits.c``."""

    PUSH = 0         # pushes one new leaf object
    BUILD = 1        # pops its operands (fixed count, or down to the mark), pushes one object
    EXTEND = 2       # pops operands and adds them to the object left below them
    POP = 3
    DUP = 4
    MARK = 5
    POP_MARK = 6
    PUT = 7          # stores the top of the stack in the memo at the argument's index
    MEMOIZE = 8      # stores the top of the stack at the next memo index
    GET = 9          # pushes the memo entry at the argument's index
    PROTO = 10
    FRAME = 11
    STOP = 12


_ARG_OF_DESCRIPTOR = {
    None: Arg.NONE,
    "uint1": Arg.FIXED1, "uint2": Arg.FIXED2, "int4": Arg.FIXED4, "uint4": Arg.FIXED4,
    "uint8": Arg.FIXED8, "float8": Arg.FIXED8,
    "long1": Arg.LEN1, "string1": Arg.LEN1, "bytes1": Arg.LEN1, "unicodestring1": Arg.LEN1,
    "long4": Arg.LEN4_SIGNED, "string4": Arg.LEN4_SIGNED,
    "bytes4": Arg.LEN4, "unicodestring4": Arg.LEN4,
    "bytes8": Arg.LEN8, "bytearray8": Arg.LEN8, "unicodestring8": Arg.LEN8,
    "decimalnl_short": Arg.LINE, "decimalnl_long": Arg.LINE, "floatnl": Arg.LINE,
    "stringnl": Arg.LINE, "stringnl_noescape": Arg.LINE, "unicodestringnl": Arg.LINE,
    "stringnl_noescape_pair": Arg.LINE2,
}

_ROLE_OF_NAME = {
    "APPEND": Role.EXTEND, "APPENDS": Role.EXTEND, "SETITEM": Role.EXTEND,
    "SETITEMS": Role.EXTEND, "ADDITEMS": Role.EXTEND, "BUILD": Role.EXTEND,
    "POP": Role.POP, "DUP": Role.DUP, "MARK": Role.MARK, "POP_MARK": Role.POP_MARK,
    "PUT": Role.PUT, "BINPUT": Role.PUT, "LONG_BINPUT": Role.PUT, "MEMOIZE": Role.MEMOIZE,
    "GET": Role.GET, "BINGET": Role.GET, "LONG_BINGET": Role.GET,
    "PROTO": Role.PROTO, "FRAME": Role.FRAME, "STOP": Role.STOP,
}

# Opcodes that name a global (and so make the loader import something).
_IMPORTS = {"GLOBAL", "STACK_GLOBAL", "INST", "EXT1", "EXT2", "EXT4"}
# Opcodes that call an object taken from the stream.
_CALLS = {"REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}
# Opcodes that hand data to a user hook instead of building it from the stream.
_PERSISTENT = {"PERSID", "BINPERSID"}


@dataclass(frozen=True, slots=True)
class Opcode:
    name: str
    code: int            # the opcode byte
    arg: Arg             # layout of the inline argument
    arg_name: str | None  # pickletools' name for the argument format, e.g. "uint4"
    role: Role
    pops: int            # objects popped above the mark (or in all, when ``mark`` is false)
    mark: bool           # also pops everything down to, and including, the topmost mark
    pushes: int
    proto: int           # first protocol that has this opcode
    imports: bool        # names a global
    calls: bool          # calls an object from the stream
    persistent: bool     # asks the persistent_load hook for an object
    doc: str
    pushes_str: bool = False  # pushes a str decoded from its argument (the unicode opcodes)

    @property
    def char(self) -> bytes:
        return bytes([self.code])


def _entry(info: pickletools.OpcodeInfo) -> Opcode:
    before = [s.name for s in info.stack_before]
    mark = "mark" in before
    role = _ROLE_OF_NAME.get(info.name)
    if role is None:
        role = Role.BUILD if before else Role.PUSH
    if info.name in ("STACK_GLOBAL", "READONLY_BUFFER", "BINPERSID"):
        role = Role.BUILD
    pops = len([s for s in before if s not in ("mark", "stackslice")])
    if info.name in ("PUT", "BINPUT", "LONG_BINPUT"):
        pops = 0
    arg_name = info.arg.name if info.arg else None
    return Opcode(
        name=info.name, code=ord(info.code), arg=_ARG_OF_DESCRIPTOR[arg_name], arg_name=arg_name,
        role=role, pops=pops, mark=mark, pushes=len(info.stack_after), proto=info.proto,
        imports=info.name in _IMPORTS, calls=info.name in _CALLS,
        persistent=info.name in _PERSISTENT, doc=info.doc,
        pushes_str=[st.name for st in info.stack_after] == ["str"] and not before,
    )


OPCODES: tuple[Opcode, ...] = tuple(_entry(info) for info in pickletools.opcodes)
BY_CODE: dict[int, Opcode] = {op.code: op for op in OPCODES}
BY_NAME: dict[str, Opcode] = {op.name: op for op in OPCODES}
