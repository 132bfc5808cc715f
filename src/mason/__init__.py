"""mason: Python object serialization in the pickle format, done completely, safely and fast.

``import mason as pickle`` keeps pickle code working; the one difference is that loading is
safe by default: ``loads`` / ``load`` call nothing that the active ``Policy`` does not allow.
"""

from pickle import PickleBuffer

from .errors import (LimitError, MalformedPickleError, MasonError, PickleError, PicklingError,
                     TruncatedPickleError, UnpicklingError, UnsafeGlobalError)
from .limits import Limits
from .pickler import DEFAULT_PROTOCOL, HIGHEST_PROTOCOL, Pickler, dump, dumps
from .policy import Policy
from .store import NetworkFilesystemError, Store, StoreBusyError, StoreError, TransactionLostError
from .unpickler import Unpickler, load, loads

__all__ = [
    "DEFAULT_PROTOCOL", "HIGHEST_PROTOCOL", "LimitError", "Limits", "MalformedPickleError",
    "MasonError", "NetworkFilesystemError", "PickleBuffer", "PickleError", "Pickler",
    "PicklingError", "Policy", "Store", "StoreBusyError", "StoreError", "TransactionLostError",
    "TruncatedPickleError", "Unpickler", "UnpicklingError", "UnsafeGlobalError", "dump",
    "dumps", "load", "loads",
]

__version__ = "0.1.0"
