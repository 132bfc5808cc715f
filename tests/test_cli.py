"""The mason command line: exit statuses, output formats, allowlists, and python -m mason."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from mason.cli import EXIT_ERROR, EXIT_SAFE, EXIT_UNSAFE, main

EVIL = (b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x07echo hi\x85R.")
USER = b"\x80\x04\x8c\x05mymod\x8c\x05Point\x93)\x81."
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"a": [1, 2]}))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.pickle").write_bytes(pickle.dumps([1.5], 2))
    (tmp_path / "notes.txt").write_text("not a pickle, and not named like one")
    return tmp_path


def run(*args, capsys):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_all_safe_exits_0(tree, capsys):
    status, out, _ = run("scan", tree, capsys=capsys)
    assert status == EXIT_SAFE
    assert "2 files" in out   # notes.txt is not a candidate in a folder
    assert "safe" in out


def test_any_unsafe_exits_1(tree, capsys):
    (tree / "sub" / "evil.pkl").write_bytes(EVIL)
    status, out, _ = run("scan", tree, capsys=capsys)
    assert status == EXIT_UNSAFE
    assert "evil.pkl: dangerous" in out
    assert "posix.system('echo hi')" in out


def test_a_file_named_directly_is_always_scanned(tree, capsys):
    status, out, _ = run("scan", tree / "notes.txt", capsys=capsys)
    assert status == EXIT_UNSAFE
    assert "malformed" in out


def test_errors_exit_2_and_take_precedence(tree, capsys):
    (tree / "evil.pkl").write_bytes(EVIL)
    status, _, err = run("scan", tree, tree / "missing.pkl", capsys=capsys)
    assert status == EXIT_ERROR
    assert "missing.pkl" in err
    (tree / "dangling.pkl").symlink_to(tree / "gone.pkl")
    status, _, err = run("scan", tree / "dangling.pkl", capsys=capsys)
    assert status == EXIT_ERROR and "dangling.pkl" in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["scan"])
    assert caught.value.code == EXIT_ERROR
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code == EXIT_ERROR
    status, _, err = run("scan", "--preset", "nonsense", __file__, capsys=capsys)
    assert status == EXIT_ERROR and "nonsense" in err
    status, _, err = run("scan", "--allow", "@/nonexistent/list", __file__, capsys=capsys)
    assert status == EXIT_ERROR and "allow list" in err


def test_allow_and_presets(tmp_path, capsys):
    path = tmp_path / "user.pkl"
    path.write_bytes(USER)
    assert run("scan", path, capsys=capsys)[0] == EXIT_UNSAFE
    assert run("scan", "--allow", "mymod.Point", path, capsys=capsys)[0] == EXIT_SAFE
    assert run("scan", "--allow", "other.X,mymod.*", path, capsys=capsys)[0] == EXIT_SAFE
    listing = tmp_path / "allow.txt"
    listing.write_text("# trusted\nmymod.Point  # our class\n")
    assert run("scan", "--allow", f"@{listing}", path, capsys=capsys)[0] == EXIT_SAFE
    torch_like = tmp_path / "p.pkl"
    torch_like.write_bytes(pickle.dumps([1], 2))
    assert run("scan", "--preset", "numpy", "--preset", "torch", torch_like,
               capsys=capsys)[0] == EXIT_SAFE


def test_emit_allow_builds_an_allowlist_that_makes_the_scan_pass(tmp_path, capsys):
    path = tmp_path / "user.pkl"
    path.write_bytes(USER)
    status, out, _ = run("scan", "--emit-allow", path, capsys=capsys)
    assert status == EXIT_SAFE and out == "mymod.Point\n"
    listing = tmp_path / "allow.txt"
    listing.write_text(out)
    assert run("scan", "--allow", f"@{listing}", path, capsys=capsys)[0] == EXIT_SAFE
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(EVIL)
    status, out, err = run("scan", "--emit-allow", evil, capsys=capsys)
    assert status == EXIT_UNSAFE and out == "" and "posix.system" in err
    status, out, _ = run("scan", "--emit-allow", "--dangerous", evil, capsys=capsys)
    assert status == EXIT_SAFE and out == "posix.system\n"


def test_json(tree, capsys):
    (tree / "evil.pkl").write_bytes(EVIL)
    status, out, _ = run("scan", "--json", tree, capsys=capsys)
    assert status == EXIT_UNSAFE
    document = json.loads(out)
    assert document["summary"]["files"] == 3 and document["summary"]["dangerous"] == 1
    (evil,) = [f for f in document["files"] if f["source"].endswith("evil.pkl")]
    assert evil["verdict"] == "dangerous"
    assert evil["findings"][0]["name"] == "posix.system"
    assert evil["findings"][0]["offset"] == 17
    assert evil["allow"] == ["posix.system"]


def test_sarif(tree, capsys):
    (tree / "evil.pkl").write_bytes(EVIL)
    (tree / "user.pkl").write_bytes(USER)
    status, out, _ = run("scan", "--sarif", tree, capsys=capsys)
    assert status == EXIT_UNSAFE
    log = json.loads(out)
    assert log["version"] == "2.1.0" and "sarif" in log["$schema"]
    (run_,) = log["runs"]
    assert run_["tool"]["driver"]["name"] == "mason"
    rules = {rule["id"] for rule in run_["tool"]["driver"]["rules"]}
    levels = {r["level"] for r in run_["results"]}
    assert levels == {"error", "warning"}
    for result in run_["results"]:
        assert result["ruleId"] in rules
        assert run_["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        location = result["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uri"].endswith((".pkl",))
        assert location["region"]["byteOffset"] >= 0
    assert run_["invocations"][0]["executionSuccessful"] is True


def test_quiet_and_verbose(tree, capsys):
    status, out, _ = run("scan", "-q", tree, capsys=capsys)
    assert status == EXIT_SAFE and out == ""
    status, out, _ = run("scan", "-v", tree, capsys=capsys)
    assert "ok.pkl: safe" in out and "more.pickle: safe" in out


def test_dis_and_show(tmp_path, capsys):
    path = tmp_path / "evil.pkl"
    path.write_bytes(EVIL)
    status, out, _ = run("dis", path, capsys=capsys)
    assert status == EXIT_SAFE
    assert "STACK_GLOBAL" in out and "# calls posix.system('echo hi')" in out
    status, out, _ = run("show", path, capsys=capsys)
    assert status == EXIT_SAFE and out.strip() == "posix.system('echo hi')"
    assert run("show", tmp_path / "missing", capsys=capsys)[0] == EXIT_ERROR
    assert run("dis", tmp_path, capsys=capsys)[0] == EXIT_ERROR


def test_python_dash_m_mason_is_the_same_program(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c"
                     + bytes([len(f"touch {marker}")]) + f"touch {marker}".encode()
                     + b"\x85R.")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for command in ("scan", "dis", "show"):
        result = subprocess.run([sys.executable, "-m", "mason", command, str(path)],
                                capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == (EXIT_UNSAFE if command == "scan" else EXIT_SAFE), \
            result.stderr
        assert "posix.system" in result.stdout
    assert not marker.exists()   # inspection never runs what it reads
    result = subprocess.run([sys.executable, "-m", "mason", "--help"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0 and "scan" in result.stdout
