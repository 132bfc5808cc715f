"""The file container: mason.dump(obj, path) / mason.load(path, mmap=...)."""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

import mason
import mason.files
from mason import MalformedPickleError, TruncatedPickleError
from mason.errors import SignatureError

from models_helpers import run_python

MIB = 1 << 20


def _state():
    return {
        "weights": np.arange(MIB // 8, dtype=np.float64),
        "fortran": np.asfortranarray(np.arange(24, dtype=np.int32).reshape(4, 6)),
        "strided": np.arange(100.0).reshape(10, 10)[::3, ::2],
        "empty": np.zeros((0, 5), dtype=np.float32),
        "zero-d": np.array(7, dtype=np.int16),
        "structured": np.zeros(4, dtype=[("x", "<f8"), ("y", "i1", (3,))]),
        "strings": np.array(["ab", "cde"]),
        "datetime": np.array(["2021-05-01"], dtype="datetime64[s]"),
        "object": np.array([1, "two", None], dtype=object),
        "tensor": torch.arange(12.0).reshape(3, 4),
        "parameter": torch.nn.Parameter(torch.ones(3)),
        "half": torch.ones(5, dtype=torch.float16),
        "text": "not an array",
    }


def _check_same(got, want):
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            assert type(got[key]) is np.ndarray and got[key].dtype == value.dtype, key
            assert got[key].shape == value.shape, key
            if value.dtype.hasobject:
                assert got[key].tolist() == value.tolist()
            else:
                np.testing.assert_array_equal(got[key], value)
        elif isinstance(value, torch.Tensor):
            assert type(got[key]) is type(value) and torch.equal(got[key], value), key
        else:
            assert got[key] == value


@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip(tmp_path, mmap):
    state = _state()
    path = tmp_path / "state.mason"
    mason.dump(state, path)
    got = mason.load(path, mmap=mmap, preset=["numpy", "torch"])
    _check_same(got, state)
    assert got["fortran"].flags.f_contiguous
    if mmap:
        assert not got["weights"].flags.writeable            # numpy: read-only views
        got["tensor"].add_(1)                                 # torch: copy-on-write
        assert torch.equal(mason.load(path, preset=["numpy", "torch"])["tensor"],
                           state["tensor"])
    else:
        assert got["weights"].flags.writeable


def test_plain_objects_and_str_paths(tmp_path):
    path = str(tmp_path / "plain.mason")
    mason.dump({"a": [1, 2, 3], "b": b"bytes" * 1000}, path)
    assert mason.load(path) == {"a": [1, 2, 3], "b": b"bytes" * 1000}


def test_buffers_are_separate_aligned_stored_zip_members(tmp_path):
    path = tmp_path / "state.mason"
    mason.dump(_state(), path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None                     # every CRC-32 is right
        names = archive.namelist()
        assert names[0] == ".mason" and names[1] == "data.pkl" and names[-1] == "table.json"
        table = json.loads(archive.read("table.json"))
        assert table["version"] == 1 and table["protocol"] == 5
        buffers = [n for n in names if n.startswith("buffers/")]
        assert len(buffers) == len(table["buffers"]) >= 9
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
        raw = path.read_bytes()
        for entry, name in zip(table["buffers"], buffers):
            assert entry["offset"] % 64 == 0
            assert raw[entry["offset"]:entry["offset"] + entry["size"]] == archive.read(name)
        # the weights are stored once, as they are in memory
        weights = _state()["weights"]
        assert weights.tobytes() in (archive.read(n) for n in buffers)
        assert len(archive.read("data.pkl")) < 4096


def test_the_stream_is_a_standard_pickle_with_out_of_band_buffers(tmp_path):
    path = tmp_path / "state.mason"
    state = {"w": np.arange(10.0), "t": torch.ones(2)}
    mason.dump(state, path)
    result = run_python(f"""
        import pickle, zipfile, numpy
        z = zipfile.ZipFile({str(path)!r})
        names = sorted((n for n in z.namelist() if n.startswith('buffers/')),
                       key=lambda n: int(n.split('/')[1]))
        obj = pickle.loads(z.read('data.pkl'), buffers=[z.read(n) for n in names])
        print(obj['w'].tolist(), obj['t'].tolist())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("]")[0] == "[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0"


def test_mmap_reads_no_array_data(tmp_path):
    path = tmp_path / "big.mason"
    small = tmp_path / "small.mason"
    mason.dump({"big": np.ones(64 * MIB, dtype=np.uint8)}, path)
    mason.dump({"big": np.ones(16, dtype=np.uint8)}, small)
    result = run_python(f"""
        import mason, resource
        def rss():
            return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()
        # A first, tiny load imports numpy and the loader's modules, which are not data.
        mason.load({str(small)!r}, mmap=True, preset='numpy')
        before = rss()
        obj = mason.load({str(path)!r}, mmap=True, preset='numpy')
        after = rss()
        print(after - before, obj['big'].shape[0], int(obj['big'][:10].sum()))
    """)
    assert result.returncode == 0, result.stderr
    grown, size, head = map(int, result.stdout.split())
    assert size == 64 * MIB and head == 10
    assert grown < 16 * MIB        # the 64 MiB were mapped, not read


def test_full_load_reads_into_place(tmp_path):
    path = tmp_path / "big.mason"
    mason.dump({"big": np.ones(64 * MIB, dtype=np.uint8)}, path)
    result = run_python(f"""
        import mason, numpy
        def hwm():
            for line in open('/proc/self/status'):
                if line.startswith('VmHWM'):
                    return int(line.split()[1]) * 1024
        before = hwm()
        obj = mason.load({str(path)!r}, preset='numpy')
        print(hwm() - before, int(obj['big'].sum()))
    """)
    assert result.returncode == 0, result.stderr
    peak, total = map(int, result.stdout.split())
    assert total == 64 * MIB
    assert peak < 1.1 * 64 * MIB   # the data, once


def _damage(path, offset, value=b"\xff"):
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]) if value is None else value)


def _table(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("table.json"))


def test_corrupted_buffer_is_named(tmp_path):
    path = tmp_path / "state.mason"
    mason.dump({"a": np.arange(1000.0), "b": np.arange(1000.0)}, path)
    entry = _table(path)["buffers"][1]
    _damage(path, entry["offset"] + 100, None)
    with pytest.raises(MalformedPickleError) as info:
        mason.load(path, preset="numpy")
    assert "buffer 1 (buffers/1)" in str(info.value) and "corrupted" in str(info.value)
    # a mapped load does not read buffers unless asked to
    assert mason.load(path, mmap=True, preset="numpy")["a"][999] == 999.0
    with pytest.raises(MalformedPickleError, match="buffer 1"):
        mason.files.load(path, mmap=True, verify="full", preset="numpy")


def test_corrupted_pickle_and_table_are_named(tmp_path):
    path = tmp_path / "state.mason"
    mason.dump({"a": np.arange(10.0)}, path)
    entry = _table(path)["pickle"]
    _damage(path, entry["offset"] + 5, None)
    with pytest.raises(MalformedPickleError, match=r"pickle stream \(data.pkl\)"):
        mason.load(path, preset="numpy")
    mason.dump({"a": np.arange(10.0)}, path)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("table.json")
    start = info.header_offset + 30 + len(b"table.json")
    _damage(path, start + 3, None)
    with pytest.raises(MalformedPickleError, match="table"):
        mason.load(path, preset="numpy")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95, 0.999])
def test_truncated_file_is_named(tmp_path, keep):
    path = tmp_path / "state.mason"
    mason.dump({"a": np.arange(20000.0), "b": np.arange(5.0)}, path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))
    with pytest.raises(TruncatedPickleError) as info:
        mason.load(path, preset="numpy")
    message = str(info.value)
    assert "truncated" in message
    if keep < 0.9:
        assert "buffers/0" in message       # the big buffer is where the file ends


def test_zstd_compression(tmp_path):
    path = tmp_path / "small.mason"
    state = {"zeros": np.zeros(MIB), "t": torch.zeros(1000)}
    mason.dump(state, path, compress="zstd")
    assert path.stat().st_size < MIB // 10
    got = mason.load(path, preset=["numpy", "torch"])
    np.testing.assert_array_equal(got["zeros"], state["zeros"])
    assert torch.equal(got["t"], state["t"])
    assert mason.load(path, mmap=True, preset=["numpy", "torch"])["zeros"].shape == (MIB,)


def test_signed_container(tmp_path):
    key = b"k" * 32

    class Model:   # a class that only a trusted load builds
        pass

    path = tmp_path / "signed.mason"
    mason.dump({"a": np.arange(5.0), "b": [1, 2]}, path, key=key)
    assert mason.load(path, key=key)["b"] == [1, 2]          # verified: trusted
    with pytest.raises(SignatureError):
        mason.load(path, key=b"x" * 32)
    entry = _table(path)["buffers"][0]
    _damage(path, entry["offset"], None)
    with pytest.raises((SignatureError, MalformedPickleError)):
        mason.load(path, key=key)
    unsigned = tmp_path / "unsigned.mason"
    mason.dump({"a": 1}, unsigned)
    with pytest.raises(SignatureError, match="not signed"):
        mason.load(unsigned, key=key)


def test_large_member_uses_zip64(tmp_path):
    # zip64 needs a member over 4 GiB; its records are exercised with a small file by
    # checking that a zip tool reads what mason writes when they are forced in.
    from mason import _zip
    path = tmp_path / "z.zip"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    writer = _zip.LocalWriter(fd)
    writer.pos = 0
    data = b"hello zip64"
    writer.begin("x", len(data))
    writer.write(data)
    writer.end(__import__("zlib").crc32(data), len(data))
    writer.members = writer.members * 70000   # more members than a plain zip counts
    writer.finish()
    os.close(fd)
    with zipfile.ZipFile(path) as archive:
        assert len(archive.infolist()) == 70000
        assert archive.read(archive.infolist()[0]) == data


def test_write_is_atomic(tmp_path):
    path = tmp_path / "state.mason"
    mason.dump({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("no")

    with pytest.raises(Exception):
        mason.dump({"a": np.arange(3.0), "b": Unpicklable()}, path)
    assert mason.load(path) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.mason"]


@pytest.mark.parametrize("preset", ["numpy", "torch"])
def test_saving_a_mapped_load_over_its_own_file(tmp_path, preset):
    # the dump drops the old file's cached pages before writing: the mapped views it is
    # saving must still read the old file's bytes, and the new file must hold them
    path = tmp_path / "state.mason"
    if preset == "numpy":
        state = {"w": np.arange(3 * MIB // 8, dtype=np.float64), "b": np.ones(7)}
    else:
        state = {"w": torch.arange(3 * MIB // 4, dtype=torch.float32), "b": torch.ones(7)}
    mason.dump(state, path)
    mapped = mason.load(path, mmap=True, preset=preset)
    mason.dump({**mapped, "extra": 1}, path)
    got = mason.load(path, preset=preset)
    assert got["extra"] == 1
    for key in state:
        assert got[key].tolist() == state[key].tolist() == mapped[key].tolist()


def test_a_failed_dump_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "state.mason"
    mason.dump({"w": np.arange(MIB // 8, dtype=np.float64)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("no")

    with pytest.raises(TypeError):
        mason.dump({"b": Unpicklable()}, path)
    np.testing.assert_array_equal(mason.load(path, preset="numpy")["w"],
                                  np.arange(MIB // 8, dtype=np.float64))
