"""Allowlists from trusted files: the policy a known-good file needs, and nothing more."""

from __future__ import annotations

import pickle

import pytest
import scan_corpus as corpus

import mason
from mason.analysis import allow_entries, policy_from_pickle, scan


def test_the_policy_admits_exactly_what_the_file_needs(tmp_path):
    path = tmp_path / "model.pkl"
    objects = [corpus.Point(1, 2), corpus.Record("r", [corpus.Color.RED]), {"x": 1}]
    path.write_bytes(pickle.dumps(objects, 4))
    assert scan(path).verdict.value == "needs-allow"
    policy = policy_from_pickle(path)
    assert scan(path, policy).ok
    loaded = mason.loads(path.read_bytes(), policy=policy)
    assert loaded[0] == objects[0] and loaded[2] == objects[2]
    assert allow_entries(path) == ["scan_corpus.Color", "scan_corpus.Point",
                                   "scan_corpus.Record"]
    # Nothing else: another class of the same module is still refused.
    other = pickle.dumps(corpus.Bag([1]), 4)
    assert scan(other, policy).verdict.value == "needs-allow"
    with pytest.raises(mason.UnsafeGlobalError):
        mason.loads(other, policy=policy)


def test_the_default_policy_is_kept_with_its_checks():
    data = pickle.dumps([corpus.Point(), b"bytes"], 2)   # protocol 2: _codecs.encode
    policy = policy_from_pickle(data)
    assert scan(data, policy).ok
    hostile = corpus.stream(corpus.call4("_codecs", "encode", corpus.su("x"),
                                         corpus.su("zlib_codec")), 4)
    assert scan(hostile, policy).verdict.value == "dangerous"


def test_a_file_that_needs_dangerous_names_is_refused():
    data = corpus.stream(corpus.call4("os", "system", corpus.su("echo")), 4)
    with pytest.raises(mason.UnsafeGlobalError, match="os.system"):
        policy_from_pickle(data)
    policy = policy_from_pickle(data, dangerous=True)
    assert "os.system" in policy.names


def test_a_malformed_file_is_refused():
    with pytest.raises(mason.MalformedPickleError):
        policy_from_pickle(pickle.dumps([1, 2])[:-3])


def test_a_base_policy_and_a_preset():
    data = corpus.simple_torch(w=4)
    assert allow_entries(data, mason.Policy.preset("torch")) == []
    entries = allow_entries(data)
    assert entries == ["torch.FloatStorage", "torch._utils._rebuild_tensor_v2"]
    assert scan(data, policy_from_pickle(data)).ok
