"""Memory, @cache and cached functions: hits, misses, keys, management."""

from __future__ import annotations

import dataclasses
import importlib
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from mason.cache import CachedFunction, CacheWarning, Memory, cache, default_location
from mason.hashing import HashError

# The module itself (``mason.cache`` may be re-exported as the decorator).
mcache = importlib.import_module("mason.cache")

KEY = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def memory(location) -> Memory:
    return Memory(location, key=KEY)


@dataclasses.dataclass
class Result:
    name: str
    values: list


def entry_files(location) -> list[Path]:
    return sorted(Path(location).rglob("*.mason"))


def test_hit_returns_the_stored_value_without_calling(memory):
    calls = []

    @memory.cache
    def f(x, y=10):
        calls.append((x, y))
        return {"sum": x + y, "items": [x, y], "result": Result("r", [x])}

    first = f(1)
    assert first == {"sum": 11, "items": [1, 10], "result": Result("r", [1])}
    again = f(1)
    assert again == first and again is not first
    assert calls == [(1, 10)]
    assert f(2) == {"sum": 12, "items": [2, 10], "result": Result("r", [2])}
    assert calls == [(1, 10), (2, 10)]
    assert len(entry_files(memory.location)) == 2


def test_every_spelling_of_a_call_is_one_entry(memory):
    calls = []

    @memory.cache
    def f(a, b=2, *rest, c=3, **extra):
        calls.append(1)
        return (a, b, rest, c, extra)

    assert f(1) == f(1, 2) == f(a=1) == f(1, b=2) == f(1, c=3) == (1, 2, (), 3, {})
    assert len(calls) == 1
    assert f(1, 2, 3, c=3, z=1, y=2) == f(1, 2, 3, y=2, z=1)
    assert len(calls) == 2
    assert f(1, b=5) != f(1)
    assert len(calls) == 3


def test_simple_signature_fast_path_matches_binding(memory):
    @memory.cache
    def f(a, b, c=3):
        return a + b + c

    assert f.cache_key(1, 2) == f.cache_key(1, 2, 3) == f.cache_key(1, b=2) == \
        f.cache_key(c=3, b=2, a=1)
    assert f.cache_key(1, 2, 4) != f.cache_key(1, 2)
    with pytest.raises(TypeError):
        f.cache_key(1)


def test_argument_order_of_containers_does_not_matter(memory):
    calls = []

    @memory.cache
    def f(options):
        calls.append(1)
        return sorted(options["tags"])

    f({"tags": {"b", "a", "c"}, "n": 1})
    f({"n": 1, "tags": {"c", "a", "b"}})
    assert calls == [1]


def test_ignore(memory):
    calls = []

    @memory.cache(ignore=["verbose", "log"])
    def f(x, verbose=False, log=None):
        calls.append(x)
        return x * 2

    assert f(3) == 6 and f(3, verbose=True) == 6 and f(3, True, print) == 6
    assert calls == [3]
    with pytest.raises(ValueError, match="'nope' is not a parameter of .*verbose"):
        memory.cache(ignore=["nope"])(lambda x, verbose=False: x)


def test_key_override(memory):
    calls = []

    @memory.cache(key=lambda frame, name: name)
    def load(frame, name):
        calls.append(name)
        return f"{name}:{len(frame)}"

    assert load([1, 2], "a") == "a:2"
    assert load([1, 2, 3], "a") == "a:2"   # the key says only the name matters
    assert load([1], "b") == "b:1"
    assert calls == ["a", "b"]
    with pytest.raises(ValueError, match="key= replaces"):
        memory.cache(key=lambda x: x, ignore=["x"])(lambda x: x)


def test_exceptions_are_not_cached(memory):
    calls = []

    @memory.cache
    def f(x):
        calls.append(x)
        if len(calls) == 1:
            raise RuntimeError("first time")
        return x

    with pytest.raises(RuntimeError):
        f(1)
    assert f(1) == 1 and f(1) == 1
    assert calls == [1, 1]


def test_unhashable_argument_says_where(memory):
    import threading

    @memory.cache
    def f(config):
        return 1

    with pytest.raises(HashError, match=r"obj\[0\]\['lock'\]"):
        f({"lock": threading.Lock()})


