"""Torch tensors as torch.save users expect them back: views of one storage and tied
weights still share it, sparse and quantized tensors round-trip."""

from __future__ import annotations

import pickle
import warnings
import zipfile

import pytest
import torch

import mason
from mason import UnsafeGlobalError
from mason.arrays import TensorStorage, rebuild_storage, rebuild_tensor, \
    rebuild_tensor_view

PRESETS = ["numpy", "torch"]


def _same_storage(a, b) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _views():
    base = torch.arange(24.0)
    return {"base": base, "tail": base[2:], "matrix": base.view(4, 6),
            "transposed": base.view(4, 6).t(), "strided": base[::3]}


def _load_both(tmp_path, obj, how):
    """``obj`` back through mason's container (full or mapped) or a torch.save file."""
    if how == "torch.save":
        path = tmp_path / "views.pt"
        torch.save(obj, path)
        return mason.load(path)
    path = tmp_path / "views.mason"
    mason.dump(obj, path)
    return mason.load(path, mmap=how == "mmap", preset=PRESETS)


@pytest.mark.parametrize("how", ["full", "mmap", "torch.save"])
def test_views_of_one_storage_share_it_again(tmp_path, how):
    views = _views()
    got = _load_both(tmp_path, views, how)
    want = torch.load(_saved(tmp_path, views), weights_only=True)
    for name, view in views.items():
        assert got[name].dtype == view.dtype and got[name].shape == view.shape, name
        assert got[name].stride() == view.stride(), name
        assert got[name].storage_offset() == view.storage_offset(), name
        assert torch.equal(got[name], view), name
        assert _same_storage(got[name], got["base"]) == _same_storage(want[name],
                                                                       want["base"])
    got["base"][5] = -1.0           # a write through one view shows in the others,
    assert got["tail"][3] == -1.0   # as after torch.load
    assert got["matrix"][0, 5] == -1.0 and got["transposed"][5, 0] == -1.0


def _saved(tmp_path, obj):
    path = tmp_path / "reference.pt"
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("mmap", [False, True])
def test_views_of_another_dtype_share_the_storage(tmp_path, mmap):
    # torch.save refuses this; mason keeps it
    base = torch.arange(6, dtype=torch.int32)
    path = tmp_path / "bytes.mason"
    mason.dump([base, base.view(torch.uint8)[4:]], path)
    got = mason.load(path, mmap=mmap, preset="torch")
    assert torch.equal(got[1], base.view(torch.uint8)[4:]) and _same_storage(*got)


def test_a_shared_storage_is_written_once(tmp_path):
    views = _views()
    path = tmp_path / "views.mason"
    mason.dump(views, path)
    with zipfile.ZipFile(path) as archive:
        buffers = [i for i in archive.infolist() if i.filename.startswith("buffers/")]
    assert len(buffers) == 1 and buffers[0].file_size == views["base"].nbytes


def _tied_model():
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 50))
    model[1].weight = model[0].weight          # tied input and output embeddings
    return model


@pytest.mark.parametrize("mmap", [False, True])
def test_tied_weights_of_a_state_dict_stay_tied(tmp_path, mmap):
    state = _tied_model().state_dict()         # two tensors, one storage
    assert _same_storage(state["0.weight"], state["1.weight"])
    path = tmp_path / "tied.mason"
    mason.dump(state, path)
    got = mason.load(path, mmap=mmap, preset="torch")
    assert _same_storage(got["0.weight"], got["1.weight"])
    assert torch.equal(got["1.weight"], state["1.weight"])
    model = _tied_model()
    model.load_state_dict(got)
    assert torch.equal(model(torch.tensor([3]).long()), _reference_output(state))


def _reference_output(state):
    model = _tied_model()
    model.load_state_dict(state)
    return model(torch.tensor([3]).long())


