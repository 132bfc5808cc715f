"""Scan: what a file of pickles would do if it were loaded, found without loading it.

``scan(source, policy=...)`` returns a ``ScanReport`` whose verdict follows from the policy:

* ``safe``: everything the file's pickles name is allowed, and used the way the policy's
  checked stand-ins accept: loading it under that policy succeeds without a refusal;
* ``needs-allow``: it names globals outside the policy that are not known to be dangerous
  (a user's own class, most often); each finding says which ``allow=`` entry admits it;
* ``malformed``: a stream is broken, or a container is damaged: loading fails somewhere.
  What a broken stream would have run before it breaks is reported as well;
* ``dangerous``: something outside the policy that can run code or reach the system, a
  resource bomb, or a way to hide data from scanners (overlapping zip entries, a name
  computed at run time, an unregistered extension code).

The worst finding decides the verdict.  A table of known-dangerous names
(``mason.analysis.dangers``) only adds severity and explanations: a name outside the policy
is reported whether it is listed there or not.

How a stream is read, fast first: a compiled one-pass survey (``mason._scan``, or its
pure-Python twin ``_survey``) collects the globals, the calls of checked stand-ins with their
arguments, and the persistent ids, for the usual well-formed pickle; for anything else --
a broken stream, a computed name, an argument the survey does not model -- the symbolic machine
(``mason.format.machine``) runs the stream on placeholders.  Neither imports nor calls
anything from the data.  The limits check that loading applies (``mason.limits``) runs too.

Order of the checks for each global, as loading applies them: Python 2 names are mapped
(protocols 0-2), then the policy: a checked stand-in, an exact name, a module wildcard.
"""

from __future__ import annotations

import _compat_pickle
import enum
import mmap
import os
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import _safe_constructors as _sc
from ..errors import LimitError, MalformedPickleError
from ..format.reader import Payload
from ..limits import DEFAULT_LIMITS, Limits
from ..policy import Policy
from . import checks as _checks
from . import containers as _c
from . import dangers
from ._survey import COMPLETE, OPAQUE, GlobalRef

try:
    from .._scan import survey as _survey
except ImportError:  # not built: the reference survey gives identical results
    from ._survey import survey as _survey

try:
    from .._limits import check as _limits_check
except ImportError:
    from ..limits import check as _limits_check

__all__ = ["scan", "scan_paths", "ScanReport", "Finding", "PickleInfo", "Verdict",
           "policy_from_pickle", "allow_entries", "resolve_policy", "DEFAULT_MAX_SIZE",
           "PICKLE_EXTENSIONS"]

DEFAULT_MAX_SIZE = 4 << 30
"""Largest decompressed member (bytes) a scan unpacks; past it the file is a resource bomb."""
MAX_NESTING = 8
"""Deepest nesting of containers (a zip in a tar in a gzip...) a scan follows."""
DETAIL_LIMIT = 1 << 20
"""Streams up to this size get their calls rendered (``Finding.detail``) when they are not
safe; larger ones are reported by name only."""

PICKLE_EXTENSIONS = frozenset({
    ".pkl", ".pickle", ".pck", ".pcl", ".p", ".pt", ".pth", ".bin", ".ckpt", ".joblib",
    ".npy", ".npz", ".dat", ".data", ".sav", ".model", ".gz", ".bz2", ".xz", ".lzma",
    ".zst", ".z", ".zip", ".tar", ".tgz", ".mar", ".pkl.gz", ".pth.tar", ".lz4",
})


class Verdict(str, enum.Enum):
    """A scan's verdict, from best to worst.  Compares by severity."""

    SAFE = "safe"
    NEEDS_ALLOW = "needs-allow"
    MALFORMED = "malformed"
    DANGEROUS = "dangerous"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def __str__(self) -> str:
        return self.value


_RANK = {Verdict.SAFE: 0, Verdict.NEEDS_ALLOW: 1, Verdict.MALFORMED: 2, Verdict.DANGEROUS: 3}
NOTE = "note"   # a finding's severity that informs without changing the verdict
NOT_ALLOWED = "not allowed"
MALFORMED = "malformed"
ARCHIVE = "archive"
EXTERNAL = "external reference"


@dataclass
class Finding:
    """One thing a scan found.

    ``severity`` is the verdict this finding alone would give (or ``"note"``); ``category``
    why it matters (``dangers.CATEGORIES``, or "not allowed", "malformed", "archive",
    "external reference"); ``name`` the global or operation; ``offset`` the byte offset in
    the stream (of ``member`` inside a container, "" at the top); ``allow`` the policy entry
    that would allow it, when allowing it is reasonable; ``detail`` what it would call, when
    the scan rendered it; ``count`` how many times it occurs (only the first is listed).
    """

    severity: str
    category: str
    name: str | None
    message: str
    offset: int | None = None
    member: str = ""
    allow: str | None = None
    opcode: str | None = None
    detail: str | None = None
    count: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "category": self.category, "name": self.name,
                "message": self.message, "offset": self.offset, "member": self.member,
                "allow": self.allow, "opcode": self.opcode, "detail": self.detail,
                "count": self.count}

    def __str__(self) -> str:
        where = []
        if self.member:
            where.append(self.member)
        if self.offset is not None:
            where.append(f"byte {self.offset}")
        text = f"{self.severity}: {self.name + ': ' if self.name else ''}{self.message}"
        if where:
            text += f" ({', '.join(where)})"
        if self.count > 1:
            text += f" [{self.count} times]"
        if self.detail:
            text += f"\n    {self.detail}"
        if self.allow and self.severity in ("needs-allow", "dangerous"):
            text += f"\n    allow with: {self.allow}"
        return text


@dataclass
class PickleInfo:
    """One pickle stream the scan read: where it is, and what it names."""

    member: str
    start: int
    end: int
    protocol: int
    complete: bool
    globals: list[str]
    context: str = "pickle"   # "pickle", "torch", "torch-legacy", "joblib", "npy"
    machine: bool = False     # read by the symbolic machine rather than the survey

    def to_dict(self) -> dict[str, Any]:
        return {"member": self.member, "start": self.start, "end": self.end,
                "protocol": self.protocol, "complete": self.complete,
                "globals": self.globals, "context": self.context}


