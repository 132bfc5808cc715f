"""Out-of-band reducers for numpy arrays and torch tensors.

With protocol 5, a pickler given a ``buffer_callback`` hands the callback each
``PickleBuffer`` instead of copying its bytes into the stream; the loader gets them back
through ``buffers=``.  numpy does this by itself for C- or Fortran-contiguous arrays.  These
reducers do it for the rest, and are what mason's file container (``mason.files``) uses for
every array, so that every large buffer lands in the file once, aligned, and comes back as a
view of the file:

* ``reduce_ndarray``: any numpy array whose dtype has no objects, in any memory layout
  (a non-contiguous one is copied once into C order), 0-d and empty included.  The dtype
  travels as its .npy description (``numpy.lib.format.dtype_to_descr``), which numpy's own
  constructor turns back into the dtype: nothing in the stream sets a dtype's state.
  Object arrays (and subclasses of ndarray) keep numpy's own reduction: their elements are
  pickled inline as ordinary objects, and so go through the loader's policy.
* ``reduce_tensor``: a CPU, strided, dense torch tensor or ``nn.Parameter`` without Python
  attributes, as its storage plus dtype, offset, shape, stride and ``requires_grad``.  The
  storage is pickled once per pickle (``dispatch_table`` keeps one ``TensorStorage`` per
  torch storage, which the pickler's memo then refers to), so views of one storage, and the
  tied weights of a state dict, come back sharing their memory as with ``torch.load``.

All rebuild with functions that check what they are given (``rebuild_array``,
``rebuild_storage``, ``rebuild_tensor_view``; ``rebuild_tensor`` for files written before
tensors kept their storage) and keep a stable import path, since pickles name them.  Without a
buffer callback the same reductions write the bytes in-band (protocol 5 writes a
``PickleBuffer`` as BYTEARRAY8), and any unpickler with mason importable loads them.
"""

from __future__ import annotations

import copyreg
import pickle
import sys
from typing import Any

from ._numpy_checks import rebuild_array
from ._torch_checks import TensorStorage, rebuild_storage
from .errors import UnsafeGlobalError

__all__ = ["reduce_ndarray", "reduce_tensor", "rebuild_array", "rebuild_tensor",
           "rebuild_storage", "rebuild_tensor_view", "TensorStorage", "dispatch_table",
           "TORCH_DTYPES"]

# torch dtypes that tensors pickle with, by the name used in the stream.  Exactly the names
# a stream may ask for; anything else is refused.
TORCH_DTYPES = (
    "float64", "float32", "float16", "bfloat16", "complex128", "complex64", "complex32",
    "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64", "bool",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
)


def reduce_ndarray(array) -> Any:
    """Reduce a numpy array to ``rebuild_array(PickleBuffer, descr, shape, order)``.

    Returns ``NotImplemented`` for what numpy's own reduction does better: object dtypes
    (elements inline, under the policy), subclasses, and dtypes that the .npy description
    does not carry exactly (aligned structs, metadata, numpy's variable-width strings).
    """
    import numpy as np
    from numpy.lib import format as npformat

    if type(array) is not np.ndarray:
        return NotImplemented
    d = array.dtype
    if d.hasobject or d.metadata is not None or d.isalignedstruct:
        return NotImplemented
    try:
        descr = npformat.dtype_to_descr(d)
        if npformat.descr_to_dtype(descr) != d:
            return NotImplemented
    except Exception:
        return NotImplemented
    if array.flags.c_contiguous:
        order = "C"
    elif array.flags.f_contiguous:
        order = "F"
    else:
        array = np.ascontiguousarray(array)
        order = "C"
    if array.ndim > 1 or order == "F":
        flat = array.reshape(-1, order=order)   # a view: the array is contiguous in `order`
    else:
        flat = array.reshape(-1)
    if flat.size and d.itemsize:
        raw = flat.view(np.uint8)
    else:
        raw = np.empty(0, np.uint8)
    if not array.flags.writeable:
        raw = raw.view()
        raw.flags.writeable = False
    return rebuild_array, (pickle.PickleBuffer(raw), descr, array.shape, order)


