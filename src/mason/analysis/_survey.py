"""The survey: one quick pass over a pickle that collects what a scan needs, or gives up.

``survey(data, start, watch)`` walks the opcodes of the pickle at ``start`` once, with a small
model of the stack and memo that knows only a few kinds of value: str, int, None, True, False,
a global, a tuple of those, and "something else".  That is enough to read off

* every global the stream names (GLOBAL, INST, and STACK_GLOBAL when its two operands are
  strings the stream spelled out, directly or through the memo),
* every call whose callee is one of the ``watch`` globals (``(module, name)`` as the stream
  spells them), with its arguments where they are such simple values,
* every BINPERSID's persistent id, and how many out-of-band buffers the stream takes,

without building an object or running the symbolic machine.  Whenever the stream does
something the model does not cover exactly -- a malformed or truncated opcode, a STACK_GLOBAL
whose names are computed, an extension code, a PERSID, an argument of protocol 0's text forms,
a stack underflow -- the survey stops and says so, and the caller runs the symbolic machine
(``mason.format.machine.simulate``) on the stream instead.  The contract, tested on every
stream of the test corpus and on random mutations of them:

    when ``survey`` completes, ``simulate`` completes without error on the same stream, and
    finds the same globals (names, offsets, opcodes), the same calls of watched globals
    (arguments that are not simple values come back as ``OPAQUE``), the same persistent ids
    and the same number of buffers.

``mason._scan.survey`` is the compiled twin of this function and returns identical results;
this one is the reference, and the fallback when the compiled module was not built.  Both take
what they know about opcodes from ``mason.format.opcodes``.
"""

from __future__ import annotations

import pickle
import struct

from ..format.opcodes import OPCODES, Arg, Role
from ..format.reader import LARGE, Payload

__all__ = ["survey", "OPAQUE", "GlobalRef", "PidRef", "EmptyCall", "COMPLETE", "FALLBACK", "MAX_VALUE_DEPTH",
           "VALUE_BUDGET", "MEMO_SLACK"]

COMPLETE = 0
FALLBACK = 1

# A memo index further than this beyond the opcode's offset (relative to the pickle's start)
# is left to the machine: honest pickles number their memo densely (see mason.limits).
MEMO_SLACK = 1 << 20
# Values handed back (call arguments, persistent ids) are built from the model; a tuple nested
# deeper than this, or more than VALUE_BUDGET values built in one survey, is left to the machine.
MAX_VALUE_DEPTH = 100
VALUE_BUDGET = 1 << 20


class _Opaque:
    """A value the survey does not model (a list, a dict, a float, bytes, an object...)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OPAQUE"

    def __reduce__(self):
        return "OPAQUE"


OPAQUE = _Opaque()


class PidRef(int):
    """In a value handed back by the survey: the object the ``index``-th persistent id of
    the stream stands for (what ``persistent_load`` returns)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"PidRef({int(self)})"

    def __eq__(self, other):
        return type(other) is PidRef and int(self) == int(other)

    def __ne__(self, other):
        return not self == other

    __hash__ = int.__hash__


class EmptyCall(tuple):
    """In a value handed back by the survey: the result of calling the global at
    ``global_index`` with no arguments (REDUCE or NEWOBJ of an empty tuple), and whether
    the stream had applied steps to it (BUILD, APPEND(S), SETITEM(S), ADDITEMS) by then."""

    __slots__ = ()

    def __new__(cls, global_index: int, modified: bool):
        return tuple.__new__(cls, (global_index, bool(modified)))

    @property
    def global_index(self) -> int:
        return self[0]

    @property
    def modified(self) -> bool:
        return self[1]

    def __repr__(self) -> str:
        return f"EmptyCall({self[0]}, {self[1]})"

    def __eq__(self, other):
        return type(other) is EmptyCall and tuple(self) == tuple(other)

    def __ne__(self, other):
        return not self == other

    __hash__ = tuple.__hash__


