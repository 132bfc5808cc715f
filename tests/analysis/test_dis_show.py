"""dis and show: listings and reconstructions that never run the data."""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import re

import pytest
import scan_corpus as corpus

from mason.analysis import dis, show

EVIL = corpus.stream(corpus.call4("posix", "system", corpus.su("echo hi")), 4)


def _rows(listing: str):
    """(offset, name, argument text) of each opcode line of a listing."""
    rows = []
    for line in listing.splitlines():
        match = re.match(r"\s*(\d+): (\S+)\s+(\S+)(?: +(.*?))?(?:\s+#.*)?$", line)
        if match and match.group(2) != "<error>" and not line.lstrip().startswith("#"):
            rows.append((int(match.group(1)), match.group(3)))
    return rows


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_dis_lists_what_pickletools_lists(protocol):
    obj = {"a": [1, 2.5, "x", b"y", (1, 2)], "o": collections.OrderedDict(a=1), "n": None,
           "big": "z" * 100}
    data = pickle.dumps(obj, protocol)
    ours = _rows(dis(data))
    theirs = [(pos, op.name) for op, _, pos in pickletools.genops(data)]
    assert ours == theirs
    assert dis(data).rstrip().endswith(f"highest protocol among opcodes = "
                                       f"{max(op.proto for op, _, _ in pickletools.genops(data))}")


def test_dis_mirrors_pickletools_annotations():
    data = pickle.dumps([("a", "a")], 4)
    listing = dis(data)
    assert "MEMOIZE    (as 0)" in listing
    assert "(MARK at" in listing or "TUPLE2" in listing
    text = io.StringIO()
    pickletools.dis(data, text)
    for ours, theirs in zip(listing.splitlines(), text.getvalue().splitlines()):
        assert ours.split("#")[0].rstrip() == theirs.rstrip()


def test_dis_annotates_globals_and_calls():
    listing = dis(EVIL)
    assert re.search(r"STACK_GLOBAL\s+# posix\.system", listing)
    assert re.search(r"REDUCE\s+# calls posix\.system\('echo hi'\)", listing)


def test_dis_goes_on_to_the_break_and_says_where():
    data = EVIL[:-1] + b"\xff"
    listing = dis(data)
    assert "REDUCE" in listing
    last = listing.rstrip().splitlines()
    assert any(f"{len(data) - 1:5d}: <error>" in line for line in last)
    assert "unknown opcode" in listing


def test_dis_lists_every_pickle_of_a_file_and_every_member():
    listing = dis(pickle.dumps(1) + pickle.dumps(2))
    assert listing.count("STOP") == 2
    zipped = dis(corpus.zip_of({"a.pkl": pickle.dumps(1), "b.pkl": EVIL}))
    assert "# a.pkl, pickle at byte 0" in zipped and "# b.pkl, pickle at byte 0" in zipped


def test_dis_shows_large_payloads_by_size():
    listing = dis(pickle.dumps(b"\0" * 100_000, 5))
    assert "<bytes of 100000 bytes at byte" in listing
    assert len(listing) < 1000


def test_dis_steps_over_joblib_arrays():
    import joblib
    import numpy as np
    buf = io.BytesIO()
    joblib.dump({"a": np.arange(1000.0)}, buf)
    listing = dis(buf.getvalue())
    assert "bytes of joblib array data>" in listing
    assert listing.count("STOP") == 1 and "<error>" not in listing


def test_show_writes_python():
    assert show(EVIL).strip() == "posix.system('echo hi')"
    assert show(pickle.dumps(collections.OrderedDict([("a", 1)]), 2)).strip() == \
        "collections.OrderedDict([('a', 1)])"
    assert show(pickle.dumps({"a": [1, (2, 3)], "b": None}, 4)).strip() == \
        "{'a': [1, (2, 3)], 'b': None}"
    text = show(pickle.dumps(collections.defaultdict(list, {"k": [1]}), 4)).strip()
    assert text == "collections.defaultdict(builtins.list, {'k': [1]})"


def test_show_names_shared_objects_and_applies_state():
    point = corpus.Point(1, 2)
    text = show(pickle.dumps({"p": point, "q": point}, 4)).strip().splitlines()
    assert text[0] == "_1 = scan_corpus.Point.__new__(scan_corpus.Point)"
    assert text[1] == "_1.__setstate__({'x': 1, 'y': 2})"
    assert text[2] == "{'p': _1, 'q': _1}"


def test_show_handles_cycles():
    cycle = []
    cycle.append(cycle)
    assert show(pickle.dumps(cycle, 2)).strip().splitlines() == ["_1 = [_1]", "_1"]


def test_show_output_is_bounded():
    assert len(show(pickle.dumps(list(range(100_000)), 4))) < 500
    assert "(+99950 more)" in show(pickle.dumps(list(range(100_000)), 4))
    assert len(show(pickle.dumps("x" * 1_000_000, 4))) < 400
    # A billion laughs: each level repeats the one below through the memo.
    level = ["lol"] * 10
    for _ in range(8):
        level = [level] * 10
    assert len(show(pickle.dumps(level, 4))) < 2000
    # Deep nesting.
    deep = corpus.proto(2) + corpus.EMPTY_LIST * 5000 + corpus.APPEND * 4999 + corpus.STOP
    assert "..." in show(deep) and len(show(deep)) < 1000


def test_show_of_a_broken_stream_lists_its_calls():
    text = show(EVIL[:-1])
    assert "breaks" in text
    assert "posix.system('echo hi')" in text


def test_show_reads_torch_checkpoints():
    text = show(corpus.simple_torch(w=3))
    assert "torch._utils._rebuild_tensor_v2(persistent_load(('storage', torch.FloatStorage, "\
           "'0', 'cpu', 3))" in text
    assert text.startswith("# archive/data.pkl")


def test_nothing_runs(tmp_path):
    marker = tmp_path / "marker"
    data = corpus.stream(corpus.call4("os", "system", corpus.su(f"touch {marker}")), 4)
    show(data)
    dis(data)
    from mason.analysis import scan
    scan(data)
    assert not marker.exists()
    pickle.loads(data)   # the control: the payload is live
    assert marker.exists()
