"""Hostile pickles that use only names a preset admits still cannot run code or reach
memory they do not own.  Where the standard library would run the payload, a control in a
subprocess shows that it does (the marker file appears, or the interpreter crashes)."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

import mason
from mason import UnsafeGlobalError

from models_helpers import run_python, stdlib_loads_in_subprocess
from models_payloads import (BUILD, EMPTY_DICT, NEWFALSE, NEWTRUE, NONE, call, dtype, dtype_state,
                       g, i, array_from_state, s, system, tup, whole, b)


class Touching:
    """An object whose pickle runs ``touch <marker>`` when stdlib pickle loads it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _refused(data, preset="numpy", error=UnsafeGlobalError, **kw):
    with pytest.raises(error) as info:
        mason.loads(data, preset=preset, **kw)
    return str(info.value)


def test_object_array_elements_go_through_the_policy(marker, tmp_path):
    payload = whole(array_from_state(dtype("O8", dtype_state("|", flags=63)), (1,),
                                     [system(f"touch {marker}")]))
    message = _refused(payload)
    assert "os.system" in message
    assert not marker.exists()
    control = stdlib_loads_in_subprocess(payload, tmp_path)
    assert control.returncode == 0, control.stderr
    assert marker.exists()


def test_object_scalar_goes_through_the_policy(marker, tmp_path):
    payload = whole(call(g("numpy._core.multiarray", "scalar"),
                         dtype("O8", dtype_state("|", flags=63)), system(f"touch {marker}")))
    assert "os.system" in _refused(payload)
    assert not marker.exists()
    stdlib_loads_in_subprocess(payload, tmp_path)
    assert marker.exists()


def test_forged_object_field_is_refused_before_it_becomes_a_pointer(tmp_path):
    # A void dtype whose field is an object, with the flags of plain data: numpy takes
    # eight bytes of the stream as a pointer to a Python object.
    forged = dtype("V8", dtype_state("|", names=tup(s("a")),
                                     fields=EMPTY_DICT + s("a") + tup(dtype("O8"), i(0))
                                     + b"s", elsize=8, alignment=1, flags=0))
    payload = whole(array_from_state(forged, (1,), b"\x41" * 8))
    message = _refused(payload)
    assert "forged" in message or "inconsistent" in message
    control = stdlib_loads_in_subprocess(payload, tmp_path, then="print(obj['a'][0])")
    assert control.returncode != 0   # the interpreter dereferences 0x4141414141414141


def test_forged_object_flags_on_a_float_dtype():
    payload = whole(array_from_state(dtype("f8", dtype_state("<", flags=63)), (1,),
                                     [i(1)]))
    assert "forged" in _refused(payload)


def test_field_outside_the_element_is_refused(tmp_path):
    forged = dtype("V8", dtype_state("|", names=tup(s("a")),
                                     fields=EMPTY_DICT + s("a") + tup(dtype("f8"), i(1 << 20))
                                     + b"s", elsize=8, alignment=1, flags=0))
    payload = whole(array_from_state(forged, (1,), b"\x00" * 8))
    _refused(payload)
    control = stdlib_loads_in_subprocess(payload, tmp_path,
                                         then="print(obj.dtype.fields['a'][1])")
    assert control.stdout.strip() == str(1 << 20)   # numpy accepted it as it was


def test_subarray_larger_than_its_element_is_refused():
    forged = dtype("V8", dtype_state("|", subarray=tup(dtype("f8"), tup(i(100))), elsize=8,
                                     alignment=8))
    _refused(whole(array_from_state(forged, (1,), b"\x00" * 8)))


def test_dtype_changed_under_an_existing_array_is_refused():
    # The dtype is made, used by an array, then given a larger itemsize by a second BUILD.
    made = dtype("V8") + b"\x94"          # memo 0
    array = call(g("numpy._core.multiarray", "_reconstruct"), g("numpy", "ndarray"),
                 tup(i(0)), b(b"b")) + tup(i(1), tup(i(1)), b"h\x00", NEWFALSE,
                                          b(b"\x00" * 8)) + BUILD
    rebuild = b"h\x00" + dtype_state("|", elsize=4096, alignment=1) + BUILD
    _refused(whole(tup(made, array, rebuild)))