class GlobalRef(int):
    """In a value handed back by the survey: the global at this index of its globals list."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"GlobalRef({int(self)})"

    def __eq__(self, other):
        return type(other) is GlobalRef and int(self) == int(other)

    def __ne__(self, other):
        return not self == other

    __hash__ = int.__hash__


# --- what each opcode does in the model -----------------------------------------------------
#
# Actions, shared with mason/_scan.c (which reads this table at import: keep the numbers).

(A_FALLBACK, A_PUSH_OTHER, A_PUSH_STR, A_PUSH_INT, A_PUSH_LONG1, A_PUSH_NONE, A_PUSH_TRUE,
 A_PUSH_FALSE, A_PUSH_EMPTY_TUPLE, A_GLOBAL, A_NEXT_BUFFER, A_TUPLE, A_STACK_GLOBAL, A_CALL,
 A_OBJ, A_INST, A_DICT, A_BUILD_OTHER, A_BINPERSID, A_EXTEND, A_SETITEMS, A_POP, A_DUP, A_MARK,
 A_POP_MARK, A_PUT, A_MEMOIZE, A_GET, A_PROTO, A_FRAME, A_STOP) = range(31)


def _action(op) -> int:
    name, role, arg = op.name, op.role, op.arg
    if role is Role.PUSH:
        if name in ("PERSID", "EXT1", "EXT2", "EXT4"):
            return A_FALLBACK
        if name == "GLOBAL":
            return A_GLOBAL
        if arg in (Arg.LINE, Arg.LINE2):
            # Protocol 0's text arguments (INT, LONG, FLOAT, STRING, UNICODE): the decoder
            # parses them with int(), float() and escape codecs; the machine says whether
            # they parse.
            return A_FALLBACK
        if op.pushes_str and Arg.LEN1 <= arg <= Arg.LEN8:
            return A_PUSH_STR
        if name in ("BININT", "BININT1", "BININT2"):
            return A_PUSH_INT
        if name == "LONG1":
            return A_PUSH_LONG1
        if name == "NONE":
            return A_PUSH_NONE
        if name == "NEWTRUE":
            return A_PUSH_TRUE
        if name == "NEWFALSE":
            return A_PUSH_FALSE
        if name == "EMPTY_TUPLE":
            return A_PUSH_EMPTY_TUPLE
        if name == "NEXT_BUFFER":
            return A_NEXT_BUFFER
        return A_PUSH_OTHER
    if role is Role.BUILD:
        if name.startswith("TUPLE"):
            return A_TUPLE
        return {"STACK_GLOBAL": A_STACK_GLOBAL, "REDUCE": A_CALL, "NEWOBJ": A_CALL,
                "NEWOBJ_EX": A_CALL, "OBJ": A_OBJ, "INST": A_INST, "DICT": A_DICT,
                "BINPERSID": A_BINPERSID}.get(name, A_BUILD_OTHER)
    if role is Role.EXTEND:
        return A_SETITEMS if name in ("SETITEM", "SETITEMS") else A_EXTEND
    if role in (Role.PUT, Role.GET) and arg in (Arg.LINE, Arg.LINE2):
        return A_PUT if role is Role.PUT else A_GET   # the text index is parsed below
    return {Role.POP: A_POP, Role.DUP: A_DUP, Role.MARK: A_MARK, Role.POP_MARK: A_POP_MARK,
            Role.PUT: A_PUT, Role.MEMOIZE: A_MEMOIZE, Role.GET: A_GET, Role.PROTO: A_PROTO,
            Role.FRAME: A_FRAME, Role.STOP: A_STOP}[role]


ACTIONS = [A_FALLBACK] * 256
for _op in OPCODES:
    ACTIONS[_op.code] = _action(_op)
del _op

_TABLE = [None] * 256
for _op in OPCODES:
    _TABLE[_op.code] = _op
del _op

_SIZE = {Arg.FIXED1: 1, Arg.FIXED2: 2, Arg.FIXED4: 4, Arg.FIXED8: 8,
         Arg.LEN1: 1, Arg.LEN4: 4, Arg.LEN4_SIGNED: 4, Arg.LEN8: 8}
_PAYLOAD_KIND = {Arg.LEN1: "unicodestring1", Arg.LEN4: "unicodestring4",
                 Arg.LEN8: "unicodestring8"}
_SIGNED_INT = {"BININT"}

# Value kinds of the model.  A stack entry is a tuple (kind, a, b):
#   STR: a = offset of the text, b = its length, plus the payload kind as a 4th item
#   INT: a = the value; GLOB: a = index into the globals list; TUP: a = tuple of entries
#   PID: a = index into the persistent ids; CALL0: a = index into the empty calls made,
#   each [global index, modified] (shared by every copy of the entry, as the object is)
OTHER, STR, INT, NONE, TRUE, FALSE, GLOB, TUP, PID, CALL0 = range(10)
_OTHER = (OTHER, 0, 0)
_NONE, _TRUE, _FALSE, _EMPTY = (NONE, 0, 0), (TRUE, 0, 0), (FALSE, 0, 0), (TUP, (), 0)


class _GiveUp(Exception):
    pass


def _utf8(raw) -> str:
    try:
        return str(raw, "utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise _GiveUp from None


def survey(data, start: int = 0, watch=frozenset(), keep_tuples: bool = False) -> tuple:
    """Survey the pickle at ``start``; see the module docstring.

    Tuples are modelled (their items kept, for the values handed back) only from the first
    watched global on, or throughout with ``keep_tuples``: plain data builds millions of
    tuples that no watched call ever takes, and keeping them all would cost more memory
    than the stream itself.  A tuple built before that point is "something else".

    Returns ``(status, end, protocol, globals, calls, persistent, buffers)``:

    * ``status``: ``COMPLETE``, or ``FALLBACK`` when the stream needs the symbolic machine
      (then ``end`` is the offset of the opcode where the survey stopped, and the lists hold
      what was found before it);
    * ``end``: the offset just past STOP;
    * ``protocol``: the last PROTO's argument (0 if none);
    * ``globals``: ``(module, name, offset, opcode)`` for every global named, in order;
    * ``calls``: ``(global_index, offset, opcode, args, kwargs)`` for every call of a watched
      global (REDUCE, NEWOBJ, NEWOBJ_EX, OBJ, INST); ``kwargs`` is None but for NEWOBJ_EX;
    * ``persistent``: ``(offset, opcode, pid)`` for every BINPERSID;
    * ``buffers``: how many NEXT_BUFFER opcodes there are.

    Values (``args``, ``kwargs``, ``pid``) are str (or ``Payload`` past 4 KiB, as the decoder
    gives them), int, bool, None, ``GlobalRef``, tuples of those, or ``OPAQUE``.
    """
    view = data if isinstance(data, bytes) else memoryview(data).cast("B")
    n = len(view)
    if start < 0 or start > n:
        raise ValueError("start lies outside the data")
    globals_, calls, persistent = [], [], []
    stack: list = []
    marks: list[int] = []
    memo: dict[int, tuple] = {}
    state = {"proto": 0, "buffers": 0, "budget": VALUE_BUDGET, "tuples": bool(keep_tuples)}
    empty_calls: list[list] = []
    pos = start

    def value(entry, depth: int = 0):
        state["budget"] -= 1
        if state["budget"] < 0 or depth > MAX_VALUE_DEPTH:
            raise _GiveUp
        kind = entry[0]
        if kind == STR:
            offset, length = entry[1], entry[2]
            if length > LARGE:
                return Payload(offset, length, entry[3])
            return _utf8(bytes(view[offset:offset + length]))
        if kind == INT:
            return entry[1]
        if kind == NONE:
            return None
        if kind == TRUE:
            return True
        if kind == FALSE:
            return False
        if kind == GLOB:
            return GlobalRef(entry[1])
        if kind == TUP:
            return tuple(value(item, depth + 1) for item in entry[1])
        if kind == PID:
            return PidRef(entry[1])
        if kind == CALL0:
            made = empty_calls[entry[1]]
            return EmptyCall(made[0], made[1])
        return OPAQUE

    def fence() -> int:
        return marks[-1] if marks else 0

    def top():
        if len(stack) <= fence():
            raise _GiveUp
        return stack[-1]

    def pop_mark() -> list:
        if not marks:
            raise _GiveUp
        height = marks.pop()
        items = stack[height:]
        del stack[height:]
        return items

    def pop_n(count: int) -> list:
        if len(stack) - count < fence():
            raise _GiveUp
        items = stack[len(stack) - count:]
        del stack[len(stack) - count:]
        return items

    def operands(op) -> list:
        if op.mark:
            items = pop_mark()
            if len(items) < op.pops:
                raise _GiveUp
            return items
        return pop_n(op.pops)

    def record_call(func, args, kwargs, offset, op):
        if func[0] == GLOB:
            module, name = globals_[func[1]][0], globals_[func[1]][1]
            if (module, name) in watch:
                calls.append((func[1], offset, op.name, value(args),
                              None if kwargs is None else value(kwargs)))

    def add_global(module_raw, name_raw, offset, op, strict: bool):
        if strict:
            try:
                module, name = str(module_raw, "utf-8"), str(name_raw, "utf-8")
            except UnicodeDecodeError:
                raise _GiveUp from None
        else:
            module, name = _utf8(module_raw), _utf8(name_raw)
        globals_.append((module, name, offset, op.name))
        if (module, name) in watch:
            state["tuples"] = True
        return (GLOB, len(globals_) - 1, 0)

    def memo_index(offset: int, index: int) -> int:
        if index > offset - start + MEMO_SLACK:
            raise _GiveUp
        return index

    offset = pos
    try:
        while True:
            offset = pos
            if pos >= n:
                raise _GiveUp
            code = view[pos]
            op = _TABLE[code]
            action = ACTIONS[code]
            if op is None or action == A_FALLBACK:
                raise _GiveUp
            pos += 1
            # The argument.
            arg = op.arg
            text_at = text_len = 0
            number = 0
            lines = None
            if arg is Arg.NONE:
                pass
            elif arg <= Arg.FIXED8:
                size = _SIZE[arg]
                if n - pos < size:
                    raise _GiveUp
                raw = bytes(view[pos:pos + size])
                if op.name in _SIGNED_INT:
                    number = struct.unpack("<i", raw)[0]
                else:
                    number = int.from_bytes(raw, "little")
                pos += size
                if action == A_FRAME and number > n - pos:
                    raise _GiveUp
            elif arg <= Arg.LEN8:
                size = _SIZE[arg]
                if n - pos < size:
                    raise _GiveUp
                length = int.from_bytes(view[pos:pos + size], "little",
                                        signed=arg is Arg.LEN4_SIGNED)
                pos += size
                if length < 0 or length > n - pos:
                    raise _GiveUp
                text_at, text_len = pos, length
                pos += length
                if action == A_PUSH_STR and length <= LARGE:
                    _utf8(bytes(view[text_at:text_at + length]))  # the decoder checks these
            else:
                lines = []
                for _ in range(2 if arg is Arg.LINE2 else 1):
                    nl = _find(view, pos, n)
                    if nl < 0:
                        raise _GiveUp
                    lines.append(bytes(view[pos:nl]))
                    pos = nl + 1
                if action in (A_PUT, A_GET):
                    line = lines[0]
                    if not line or not line.isdigit() or not line.isascii() or len(line) > 18:
                        raise _GiveUp
                    number = int(line)

            # The stack effect.
            if action == A_PUSH_OTHER:
                stack.append(_OTHER)
            elif action == A_PUSH_STR:
                stack.append((STR, text_at, text_len, _PAYLOAD_KIND[arg]))
            elif action == A_PUSH_INT:
                stack.append((INT, number, 0))
            elif action == A_PUSH_LONG1:
                if text_len <= 8:
                    stack.append((INT, int.from_bytes(view[text_at:text_at + text_len],
                                                      "little", signed=True), 0))
                else:
                    stack.append(_OTHER)
            elif action == A_PUSH_NONE:
                stack.append(_NONE)
            elif action == A_PUSH_TRUE:
                stack.append(_TRUE)
            elif action == A_PUSH_FALSE:
                stack.append(_FALSE)
            elif action == A_PUSH_EMPTY_TUPLE:
                stack.append(_EMPTY)
            elif action == A_GLOBAL:
                stack.append(add_global(lines[0], lines[1], offset, op, True))
            elif action == A_NEXT_BUFFER:
                state["buffers"] += 1
                stack.append(_OTHER)
            elif action == A_TUPLE:
                items = operands(op)
                stack.append((TUP, tuple(items), 0) if state["tuples"] else _OTHER)
            elif action == A_STACK_GLOBAL:
                module, name = operands(op)
                if module[0] != STR or name[0] != STR:
                    raise _GiveUp
                stack.append(add_global(bytes(view[module[1]:module[1] + module[2]]),
                                        bytes(view[name[1]:name[1] + name[2]]),
                                        offset, op, False))
            elif action == A_CALL:
                items = operands(op)
                if op.pops == 3:
                    record_call(items[0], items[1], items[2], offset, op)
                    stack.append(_OTHER)
                else:
                    record_call(items[0], items[1], None, offset, op)
                    func, args = items
                    if func[0] == GLOB and args[0] == TUP and not args[1]:
                        empty_calls.append([func[1], False])
                        stack.append((CALL0, len(empty_calls) - 1, 0))
                    else:
                        stack.append(_OTHER)
            elif action == A_OBJ:
                items = operands(op)
                record_call(items[0], (TUP, tuple(items[1:]), 0), None, offset, op)
                stack.append(_OTHER)
            elif action == A_INST:
                items = operands(op)
                func = add_global(lines[0], lines[1], offset, op, True)
                record_call(func, (TUP, tuple(items), 0), None, offset, op)
                stack.append(_OTHER)
            elif action == A_DICT:
                if len(operands(op)) % 2:
                    raise _GiveUp
                stack.append(_OTHER)
            elif action == A_BUILD_OTHER:
                operands(op)
                stack.append(_OTHER)
            elif action == A_BINPERSID:
                (pid,) = operands(op)
                persistent.append((offset, op.name, value(pid)))
                stack.append((PID, len(persistent) - 1, 0))
            elif action in (A_EXTEND, A_SETITEMS):
                items = pop_mark() if op.mark else pop_n(op.pops - 1)
                target = top()
                if action == A_SETITEMS and len(items) % 2:
                    raise _GiveUp
                # As the machine records it: a step on an object it did not make, when it
                # has items (BUILD always has its state).
                if target[0] == CALL0 and (items or op.name == "BUILD"):
                    empty_calls[target[1]][1] = True
            elif action == A_POP:
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    top()
                    stack.pop()
            elif action == A_DUP:
                stack.append(top())
            elif action == A_MARK:
                marks.append(len(stack))
            elif action == A_POP_MARK:
                pop_mark()
            elif action == A_PUT:
                memo[memo_index(offset, number)] = top()
            elif action == A_MEMOIZE:
                memo[memo_index(offset, len(memo))] = top()
            elif action == A_GET:
                entry = memo.get(memo_index(offset, number))
                if entry is None:
                    raise _GiveUp
                stack.append(entry)
            elif action == A_PROTO:
                if number > pickle.HIGHEST_PROTOCOL:
                    raise _GiveUp
                state["proto"] = number
            elif action == A_FRAME:
                pass
            elif action == A_STOP:
                top()
                return (COMPLETE, pos, state["proto"], globals_, calls, persistent,
                        state["buffers"])
    except _GiveUp:
        pass
    return (FALLBACK, offset, state["proto"], globals_, calls, persistent, state["buffers"])


def _find(view, pos: int, end: int) -> int:
    if isinstance(view, bytes):
        return view.find(b"\n", pos, end)
    for i in range(pos, end):
        if view[i] == 10:
            return i
    return -1


HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
