"""Several processes on one cache at once, and writers killed mid-write: nothing lost, nothing
corrupt, nothing that loads wrong."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from mason.cache import Memory

from cache_helpers import python_env

WORKER = r"""
import os, random, sys, time
import numpy as np
from mason.cache import Memory

location, wid, n, start_at, calls_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    float(sys.argv[4]), sys.argv[5]
memory = Memory(location, max_size=sys.argv[6] if len(sys.argv) > 6 else None)

def expected(i):
    size = 300_000 if i % 7 == 0 else 50   # some entries are memory-mapped when loaded
    return {"i": i, "data": np.arange(size, dtype=np.int64) * i, "tag": "v%d" % i}

@memory.cache
def work(i):
    with open(os.path.join(calls_dir, "calls-%d" % os.getpid()), "a") as f:
        f.write("%d\n" % i)
    return expected(i)

order = list(range(n)) * 3
random.Random(wid).shuffle(order)
while time.time() < start_at:   # start together, to collide as much as possible
    time.sleep(0.001)
for i in order:
    got = work(i)
    want = expected(i)
    if got["i"] != i or got["tag"] != want["tag"] or not np.array_equal(got["data"], want["data"]):
        print("WRONG", i, file=sys.stderr)
        sys.exit(3)
print("done", wid)
"""


def _workers(location, calls_dir, n, count=4, extra=()):
    start_at = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-W", "error::UserWarning", "-c", WORKER,
                               location, str(w), str(n), str(start_at), str(calls_dir), *extra],
                              env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for w in range(count)]
    failures = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0 or "done" not in out:
            failures.append(f"exit {proc.returncode}:\n{out}\n{err}")
    assert not failures, "\n".join(failures)


def _calls(calls_dir: Path) -> list[int]:
    return [int(line) for path in calls_dir.glob("calls-*")
            for line in path.read_text().split()]


def test_processes_share_one_cache(location, tmp_path):
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    n = 30
    _workers(location, calls_dir, n)
    calls = _calls(calls_dir)
    assert set(calls) == set(range(n))   # every result computed at least once...
    assert len(calls) < 4 * n            # ...and most found in the cache
    entries = list(Path(location).rglob("*.mason"))
    assert len(entries) == n
    assert list(Path(location).rglob(".mason-*.tmp")) == []
    # A fifth process finds everything, verified: no call, no warning.
    before = len(calls)
    _workers(location, calls_dir, n, count=1)
    assert len(_calls(calls_dir)) == before


def test_processes_with_a_size_limit(location, tmp_path):
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    _workers(location, calls_dir, 30, count=3, extra=("3MB",))
    size = sum(p.stat().st_size for p in Path(location).rglob("*.mason"))
    # Every writer keeps the limit as it sees it; concurrent writers may each add one entry
    # after their last eviction.
    assert size <= 3_000_000 + 3 * 2_500_000


CLEARER = r"""
import sys, time
from mason.cache import Memory
memory = Memory(sys.argv[1])
end = time.time() + float(sys.argv[2])
cleared = 0
while time.time() < end:
    cleared += memory.clear()
    time.sleep(0.005)
print("cleared", cleared)
"""


def test_clearing_while_others_write(location, tmp_path):
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    clearer = subprocess.Popen([sys.executable, "-c", CLEARER, location, "6"], env=python_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _workers(location, calls_dir, 20, count=3)
    out, err = clearer.communicate(timeout=120)
    assert clearer.returncode == 0, err
    assert int(out.split()[1]) > 0
    # Whatever survived verifies.
    memory = Memory(location)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in Path(location).rglob("*.mason"):
            meta, value = memory._load(str(path), path.stem)
            assert meta["key"] == path.stem and value["i"] == int(value["tag"][1:])


# -- killed writers ---------------------------------------------------------------------------

SLOW_WRITER = r"""
import os, sys, time
import numpy as np
import mason._zip as zip_
from mason.cache import Memory

