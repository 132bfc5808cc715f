"""Show: what a pickle builds, written out as Python, without running it.

``show(data)`` runs each pickle of ``data`` on the symbolic machine and writes the result as a
small Python-like program: the expression the pickle builds, preceded by assignments for the
objects it uses more than once and the steps it applies to objects after making them::

    _1 = mymod.Model.__new__(mymod.Model)
    _1.__setstate__({'weights': [0.5, 0.25], 'name': 'm'})
    {'model': _1, 'again': _1}

Calls appear as calls (``os.system('echo hi')``); nothing is imported or called.  Plain
containers print as literals; the standard library's ordered and default dicts fold their
items into the constructor (``collections.OrderedDict([('a', 1)])``).  Output stays bounded
whatever the input: long strings and containers are cut (``... (+N more)``), deep nesting
stops at ``max_depth``, and shared objects print once, by name.  A self-reference prints the
name of the object being defined.
"""

from __future__ import annotations

import io
from typing import Any

from ..format.machine import (Buffer, Build, Call, Extend, Extension, Global, Node,
                              PersistentRef, Unhashable, UnresolvedGlobal)
from ..format.reader import Payload

__all__ = ["show", "render", "render_call"]

_FOLD_MAPPINGS = {("collections", "OrderedDict"), ("collections", "Counter"),
                  ("builtins", "dict"), ("__builtin__", "dict")}
_FOLD_DEFAULTDICT = {("collections", "defaultdict")}


