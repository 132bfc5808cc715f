"""Fixtures of the cache tests: every test runs with its own cache directory, its own
configuration directory (where the per-user key is made) and no key in the environment, so
nothing here reads or writes the real user's cache or key."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_user(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    for name in ("MASON_CACHE_DIR", "MASON_CACHE_KEY", "MASON_CACHE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def location(tmp_path) -> str:
    return str(tmp_path / "cache")
