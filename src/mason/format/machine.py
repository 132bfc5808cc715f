"""A symbolic pickle machine: it runs a stream on placeholders, importing and calling nothing.

``simulate(data)`` executes a pickle the way the unpickler would, opcode by opcode, with the
same stack, marks and memo, but every step that would import or call something builds a
placeholder node instead:

* GLOBAL, STACK_GLOBAL, INST and registered EXT codes give ``Global(module, name, offset)``;
* REDUCE, NEWOBJ, NEWOBJ_EX, OBJ and INST give ``Call(func, args, kwargs, offset, kind)``;
* BUILD, and APPEND(S) / SETITEM(S) / ADDITEMS on anything but a list / dict / set that the
  stream itself made, record a ``Build`` or ``Extend`` effect (on the target node, if it is
  one, and in ``Run.effects``): on a real object they would call ``__setstate__``,
  ``extend``, ``__setitem__`` or ``add``;
* persistent ids give ``PersistentRef``, out-of-band buffers ``Buffer``.

Builtin containers are modelled by real lists, dicts, tuples, sets and frozensets holding the
nodes, so the result looks like the object the stream describes.  A key that cannot be hashed
(a list, or a tuple nested too deep to hash safely) is wrapped in ``Unhashable``.

The machine is for reading hostile input: it never raises on a malformed stream (unless asked
with ``strict=True``) but records the error in ``Run.error`` with everything executed before
it.  Its memory is bounded by the input (the memo is a dict, so LONG_BINPUT 0x3FFFFFFF costs
one entry) and it never recurses, however deep the stream nests.

The opcode semantics follow CPython's C unpickler (``Modules/_pickle.c``), including its stack
discipline: an opcode may not pop below the most recent MARK, and POP just after a MARK drops
the mark.  Which operands each opcode pops comes from the table in ``opcodes``.
"""

from __future__ import annotations

import copyreg
import pickle
from dataclasses import dataclass, field
from typing import Any

from ..errors import MalformedPickleError
from .opcodes import OPCODES, Opcode, Role
from .reader import Payload, read_ops

__all__ = [
    "Node", "Global", "UnresolvedGlobal", "Extension", "Call", "PersistentRef", "Buffer",
    "Unhashable", "Build", "Extend", "Run", "simulate", "find_globals",
]

# Hashing a tuple recurses in C once per level of nesting, with no recursion guard: a stream
# of a million TUPLE1 opcodes used as a dict key would crash the interpreter.  Deeper tuples
# than this are never hashed; they become ``Unhashable`` keys.  (Comparing two such keys
# recurses too, under Python's recursion limit: a low bound keeps it far from that.)
MAX_HASH_DEPTH = 100


# --- nodes --------------------------------------------------------------------------------

@dataclass(eq=False, slots=True)
class Node:
    """A placeholder for an object the machine did not make.

    Nodes compare and hash by identity, like the objects they stand for.  ``effects`` lists
    the ``Build`` and ``Extend`` steps the stream applies to this object, in order.
    """

    effects: list = field(default_factory=list, repr=False, kw_only=True)


@dataclass(eq=False, slots=True)
class Global(Node):
    """A global the stream names: the unpickler would import ``module`` and look up ``name``.

    ``offset`` is the byte offset of the naming opcode, ``opcode_name`` its name (GLOBAL,
    STACK_GLOBAL, INST, EXT1, EXT2 or EXT4).  Names are as the stream spells them, before any
    Python 2 renaming (``fix_imports``) the unpickler may apply.
    """

    module: str
    name: str
    offset: int
    opcode_name: str

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False, slots=True)
class UnresolvedGlobal(Node):
    """A STACK_GLOBAL whose module or name is not a string the stream spelled out.

    The C unpickler refuses it; a different loader might resolve it at run time.
    """

    module: Any
    name: Any
    offset: int


@dataclass(eq=False, slots=True)
class Extension(Node):
    """An EXT1/EXT2/EXT4 code that this process's ``copyreg`` registry does not know."""

    code: int
    offset: int
    opcode_name: str


