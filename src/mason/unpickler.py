"""Unpickler, loads and load: pickle's loader, safe by default.

The C engine behind ``pickle.Unpickler`` does the loading; mason adds, in this order:

1. the limits check (``mason.limits``): one pass over the opcodes of the next pickle, before
   the engine sees a byte of it, refusing resource bombs and finding where the pickle ends;
2. for each global the stream names, in ``find_class``: ``renames``, then Python 2 name
   fixing (protocols 0-2, as pickle does), then the policy, which imports only what it allows;
3. error translation: whatever the engine raises on a bad stream becomes a mason error that
   says where; a refused global becomes one ``UnsafeGlobalError`` listing every refused
   global of the stream, with the ``allow=`` argument that would admit them.

``loads`` with no options first tries ``mason._plainload``: one compiled pass that builds
plain data and calls only globals the default policy lets the engine call itself, checking
the limits as it goes, and declines anything else.  A declined stream takes the way above; one
that names no global, or only such globals, then goes to the C function ``_pickle.loads``
directly, after the limits check.
"""

from __future__ import annotations

import _compat_pickle
import _pickle
import copyreg
import inspect
import io
import os
import struct
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import (LimitError, MalformedPickleError, MasonError, OpcodeAttributeError,
                     OpcodeTypeError, TruncatedPickleError, UnpicklingError, UnsafeCodeError,
                     UnsafeGlobalError)
from .limits import NEED_LINE, Limits
from .policy import ITERATING_CONSTRUCTORS, LAZY_ITERABLES, Policy

try:
    from ._limits import StreamCheck, check as _check, global_names as _global_names
except ImportError:  # the compiled check was not built: the reference one gives the same results
    from .limits import StreamCheck, check as _check, global_names as _global_names
try:   # configured at the end of this module, once what it needs is defined
    from ._plainload import configure as _configure_plainload, load as _plain_load
except ImportError:  # not built: loads takes the check-then-engine way, with the same results
    _plain_load = None

__all__ = ["Unpickler", "loads", "load"]

_CHUNK = 1 << 16
_DEFAULT_LIMITS = Limits()
_DEFAULT_POLICY = Policy.default()
_NO_FILE = io.BytesIO()
_NOT_READ = object()   # loads: the check did not read the stream's global names
_DEFAULT_VERDICTS: dict = {}   # loads: (names, protocol) -> whether they load plainly
_PLAIN_NAMES: dict = {}   # _plainload: (module, name, protocol >= 3) -> see _plain_name
_pickle_loads = _pickle.loads   # loads() hands its Unpickler the bytes directly
_MISSING = object()
# Errors the C engine raises on a malformed stream (rather than from code the stream calls).
_ENGINE_ERRORS = (_pickle.UnpicklingError, ValueError, struct.error, IndexError, KeyError,
                  OverflowError, UnicodeDecodeError)
_ENGINE_FAILURES = _ENGINE_ERRORS + (EOFError,)
# Also what the engine raises when a stream's opcodes misuse what they find: REDUCE on a str,
# APPEND onto an int, a datetime called with a list.  Under a policy these too say the stream
# is bad; with trusted=True they may come from the caller's own classes, and stay as they are.
_DIRECT_FAILURES = _ENGINE_FAILURES + (TypeError, AttributeError)


def _make_policy(allow, policy, trusted, limits) -> tuple[Policy | None, Limits]:
    if trusted:
        if allow or policy is not None:
            raise ValueError("trusted=True allows everything: drop allow= / policy=")
        return None, limits or Limits()
    if policy is None:
        policy = Policy.default()
    elif not isinstance(policy, Policy):
        raise TypeError(f"policy must be a mason.Policy, not {type(policy).__name__}")
    if allow:
        policy = _with_allowed(policy, allow)
    return policy, limits or policy.limits


_COMBINED: dict[tuple, Policy] = {}


