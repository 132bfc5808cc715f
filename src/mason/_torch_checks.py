"""Checked stand-ins for torch's tensor reconstructors, used by the ``torch`` preset
(``mason.presets``) and by mason's reader of torch checkpoints (``mason._containers_read``);
documented in ``docs/models.md``.

A checkpoint written by ``torch.save`` is a pickle (``data.pkl``) whose tensors are
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``
and whose storages are persistent ids ``('storage', torch.FloatStorage, key, location,
numel)``, resolved by the loader to the bytes of the member ``data/<key>``.  mason resolves
them itself (no ``torch.load``): the storage class names become inert ``StorageType``
tokens (calling one is refused: a storage class called from a stream would allocate or read
files), and the rebuild functions accept only what ``torch.save`` writes: a storage from the
loader, in-bounds integer geometry, no backward hooks (hooks are callables run later), no
Python state on the tensor.

Sparse and quantized tensors (``_rebuild_sparse_tensor``, ``_rebuild_qtensor``, which
``torch.load(weights_only=True)`` also accepts) are rebuilt from checked parts: a quantized
tensor's storage must come from the loader and its geometry and per-channel parameters fit
its size; a sparse tensor's indices are validated against its size (torch's own
invariant checks) before the load returns it.

mason's own tensors (``mason.arrays``) keep their storage's rebuild here: ``TensorStorage``
and ``rebuild_storage``.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict

from .errors import UnsafeGlobalError

__all__ = ["StorageType", "STORAGE_TYPES", "LoadedStorage", "rebuild_tensor_v2",
           "rebuild_parameter", "rebuild_parameter_with_state", "rebuild_from_type_v2",
           "load_from_bytes", "rebuild_qtensor", "rebuild_sparse_tensor", "get_layout",
           "deferred_sparse_checks", "TensorStorage", "rebuild_storage"]


def _refuse(message: str):
    raise UnsafeGlobalError(message)


# The legacy storage class names that checkpoints carry, with the dtype each stands for.
STORAGE_TYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "UntypedStorage": "uint8",
    "Float8_e4m3fnStorage": "float8_e4m3fn", "Float8_e5m2Storage": "float8_e5m2",
    # quantized tensors' storages: read only by rebuild_qtensor
    "QUInt8Storage": "quint8", "QInt8Storage": "qint8", "QInt32Storage": "qint32",
}
_QUANTIZED = ("quint8", "qint8", "qint32")
_HUGE = 1 << 62


class StorageType:
    """What a storage class name in a checkpoint resolves to: the dtype it stands for, and
    nothing callable."""

    __slots__ = ("name", "dtype_name")

    def __init__(self, name: str, dtype_name: str):
        self.name = name
        self.dtype_name = dtype_name

    @property
    def dtype(self):
        import torch
        return getattr(torch, self.dtype_name)

    def __call__(self, *args, **kwargs):
        _refuse(f"torch.{self.name} called from the stream: a checkpoint names storage "
                f"classes only inside persistent ids")

    def __repr__(self) -> str:
        return f"<storage type torch.{self.name}>"


class LoadedStorage:
    """A storage the loader resolved from a persistent id: its bytes as a uint8 tensor, and
    the dtype the checkpoint says it holds."""

    __slots__ = ("data", "dtype", "key")

    def __init__(self, data, dtype, key):
        self.data = data          # a 1-d torch.uint8 tensor over the storage's bytes
        self.dtype = dtype
        self.key = key


def _ints(value, what: str) -> tuple:
    if isinstance(value, int) and type(value) is not bool:
        value = (value,)
    if not isinstance(value, tuple) or not all(type(n) is int for n in value) \
            or len(value) > 64:
        _refuse(f"torch _rebuild_tensor_v2: {what} must be a tuple of ints")
    return value


def _no_hooks(hooks) -> None:
    if hooks is None:
        return
    if not isinstance(hooks, (dict, OrderedDict)) or hooks:
        _refuse("torch tensor with backward hooks: hooks are functions that would run on "
                "the next backward pass; a checkpoint of weights has none")


def _storage_geometry(what: str, storage, storage_offset, size, stride):
    """Check that a tensor of ``size`` and ``stride`` at ``storage_offset`` stays inside
    ``storage`` (torch's ``set_`` does not check); returns (size, stride) as tuples."""
    if not isinstance(storage, LoadedStorage):
        _refuse(f"torch {what} called with {type(storage).__name__}: only a storage of the "
                f"checkpoint (a persistent id) is accepted")
    if type(storage_offset) is not int or storage_offset < 0:
        _refuse(f"torch {what}: the storage offset must be a non-negative int")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or storage_offset >= _HUGE \
            or not all(0 <= n < _HUGE for n in size + stride):
        # (torch takes them as int64: a larger one would fail with an overflow error)
        _refuse(f"torch {what}: size and stride must be non-negative and below 2**62, one "
                f"each per dimension")
    itemsize = storage.dtype.itemsize
    nbytes = storage.data.numel()
    if all(size):
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if (last + 1) * itemsize > nbytes:
            _refuse(f"torch {what}: size {size} and stride {stride} from offset "
                    f"{storage_offset} reach past the storage {storage.key!r} of "
                    f"{nbytes // itemsize if itemsize else 0} elements")
    if nbytes % itemsize:
        _refuse(f"torch storage {storage.key!r} has {nbytes} bytes, not a whole number of "
                f"{storage.dtype} elements")
    return size, stride


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                      backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 over a storage the loader resolved."""
    import torch

    size, stride = _storage_geometry("_rebuild_tensor_v2", storage, storage_offset, size,
                                     stride)
    if storage.dtype is not None and str(storage.dtype).rpartition(".")[2] in _QUANTIZED:
        _refuse(f"torch _rebuild_tensor_v2 over the quantized storage {storage.key!r}: "
                f"quantized tensors are rebuilt by _rebuild_qtensor")
    if type(requires_grad) is not bool:
        _refuse("torch _rebuild_tensor_v2: requires_grad must be a bool")
    _no_hooks(backward_hooks)
    if metadata:
        _refuse("torch _rebuild_tensor_v2 with tensor metadata (conjugate / negative bits) "
                "is not supported by the preset")
    dtype = storage.dtype
    tensor = torch.empty((0,), dtype=dtype)
    if all(size) or storage.data.numel():
        tensor.set_(storage.data.view(dtype).untyped_storage(), storage_offset, size, stride)
    else:
        tensor = torch.empty(size, dtype=dtype)
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor


rebuild_tensor_v2.__name__ = rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"


def rebuild_parameter(data, requires_grad, backward_hooks):
    """torch._utils._rebuild_parameter: ``nn.Parameter(tensor, requires_grad)``."""
    import torch

    if type(data) is not torch.Tensor or type(requires_grad) is not bool:
        _refuse("torch _rebuild_parameter: a tensor and a bool are expected")
    _no_hooks(backward_hooks)
    return torch.nn.Parameter(data, requires_grad)


rebuild_parameter.__name__ = rebuild_parameter.__qualname__ = "_rebuild_parameter"


def rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    """torch._utils._rebuild_parameter_with_state, for parameters without Python state."""
    if state:
        _refuse("torch parameter with Python attributes: setting them could call code")
    return rebuild_parameter(data, requires_grad, backward_hooks)


rebuild_parameter_with_state.__name__ = "_rebuild_parameter_with_state"
rebuild_parameter_with_state.__qualname__ = "_rebuild_parameter_with_state"


def rebuild_from_type_v2(func, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2, as torch writes it for a plain tensor or
    parameter: ``func`` is one of the rebuild functions above, no Python state."""
    import torch

    if func not in (rebuild_tensor_v2, rebuild_parameter, rebuild_parameter_with_state) \
            or new_type not in (torch.Tensor, torch.nn.Parameter) \
            or not isinstance(args, tuple) or state:
        _refuse("torch _rebuild_from_type_v2 is accepted only for plain tensors and "
                "parameters rebuilt by torch's own functions")
    tensor = func(*args)
    if new_type is torch.nn.Parameter and type(tensor) is not torch.nn.Parameter:
        tensor = torch.nn.Parameter(tensor, tensor.requires_grad)
    return tensor


rebuild_from_type_v2.__name__ = rebuild_from_type_v2.__qualname__ = "_rebuild_from_type_v2"


_nesting = threading.local()


def load_from_bytes(data):
    """torch.storage._load_from_bytes, as a plain ``pickle.dumps(tensor)`` writes each
    storage: the bytes of a legacy ``torch.save`` of that one storage.  torch would call
    ``torch.load`` on them; mason reads them with its own checkpoint reader under the
    torch preset, and accepts only a storage as the result.  Not nested."""
    if not isinstance(data, (bytes, bytearray)):
        _refuse("torch _load_from_bytes called without bytes")
    if getattr(_nesting, "depth", 0):
        _refuse("torch _load_from_bytes inside the bytes of another: refused")
    from ._containers_read import load_bytes

    _nesting.depth = 1
    try:
        result = load_bytes(data, {"preset": "torch"}, 0)
    finally:
        _nesting.depth = 0
    if not isinstance(result, LoadedStorage):
        _refuse(f"torch _load_from_bytes gave a {type(result).__name__}, not a storage")
    return result


load_from_bytes.__name__ = load_from_bytes.__qualname__ = "_load_from_bytes"


# --- quantized and sparse tensors ----------------------------------------------------------

def rebuild_qtensor(storage, storage_offset, size, stride, quantizer_params,
                    requires_grad=False, backward_hooks=None):
    """torch._utils._rebuild_qtensor over a quantized storage the loader resolved, with a
    per-tensor or per-channel affine quantizer whose parameters fit the tensor."""
    import torch

    what = "_rebuild_qtensor"
    size, stride = _storage_geometry(what, storage, storage_offset, size, stride)
    if str(storage.dtype).rpartition(".")[2] not in _QUANTIZED:
        _refuse(f"torch {what} over a storage of {storage.dtype}, not a quantized one")
    if requires_grad is not False:
        _refuse(f"torch {what}: quantized tensors do not require grad")
    _no_hooks(backward_hooks)
    if not isinstance(quantizer_params, tuple) or not quantizer_params:
        _refuse(f"torch {what}: the quantizer parameters must be a tuple")
    scheme = quantizer_params[0]
    if scheme is torch.per_tensor_affine and len(quantizer_params) == 3:
        _, scale, zero_point = quantizer_params
        if type(scale) not in (float, int) or type(zero_point) is not int:
            _refuse(f"torch {what}: per-tensor scale and zero point must be numbers")
        tensor = torch._empty_affine_quantized(size, scale=scale, zero_point=zero_point,
                                               dtype=storage.dtype)
    elif scheme in (torch.per_channel_affine, torch.per_channel_affine_float_qparams) \
            and len(quantizer_params) == 4:
        _, scales, zero_points, axis = quantizer_params
        if type(axis) is not int or not 0 <= axis < len(size):
            _refuse(f"torch {what}: per-channel axis {axis!r:.20} is not a dimension of a "
                    f"tensor of size {size}")
        floats = scheme is torch.per_channel_affine_float_qparams
        scales = _channel_values(what, scales, size[axis], torch.float if floats
                                 else torch.double)
        zero_points = _channel_values(what, zero_points, size[axis], torch.float if floats
                                      else torch.long)
        tensor = torch._empty_per_channel_affine_quantized(
            size, scales=scales, zero_points=zero_points, axis=axis, dtype=storage.dtype)
    else:
        _refuse(f"torch {what}: quantizer {scheme!r:.40} is not an affine quantizer with "
                f"its parameters")
    tensor.set_(storage.data.untyped_storage(), storage_offset, size, stride)
    return tensor


rebuild_qtensor.__name__ = rebuild_qtensor.__qualname__ = "_rebuild_qtensor"


def _channel_values(what: str, values, count: int, dtype):
    """Per-channel scales or zero points: a list of numbers or a 1-d tensor, one per
    channel (torch's constructor does not check the count)."""
    import torch

    if type(values) is list and all(type(v) in (int, float) for v in values):
        values = torch.tensor(values, dtype=dtype)
    if type(values) is not torch.Tensor or values.dim() != 1 or values.numel() != count:
        _refuse(f"torch {what}: per-channel parameters must be {count} values, one per "
                f"channel")
    return values


_SPARSE_LAYOUTS = ("sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc")


def get_layout(name):
    """torch.serialization._get_layout: a layout by its name (``"torch.sparse_coo"``)."""
    import torch

    layouts = ("strided",) + _SPARSE_LAYOUTS
    if type(name) is not str or name.partition(".")[2] not in layouts \
            or not name.startswith("torch."):
        _refuse(f"torch _get_layout: {name!r:.40} is not a tensor layout")
    return getattr(torch, name.partition(".")[2])


get_layout.__name__ = get_layout.__qualname__ = "_get_layout"


_deferred = threading.local()


class deferred_sparse_checks:
    """``with deferred_sparse_checks():`` around a load whose storages are filled after the
    pickle runs (the legacy checkpoint format): sparse tensors built inside are validated
    by ``check()`` once their indices hold the file's values, not when they are built."""

    def __enter__(self):
        self.outer = getattr(_deferred, "pending", None)
        self.pending = _deferred.pending = []
        return self

    def check(self) -> None:
        for tensor in self.pending:
            _validate_sparse(tensor)
        self.pending.clear()

    def __exit__(self, *exc):
        _deferred.pending = self.outer


def rebuild_sparse_tensor(layout, data):
    """torch._utils._rebuild_sparse_tensor, whose indices are validated against the
    tensor's size (torch builds sparse tensors without checking them: an index past the
    size would address memory outside the values)."""
    import torch

    what = "_rebuild_sparse_tensor"
    if not isinstance(data, tuple) or not all(
            type(part) is torch.Tensor and part.layout is torch.strided
            for part in data if not isinstance(part, (tuple, bool, type(None)))):
        _refuse(f"torch {what}: the parts of a sparse tensor must be dense tensors")
    if layout is torch.sparse_coo and len(data) in (3, 4):
        indices, values, size = data[:3]
        coalesced = data[3] if len(data) == 4 else None
        if type(coalesced) not in (bool, type(None)):
            _refuse(f"torch {what}: is_coalesced must be a bool")
        tensor = torch.sparse_coo_tensor(indices, values, _ints(size, "size"),
                                         check_invariants=False, is_coalesced=coalesced)
    elif layout in tuple(getattr(torch, name) for name in _SPARSE_LAYOUTS[1:]) \
            and len(data) == 4:
        compressed, plain, values, size = data
        tensor = torch.sparse_compressed_tensor(compressed, plain, values,
                                                _ints(size, "size"), layout=layout,
                                                check_invariants=False)
    else:
        _refuse(f"torch {what}: layout {layout!r:.30} with {len(data)} parts is not a sparse "
                f"tensor torch writes")
    pending = getattr(_deferred, "pending", None)
    if pending is not None:
        pending.append(tensor)
    else:
        _validate_sparse(tensor)
    return tensor


rebuild_sparse_tensor.__name__ = rebuild_sparse_tensor.__qualname__ = \
    "_rebuild_sparse_tensor"


def _validate_sparse(tensor) -> None:
    """torch's own invariant checks, as torch.load runs them on the sparse tensors it
    loaded: indices inside the size, compressed indices sorted and consistent."""
    import torch

    try:
        if tensor.layout is torch.sparse_coo:
            torch._validate_sparse_coo_tensor_args(tensor._indices(), tensor._values(),
                                                   tensor.size(), tensor.is_coalesced())
        else:
            if tensor.layout in (torch.sparse_csr, torch.sparse_bsr):
                compressed, plain = tensor.crow_indices(), tensor.col_indices()
            else:
                compressed, plain = tensor.ccol_indices(), tensor.row_indices()
            torch._validate_sparse_compressed_tensor_args(compressed, plain, tensor.values(),
                                                          tensor.size(), tensor.layout)
    except (RuntimeError, ValueError, IndexError) as exc:
        _refuse(f"torch sparse tensor of size {tuple(tensor.size())} whose indices do not "
                f"fit it: {str(exc)[:200]}")


# --- mason's own tensors (mason.arrays) ------------------------------------------------------
#
# They live here, beside torch's, and are re-exported by mason.arrays: a pickle names
# rebuild_storage under this module, and rebuild_tensor_view under mason.arrays.  With two
# module names, the pickler writes each as a literal; two functions of one module make it
# fetch the module's name from the memo for the second, and the compiled pass that lists a
# stream's globals (which decides, among other things, whether a load needs the symbolic
# machine) cannot follow a memo fetch.

class TensorStorage:
    """The bytes of one torch storage in a pickle: one object per storage, so that the
    pickler writes it (and hands its buffer out) once and every tensor that views it
    refers to it by memo.  Loaded back by ``rebuild_storage``, it holds ``data``, a 1-d
    uint8 tensor over those bytes, for ``rebuild_tensor_view``."""

    __slots__ = ("buffer", "data")

    def __init__(self, buffer=None, data=None):
        self.buffer = buffer      # when saving: a PickleBuffer of the storage's bytes
        self.data = data          # when loaded: a torch.uint8 tensor over them

    @classmethod
    def of(cls, untyped) -> "TensorStorage":
        import numpy as np
        import torch

        if untyped.nbytes():
            raw = torch.empty(0, dtype=torch.uint8).set_(untyped).numpy()
        else:
            raw = np.empty(0, np.uint8)
        return cls(pickle.PickleBuffer(raw))

    def __reduce__(self):
        if self.buffer is None:
            raise pickle.PicklingError("a loaded mason TensorStorage is not pickled again: "
                                       "pickle the tensors that use it")
        return rebuild_storage, (self.buffer,)


def rebuild_storage(buffer) -> TensorStorage:
    """The storage that ``reduce_tensor`` wrote: a view of ``buffer`` when it is writable (a
    file container's copy-on-write map, or a buffer read into memory), else one copy
    (torch has no read-only tensors: a view of read-only memory would crash on the first
    write).  Either way, every tensor of the storage views the same memory."""
    import torch

    try:
        if isinstance(buffer, TensorStorage):
            raise TypeError
        view = memoryview(buffer)
    except TypeError:
        raise UnsafeGlobalError(f"mason rebuild_storage called with "
                                f"{type(buffer).__name__}: a buffer of bytes is expected"
                                ) from None
    if view.readonly:
        view = memoryview(bytearray(view))
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if not view.nbytes:
        return TensorStorage(data=torch.empty(0, dtype=torch.uint8))
    return TensorStorage(data=torch.frombuffer(view, dtype=torch.uint8))
