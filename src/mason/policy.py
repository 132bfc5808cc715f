"""Which globals a pickle may name when it is loaded.

A ``Policy`` is an allowlist.  It matches a global exactly on its dotted name
``module.qualname`` (``"collections.OrderedDict"``), or by module with a wildcard
(``"pkg.sub.*"`` covers ``pkg.sub`` and every module below it).  Nothing else is consulted:
a table of known-dangerous names elsewhere only explains refusals, it decides nothing.

Resolving an allowed name imports its module and walks the qualname attribute by attribute.
The walk never passes through a dunder attribute, and every module it reaches must itself be
allowed for the rest of the name, so ``numpy.__builtins__.eval`` and ``allowed_mod.os.system``
stay out even when ``numpy.*`` or ``allowed_mod.*`` is allowed.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterable, Mapping
from typing import Any

from ._safe_constructors import SAFE_SUBSTITUTES
from .errors import UnsafeGlobalError
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["Policy", "SAFE_DATA_NAMES", "default_policy"]

# The standard library's plain-data types: building them runs no code of the stream's
# choosing and touches no file, process or network.
SAFE_DATA_NAMES = (
    # builtins: containers and scalars, the singletons pickle names, and exceptions (values)
    "builtins.bool", "builtins.int", "builtins.float", "builtins.complex", "builtins.str",
    "builtins.tuple", "builtins.list", "builtins.dict", "builtins.set", "builtins.frozenset",
    "builtins.slice", "builtins.object", "builtins.Ellipsis", "builtins.NotImplemented",
    *(f"builtins.{name}" for name, value in vars(__import__("builtins")).items()
      if isinstance(value, type) and issubclass(value, BaseException)),
    "datetime.date", "datetime.time", "datetime.datetime", "datetime.timedelta",
    "datetime.timezone",
    # ZoneInfo pickles as getattr(ZoneInfo, "_unpickle")(key, from_cache): the class and
    # exactly that classmethod.  Both only read the system's time zone database, by a key
    # that zoneinfo itself refuses to let out of its search path.
    "zoneinfo.ZoneInfo", "zoneinfo.ZoneInfo._unpickle",
    "decimal.Decimal",
    "uuid.UUID", "uuid.SafeUUID",
    "collections.OrderedDict", "collections.deque", "collections.defaultdict",
    "collections.Counter", "collections.ChainMap",
    "ipaddress.IPv4Address", "ipaddress.IPv6Address", "ipaddress.IPv4Network",
    "ipaddress.IPv6Network", "ipaddress.IPv4Interface", "ipaddress.IPv6Interface",
    # paths are values: building one does no I/O
    "pathlib.PurePath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath",
    "pathlib.PosixPath", "pathlib.WindowsPath",
    "types.SimpleNamespace", "time.struct_time",
    "array.array", "array._array_reconstructor",
    # reconstructors that the default policy replaces with checked stand-ins
    *SAFE_SUBSTITUTES,
)


# Values of the default policy whose iteration is not bounded by the size of the stream: an
# IPv6Network("::/0") holds 2**128 addresses.  Handed to a constructor that iterates its
# argument, one is a memory bomb of a few dozen bytes, so the unpickler checks a stream that
# names one (Unpickler._check_lazy_iterables), and the fast path of loads() leaves it alone.
LAZY_ITERABLES = frozenset({("ipaddress", "IPv4Network"), ("ipaddress", "IPv6Network")})
# Allowed (or commonly allowed) constructors that iterate an argument to the end.
ITERATING_CONSTRUCTORS = frozenset({
    ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "dict"), ("builtins", "bytes"),
    ("builtins", "bytearray"), ("builtins", "sorted"), ("builtins", "sum"),
    ("builtins", "min"), ("builtins", "max"), ("builtins", "any"), ("builtins", "all"),
    ("collections", "deque"), ("collections", "Counter"), ("collections", "OrderedDict"),
    ("collections", "defaultdict"), ("time", "struct_time"), ("array", "array"),
})


def _split(entry: str) -> str:
    """Normalise an allow entry: "module:qual.name" and "module.qual.name" mean the same."""
    entry = entry.strip()
    if not entry or entry.startswith(".") or entry.endswith("."):
        raise ValueError(f"not a dotted global name: {entry!r}")
    return entry.replace(":", ".")


class Policy:
    """An allowlist of globals, plus the resource limits to load under.

    Build one from names and wildcard modules::

        Policy(["mypkg.models.Model", "mypkg.layers.*"])
        Policy.default() | Policy(["mypkg.models.Model"])

    or take the policy of a preset (``Policy.preset("numpy")``, arriving with the ML
    presets).  ``|`` combines policies; the result allows what either allows.
    """

    __slots__ = ("_names", "_modules", "_substitutes", "limits", "_resolved", "_plain",
                 "_base", "_rules", "_prechecks", "__weakref__")

    def __init__(self, allow: Iterable[str] = (), *, limits: Limits | None = None,
                 substitutes: Mapping[str, Any] | None = None,
                 rules: Iterable[Any] = (), prechecks: Iterable[Any] = ()):
        if isinstance(allow, str):
            allow = [allow]
        names, modules = set(), set()
        for entry in allow:
            entry = _split(entry)
            if entry.endswith(".*"):
                modules.add(entry[:-2])
            elif entry == "*":
                raise ValueError("'*' would allow everything: use trusted=True to say so")
            else:
                names.add(entry)
        self._names = frozenset(names)
        self._modules = frozenset(modules)
        self._substitutes = dict(substitutes or {})
        self.limits = limits or DEFAULT_LIMITS
        self._resolved: dict[tuple[str, str], Any] = {}
        self._plain: dict[tuple[str, str], bool] = {}
        self._base = None
        # Presets (mason.presets): ``rules`` admit a name the lists above do not, by a
        # check of the object (``rule(module, qualname)`` returns it, or None); each of
        # ``prechecks`` (``check(data, find_class)``) reads a stream before it is loaded.
        self._rules = tuple(rules)
        self._prechecks = tuple(prechecks)

    @classmethod
    def default(cls) -> Policy:
        """Plain data and the standard library's value types; nothing that runs code."""
        return _DEFAULT

    @classmethod
    def from_pickle(cls, source, base: Policy | None = None, *, dangerous: bool = False,
                    limits: Limits | None = None) -> Policy:
        """The policy a known-good pickle needs: ``base`` (the default policy if omitted)
        plus exactly the globals ``source`` (a path, bytes or a binary file) names, read
        without running it.  Pin it instead of loading with ``trusted=True``.  Names known
        to be dangerous are left out unless ``dangerous=True``."""
        from .analysis.scan import policy_from_pickle   # the scanner sits a layer above
        return policy_from_pickle(source, base, dangerous=dangerous, limits=limits)

    @classmethod
    def preset(cls, *names: str, limits: Limits | None = None) -> Policy:
        """The default policy plus the presets ``names`` ("numpy", "pandas", "sklearn",
        "torch"; see ``mason.presets`` and docs/models.md for what each admits and why)."""
        from .presets import preset_policy
        policy = preset_policy(*names)
        return policy if limits is None else policy.with_limits(limits)

    @property
    def prechecks(self) -> tuple:
        return self._prechecks

    def __or__(self, other: Policy) -> Policy:
        if not isinstance(other, Policy):
            return NotImplemented
        merged = Policy(limits=self.limits if self.limits is not DEFAULT_LIMITS else other.limits)
        merged._names = self._names | other._names
        merged._modules = self._modules | other._modules
        # A name allowed explicitly by either side gets the real object, not a stand-in.
        merged._substitutes = {
            name: sub for name, sub in {**other._substitutes, **self._substitutes}.items()
            if not ((name in self._names and name not in self._substitutes)
                    or (name in other._names and name not in other._substitutes))}
        merged._rules = self._rules + tuple(r for r in other._rules if r not in self._rules)
        merged._prechecks = self._prechecks + tuple(
            c for c in other._prechecks if c not in self._prechecks)
        return merged

    def with_limits(self, limits: Limits) -> Policy:
        copy = self | Policy()
        copy.limits = limits
        return copy

    @property
    def names(self) -> frozenset[str]:
        return self._names

    @property
    def modules(self) -> frozenset[str]:
        return self._modules

    def allows(self, module: str, qualname: str) -> bool:
        """Whether the global ``module.qualname`` may be loaded (by name; see ``resolve``)."""
        if f"{module}.{qualname}" in self._names:
            return True
        return self._allows_module(module)

    def _allows_module(self, module: str) -> bool:
        if not self._modules:
            return False
        while True:
            if module in self._modules:
                return True
            module, dot, _ = module.rpartition(".")
            if not dot:
                return False

    def loads_plainly(self, module: str, qualname: str) -> bool:
        """Whether the global is allowed and loads as itself (no checked stand-in), so that
        the C engine's own import of the name yields exactly what ``resolve`` would."""
        key = (module, qualname)
        plain = self._plain.get(key)
        if plain is None:
            plain = f"{module}.{qualname}" not in self._substitutes \
                and (module, qualname) not in LAZY_ITERABLES
            if plain:
                try:
                    self.resolve(module, qualname)
                except Exception:
                    plain = False
            if len(self._plain) < 4096:
                self._plain[key] = plain
        return plain

    def resolve(self, module: str, qualname: str) -> Any:
        """Import and return the global ``module.qualname`` if the policy allows it.

        Raises ``UnsafeGlobalError`` when it does not (the caller adds the stream context).
        What a policy resolved once it returns again without the walk: a policy never
        changes, and loads of many small pickles name the same few globals again and again.
        """
        key = (module, qualname)
        try:
            return self._resolved[key]
        except KeyError:
            pass
        obj = self._resolve(module, qualname)
        if len(self._resolved) < 4096:
            self._resolved[key] = obj
        return obj

    def _resolve(self, module: str, qualname: str) -> Any:
        dotted = f"{module}.{qualname}"
        substitute = self._substitutes.get(dotted)
        if substitute is not None:
            # A stand-in that must consult the policy (getattr) is bound to it here.
            bind = getattr(substitute, "bind", None)
            return substitute if bind is None else bind(self)
        exact = dotted in self._names
        if not exact and not self._allows_module(module):
            for rule in self._rules:
                found = rule(module, qualname)
                if found is not None:
                    return found
            raise UnsafeGlobalError(f"global {dotted} is not allowed", [(dotted, None)])
        parts = qualname.split(".")
        if len(parts) > 1 and any(_is_dunder(part) for part in parts):
            raise UnsafeGlobalError(
                f"global {dotted} walks through a dunder attribute, which no policy allows",
                [(dotted, None)])
        obj: Any = _import(module)
        for i, part in enumerate(parts):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise AttributeError(
                    f"Can't get attribute {qualname!r} on module {module!r}") from None
            if isinstance(obj, types.ModuleType) and not exact:
                # The walk entered another module: the rest of the name must be allowed
                # there, or "allowed_pkg.os.system" would reach os.system.
                rest = ".".join(parts[i + 1:]) or "*"
                if not self.allows(obj.__name__, rest):
                    raise UnsafeGlobalError(
                        f"global {dotted} reaches module {obj.__name__}, where {rest} is not "
                        "allowed", [(dotted, None)])
        if not exact:
            # Allowed only through a module wildcard: a function or class that the module
            # merely re-exports (``from os import system``) must be allowed where it lives.
            home = getattr(obj, "__module__", None)
            if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)) \
                    and isinstance(home, str) and not self._allows_module(home) \
                    and f"{home}.{getattr(obj, '__qualname__', '')}" not in self._names:
                raise UnsafeGlobalError(
                    f"global {dotted} is {home}.{getattr(obj, '__qualname__', '?')}, "
                    f"re-exported from a module that is not allowed", [(dotted, None)])
        return obj


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _import(module: str):
    found = sys.modules.get(module)
    if found is not None:
        return found
    return importlib.import_module(module)


_DEFAULT = Policy(SAFE_DATA_NAMES, substitutes=SAFE_SUBSTITUTES)


def default_policy() -> Policy:
    return _DEFAULT