class _Renderer:
    def __init__(self, *, width: int = 100, max_items: int = 50, max_depth: int = 40,
                 max_string: int = 200):
        self.width = width
        self.max_items = max_items
        self.max_depth = max_depth
        self.max_string = max_string
        self.refs: dict[int, int] = {}
        self.objects: dict[int, Any] = {}
        self.names: dict[int, str] = {}
        self.defined: set[int] = set()
        self.lines: list[str] = []

    # What counts as an object that can be shared (and so named).

    @staticmethod
    def _shareable(value) -> bool:
        return isinstance(value, (list, dict, set, frozenset, tuple, Node, bytearray)) \
            and not isinstance(value, (Global,)) and not (type(value) is tuple and not value)

    def _children(self, value) -> list:
        """The values rendered inside ``value`` (those that fit the item limit)."""
        limit = self.max_items
        if isinstance(value, Unhashable):
            return [value.value]
        if type(value) in (list, tuple, set, frozenset):
            return list(_take(value, limit))
        if type(value) is dict:
            out = []
            for key, item in _take(value.items(), limit):
                out += [key, item]
            return out
        if isinstance(value, Call):
            out = [value.func]
            if type(value.args) is tuple:
                out += list(_take(value.args, limit))
            else:
                out.append(value.args)
            if value.kwargs is not None:
                out.append(value.kwargs)
            return out + self._effect_values(value)
        if isinstance(value, PersistentRef):
            return [value.pid] + self._effect_values(value)
        if isinstance(value, UnresolvedGlobal):
            return [value.module, value.name]
        if isinstance(value, Node):
            return self._effect_values(value)
        return []

    def _effect_values(self, node: Node) -> list:
        out = []
        for effect in _take(node.effects, self.max_items):
            if isinstance(effect, Build):
                out.append(effect.state)
            else:
                for item in _take(effect.items, self.max_items):
                    out += list(item) if effect.method == "__setitem__" else [item]
        return out

    def count(self, root) -> None:
        """Count the references to each shareable object within the visible part."""
        stack = [(root, 0)]
        while stack:
            value, depth = stack.pop()
            if not self._shareable(value):
                continue
            key = id(value)
            seen = self.refs.get(key, 0)
            self.refs[key] = seen + 1
            self.objects[key] = value
            if seen or depth >= self.max_depth:
                continue
            for child in self._children(value):
                stack.append((child, depth + 1))

    # Rendering.

    def name_of(self, value) -> str:
        key = id(value)
        name = self.names.get(key)
        if name is None:
            name = self.names[key] = f"_{len(self.names) + 1}"
        return name

    def _needs_name(self, value) -> bool:
        if not self._shareable(value):
            return False
        if self.refs.get(id(value), 0) > 1:
            return True
        return isinstance(value, Node) and bool(value.effects) and not self._folds(value)

    def expr(self, value, depth: int = 0) -> str:
        """``value`` as an expression; objects that need a name are defined first."""
        if self._needs_name(value):
            key = id(value)
            name = self.name_of(value)
            if key not in self.defined:
                self.defined.add(key)
                self.lines.append(f"{name} = {self.inline(value, depth)}")
                if isinstance(value, Node):
                    for effect in value.effects[:self.max_items]:
                        self.lines.append(self.effect(name, effect, depth))
                    if len(value.effects) > self.max_items:
                        self.lines.append(f"# ... (+{len(value.effects) - self.max_items} "
                                          f"more steps on {name})")
            return name
        return self.inline(value, depth)

    def inline(self, value, depth: int) -> str:
        if depth > self.max_depth:
            return "..."
        t = type(value)
        if value is None or t in (bool, int, float, complex):
            text = repr(value)
            return text if len(text) <= self.max_string else \
                f"{text[:self.max_string]}...({len(text)} digits)"
        if t in (str, bytes):
            return self._text(value)
        if t is bytearray:
            return f"bytearray({self._text(bytes(value))})"
        if t is Payload or isinstance(value, Payload):
            return f"<{value.type.__name__} of {value.length} bytes at byte {value.offset}>"
        d = depth + 1
        if t is list:
            return "[" + self._items(value, d) + "]"
        if t is tuple:
            inner = self._items(value, d)
            return f"({inner},)" if len(value) == 1 else f"({inner})"
        if t is set:
            return "{" + self._items(value, d) + "}" if value else "set()"
        if t is frozenset:
            return "frozenset({" + self._items(value, d) + "})" if value else "frozenset()"
        if t is dict:
            return "{" + self._pairs(value.items(), len(value), d) + "}"
        if isinstance(value, Global):
            return f"{value.module}.{value.name}"
        if isinstance(value, Unhashable):
            return self.expr(value.value, d)
        if isinstance(value, Call):
            return self._call(value, d)
        if isinstance(value, UnresolvedGlobal):
            return f"STACK_GLOBAL({self.expr(value.module, d)}, {self.expr(value.name, d)})"
        if isinstance(value, Extension):
            return f"<extension code {value.code}>"
        if isinstance(value, PersistentRef):
            return f"persistent_load({self.expr(value.pid, d)})"
        if isinstance(value, Buffer):
            return f"<out-of-band buffer {value.index}{', read-only' if value.readonly else ''}>"
        return f"<{type(value).__name__}>"

    def _text(self, value) -> str:
        if len(value) <= self.max_string:
            return repr(value)
        return f"{value[:self.max_string]!r}...(+{len(value) - self.max_string})"

    def _items(self, values, depth: int) -> str:
        shown = [self.expr(v, depth) for v in _take(values, self.max_items)]
        if len(values) > self.max_items:
            shown.append(f"... (+{len(values) - self.max_items} more)")
        return ", ".join(shown)

    def _pairs(self, pairs, total: int, depth: int) -> str:
        shown = [f"{self.expr(k, depth)}: {self.expr(v, depth)}"
                 for k, v in _take(pairs, self.max_items)]
        if total > self.max_items:
            shown.append(f"... (+{total - self.max_items} more)")
        return ", ".join(shown)

    def _folds(self, node: Node) -> bool:
        """Whether ``node``'s steps fold into its constructor: an ordered / default dict
        made empty and filled by SETITEM(S)."""
        if not (isinstance(node, Call) and isinstance(node.func, Global) and node.effects):
            return False
        key = (node.func.module, node.func.name)
        if not all(isinstance(e, Extend) and e.method == "__setitem__" for e in node.effects):
            return False
        if key in _FOLD_MAPPINGS:
            return node.args == ()
        if key in _FOLD_DEFAULTDICT:
            return type(node.args) is tuple and len(node.args) <= 1
        return False

    def _call(self, call: Call, depth: int) -> str:
        func = self.expr(call.func, depth)
        if self._folds(call):
            pairs = [pair for effect in call.effects for pair in effect.items]
            if (call.func.module, call.func.name) in _FOLD_DEFAULTDICT:
                factory = [self.expr(a, depth) for a in call.args] or ["None"]
                return f"{func}({factory[0]}, {{{self._pairs(pairs, len(pairs), depth)}}})"
            items = ", ".join(f"({self.expr(k, depth)}, {self.expr(v, depth)})"
                              for k, v in _take(pairs, self.max_items))
            if len(pairs) > self.max_items:
                items += f", ... (+{len(pairs) - self.max_items} more)"
            return f"{func}([{items}])"
        if type(call.args) is tuple:
            args = self._items(call.args, depth)
        else:
            args = f"*{self.expr(call.args, depth)}"
        if call.kind in ("NEWOBJ", "NEWOBJ_EX"):
            args = f"{func}, {args}" if args else func
            if call.kind == "NEWOBJ_EX" and call.kwargs is not None:
                kwargs = call.kwargs
                if type(kwargs) is dict and all(type(k) is str and k.isidentifier()
                                                for k in kwargs):
                    more = ", ".join(f"{k}={self.expr(v, depth)}"
                                     for k, v in _take(kwargs.items(), self.max_items))
                else:
                    more = f"**{self.expr(kwargs, depth)}"
                if more:
                    args = f"{args}, {more}"
            return f"{func}.__new__({args})"
        return f"{func}({args})"

    def effect(self, name: str, effect, depth: int) -> str:
        if isinstance(effect, Build):
            return f"{name}.__setstate__({self.expr(effect.state, depth + 1)})"
        if effect.method == "__setitem__":
            lines = [f"{name}[{self.expr(k, depth + 1)}] = {self.expr(v, depth + 1)}"
                     for k, v in _take(effect.items, self.max_items)]
            if len(effect.items) > self.max_items:
                lines.append(f"# ... (+{len(effect.items) - self.max_items} more items)")
            return "\n".join(lines)
        if effect.method == "extend":
            return f"{name}.extend([{self._items(effect.items, depth + 1)}])"
        return "\n".join(f"{name}.add({self.expr(item, depth + 1)})"
                         for item in _take(effect.items, self.max_items))


