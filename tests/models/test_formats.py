"""mason.load(path) recognises a file by its content: plain pickles, compressed pickles,
joblib files and torch checkpoints, whatever they are named."""

from __future__ import annotations

import bz2
import gzip
import lzma
import pickle
import zipfile
import zlib

import joblib
import numpy as np
import pytest
import torch
import zstandard

import mason
from mason import MalformedPickleError, TruncatedPickleError, UnsafeGlobalError

VALUE = {"a": [1, 2.5, "x"], "b": (None, True), "c": {"nested": b"bytes"}}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_pickle_files(tmp_path, protocol):
    path = tmp_path / "data.bin"
    path.write_bytes(pickle.dumps(VALUE, protocol))
    assert mason.load(path) == VALUE


COMPRESSORS = {
    "gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE), "zlib": zlib.compress,
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
}


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_pickles(tmp_path, kind):
    path = tmp_path / "data.any"
    path.write_bytes(COMPRESSORS[kind](pickle.dumps(VALUE)))
    assert mason.load(path) == VALUE


def test_compressed_pickle_keeps_the_policy(tmp_path):
    path = tmp_path / "data.gz"
    path.write_bytes(gzip.compress(pickle.dumps(np.arange(3))))
    with pytest.raises(UnsafeGlobalError):
        mason.load(path)
    assert mason.load(path, preset="numpy").tolist() == [0, 1, 2]


def test_damaged_compression_is_reported(tmp_path):
    path = tmp_path / "data.gz"
    raw = bytearray(gzip.compress(pickle.dumps(list(range(1000)))))
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(MalformedPickleError, match="gzip"):
        mason.load(path)


JOBLIB_VALUE = {
    "weights": np.arange(1000, dtype=np.float32),
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "objects": np.array([1, "two", None], dtype=object),
    "structured": np.zeros(2, dtype=[("x", "<f8"), ("y", "i1")]),
    "empty": np.zeros((0, 2)),
    "scalar": 3,
}


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)])
def test_joblib_files(tmp_path, compress):
    path = tmp_path / "model.joblib"
    joblib.dump(JOBLIB_VALUE, path, compress=compress)
    got = mason.load(path)
    want = joblib.load(path)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            assert got[key].dtype == value.dtype and got[key].shape == value.shape
            assert got[key].tolist() == value.tolist()
            assert got[key].flags.f_contiguous == value.flags.f_contiguous
        else:
            assert got[key] == value


def test_joblib_sklearn_model(tmp_path):
    from sklearn.ensemble import RandomForestClassifier
    X = np.random.RandomState(0).rand(50, 3)
    y = (X[:, 0] > 0.5).astype(int)
    model = RandomForestClassifier(3, random_state=0).fit(X, y)
    path = tmp_path / "forest.joblib"
    joblib.dump(model, path)
    with pytest.raises(UnsafeGlobalError):
        mason.load(path)          # the numpy preset alone does not admit scikit-learn
    got = mason.load(path, preset="sklearn")
    np.testing.assert_array_equal(got.predict_proba(X), model.predict_proba(X))


def test_torch_zip_storage_damage_is_named(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"w": torch.arange(1000.0)}, path)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 30 + len(info.filename) + len(info.extra) + 100)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(MalformedPickleError, match="data/0.*corrupted"):
        mason.load(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 200)
    with pytest.raises(TruncatedPickleError):
        mason.load(path)


def test_zip_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(MalformedPickleError, match="neither"):
        mason.load(path)


def test_torch_checkpoint_policy_can_be_narrowed(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(UnsafeGlobalError):
        mason.load(path, policy=mason.Policy.default())
    assert torch.equal(mason.load(path, preset="torch")["w"], torch.ones(2))