@dataclass(eq=False, slots=True)
class Call(Node):
    """The result of calling ``func``: REDUCE, NEWOBJ, NEWOBJ_EX, OBJ or INST (``kind``).

    NEWOBJ and NEWOBJ_EX call ``func.__new__(func, *args, **kwargs)``; ``kwargs`` is None
    except for NEWOBJ_EX.  ``args`` is what the stream supplied, a tuple if it is well formed.
    """

    func: Any
    args: Any
    kwargs: Any
    offset: int
    kind: str


@dataclass(eq=False, slots=True)
class PersistentRef(Node):
    """What the ``persistent_load`` hook would return for ``pid`` (PERSID / BINPERSID)."""

    pid: Any
    offset: int
    opcode_name: str


@dataclass(eq=False, slots=True)
class Buffer(Node):
    """The ``index``-th out-of-band buffer (NEXT_BUFFER), read-only after READONLY_BUFFER."""

    index: int
    offset: int
    readonly: bool = False


@dataclass(eq=False, slots=True)
class Unhashable(Node):
    """Wraps a dict key or set member the machine could not hash (see ``MAX_HASH_DEPTH``).

    Loading the stream would raise TypeError there for an unhashable key; the machine goes on
    so that what follows is still seen.
    """

    value: Any


@dataclass(eq=False, slots=True)
class Build:
    """BUILD: the unpickler would call ``target.__setstate__(state)`` or update its dict."""

    target: Any
    state: Any
    offset: int


@dataclass(eq=False, slots=True)
class Extend:
    """APPEND(S), SETITEM(S) or ADDITEMS on an object that is not a plain list/dict/set.

    The unpickler would call ``target.<method>`` with ``items``: ``extend`` for APPEND and
    APPENDS (the C unpickler falls back to ``append`` per item when there is no ``extend``),
    ``__setitem__`` per ``(key, value)`` pair for SETITEM(S), ``add`` per item for ADDITEMS.
    """

    target: Any
    method: str
    items: list
    offset: int
    opcode_name: str


@dataclass(eq=False)
class Run:
    """What ``simulate`` found.

    ``value`` is the top-level object (None if the stream broke); ``globals``, ``calls``,
    ``effects``, ``persistent`` and ``buffers`` list what the stream names, calls, applies,
    asks the persistent hook for and takes out of band, in stream order; ``unresolved`` the
    STACK_GLOBALs and EXT codes that name nothing resolvable.  ``error`` is the
    ``MalformedPickleError`` where the stream broke, ``end`` the offset just past STOP (or
    of the opcode that broke), ``protocol`` the one PROTO declared (0 if none).
    """

    start: int = 0
    value: Any = None
    globals: list[Global] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    effects: list[Build | Extend] = field(default_factory=list)
    unresolved: list[UnresolvedGlobal | Extension] = field(default_factory=list)
    persistent: list[PersistentRef] = field(default_factory=list)
    buffers: list[Buffer] = field(default_factory=list)
    error: MalformedPickleError | None = None
    end: int = 0
    protocol: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


# --- the machine --------------------------------------------------------------------------

class _Break(Exception):
    """The stream breaks at the current opcode; the message says why."""


class _Resume(Exception):
    """An ``after_build`` hook consumed data after a BUILD: decoding resumes at ``pos``."""

    def __init__(self, pos: int):
        super().__init__(pos)
        self.pos = pos


def _objects(count: int) -> str:
    return "1 object" if count == 1 else f"{count} objects"


_CONSTANTS = {
    "NONE": lambda: None, "NEWTRUE": lambda: True, "NEWFALSE": lambda: False,
    "EMPTY_LIST": list, "EMPTY_DICT": dict, "EMPTY_TUPLE": tuple, "EMPTY_SET": set,
}