def _with_allowed(policy: Policy, allow) -> Policy:
    """``policy | Policy(allow)``, remembered: code passes the same allow= list on every call,
    and a policy keeps what it has resolved, so reusing it saves work on every load."""
    if isinstance(allow, str):
        allow = (allow,)
    key = (id(policy), tuple(allow))
    combined = _COMBINED.get(key)
    if combined is None or combined._base is not policy:
        if len(_COMBINED) > 256:
            _COMBINED.clear()
        combined = policy | Policy(allow)
        combined._base = policy
        _COMBINED[key] = combined
    return combined


def _with_preset(preset, policy: Policy | None) -> Policy:
    """``policy`` (the default if None) plus the presets ``preset`` names: "numpy",
    "pandas", "sklearn", "torch", a list of them, or Policy objects (mason.presets)."""
    names = (preset,) if isinstance(preset, (str, Policy)) else tuple(preset)
    combined = Policy.preset(*names)
    return combined if policy is None else policy | combined


def _split_renames(renames: Mapping[str, str] | None) -> dict[str, str]:
    return dict(renames) if renames else {}


class _Source:
    """The file the C engine reads from: one checked pickle, from memory.

    The engine's first read calls ``peek``, which hands it the whole checked pickle; it then
    reads in place and calls ``read`` only to say how much it consumed, discarding the
    result.  Any other call comes after the pickle's end, where there is nothing more to
    give: the stream is truncated, and an empty result makes the engine say so.
    """

    __slots__ = ("data", "pos")

    def __init__(self):
        self.data = b""
        self.pos = 0

    def set(self, data) -> None:
        self.data = data
        self.pos = 0

    def peek(self, n=0):
        if self.pos == 0:
            return self.data
        return memoryview(self.data)[self.pos:]

    def read(self, n=-1):
        self.pos = len(self.data) if n is None or n < 0 else min(len(self.data), self.pos + n)
        return b""

    def readinto(self, buf):
        return 0

    def readline(self):
        return b""


def _truncated(check_pos: int, data_len: int, need: int) -> TruncatedPickleError:
    if data_len == 0:
        return TruncatedPickleError("Ran out of input", 0)
    what = "the end of a line" if need == NEED_LINE else f"{need} more bytes"
    return TruncatedPickleError(
        f"pickle data was truncated: the opcode at byte {check_pos} needs {what}, "
        f"but the input ends at byte {data_len}", check_pos)


def _check_bytes(data, limits: Limits, memo_extra: int = 0):
    """Check one pickle held in memory; return (check, end)."""
    check = StreamCheck(limits.max_depth, limits.memo_slack + memo_extra)
    done, pos, need = check.feed(data, 0)
    if not done:
        raise _truncated(pos, len(data), need)
    return check, pos


def _read_pickle(file, limits: Limits, memo_extra: int):
    """Read exactly one pickle from ``file`` and check it; return (data, check).

    Never reads past the pickle's STOP (the next pickle in the file stays for the next
    load), and never asks the file for more than it really holds: a declared length of
    2**60 is read in chunks and ends at the true end of file.
    """
    peek = getattr(file, "peek", None)
    seekable = False
    start = 0
    if peek is None:
        seekable, start = _seek_start(file, 0)
    data = bytearray()
    check = None
    peeked = False
    pos, need = 0, 1
    while True:
        if need > _CHUNK and not seekable:
            # The pickle needs at least this many more bytes: take them in one read, capped
            # by what has been read so far so that a lying length costs no more than the file.
            chunk = file.read(min(need, max(_CHUNK, len(data))))
            peeked = False
        elif peek is not None:
            try:
                chunk = peek(max(need, 1))
            except NotImplementedError:
                # As CPython's unpickler does: a file whose peek() is not implemented is
                # read without it (test.pickletester's UnseekableIO is such a file).
                peek = None
                seekable, start = _seek_start(file, len(data))
                continue
            peeked = True
        elif seekable:
            chunk = file.read(max(_CHUNK, len(data)))
        elif need == NEED_LINE:
            chunk = file.readline()
        else:
            chunk = file.read(min(max(need, 1), _CHUNK))
        if not chunk:
            raise _truncated(pos, len(data), need)
        before = len(data)
        data += chunk
        if check is None:
            check = StreamCheck(limits.max_depth, limits.memo_slack + memo_extra)
        done, pos, need = check.feed(data, pos)
        if done:
            del data[pos:]
            if peek is not None and peeked:
                file.read(pos - before)
            elif seekable:
                file.seek(start + pos)
            return data, check
        if peek is not None and peeked:
            file.read(len(chunk))


