"""How a store turns values into bytes and back: mason's pickler out, mason's loader in.

Values are pickled with protocol 5.  Large contiguous buffers that an object hands to the
pickler as ``PickleBuffer`` (numpy arrays, ``bytearray``, anything implementing the protocol
5 ``__reduce_ex__``) are taken *out of band* through ``buffer_callback``: the pickle stream
keeps only a NEXT_BUFFER placeholder, and the buffer's memory goes to the backend as it is
(the SQLite backend writes it straight from the object's memory into its values file; it is
never copied into the stream and never parsed by the loader).  Buffers under ``OOB_MIN`` bytes stay in band, where taking them
out would cost more than the copy.

Most values take one call of the C pickler: a builtin container through ``mason.dumps``,
anything else with a ``buffer_callback`` that takes the buffers of numpy's contiguous arrays.
Only a value whose pickle holds ``OOB_MIN`` bytes or more in band, or that must travel by
value, is pickled again by mason's Pickler (by value, and arrays of any layout out of band).

Every load goes through ``mason.loads`` under the store's policy, whoever wrote the bytes:
the database is not trusted, so hostile bytes planted in it are refused like any other.
"""

from __future__ import annotations

import io
import sys
import threading
from _pickle import dumps as _c_dumps
from pickle import PickleBuffer
from typing import Any, Iterable

from ..byvalue import needs_by_value
from ..limits import Limits
from ..pickler import Pickler, dumps
from ..policy import Policy
from ..unpickler import loads

__all__ = ["Codec", "OOB_MIN", "make_policy"]

# Buffers at least this large travel out of band.
OOB_MIN = 16 * 1024
_NONE: tuple = ()  # no out-of-band buffers (shared: nobody appends to it)
# Builtin containers, which usually hold small plain data (see Codec.pack).
_CONTAINERS = frozenset({dict, list, tuple, set, frozenset})
# A thread's pickler is dropped after a pickle this large, so its buffer does not stay around.
_KEEP_MAX = 1 << 20
# A large bytes value travels as itself, out of band: this pickle (PROTO 5, NEXT_BUFFER, STOP)
# and the bytes as its one read-only buffer.  pickle never writes it so (it marks a read-only
# buffer with READONLY_BUFFER), and it loads, by pickle too, as the buffer given.
RAW_BYTES = b"\x80\x05\x97."


def _ndarray():
    """numpy.ndarray once numpy is imported (a value cannot be an array before), else None."""
    global _ndarray_type
    if _ndarray_type is None:
        numpy = sys.modules.get("numpy")
        if numpy is None:
            return None
        _ndarray_type = numpy.ndarray
    return _ndarray_type


_ndarray_type = None
# The pickle of a large contiguous array with its memory out of band does not depend on that
# memory: numpy writes _frombuffer(<buffer>, dtype, shape, order), whatever the values.  So it
# is made once per (dtype, shape, order, writability) and reused; building a pickler for each array cost
# more than the rest of a 100 KB put.  Keyed by the dtype's identity (numpy's builtin dtypes
# are singletons; two equal dtypes may still pickle differently), which each entry holds.
_ARRAY_PICKLES: dict = {}
_ARRAY_PICKLES_MAX = 256


def _array_key(array) -> tuple | None:
    dtype = array.dtype
    if dtype.hasobject or array.nbytes < OOB_MIN:
        return None
    flags = array.flags
    order = "C" if flags.c_contiguous else "F" if flags.f_contiguous else None
    # Writability too: a read-only buffer is marked so in the stream.
    return None if order is None else (id(dtype), array.shape, order, flags.writeable)


def _remember_array(array, data: bytes) -> None:
    key = _array_key(array)
    if key is not None:
        if len(_ARRAY_PICKLES) >= _ARRAY_PICKLES_MAX:
            _ARRAY_PICKLES.clear()
        _ARRAY_PICKLES[key] = (array.dtype, data)


class _Packer:
    """One thread's pickler, kept between values.

    Building a ``mason.Pickler`` costs more than pickling a small record, so each thread keeps
    one, writing into its own ``BytesIO``, and clears its memo between values: every value
    is still a complete, standalone pickle, byte for byte what ``mason.dumps`` writes.
    """

    __slots__ = ("file", "pickler", "buffers", "busy")

    def __init__(self):
        self.file = io.BytesIO()
        self.buffers: list[memoryview] = []
        self.busy = False
        self.pickler = Pickler(self.file, 5, buffer_callback=self.take)

    def take(self, buf: PickleBuffer):
        try:
            view = buf.raw()
        except BufferError:  # not contiguous: the pickler copies it in band
            return True
        if view.nbytes < OOB_MIN:
            return True
        self.buffers.append(view)
        return False

    def pack(self, value: Any) -> tuple[bytes, list[memoryview]]:
        self.pickler.dump(value)
        data = self.file.getvalue()
        buffers = self.buffers
        self.buffers = []
        self.file.seek(0)
        self.file.truncate()
        self.pickler.clear_memo()
        return data, buffers


