"""Signed pickles: HMAC-SHA256 envelopes, verified before a single opcode runs."""

from __future__ import annotations

import hmac
import io
import pickle

import pytest

import mason
from mason import signing
from mason.errors import SignatureError

KEY = b"0123456789abcdef0123456789abcdef"
OTHER = b"fedcba9876543210fedcba9876543210"

RAN = []


def _record(value):
    """Stands for any code a pickle could run: tests check that it never ran."""
    RAN.append(value)
    return value


class Recorder:
    def __reduce__(self):
        return (_record, ("ran",))


@pytest.fixture(autouse=True)
def _clear():
    RAN.clear()


def test_round_trip_loads_trusted():
    f = lambda x: x * 3  # noqa: E731 - code by value: needs trust
    data = mason.dumps({"f": f, "n": [1, 2]}, key=KEY)
    loaded = mason.loads(data, key=KEY)
    assert loaded["f"](2) == 6 and loaded["n"] == [1, 2]
    assert signing.is_signed(data)


def test_dump_and_load_files_one_envelope_at_a_time():
    buf = io.BytesIO()
    mason.dump([1, 2], buf, key=KEY)
    mason.dump(lambda: "two", buf, key=KEY)
    mason.dump("plain after", buf)
    buf.seek(0)
    assert mason.load(buf, key=KEY) == [1, 2]
    assert mason.load(buf, key=KEY)() == "two"
    assert mason.load(buf) == "plain after"


def test_wrong_key_is_refused_and_says_so():
    data = mason.dumps(Recorder(), key=KEY)
    with pytest.raises(SignatureError, match="wrong key") as caught:
        mason.loads(data, key=OTHER)
    assert signing.key_id(KEY) in str(caught.value)
    assert RAN == []


def test_every_altered_byte_is_refused_before_anything_runs():
    data = mason.dumps([Recorder(), "payload"], key=KEY)
    for i in range(len(data)):
        altered = bytearray(data)
        altered[i] ^= 0x01
        with pytest.raises(SignatureError):
            mason.loads(bytes(altered), key=KEY)
    assert RAN == []
    assert mason.loads(data, key=KEY)[1] == "payload"
    assert RAN == ["ran"]


def test_every_truncation_is_refused():
    data = mason.dumps(Recorder(), key=KEY)
    for n in range(len(data)):
        with pytest.raises(SignatureError):
            mason.loads(data[:n], key=KEY)
        with pytest.raises(SignatureError):
            mason.load(io.BytesIO(data[:n]), key=KEY)
    with pytest.raises(SignatureError, match="unexpected bytes"):
        mason.loads(data + b"x", key=KEY)
    assert RAN == []


def test_missing_envelope_is_refused():
    plain = pickle.dumps(Recorder())
    with pytest.raises(SignatureError, match="not signed"):
        mason.loads(plain, key=KEY)
    with pytest.raises(SignatureError, match="not signed"):
        mason.load(io.BytesIO(plain), key=KEY)
    assert RAN == []


def test_payload_swapped_between_envelopes_is_refused():
    first = mason.dumps("aaaa", key=KEY)
    second = mason.dumps("bbbb", key=KEY)
    # the second payload inside the first envelope (same length, first's signature)
    spliced = first.replace(b"aaaa", b"bbbb")
    assert spliced != first and len(spliced) == len(second)
    with pytest.raises(SignatureError, match="altered"):
        mason.loads(spliced, key=KEY)


def test_plain_loads_of_an_envelope_asks_for_the_key():
    data = mason.dumps([1, 2, 3], key=KEY)
    for load in (mason.loads, lambda d: mason.loads(d, trusted=True),
                 lambda d: mason.Unpickler(io.BytesIO(d)).load(), pickle.loads):
        with pytest.raises(SignatureError, match="signed") as caught:
            load(data)
        assert "key=" in str(caught.value)
        assert signing.key_id(KEY) in str(caught.value)


def test_key_rotation_and_key_kinds():
    data = mason.dumps("rotated", key=OTHER)
    assert mason.loads(data, key=[KEY, OTHER]) == "rotated"
    text_key = "a passphrase that is long enough"
    assert mason.loads(mason.dumps(5, key=text_key), key=text_key.encode()) == 5
    with pytest.raises(ValueError, match="at least 16 bytes"):
        mason.dumps(1, key=b"short")
    with pytest.raises(TypeError):
        mason.dumps(1, key=12345)


def test_policy_still_applies_when_asked_for():
    data = mason.dumps(Recorder(), key=KEY)
    with pytest.raises(mason.UnsafeGlobalError):
        mason.loads(data, key=KEY, allow=["builtins.len"])
    assert RAN == []


def test_the_comparison_is_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(signing.hmac, "compare_digest", spy)
    data = mason.dumps("x", key=KEY)
    assert mason.loads(data, key=KEY) == "x"
    assert (32, 32) in calls  # the MAC


def test_envelope_layout_is_versioned_and_a_standard_pickle():
    data = mason.dumps({"a": 1}, key=KEY)
    header = data[data.index(b"MS"):data.index(b"MS") + 12]
    assert header[2] == signing.ENVELOPE_VERSION and header[3] == 1
    assert header[4:] == bytes.fromhex(signing.key_id(KEY))
    # the stdlib's disassembler reads it: it is a pickle naming mason.signing.signed
    import pickletools
    out = io.StringIO()
    pickletools.dis(data, out)
    assert "mason.signing" in out.getvalue() and "signed" in out.getvalue()
    future = data.replace(b"MS\x01", b"MS\x09", 1)
    with pytest.raises(SignatureError, match="version 9"):
        mason.loads(future, key=KEY)