def _seek_start(file, already_read: int) -> tuple[bool, int]:
    """Whether ``file`` can seek, and where the pickle being read starts in it."""
    try:
        if file.seekable():
            return True, file.tell() - already_read
    except (AttributeError, OSError, ValueError):
        pass
    return False, 0


class Unpickler(_pickle.Unpickler):
    """pickle.Unpickler that loads only what its policy allows.

    Same arguments as ``pickle.Unpickler``, plus:

    * ``allow``: names to allow on top of the policy (``"pkg.mod.Class"``, ``"pkg.sub.*"``);
    * ``policy``: a ``mason.Policy`` to use instead of the default (plain data only);
    * ``trusted``: ``True`` loads anything, exactly as pickle does — only for trusted data;
    * ``renames``: ``{"old.mod.Class": "new.mod.Class", "old.mod": "new.mod"}``, applied to
      every global before anything else, so pickles survive refactors;
    * ``limits``: a ``mason.Limits`` to raise resource limits for unusual honest data.

    Subclasses may override ``find_class`` as with pickle; calling ``super().find_class``
    keeps renames and the policy in force.
    """

    def __init__(self, file, *, fix_imports: bool = True, encoding: str = "ASCII",
                 errors: str = "strict", buffers: Iterable[Any] | None = None,
                 allow: Iterable[str] | None = None, policy: Policy | None = None,
                 trusted: bool = False, renames: Mapping[str, str] | None = None,
                 limits: Limits | None = None, preset=None):
        if preset is not None:
            policy = _with_preset(preset, policy)
        self._source = _Source()
        super().__init__(self._source, fix_imports=fix_imports, encoding=encoding,
                         errors=errors, buffers=buffers)
        # Look the file's methods up in the order CPython's unpickler does, so that an error
        # raised by a broken attribute surfaces as it would with pickle (bpo-38384).
        getattr(file, "peek", None)
        getattr(file, "readinto", None)
        read = getattr(file, "read", None)
        readline = getattr(file, "readline", None)
        if read is None or readline is None:
            raise TypeError("file must have 'read' and 'readline' attributes")
        self._file = file
        self._fix_imports = fix_imports
        self._policy, self._limits = _make_policy(allow, policy, trusted, limits)
        self._renames = _split_renames(renames)
        self._proto = 0
        self._memo_entries = 0  # memo entries written by earlier loads: the memo persists

    # Defaults that loads() leaves in place (see _for_bytes); __init__ sets its own.
    _fix_imports = True
    _renames: dict[str, str] = {}
    _proto = 0
    _memo_entries = 0
    _lazy_checked = False

    @classmethod
    def _for_bytes(cls, policy: Policy | None, limits: Limits) -> Unpickler:
        """An Unpickler for loads() with pickle's default options, made with the least work:
        making one costs more than loading a small pickle, and a C Unpickler cannot be
        reused safely (its memo numbering survives memo.clear(), and a second __init__ may
        crash it)."""
        self = cls.__new__(cls)
        source = _Source()
        _pickle.Unpickler.__init__(self, source)
        self._source = source
        self._policy = policy
        self._limits = limits
        return self

    def load(self):
        """Read one pickle from the file and return the object it holds."""
        try:
            file = self._file
        except AttributeError:
            # A subclass whose __init__ does not call ours: pickle raises this error too.
            raise UnpicklingError(f"Unpickler.__init__() was not called by "
                                  f"{type(self).__name__}.__init__()") from None
        data, check = _read_pickle(file, self._limits, self._memo_entries)
        return self._load_checked(data, check.proto)

    def _load_checked(self, data, proto: int):
        self._proto = proto
        self._lazy_checked = False
        self._memo_entries += len(data)
        self._source.set(data)
        uncached = ()
        try:
            if copyreg._inverted_registry and self._policy is not None:
                uncached = self._check_extensions(data)
            if self._policy is not None and self._policy._prechecks:
                # A preset's reading of the stream before it runs (numpy dtypes: see
                # mason._numpy_checks); it resolves names as find_class does.  A precheck
                # may return a check of the loaded object (pandas block placements), run
                # before the object is returned.
                after = [check for check in (precheck(data, self.find_class)
                                             for precheck in self._policy._prechecks) if check]
                loaded = super().load()
                for check in after:
                    check(loaded)
                return loaded
            return super().load()
        except UnsafeCodeError:
            raise
        except UnsafeGlobalError as exc:
            raise _all_refused(exc, data, self) from None
        except MasonError:
            raise
        except _DIRECT_FAILURES as exc:
            if self._policy is None and not isinstance(exc, _ENGINE_FAILURES):
                raise   # trusted: the caller's own classes may raise these
            raise _engine_failure(exc, data, self._limits) from exc
        except MemoryError as exc:
            raise LimitError("the pickle needs more memory than is available") from exc
        finally:
            self._source.set(b"")
            for code in uncached:
                # What the engine cached for these codes came from our policy (a stand-in,
                # perhaps): it must not serve other unpicklers of the process.
                copyreg._extension_cache.pop(code, None)

    def _check_extensions(self, data) -> list[int]:
        """Resolve the stream's extension codes through the policy, before the engine runs.

        EXT1/EXT2/EXT4 name a global by its code in copyreg's extension registry.  CPython's
        unpicklers share one cache of resolved codes (``copyreg._extension_cache``), and the
        C engine takes a cached code without calling ``find_class``: a code that a trusted
        load resolved elsewhere in the process would bypass the policy.  So every code of the
        stream goes through ``find_class`` here, and the cache, where it has the code, must
        hold exactly the object the policy gives.  A name the policy maps to a checked
        stand-in is refused: the shared cache cannot be relied on to hand the engine the
        stand-in rather than the real object.  Returns the codes that were not cached.

        Only runs when the registry is not empty; CPython registers no extension itself.
        """
        from .format.reader import read_ops

        uncached = []
        for op in read_ops(data):
            if op.opcode.name not in ("EXT1", "EXT2", "EXT4"):
                continue
            key = copyreg._inverted_registry.get(op.arg)
            if key is None:
                continue  # an unregistered code: the engine raises its own error
            resolved = self.find_class(*key)  # refuses what the policy does not allow
            plain = _pickle.Unpickler.find_class(self, *key)
            dotted = ".".join(key)
            if resolved is not plain:
                raise UnsafeGlobalError(
                    f"extension code {op.arg} at byte {op.offset} names {dotted}, which the "
                    f"policy admits only through a checked stand-in; extension codes resolve "
                    f"through a cache shared by every unpickler of the process, which cannot "
                    f"hold the stand-in safely.  Load with trusted=True if you trust this "
                    f"data.", [])
            cached = copyreg._extension_cache.get(op.arg, _MISSING)
            if cached is _MISSING:
                uncached.append(op.arg)
            elif cached is not resolved:
                raise UnsafeGlobalError(
                    f"extension code {op.arg} at byte {op.offset} names {dotted}, but the "
                    f"process-wide extension cache holds {cached!r} for it (put there by "
                    f"another unpickler); refusing it", [])
        return uncached

    def find_class(self, module: str, name: str) -> Any:
        # The order is fixed: renames, then Python 2 names, then policy, then import.
        if self._renames:
            module, name = _rename(self._renames, module, name)
        if self._policy is None:
            return super().find_class(module, name)
        if self._proto < 3 and self._fix_imports:
            module, name = _fix_python2_name(module, name)
        sys.audit("pickle.find_class", module, name)
        try:
            obj = self._policy.resolve(module, name)
            if (module, name) in LAZY_ITERABLES and not self._lazy_checked:
                self._lazy_checked = True
                self._check_lazy_iterables(self._source.data)
            return obj
        except UnsafeGlobalError:
            if module.startswith("mason."):
                # mason's own by-value and signing names: a stand-in that refuses with what
                # the pickle carries (code, a signature) and how to load it.
                from .byvalue import refusal_stand_in
                stand_in = refusal_stand_in(module, name)
                if stand_in is not None:
                    return stand_in
            raise

    def _check_lazy_iterables(self, data) -> None:
        """Refuse a stream that hands an unbounded iterable to a constructor that iterates.

        ``policy.LAZY_ITERABLES`` (IP networks) are values of the default policy, but
        IPv6Network("::/0") holds 2**128 addresses: ``list(IPv4Network("0.0.0.0/0"))`` is a
        59-byte pickle that allocates until the process dies.  No honest pickle passes a
        network to list(), set(), deque() and the like, so the first time a load resolves a
        network class, the stream is run symbolically (``format.machine``, which calls
        nothing) and such a call is refused.  Streams that name no network never pay this.
        """
        from .format.machine import Call, Global, simulate

        run = simulate(data)
        python2 = run.protocol < 3 and self._fix_imports

        def name_of(node) -> tuple[str, str] | None:
            if not isinstance(node, Global):
                return None
            module, name = node.module, node.name
            if self._renames:
                module, name = _rename(self._renames, module, name)
            if python2:
                module, name = _fix_python2_name(module, name)
            return module, name

        def makes_lazy(call) -> bool:
            # the class called directly or by NEWOBJ, or handed to copyreg's reconstructors
            first = call.args[0] if isinstance(call.args, tuple) and call.args else None
            return name_of(call.func) in LAZY_ITERABLES or name_of(first) in LAZY_ITERABLES

        lazy = {id(call) for call in run.calls if makes_lazy(call)}
        for call in run.calls:
            func = name_of(call.func)
            if func in ITERATING_CONSTRUCTORS and isinstance(call.args, tuple):
                for arg in call.args:
                    if isinstance(arg, Call) and id(arg) in lazy:
                        raise LimitError(
                            f"{'.'.join(func)}() at byte {call.offset} would iterate an IP "
                            f"network built at byte {arg.offset}: a network may hold up to "
                            f"2**128 addresses, and pickle never writes this call",
                            call.offset)

    def _refused_names(self, data) -> list[tuple[str, int | None]]:
        """Every global of ``data`` this unpickler's policy refuses, with its offset."""
        from .format.machine import find_globals

        refused, seen = [], set()
        for ref in find_globals(data):
            module, name = ref.module, ref.name
            if self._renames:
                module, name = _rename(self._renames, module, name)
            if self._proto < 3 and self._fix_imports:
                module, name = _fix_python2_name(module, name)
            dotted = f"{module}.{name}"
            if dotted in seen:
                continue
            seen.add(dotted)
            try:
                self._policy.resolve(module, name)
            except UnsafeGlobalError:
                refused.append((dotted, ref.offset))
            except Exception:
                pass  # unimportable: the engine reports it when it gets there
        return refused


