"""An entry that this user did not write never runs: entries are authenticated with a per-user
key kept outside the cache directory, and checked before a byte of their pickle is loaded.

Every hostile payload here is first shown to be live: the standard library's pickle, in a
child process, creates the marker file from it.  Then the cache must not."""

from __future__ import annotations

import os
import pickle
import stat
import struct
import time
import warnings
import zipfile
from pathlib import Path

import pytest

from mason import files
from mason.cache import CacheKeyError, CacheWarning, Memory, key_file_path

from cache_helpers import run_python


class _Exec:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def hostile_pickle(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when loaded (by name: builtins.exec)."""
    return pickle.dumps(_Exec(f"open({str(marker)!r}, 'w').write('pwned')"), protocol=5)


def assert_live(payload: bytes, marker: Path) -> None:
    """The control: stdlib pickle runs the payload (in a child), creating the marker."""
    run_python("import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())",
               str(_save(payload, marker.parent / "payload.bin")))
    assert marker.exists(), "the control did not run: the payload is not live"
    marker.unlink()


def _save(data: bytes, path: Path) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "marker"
    assert not path.exists()
    return path


CALLS: list = []


def double(x):
    CALLS.append(x)
    return {"value": x * 2}


@pytest.fixture
def victim(location):
    """A cached function of this user (default per-user key), and its call log."""
    CALLS.clear()
    memory = Memory(location)
    return memory, memory.cache(double), CALLS


def entry_path(f, *args) -> Path:
    return Path(f.directory) / f"{f.cache_key(*args)}.mason"


def plant(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def assert_recomputed_safely(f, calls, marker, expected_calls) -> None:
    with pytest.warns(CacheWarning, match="not loading"):
        assert f(21) == {"value": 42}
    assert not marker.exists(), "the planted entry ran code"
    assert calls == expected_calls
    # The planted file was replaced by a genuine entry: the next call is a clean hit.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(21) == {"value": 42}
    assert calls == expected_calls
    assert not marker.exists()


# -- the key ----------------------------------------------------------------------------------

def test_key_file_is_made_private_outside_the_cache(victim, isolated_user):
    memory, f, _ = victim
    f(1)
    path = Path(key_file_path())
    assert path == isolated_user / ".config" / "mason" / "cache.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(bytes.fromhex(path.read_text().strip())) == 32
    assert not str(path).startswith(memory.location)
    assert memory.info()["key"] == str(path)


def test_the_key_is_shared_by_the_users_processes(victim, location):
    memory, f, calls = victim
    f(5)
    code = ("import sys, warnings\nwarnings.simplefilter('error')\n"
            "sys.path.insert(0, sys.argv[2])\n"
            "from mason.cache import Memory\n"
            "import test_cache_security as t\n"
            "print(Memory(sys.argv[1]).cache(t.double)(5), t.CALLS)\n")
    out = run_python(code, location, str(Path(__file__).parent)).stdout.strip()
    assert out == "{'value': 10} []"   # a hit: the other process verified this one's entry


def test_key_file_readable_by_others_is_refused(victim):
    memory, f, _ = victim
    f(1)
    path = Path(key_file_path())
    path.chmod(0o644)
    fresh = Memory(memory.location).cache(f.func)
    with pytest.raises(CacheKeyError, match="chmod 600"):
        fresh(1)


def test_key_file_of_another_user_is_refused(victim, monkeypatch):
    memory, f, _ = victim
    f(1)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(key_file_path()).st_uid + 1)
    fresh = Memory(memory.location).cache(f.func)
    with pytest.raises(CacheKeyError, match="belongs to user id"):
        fresh(1)


def test_key_file_inside_the_cache_is_refused(location, monkeypatch):
    monkeypatch.setenv("MASON_CACHE_KEY_FILE", os.path.join(location, "cache.key"))
    f = Memory(location).cache(lambda x: x)
    with pytest.raises(CacheKeyError, match="inside the cache directory"):
        f(1)


def test_key_from_the_environment(location, monkeypatch):
    monkeypatch.setenv("MASON_CACHE_KEY", "a team secret of some length")
    memory = Memory(location)
    f = memory.cache(lambda x: x + 1)
    assert f(1) == 2 and f(1) == 2
    assert memory.info()["key"] == "MASON_CACHE_KEY"
    assert not Path(key_file_path()).exists()
    monkeypatch.setenv("MASON_CACHE_KEY", "short")
    with pytest.raises(CacheKeyError, match="at least 16"):
        Memory(location).cache(lambda x: x)(1)


# -- planted entries ----------------------------------------------------------------------------

def test_planted_plain_pickle_does_not_run(victim, marker):
    memory, f, calls = victim
    payload = hostile_pickle(marker)
    assert_live(payload, marker)
    plant(entry_path(f, 21), payload)
    assert not f.check_call_in_cache(21)
    assert memory.info()["entries"] == 1 and not marker.exists()
    assert_recomputed_safely(f, calls, marker, [21])


def _forge(key: bytes, entry_key: str, marker: Path, path: Path) -> None:
    """A well-formed entry for ``entry_key`` whose value runs code when unpickled, signed
    with ``key`` (not this user's)."""
    meta = {"v": 1, "key": entry_key, "created": time.time(), "function": "x",
            "duration": 0.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    files.dump((meta, _Exec(f"open({str(marker)!r}, 'w').write('pwned')")), str(path),
               key=key)


def member_span(path: Path, name: str) -> tuple[int, int]:
    """Where the data of the member ``name`` of a container (a zip) lies in the file."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
    start = info.header_offset + 30 + name_len + extra_len
    return start, start + info.compress_size


def test_entry_signed_with_another_key_does_not_run(victim, marker, tmp_path):
    _, f, calls = victim
    _forge(b"the attacker's own key!!", f.cache_key(21), marker, tmp_path / "forged")
    data = zipfile.ZipFile(tmp_path / "forged").read("data.pkl")
    assert_live(data, marker)   # the pickle inside runs, for stdlib pickle
    plant(entry_path(f, 21), (tmp_path / "forged").read_bytes())
    assert_recomputed_safely(f, calls, marker, [21])


def test_genuine_table_with_a_hostile_pickle_does_not_run(victim, marker):
    _, f, calls = victim
    f(21)
    path = entry_path(f, 21)
    payload = hostile_pickle(marker)
    assert_live(payload, marker)
    start, end = member_span(path, "data.pkl")
    genuine = path.read_bytes()
    assert len(payload) <= end - start
    # Keep the signed table; put the hostile pickle where the genuine one was (padded after
    # its STOP, which pickle ignores).
    forged = genuine[:start] + payload + b" " * (end - start - len(payload)) + genuine[end:]
    plant(path, forged)
    fresh = Memory(f.memory.location).cache(f.func)   # no in-process memory of the genuine one
    with pytest.warns(CacheWarning, match="not loading"):
        assert fresh(21) == {"value": 42}
    assert not marker.exists()
    assert calls == [21, 21]


def test_entry_of_another_call_is_not_returned(victim):
    _, f, calls = victim
    f(1)
    f(21)
    entry_path(f, 21).write_bytes(entry_path(f, 1).read_bytes())   # valid, but for f(1)
    fresh = Memory(f.memory.location).cache(f.func)
    with pytest.warns(CacheWarning, match="entry of another call"):
        assert fresh(21) == {"value": 42}


@pytest.mark.parametrize("cut", [0, 5, 20, 60, -1])
def test_truncated_or_torn_entries_are_recomputed(victim, cut):
    _, f, calls = victim
    f(21)
    path = entry_path(f, 21)
    data = path.read_bytes()
    if cut >= 0:
        path.write_bytes(data[:cut])
    else:   # a byte flipped in the middle
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])
    fresh = Memory(f.memory.location).cache(f.func)
    with pytest.warns(CacheWarning, match="not loading"):
        assert fresh(21) == {"value": 42}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fresh(21) == {"value": 42}


# The victim's function, word for word in both programs: same module (__main__), name and
# code, so the same call has the same entry path in both.
FUNCTION = """
calls = []

@memory.cache
def f(x):
    calls.append(x)
    return {"value": x * 2}
"""

ATTACKER = r"""
import sys, time
from mason.cache import Memory

class Evil:
    def __reduce__(self):
        return (exec, ("open(%r, 'w').write('pwned')" % sys.argv[2],))

memory = Memory(sys.argv[1])
""" + FUNCTION + r"""
key = f.cache_key(21)
path = f"{f.directory}/{key}.mason"
if sys.argv[3] == "plant":   # write a genuine mason entry, signed with the attacker's key
    memory._store(f.directory, path, Evil(), {"v": 1, "key": key, "created": time.time()})
else:                        # the control: the attacker's own process loads it (trusted)
    memory._load(path, key)
print(key)
"""

VICTIM = r"""
import sys, warnings
from mason.cache import Memory
memory = Memory(sys.argv[1])
""" + FUNCTION + r"""
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print(f(21), calls, len(caught), f.cache_key(21))
"""


def test_entry_written_by_another_user_does_not_run(location, marker, tmp_path):
    # Another user: another process with a key of its own writes, where the victim will look,
    # a well-formed entry whose value runs code when unpickled.
    attacker_home = tmp_path / "attacker"
    attacker_home.mkdir()
    attacker = dict(HOME=str(attacker_home), XDG_CONFIG_HOME=str(attacker_home / ".config"))
    key = run_python(ATTACKER, location, str(marker), "plant", **attacker).stdout.strip()
    planted, = Path(location).rglob(f"{key}.mason")
    assert not marker.exists()
    saved = planted.read_bytes()
    # Controls: the pickle inside runs under stdlib pickle, and the entry runs when its
    # writer loads it with the key that signed it.
    assert_live(zipfile.ZipFile(planted).read("data.pkl"), marker)
    run_python(ATTACKER, location, str(marker), "load", **attacker)
    assert marker.exists(), "control: the attacker's entry did not run for its writer"
    marker.unlink()
    assert planted.read_bytes() == saved
    # The victim: same function, same call, own key.  Nothing runs; the result is computed.
    out = run_python(VICTIM, location).stdout.strip()
    assert not marker.exists(), "the other user's entry ran code"
    assert out == f"{{'value': 42}} [21] 1 {key}"
    assert planted.read_bytes() != saved   # replaced by the victim's own entry


def test_management_never_loads_entries(victim, marker):
    memory, f, _ = victim
    plant(entry_path(f, 21), hostile_pickle(marker))
    f.check_call_in_cache(21)
    memory.info()
    memory.reduce_size()
    f.info()
    assert memory.clear() == 1
    assert not marker.exists()


def test_the_control_itself_detects_a_live_payload(marker):
    # Guards the guard: a payload that does nothing must fail the control.
    with pytest.raises(AssertionError, match="not live"):
        assert_live(pickle.dumps({"harmless": True}), marker)



# -- entries verified once in a process ------------------------------------------------------

def ramp(n):
    import numpy as np
    return np.arange(n, dtype=np.float64)


def _flip_inside(path: Path) -> bytes:
    """The entry's bytes with one byte flipped in the middle of its largest part."""
    with zipfile.ZipFile(path) as archive:
        name = max(archive.namelist(), key=lambda n: archive.getinfo(n).file_size)
    start, end = member_span(path, name)
    data = bytearray(path.read_bytes())
    data[(start + end) // 2] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("how", ["replaced", "in place"])
@pytest.mark.parametrize("n", [10, 400_000])   # a small entry (kept in memory), a large one
def test_entry_changed_after_this_process_verified_it(location, how, n):
    import numpy as np

    memory = Memory(location, key=b"k" * 32)
    f = memory.cache(ramp)
    f(n)
    for _ in range(3):   # verified once, then loaded from what was verified
        np.testing.assert_array_equal(f(n), np.arange(n, dtype=np.float64))
    path = entry_path(f, n)
    tampered = _flip_inside(path)
    if how == "replaced":
        other = path.with_suffix(".new")
        other.write_bytes(tampered)
        os.replace(other, path)
    else:
        with open(path, "r+b") as fh:
            fh.write(tampered)
        stamp = path.stat().st_mtime_ns + 1_000_000
        os.utime(path, ns=(stamp, stamp))   # the write's mtime, even on a coarse clock
    with pytest.warns(CacheWarning, match="not loading"):
        np.testing.assert_array_equal(f(n), np.arange(n, dtype=np.float64))


def test_clear_closes_the_entries_this_process_holds(location):
    memory = Memory(location, key=b"k" * 32)
    f = memory.cache(ramp)
    for n in (300_000, 300_001):
        f(n)
        f(n)   # verified and kept open

    def held() -> list[str]:
        targets = []
        for name in os.listdir("/proc/self/fd"):
            try:
                targets.append(os.readlink(f"/proc/self/fd/{name}"))
            except OSError:   # the descriptor listdir itself used
                pass
        return [t for t in targets if t.startswith(location)]

    assert len(held()) == 2
    assert memory.clear() == 2
    assert held() == []   # the deleted files' space is freed


def test_fifo_or_symlink_planted_as_an_entry(victim, tmp_path):
    _, f, calls = victim
    path = entry_path(f, 21)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)   # opening it for reading would wait for a writer for ever
    with pytest.warns(CacheWarning, match="not a regular file"):
        assert f(21) == {"value": 42}
    assert path.is_file()   # replaced by a genuine entry
    f(1)
    path.unlink()
    path.symlink_to(entry_path(f, 1))   # a valid entry, of another call, through a link
    with pytest.warns(CacheWarning, match="cannot be opened"):
        assert f(21) == {"value": 42}
    assert path.is_file() and not path.is_symlink()
    assert calls == [21, 1, 21]