class _Machine:
    def __init__(self, data, run: Run, after_build=None):
        self.data = data
        self.run = run
        self.after_build = after_build
        self.stack: list = []
        self.marks: list[int] = []     # stack heights at each open MARK
        self.memo: dict[int, Any] = {}
        self.buffers = 0               # NEXT_BUFFER opcodes seen
        self.tuple_depth: dict[int, tuple[tuple, int]] = {}  # id -> (tuple, nesting depth)
        # One handler per opcode, found by role and name; the table decides what exists.
        self.handlers = {op.code: self._handler(op) for op in OPCODES}

    def _handler(self, op: Opcode):
        if op.role is Role.BUILD or op.role is Role.EXTEND:
            return getattr(self, f"_{op.role.name.lower()}_{op.name.lower()}")
        if op.role is Role.PUSH:
            named = getattr(self, f"_push_{op.name.lower()}", None)
            if named is not None:
                return named
            if op.name in _CONSTANTS:
                make = _CONSTANTS[op.name]
                return lambda op, arg, offset: self.stack.append(make())
            return lambda op, arg, offset: self.stack.append(arg)
        return getattr(self, f"_on_{op.role.name.lower()}")

    # The loop.

    def execute(self, start: int) -> None:
        run, handlers = self.run, self.handlers
        offset, op = start, None
        pos = start
        try:
            while True:
                try:
                    for offset, op, arg, end in read_ops(self.data, pos, plain=True):
                        handlers[op.code](op, arg, offset)
                        if op.role is Role.STOP:
                            run.end = end
                            return
                except _Resume as jump:
                    # An after_build hook read data of its own that follows the BUILD (joblib
                    # writes raw array bytes there): decoding goes on after it.
                    pos = jump.pos
        except MalformedPickleError as exc:
            run.error = exc
            run.end = exc.offset if exc.offset is not None else offset
        except _Break as exc:
            run.error = MalformedPickleError(
                f"malformed pickle: {op.name} at byte {offset} {exc}", offset)
            run.end = offset

    # Stack discipline, as in the C unpickler: nothing pops below the most recent MARK.

    def _fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def _top(self):
        if len(self.stack) <= self._fence():
            raise _Break("finds the stack empty")
        return self.stack[-1]

    def _pop_above_mark(self) -> list:
        if not self.marks:
            raise _Break("has no MARK to pop to")
        height = self.marks.pop()
        items = self.stack[height:]
        del self.stack[height:]
        return items

    def _pop_n(self, count: int) -> list:
        stack = self.stack
        if len(stack) - count < self._fence():
            raise _Break(f"needs {_objects(count)} on the stack")
        items = stack[len(stack) - count:]
        del stack[len(stack) - count:]
        return items

    def _operands(self, op: Opcode) -> list:
        """Pops what the table says ``op`` pops (BUILD role): its operands, in stack order."""
        if op.mark:
            items = self._pop_above_mark()
            if len(items) < op.pops:
                raise _Break(f"needs {_objects(op.pops)} above the MARK")
            return items
        return self._pop_n(op.pops)

    def _target_and_items(self, op: Opcode) -> tuple[Any, list]:
        """For the EXTEND role: the object receiving the operands (left on the stack), and them."""
        if op.mark:
            items = self._pop_above_mark()
            return self._top(), items
        items = self._pop_n(op.pops - 1)
        return self._top(), items

    # Memo, marks and the other roles with one handler each.

    def _on_pop(self, op, arg, offset):
        # POP right after a MARK drops the mark, as the C unpickler does.
        if self.marks and self.marks[-1] == len(self.stack):
            self.marks.pop()
        else:
            self._top()
            self.stack.pop()

    def _on_mark(self, op, arg, offset):
        self.marks.append(len(self.stack))

    def _on_pop_mark(self, op, arg, offset):
        self._pop_above_mark()

    def _on_dup(self, op, arg, offset):
        self.stack.append(self._top())

    def _on_put(self, op, arg, offset):
        if arg < 0:
            raise _Break("has a negative memo index")
        self.memo[arg] = self._top()

    def _on_memoize(self, op, arg, offset):
        self.memo[len(self.memo)] = self._top()

    def _on_get(self, op, arg, offset):
        try:
            self.stack.append(self.memo[arg])
        except (KeyError, TypeError):
            raise _Break(f"reads memo entry {arg!r}, which was never written") from None

    def _on_proto(self, op, arg, offset):
        if arg > pickle.HIGHEST_PROTOCOL:
            raise _Break(f"declares protocol {arg}, which no unpickler of this Python reads")
        self.run.protocol = arg

    def _on_frame(self, op, arg, offset):
        pass  # frames only group opcodes for reading; the reader checked the length

    def _on_stop(self, op, arg, offset):
        self.run.value = self._top()
        self.stack.pop()

    # Pushes that name, hand out or look up something.

    def _push_global(self, op, arg, offset):
        module, name = arg
        self.stack.append(self._global(module, name, offset, op.name))

    def _push_ext1(self, op, code, offset):
        if code <= 0:
            raise _Break("gives an extension code <= 0")
        # The loading process's registry decides; ours is the best guess we have.  Reading
        # the registry imports nothing.
        key = copyreg._inverted_registry.get(code)
        if key is None:
            node = Extension(code, offset, op.name)
            self.run.unresolved.append(node)
        else:
            node = self._global(key[0], key[1], offset, op.name)
        self.stack.append(node)

    _push_ext2 = _push_ext4 = _push_ext1

    def _push_persid(self, op, arg, offset):
        node = PersistentRef(arg, offset, op.name)
        self.run.persistent.append(node)
        self.stack.append(node)

    def _push_next_buffer(self, op, arg, offset):
        node = Buffer(self.buffers, offset)
        self.buffers += 1
        self.run.buffers.append(node)
        self.stack.append(node)

    def _global(self, module: str, name: str, offset: int, opcode_name: str) -> Global:
        node = Global(module, name, offset, opcode_name)
        self.run.globals.append(node)
        return node

    # BUILD role: pop operands, push one new object.

    def _build_list(self, op, arg, offset):
        self.stack.append(self._operands(op))

    def _build_tuple(self, op, arg, offset):
        self.stack.append(self._tuple(self._operands(op)))

    _build_tuple1 = _build_tuple2 = _build_tuple3 = _build_tuple

    def _build_dict(self, op, arg, offset):
        items = self._operands(op)
        if len(items) % 2:
            raise _Break("has an odd number of items")
        made: dict = {}
        self._set_items(made, items)
        self.stack.append(made)

    def _build_frozenset(self, op, arg, offset):
        self.stack.append(frozenset(self._key(item) for item in self._operands(op)))

    def _build_stack_global(self, op, arg, offset):
        module, name = self._operands(op)
        module_text, name_text = self._string(module), self._string(name)
        if module_text is None or name_text is None:
            node = UnresolvedGlobal(module, name, offset)
            self.run.unresolved.append(node)
        else:
            node = self._global(module_text, name_text, offset, op.name)
        self.stack.append(node)

    def _build_inst(self, op, arg, offset):
        args = self._operands(op)
        cls = self._global(arg[0], arg[1], offset, op.name)
        self._call(cls, self._tuple(args), None, offset, op.name)

    def _build_obj(self, op, arg, offset):
        cls, *args = self._operands(op)
        self._call(cls, self._tuple(args), None, offset, op.name)

    def _build_reduce(self, op, arg, offset):
        func, args = self._operands(op)
        self._call(func, args, None, offset, op.name)

    def _build_newobj(self, op, arg, offset):
        cls, args = self._operands(op)
        self._call(cls, args, None, offset, op.name)

    def _build_newobj_ex(self, op, arg, offset):
        cls, args, kwargs = self._operands(op)
        self._call(cls, args, kwargs, offset, op.name)

    def _build_binpersid(self, op, arg, offset):
        (pid,) = self._operands(op)
        node = PersistentRef(pid, offset, op.name)
        self.run.persistent.append(node)
        self.stack.append(node)

    def _build_readonly_buffer(self, op, arg, offset):
        (buffer,) = self._operands(op)
        if isinstance(buffer, Buffer):
            buffer.readonly = True  # the unpickler swaps in a read-only view of the same data
        self.stack.append(buffer)

    def _call(self, func, args, kwargs, offset: int, kind: str) -> None:
        node = Call(func, args, kwargs, offset, kind)
        self.run.calls.append(node)
        self.stack.append(node)

    # EXTEND role: add operands to the object below them, which stays on the stack.  Plain
    # containers the stream made are filled in; on anything else the step is recorded,
    # since there it would call a method of the object.

    def _extend_append(self, op, arg, offset):
        self._extend_appends(op, arg, offset)

    def _extend_appends(self, op, arg, offset):
        target, items = self._target_and_items(op)
        if type(target) is list:
            target.extend(items)
        elif items:  # the unpickler does nothing at all for an empty APPENDS
            self._effect(target, Extend(target, "extend", items, offset, op.name))

    def _extend_setitem(self, op, arg, offset):
        self._extend_setitems(op, arg, offset)

    def _extend_setitems(self, op, arg, offset):
        target, items = self._target_and_items(op)
        if len(items) % 2:
            raise _Break("has an odd number of items")
        if type(target) is dict:
            self._set_items(target, items)
        elif items:
            pairs = list(zip(items[::2], items[1::2]))
            self._effect(target, Extend(target, "__setitem__", pairs, offset, op.name))

    def _extend_additems(self, op, arg, offset):
        target, items = self._target_and_items(op)
        if type(target) is set:
            target.update(self._key(item) for item in items)
        elif items:
            self._effect(target, Extend(target, "add", items, offset, op.name))

    def _extend_build(self, op, arg, offset):
        target, (state,) = self._target_and_items(op)
        self._effect(target, Build(target, state, offset))
        if self.after_build is not None:
            try:
                resume = self.after_build(target, state, offset + 1, self.stack)
            except ValueError as exc:   # the hook cannot place the data that follows
                raise _Break(f"is followed by data that cannot be read: {exc}") from None
            if resume is not None:
                if resume < offset + 1:
                    raise _Break("is followed by data its hook cannot place")
                raise _Resume(resume)

    def _effect(self, target, effect) -> None:
        self.run.effects.append(effect)
        if isinstance(target, Node):
            target.effects.append(effect)

    # Values.

    def _tuple(self, items: list) -> tuple:
        made = tuple(items)
        depth = 1
        for item in made:
            if type(item) is tuple and item:
                # Tuples not in the table hold no tuples: their depth is 1.
                depth = max(depth, 1 + self.tuple_depth.get(id(item), (None, 1))[1])
        if depth > 1:
            # Keep the tuple alive beside its depth, so that its id is never reused.
            self.tuple_depth[id(made)] = (made, depth)
        return made

    def _key(self, key):
        """``key`` if it is safe to hash as a dict key or set member, else ``Unhashable``."""
        if type(key) is tuple and self.tuple_depth.get(id(key), (None, 1))[1] > MAX_HASH_DEPTH:
            return Unhashable(key)
        try:
            hash(key)
        except (TypeError, RecursionError):
            return Unhashable(key)
        return key

    def _set_items(self, target: dict, items: list) -> None:
        for index in range(0, len(items), 2):
            key = self._key(items[index])
            try:
                target[key] = items[index + 1]
            except RecursionError:  # equal hashes, and comparing the keys ran too deep
                target[Unhashable(key)] = items[index + 1]

    def _string(self, value) -> str | None:
        """The text of a str the stream spelled out (a large one is still a Payload)."""
        if type(value) is str:
            return value
        if isinstance(value, Payload) and value.type is str:
            try:
                return value.value(self.data)
            except ValueError:  # not UTF-8: the unpickler would have failed reading it
                return None
        return None