def _rename(renames: dict[str, str], module: str, name: str) -> tuple[str, str]:
    new = renames.get(f"{module}.{name}")
    if new is not None:
        module, _, name = new.rpartition(".")
        return module, name
    new_module = renames.get(module)
    if new_module is not None:
        return new_module, name
    return module, name


def _fix_python2_name(module: str, name: str) -> tuple[str, str]:
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _engine_failure(exc: BaseException, data, limits: Limits) -> MalformedPickleError:
    """What the C engine raised on a bad stream (one of _ENGINE_FAILURES), as a mason error."""
    if isinstance(exc, EOFError):
        return TruncatedPickleError(str(exc) or "pickle data was truncated")
    return _malformed(exc, data, limits)


def _malformed(exc: BaseException, data, limits: Limits) -> MalformedPickleError:
    """The engine's error on a bad stream, as a mason error that says where."""
    # The engine does not say where it failed; on this error path, the full check finds
    # the malformed opcode it stopped at, if any.
    check = StreamCheck(limits.max_depth, limits.memo_slack)
    try:
        check.feed(data, 0)
    except MasonError:
        pass
    offset = check.stopped_at
    where = f" (at the opcode at byte {offset})" if offset is not None else ""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError) or "truncated" in message:
        return TruncatedPickleError(f"{message}{where}", offset)
    if isinstance(exc, TypeError):
        return OpcodeTypeError(f"{message}{where}", offset)
    if isinstance(exc, AttributeError):
        return OpcodeAttributeError(f"{message}{where}", offset)
    return MalformedPickleError(f"{message}{where}", offset)