def test_a_tied_parameter_is_one_object(tmp_path):
    weight = torch.nn.Parameter(torch.randn(5, 3))
    path = tmp_path / "params.mason"
    mason.dump({"a": weight, "b": weight, "part": weight.detach()[1:]}, path)
    got = mason.load(path, preset="torch")
    assert got["a"] is got["b"] and type(got["a"]) is torch.nn.Parameter
    assert _same_storage(got["a"], got["part"]) and torch.equal(got["part"], weight[1:])


def test_dumps_with_a_buffer_callback_shares_storages():
    base = torch.arange(10.0)
    buffers = []
    data = mason.dumps([base, base[4:], base[4:]], buffer_callback=buffers.append)
    assert len(buffers) == 1
    for got in (mason.loads(data, buffers=buffers, preset="torch"),
                pickle.loads(data, buffers=buffers)):
        assert _same_storage(got[0], got[1]) and torch.equal(got[1], base[4:])


def test_a_view_of_a_larger_storage_keeps_the_storage():
    # as torch.save does: the whole storage travels, and comes back under the view
    big = torch.arange(1000.0)
    data = mason.dumps(big[10:12])
    got = mason.loads(data, preset="torch")
    assert torch.equal(got, big[10:12]) and got.storage_offset() == 10


def test_rebuild_tensor_view_stays_inside_its_storage():
    storage = rebuild_storage(bytearray(16))
    with pytest.raises(UnsafeGlobalError, match="reach byte"):
        rebuild_tensor_view(storage, "float32", 2, (3,), (1,))
    with pytest.raises(UnsafeGlobalError, match="reach byte"):
        rebuild_tensor_view(storage, "float64", 0, (2, 2), (2, 1))
    with pytest.raises(UnsafeGlobalError, match="rebuild_storage"):
        rebuild_tensor_view(bytearray(16), "float32", 0, (4,), (1,))
    with pytest.raises(UnsafeGlobalError):
        rebuild_tensor_view(storage, "float32", -1, (1,), (1,))
    with pytest.raises(UnsafeGlobalError):
        rebuild_tensor_view(storage, "object", 0, (1,), (1,))
    for offset, shape, stride in [(0, (0, 2**70), (1, 1)), (2**70, (0,), (1,))]:
        with pytest.raises(UnsafeGlobalError):   # not an overflow error from torch
            rebuild_tensor_view(storage, "float32", offset, shape, stride)
    with pytest.raises(UnsafeGlobalError):
        rebuild_storage(TensorStorage(data=torch.zeros(2, dtype=torch.uint8)))
    assert rebuild_tensor_view(storage, "float32", 1, (3,), (1,)).shape == (3,)
    assert rebuild_tensor_view(storage, "float32", 9, (0, 5), (5, 1)).numel() == 0


def test_a_loaded_read_only_buffer_is_copied_once():
    storage = rebuild_storage(bytes(range(8)))
    a = rebuild_tensor_view(storage, "uint8", 0, (8,), (1,))
    b = rebuild_tensor_view(storage, "uint8", 4, (4,), (1,))
    a[4] = 99
    assert b[0] == 99


def test_tensors_of_the_earlier_layout_still_load():
    # files written before tensors kept their storage name mason.arrays.rebuild_tensor
    class Old:
        def __reduce__(self):
            raw = torch.arange(6, dtype=torch.int32).view(torch.uint8).numpy()
            return rebuild_tensor, (pickle.PickleBuffer(raw), "int32", (2, 3), False, False)

    got = mason.loads(pickle.dumps(Old(), 5), preset="torch")
    assert torch.equal(got, torch.arange(6, dtype=torch.int32).view(2, 3))


# --- sparse and quantized tensors ------------------------------------------------------------