def test_frombuffer_refuses_object_dtypes():
    payload = whole(call(g("numpy._core.numeric", "_frombuffer"), b(b"\x41" * 8),
                         dtype("O8", dtype_state("|", flags=63)), tup(i(1)), s("C")))
    assert "object" in _refused(payload)


def test_mason_array_rebuild_refuses_object_descriptions():
    payload = whole(call(g("mason.arrays", "rebuild_array"), b(b"\x41" * 8), s("|O"),
                         tup(i(1)), s("C")))
    # mason's own rebuild is named as itself, so the engine calls it directly; its refusal
    # arrives as a load error either way
    assert "object dtype" in _refused(payload, error=mason.UnpicklingError)


def test_reconstruct_only_as_numpy_writes_it():
    payload = whole(call(g("numpy._core.multiarray", "_reconstruct"), g("numpy", "ndarray"),
                         tup(b"J" + (1 << 30).to_bytes(4, "little")), b(b"b")))
    assert "_reconstruct" in _refused(payload)


def test_pandas_getattr_reaches_only_allowed_names():
    payload = whole(call(g("builtins", "getattr"), g("pandas", "DataFrame"), s("eval")))
    message = _refused(payload, preset="pandas")
    assert "DataFrame.eval" in message


def test_random_state_constructor_cannot_call_what_is_not_allowed(marker):
    payload = whole(call(g("numpy.random._pickle", "__randomstate_ctor"), s("x"),
                         g("os", "system")))
    assert "os.system" in _refused(payload, preset="sklearn")


def test_sklearn_estimator_holding_a_dangerous_function_is_refused():
    from sklearn.preprocessing import FunctionTransformer
    data = pickle.dumps(FunctionTransformer(func=os.system))
    assert "system" in _refused(data, preset="sklearn")


def test_torch_storage_class_cannot_be_called():
    payload = whole(call(g("torch", "FloatStorage"), b"J" + (1 << 30).to_bytes(4, "little")))
    assert "storage" in _refused(payload, preset="torch")


def test_torch_rebuild_refuses_a_storage_it_did_not_load():
    payload = whole(call(g("torch._utils", "_rebuild_tensor_v2"), b(b"\x00" * 16), i(0),
                         tup(i(4)), tup(i(1)), NEWFALSE, NONE))
    assert "storage" in _refused(payload, preset="torch")


def _torch_zip(path, data_pkl: bytes, storages: dict[str, bytes] | None = None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, raw in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw)
        archive.writestr("archive/version", "3\n")


def test_hostile_torch_checkpoint_runs_nothing(marker, tmp_path):
    path = tmp_path / "model.pt"
    _torch_zip(path, whole(system(f"touch {marker}")))
    with pytest.raises(UnsafeGlobalError) as info:
        mason.load(path)
    assert "os.system" in str(info.value)
    assert not marker.exists()
    control = run_python(f"import torch; torch.load({str(path)!r}, weights_only=False)")
    assert control.returncode == 0, control.stderr
    assert marker.exists()