def _all_refused(first: UnsafeGlobalError, data, unpickler: Unpickler) -> UnsafeGlobalError:
    """Turn the engine's first refusal into one error that lists every refused global."""
    try:
        refused = unpickler._refused_names(data)
    except ImportError:  # mason.format.machine is not there: report the first refusal only
        refused = []
    # The first refusal may name a global that no opcode names (a getattr stand-in resolving
    # "Class.method"): keep it in the list.
    listed = {dotted for dotted, _ in refused}
    refused = refused + [entry for entry in first.refused if entry[0] not in listed]
    detail = str(first)
    if not refused:
        # No global is refused: a checked stand-in (mason._safe_constructors) refused the way
        # the stream calls an allowed name, e.g. getattr(SomeClass, "method").  Its message
        # says what it accepts; there is no name to list.
        return UnsafeGlobalError(
            f"{detail}\nIf you trust where this data comes from, load it with trusted=True.",
            [])
    if first.refused and detail == f"global {first.refused[0][0]} is not allowed":
        detail = ""  # the plain refusal: the list below says it all
    lines = []
    for dotted, offset in refused:
        where = f"at byte {offset}" if offset is not None else "in the stream"
        lines.append(f"  {dotted}  ({where})")
    names = [dotted for dotted, _ in refused]
    message = (
        f"the pickle names {len(names)} global{'s' if len(names) != 1 else ''} that the "
        f"policy does not allow:\n" + "\n".join(lines) +
        (f"\n{detail}" if detail else "") +
        f"\nLoading them runs their code. If you trust where this data comes from, allow "
        f"exactly these with:\n  allow={names!r}\nor load with trusted=True.")
    return UnsafeGlobalError(message, refused)


