"""Fixtures for the store tests: a fresh SQLite path, and a real Redis server of our own.

The Redis tests never skip: CI installs Debian's redis-server (.ci/run), and a machine without
it fails here with the command that fixes it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_redis(exe: str, workdir: Path):
    """Start redis-server on a free loopback port; return (process, port, log path)."""
    for _ in range(5):
        port = _free_port()
        log = workdir / f"redis-{port}.log"
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no",
             "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break  # exited: most likely the port was taken in between; try another
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return proc, port, log
            except OSError:
                pass
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace") if log.exists() else "(no log)"
    pytest.fail(f"redis-server did not start on loopback after 5 attempts; last log:\n{text}",
                pytrace=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server of our own on 127.0.0.1, for the whole session: its base URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed, and the Redis store tests start their own "
                    "on loopback: install Debian's package (apt-get install -y redis-server; "
                    ".ci/run does this)", pytrace=False)
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.fail("the Redis client is not installed: pip install redis (the test extra "
                    "installs it)", pytrace=False)
    proc, port, _ = _start_redis(exe, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def redis_url(redis_server):
    """A URL to an empty Redis database (flushed before the test)."""
    import redis

    url = f"{redis_server}/0"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture
def sqlite_path(tmp_path) -> str:
    return str(tmp_path / "store.db")


@pytest.fixture(params=["sqlite", "redis"])
def location(request, tmp_path) -> str:
    """The location of an empty store, on each backend in turn."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("redis_url")
