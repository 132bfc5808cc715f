"""Fixtures of the model and array tests (helpers are in models_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def marker(tmp_path) -> Path:
    """The file a payload would create.  It must not exist before the test runs it."""
    path = tmp_path / "marker"
    assert not path.exists()
    return path
