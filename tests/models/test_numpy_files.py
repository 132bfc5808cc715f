"""mason.load(path) on numpy's own files: .npy and .npz (stored or deflated), plain arrays
read by numpy (an .npy mapped read-only with mmap=True), object arrays loaded from their
pickle under the policy."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import mason

from models_payloads import system, whole

PLAIN = {
    "ints": np.arange(12, dtype=np.int32).reshape(3, 4),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "structured": np.array([(1, 2.5, b"ab")], dtype=[("a", "<i4"), ("b", "<f8"), ("c", "S2")]),
    "empty": np.zeros((0, 3)),
    "scalar": np.array(7.5),
    "unicode": np.array(["é", "xyz"]),
}
OBJECTS = np.array([{"a": 1}, (2, 3), None, "text"], dtype=object)


def assert_same(got, expected):
    assert type(got) in (np.ndarray, np.memmap)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if expected.dtype.hasobject:
        assert list(got.ravel()) == list(expected.ravel())
    else:
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_npy_loads_and_maps(tmp_path, name):
    path = tmp_path / "a.npy"
    np.save(path, PLAIN[name])
    assert_same(mason.load(path), PLAIN[name])
    mapped = mason.load(path, mmap=True)
    assert_same(mapped, PLAIN[name])
    if PLAIN[name].size:
        assert isinstance(mapped, np.memmap) and not mapped.flags.writeable


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_loads_as_a_dict_of_arrays(tmp_path, save):
    path = tmp_path / "a.npz"
    save(path, objects=OBJECTS, **PLAIN)
    with pytest.raises(ValueError):
        np.load(path)["objects"]    # numpy refuses object arrays unless allow_pickle=True
    got = mason.load(path)
    assert sorted(got) == sorted([*PLAIN, "objects"])
    for name, array in PLAIN.items():
        assert_same(got[name], array)
    assert_same(got["objects"], OBJECTS)


def test_object_npy_loads_under_the_policy(tmp_path):
    path = tmp_path / "o.npy"
    np.save(path, OBJECTS)
    assert_same(mason.load(path), OBJECTS)


def hostile_npy(path, pickle_bytes, shape=(1,)):
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(
            file, {"descr": "|O", "fortran_order": False, "shape": shape})
        file.write(pickle_bytes)


def test_object_npy_that_runs_code_is_refused(tmp_path, marker):
    path = tmp_path / "hostile.npy"
    hostile_npy(path, whole(system(f"touch {marker}")))
    with pytest.raises(mason.UnsafeGlobalError, match="os.system"):
        mason.load(path)
    assert not marker.exists()
    # the control: numpy with allow_pickle=True runs it
    subprocess.run([sys.executable, "-c", "import numpy, sys; "
                    "numpy.load(sys.argv[1], allow_pickle=True)", str(path)], check=False,
                   capture_output=True)
    assert marker.exists()


def test_object_npy_whose_pickle_is_not_the_declared_array(tmp_path):
    path = tmp_path / "other.npy"
    hostile_npy(path, mason.dumps({"not": "an array"}), shape=(2,))
    with pytest.raises(mason.MalformedPickleError, match="shape"):
        mason.load(path)


def test_damaged_numpy_files_raise_mason_errors(tmp_path):
    path = tmp_path / "cut.npy"
    np.save(path, np.arange(1000))
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(mason.MalformedPickleError):
        mason.load(path)
    path.write_bytes(data[:20])
    with pytest.raises(mason.MalformedPickleError, match="header"):
        mason.load(path)
    npz = tmp_path / "cut.npz"
    np.savez_compressed(npz, a=np.arange(1000))
    raw = npz.read_bytes()
    npz.write_bytes(raw[:40] + bytes(len(raw) - 80) + raw[-40:])
    with pytest.raises(mason.MalformedPickleError):
        mason.load(npz)