@dataclass
class ScanReport:
    """What ``scan`` found in one file (or buffer)."""

    source: str
    verdict: Verdict
    findings: list[Finding]
    format: str
    pickles: list[PickleInfo]
    size: int
    policy: Policy | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when the verdict is ``safe``."""
        return self.verdict is Verdict.SAFE

    @property
    def globals(self) -> list[str]:
        """Every global the file's pickles name (after Python 2 name mapping), sorted."""
        return sorted({name for p in self.pickles for name in p.globals})

    @property
    def allow(self) -> list[str]:
        """The ``allow=`` entries that would admit every refused name, sorted."""
        return sorted({f.allow for f in self.findings
                       if f.allow and f.severity in ("needs-allow", "dangerous")})

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "verdict": self.verdict.value, "format": self.format,
                "size": self.size, "findings": [f.to_dict() for f in self.findings],
                "pickles": [p.to_dict() for p in self.pickles], "globals": self.globals,
                "allow": self.allow}

    def __str__(self) -> str:
        lines = [f"{self.source}: {self.verdict.value} ({self.format}, "
                 f"{len(self.pickles)} pickle{'s' if len(self.pickles) != 1 else ''})"]
        for finding in self.findings:
            lines.append("  " + str(finding).replace("\n", "\n  "))
        return "\n".join(lines)


# --- policies -----------------------------------------------------------------------------------

def resolve_policy(policy: Policy | None = None, allow: Iterable[str] | None = None,
                   preset: str | Iterable[str] | None = None) -> Policy:
    """The policy a scan applies: ``policy`` (default: ``Policy.default()``), plus the named
    presets, plus ``allow``.  An unknown preset, or presets before mason has them, raise
    ``ValueError`` saying so."""
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"policy must be a mason.Policy, not {type(policy).__name__}")
    preset, allow = _entries(preset), _entries(allow)
    key = (id(policy), preset, allow)
    cached = _RESOLVED.get(key)
    if cached is not None and cached[0] is policy:
        return cached[1]
    made = _resolve(policy, allow, preset)
    if len(_RESOLVED) >= 64:
        _RESOLVED.clear()
    _RESOLVED[key] = (policy, made)   # the policy is held: its id stays its own
    return made


_RESOLVED: dict[tuple, tuple[Policy | None, Policy]] = {}


def _entries(value) -> tuple:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _resolve(policy, allow, preset) -> Policy:
    if policy is None:
        policy = Policy.default()
    if preset:
        names = [preset] if isinstance(preset, str) else list(preset)
        make = getattr(Policy, "preset", None)
        unavailable = (f"presets are not available in this version of mason (asked for "
                       f"{', '.join(map(repr, names))}): pass the names to allow instead")
        if make is None:
            raise ValueError(unavailable)
        for name in names:
            try:
                policy = policy | make(name)
            except ImportError:
                raise ValueError(unavailable) from None
            except (KeyError, LookupError, ValueError) as exc:
                raise ValueError(f"unknown preset {name!r}: {exc}") from None
    if allow:
        entries = [allow] if isinstance(allow, str) else list(allow)
        policy = policy | Policy(entries)
    return policy


def _fix_python2(module: str, name: str) -> tuple[str, str]:
    # As the unpickler does for protocols 0-2 (fix_imports=True, pickle's default).
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _policy_view(policy: Policy):
    """(substitutes, watch set, status cache) of a policy, made once per policy: a scan of a
    thousand small files must not redo it a thousand times (a policy never changes)."""
    try:
        return _VIEWS[policy]
    except (KeyError, TypeError):
        pass
    substitutes = dict(getattr(policy, "_substitutes", {}) or {})
    watch: set[tuple[str, str]] = set()
    for dotted in substitutes:
        module, _, name = dotted.rpartition(".")
        watch |= _python2_spellings(module, name)
    view = (substitutes, frozenset(watch), {})
    try:
        _VIEWS[policy] = view
    except TypeError:
        pass
    return view


def _python2_spellings(module: str, name: str) -> set[tuple[str, str]]:
    """Every (module, name) a protocol 0-2 stream may spell to reach ``module.name``."""
    found = {(module, name)}
    found.update(_NAME_SOURCES.get((module, name), ()))
    for old in _MODULE_SOURCES.get(module, ()):
        if (old, name) not in _compat_pickle.NAME_MAPPING:
            found.add((old, name))
    return found


_NAME_SOURCES: dict[tuple[str, str], list[tuple[str, str]]] = {}
for _old, _new in _compat_pickle.NAME_MAPPING.items():
    _NAME_SOURCES.setdefault(_new, []).append(_old)
_MODULE_SOURCES: dict[str, list[str]] = {}
for _old, _new in _compat_pickle.IMPORT_MAPPING.items():
    _MODULE_SOURCES.setdefault(_new, []).append(_old)
del _old, _new


def _is_dunder(part: str) -> bool:
    return len(part) > 4 and part.startswith("__") and part.endswith("__")


# --- the facts of one stream, from the survey or the machine --------------------------------------

class _Facts:
    """What one stream names, calls and asks for: the scanner's input, from either source."""

    __slots__ = ("globals", "calls", "pids", "buffers", "unresolved", "error", "end",
                 "protocol", "machine", "run", "nodes", "jumps")

    def __init__(self):
        self.globals: list[tuple[str, str, int, str]] = []
        self.calls: list[tuple[int, int, str, Any, Any]] = []
        self.pids: list[tuple[int, str, Any]] = []
        self.buffers = 0
        self.unresolved: list = []
        self.error: MalformedPickleError | None = None
        self.end = 0
        self.protocol = 0
        self.machine = False
        self.run = None
        self.nodes: dict[int, int] = {}   # id(Global node) -> index in globals (machine)
        self.jumps: dict[int, int] = {}   # joblib: array data from offset -> to offset

    @classmethod
    def from_survey(cls, result) -> _Facts:
        facts = cls()
        _, facts.end, facts.protocol, facts.globals, facts.calls, facts.pids, \
            facts.buffers = result
        return facts

    @classmethod
    def from_run(cls, run, watch) -> _Facts:
        from ..format.machine import Global
        facts = cls()
        facts.machine, facts.run = True, run
        for index, node in enumerate(run.globals):
            facts.globals.append((node.module, node.name, node.offset, node.opcode_name))
            facts.nodes[id(node)] = index
        for call in run.calls:
            func = call.func
            if isinstance(func, Global) and (func.module, func.name) in watch:
                facts.calls.append((facts.nodes[id(func)], call.offset, call.kind, call.args,
                                    call.kwargs))
        facts.pids = [(ref.offset, ref.opcode_name, ref.pid) for ref in run.persistent]
        facts.buffers = len(run.buffers)
        facts.unresolved = list(run.unresolved)
        facts.error = run.error
        facts.end = run.end
        facts.protocol = run.protocol
        return facts

    def global_of(self, value) -> tuple[str, str] | None:
        """(module, name) as spelled, if ``value`` is a global of this stream."""
        if type(value) is GlobalRef:
            entry = self.globals[value]
            return entry[0], entry[1]
        index = self.nodes.get(id(value)) if self.machine else None
        if index is not None:
            entry = self.globals[index]
            return entry[0], entry[1]
        return None