def _loads_options(data, /, *, fix_imports: bool = True, encoding: str = "ASCII",
          errors: str = "strict", buffers: Iterable[Any] | None = None,
          allow: Iterable[str] | None = None, policy: Policy | None = None,
          trusted: bool = False, renames: Mapping[str, str] | None = None,
          limits: Limits | None = None, key=None, preset=None) -> Any:
    """Load an object from pickle bytes, calling only what the policy allows.

    Arguments as for ``pickle.loads``, plus ``allow``, ``policy``, ``trusted``, ``renames``
    and ``limits`` as for ``Unpickler``.  ``key``: the data is a signed envelope
    (``mason.dumps(obj, key=...)``); it is verified before anything of it runs, and a valid
    signature loads trusted (unless ``allow`` or ``policy`` is given).
    """
    if preset is not None:
        # ``preset=``: the policy plus what the named presets admit (mason.presets).
        policy = _with_preset(preset, policy)
    if key is not None:
        from .signing import open_envelope
        data = open_envelope(data, key)   # SignatureError unless verified
        trusted = trusted or (allow is None and policy is None)
    if limits is None:
        if policy is None:
            limits = _DEFAULT_LIMITS
        elif isinstance(policy, Policy):
            limits = policy.limits
        else:
            raise TypeError(f"policy must be a mason.Policy, not {type(policy).__name__}")
    if isinstance(data, str):
        raise TypeError("a bytes-like object is required, not 'str'")
    return _loads_checked(data, _check(data, limits.max_depth, limits.memo_slack),
                          fix_imports, encoding, errors, buffers, allow, policy, trusted,
                          renames, limits)


