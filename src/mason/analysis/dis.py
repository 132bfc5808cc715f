"""Dis: an opcode listing of a pickle, like ``pickletools.dis``, that never gives up.

Each line gives the byte offset, the opcode byte, its name indented by the open MARKs, and
its argument, with pickletools' annotations -- ``(as N)`` for MEMOIZE, ``(MARK at N)`` for the
opcodes that pop to a mark -- and a few of mason's after ``#``: the global a STACK_GLOBAL
names, what a REDUCE / NEWOBJ / OBJ / INST calls, which memo entry a GET fetches and where it
was stored::

       0: \\x80 PROTO      4
       2: \\x95 FRAME      33
      11: \\x8c SHORT_BINUNICODE 'posix'
      18: \\x94 MEMOIZE    (as 0)
      ...
      43: R    REDUCE                        # calls posix.system('echo hi')

Unlike pickletools, it lists broken streams up to the break and says what is wrong there; it
goes on through pickles written one after another; it reads every container ``scan`` reads
(a torch checkpoint lists its ``data.pkl``), steps over joblib's raw array data, and shows
large byte and string arguments by size and offset rather than copying them.
"""

from __future__ import annotations

import io

from ..errors import MalformedPickleError
from ..format.machine import Call
from ..format.opcodes import Role
from ..format.reader import Payload, read_ops

__all__ = ["dis"]

_ANNOTATION_COLUMN = 40


def dis(data, out=None, *, policy=None) -> str:
    """The opcode listing of every pickle in ``data`` (bytes, a path or a binary file).

    Returns the listing; also writes it to ``out`` (a text file) if given.
    """
    from .show import render_call
    from .streams import streams

    text = io.StringIO()
    problems: list = []
    parts = streams(data, policy=policy, problems=problems)
    many = len(parts) > 1 or any(p.member for p in parts)
    for number, part in enumerate(parts):
        if many:
            if number:
                text.write("\n")
            where = f"{part.member}, " if part.member else ""
            extra = f" ({part.context})" if part.context != "pickle" else ""
            text.write(f"# {where}pickle at byte {part.start}{extra}\n")
        _listing(part, text, render_call)
    for finding in problems:
        text.write(f"# {finding.member + ': ' if finding.member else ''}{finding.message}\n")
    if not parts and not problems:
        text.write("# no pickle found\n")
    listing = text.getvalue()
    if out is not None:
        out.write(listing)
    return listing


def _listing(part, out, render_call) -> None:
    run = part.run
    notes: dict[int, str] = {}
    for node in run.globals:
        if node.opcode_name not in ("GLOBAL", "INST"):
            notes[node.offset] = f"{node.module}.{node.name}"
    for call in run.calls:
        notes[call.offset] = f"calls {render_call(call, width=72)}" \
            if isinstance(call, Call) else "calls"
    for ref in run.persistent:
        notes.setdefault(ref.offset, "asks persistent_load")
    marks: list[int] = []
    top_is_mark = False
    stored: dict = {}
    max_proto = -1
    pos = part.start
    error = None
    stopped = False
    while not stopped:
        jumped = False
        try:
            for offset, op, arg, end in read_ops(part.data, pos, plain=True):
                max_proto = max(max_proto, op.proto)
                notes_here = []
                mark_note = None
                indent = "    " * len(marks)   # as pickletools: before a MARK is popped
                if op.mark or (op.role is Role.POP and marks and top_is_mark):
                    mark_note = f"(MARK at {marks.pop()})" if marks else "(no MARK)"
                if op.role is Role.MEMOIZE:
                    index = len(stored)
                    stored[index] = offset
                    mark_note = f"(as {index})"
                elif op.role is Role.PUT:
                    stored[arg] = offset
                elif op.role is Role.GET:
                    if arg in stored:
                        notes_here.append(f"memo {arg}, stored at byte {stored[arg]}")
                    else:
                        notes_here.append(f"memo {arg} was never stored")
                line = "%5d: %-4s %s%s" % (offset, repr(bytes([op.code]))[2:-1], indent,
                                           op.name)
                shown = _argument(op, arg)
                if shown is not None or mark_note:
                    line += " " * (10 - len(op.name))
                    if shown is not None:
                        line += " " + shown
                    if mark_note:
                        line += " " + mark_note
                if offset in notes:
                    notes_here.append(notes[offset])
                if notes_here:
                    line = line.ljust(_ANNOTATION_COLUMN) + "  # " + "; ".join(notes_here)
                out.write(line + "\n")
                if op.role is Role.MARK:
                    marks.append(offset)
                top_is_mark = op.role is Role.MARK
                if op.role is Role.STOP:
                    stopped = True
                    break
                if end in part.jumps:
                    to = part.jumps[end]
                    out.write(f"{end:5d}: <{to - end} bytes of joblib array data>\n")
                    pos = to
                    jumped = True
                    break
        except MalformedPickleError as exc:
            error = exc
            break
        if not jumped:
            break
    if error is not None:
        where = error.offset if error.offset is not None else pos
        out.write(f"{where:5d}: <error> {error}\n")
    elif run.error is not None:
        out.write(f"{run.error.offset if run.error.offset is not None else pos:5d}: <error> "
                  f"{run.error}\n")
    if max_proto >= 0:
        out.write(f"highest protocol among opcodes = {max_proto}\n")


def _argument(op, arg) -> str | None:
    if arg is None:
        return None
    if isinstance(arg, Payload):
        return f"<{arg.type.__name__} of {arg.length} bytes at byte {arg.offset}>"
    if op.name in ("GLOBAL", "INST") and isinstance(arg, tuple):
        return repr(f"{arg[0]} {arg[1]}")
    text = repr(arg)
    if len(text) > 120:
        text = text[:100] + f"...(+{len(text) - 100})"
    return text

