"""The containers a scan reads: structure checks, bombs, nesting, sources and formats."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zipfile

import pytest
import scan_corpus as corpus

import mason
from mason.analysis import scan
from mason.analysis.containers import (TooLarge, decompress, has_zip_directory, read_npy,
                                       sniff)

EVIL = corpus.stream(corpus.call4("os", "system", corpus.su("echo pwned")), 4)
BENIGN = pickle.dumps({"a": [1, 2.5, "x"]}, 4)


def test_sniff_goes_by_content_not_name():
    assert sniff(BENIGN) == "pickle"
    assert sniff(corpus.gzip_(BENIGN)) == "gzip"
    assert sniff(corpus.zip_of({"a": b"x"})) == "zip"
    assert sniff(corpus.tar_of({"a": b"x"})) == "tar"
    assert sniff(corpus.zstd_(BENIGN)) == "zstd"
    assert sniff(corpus.lzma_(BENIGN)) == "lzma"
    assert sniff(corpus.zlib_(BENIGN)) == "zlib"
    assert sniff(b"\x93NUMPY\x01\x00") == "npy"
    for protocol in range(6):
        assert sniff(pickle.dumps([1], protocol)) == "pickle"


def test_decompression_is_capped():
    bomb = gzip.compress(b"\0" * (8 << 20))
    assert len(decompress(bomb, "gzip", 8 << 20)) == 8 << 20
    with pytest.raises(TooLarge):
        decompress(bomb, "gzip", (8 << 20) - 1)
    report = scan(bomb, max_size=1 << 20)
    assert report.verdict.value == "dangerous"
    assert report.findings[0].category == "resource bomb"


def test_a_zip_entry_that_decompresses_past_the_cap_is_a_bomb():
    data = corpus.zip_of({"big.pkl": pickle.dumps(b"\0" * (4 << 20))}, zipfile.ZIP_DEFLATED)
    assert scan(data).ok
    report = scan(data, max_size=1 << 20)
    assert report.verdict.value == "dangerous"
    assert report.findings[0].member == "big.pkl"


def test_damaged_compressed_data_is_malformed():
    report = scan(corpus.gzip_(BENIGN)[:-12])
    assert report.verdict.value == "malformed"
    assert "gzip" in report.findings[0].message


def test_containers_nest_to_a_limit():
    data = EVIL
    for _ in range(12):
        data = corpus.gzip_(data)
    report = scan(data)
    assert not report.ok
    assert any("nest deeper" in f.message for f in report.findings)
    shallow = EVIL
    for _ in range(3):   # each level is two containers: a zip, and a gzip inside it
        shallow = corpus.zip_of({"x.pkl.gz": corpus.gzip_(shallow)})
    report = scan(shallow)
    assert report.verdict.value == "dangerous"
    assert report.findings[0].name == "os.system"
    assert report.findings[0].member == "x.pkl.gz!x.pkl.gz!x.pkl.gz"


def test_member_paths_name_the_way_in():
    data = corpus.tar_of({"models/inner.zip": corpus.zip_of({"w/model.pkl": EVIL})})
    report = scan(data)
    (finding,) = [f for f in report.findings if f.name == "os.system"]
    assert finding.member == "models/inner.zip!w/model.pkl"
    assert report.format == "tar"


def test_zip_structure_checks():
    good = corpus.simple_torch(w=4)
    assert scan(good, preset="torch").ok
    overlap = scan(corpus._overlap(good), preset="torch")
    assert any("overlap" in f.message for f in overlap.findings)
    renamed = scan(corpus._rename_local(corpus.zip_of({"safe.pkl": BENIGN}), "safe.pkl",
                                        "evil.pkl"))
    assert renamed.verdict.value == "malformed"
    assert "local header" in renamed.findings[0].message
    duplicate = scan(corpus._duplicate_member(corpus.zip_of({"a.pkl": BENIGN}), "a.pkl",
                                              BENIGN))
    assert duplicate.ok
    assert [f.severity for f in duplicate.findings] == ["note"]


def test_zip_members_that_cannot_hold_pickles_are_not_read_as_pickles():
    data = corpus.zip_of({"readme.txt": b"(just text)", "data.csv": b"a,b\n1,2\n",
                          "model.pkl": BENIGN})
    report = scan(data)
    assert report.ok
    assert [p.member for p in report.pickles] == ["model.pkl"]


def test_torch_storages_are_checked_but_not_unpickled():
    spec = {"w": ("FloatStorage", "0", 4)}
    # A storage record that happens to be a pickle is raw bytes to torch: not scanned.
    data = corpus.torch_zip(corpus.torch_data_pkl(spec), {"0": EVIL[:16]})
    report = scan(data, preset="torch")
    assert report.ok, str(report)
    assert [p.member for p in report.pickles] == ["archive/data.pkl"]
    missing = scan(corpus.torch_zip(corpus.torch_data_pkl(spec), {}), preset="torch")
    assert missing.verdict.value == "malformed"
    assert "data/0" in missing.findings[0].message


def test_torch_preset_checks_the_rebuild_calls():
    spec = {"w": ("FloatStorage", "0", 4)}
    storages = {"0": bytes(16)}
    # geometry past the storage
    pkl = corpus.torch_data_pkl(spec).replace(corpus.binint(4) + corpus.TUPLE1,
                                              corpus.binint(40) + corpus.TUPLE1, 1)
    report = scan(corpus.torch_zip(pkl, storages), preset="torch")
    assert report.verdict.value == "dangerous"
    assert "reach past storage" in report.findings[0].message
    # backward hooks
    hooks = corpus.global_("collections", "OrderedDict") + corpus.EMPTY_TUPLE + corpus.REDUCE
    with_hook = hooks + corpus.MARK + corpus.binint(0) + corpus.global_("builtins", "print") \
        + corpus.SETITEMS
    report = scan(corpus.torch_zip(corpus.torch_data_pkl(spec).replace(hooks, with_hook, 1),
                                   storages), preset="torch")
    assert report.verdict.value == "dangerous"
    assert any("hooks" in f.message for f in report.findings)


def test_legacy_torch_format():
    good = corpus.torch_legacy(corpus.legacy_data_pickle({"w": ("0", 4)}), ["0"], [bytes(16)])
    report = scan(good, allow=corpus.TORCH_NAMES)
    assert report.ok and report.format == "torch-legacy"
    assert len(report.pickles) == 5
    assert scan(good + b"junk", allow=corpus.TORCH_NAMES).verdict.value == "malformed"
    assert scan(good[:-4], allow=corpus.TORCH_NAMES).verdict.value == "malformed"


def test_npy_headers():
    import numpy as np
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 3), dtype=[("a", "<f8"), ("b", "<i4", (2,))]))
    assert read_npy(buf.getvalue()).problem is None
    assert scan(buf.getvalue()).ok
    assert read_npy(b"\x93NUMPY\x01\x00\x10\x00{'descr': os.system}").problem
    bad = scan(b"\x93NUMPY\x01\x00\x20\x00{'descr': __import__('os')}          \n")
    assert bad.verdict.value == "malformed"


def test_joblib_arrays_are_stepped_over():
    import joblib
    import numpy as np
    buf = io.BytesIO()
    joblib.dump({"a": np.arange(10_000.0), "b": np.array([1, "x"], dtype=object)}, buf)
    report = scan(buf.getvalue(), allow=corpus.JOBLIB_NAMES)
    assert report.ok and report.format == "joblib"
    # The object array's own pickle is scanned too.
    assert len(report.pickles) == 2


def test_pickle_followed_by_a_zip_directory_is_not_always_a_polyglot():
    # Pickled zip bytes end with opcodes, not with the zip's directory.
    assert not has_zip_directory(pickle.dumps(corpus.zip_of({"a": b"x"})))
    assert scan(pickle.dumps(corpus.zip_of({"a.pkl": EVIL}))).ok
    assert has_zip_directory(BENIGN + corpus.zip_of({"p.pkl": BENIGN}))


def test_sources(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(EVIL)
    assert scan(path).source == str(path)
    assert scan(str(path)).verdict.value == "dangerous"
    with open(path, "rb") as handle:
        assert scan(handle).verdict.value == "dangerous"
    assert scan(bytearray(EVIL)).verdict.value == "dangerous"
    assert scan(memoryview(EVIL)).verdict.value == "dangerous"
    assert scan(EVIL, name="x").source == "x"
    with pytest.raises(OSError):
        scan(tmp_path / "missing.pkl")
    with pytest.raises(TypeError):
        scan(12)
    with pytest.raises(TypeError):
        scan(io.StringIO("text"))


def test_large_files_are_mapped_not_read(tmp_path):
    path = tmp_path / "big.pkl"
    payload = os.urandom(1024) * (6 << 10)   # 6 MiB, past the mapping threshold
    path.write_bytes(pickle.dumps(payload, 5) + EVIL)
    report = scan(path)
    assert report.verdict.value == "dangerous"
    assert report.size == os.path.getsize(path)
    assert report.pickles[1].start == len(pickle.dumps(payload, 5))


def test_presets_are_named_and_unknown_ones_refused():
    assert scan(BENIGN, preset="numpy").ok
    with pytest.raises(ValueError, match="unknown preset"):
        scan(BENIGN, preset="nonsense")


def test_report_to_dict_is_json_ready():
    import json
    report = scan(corpus.zip_of({"a.pkl": EVIL, "b.pkl": BENIGN}))
    document = json.loads(json.dumps(report.to_dict()))
    assert document["verdict"] == "dangerous"
    assert document["format"] == "zip"
    assert {p["member"] for p in document["pickles"]} == {"a.pkl", "b.pkl"}
    assert document["findings"][0]["allow"] == "os.system"
    assert "os.system" in str(report)


def test_policy_from_the_policy_object_and_allow():
    data = pickle.dumps(corpus.Point(1, 2), 4)
    assert scan(data).verdict.value == "needs-allow"
    assert scan(data, allow=["scan_corpus.Point"]).ok
    assert scan(data, mason.Policy.default() | mason.Policy(["scan_corpus.*"])).ok
    with pytest.raises(TypeError):
        scan(data, policy="scan_corpus.Point")


