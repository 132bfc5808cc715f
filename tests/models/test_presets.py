"""The presets load real objects of numpy, pandas, scikit-learn and torch, pickled by the
standard library in every protocol, exactly as the standard library loads them."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import mason
from mason import Policy, UnsafeGlobalError

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)

ARRAYS = {
    "int64": np.arange(12).reshape(3, 4),
    "float32 fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    "strided": np.arange(40.0).reshape(5, 8)[::2, 1::3],
    "0-d": np.array(3.5),
    "empty": np.zeros((0, 3)),
    "bool": np.array([True, False]),
    "complex": np.array([1 + 2j, 3j]),
    "big-endian": np.arange(3, dtype=">i4"),
    "unicode": np.array(["ab", "c"]),
    "bytes": np.array([b"ab", b"c"]),
    "datetime": np.array(["2020-01-01", "NaT"], dtype="datetime64[ns]"),
    "timedelta": np.array([1, 2], dtype="timedelta64[s]"),
    "structured": np.zeros(3, dtype=[("a", "<f8"), ("b", "i1", (2,)), ("c", "U3")]),
    "aligned struct": np.zeros(2, dtype=np.dtype([("a", "i1"), ("b", "f8")], align=True)),
    "nested struct": np.zeros(2, dtype=[("x", [("y", "f4", (2,))])]),
    "subarray": np.zeros((2, 2), dtype=np.dtype(("f4", (2,)))),
    "object": np.array([1, "x", None, (1, 2)], dtype=object),
    "object struct": np.array([(1, 2.0)], dtype=[("a", "O"), ("b", "f8")]),
    "float16": np.arange(4, dtype=np.float16),
    "matrix": np.matrix([[1, 2], [3, 4]]),
}
SCALARS = [np.float64(2.5), np.int8(-3), np.bool_(True), np.datetime64("2020-01-01"),
           np.complex64(1j), np.str_("x"), np.uint64(2**63)]


def _same_array(got, want) -> None:
    assert type(got) is type(want)
    assert got.dtype == want.dtype and got.dtype.str == want.dtype.str
    assert got.shape == want.shape
    if want.dtype.hasobject:
        assert got.tolist() == want.tolist()
    else:
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", ARRAYS)
def test_numpy_arrays_in_every_protocol(name, protocol):
    data = pickle.dumps(ARRAYS[name], protocol)
    _same_array(mason.loads(data, preset="numpy"), pickle.loads(data))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_numpy_scalars_and_dtypes(protocol):
    values = SCALARS + [np.dtype("f8"), np.dtype([("a", "<i4")]), np.float64]
    data = pickle.dumps(values, protocol)
    got, want = mason.loads(data, preset="numpy"), pickle.loads(data)
    assert got == want
    assert [type(x) for x in got] == [type(x) for x in want]


def test_numpy_out_of_band_from_the_stdlib_pickler():
    buffers = []
    data = pickle.dumps(ARRAYS["int64"], 5, buffer_callback=buffers.append)
    assert len(buffers) == 1
    got = mason.loads(data, preset="numpy", buffers=buffers)
    _same_array(got, ARRAYS["int64"])
    assert np.shares_memory(got, ARRAYS["int64"])   # a view of the buffer, not a copy


def test_default_policy_refuses_numpy_and_says_how_to_allow():
    with pytest.raises(UnsafeGlobalError) as info:
        mason.loads(pickle.dumps(np.arange(3)))
    assert "numpy" in str(info.value)


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "int": [1, 2, 3], "float": [1.5, np.nan, 3.0], "bool": [True, False, True],
        "str": ["a", "b", None], "object": [1, "x", None],
        "datetime": pd.date_range("2020-01-01", periods=3),
        "datetime tz": pd.date_range("2020-01-01", periods=3, tz="Europe/Paris"),
        "datetime utc": pd.date_range("2020-01-01", periods=3, tz="UTC"),
        "timedelta": pd.to_timedelta([1, 2, 3], unit="s"),
        "category": pd.Categorical(["a", "b", "a"]),
        "ordered": pd.Categorical([3, 1, 2], ordered=True),
        "Int64": pd.array([1, None, 3], dtype="Int64"),
        "UInt8": pd.array([1, 2, None], dtype="UInt8"),
        "Float64": pd.array([1.5, None, 3.0], dtype="Float64"),
        "boolean": pd.array([True, None, False], dtype="boolean"),
        "string": pd.array(["a", None, "c"], dtype="string"),
        "period": pd.period_range("2020-01", periods=3, freq="M"),
        "interval": pd.interval_range(0, 3),
        "sparse": pd.arrays.SparseArray([0, 1, 0]),
    }, index=pd.Index(["x", "y", "z"], name="key"))


PANDAS_OBJECTS = {
    "frame": _frame,
    "series": lambda: pd.Series([1.0, 2.0], index=pd.date_range("2020", periods=2, freq="D"),
                                name="s"),
    "multiindex": lambda: pd.DataFrame({"v": range(4)},
                                       index=pd.MultiIndex.from_product([[1, 2], ["a", "b"]])),
    "range index": lambda: pd.DataFrame({"a": [1, 2]}),
    "categorical index": lambda: pd.Series([1, 2], index=pd.CategoricalIndex(["a", "b"])),
    "timedelta index": lambda: pd.Series([1, 2], index=pd.timedelta_range("1s", periods=2)),
    "period index": lambda: pd.Series([1, 2], index=pd.period_range("2020", periods=2)),
    "scalars": lambda: [pd.Timestamp("2020-01-01", tz="UTC"), pd.Timedelta("1s"), pd.NaT,
                        pd.Period("2020-01", "M"), pd.Interval(0, 1), pd.NA],
}


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("name", PANDAS_OBJECTS)
def test_pandas_objects(name, protocol):
    obj = PANDAS_OBJECTS[name]()
    data = pickle.dumps(obj, protocol)
    got = mason.loads(data, preset="pandas")
    want = pickle.loads(data)
    if isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want)
        assert list(got.dtypes) == list(obj.dtypes)
    elif isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want)
    else:
        assert [type(x) for x in got] == [type(x) for x in want]
        assert [str(x) for x in got] == [str(x) for x in want]


def _fitted_models():
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.ensemble import (GradientBoostingClassifier, HistGradientBoostingClassifier,
                                  RandomForestClassifier)
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import SVC

    rng = np.random.RandomState(0)
    X = rng.rand(120, 4)
    y = (X[:, 0] + X[:, 1] > 1).astype(int)
    frame = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": rng.choice(["u", "v"], 120)})
    models = {
        "pipeline": (make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y), X),
        "forest": (RandomForestClassifier(5, random_state=rng).fit(X, y), X),
        "gradient boosting": (GradientBoostingClassifier(n_estimators=5).fit(X, y), X),
        "hist gradient boosting": (HistGradientBoostingClassifier(max_iter=5).fit(X, y), X),
        "svc": (SVC().fit(X, y), X),
        "knn": (KNeighborsClassifier(algorithm="kd_tree").fit(X, y), X),
        "sgd": (SGDClassifier(random_state=0).fit(X, y), X),
        "pca": (PCA(2).fit(X), X),
        "column transformer": (make_pipeline(
            ColumnTransformer([("num", StandardScaler(), ["a", "b"]),
                               ("cat", OneHotEncoder(), ["c"])]),
            LogisticRegression()).fit(frame, y), frame),
        "tfidf": (TfidfVectorizer().fit(["apple banana", "banana cherry", "cherry date"]), ["apple date", "cherry"]),
    }
    return models


MODELS = _fitted_models()


@pytest.mark.parametrize("name", MODELS)
def test_sklearn_fitted_estimators_predict_the_same(name):
    model, X = MODELS[name]
    data = pickle.dumps(model, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no version warnings: same scikit-learn
        got = mason.loads(data, preset="sklearn")
    assert type(got) is type(model)
    method = next(m for m in ("predict_proba", "predict", "transform") if hasattr(model, m))
    want = getattr(model, method)(X)
    have = getattr(got, method)(X)
    if hasattr(want, "toarray"):
        want, have = want.toarray(), have.toarray()
    np.testing.assert_array_equal(have, want)


def test_sklearn_names_outside_the_preset_are_refused():
    from sklearn.preprocessing import FunctionTransformer

    with pytest.raises(UnsafeGlobalError):
        mason.loads(pickle.dumps(FunctionTransformer(func=print)), preset="sklearn")


def _state_dict():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    state = model.state_dict()
    state["half"] = torch.ones(3, dtype=torch.float16)
    state["bfloat16"] = torch.ones(3, dtype=torch.bfloat16)
    state["int"] = torch.arange(5)
    state["bool"] = torch.tensor([True, False])
    state["scalar"] = torch.tensor(2.5)
    state["view"] = torch.arange(10.0)[2:6]
    state["transposed"] = torch.arange(6.0).reshape(2, 3).t()
    return model, state


def _same_tensors(got, want):
    assert got.keys() == want.keys()
    for key in want:
        assert type(got[key]) is type(want[key]), key
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
        assert got[key].stride() == want[key].stride(), key


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_checkpoints_written_by_torch_save(tmp_path, legacy):
    model, state = _state_dict()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    checkpoint = {"model": state, "optimizer": optimizer.state_dict(), "epoch": 3,
                  "parameter": torch.nn.Parameter(torch.ones(2))}
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    want = torch.load(path, weights_only=True)
    for mmap in ([False] if legacy else [False, True]):
        got = mason.load(path, mmap=mmap)
        _same_tensors(got["model"], want["model"])
        assert got["epoch"] == 3
        assert type(got["parameter"]) is torch.nn.Parameter
        assert str(got["optimizer"]) == str(want["optimizer"])
        # a view keeps its place in the storage it was saved with, as with torch.load
        assert got["model"]["view"].storage_offset() == 2
        assert got["model"]["view"].untyped_storage().nbytes() == 10 * 4


def test_torch_mmap_tensors_are_writable_without_touching_the_file(tmp_path):
    _, state = _state_dict()
    path = tmp_path / "state.pt"
    torch.save(state, path)
    before = path.read_bytes()
    got = mason.load(path, mmap=True)
    got["0.weight"].add_(1.0)
    assert path.read_bytes() == before
    assert torch.equal(got["0.weight"], state["0.weight"] + 1)


def test_presets_combine_and_compose_with_policies():
    data = pickle.dumps({"frame": pd.DataFrame({"a": [1]}), "tensor": torch.ones(2).numpy()})
    combined = mason.loads(data, preset=["pandas", "torch"])
    assert combined["frame"]["a"].tolist() == [1]
    assert mason.loads(data, preset="numpy+pandas")["tensor"].tolist() == [1.0, 1.0]
    policy = Policy.preset("pandas") | Policy(["collections.OrderedDict"])
    assert mason.loads(data, policy=policy)["frame"].shape == (1, 1)
    assert mason.loads(data, preset=[Policy.preset("pandas")])["frame"].shape == (1, 1)
    with pytest.raises(UnsafeGlobalError):
        mason.loads(data, preset="torch")   # pandas is not in the torch preset
    with pytest.raises(ValueError):
        Policy.preset("tensorflow")
