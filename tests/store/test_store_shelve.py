"""Store.from_shelve: a shelf's values imported under the policy, never loaded by pickle."""

from __future__ import annotations

import datetime
import os
import shelve

import pytest

import mason
from mason.store import Store, StoreError
from store_helpers import Point


def _make_shelf(path, items):
    with shelve.open(str(path), "n") as shelf:
        shelf.update(items)


def test_import_plain_shelf(tmp_path):
    items = {"a": 1, "b": [1, 2, {"c": 3}], "ünï": datetime.date(2020, 2, 2), "": None}
    _make_shelf(tmp_path / "data", items)
    with Store.from_shelve(tmp_path / "data") as store:
        assert dict(store) == items
        assert os.path.exists(str(tmp_path / "data") + ".sqlite")
    with Store(str(tmp_path / "data") + ".sqlite") as store:  # where the default put it
        assert dict(store) == items


def test_import_into_a_given_location_with_options(tmp_path, redis_url):
    _make_shelf(tmp_path / "data", {"p": Point(1, 2), "n": 5})
    with Store.from_shelve(tmp_path / "data", tmp_path / "out.db",
                           allow=["store_helpers.Point"]) as store:
        assert store["p"] == Point(1, 2) and store["n"] == 5
    with Store.from_shelve(tmp_path / "data", redis_url, name="imported",
                           allow=["store_helpers.Point"]) as store:
        assert dict(store) == {"p": Point(1, 2), "n": 5}


def test_hostile_shelf_imports_nothing_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return eval, (f"__import__('pathlib').Path({str(marker)!r}).touch()",)

    _make_shelf(tmp_path / "data", {"good": 1, "evil": Evil(), "point": Point(0, 0)})
    assert not marker.exists()  # writing the shelf ran nothing
    target = tmp_path / "out.db"
    with pytest.raises(mason.UnsafeGlobalError) as info:
        Store.from_shelve(tmp_path / "data", target)
    message = str(info.value)
    assert "'evil'" in message and "builtins.eval" in message
    assert "'point'" in message and "store_helpers.Point" in message
    assert "nothing was imported" in message and "allow=" in message
    assert not marker.exists(), "importing the shelf ran its payload"
    with Store(target) as store:
        assert len(store) == 0
    # The control: the standard library's shelve runs it on a plain read.
    with shelve.open(str(tmp_path / "data"), "r") as shelf:
        shelf["evil"]
    assert marker.exists()


def test_not_a_shelf(tmp_path):
    with pytest.raises(StoreError, match="not a shelve file"):
        Store.from_shelve(tmp_path / "missing")