def reduce_tensor(tensor, storages: dict | None = None) -> Any:
    """Reduce a torch tensor to ``rebuild_tensor_view(TensorStorage, dtype, offset, shape,
    stride, requires_grad, parameter)``; ``NotImplemented`` for what this does not carry
    (other devices, sparse, quantized, subclasses, tensors with Python attributes), which
    torch's own reduction then pickles in-band.

    ``storages`` maps each torch storage already met in this pickle to its
    ``TensorStorage``: pass the same dict for a whole pickle so that tensors sharing a
    storage share it again when loaded (the whole storage is saved, as ``torch.save``
    does, even when a tensor shows only part of it).
    """
    import torch

    cls = type(tensor)
    if cls is not torch.Tensor and cls is not torch.nn.Parameter:
        return NotImplemented
    if tensor.device.type != "cpu" or tensor.layout is not torch.strided \
            or tensor.is_quantized or tensor.is_conj() or tensor.is_neg() \
            or getattr(tensor, "__dict__", None):
        return NotImplemented
    name = str(tensor.dtype).rpartition(".")[2]
    if name not in TORCH_DTYPES:
        return NotImplemented
    if tensor.requires_grad and not tensor.is_leaf:
        return NotImplemented   # pickle refuses non-leaf tensors that need grad; so does torch
    untyped = tensor.untyped_storage()
    # _cdata identifies the storage itself (every view of it has the same); the storage
    # object is kept in the dict so that its address is not reused while pickling.
    held = storages.get(untyped._cdata) if storages is not None else None
    if held is None:
        held = (untyped, TensorStorage.of(untyped))
        if storages is not None:
            storages[untyped._cdata] = held
    return rebuild_tensor_view, (held[1], name, tensor.storage_offset(), tuple(tensor.shape),
                                 tuple(tensor.stride()), bool(tensor.requires_grad),
                                 cls is torch.nn.Parameter)


def rebuild_tensor_view(storage, dtype: str, offset: int, shape, stride,
                        requires_grad: bool = False, parameter: bool = False):
    """A tensor over ``storage`` (from ``rebuild_storage``) at ``offset`` with ``shape``
    and ``stride``, all in elements of ``dtype``, checked to stay inside the storage:
    torch's ``set_`` does not check, and would read past the end of the memory."""
    import torch

    if not isinstance(storage, TensorStorage) or storage.data is None:
        raise UnsafeGlobalError(f"mason rebuild_tensor_view called with "
                                f"{type(storage).__name__}: only a storage rebuilt by "
                                f"mason.arrays.rebuild_storage is accepted")
    if type(dtype) is not str or dtype not in TORCH_DTYPES:
        raise UnsafeGlobalError(f"mason rebuild_tensor_view: dtype {dtype!r:.40} is not a "
                                f"torch dtype that tensors are saved with")
    if not _geometry(offset, shape, stride) \
            or type(requires_grad) is not bool or type(parameter) is not bool:
        raise UnsafeGlobalError("mason rebuild_tensor_view: offset must be an int >= 0, shape "
                                "and stride tuples of ints >= 0 of one length, requires_grad "
                                "and parameter bools")
    kind = getattr(torch, dtype)
    itemsize = kind.itemsize
    nbytes = storage.data.numel()
    if all(shape):
        end = (offset + sum((n - 1) * s for n, s in zip(shape, stride)) + 1) * itemsize
        if end > nbytes:
            raise UnsafeGlobalError(
                f"mason rebuild_tensor_view: shape {shape} and stride {stride} from offset "
                f"{offset} reach byte {end} of a storage of {nbytes} bytes")
    tensor = torch.empty(0, dtype=kind)
    tensor.set_(storage.data.untyped_storage(), offset, shape, stride)
    if parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor


def _geometry(offset, shape, stride) -> bool:
    # below 2**62 each: torch takes them as int64, and would fail on a larger one with an
    # overflow error instead of a refusal
    return type(offset) is int and 0 <= offset < _HUGE \
        and type(shape) is tuple and type(stride) is tuple \
        and len(shape) == len(stride) <= 64 \
        and all(type(n) is int and 0 <= n < _HUGE for n in shape + stride)


_HUGE = 1 << 62


def rebuild_tensor(buffer, dtype: str, shape, requires_grad: bool = False,
                   parameter: bool = False):
    """Rebuild a tensor as mason wrote them before tensors kept their storage (still read
    in files of that time): a view of ``buffer`` when it is
    writable (a file container's copy-on-write map, or a buffer read into memory), else a
    copy (torch has no read-only tensors: a view of read-only memory would crash on the
    first write)."""
    import torch

    if type(dtype) is not str or dtype not in TORCH_DTYPES:
        raise UnsafeGlobalError(f"mason rebuild_tensor: dtype {dtype!r:.40} is not a torch "
                                f"dtype that tensors are saved with")
    if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape) \
            or type(requires_grad) is not bool or type(parameter) is not bool:
        raise UnsafeGlobalError("mason rebuild_tensor: shape must be a tuple of ints, "
                                "requires_grad and parameter bools")
    kind = getattr(torch, dtype)
    count = 1
    for n in shape:
        count *= n
    itemsize = torch.empty((), dtype=kind).element_size()
    view = memoryview(buffer)
    if view.nbytes != count * itemsize:
        raise UnsafeGlobalError(f"mason rebuild_tensor: {view.nbytes} bytes for shape "
                                f"{shape} of {dtype} ({count * itemsize} bytes)")
    if not view.nbytes:
        tensor = torch.empty(shape, dtype=kind)
    else:
        if view.readonly:
            raw = torch.frombuffer(bytearray(view), dtype=torch.uint8)
        else:
            raw = torch.frombuffer(view.cast("B") if view.format != "B" else view,
                                   dtype=torch.uint8)
        tensor = raw.view(kind).reshape(shape)
    if parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor


def dispatch_table(base=None, protocol: int = 5, *, numpy_native: bool = False) -> dict:
    """``copyreg.dispatch_table`` plus the array and tensor reducers of the libraries that
    are already imported (an object of a library that is not imported cannot be pickled).

    A reducer that declines falls back to the object's own ``__reduce_ex__``: a dispatch
    table, unlike ``reducer_override``, has no way to say "not mine".

    ``numpy_native``: leave contiguous arrays to numpy's own reduction, which puts them out
    of band too and names only numpy (``mason.dumps`` with a ``buffer_callback``: its
    pickles then load without mason wherever they can)."""
    table = dict(copyreg.dispatch_table if base is None else base)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        reduce = _or_own(reduce_ndarray, protocol)
        if numpy_native:
            def reduce(obj, _mine=reduce):
                flags = obj.flags
                if (flags.c_contiguous or flags.f_contiguous) or obj.dtype.hasobject:
                    return obj.__reduce_ex__(protocol)
                return _mine(obj)
        table[numpy.ndarray] = reduce
    torch = sys.modules.get("torch")
    if torch is not None:
        # One table per pickler, hence one map of the storages met so far per pickle.
        storages: dict = {}

        def reduce_tensor_(obj):
            return reduce_tensor(obj, storages)
        reduce_tensor_.__name__ = "reduce_tensor"
        table[torch.Tensor] = table[torch.nn.Parameter] = _or_own(reduce_tensor_, protocol)
    return table


def _or_own(reducer, protocol):
    def reduce(obj):
        reduced = reducer(obj)
        return obj.__reduce_ex__(protocol) if reduced is NotImplemented else reduced
    reduce.__name__ = reducer.__name__
    return reduce