# --- the scanner --------------------------------------------------------------------------------

class _Scanner:
    def __init__(self, policy: Policy, limits: Limits | None, max_size: int,
                 details: bool = True, machine_only: bool = False):
        self.policy = policy
        self.limits = limits or getattr(policy, "limits", None) or DEFAULT_LIMITS
        self.max_size = max_size
        self.details = details
        self.machine_only = machine_only   # for the tests: read every stream with the machine
        view = _policy_view(policy)
        self.substitutes, self.watch, self._status = view
        self.findings: list[Finding] = []
        self.pickles: list[PickleInfo] = []
        self.visitor = None   # called with (data, start, member, context, facts) per stream
        self._member = ""

    # Findings.

    def add(self, severity: str, category: str, name: str | None, message: str, *,
            offset: int | None = None, member: str | None = None, allow: str | None = None,
            opcode: str | None = None, detail: str | None = None, into: list | None = None):
        finding = Finding(severity, category, name, message, offset,
                          self._member if member is None else member, allow, opcode, detail)
        (self.findings if into is None else into).append(finding)
        return finding

    # Names under the policy.

    def status(self, module: str, name: str) -> tuple[str, Any]:
        """How the policy takes ``module.name`` (already mapped from Python 2):
        ("substitute", stand-in), ("allowed", None), ("wildcard", None), ("dunder", None) or
        ("refused", None)."""
        key = (module, name)
        found = self._status.get(key)
        if found is None:
            found = self._status[key] = self._decide(module, name)
        return found

    def _decide(self, module: str, name: str) -> tuple[str, Any]:
        dotted = f"{module}.{name}"
        substitute = self.substitutes.get(dotted)
        if substitute is not None:
            return ("substitute", substitute)
        exact = dotted in self.policy.names
        if not exact and not self.policy.allows(module, name):
            # A preset's rules admit names by looking at the object, which means importing
            # it; the scan decides from the name alone (see _rule_admits).
            for rule in getattr(self.policy, "_rules", ()):
                if _rule_admits(rule, module, name):
                    return ("allowed", None)
            return ("refused", None)
        parts = name.split(".")
        if len(parts) > 1 and any(_is_dunder(part) for part in parts):
            return ("dunder", None)
        return ("allowed", None) if exact else ("wildcard", None)

    def name_finding(self, module: str, name: str, via: str | None = None):
        """The finding (severity, category, message, allow) for the global ``module.name``
        under the policy, or None when it loads (a note goes straight to the findings)."""
        dotted = f"{module}.{name}"
        state, _ = self.status(module, name)
        known = dangers.classify(module, name)
        prefix = f"{via} looks up {dotted}: " if via else ""
        if state == "refused":
            if known:
                return ("dangerous", known[0], f"{prefix}{known[1]}; not allowed by the "
                        f"policy", dotted)
            return ("needs-allow", NOT_ALLOWED, f"{prefix}not allowed by the policy: loading "
                    f"imports it and may call it; allow it if you trust it", dotted)
        if state == "dunder":
            return ("dangerous", dangers.GADGET, f"{prefix}walks through a dunder attribute, "
                    f"which reaches anything; no policy allows it", None)
        if state == "wildcard":
            parts = name.split(".")
            walked = [p for p in parts[:-1] if p in dangers.WALK_MODULES]
            if walked:
                return ("dangerous", dangers.GADGET, f"{prefix}walks through {walked[0]!r} "
                        f"from a module allowed by wildcard: it reaches another module "
                        f"(loading refuses it)", dotted)
            if known:
                return ("dangerous", known[0], f"{prefix}{known[1]}; it is allowed only "
                        f"through a module wildcard: name it exactly to accept it", dotted)
        if state == "allowed" and known:
            return (NOTE, known[0], f"{prefix}{known[1]}; the policy allows it by name",
                    dotted)
        return None

    # Containers.

    def explore(self, data, member: str, depth: int = 0) -> str:
        """Scan everything in ``data`` (reached as ``member``); return its format."""
        self._member = member
        if depth > MAX_NESTING:
            self.add("malformed", ARCHIVE, None, f"containers nest deeper than {MAX_NESTING} "
                     f"levels: not followed further", member=member)
            return "nested"
        kind = _c.sniff(data)
        if kind in _c.COMPRESSED:
            try:
                inner = _c.decompress(data, kind, self.max_size)
            except _c.TooLarge:
                self.add("dangerous", dangers.BOMB, None, f"the {kind} data decompresses to "
                         f"more than {self.max_size} bytes (a decompression bomb, or raise "
                         f"max_size)", member=member)
                return kind
            except ImportError as exc:
                module = {"zstd": "zstandard", "lz4": "lz4"}.get(kind, kind)
                self.add("malformed", ARCHIVE, None, f"{kind} data cannot be checked: "
                         f"{exc}; install {module}", member=member)
                return kind
            except ValueError as exc:
                self.add("malformed", ARCHIVE, None, f"the {kind} data is damaged: {exc}",
                         member=member)
                return kind
            return f"{kind}/{self.explore(inner, member, depth + 1)}"
        if kind == "zip":
            return self._zip(data, member, depth)
        if kind == "tar":
            return self._tar(data, member, depth)
        if kind == "npy":
            return self._npy(data, member)
        fmt = self._pickles(data, member, "pickle")
        if _c.has_zip_directory(data):
            try:
                listing = _c.read_zip(data, member)
            except (_zipfile_errors()) as exc:
                del exc
                return fmt
            listing.archive.close()
            self.add("malformed", ARCHIVE, None, "the file is both a pickle and a zip archive "
                     "(a polyglot): loaders that open it as an archive see other data; both "
                     "are scanned", member=member)
            self._zip(data, member, depth)
            return f"{fmt}+zip"
        return fmt

    def _zip(self, data, member: str, depth: int) -> str:
        try:
            listing = _c.read_zip(data, member)
        except _zipfile_errors() as exc:
            self.add("malformed", ARCHIVE, None, f"the zip archive is damaged: {exc}",
                     member=member)
            return "zip"
        try:
            for where, severity, message, offset in listing.issues:
                self.add(severity, ARCHIVE, None, message, offset=offset, member=where)
            archives = _c.torch_archives(listing.entries)
            npz = bool(listing.entries) and all(e.name.endswith(".npy")
                                                for e in listing.entries)
            for entry in listing.entries:
                if entry.info.is_dir():
                    continue
                where = f"{member}!{entry.name}" if member else entry.name
                prefix, slash, rest = entry.name.partition("/")
                archive = archives.get(prefix) if slash else None
                if archive is not None and (archive.is_storage(rest)
                                            or archive.is_metadata(rest)) \
                        and rest != "data.pkl":
                    continue   # raw storage bytes and small text records: never unpickled
                if archive is None and not self._candidate(listing, entry, data):
                    continue
                try:
                    content = _c.zip_member(listing, entry, data, self.max_size)
                except _c.TooLarge:
                    self.add("dangerous", dangers.BOMB, None, f"the entry decompresses to "
                             f"more than {self.max_size} bytes", member=where)
                    continue
                except ValueError as exc:
                    self.add("malformed", ARCHIVE, None, f"the entry cannot be read: {exc}",
                             member=where)
                    continue
                if archive is not None and rest.endswith(".pkl"):
                    self._member = where
                    self._pickles(content, where, "torch", torch=archive)
                else:
                    self.explore(content, where, depth + 1)
            if archives:
                return "torch"
            return "npz" if npz else "zip"
        finally:
            listing.archive.close()

    def _candidate(self, listing, entry, data) -> bool:
        """Whether a zip entry may hold pickles: by its name, or by its first bytes."""
        name = entry.name.lower()
        if any(name.endswith(ext) for ext in PICKLE_EXTENSIONS):
            return True
        try:
            head = bytes(_c.zip_member(listing, entry, data, 1 << 62)[:8]) \
                if entry.info.compress_type == 0 else _peek(listing, entry)
        except (ValueError, _c.TooLarge):
            return True   # unreadable: reading it again reports why
        return _looks_like_pickle(head) or _c.sniff(head) != "pickle"

    def _tar(self, data, member: str, depth: int) -> str:
        for where, content, problem in _c.read_tar(data, member, self.max_size):
            if problem == "too large":
                self.add("dangerous", dangers.BOMB, None, f"the member is larger than "
                         f"{self.max_size} bytes", member=where)
            elif problem:
                self.add("malformed", ARCHIVE, None, problem, member=where)
            else:
                name = where.lower()
                if any(name.endswith(ext) for ext in PICKLE_EXTENSIONS) \
                        or _looks_like_pickle(bytes(content[:8])) \
                        or _c.sniff(content) != "pickle":
                    self.explore(content, where, depth + 1)
        return "tar"

    def _npy(self, data, member: str) -> str:
        info = _c.read_npy(data)
        if info.problem:
            self.add("malformed", MALFORMED, None, info.problem, member=member)
        if info.pickle_at is not None:
            self._pickles(data, member, "npy", start=info.pickle_at, single=True)
        return "npy"

    # Pickles.

    def _pickles(self, data, member: str, context: str, *, start: int = 0,
                 single: bool = False, torch: _c.TorchArchive | None = None) -> str:
        """Scan the pickles written one after another from ``start`` to the end of ``data``
        (just one if ``single``); return the format."""
        self._member = member
        n = len(data)
        if start >= n:
            self.add("malformed", MALFORMED, None, "empty: there is no pickle here",
                     offset=start, member=member)
            return context
        pos, count = start, 0
        fmt = context
        while True:
            end, info = self._stream(data, pos, member, context, torch, trailing=count > 0)
            if info is None:
                break
            count += 1
            if info.context == "joblib":
                fmt = "joblib"
            if count == 1 and context == "pickle" and end is not None and end < n and \
                    self._is_torch_magic(data, pos, end, info):
                self._torch_legacy(data, end, member)
                return "torch-legacy"
            if end is None or single or end >= n:
                break
            pos = end
        return fmt if count <= 1 else f"{fmt} ({count} pickles)"

    def _is_torch_magic(self, data, start: int, end: int, info: PickleInfo) -> bool:
        if end - start > 64 or info.globals:
            return False
        from ..format.machine import simulate
        run = simulate(data, start)
        return run.ok and run.value == _c.TORCH_MAGIC

    def _stream(self, data, start: int, member: str, context: str,
                torch: _c.TorchArchive | None, trailing: bool = False):
        """Scan the pickle at ``start``.  Returns (end, PickleInfo), end None if it broke;
        (None, None) when there is no pickle at all there (trailing data)."""
        from ..format.machine import simulate

        # Torch's persistent ids are tuples the checks read: model tuples from the start.
        result = None if self.machine_only else _survey(
            data, start, self.watch, context in ("torch", "torch-legacy"))
        joblib = result is not None and any(
            (g[0], g[1]) in _c.JOBLIB_WRAPPERS for g in result[3])
        found: list[Finding] = []
        facts = None
        if result is not None and result[0] == COMPLETE and not joblib:
            facts = _Facts.from_survey(result)
            if not self._evaluate(facts, member, context, torch, found):
                facts = None
                found = []
        if facts is None:
            run = simulate(data, start)
            if not joblib and any((g.module, g.name) in _c.JOBLIB_WRAPPERS
                                  for g in run.globals):
                joblib = True
            jumps: dict[int, int] = {}
            if joblib:
                plain = run
                run = simulate(data, start, after_build=self._joblib_hook(data, member, jumps))
                context = "joblib"
            facts = _Facts.from_run(run, self.watch)
            facts.jumps = jumps
            if trailing and facts.error is not None and not facts.globals \
                    and facts.end == start:
                self.add("malformed", MALFORMED, None, f"{len(data) - start} bytes after the "
                         f"last pickle are not a pickle", offset=start, member=member)
                return None, None
            self._evaluate(facts, member, context, torch, found)
            if joblib:
                self._joblib_polyglot(plain, run, member, found)
        if facts.error is None and context != "joblib":
            self._check_limits(data, start, facts.end, member, found)
            self._prechecks(data, start, facts.end, facts.protocol, member, found)
        if self.details and facts.globals and (facts.end - start) <= DETAIL_LIMIT \
                and any(f.severity in ("dangerous", "needs-allow") and f.offset is not None
                        for f in found):
            self._render_details(data, start, facts, found)
        self.findings.extend(found)
        if self.visitor is not None:
            self.visitor(data, start, member, context, facts)
        complete = facts.error is None
        names = sorted({_dotted(*self.fixed(g[0], g[1], facts.protocol))
                        for g in facts.globals})
        info = PickleInfo(member, start, facts.end, facts.protocol, complete, names, context,
                          facts.machine)
        self.pickles.append(info)
        return (facts.end if complete else None), info

    def fixed(self, module: str, name: str, protocol: int) -> tuple[str, str]:
        return _fix_python2(module, name) if protocol < 3 else (module, name)

    def _evaluate(self, facts: _Facts, member: str, context: str,
                  torch: _c.TorchArchive | None, found: list[Finding]) -> bool:
        """Turn a stream's facts into findings.  False when the facts come from the survey
        and a check needs what only the machine knows."""
        protocol = facts.protocol
        for module, name, offset, opcode in facts.globals:
            module, name = self.fixed(module, name, protocol)
            verdict = self.name_finding(module, name)
            if verdict is not None:
                severity, category, message, allow = verdict
                self.add(severity, category, _dotted(module, name), message, offset=offset,
                         member=member, allow=allow, opcode=opcode, into=found)
            if opcode.startswith("EXT") and self.status(module, name)[0] == "substitute":
                self.add("needs-allow", NOT_ALLOWED, _dotted(module, name),
                         f"extension code names {_dotted(module, name)}, which the policy "
                         f"admits only through a checked stand-in; extension codes resolve "
                         f"through a cache shared by the whole process, so loading refuses "
                         f"it", offset=offset, member=member, allow=_dotted(module, name),
                         opcode=opcode, into=found)
        for index, offset, opcode, args, kwargs in facts.calls:
            module, name = self.fixed(facts.globals[index][0], facts.globals[index][1],
                                       protocol)
            state, stand_in = self.status(module, name)
            if state != "substitute" or opcode in ("NEWOBJ", "NEWOBJ_EX"):
                continue   # NEWOBJ needs a class: it never calls a stand-in (a function)
            if args is OPAQUE and not facts.machine:
                return False
            if type(args) is not tuple:
                continue   # loading raises TypeError: REDUCE needs a tuple
            check = _checks.check_for(stand_in)
            if check is not None:
                outcome = check(_checks.Call(self, facts, module, name, context, torch,
                                             offset), args)
            else:
                outcome = self._foreign_check(stand_in, facts, module, name, args, kwargs)
            if outcome is _checks.NEED:
                if not facts.machine:
                    return False
                outcome = ("needs-allow", NOT_ALLOWED, f"{_dotted(module, name)} is called "
                           f"with arguments the scan cannot check", None)
            if outcome is not None:
                severity, category, message, allow = outcome[:4]
                shown = outcome[4] if len(outcome) > 4 else _dotted(module, name)
                self.add(severity, category, shown, message, offset=offset, member=member,
                         allow=allow, opcode=opcode, into=found)
        if self._lazy_names(facts):
            if not facts.machine:
                return False
            self._check_lazy_iterables(facts, member, found)
        for node in facts.unresolved:
            self._unresolved(node, member, found)
        if facts.pids:
            if context in ("torch", "torch-legacy"):
                for offset, opcode, pid in facts.pids:
                    if not self._torch_pid(pid, facts, torch, context, member, offset, found):
                        return False
            else:
                offset, opcode, _ = facts.pids[0]
                self.add(NOTE, EXTERNAL, opcode, "the stream holds persistent ids: loading "
                         "needs a persistent_load hook, which decides what they stand for "
                         "(mason.loads has none and refuses them)", offset=offset,
                         member=member, opcode=opcode, into=found)
                found[-1].count = len(facts.pids)
        if facts.buffers:
            self.add(NOTE, EXTERNAL, "NEXT_BUFFER", f"the stream takes {facts.buffers} "
                     f"out-of-band buffer{'s' if facts.buffers > 1 else ''}: loading needs "
                     f"buffers=", member=member, into=found)
        if facts.error is not None:
            self.add("malformed", MALFORMED, None, str(facts.error), offset=facts.error.offset,
                     member=member, into=found)
        return True

    def _foreign_check(self, stand_in, facts: _Facts, module: str, name: str, args, kwargs):
        """A stand-in of another part of mason (a preset's): it checks its arguments when
        loading, and says what it would refuse through ``scan_check(args, kwargs)``, given
        the machine's values (Global nodes, Calls, literals); it returns None to accept,
        a message to refuse.  Without that, the scan cannot know and does not say safe."""
        dotted = _dotted(module, name)
        scan_check = getattr(stand_in, "scan_check", None)
        if scan_check is None:
            return ("needs-allow", NOT_ALLOWED, f"{dotted} loads through a checked stand-in "
                    f"whose checks the scan cannot apply; loading checks its arguments",
                    None)
        if not facts.machine:
            return _checks.NEED
        try:
            refusal = scan_check(args, kwargs)
        except Exception as exc:  # noqa: BLE001 - a check that cannot decide
            return ("needs-allow", NOT_ALLOWED, f"{dotted}: the scan cannot check its "
                    f"arguments ({exc})", None)
        if refusal:
            return ("dangerous", dangers.CODE, f"{dotted}: {refusal} (the stand-in refuses "
                    f"it when loading)", None)
        return None

    def _lazy_names(self, facts: _Facts) -> bool:
        return bool(_LAZY) and bool(facts.globals) and any(
            self.fixed(g[0], g[1], facts.protocol) in _LAZY for g in facts.globals)

    def _check_lazy_iterables(self, facts: _Facts, member: str, found: list) -> None:
        """As loading does: refuse a constructor that iterates an IP network (which may hold
        2**128 addresses) the stream built (mason.unpickler's _check_lazy_iterables)."""
        from ..format.machine import Call
        lazy_names = _policy_constant("LAZY_ITERABLES")
        iterating = _policy_constant("ITERATING_CONSTRUCTORS")
        run = facts.run

        def name_of(node):
            found_name = facts.global_of(node)
            return None if found_name is None else self.fixed(*found_name, facts.protocol)

        def makes_lazy(call) -> bool:
            first = call.args[0] if isinstance(call.args, tuple) and call.args else None
            return name_of(call.func) in lazy_names or name_of(first) in lazy_names

        lazy = {id(call) for call in run.calls if makes_lazy(call)}
        for call in run.calls:
            if name_of(call.func) in iterating and isinstance(call.args, tuple):
                for arg in call.args:
                    if isinstance(arg, Call) and id(arg) in lazy:
                        func = ".".join(name_of(call.func))
                        self.add("dangerous", dangers.BOMB, func, f"{func}() would iterate an "
                                 f"IP network built at byte {arg.offset}: a network may hold "
                                 f"up to 2**128 addresses (loading refuses it)",
                                 offset=call.offset, member=member, into=found)

    def _prechecks(self, data, start: int, end: int, protocol: int, member: str,
                   found: list) -> None:
        """The policy's own readings of a stream before it loads (a preset's check of numpy
        dtypes), given a find_class that resolves names from the policy's lists without
        importing anything."""
        prechecks = getattr(self.policy, "_prechecks", ())
        if not prechecks:
            return
        from ..errors import UnsafeGlobalError
        stream_bytes = bytes(memoryview(data)[start:end])

        def find_class(module, name):
            module, name = self.fixed(module, name, protocol)
            state, stand_in = self.status(module, name)
            if state == "substitute":
                return stand_in
            if state in ("allowed", "wildcard"):
                return _ADMITTED
            raise UnsafeGlobalError(f"global {module}.{name} is not allowed")

        for precheck in prechecks:
            try:
                precheck(stream_bytes, find_class)
            except UnsafeGlobalError as exc:
                self.add("dangerous", dangers.CODE, None, f"the policy's check before loading "
                         f"refuses it: {exc}", member=member, into=found)
            except LimitError as exc:
                self.add("dangerous", dangers.BOMB, None, f"the policy's check before loading "
                         f"refuses it: {exc}", member=member, into=found)
            except Exception as exc:  # noqa: BLE001 - loading would fail the same way
                self.add("needs-allow", NOT_ALLOWED, None, f"the policy's check before "
                         f"loading cannot run: {type(exc).__name__}: {exc}", member=member,
                         into=found)

    def _unresolved(self, node, member: str, found: list[Finding]) -> None:
        from ..format.machine import Extension
        if isinstance(node, Extension):
            self.add("dangerous", dangers.UNKNOWN, f"{node.opcode_name} {node.code}",
                     f"extension code {node.code} is not registered in this process: the "
                     f"loading process's copyreg registry decides what it imports",
                     offset=node.offset, member=member, opcode=node.opcode_name, into=found)
        else:
            self.add("dangerous", dangers.UNKNOWN, "STACK_GLOBAL",
                     "imports a name computed while loading (not spelled out in the stream): "
                     "it could be anything", offset=node.offset, member=member,
                     opcode="STACK_GLOBAL", into=found)

    def _torch_pid(self, pid, facts: _Facts, torch, context: str, member: str, offset: int,
                   found: list[Finding]) -> bool:
        size = 5 if context == "torch" else 6
        if not facts.machine and (pid is OPAQUE or (type(pid) is tuple
                                                    and any(p is OPAQUE for p in pid[:5]))):
            return False
        shape_ok = type(pid) is tuple and len(pid) == size and pid[0] == "storage" \
            and facts.global_of(pid[1]) is not None and type(pid[2]) is str \
            and type(pid[3]) is str and type(pid[4]) is int and pid[4] >= 0
        if not shape_ok:
            self.add("malformed", MALFORMED, "BINPERSID", "a persistent id that is not a torch "
                     "storage reference ('storage', type, key, location, size)",
                     offset=offset, member=member, opcode="BINPERSID", into=found)
            return True
        if torch is not None:
            record = torch.storage(pid[2])
            if record is None:
                self.add("malformed", MALFORMED, "BINPERSID", f"names storage "
                         f"data/{pid[2]}, which the archive lacks", offset=offset,
                         member=member, opcode="BINPERSID", into=found)
                return True
            elsize = _c.STORAGE_SIZES.get(facts.global_of(pid[1])[1])
            if elsize is not None and record.info.file_size < pid[4] * elsize:
                self.add("malformed", MALFORMED, "BINPERSID", f"storage data/{pid[2]} holds "
                         f"{record.info.file_size} bytes, but the pickle declares {pid[4]} "
                         f"elements of {elsize}", offset=offset, member=member,
                         opcode="BINPERSID", into=found)
        return True

    def _check_limits(self, data, start: int, end: int, member: str, found: list) -> None:
        # The check loading applies, on exactly the bytes loading would read.
        sliced = start != 0 or end != len(data)
        view = memoryview(data)[start:end] if sliced else data
        try:
            _limits_check(view, self.limits.max_depth, self.limits.memo_slack)
        except LimitError as exc:
            offset = exc.offset + start if exc.offset is not None else None
            self.add("dangerous", dangers.BOMB, None, str(exc), offset=offset, member=member,
                     into=found)
        finally:
            if sliced:
                view.release()

    def _render_details(self, data, start: int, facts: _Facts, found: list[Finding]) -> None:
        from ..format.machine import simulate
        from .show import render_call
        run = facts.run if facts.machine else simulate(data, start)
        by_offset: dict[int, list] = {}
        for call in run.calls:
            func = call.func
            offset = getattr(func, "offset", None)
            if offset is not None:
                by_offset.setdefault(offset, []).append(call)
        for finding in found:
            if finding.severity not in ("dangerous", "needs-allow") or finding.offset is None:
                continue
            calls = by_offset.get(finding.offset)
            if calls:
                shown = list(dict.fromkeys(render_call(c, width=160) for c in calls))
                more = f" (+{len(shown) - 3} more)" if len(shown) > 3 else ""
                finding.detail = "; ".join(shown[:3]) + more

    # joblib

    def _joblib_hook(self, data, member: str, jumps: dict[int, int]):
        def nested(offset: int) -> int:
            where = f"{member} (object array at byte {offset})" if member \
                else f"object array at byte {offset}"
            saved = self._member
            end, info = self._stream(data, offset, where, "pickle", None)
            self._member = saved
            if end is None:
                raise _c.JoblibProblem("the object array's pickle is broken")
            return end

        hook = _c.joblib_hook(data, nested)

        def recording(target, state, end, stack):
            resume = hook(target, state, end, stack)
            if resume is not None:
                jumps[end] = resume
            return resume
        return recording

    def _joblib_polyglot(self, plain, run, member: str, found: list[Finding]) -> None:
        """What pickle.load (rather than joblib.load) would import from the same bytes."""
        seen = {g.offset for g in run.globals}
        for node in plain.globals:
            if node.offset in seen:
                continue
            module, name = self.fixed(node.module, node.name, plain.protocol)
            self.add("dangerous", dangers.CODE, _dotted(module, name), "read as a plain "
                     "pickle (pickle.load instead of joblib.load), the bytes joblib takes for "
                     "array data import this global", offset=node.offset, member=member,
                     opcode=node.opcode_name, into=found)

    # torch's legacy format

    def _torch_legacy(self, data, pos: int, member: str) -> None:
        """After the magic number: protocol version, system info, the data pickle (whose
        persistent ids name storages), the storage keys, then each storage's raw bytes."""
        from ..format.machine import simulate
        n = len(data)
        storages: dict[str, tuple[int, int | None]] = {}
        keys = None
        for index, context in ((1, "pickle"), (2, "pickle"), (3, "torch-legacy"),
                               (4, "pickle")):
            if pos >= n:
                self.add("malformed", MALFORMED, None, "torch's legacy format: the file ends "
                         "before its five pickles do", offset=pos, member=member)
                return
            start = pos
            end, info = self._stream(data, pos, member, context, None)
            if end is None:
                return
            run = simulate(data, start)
            if index == 3:
                for ref in run.persistent:
                    pid = ref.pid
                    if isinstance(pid, tuple) and len(pid) >= 5 and type(pid[2]) is str:
                        size = _c.STORAGE_SIZES.get(getattr(pid[1], "name", None))
                        storages[pid[2]] = (pid[4] if type(pid[4]) is int else -1, size)
            if index == 4:
                keys = run.value
            pos = end
        if not isinstance(keys, list) or not all(type(k) is str for k in keys):
            self.add("malformed", MALFORMED, None, "torch's legacy format: the storage keys "
                     "are not a list of strings", offset=pos, member=member)
            return
        for key in keys:
            numel, size = storages.get(key, (-1, None))
            if pos + 8 > n:
                self.add("malformed", MALFORMED, None, f"torch's legacy format: storage "
                         f"{key!r} is cut off", offset=pos, member=member)
                return
            count = int.from_bytes(bytes(data[pos:pos + 8]), "little")
            if size is None:
                self.add("malformed", MALFORMED, None, f"torch's legacy format: storage "
                         f"{key!r} has a type whose size is unknown; the bytes after it "
                         f"are not checked", offset=pos, member=member)
                return
            pos += 8 + count * size
            if pos > n:
                self.add("malformed", MALFORMED, None, f"torch's legacy format: storage "
                         f"{key!r} is cut off", offset=pos, member=member)
                return
        if pos != n:
            self.add("malformed", MALFORMED, None, f"torch's legacy format: {n - pos} bytes "
                     f"follow the last storage", offset=pos, member=member)

    # The report.

    def report(self, source: str, fmt: str, size: int) -> ScanReport:
        findings = _merge(self.findings)
        worst = Verdict.SAFE
        for finding in findings:
            if finding.severity != NOTE:
                verdict = Verdict(finding.severity)
                if verdict.rank > worst.rank:
                    worst = verdict
        order = {"dangerous": 0, "malformed": 1, "needs-allow": 2, NOTE: 3}
        findings.sort(key=lambda f: order[f.severity])
        return ScanReport(source, worst, findings, fmt, self.pickles, size, self.policy)