def _special():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # beta layouts, deprecated quantization: still used
        dense = torch.randn(6, 4)
        dense[dense < 0.3] = 0
        return {
            "coo": dense.to_sparse(),
            "coo uncoalesced": torch.sparse_coo_tensor(torch.tensor([[0, 0, 3]]),
                                                       torch.tensor([1.0, 2.0, 3.0]), (5,)),
            "csr": dense.to_sparse_csr(),
            "csc": dense.to_sparse_csc(),
            "bsr": dense.to_sparse_bsr((2, 2)),
            "bsc": dense.to_sparse_bsc((2, 2)),
            "per tensor": torch.quantize_per_tensor(dense, 0.05, 10, torch.quint8),
            "per channel": torch.quantize_per_channel(
                dense, torch.rand(6, dtype=torch.double) + 0.1, torch.zeros(6).long(), 0,
                torch.qint8),
            "float qparams": torch.quantize_per_channel(
                dense, torch.rand(4) + 0.1, torch.rand(4), 1, torch.quint8),
            "qint32": torch.quantize_per_tensor(dense, 0.01, 0, torch.qint32),
        }


def _check_special(got, want):
    assert got.layout == want.layout and got.dtype == want.dtype and got.shape == want.shape
    if want.is_quantized:
        assert got.qscheme() == want.qscheme()
        assert torch.equal(got.int_repr(), want.int_repr())
        assert torch.equal(got.dequantize(), want.dequantize())
    else:
        assert torch.equal(got.to_dense(), want.to_dense())


WAYS = ["container", "container mmap", "torch.save", "torch.save mmap", "torch.save legacy",
        "pickle", "mason.dumps", "buffer_callback"]


def _through(way, obj, tmp_path):
    if way.startswith("container"):
        path = tmp_path / "special.mason"
        mason.dump(obj, path)
        return mason.load(path, mmap=way.endswith("mmap"), preset="torch")
    if way.startswith("torch.save"):
        path = tmp_path / "special.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=not way.endswith("legacy"))
        return mason.load(path, mmap=way.endswith("mmap"))
    if way == "pickle":
        return mason.loads(pickle.dumps(obj, 4), preset="torch")
    if way == "mason.dumps":
        return mason.loads(mason.dumps(obj), preset="torch")
    buffers = []
    data = mason.dumps(obj, buffer_callback=buffers.append)
    return mason.loads(data, buffers=buffers, preset="torch")


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("name", list(_special()))
def test_sparse_and_quantized_tensors_round_trip_under_the_preset(tmp_path, name, way):
    want = _special()[name]
    got = _through(way, {"t": want}, tmp_path)["t"]
    _check_special(got, want)


def test_sparse_and_quantized_in_a_trusted_load_of_a_checkpoint(tmp_path):
    tensors = {**_special(), "dense": torch.arange(5.0)}
    path = tmp_path / "all.pt"
    torch.save(tensors, path)
    got = mason.load(path, trusted=True)   # torch's own rebuilds, mason's storages
    for name, want in tensors.items():
        _check_special(got[name], want)


def _forged_sparse():
    return torch.sparse_coo_tensor(torch.tensor([[0, 1000]]), torch.tensor([1.0, 2.0]),
                                   (3,), check_invariants=False)


@pytest.mark.parametrize("way", ["pickle", "torch.save", "torch.save legacy", "container"])
def test_sparse_indices_outside_the_size_are_refused(tmp_path, way):
    # torch builds sparse tensors unchecked; an index past the size addresses memory
    # outside the values on the first use
    with pytest.raises(UnsafeGlobalError, match="sparse tensor"):
        _through(way, {"t": _forged_sparse()}, tmp_path)


class _ForgedQuantized:
    """A quantized tensor whose parameters do not fit it, in torch's own reduction."""

    def __init__(self, size, params, offset=0):
        self.size, self.params, self.offset = size, params, offset

    def __reduce__(self):
        from collections import OrderedDict
        storage = torch.quantize_per_tensor(torch.zeros(16), 1.0, 0,
                                            torch.quint8).untyped_storage()
        typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.quint8,
                                           _internal=True)
        stride = tuple(int(torch.tensor(self.size[i + 1:]).prod()) for i in
                       range(len(self.size)))
        return torch._utils._rebuild_qtensor, (typed, self.offset, self.size, stride,
                                               self.params, False, OrderedDict())


