"""Checks of what a pandas or scikit-learn load built, before ``loads`` returns it.

Some fitted structures are read later by compiled code that does not check its indexes:

* a pandas ``BlockManager`` maps each column to its block through the blocks' placements;
  pandas rebuilds that map (``_rebuild_blknos_and_blklocs``, Cython without bounds checks)
  the first time a column is looked up, and writes at each placement index: a placement
  beyond the number of columns writes outside the array;
* a ``Categorical`` looks its categories up by its codes (``take_nd``, unchecked); masked
  arrays (``Int64``, ``boolean``, ...) read their mask beside their data;
* a scikit-learn ``Tree`` walks its nodes by the child indexes they hold, and a
  ``KDTree`` / ``BallTree`` reads samples by the indexes of its index array.

Honest pickles never hold such values, and a stream can hold them using only names the
presets admit, so after the load (and before anything uses the object) mason walks what was
built and checks every index against the size it indexes, with numpy's bounds-checked
operations.  The walk follows containers, object arrays and instance dictionaries; it does
not run any code of the objects it visits.
"""

from __future__ import annotations

import sys
from collections import deque

from .errors import UnsafeGlobalError

__all__ = ["pandas_precheck", "sklearn_precheck", "check_loaded"]

_SKIP = (str, bytes, bytearray, int, float, complex, bool, type(None), memoryview, range)
_MAX_VISITS = 10_000_000


def _refuse(message: str):
    raise UnsafeGlobalError(message)


def _names_any(data, find_class, wanted) -> bool:
    """Whether the stream names a global that resolves to one of ``wanted`` (True when the
    names cannot be read off the stream without running it)."""
    from ._numpy_checks import stream_globals
    names = stream_globals(data)
    if names is None:
        return True
    targets = wanted()
    for module, name in names:
        try:
            if find_class(module, name) in targets:
                return True
        except Exception:
            continue
    return False


def _pandas_targets():
    import pandas as pd
    from pandas.core.internals import managers
    targets = {managers.BlockManager, managers.SingleBlockManager, pd.Categorical,
               pd.DataFrame, pd.Series}
    for name in ("_unpickle_block",):
        found = getattr(sys.modules.get("pandas._libs.internals"), name, None)
        if found is not None:
            targets.add(found)
    return targets


def _sklearn_targets():
    targets = set()
    for module, name in (("sklearn.tree._tree", "Tree"), ("sklearn.neighbors._kd_tree",
                                                           "KDTree"),
                         ("sklearn.neighbors._ball_tree", "BallTree")):
        mod = sys.modules.get(module)
        if mod is None:
            try:
                mod = __import__(module, fromlist=[name])
            except ImportError:
                continue
        targets.add(getattr(mod, name))
    return targets


def pandas_precheck(data, find_class):
    """A precheck of the pandas preset: if the stream names pandas' managers or arrays,
    check what it built after the load."""
    if _names_any(data, find_class, _pandas_targets):
        return check_loaded
    return None


def sklearn_precheck(data, find_class):
    """A precheck of the scikit-learn preset: trees and neighbors trees are checked after
    the load."""
    if _names_any(data, find_class, _sklearn_targets):
        return check_loaded
    return None


def check_loaded(root) -> None:
    """Walk ``root`` and check every pandas manager, categorical, masked array and
    scikit-learn tree in it."""
    np = sys.modules.get("numpy")
    pd = sys.modules.get("pandas")
    seen: set[int] = set()
    stack = deque([root])
    visits = 0
    while stack:
        obj = stack.pop()
        if isinstance(obj, _SKIP) or id(obj) in seen:
            continue
        seen.add(id(obj))
        visits += 1
        if visits > _MAX_VISITS:
            _refuse("the loaded object is too large to check")
        if np is not None and isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                stack.extend(obj.ravel(order="K").tolist())
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
            continue
        if isinstance(obj, (list, tuple, set, frozenset, deque)):
            stack.extend(obj)
            continue
        if pd is not None:
            handled = _pandas(obj, pd, np, stack)
            if handled:
                continue
        _sklearn(obj, np)
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            stack.extend(state.values())


def _pandas(obj, pd, np, stack) -> bool:
    from pandas.core.internals.managers import BaseBlockManager

    if isinstance(obj, (pd.DataFrame, pd.Series)):
        stack.append(obj._mgr)
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            stack.extend(v for k, v in state.items() if k != "_mgr")
        return True
    if isinstance(obj, BaseBlockManager):
        _check_manager(obj, np)
        stack.extend(obj.axes)
        stack.extend(block.values for block in obj.blocks)
        return True
    if isinstance(obj, pd.Categorical):
        codes = np.asarray(obj.codes)
        size = len(obj.categories)
        if codes.size and (codes.min() < -1 or codes.max() >= size):
            _refuse(f"a pandas Categorical has codes outside its {size} categories: "
                    f"forged")
        stack.append(obj.categories)
        return True
    masked = getattr(pd.arrays, "BooleanArray", None)
    if masked is not None:
        from pandas.core.arrays.masked import BaseMaskedArray
        if isinstance(obj, BaseMaskedArray):
            data, mask = obj._data, obj._mask
            if not (isinstance(data, np.ndarray) and isinstance(mask, np.ndarray)
                    and data.shape == mask.shape and mask.dtype == np.bool_):
                _refuse("a pandas masked array whose mask does not match its data: forged")
            return True
    return False


def _check_manager(mgr, np) -> None:
    shape = mgr.shape
    items = shape[0] if shape else 0
    total = 0
    for block in mgr.blocks:
        locs = np.asarray(block.mgr_locs.as_array)
        total += len(locs)
        if locs.size and (locs.min() < 0 or locs.max() >= items):
            _refuse(f"a pandas block is placed at columns {int(locs.min())}..."
                    f"{int(locs.max())} of a frame of {items}: forged")
        values = block.values
        if getattr(values, "ndim", 1) == 2 and values.shape[0] != len(locs):
            _refuse("a pandas block holds a different number of columns than it is placed "
                    "at: forged")
    if mgr.ndim == 2 and total != items:
        _refuse(f"pandas blocks cover {total} columns of a frame of {items}: forged")


def _sklearn(obj, np) -> None:
    name = type(obj).__name__
    module = type(obj).__module__ or ""
    if not module.startswith("sklearn."):
        return
    if name == "Tree" and module == "sklearn.tree._tree":
        count = obj.node_count
        for side in (obj.children_left, obj.children_right):
            side = np.asarray(side)
            if side.size and (side.min() < -1 or side.max() >= count):
                _refuse(f"a scikit-learn Tree has children outside its {count} nodes: "
                        f"forged")
        feature = np.asarray(obj.feature)
        if feature.size and (feature.min() < -2 or feature.max() >= obj.n_features):
            _refuse("a scikit-learn Tree splits on features it does not have: forged")
        if np.asarray(obj.value).shape[0] != count:
            _refuse("a scikit-learn Tree has values for a different number of nodes: forged")
    elif name in ("KDTree", "BallTree"):
        data, index, nodes, _ = obj.get_arrays()
        samples = len(data)
        index = np.asarray(index)
        if index.size and (index.min() < 0 or index.max() >= samples):
            _refuse(f"a scikit-learn {name} indexes samples outside its {samples}: forged")
        nodes = np.asarray(nodes)
        if nodes.size:
            start, end = nodes["idx_start"], nodes["idx_end"]
            if start.min() < 0 or end.max() > len(index) or (start > end).any():
                _refuse(f"a scikit-learn {name} has nodes outside its index array: forged")