def _rule_admits(rule, module: str, name: str) -> bool:
    """Whether a preset's rule admits ``module.name``, judged from the name alone.

    A rule may say so itself (``rule.scan_allows(module, name)``).  The presets' rule for
    private module paths (``mason.presets.PublicNameRule``) admits ``<package>.<private
    module>.Name`` when ``Name`` is one of its public names and the path leads to the public
    object; the scan cannot follow the path without importing, so it admits the name when it
    has that shape, the module path walks through no dunder attribute and no module known to
    be dangerous, and it names one of the public names.  Loading still checks that the path
    leads to the public object, and refuses it otherwise.
    """
    decide = getattr(rule, "scan_allows", None)
    if decide is not None:
        return bool(decide(module, name))
    package, public = getattr(rule, "package", None), getattr(rule, "public", None)
    if not isinstance(package, str) or not isinstance(public, dict):
        return False
    if name not in public or not (module == package or module.startswith(package + ".")):
        return False
    if any(_is_dunder(part) for part in module.split(".")):
        return False
    return dangers.classify(module, name) is None


def _merge(findings: list[Finding]) -> list[Finding]:
    """One finding per (member, severity, category, name, message): the first, counted."""
    merged: dict[tuple, Finding] = {}
    for finding in findings:
        key = (finding.member, finding.severity, finding.category, finding.name,
               finding.message)
        first = merged.get(key)
        if first is None:
            merged[key] = finding
        else:
            first.count += finding.count
    return list(merged.values())