@pytest.mark.parametrize("forged, match", [
    (_ForgedQuantized((4, 4), (torch.per_tensor_affine, 1.0, 0), offset=8), "reach past"),
    (_ForgedQuantized((8, 8), (torch.per_tensor_affine, 1.0, 0)), "reach past"),
    (_ForgedQuantized((4, 4), (torch.per_channel_affine, torch.ones(3, dtype=torch.double),
                               torch.zeros(3).long(), 0)), "one per channel"),
    (_ForgedQuantized((4, 4), (torch.per_channel_affine, torch.ones(4, dtype=torch.double),
                               torch.zeros(4).long(), 2)), "axis"),
])
def test_quantized_tensors_that_do_not_fit_are_refused(forged, match):
    data = pickle.dumps(forged, 4)
    with pytest.raises(UnsafeGlobalError, match=match):
        mason.loads(data, preset="torch")


def test_a_trusted_load_of_a_torch_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    base = torch.arange(6.0)
    torch.save({"a": base, "b": base[2:]}, path)
    got = mason.load(path, trusted=True)
    assert torch.equal(got["b"], base[2:]) and _same_storage(got["a"], got["b"])


def test_a_tensor_container_is_not_run_on_the_symbolic_machine(tmp_path, monkeypatch):
    # the globals of its stream are read off it (no memo fetch of a module name), and no
    # dtype check needs a run
    import numpy as np

    from mason._numpy_checks import _globals_through_memo, stream_globals
    from mason.format import machine
    from mason.limits import global_names

    state = {"w": torch.ones(3), "b": torch.zeros(2), "n": np.arange(4)}
    path = tmp_path / "mixed.mason"
    mason.dump(state, path)
    with zipfile.ZipFile(path) as archive:
        data = archive.read("data.pkl")
    names = stream_globals(data)
    assert names == global_names(data) == _globals_through_memo(data)
    assert ("mason._torch_checks", "rebuild_storage") in names
    assert ("mason.arrays", "rebuild_tensor_view") in names

    def refuse(*args, **kwargs):
        raise AssertionError("the stream was run on the symbolic machine")
    monkeypatch.setattr(machine, "simulate", refuse)
    got = mason.load(path, preset=["numpy", "torch"])
    assert torch.equal(got["w"], state["w"]) and got["n"].tolist() == [0, 1, 2, 3]
    with pytest.raises(AssertionError, match="symbolic machine"):
        mason.loads(pickle.dumps(np.dtype([("a", "<f8")])), preset="numpy")


def test_globals_are_read_through_memoized_module_names():
    # two globals of one module: the pickler fetches the module's name from the memo for
    # the second, which the compiled pass does not follow
    import collections

    from mason._numpy_checks import _globals_through_memo, stream_globals

    data = pickle.dumps([collections.OrderedDict(a=1), collections.Counter("ab")], 5)
    assert stream_globals(data) == _globals_through_memo(data) == [
        ("collections", "OrderedDict"), ("collections", "Counter")]
    assert _globals_through_memo(b"\x80\x04\x82\x01.") is None   # an extension code


def test_checkpoint_geometry_beyond_int64_is_refused():
    from mason._torch_checks import LoadedStorage, rebuild_tensor_v2

    storage = LoadedStorage(torch.zeros(16, dtype=torch.uint8), torch.float32, "0")
    for offset, size, stride in [(0, (0, 2**70), (1, 1)), (2**70, (0,), (1,))]:
        with pytest.raises(UnsafeGlobalError, match="below 2\\*\\*62"):
            rebuild_tensor_v2(storage, offset, size, stride)
    assert rebuild_tensor_v2(storage, 1, (3,), (1,)).shape == (3,)