def test_torch_tensor_with_backward_hooks_is_refused(tmp_path):
    storage = tup(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu"), i(1))
    hooks = call(g("collections", "OrderedDict"), b"]" + b"(" + tup(i(0), g("torch", "device"))
                 + b"e")
    data = whole(call(g("torch._utils", "_rebuild_tensor_v2"), storage + b"Q", i(0),
                      tup(i(1)), tup(i(1)), NEWFALSE, hooks))
    path = tmp_path / "hooks.pt"
    _torch_zip(path, data, {"0": b"\x00" * 4})
    with pytest.raises(UnsafeGlobalError) as info:
        mason.load(path)
    assert "hooks" in str(info.value)


def test_torch_geometry_outside_the_storage_is_refused(tmp_path):
    storage = tup(s("storage"), g("torch", "FloatStorage"), s("0"), s("cpu"), i(1))
    data = whole(call(g("torch._utils", "_rebuild_tensor_v2"), storage + b"Q", i(0),
                      tup(i(1000)), tup(i(1)), NEWFALSE, NONE))
    path = tmp_path / "oob.pt"
    _torch_zip(path, data, {"0": b"\x00" * 4})
    with pytest.raises(UnsafeGlobalError) as info:
        mason.load(path)
    assert "reach past the storage" in str(info.value)


def test_hostile_joblib_file_runs_nothing(marker, tmp_path):
    import joblib

    path = tmp_path / "model.joblib"
    joblib.dump({"weights": np.arange(3.0), "evil": Touching(marker)}, path)
    with pytest.raises(UnsafeGlobalError):
        mason.load(path, preset="sklearn")
    assert not marker.exists()
    control = run_python(f"import joblib; joblib.load({str(path)!r})")
    assert control.returncode == 0, control.stderr
    assert marker.exists()


def test_hostile_container_runs_nothing(marker, tmp_path):
    path = tmp_path / "evil.mason"
    mason.dump({"a": np.arange(4.0), "evil": Touching(marker)}, path)
    with pytest.raises(UnsafeGlobalError):
        mason.load(path, preset="numpy")
    assert not marker.exists()
    control = run_python(f"""
        import pickle, zipfile
        z = zipfile.ZipFile({str(path)!r})
        names = sorted(n for n in z.namelist() if n.startswith('buffers/'))
        pickle.loads(z.read('data.pkl'), buffers=[z.read(n) for n in names])
    """)
    assert control.returncode == 0, control.stderr
    assert marker.exists()


def test_torch_load_from_bytes_reads_only_a_storage(marker, tmp_path):
    import torch

    inner = io.BytesIO()
    torch.save({"evil": Touching(marker)}, inner, _use_new_zipfile_serialization=False)
    payload = whole(call(g("torch.storage", "_load_from_bytes"), b(inner.getvalue())))
    with pytest.raises(UnsafeGlobalError):
        mason.loads(payload, preset="torch")
    assert not marker.exists()
    # what the bytes are: a checkpoint that torch.load without weights_only runs
    inner_path = tmp_path / "inner.pt"
    inner_path.write_bytes(inner.getvalue())
    control = run_python(f"import torch; torch.load({str(inner_path)!r}, weights_only=False)")
    assert control.returncode == 0, control.stderr
    assert marker.exists()
    plain = io.BytesIO()
    torch.save({"a": 1}, plain, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeGlobalError, match="not a storage"):
        mason.loads(whole(call(g("torch.storage", "_load_from_bytes"), b(plain.getvalue()))),
                    preset="torch")


def _forged_frame():
    import pandas as pd
    from pandas._libs.internals import BlockPlacement

    frame = pd.DataFrame({"a": [1, 2], "b": [3, 4], "c": [5, 6]})
    frame._mgr.blocks[0]._mgr_locs = BlockPlacement(np.array([0, 1, 1 << 40], dtype=np.intp))
    return pickle.dumps({"frame": frame})


def test_pandas_block_placed_outside_the_frame_is_refused(tmp_path):
    data = _forged_frame()
    with pytest.raises(UnsafeGlobalError, match="block is placed"):
        mason.loads(data, preset="pandas")
    # pandas itself loads it, and writes outside an array on the first column lookup
    control = stdlib_loads_in_subprocess(data, tmp_path, then="print(obj['frame']['a'])")
    assert control.returncode != 0


def test_pandas_categorical_codes_outside_the_categories_are_refused():
    import pandas as pd

    series = pd.Series(pd.Categorical(["x", "y", "x"]))
    series.array._ndarray[1] = 100   # the codes, in place
    with pytest.raises(UnsafeGlobalError, match="Categorical"):
        mason.loads(pickle.dumps(series), preset="pandas")


def test_sklearn_tree_with_children_outside_it_is_refused():
    from sklearn.tree import DecisionTreeClassifier

    X = np.random.RandomState(0).rand(40, 3)
    model = DecisionTreeClassifier(random_state=0).fit(X, (X[:, 0] > 0.5).astype(int))
    data = pickle.dumps(model)
    assert mason.loads(data, preset="sklearn").tree_.node_count == model.tree_.node_count
    state = model.tree_.__getstate__()
    nodes = state["nodes"].copy()
    nodes["left_child"][0] = 10 ** 9
    model.tree_.__setstate__({**state, "nodes": nodes})
    with pytest.raises(UnsafeGlobalError, match="Tree has children"):
        mason.loads(pickle.dumps(model), preset="sklearn")
