"""The survey pass: its compiled twin gives identical results, and when it completes, the
symbolic machine agrees with it (the contract in mason/analysis/_survey.py).

Inputs: every stream of the scanner's corpus, and random mutations of them (bytes flipped,
inserted, deleted, cut short), which reach the give-up paths.
"""

from __future__ import annotations

import pickle
import random

import pytest
import scan_corpus as corpus

from mason.analysis import _survey
from mason.analysis._survey import COMPLETE, FALLBACK, OPAQUE, EmptyCall, GlobalRef, PidRef
from mason.analysis.scan import _Scanner
from mason.analysis.streams import streams
from mason.format.machine import Call, Global, PersistentRef, simulate
from mason.format.reader import Payload

from mason import _scan as compiled  # the compiled twin: built by setup.py build_ext

WATCH = frozenset(_Scanner(__import__("mason").Policy.default(), None, 1).watch) | {
    ("os", "system"), ("builtins", "eval"), ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"), ("numpy", "dtype"),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"), ("scan_corpus", "Point"),
}


def _corpus_streams() -> list[bytes]:
    found = []
    for sample in corpus.all_samples():
        undo = corpus.register(sample)
        try:
            for part in streams(sample.data, policy=sample.policy()):
                end = part.run.end if part.run.error is None else len(part.data)
                found.append(bytes(memoryview(part.data)[part.start:end]))
        finally:
            undo()
    return found


STREAMS = _corpus_streams()