def _take(values, limit: int):
    for index, value in enumerate(values):
        if index >= limit:
            return
        yield value


def render(value, *, max_items: int = 50, max_depth: int = 40, max_string: int = 200) -> str:
    """A value of the symbolic machine as Python-like text (assignments, then the
    expression)."""
    renderer = _Renderer(max_items=max_items, max_depth=max_depth, max_string=max_string)
    renderer.count(value)
    text = renderer.expr(value)
    return "\n".join(renderer.lines + [text])


def render_call(call: Call, width: int = 160) -> str:
    """One call, on one line, cut at ``width`` characters (for scan findings)."""
    renderer = _Renderer(max_items=8, max_depth=6, max_string=60)
    text = renderer.inline(call, 0)
    return text if len(text) <= width else text[:width - 3] + "..."


def show(data, *, max_items: int = 50, max_depth: int = 40, max_string: int = 200,
         policy=None) -> str:
    """What the pickles of ``data`` build, as Python-like text; see the module docstring.

    ``data``: bytes, a path or a binary file, in any container ``scan`` reads (a torch
    checkpoint shows its ``data.pkl``).  Broken streams show the calls they make before
    the break.  Nothing is imported or called.
    """
    from .streams import streams

    out = io.StringIO()
    parts = streams(data, policy=policy)
    many = len(parts) > 1 or any(p.member for p in parts)
    for part in parts:
        if many:
            where = f"{part.member}, " if part.member else ""
            out.write(f"# {where}pickle at bytes {part.start}-{part.run.end}"
                      f"{' (' + part.context + ')' if part.context != 'pickle' else ''}\n")
        run = part.run
        if run.error is None:
            out.write(render(run.value, max_items=max_items, max_depth=max_depth,
                             max_string=max_string) + "\n")
        else:
            out.write(f"# the stream breaks: {run.error}\n")
            if run.calls:
                out.write(f"# before it breaks, it makes {len(run.calls)} "
                          f"call{'s' if len(run.calls) > 1 else ''}:\n")
                renderer = _Renderer(max_items=max_items, max_depth=8, max_string=max_string)
                for call in run.calls[:max_items]:
                    out.write(renderer.inline(call, 0) + "\n")
    return out.getvalue()