_ADMITTED = object()   # what the scan's find_class gives for a name the policy admits


def _policy_constant(name: str):
    from .. import policy
    return getattr(policy, name, frozenset())


_LAZY = _policy_constant("LAZY_ITERABLES")


def _dotted(module: str, name: str) -> str:
    return f"{module}.{name}"


def _looks_like_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and head[1] <= 5


def _peek(listing, entry) -> bytes:
    try:
        with listing.archive.open(entry.info) as handle:
            return handle.read(8)
    except Exception as exc:  # noqa: BLE001 - any failure: reading it in full reports it
        raise ValueError(str(exc)) from None


def _zipfile_errors():
    import zipfile
    return (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError,
            NotImplementedError)


# --- reading the source -----------------------------------------------------------------------

_MMAP_AT = 4 << 20   # files at least this large are mapped rather than read


class _Source:
    """The bytes of a path, a file or a buffer, held for the length of one scan."""

    def __init__(self, source, name: str | None):
        self.map = None
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            self.name = name or path
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size >= _MMAP_AT:
                    self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                    self.data = self.map
                else:
                    self.data = handle.read()
        elif isinstance(source, (bytes, bytearray, memoryview, mmap.mmap)):
            self.name = name or "<bytes>"
            self.data = source if isinstance(source, (bytes, mmap.mmap)) \
                else memoryview(source).cast("B")
        elif hasattr(source, "read"):
            self.name = name or getattr(source, "name", None) or "<file>"
            if not isinstance(self.name, str):
                self.name = "<file>"
            self.data = source.read()
            if not isinstance(self.data, (bytes, bytearray)):
                raise TypeError("the file must be opened in binary mode")
        else:
            raise TypeError(f"scan() takes a path, a bytes-like object or a binary file, not "
                            f"{type(source).__name__}")

    def close(self) -> None:
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:   # a view is still alive somewhere: let it be collected
                pass


