"""mason: Python object serialization in the pickle format, done completely, safely and fast.

``import mason as pickle`` keeps pickle code working; the one difference is that loading is
safe by default: ``loads`` / ``load`` call nothing that the active ``Policy`` does not allow.
"""

from pickle import PickleBuffer

from .byvalue import register_by_value, registered_by_value, unregister_by_value
from .dumperrors import Unpicklable, check
from .errors import (LimitError, MalformedPickleError, MasonError, PickleError, PicklingError,
                     SignatureError, TruncatedPickleError, UnpicklingError, UnsafeCodeError,
                     UnsafeGlobalError)
from .limits import Limits
from .pickler import DEFAULT_PROTOCOL, HIGHEST_PROTOCOL, Pickler, dump, dumps
from .policy import Policy
from .unpickler import Unpickler, load, loads

# Heavier parts load on first use, so that ``import mason`` stays as cheap as pickle's.
_LAZY = {
    "Store": "store", "StoreError": "store", "StoreBusyError": "store",
    "NetworkFilesystemError": "store", "TransactionLostError": "store",
    "scan": "analysis", "dis": "analysis", "show": "analysis", "ScanReport": "analysis",
    "Finding": "analysis", "Verdict": "analysis",
    "Memory": "cache", "cache": "cache", "hash": "hashing",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mason' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

__all__ = [
    "DEFAULT_PROTOCOL", "Finding", "HIGHEST_PROTOCOL", "LimitError", "Limits", "Memory",
    "MalformedPickleError", "MasonError", "NetworkFilesystemError", "PickleBuffer",
    "PickleError", "Pickler", "PicklingError", "Policy", "ScanReport", "Store",
    "StoreBusyError", "StoreError", "TransactionLostError", "TruncatedPickleError",
    "Unpicklable", "Unpickler", "UnpicklingError", "UnsafeCodeError", "UnsafeGlobalError",
    "Verdict", "cache", "check", "dis", "dump", "dumps", "load", "loads", "register_by_value",
    "registered_by_value", "scan", "show", "SignatureError", "unregister_by_value",
]

__version__ = "0.1.0"