def test_unpicklable_result_is_returned_with_a_warning(memory):
    calls = []

    @memory.cache
    def f():
        calls.append(1)
        return (x for x in range(3))   # a generator: nothing can pickle it

    with pytest.warns(CacheWarning, match="not stored"):
        gen = f()
    assert list(gen) == [0, 1, 2]
    with pytest.warns(CacheWarning):
        f()
    assert calls == [1, 1]
    assert entry_files(memory.location) == []
    assert list(Path(memory.location).rglob(".tmp-*")) == []


def test_functions_and_classes_of_main_as_results(memory):
    @memory.cache
    def make(k):
        def scale(x):
            return x * k
        return scale

    assert make(3)(2) == 6
    assert make(3)(5) == 15   # loaded: a nested function, by value


def _owner(array):
    """What finally holds the memory of ``array``."""
    base = array
    while getattr(base, "base", None) is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_large_results_are_mapped_read_only_small_ones_writable(memory):
    @memory.cache
    def arrays(n):
        return {"a": np.arange(10.0), "b": np.arange(n, dtype=np.float64)}

    for n in (400_000, 20_000, 10):   # 3.2 MB: mapped; 160 KB and 10 floats: read
        fresh = arrays(n)
        for _ in range(2):   # verified, then loaded again from what was verified
            loaded = arrays(n)
            np.testing.assert_array_equal(loaded["b"], fresh["b"])
            np.testing.assert_array_equal(loaded["a"], fresh["a"])
            if n == 400_000:
                assert type(_owner(loaded["b"])).__name__ == "mmap"
                assert not loaded["b"].flags.writeable and not loaded["a"].flags.writeable
                with pytest.raises(ValueError, match="read-only"):
                    loaded["b"][0] = -1.0
            else:
                assert type(_owner(loaded["b"])).__name__ != "mmap"
                assert loaded["b"].flags.writeable and loaded["a"].flags.writeable
                loaded["a"][0] = 42.0   # each load has its own copy
        assert arrays(n)["a"][0] == 0.0


def test_mmap_false_reads_into_writable_memory(location):
    memory = Memory(location, key=KEY, mmap=False)

    @memory.cache
    def f(n):
        return np.ones(n)

    f(300_000)
    for _ in range(2):
        loaded = f(300_000)
        assert loaded.flags.writeable and loaded.sum() == 300_000
        assert type(_owner(loaded)).__name__ != "mmap"
        loaded[:] = 0   # changes this copy only
    assert f(300_000).sum() == 300_000


def test_check_call_in_cache_and_cache_key(memory):
    @memory.cache
    def f(x):
        return x

    assert not f.check_call_in_cache(1)
    f(1)
    assert f.check_call_in_cache(1) and f.check_call_in_cache(x=1)
    assert not f.check_call_in_cache(2)
    key = f.cache_key(1)
    assert len(key) == 32 and (Path(f.directory) / f"{key}.mason").is_file()


def test_clear_of_a_function_and_of_the_memory(memory):
    @memory.cache
    def f(x):
        return x

    @memory.cache
    def g(x):
        return -x

    for i in range(3):
        f(i)
        g(i)
    assert len(entry_files(memory.location)) == 6
    assert f.clear() == 3
    assert not f.check_call_in_cache(0) and g.check_call_in_cache(0)
    assert memory.clear() == 3
    assert entry_files(memory.location) == []
    # Files that are not ours are left alone.
    other = Path(memory.location) / "notes.txt"
    other.write_text("keep me")
    (Path(memory.location) / "somedir").mkdir()
    (Path(memory.location) / "somedir" / "data.bin").write_bytes(b"x")
    f(1)
    assert memory.clear() == 1
    assert other.read_text() == "keep me"
    assert (Path(memory.location) / "somedir" / "data.bin").exists()


def test_info(memory):
    @memory.cache
    def f(x):
        return b"x" * 1000 * x

    info = memory.info()
    assert info["entries"] == 0 and info["size"] == 0
    f(1)
    f(2)
    info = memory.info()
    assert info["entries"] == 2
    assert info["size"] == sum(p.stat().st_size for p in entry_files(memory.location))
    assert info["size"] > 3000
    (name, record), = info["functions"].items()
    assert record["entries"] == 2 and name == os.path.basename(f.directory)
    assert "test_info" in name and ".f-" in name
    assert info["key"] == "key="
    assert f.info()["entries"] == 2