def scan(source, policy: Policy | None = None, *, allow: Iterable[str] | None = None,
         preset: str | Iterable[str] | None = None, limits: Limits | None = None,
         max_size: int = DEFAULT_MAX_SIZE, name: str | None = None,
         details: bool = True) -> ScanReport:
    """Scan a file of pickles without loading it; see the module docstring.

    ``source``: a path, a bytes-like object, or a binary file (read to its end).
    ``policy`` (default ``Policy.default()``), ``allow`` and ``preset`` make the policy the
    verdict follows, as for loading.  ``limits``: the resource limits loading would apply
    (default: the policy's).  ``max_size``: the largest decompressed member the scan unpacks.
    ``name``: what to call the source in the report.  ``details``: render what refused
    globals would be called with (``Finding.detail``).

    Raises ``OSError`` if the file cannot be read, ``TypeError`` / ``ValueError`` for bad
    arguments; everything about the data itself is in the report.
    """
    rules = resolve_policy(policy, allow, preset)
    held = _Source(source, name)
    try:
        scanner = _Scanner(rules, limits, max_size, details)
        fmt = scanner.explore(held.data, "")
        return scanner.report(held.name, fmt, len(held.data))
    finally:
        held.close()


def scan_paths(paths: Iterable[str | os.PathLike], policy: Policy | None = None, *,
               allow: Iterable[str] | None = None, preset=None, limits: Limits | None = None,
               max_size: int = DEFAULT_MAX_SIZE, details: bool = True,
               errors: list | None = None) -> Iterator[ScanReport]:
    """Scan files and folders (recursively): files named directly are always scanned, files
    found in folders when their name or first bytes say they may hold pickles.  A file that
    cannot be read is appended to ``errors`` as ``(path, OSError)`` (raised if ``errors`` is
    None)."""
    rules = resolve_policy(policy, allow, preset)
    for path in iter_files(paths, errors):
        try:
            yield scan(path, rules, limits=limits, max_size=max_size, details=details)
        except OSError as exc:
            if errors is None:
                raise
            errors.append((os.fspath(path), exc))