def slow(self, data):
    # Write 64 KB at a time, slowly, so that the test can kill us in the middle.
    view = memoryview(data).cast("B")
    for i in range(0, view.nbytes, 1 << 16):
        os.write(self.fd, view[i:i + (1 << 16)])
        if view.nbytes > 1 << 20 and i == 1 << 17:
            open(sys.argv[2], "w").close()   # tell the test: mid-write now
        time.sleep(0.01)
    self.pos += view.nbytes
zip_.LocalWriter.write = slow

memory = Memory(sys.argv[1])

@memory.cache
def big(n):
    return np.arange(n, dtype=np.float64)

big(1_000_000)
print("finished")
"""

READER = r"""
import sys, warnings
import numpy as np
from mason.cache import Memory
warnings.simplefilter("error")
memory = Memory(sys.argv[1])

@memory.cache
def big(n):
    return np.arange(n, dtype=np.float64)

print(big.check_call_in_cache(1_000_000))
value = big(1_000_000)
assert np.array_equal(value, np.arange(1_000_000, dtype=np.float64))
print(big.check_call_in_cache(1_000_000))
"""


def test_writer_killed_mid_write_leaves_no_entry(location, tmp_path):
    signal_file = tmp_path / "mid-write"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, location, str(signal_file)],
                            env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while not signal_file.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the writer never started writing"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL and "finished" not in out
    temporary = list(Path(location).rglob(".mason-*.tmp"))
    assert len(temporary) == 1 and 0 < temporary[0].stat().st_size < 8_000_000
    assert list(Path(location).rglob("*.mason")) == []
    # The next process: no entry (so no warning either), computes, stores, then hits.
    proc = subprocess.run([sys.executable, "-c", READER, location], env=python_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]
    # The dead writer's file goes once it is old enough to be surely dead.
    old = time.time() - 7200
    os.utime(temporary[0], (old, old))
    Memory(location).reduce_size()
    assert not temporary[0].exists()


BIG_FUNCTION = r"""
import sys
import numpy as np
from mason.cache import Memory
memory = Memory(sys.argv[1])

@memory.cache
def big(seed):
    return np.random.default_rng(seed).random(2_000_000)   # 16 MB
"""

KILLED_LOOP = BIG_FUNCTION + r"""
for seed in range(int(sys.argv[2]), 1000):
    big(seed)
"""

VERIFY = BIG_FUNCTION + r"""
import warnings
warnings.simplefilter("error")
found = 0
for seed in [int(s) for s in sys.argv[2].split(",")]:
    if big.check_call_in_cache(seed):
        value = big(seed)
        assert np.array_equal(value, np.random.default_rng(seed).random(2_000_000)), seed
        found += 1
print(found)
"""


def test_writers_killed_at_random_moments(location):
    rng = random.Random(1)
    seeds = []
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_LOOP, location,
                                 str(round_ * 100)], env=python_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.8 + rng.random() * 0.6)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        seeds += range(round_ * 100, round_ * 100 + 60)
    entries = list(Path(location).rglob("*.mason"))
    assert entries, "no writer got to finish an entry"
    # Every entry left behind verifies and holds exactly the value of its call.
    proc = subprocess.run([sys.executable, "-c", VERIFY, location, ",".join(map(str, seeds))],
                          env=python_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len(entries)


def test_threads_loading_while_another_clears(location):
    import threading

    import numpy as np

    memory = Memory(location, key=b"k" * 32)

    def ramp(n):
        return np.arange(n, dtype=np.float64)

    f = memory.cache(ramp)
    sizes = [10, 200_000, 300_000, 50]   # small entries kept in memory, large ones held open
    errors: list[str] = []
    stop = time.monotonic() + 4

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            n = rng.choice(sizes)
            try:
                value = f(n)
            except BaseException as exc:  # noqa: BLE001 - a thread's error fails the test
                errors.append(repr(exc))
                return
            if value.shape != (n,) or value[-1] != n - 1:
                errors.append(f"wrong value for {n}")

    def clearer() -> None:
        while time.monotonic() < stop:
            try:
                memory.clear()
            except BaseException as exc:  # noqa: BLE001
                errors.append(repr(exc))
                return
            time.sleep(0.01)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
        threads.append(threading.Thread(target=clearer))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
