"""The scanner against the corpus (scan_corpus.py): every hostile sample flagged, every
benign one safe under its policy, and a scan's ``safe`` meaning that loading succeeds.

The last property is the one that makes ``safe`` worth trusting: for every sample of the
corpus that scans ``safe``, every pickle stream of it is loaded with mason under the same
policy, and must load without a refusal (indeed without any error).  A joblib file is
loaded whole, by path (mason.load reads joblib's arrays); torch checkpoints' pickles are left
out (their storages resolve through torch, which is not a test dependency).
"""

from __future__ import annotations

import io
import pickle

import pytest
import scan_corpus as corpus

import mason
from mason.analysis import scan
from mason.analysis.scan import _Scanner
from mason.analysis.streams import streams

SAMPLES = corpus.all_samples() + [
    corpus.Sample("torch checkpoint under the torch preset", corpus.simple_torch(w=6, b=3),
                  "safe", preset=("torch",), hostile=False),
    corpus.Sample("joblib file under the numpy preset",
                  corpus.joblib_samples()[0].data, "safe", preset=("numpy",),
                  allow=("joblib.numpy_pickle.NumpyArrayWrapper",), hostile=False),
]
HOSTILE = [s for s in SAMPLES if s.hostile]
BENIGN = [s for s in SAMPLES if not s.hostile]


def _scan(sample: corpus.Sample, **options):
    undo = corpus.register(sample)
    try:
        return scan(sample.data, sample.policy(), **options)
    finally:
        undo()


def test_the_corpus_is_large_and_varied():
    assert len(HOSTILE) >= 250
    assert len(BENIGN) >= 250
    kinds = {scan(s.data, s.policy()).format.split(" ")[0] for s in BENIGN}
    for kind in ("pickle", "torch", "torch-legacy", "joblib", "npy", "npz", "zip", "tar",
                 "gzip/pickle", "bz2/pickle", "xz/pickle", "zstd/pickle", "lzma/pickle",
                 "zlib/pickle"):
        assert any(k.startswith(kind) for k in kinds), (kind, kinds)


@pytest.mark.parametrize("sample", HOSTILE, ids=lambda s: s.name)
def test_hostile_sample_is_flagged(sample):
    report = _scan(sample)
    assert report.verdict.value == sample.verdict, str(report)
    assert not report.ok
    names = {f.name for f in report.findings}
    categories = {f.category for f in report.findings}
    for name in sample.names:
        assert name in names, (name, str(report))
    for category in sample.categories:
        assert category in categories, (category, str(report))


@pytest.mark.parametrize("sample", BENIGN, ids=lambda s: s.name)
def test_benign_sample_scans_as_expected(sample):
    report = _scan(sample)
    assert report.verdict.value == sample.verdict, str(report)
    for name in sample.names:
        assert name in {f.name for f in report.findings}, str(report)
    if sample.verdict == "safe":
        assert report.ok
        assert not [f for f in report.findings if f.severity != "note"]


def test_every_dangerous_callable_is_flagged_in_every_protocol_by_its_name():
    flagged = {s.name for s in HOSTILE if s.name.startswith(("p0 ", "p2 ", "p4 "))}
    for module, name in corpus.DANGEROUS_CALLABLES:
        for protocol in ("p0", "p2", "p4"):
            assert f"{protocol} {module}.{name}" in flagged


class _Loader(mason.Unpickler):
    def persistent_load(self, pid):
        return ("persistent", pid)


def _loadable_streams(sample):
    """(context, bytes, buffers) of each stream mason itself would load."""
    for part in streams(sample.data, policy=sample.policy()):
        if part.context in ("joblib", "torch", "torch-legacy"):
            continue
        data = bytes(memoryview(part.data)[part.start:part.run.end])
        yield part.context, data, [b"\0" * 8] * len(part.run.buffers)


SAFE = [s for s in SAMPLES if _scan(s).ok]


def test_the_safe_samples_include_every_container_mason_loads_itself():
    assert len(SAFE) >= 250
    contexts = {context for s in SAFE for context, _, _ in _loadable_streams(s)}
    assert {"pickle", "npy"} <= contexts


@pytest.mark.parametrize("sample", SAFE, ids=lambda s: s.name)
def test_safe_means_loading_succeeds(sample, tmp_path):
    """A scan's safe verdict: loading each stream under the same policy succeeds (a joblib
    file, which only a loader that knows its arrays can read, is loaded whole by path)."""
    if "joblib" in _scan(sample).format:
        path = tmp_path / "sample.joblib"
        path.write_bytes(sample.data)
        assert isinstance(mason.load(path, policy=sample.policy()), dict)
        return
    undo = corpus.register(sample)
    try:
        loaded = 0
        for context, data, buffers in _loadable_streams(sample):
            _Loader(io.BytesIO(data), policy=sample.policy(), buffers=buffers).load()
            if not _has_persistent(data):
                mason.loads(data, policy=sample.policy(), buffers=buffers)
            loaded += 1
    finally:
        undo()
    parts = streams(sample.data, policy=sample.policy())
    assert loaded or all(p.context in ("joblib", "torch", "torch-legacy") for p in parts)


def _has_persistent(data: bytes) -> bool:
    from mason.format.machine import simulate
    return bool(simulate(data).persistent)


@pytest.mark.parametrize("sample", [s for s in SAMPLES if not _scan(s).ok],
                         ids=lambda s: s.name)