_local = threading.local()


def make_policy(allow: Iterable[str] | None, preset, policy: Policy | None,
                trusted: bool) -> Policy | None:
    """The one policy a store loads under (None: trusted, load anything)."""
    if trusted:
        if allow or policy is not None or preset:
            raise ValueError("trusted=True allows everything: drop allow= / preset= / policy=")
        return None
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"policy must be a mason.Policy, not {type(policy).__name__}")
    result = policy if policy is not None else Policy.default()
    if preset:
        if not hasattr(Policy, "preset"):
            raise NotImplementedError(
                f"preset={preset!r} needs mason.Policy.preset, which this version of mason "
                "does not have yet: pass allow=[...] with the globals the values need (the "
                "error from loading one lists them), or policy=mason.Policy([...])")
        for name in ([preset] if isinstance(preset, str) else list(preset)):
            result = result | Policy.preset(name)
    if allow:
        result = result | Policy(allow)
    return result


class Codec:
    """Pickles values for one store and loads them under its policy."""

    __slots__ = ("policy", "limits", "trusted", "plain")

    def __init__(self, policy: Policy | None, limits: Limits | None):
        self.policy = policy
        self.trusted = policy is None
        self.limits = limits
        self.plain = policy is Policy.default() and limits is None

    @staticmethod
    def pack(value: Any) -> tuple[bytes, list[memoryview] | tuple]:
        """``(pickle, buffers)``: the protocol 5 pickle and its out-of-band buffers, as
        memoryviews of the value's own memory (no copy; keep ``value`` alive until written)."""
        cls = value.__class__
        if cls is bytes and len(value) >= OOB_MIN:
            return RAW_BYTES, [memoryview(value)]  # no copy into a pickle, nor out of one
        if cls is bytes or cls is str:
            # Names no global and holds no buffer: the C pickler alone (what mason.dumps also
            # writes, without searching a large pickle for __main__).
            return _c_dumps(value, 5), _NONE
        if cls in _CONTAINERS:
            # Usually a small record: mason.dumps's one C call, and a pickle this short holds
            # no buffer that would travel out of band.
            data = dumps(value)
            if len(data) < OOB_MIN:
                return data, _NONE
        elif cls is _ndarray():
            known = _ARRAY_PICKLES.get(_array_key(value))
            if known is not None and known[0] is value.dtype:
                return known[1], [PickleBuffer(value).raw()]
        # The C pickler alone, taking the buffers it is handed (numpy's contiguous
        # arrays hand theirs).  If what remains in band is small and names nothing that must
        # travel by value, that is the pickle mason's Pickler would write too; otherwise
        # that Pickler does it again (by value, and arrays of any layout out of band).
        taken: list[memoryview] = []

        def take(buf: PickleBuffer):
            try:
                view = buf.raw()
            except BufferError:  # not contiguous: in band
                return True
            if view.nbytes < OOB_MIN:
                return True
            taken.append(view)
            return False

        try:
            data = _c_dumps(value, 5, buffer_callback=take)
        except Exception:
            return Codec._pack_out_of_band(value)
        if len(data) >= OOB_MIN or needs_by_value(data, len(data)):
            return Codec._pack_out_of_band(value)
        if cls is _ndarray() and len(taken) == 1:
            _remember_array(value, data)
        return data, taken

    @staticmethod
    def _pack_out_of_band(value: Any) -> tuple[bytes, list[memoryview]]:
        packer = getattr(_local, "packer", None)
        if packer is None or packer.busy:  # first use in this thread, or re-entered
            packer = _Packer()
            if getattr(_local, "packer", None) is None:
                _local.packer = packer
        packer.busy = True
        try:
            data, buffers = packer.pack(value)
        except BaseException:
            if getattr(_local, "packer", None) is packer:
                _local.packer = None  # a failed dump may leave it half-way: start afresh
            raise
        finally:
            packer.busy = False
        if len(data) > _KEEP_MAX and getattr(_local, "packer", None) is packer:
            _local.packer = None
        return data, buffers

    def load(self, data, buffers=None) -> Any:
        """The value of a stored pickle, calling only what the policy allows."""
        if data == RAW_BYTES and buffers and len(buffers) == 1 \
                and buffers[0].__class__ is not bytearray:  # a writable buffer is not bytes
            raw = buffers[0]
            return raw if raw.__class__ is bytes else bytes(raw)
        if self.plain and buffers is None:
            return loads(data)  # the default policy and limits: loads's own fast path
        if self.trusted:
            return loads(data, buffers=buffers, trusted=True, limits=self.limits)
        return loads(data, buffers=buffers, policy=self.policy, limits=self.limits)