def _loads_checked(data, checked, fix_imports, encoding, errors, buffers, allow, policy,
                   trusted, renames, limits):
    """loads() once the compiled check has run: ``checked`` is its result."""
    if type(checked) is int:
        packed, names = checked, _NOT_READ
    elif checked is None:
        # Raises the truncation error with details, unless the full check stops earlier at a
        # malformed opcode: then let the engine report it, on the policy path to be safe.
        check, end = _check_bytes(data, limits)
        packed, names = end << 10 | 3, None
    else:
        packed, names = checked   # the stream names globals; names None if not all readable
    if packed & 1:   # stopped at a malformed opcode: the engine must not read past it
        data = memoryview(data)[:packed >> 10]
    # Straight to the C engine when the stream names no global (then nothing in it can be
    # called), or when every global it names is read off the stream and the policy
    # resolves it to itself: the engine's own import then yields the very same objects.
    direct = not packed & 2
    if not direct and not packed & 1 and not renames:
        if trusted:
            _make_policy(allow, policy, trusted, limits)   # refuses trusted with an allowlist
            direct = True
        else:
            if names is _NOT_READ:
                names = _global_names(data)
            if names is not None:
                rules = _DEFAULT_POLICY if allow is None and policy is None else \
                    _make_policy(allow, policy, trusted, limits)[0]
                direct = _load_plainly(rules, names, (packed >> 2) & 0xFF, fix_imports)
    if direct:
        try:
            if buffers is None and fix_imports and encoding == "ASCII" and errors == "strict":
                return _pickle_loads(data)
            return _pickle_loads(data, fix_imports=fix_imports, encoding=encoding,
                                 errors=errors, buffers=buffers)
        except MasonError:
            raise   # raised by an allowed callable of mason's, e.g. a signed envelope's
        except _DIRECT_FAILURES as exc:
            if trusted and not isinstance(exc, _ENGINE_FAILURES):
                raise
            raise _engine_failure(exc, data, limits) from exc
    if renames or buffers is not None or not fix_imports or encoding != "ASCII" \
            or errors != "strict":
        unpickler = Unpickler(_NO_FILE, fix_imports=fix_imports, encoding=encoding,
                              errors=errors, buffers=buffers, allow=allow, policy=policy,
                              trusted=trusted, renames=renames, limits=limits)
    elif allow is None and policy is None and not trusted:
        unpickler = Unpickler._for_bytes(_DEFAULT_POLICY, limits)
    else:
        policy, limits = _make_policy(allow, policy, trusted, limits)
        unpickler = Unpickler._for_bytes(policy, limits)
    return unpickler._load_checked(data, (packed >> 2) & 0xFF)


def loads(data, /, **options):
    # The hot path: with no options (the usual call), the one compiled pass of
    # mason._plainload, which builds plain data (and globals the engine may call itself)
    # while it checks the limits, and declines anything else.  Its signature is the full one
    # (see __signature__ below); keyword arguments cost more to receive one by one than as
    # one dict, so they take the other path.  With mason._entry built, this function is
    # replaced by a compiled callable that does the same (see the end of this module).
    if not options:
        if _plain_load is not None:
            loaded = _plain_load(data)
            if loaded is not NotImplemented:
                return loaded
        return _loads_declined(data)
    return _loads_options(data, **options)


def _loads_declined(data, /):
    """``loads(data)`` that the one pass declined: one compiled check that clears a stream
    naming no global, or only globals the engine may import itself, then the C engine;
    every other stream takes the Unpickler with its policy."""
    checked = _check(data, _DEFAULT_LIMITS.max_depth, _DEFAULT_LIMITS.memo_slack)
    if type(checked) is int:
        direct = not checked & 3
    elif checked is not None and not checked[0] & 1:
        # Names globals: the default policy's verdict on these names in this protocol
        # (which decides Python 2 renaming and dotted names) is remembered.
        key = (checked[1], (checked[0] >> 2) & 0xFF)
        direct = _DEFAULT_VERDICTS.get(key)
        if direct is None:
            direct = checked[1] is not None and _load_plainly(
                _DEFAULT_POLICY, checked[1], key[1], True)
            if len(_DEFAULT_VERDICTS) < 1024:
                _DEFAULT_VERDICTS[key] = direct
    else:
        direct = False
    if direct:
        try:
            return _pickle_loads(data)
        except MasonError:
            raise
        except _DIRECT_FAILURES as exc:
            raise _engine_failure(exc, data, _DEFAULT_LIMITS) from exc
    return _loads_checked(data, checked, True, "ASCII", "strict", None, None, None, False,
                          None, _DEFAULT_LIMITS)