def test_not_safe_means_loading_refuses_or_fails_for_plain_pickles(sample):
    """The converse, where mason.loads reads the file as it is (a raw pickle, a single
    stream): a stream the scan does not call safe does not load cleanly, or names something
    the scan reported.  (Malformed and dangerous streams are refused; needs-allow streams
    are refused for the very names the scan lists.)"""
    report = _scan(sample)
    if report.format != "pickle" or sample.extension:
        return
    try:
        mason.loads(sample.data, policy=sample.policy())
    except mason.UnsafeGlobalError as exc:
        # Refused: for a name the scan reported, unless the name is computed while loading
        # (a computed import, or a getattr the scan reported as a gadget).
        reported = {f.name for f in report.findings} | {f.allow for f in report.findings}
        runtime = any(f.category in ("unknown import", "attribute-access gadget")
                      for f in report.findings)
        assert set(exc.names) & reported or not exc.names or runtime, \
            (exc.names, str(report))
    except (mason.UnpicklingError, mason.LimitError, ValueError, TypeError, EOFError,
            AttributeError, ImportError, IndexError, KeyError):
        pass
    else:
        # Loaded: only possible when the scan's objection is not a refusal at load time:
        # persistent ids, or a stand-in call the scan could not check.
        # (mason.loads reads one pickle: data after it is the file's problem, not the load's.)
        assert all(f.severity in ("needs-allow", "note") or "after the last pickle" in
                   f.message for f in report.findings), str(report)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.name)
def test_the_survey_fast_path_and_the_symbolic_machine_agree(sample):
    """Reading streams with the survey (and the machine only where it must) reports the
    same as reading every stream with the machine."""
    undo = corpus.register(sample)
    try:
        fast = _Scanner(sample.policy(), None, 1 << 32)
        fast_format = fast.explore(sample.data, "")
        slow = _Scanner(sample.policy(), None, 1 << 32, machine_only=True)
        slow_format = slow.explore(sample.data, "")
    finally:
        undo()

    def summary(scanner):
        report = scanner.report("x", "", 0)
        return report.verdict, sorted((f.severity, f.category, f.name or "", f.member,
                                       f.offset if f.offset is not None else -1, f.count)
                                      for f in report.findings)
    assert fast_format == slow_format
    assert summary(fast) == summary(slow)
    assert [(p.member, p.start, p.end, p.protocol, p.globals) for p in fast.pickles] == \
        [(p.member, p.start, p.end, p.protocol, p.globals) for p in slow.pickles]


def test_findings_say_where_and_how_to_allow():
    report = scan(corpus.stream(corpus.call4("mymodule", "Thing", corpus.su("x")), 4))
    (finding,) = report.findings
    assert finding.severity == "needs-allow"
    assert finding.name == "mymodule.Thing"
    assert finding.offset == 2 + 10 + 7   # PROTO, then the two names; STACK_GLOBAL's byte
    assert finding.allow == "mymodule.Thing"
    assert finding.detail == "mymodule.Thing('x')"
    assert report.allow == ["mymodule.Thing"]
    assert scan(report_data := corpus.stream(corpus.call4("mymodule", "Thing",
                                                          corpus.su("x")), 4),
                allow=report.allow).ok
    assert report_data


def test_a_broken_stream_reports_what_runs_before_the_break():
    data = corpus.proto(4) + corpus.call4("os", "system", corpus.su("echo hi")) + b"\xff"
    report = scan(data)
    assert report.verdict.value == "dangerous"
    malformed = [f for f in report.findings if f.category == "malformed"]
    assert malformed and malformed[0].offset == len(data) - 1
    (system,) = [f for f in report.findings if f.name == "os.system"]
    assert system.detail == "os.system('echo hi')"
    assert report.pickles[0].complete is False


def test_repeated_names_are_counted_once():
    body = corpus.EMPTY_LIST + corpus.MARK
    for _ in range(50):
        body += corpus.call4("mymodule", "Thing", corpus.su("x"))
    report = scan(corpus.stream(body + corpus.APPENDS, 4))
    (finding,) = report.findings
    assert finding.count == 50


def test_an_allowed_name_known_to_run_code_is_a_note_not_a_refusal():
    data = corpus.stream(corpus.call4("os", "getcwd"), 4)
    report = scan(data, allow=["os.getcwd"])
    assert report.ok
    (note,) = report.findings
    assert note.severity == "note" and note.category == "process access"


def test_python2_names_are_mapped_as_loading_maps_them():
    data = corpus.stream(corpus.global_("__builtin__", "set") + corpus.EMPTY_LIST
                         + corpus.TUPLE1 + corpus.REDUCE, 2)
    report = scan(data)
    assert report.ok
    assert report.globals == ["builtins.set"]
    # From protocol 3 on, the unpickler maps nothing.
    data3 = corpus.stream(corpus.global_("__builtin__", "set") + corpus.EMPTY_LIST
                          + corpus.TUPLE1 + corpus.REDUCE, 3)
    assert scan(data3).verdict.value == "needs-allow"


def test_the_policy_limits_apply():
    data = pickle.dumps([[[[1]]]], 4)
    assert scan(data).ok
    tight = mason.Policy.default().with_limits(mason.Limits(max_depth=3))
    report = scan(data, tight)
    assert report.verdict.value == "dangerous"
    assert report.findings[0].category == "resource bomb"
    with pytest.raises(mason.LimitError):
        mason.loads(data, policy=tight)
    deep = corpus.proto(2) + corpus.EMPTY_LIST * 60 + corpus.APPEND * 59 + corpus.STOP
    assert scan(deep, limits=mason.Limits(max_depth=50)).verdict.value == "dangerous"
    assert scan(deep).ok
