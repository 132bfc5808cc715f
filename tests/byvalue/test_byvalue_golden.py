"""Golden pickles of mason's own formats (tests/byvalue/golden, see make_golden.py): they keep
loading, or, made by another Python version, fail with an error that says so."""

from __future__ import annotations

import pathlib
import pickle

import pytest

import mason
from mason.byvalue import TAG
from mason.errors import SignatureError

GOLDEN = pathlib.Path(__file__).parent / "golden"
GOLDEN_KEY = b"mason golden signing key, 32 b.."
BYVALUE = sorted(GOLDEN.glob("byvalue-*.pkl"))


def test_there_is_a_golden_by_value_pickle():
    assert BYVALUE, "run tests/byvalue/golden/make_golden.py"


@pytest.mark.parametrize("path", BYVALUE, ids=[p.name for p in BYVALUE])
def test_golden_by_value_pickle(path):
    data = path.read_bytes()
    made_by = path.stem[len("byvalue-"):]
    if made_by == TAG:
        for load in (lambda d: mason.loads(d, trusted=True), pickle.loads):
            objs = load(data)
            assert objs["scaled"](5) == 17 and objs["scaled"](5, by=3) == 22
            assert objs["scaled"].__doc__ == "Scale x."
            assert objs["inc"]() == 1 and objs["inc"]() == 2
            assert objs["point"].norm1() == 7 and repr(objs["point"]) == "Point(x=3, y=-4)"
            assert objs["mode"].value == "safe"
            assert type(objs["mode"])("fast").name == "FAST"
    else:
        with pytest.raises(mason.UnpicklingError, match="Python version") as caught:
            mason.loads(data, trusted=True)
        assert made_by.rsplit("-", 1)[0] in str(caught.value)


def test_a_pickle_of_another_python_says_so_before_building_code():
    data = BYVALUE[0].read_bytes()
    tag = BYVALUE[0].stem[len("byvalue-"):].encode()
    other = data.replace(tag, b"cpython-399-3999")
    with pytest.raises(mason.UnpicklingError) as caught:
        mason.loads(other, trusted=True)
    message = str(caught.value)
    assert "cpython-399" in message and "Python version" in message
    assert "scaled" in message  # names what it carries
    with pytest.raises(pickle.UnpicklingError, match="cpython-399"):
        pickle.loads(other)


def test_a_newer_by_value_format_asks_for_a_newer_mason():
    data = BYVALUE[0].read_bytes()
    # the header's format number is the first argument of mason.byvalue._header: K\x01
    marker = b"_header\x94\x93\x94(K\x01"
    assert marker in data
    newer = data.replace(marker, marker[:-1] + b"\x09", 1)
    with pytest.raises(mason.UnpicklingError, match="newer than this mason"):
        mason.loads(newer, trusted=True)


def test_golden_signed_envelope():
    data = (GOLDEN / "signed-envelope-v1.bin").read_bytes()
    assert mason.loads(data, key=GOLDEN_KEY) == {"numbers": [1, 2.5, -3], "text": "golden"}
    with pytest.raises(SignatureError):
        mason.loads(data, key=b"another key of the same length..")