def test_methods(memory):
    class Model:
        def __init__(self, scale):
            self.scale = scale
            self.calls = 0

        @memory.cache(ignore=["self"])
        def unscaled(self, x):
            self.calls += 1
            return x * 2

    a, b = Model(1), Model(2)
    assert a.unscaled(3) == 6 and b.unscaled(3) == 6
    assert a.calls == 1 and b.calls == 0
    assert isinstance(Model.__dict__["unscaled"], CachedFunction)


def test_wrapper_looks_like_the_function(memory):
    def documented(x):
        """Docs."""
        return x

    wrapped = memory.cache(documented)
    assert wrapped.__name__ == "documented" and wrapped.__doc__ == "Docs."
    assert wrapped.__wrapped__ is documented
    assert "documented" in repr(wrapped)


def test_bare_cache_uses_the_user_cache_directory(isolated_user, monkeypatch):
    calls = []

    @cache
    def f(x):
        calls.append(x)
        return x + 1

    # Nothing is made at decoration time.
    assert not (isolated_user / ".cache" / "mason").exists()
    assert f(1) == 2 and f(1) == 2 and calls == [1]
    assert default_location() == str(isolated_user / ".cache" / "mason")
    assert (isolated_user / ".cache" / "mason" / "CACHEDIR.TAG").read_text().startswith(
        "Signature: 8a477f597d28d172789f06886806bc55")
    assert f.memory.location == default_location()
    key_file = isolated_user / ".config" / "mason" / "cache.key"
    assert key_file.is_file()

    @cache(ignore=["y"])
    def g(x, y):
        calls.append((x, y))
        return x

    assert g(1, 2) == g(1, 3) == 1 and calls == [1, (1, 2)]


def test_cache_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MASON_CACHE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setattr(mcache, "_DEFAULT", None)

    @cache
    def f(x):
        return x

    f(1)
    assert len(list((tmp_path / "elsewhere").rglob("*.mason"))) == 1


def test_sizes_and_ages_as_text(location):
    memory = Memory(location, key=KEY, max_size="1.5 MB", max_age=__import__(
        "datetime").timedelta(hours=2))
    assert memory.max_size == 1_500_000 and memory.max_age == 7200.0
    assert Memory(location, key=KEY, max_size="2 GiB").max_size == 2 * 1024 ** 3
    with pytest.raises(ValueError, match="cannot read"):
        Memory(location, key=KEY, max_size="lots")
    with pytest.raises(ValueError):
        Memory(location, key=KEY, max_age=0)


def test_module_level_cached_function_pickles_by_name(memory):
    import importlib
    import sys
    import textwrap

    directory = Path(memory.location).parent / "modsrc"
    directory.mkdir()
    (directory / "cachedmod.py").write_text(textwrap.dedent(f"""
        from mason.cache import Memory
        memory = Memory({memory.location!r}, key={KEY!r})

        @memory.cache
        def double(x):
            return 2 * x
    """))
    sys.path.insert(0, str(directory))
    try:
        mod = importlib.import_module("cachedmod")
        data = pickle.dumps(mod.double)
        assert b"cachedmod" in data and len(data) < 100
        assert pickle.loads(data) is mod.double
        # A wrapper not held under its name pickles whole, with its Memory (not its lock).
        other = memory.cache(mod.double.func)
        clone = pickle.loads(pickle.dumps(other))
        assert isinstance(clone, CachedFunction) and clone.memory.location == memory.location
        assert clone(21) == 42
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop("cachedmod", None)


def test_no_warning_on_ordinary_hits(memory):
    @memory.cache
    def f(x):
        return [x]

    f(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(1) == [1]


def test_entries_held_open_are_bounded(memory):
    @memory.cache
    def ramp(k):
        return np.arange(140_000, dtype=np.float64) + k   # 1.1 MB: memory-mapped

    def held() -> int:
        count = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                count += os.readlink(f"/proc/self/fd/{name}").startswith(memory.location)
            except OSError:
                pass
        return count

    for round_ in range(3):
        for k in range(40):
            value = ramp(k)
            assert value[0] == k and value[-1] == 139_999 + k
    del value   # a live memory-mapped array holds a descriptor of its own
    assert 0 < held() <= mcache._MAX_OPEN
