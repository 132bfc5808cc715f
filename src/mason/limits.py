"""Resource limits, and the check that enforces them before the C engine sees a stream.

CPython's unpickler trusts the sizes a stream declares: a LONG_BINPUT of 0x3FFFFFFF makes it
allocate and clear a 16 GiB memo, and from a file a BINBYTES8 of 2**60 makes it ask the file
for that many bytes.  ``StreamCheck`` walks the opcodes once, without building anything, and
refuses such streams with a ``LimitError`` naming the byte offset, before a single object is
made.  It also finds where the pickle ends (so a file can be read one pickle at a time), its
protocol, and whether it names any global (a stream that names none cannot call anything, so
it may go straight to the C engine without the policy hook).

``mason._limits`` is the compiled twin of this module's ``StreamCheck``, and is used when it
was built; the tests run both on the same inputs and require identical results.  Both read
their knowledge of the opcodes from ``mason.format.opcodes``.

What the check bounds:

* every declared length (bytes, strings, big ints, frames) against the bytes really present;
* memo indexes written by PUT / BINPUT / LONG_BINPUT: an honest pickler numbers its memo
  0, 1, 2, ..., one entry per memoized object, and every object takes at least one byte of
  the stream, so an index may exceed the byte offset of its opcode by at most
  ``memo_slack`` (the engine allocates 16 bytes per index up to the largest, so its memo
  stays within 16 bytes per byte of input, plus the slack);
* nesting depth, as the stream builds it, against ``max_depth``.

Where a stream is malformed in a way the C engine itself rejects (an unknown opcode, a negative
length, an unreadable memo index), the check stops there and lets the engine raise its error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import LimitError
from .format.opcodes import OPCODES, Arg, Role

__all__ = ["Limits", "StreamCheck", "NEED_LINE", "DEFAULT_LIMITS"]

# Returned as ``need`` when the stream stops in the middle of a newline-terminated argument.
NEED_LINE = -1

@dataclass(frozen=True)
class Limits:
    """Resource limits applied to every load.  Raise them for unusual honest data.

    ``max_depth``: deepest nesting of containers and objects the stream may build.  Pickle's
    own dumper stops near the interpreter's recursion limit, far below the default.
    ``memo_slack``: how far a memo index may run beyond the byte offset of the opcode that
    writes it.  Honest pickles number their memo densely, one entry per object, so an index
    never exceeds the offset; the slack leaves room for a memo carried over from an earlier
    pickle (``Pickler.memo``).  The engine's memo then stays within 16 bytes per byte of
    input, plus 16 bytes per unit of slack.
    """

    max_depth: int = 10_000
    memo_slack: int = 1 << 20


DEFAULT_LIMITS = Limits()

_ARG_SIZE = {Arg.FIXED1: 1, Arg.FIXED2: 2, Arg.FIXED4: 4, Arg.FIXED8: 8,
             Arg.LEN1: 1, Arg.LEN4: 4, Arg.LEN4_SIGNED: 4, Arg.LEN8: 8}
_TABLE = [None] * 256
for _op in OPCODES:
    _TABLE[_op.code] = _op


class _Stop(Exception):
    """The stream is malformed here in a way the C engine rejects by itself."""


class StreamCheck:
    """Checks one pickle stream against ``Limits``, fed incrementally.

    ``feed(buf, pos)`` checks complete opcodes of ``buf`` from ``pos`` on and returns
    ``(done, pos, need)``:

    * ``done`` true: the check is over and ``pos`` is where the engine's input must end: just
      past STOP, or just past a malformed opcode that the engine rejects by itself (then
      ``stopped_at`` is its offset).  Ending the input there means the engine never reads an
      opcode the check has not seen, whatever it makes of the malformed one.
    * ``done`` false: ``buf`` ends inside the opcode at ``pos``; ``need`` is how many more bytes
      it needs at least, or ``NEED_LINE`` for the end of a line.  Call again with a longer
      ``buf`` (same start) and the returned ``pos``.

    After ``done``: ``proto`` is the protocol the stream declared (0 if none) and ``imports``
    tells whether it names a global, an extension code or a persistent id.
    """

    def __init__(self, max_depth: int, memo_slack: int):
        self.max_depth = max_depth
        self.memo_slack = memo_slack
        self.proto = 0
        self.imports = False
        self.stopped_at: int | None = None
        self._stack: list[int] = []   # the nesting depth of each object on the stack
        self._marks: list[int] = []   # stack heights at each MARK
        self._memo: dict[int, int] = {}  # memo index -> depth of the object stored there

    def feed(self, buf, pos: int = 0) -> tuple[bool, int, int]:
        view = memoryview(buf).cast("B") if not isinstance(buf, bytes) else buf
        end = len(view)
        stack, marks, memo = self._stack, self._marks, self._memo
        while True:
            if pos >= end:
                return False, pos, 1
            op = _TABLE[view[pos]]
            start = pos
            if op is None:
                self.stopped_at = start
                return True, pos + 1, 0
            pos += 1
            arg = op.arg
            value = 0
            if arg is Arg.NONE:
                pass
            elif arg <= Arg.FIXED8:
                size = _ARG_SIZE[arg]
                if end - pos < size:
                    return False, start, size - (end - pos)
                value = int.from_bytes(view[pos:pos + size], "little")
                pos += size
            elif arg <= Arg.LEN8:
                size = _ARG_SIZE[arg]
                if end - pos < size:
                    return False, start, size - (end - pos)
                length = int.from_bytes(view[pos:pos + size], "little",
                                        signed=arg is Arg.LEN4_SIGNED)
                pos += size
                if length < 0:
                    self.stopped_at = start
                    return True, pos, 0
                if end - pos < length:
                    return False, start, min(length - (end - pos), _INT64_MAX)
                pos += length
            else:
                lines = 2 if arg is Arg.LINE2 else 1
                line_start = pos
                for _ in range(lines):
                    nl = _find_newline(view, pos, end)
                    if nl < 0:
                        return False, start, NEED_LINE
                    pos = nl + 1
                if op.role is Role.PUT or op.role is Role.GET:
                    value = _parse_index(bytes(view[line_start:pos]))
                    if value < 0:
                        self.stopped_at = start
                        return True, pos, 0
            try:
                self._apply(op, value, start, stack, marks, memo)
            except _Stop:
                self.stopped_at = start
                return True, pos, 0
            if op.role is Role.STOP:
                return True, pos, 0

    def _apply(self, op, value, offset, stack, marks, memo):
        # Mirrors the C engine's stack discipline closely enough that every stream it accepts
        # is tracked exactly; where the engine would fail (underflow, missing mark) we stop.
        role = op.role
        if op.imports or op.persistent:
            self.imports = True
        fence = marks[-1] if marks else 0
        if role is Role.PUSH:
            stack.append(1)
        elif role is Role.BUILD or role is Role.EXTEND:
            if op.mark:
                if not marks:
                    raise _Stop
                height = marks.pop()
                operands = stack[height:]
                del stack[height:]
                if role is Role.EXTEND:
                    # APPENDS, SETITEMS, ADDITEMS: the receiver sits just below the mark
                    if height <= (marks[-1] if marks else 0):
                        raise _Stop
                    target = stack.pop()
                else:
                    if len(operands) < op.pops:
                        raise _Stop
                    target = 0
            else:
                if len(stack) - op.pops < fence:
                    raise _Stop
                operands = stack[len(stack) - op.pops:]
                del stack[len(stack) - op.pops:]
                if role is Role.EXTEND:
                    # APPEND, SETITEM, BUILD: the first operand receives the others
                    target, operands = operands[0], operands[1:]
                else:
                    target = 0
            depth = max(target, 1 + max(operands, default=0))
            if depth > self.max_depth:
                raise LimitError(
                    f"the pickle nests deeper than max_depth={self.max_depth} "
                    f"({op.name} at byte {offset}); if this data is honest, load it with "
                    f"limits=mason.Limits(max_depth=...)", offset)
            stack.append(depth)
        elif role is Role.POP:
            if marks and marks[-1] == len(stack):
                marks.pop()  # POP right after MARK discards the mark, as the engine does
            elif len(stack) <= fence:
                raise _Stop
            else:
                stack.pop()
        elif role is Role.DUP or role is Role.PUT or role is Role.MEMOIZE:
            if len(stack) <= fence:
                raise _Stop
            if role is Role.DUP:
                stack.append(stack[-1])
            elif role is Role.MEMOIZE:
                memo[len(memo)] = stack[-1]
            else:
                if value > self.memo_slack + offset:
                    raise _memo_error(value, offset, op.name, self.memo_slack)
                memo[value] = stack[-1]
        elif role is Role.MARK:
            marks.append(len(stack))
        elif role is Role.POP_MARK:
            if not marks:
                raise _Stop
            del stack[marks.pop():]
        elif role is Role.GET:
            # An index we have not seen may come from an earlier load of the same Unpickler
            # (whose memo persists) or from a memo the caller set: count it as a leaf.
            stack.append(memo.get(value, 1))
        elif role is Role.PROTO:
            self.proto = value
        elif role is Role.STOP:
            if len(stack) <= fence:
                raise _Stop
        # FRAME only groups opcodes: it changes nothing the check tracks.


_INDEX_LINE = re.compile(rb"[ \t\n\r\f\v]*([+-]?)(\d+(?:_\d+)*)[ \t\n\r\f\v]*")
_INT64_MAX = (1 << 63) - 1


def _parse_index(line: bytes) -> int:
    """A PUT / GET index as the engine reads it (int() syntax, up to the first NUL byte, as
    the engine parses a C string), saturated at 2**63 - 1; -1 if malformed or negative."""
    match = _INDEX_LINE.fullmatch(line.split(b"\0", 1)[0])
    if match is None:
        return -1
    digits = match.group(2).replace(b"_", b"").lstrip(b"0") or b"0"
    value = _INT64_MAX if len(digits) > 19 else min(int(digits), _INT64_MAX)
    if match.group(1) == b"-" and value != 0:
        return -1
    return value


def _find_newline(view, pos: int, end: int) -> int:
    if isinstance(view, bytes):
        return view.find(b"\n", pos, end)
    for i in range(pos, end):
        if view[i] == 10:
            return i
    return -1


def check(data, max_depth: int, memo_slack: int) -> int | None:
    """The fast check of a pickle held in memory; ``None`` if the data ends inside it.

    A stream of at most ``max_depth`` bytes cannot nest deeper than that, so for such a
    stream a light pass suffices: it checks declared lengths against the data and memo
    writes against their bound, skips everything else, and notes the protocol, globals and
    STOP.  Before it, a byte filter clears the short streams that end with a STOP byte and
    hold no byte that could name a global, write a wide memo index or declare a wide length
    (then ``end`` is the data's length).
    Longer streams get the full ``StreamCheck`` pass.

    Returns ``end << 10 | proto << 2 | imports << 1 | stopped``: ``end`` is where the engine's
    input must end, ``stopped`` that the pass stopped at a malformed opcode.
    """
    view = data if isinstance(data, bytes) else memoryview(data).cast("B")
    end = len(view)
    if end > max_depth:
        full = StreamCheck(max_depth, memo_slack)
        done, pos, _ = full.feed(data, 0)
        if not done:
            return None
        return _pack(pos, full.proto, full.imports, full.stopped_at is not None)
    if end and view[end - 1] == _STOP \
            and _INTERESTING.search(view if isinstance(view, bytes) else bytes(view)) is None:
        # No byte anywhere that could, as an opcode, name a global or write a wide memo
        # index: nothing to refuse, and a stream this short cannot nest too deep.
        return _pack(end, 0, False, False)
    pos = proto = 0
    imports = False
    names: list | None = None
    last_len1 = prev_len1 = -1   # where the last two 1-byte-length ops start
    while True:
        if pos >= end:
            return None
        op = _TABLE[view[pos]]
        start = pos
        pos += 1
        if op is None:
            return _with_names(_pack(pos, proto, imports, True), names)
        if op.imports or op.persistent:
            imports = True
            if names is None:
                names = []
            if names is not _UNREADABLE:
                pair = _light_name(view, end, start, last_len1, prev_len1)
                if pair is None:
                    names = _UNREADABLE
                else:
                    names.append(pair)
        arg, role = op.arg, op.role
        if role is Role.STOP:
            return _with_names(_pack(pos, proto, imports, False), names)
        if arg is Arg.LEN1:
            prev_len1, last_len1 = last_len1, start
        if arg is Arg.NONE:
            continue
        if arg <= Arg.FIXED8:
            size = _ARG_SIZE[arg]
            if end - pos < size:
                return None
            if role is Role.PUT:
                value = int.from_bytes(view[pos:pos + size], "little")
                if value > memo_slack + start:
                    raise _memo_error(value, start, op.name, memo_slack)
            elif role is Role.PROTO:
                proto = view[pos]
            pos += size
        elif arg <= Arg.LEN8:
            size = _ARG_SIZE[arg]
            if end - pos < size:
                return None
            length = int.from_bytes(view[pos:pos + size], "little",
                                    signed=arg is Arg.LEN4_SIGNED)
            pos += size
            if length < 0:
                return _pack(pos, proto, imports, True)
            if length > end - pos:
                return None
            pos += length
        else:
            line_start = pos
            for _ in range(2 if arg is Arg.LINE2 else 1):
                nl = _find_newline(view, pos, end)
                if nl < 0:
                    return None
                pos = nl + 1
            if role is Role.PUT or role is Role.GET:
                value = _parse_index(bytes(view[line_start:pos]))
                if value < 0:
                    return _pack(pos, proto, imports, True)
                if role is Role.PUT and value > memo_slack + start:
                    raise _memo_error(value, start, op.name, memo_slack)


_INTERESTING = re.compile(b"[" + b"".join(
    re.escape(bytes([op.code])) for op in OPCODES
    if op.imports or op.persistent or (op.role is Role.PUT and op.arg is not Arg.FIXED1)
    or op.arg in (Arg.LEN4, Arg.LEN4_SIGNED, Arg.LEN8)) + b"]")
_UNREADABLE = object()
_MEMOIZE = next(op.code for op in OPCODES if op.role is Role.MEMOIZE)
_STOP = next(op.code for op in OPCODES if op.role is Role.STOP)


def _with_names(packed: int, names):
    """A stream that names globals gets ``(packed, names)``, ``names`` a tuple of
    ``(module, name)``, or None when one cannot be read off the stream; see check()."""
    if names is None:
        return packed
    return packed, (None if names is _UNREADABLE else tuple(names))


def _light_name(view, end: int, start: int, last_len1: int, prev_len1: int):
    """The (module, name) of the global opcode at ``start``, for the light pass, or None.

    GLOBAL carries them inline; a pickler writes STACK_GLOBAL right after two 1-byte-length
    str literals, each maybe followed by MEMOIZE, and that exact shape is all we accept."""
    op = _TABLE[view[start]]
    try:
        if op.arg is Arg.LINE2 and op.role is Role.PUSH:   # GLOBAL
            nl1 = _find_newline(view, start + 1, end)
            nl2 = _find_newline(view, nl1 + 1, end) if nl1 >= 0 else -1
            if nl2 < 0:
                return None
            return (bytes(view[start + 1:nl1]).decode("utf-8"),
                    bytes(view[nl1 + 1:nl2]).decode("utf-8"))
        if op.arg is Arg.NONE and op.pops == 2 and prev_len1 >= 0:   # STACK_GLOBAL
            a, b = prev_len1, last_len1
            ea, eb = a + 2 + view[a + 1], b + 2 + view[b + 1]
            if _TABLE[view[a]].pushes_str and _TABLE[view[b]].pushes_str \
                    and (b == ea or (b == ea + 1 and view[ea] == _MEMOIZE)) \
                    and (start == eb or (start == eb + 1 and view[eb] == _MEMOIZE)):
                return (bytes(view[a + 2:ea]).decode("utf-8", "surrogatepass"),
                        bytes(view[b + 2:eb]).decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError:
        pass
    return None


def _pack(end: int, proto: int, imports: bool, stopped: bool) -> int:
    return (end << 10) | ((proto & 0xFF) << 2) | (int(imports) << 1) | int(stopped)


def _memo_error(value: int, offset: int, name: str, slack: int) -> LimitError:
    return LimitError(
        f"memo index {value} at byte {offset} ({name}) exceeds what a stream this long can "
        f"hold (its offset plus memo_slack={slack}): an honest pickle numbers its memo 0, 1, "
        f"2, ..., so this stream is corrupt or hostile (raise limits=mason.Limits(memo_slack="
        f"...) only if you are sure)", offset)


def global_names(data) -> list[tuple[str, str]] | None:
    """Every global that a pickle names, as ``(module, name)`` in stream order, when each
    can be read off the stream alone; ``None`` when one cannot.

    GLOBAL carries its names inline; STACK_GLOBAL takes them from the stack, and a pickler
    pushes them as two string literals right before it (memo writes may sit between).
    Any other source (memo fetches, names built by calls, INST, extension codes, persistent
    ids) gives ``None``.  A safe load whose names are all known and allowed, with no
    checked stand-in among them, can go straight to the C engine: the engine imports
    exactly these names, which the policy has already resolved to the same objects.
    """
    view = data if isinstance(data, bytes) else memoryview(data).cast("B")
    end = len(view)
    pos = 0
    last = previous = None   # the text of the last two pushes, if they were str literals
    names = []
    while True:
        if pos >= end:
            return None
        op = _TABLE[view[pos]]
        if op is None:
            return None
        pos += 1
        arg, role = op.arg, op.role
        start, length = pos, 0
        if arg is Arg.NONE:
            pass
        elif arg <= Arg.FIXED8:
            pos += _ARG_SIZE[arg]
        elif arg <= Arg.LEN8:
            size = _ARG_SIZE[arg]
            if end - pos < size:
                return None
            length = int.from_bytes(view[pos:pos + size], "little")
            pos += size
            if length > end - pos:
                return None
            start = pos
            pos += length
        else:
            for _ in range(2 if arg is Arg.LINE2 else 1):
                nl = _find_newline(view, pos, end)
                if nl < 0:
                    return None
                pos = nl + 1
            length = pos - start
        if pos > end:
            return None
        if role is Role.STOP:
            return names
        if role in (Role.PUT, Role.MEMOIZE, Role.FRAME, Role.PROTO):
            continue
        if op.imports or op.persistent:
            try:
                if arg is Arg.LINE2 and role is Role.PUSH:   # GLOBAL
                    module, name = bytes(view[start:pos - 1]).split(b"\n", 1)
                    names.append((module.decode("utf-8"), name.decode("utf-8")))
                elif arg is Arg.NONE and op.pops == 2 and last is not None \
                        and previous is not None:           # STACK_GLOBAL
                    names.append((previous.decode("utf-8", "surrogatepass"),
                                  last.decode("utf-8", "surrogatepass")))
                else:
                    return None
            except UnicodeDecodeError:
                return None
            last = previous = None
            continue
        previous = last
        if role is Role.PUSH and op.pushes_str and Arg.LEN1 <= arg <= Arg.LEN8:
            last = bytes(view[start:start + length])
        else:
            last = previous = None