# --- entry points -------------------------------------------------------------------------

def simulate(data, start: int = 0, *, strict: bool = False, after_build=None) -> Run:
    """Runs the pickle at ``start`` in ``data`` symbolically and returns what it found.

    Never imports or calls anything from the stream.  A malformed stream is recorded in
    ``Run.error``, or raised if ``strict`` is true.

    ``after_build(target, state, end, stack)``, if given, is called after every BUILD, with
    ``end`` the offset just past it and ``stack`` the machine's stack (the target on top,
    which the hook may replace).  It returns None, or an offset at or after ``end`` where
    decoding is to go on: some formats write raw data of their own right after a BUILD
    (joblib's arrays), which their loader reads there.  A ``ValueError`` from the hook
    breaks the stream there, with the hook's message.
    """
    run = Run(start=start, end=start)
    machine = _Machine(data, run, after_build)
    machine.execute(start)
    if strict and run.error is not None:
        raise run.error
    return run


def find_globals(data, start: int = 0) -> list[Global]:
    """Every global the pickle at ``start`` names, in stream order, with offsets.

    Includes those named before the point where a broken stream breaks, and, past it, those
    whose names are spelled out inline (GLOBAL, INST) for as long as the bytes still decode:
    another loader might get further than the C unpickler does.
    """
    run = simulate(data, start)
    found = list(run.globals)
    if run.error is None:
        return found
    seen = {node.offset for node in found}
    try:
        for offset, op, arg, _ in read_ops(data, run.end, plain=True):
            if op.imports and type(arg) is tuple and offset not in seen:
                found.append(Global(arg[0], arg[1], offset, op.name))
    except MalformedPickleError:
        pass
    return found