def iter_files(paths: Iterable[str | os.PathLike], errors: list | None = None) -> Iterator[str]:
    """The files to scan: those named, and candidates found in the folders named."""
    for path in paths:
        path = os.fspath(path)
        if not os.path.isdir(path):
            yield path
            continue
        found = []
        for root, dirs, files in os.walk(path, onerror=(lambda exc: errors.append(
                (exc.filename, exc))) if errors is not None else None):
            dirs.sort()
            for file in sorted(files):
                full = os.path.join(root, file)
                if os.path.islink(full) and not os.path.exists(full):
                    continue
                if is_candidate(full):
                    found.append(full)
        yield from found


def is_candidate(path: str) -> bool:
    """Whether a file found in a folder may hold pickles: by its name or its first bytes."""
    lower = path.lower()
    if any(lower.endswith(ext) for ext in PICKLE_EXTENSIONS):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return True   # the scan reports why it cannot be read
    return _looks_like_pickle(head) or _c.sniff(head) != "pickle"


# --- allowlists from trusted files ---------------------------------------------------------------

def allow_entries(source, policy: Policy | None = None, *, limits: Limits | None = None,
                  max_size: int = DEFAULT_MAX_SIZE, dangerous: bool = False) -> list[str]:
    """The ``allow=`` entries a trusted file needs beyond ``policy`` (default: the default
    policy), sorted.  Raises ``MalformedPickleError`` if the file is malformed, and
    ``UnsafeGlobalError`` if it needs names known to run code or reach the system, unless
    ``dangerous`` is true (you have checked them and still trust the file)."""
    from ..errors import UnsafeGlobalError
    report = scan(source, policy, limits=limits, max_size=max_size, details=False)
    broken = [f for f in report.findings if f.severity == "malformed"]
    if broken:
        raise MalformedPickleError(f"{report.source} is malformed: {broken[0].message}",
                                   broken[0].offset)
    risky = [f for f in report.findings if f.severity == "dangerous"]
    if risky and not dangerous:
        names = sorted({f.name or f.message for f in risky})
        raise UnsafeGlobalError(
            f"{report.source} needs names that can run code or reach the system: "
            f"{', '.join(names)}; check them, and pass dangerous=True to allow them anyway",
            [(f.name, f.offset) for f in risky if f.name])
    unallowable = [f for f in report.findings
                   if f.severity in ("dangerous", "needs-allow") and not f.allow]
    if unallowable:
        raise UnsafeGlobalError(f"{report.source} needs what no allow entry admits: "
                                f"{unallowable[0].message}",
                                [(f.name, f.offset) for f in unallowable if f.name])
    return report.allow


def policy_from_pickle(source, base: Policy | None = None, *, limits: Limits | None = None,
                       max_size: int = DEFAULT_MAX_SIZE, dangerous: bool = False) -> Policy:
    """The policy that a known-good file needs: ``base`` (default: ``Policy.default()``)
    plus exactly the names the file uses beyond it, so that it can be pinned instead of
    turning safety off.  See ``allow_entries`` for what it refuses."""
    base = base if base is not None else Policy.default()
    entries = allow_entries(source, base, limits=limits, max_size=max_size,
                            dangerous=dangerous)
    return base | Policy(entries) if entries else base