loads.__doc__ = _loads_options.__doc__
loads.__signature__ = inspect.signature(_loads_options)
_loads_options.__qualname__ = _loads_options.__name__ = "loads"


def _plain_name(module: str, name: str, proto: int):
    """For _plainload: where the C engine finds the global ``module.name`` of a stream of
    protocol ``proto`` — (module, attribute) — if the default policy lets the engine import
    it itself (see _load_plainly); else None.  The answer is kept in _PLAIN_NAMES."""
    where = None
    if _load_plainly(_DEFAULT_POLICY, ((module, name),), proto, True):
        found = _fix_python2_name(module, name) if proto < 3 else (module, name)
        if "." not in found[1]:   # a dotted walk: the long way
            where = found
    if len(_PLAIN_NAMES) < 1024:
        _PLAIN_NAMES[module, name, proto >= 3] = where
    return where


def _load_plainly(policy: Policy, names, proto: int, fix_imports: bool) -> bool:
    """Whether the engine may import every one of ``names`` itself (see loads)."""
    python2 = proto < 3 and fix_imports
    for module, name in names:
        if python2:
            module, name = _fix_python2_name(module, name)
        if proto < 4 and "." in name:
            return False   # the engine resolves dotted names only from protocol 4 on
        if not policy.loads_plainly(module, name):
            return False
    return True


def load(file, *, fix_imports: bool = True, encoding: str = "ASCII",
         errors: str = "strict", buffers: Iterable[Any] | None = None,
         allow: Iterable[str] | None = None, policy: Policy | None = None,
         trusted: bool = False, renames: Mapping[str, str] | None = None,
         limits: Limits | None = None, key=None, preset=None, mmap: bool = False) -> Any:
    """Load one object from a binary file, calling only what the policy allows.

    Reads exactly one pickle and leaves the file just after it, as ``pickle.load`` does.
    ``key``: as for ``loads`` (the file holds a signed envelope).

    Given a path (str or os.PathLike) instead of a file, loads the whole file, whatever
    its format (mason container, pickle, torch checkpoint, joblib, gzip or zstd):
    see ``mason.files.load``; ``mmap=True`` maps a container's buffers instead of reading.
    """
    if isinstance(file, (str, os.PathLike)):
        from .files import load as load_path
        return load_path(file, mmap=mmap, fix_imports=fix_imports, encoding=encoding,
                         errors=errors, allow=allow, policy=policy, trusted=trusted,
                         renames=renames, limits=limits, key=key, preset=preset)
    if preset is not None:
        policy = _with_preset(preset, policy)
    if key is not None:
        from .signing import read_envelope
        data = read_envelope(file, key)   # SignatureError unless verified
        return loads(data, fix_imports=fix_imports, encoding=encoding, errors=errors,
                     buffers=buffers, allow=allow, policy=policy,
                     trusted=trusted or (allow is None and policy is None),
                     renames=renames, limits=limits)
    return Unpickler(file, fix_imports=fix_imports, encoding=encoding, errors=errors,
                     buffers=buffers, allow=allow, policy=policy, trusted=trusted,
                     renames=renames, limits=limits).load()


if _plain_load is not None:
    _configure_plainload(_DEFAULT_LIMITS.max_depth, _DEFAULT_LIMITS.memo_slack, _PLAIN_NAMES,
                         _plain_name)
    try:
        from ._entry import Entry as _Entry
    except ImportError:  # not built: loads stays the Python function above, same results
        pass
    else:
        # loads as a compiled callable: a call with one positional argument goes to the one
        # pass and, when it declines, to _loads_declined; any other call to _loads_options.
        # It saves the Python call, a tenth of the time of loading a small pickle.
        loads = _Entry(_plain_load, _loads_declined, _loads_options, 1, loads)
