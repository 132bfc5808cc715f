"""Fixtures of the by-value tests (helpers: ``byvalue_helpers``)."""

from __future__ import annotations

import pytest


@pytest.fixture
def workdir(tmp_path):
    """Separate directories for the dumping and the loading interpreter."""
    dump_dir = tmp_path / "dumper"
    load_dir = tmp_path / "loader"
    dump_dir.mkdir()
    load_dir.mkdir()
    return dump_dir, load_dir
