"""mason.dumps puts arrays and tensors out of band whenever the caller takes buffers, and
in-band otherwise; either way the standard library loads the bytes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import mason

ARRAYS = {
    "contiguous": np.arange(1000.0),
    "fortran": np.asfortranarray(np.arange(600.0).reshape(20, 30)),
    "strided": np.arange(4000.0).reshape(40, 100)[::3, 1::7],
    "reversed": np.arange(100, dtype=np.int16)[::-1],
    "0-d": np.array(1.25),
    "empty": np.zeros((0, 7), dtype=np.uint8),
    "structured": np.zeros(50, dtype=[("a", "<f8"), ("b", "i1", (3,))])[::2],
    "datetime": np.arange(0, 100, dtype="datetime64[s]")[::2],
    "read-only": np.frombuffer(bytes(800), dtype=np.float64),
}


@pytest.mark.parametrize("name", ARRAYS)
def test_arrays_with_a_buffer_callback(name):
    array = ARRAYS[name]
    buffers = []
    data = mason.dumps(array, buffer_callback=buffers.append)
    if array.nbytes >= 100:
        assert buffers, "the data went in-band"
        assert len(data) < array.nbytes   # the stream holds no copy of it
    got = mason.loads(data, buffers=buffers, preset="numpy")
    want = pickle.loads(data, buffers=buffers)
    for result in (got, want):
        assert result.dtype == array.dtype and result.shape == array.shape
        assert result.tobytes() == array.tobytes()


@pytest.mark.parametrize("name", ARRAYS)
def test_arrays_in_band(name):
    array = ARRAYS[name]
    data = mason.dumps(array)
    got = mason.loads(data, preset="numpy")
    assert got.dtype == array.dtype and got.tobytes() == array.tobytes()


def test_object_arrays_stay_inline_under_the_policy():
    array = np.array([1, "two", (3,)], dtype=object)
    buffers = []
    data = mason.dumps(array, buffer_callback=buffers.append)
    assert buffers == []
    assert mason.loads(data, preset="numpy").tolist() == array.tolist()


TENSORS = {
    "float32": torch.randn(64, 32),
    "transposed": torch.randn(16, 8).t(),
    "bfloat16": torch.ones(100, dtype=torch.bfloat16),
    "int64": torch.arange(500),
    "bool": torch.tensor([True, False] * 50),
    "scalar": torch.tensor(3.5),
    "empty": torch.zeros(0, 4),
    "parameter": torch.nn.Parameter(torch.randn(10)),
    "requires grad": torch.ones(4, requires_grad=True),
}


@pytest.mark.parametrize("name", TENSORS)
def test_tensors_with_a_buffer_callback(name):
    tensor = TENSORS[name]
    buffers = []
    data = mason.dumps({"t": tensor}, buffer_callback=buffers.append)
    if tensor.numel():
        assert len(buffers) == 1
    got = mason.loads(data, buffers=buffers, preset="torch")["t"]
    want = pickle.loads(data, buffers=buffers)["t"]
    for result in (got, want):
        assert type(result) is type(tensor) and result.dtype == tensor.dtype
        assert result.shape == tensor.shape and torch.equal(result.detach(), tensor.detach())
        assert result.requires_grad == tensor.requires_grad


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("name", TENSORS)
def test_tensors_pickled_by_torch_itself(name, protocol):
    # pickle.dumps(tensor) writes each storage as torch.save bytes (_load_from_bytes):
    # the torch preset reads them with mason's own checkpoint reader.
    tensor = TENSORS[name]
    data = pickle.dumps({"t": tensor}, protocol)
    got = mason.loads(data, preset="torch")["t"]
    assert type(got) is type(tensor) and got.dtype == tensor.dtype
    assert torch.equal(got.detach(), tensor.detach())