def _mutations(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        raw = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            if not raw:
                break
            at = rng.randrange(len(raw))
            kind = rng.randrange(4)
            if kind == 0:
                raw[at] = rng.randrange(256)
            elif kind == 1:
                raw.insert(at, rng.randrange(256))
            elif kind == 2:
                del raw[at]
            else:
                del raw[at:]
        out.append(bytes(raw))
    return out


def _inputs():
    rng = random.Random(1234)
    inputs = list(STREAMS)
    for data in STREAMS:
        inputs += _mutations(data, rng, 6 if len(data) < 4096 else 1)
    return inputs


INPUTS = _inputs()


def test_there_are_many_inputs_and_both_outcomes():
    assert len(STREAMS) > 500 and len(INPUTS) > 3000
    outcomes = {_survey.survey(d, 0, WATCH)[0] for d in INPUTS}
    assert outcomes == {COMPLETE, FALLBACK}


def test_compiled_and_reference_surveys_are_identical():
    for data in INPUTS:
        expected = _survey.survey(data, 0, WATCH)
        assert compiled.survey(data, 0, WATCH) == expected, data
        assert compiled.survey(bytearray(data), 0, WATCH) == expected
        assert compiled.survey(memoryview(data), 0, WATCH) == expected
        assert compiled.survey(data, 0, WATCH, True) == _survey.survey(data, 0, WATCH, True)


def test_identical_from_an_offset_and_without_watch():
    for data in STREAMS[:200]:
        padded = b"\x00" * 7 + data
        assert compiled.survey(padded, 7, WATCH) == _survey.survey(padded, 7, WATCH)
        assert compiled.survey(data, 0) == _survey.survey(data, 0)
        assert compiled.survey(data, 0, None) == _survey.survey(data, 0)


def _as_survey_value(value, nodes, run, when, depth=0):
    """A machine value as the survey would model it at best, at offset ``when``."""
    if type(value) is tuple:
        return tuple(_as_survey_value(v, nodes, run, when, depth + 1) for v in value)
    if isinstance(value, Global):
        return GlobalRef(nodes[id(value)])
    if isinstance(value, PersistentRef):
        return PidRef(next(i for i, r in enumerate(run.persistent) if r is value))
    if isinstance(value, Call) and isinstance(value.func, Global) and value.args == () \
            and type(value.args) is tuple and value.kind in ("REDUCE", "NEWOBJ"):
        return EmptyCall(nodes[id(value.func)],
                         any(e.offset < when for e in value.effects))
    if value is None or type(value) in (str, int, bool) or type(value) is Payload:
        return value
    return OPAQUE


def _refines(survey_value, machine_value) -> bool:
    """The survey's value says no more than the machine's: equal, or OPAQUE where the
    survey did not model it."""
    if survey_value is OPAQUE:
        return True
    if type(survey_value) is tuple and type(machine_value) is tuple:
        return len(survey_value) == len(machine_value) and all(
            _refines(a, b) for a, b in zip(survey_value, machine_value))
    return type(survey_value) is type(machine_value) and survey_value == machine_value


@pytest.mark.parametrize("keep_tuples", [False, True])
def test_when_the_survey_completes_the_machine_agrees(keep_tuples):
    completed = 0
    for data in INPUTS:
        status, end, proto, globals_, calls, pids, buffers = _survey.survey(
            data, 0, WATCH, keep_tuples)
        if status != COMPLETE:
            continue
        completed += 1
        run = simulate(data)
        assert run.error is None, data
        assert run.end == end and run.protocol == proto
        assert globals_ == [(g.module, g.name, g.offset, g.opcode_name) for g in run.globals]
        nodes = {id(g): i for i, g in enumerate(run.globals)}
        watched = [c for c in run.calls if isinstance(c.func, Global)
                   and (c.func.module, c.func.name) in WATCH]
        assert len(calls) == len(watched)
        for (index, offset, opcode, args, kwargs), call in zip(calls, watched):
            assert (index, offset, opcode) == (nodes[id(call.func)], call.offset, call.kind)
            assert _refines(args, _as_survey_value(call.args, nodes, run, call.offset))
            if kwargs is None:
                assert call.kwargs is None
            else:
                assert _refines(kwargs, _as_survey_value(call.kwargs, nodes, run,
                                                         call.offset))
        assert [(o, n) for o, n, _ in pids] == [(r.offset, r.opcode_name)
                                                 for r in run.persistent]
        for (_, _, pid), ref in zip(pids, run.persistent):
            assert _refines(pid, _as_survey_value(ref.pid, nodes, run, ref.offset))
        assert buffers == len(run.buffers)
    assert completed > 500


def test_give_up_cases():
    for data in (b"", b"\x80", b"\x80\x05\xff.", b"cos\nsystem",       # truncated, unknown
                 b"\x80\x04\x8c\x02os\x8c\x06system\x85\x93.",        # names not both str
                 b"\x80\x02\x82\x01.",                               # an extension code
                 b"I12\n.", b"Pid\n.",                               # protocol 0 text
                 b"\x80\x02h\x05.",                                  # memo never written
                 b"\x80\x02q\x01.",                                  # PUT on an empty stack
                 b"\x80\x02(\x8c\x01aN\x8c\x01bd."):                  # odd dict items
        assert _survey.survey(data)[0] == FALLBACK, data
        assert compiled.survey(data) == _survey.survey(data)


def test_the_survey_reads_names_from_the_memo_and_leaves_large_strings_in_place():
    big = "x" * 5000
    data = pickle.dumps([__import__("collections").OrderedDict(), big,
                         __import__("collections").OrderedDict()], 4)
    status, end, _, globals_, calls, _, _ = compiled.survey(
        data, 0, frozenset({("collections", "OrderedDict")}))
    assert status == COMPLETE and end == len(data)
    assert [g[:2] for g in globals_] == [("collections", "OrderedDict")]
    call = pickle.dumps(getattr, 4)  # builtins.getattr: a global, not a call
    assert compiled.survey(call)[3][0][:2] == ("builtins", "getattr")
    text = b"\x80\x04" + b"X" + (5000).to_bytes(4, "little") + big.encode() + b"\x85" + \
        b"\x8c\x02os\x8c\x06system\x93" + b"\x94" + b"h\x00" + b"(" + b"t" + b"R" + b"."
    assert compiled.survey(text, 0, frozenset({("os", "system")})) == \
        _survey.survey(text, 0, frozenset({("os", "system")}))
    status, *_, = compiled.survey(text)
    assert status in (COMPLETE, FALLBACK)


def test_the_survey_bounds_what_it_builds():
    # A tuple nested deeper than MAX_VALUE_DEPTH as the argument of a watched call.
    body = b"\x80\x04\x8c\x02os\x8c\x06system\x93" + b"N" + b"\x85" * 150 + b"\x85R."
    watch = frozenset({("os", "system")})
    assert _survey.survey(body, 0, watch)[0] == FALLBACK
    assert compiled.survey(body, 0, watch) == _survey.survey(body, 0, watch)
    assert _survey.survey(body)[0] == COMPLETE   # unwatched: nothing is built


def test_the_scanner_reports_the_same_with_the_reference_survey():
    """Without the compiled module, scans give the same reports (the pure-Python twin and
    the reference limits check stand in)."""
    import sys

    from mason import limits
    from mason.analysis import scan

    module = sys.modules["mason.analysis.scan"]

    def summary(report):
        return report.verdict, report.format, [
            (f.severity, f.category, f.name, f.member, f.offset, f.count, f.detail)
            for f in report.findings], [(p.member, p.start, p.end) for p in report.pickles]

    samples = corpus.all_samples()
    compiled_reports = []
    for sample in samples:
        undo = corpus.register(sample)
        try:
            compiled_reports.append(summary(scan(sample.data, sample.policy())))
        finally:
            undo()
    saved = module._survey, module._limits_check
    module._survey, module._limits_check = _survey.survey, limits.check
    try:
        for sample, expected in zip(samples, compiled_reports):
            undo = corpus.register(sample)
            try:
                assert summary(scan(sample.data, sample.policy())) == expected, sample
            finally:
                undo()
    finally:
        module._survey, module._limits_check = saved
