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
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .errors import UnsafeGlobalError

__all__ = ["StorageType", "STORAGE_TYPES", "LoadedStorage", "rebuild_tensor_v2",
           "rebuild_parameter", "rebuild_parameter_with_state", "rebuild_from_type_v2",
           "load_from_bytes"]


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
}


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


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                      backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 over a storage the loader resolved."""
    import torch

    if not isinstance(storage, LoadedStorage):
        _refuse(f"torch _rebuild_tensor_v2 called with {type(storage).__name__}: only a "
                f"storage of the checkpoint (a persistent id) is accepted")
    if type(storage_offset) is not int or storage_offset < 0:
        _refuse("torch _rebuild_tensor_v2: the storage offset must be a non-negative int")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or any(n < 0 for n in size) or any(s < 0 for s in stride):
        _refuse("torch _rebuild_tensor_v2: size and stride must be non-negative, one each "
                "per dimension")
    if type(requires_grad) is not bool:
        _refuse("torch _rebuild_tensor_v2: requires_grad must be a bool")
    _no_hooks(backward_hooks)
    if metadata:
        _refuse("torch _rebuild_tensor_v2 with tensor metadata (conjugate / negative bits) "
                "is not supported by the preset")
    dtype = storage.dtype
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = storage.data.numel()
    count = 1
    for n in size:
        count *= n
    if count:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if (last + 1) * itemsize > nbytes:
            _refuse(f"torch _rebuild_tensor_v2: size {size} and stride {stride} from "
                    f"offset {storage_offset} reach past the storage {storage.key!r} of "
                    f"{nbytes // itemsize if itemsize else 0} elements")
    typed = storage.data.view(dtype) if nbytes % itemsize == 0 else None
    if typed is None:
        _refuse(f"torch storage {storage.key!r} has {nbytes} bytes, not a whole number of "
                f"{dtype} elements")
    tensor = torch.empty((0,), dtype=dtype)
    if count or nbytes:
        tensor.set_(typed.untyped_storage(), storage_offset, size, stride)
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
