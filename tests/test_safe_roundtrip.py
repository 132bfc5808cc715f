"""Every type of the default policy round-trips through safe loading, in protocols 0-5.

Each sample is pickled by the standard library's ``pickle`` and by ``mason`` and loaded back
with mason's default policy through all three entry points (``loads``, ``load`` and
``Unpickler``): it must come back equal, of the same type, and with its sharing and
recursion intact.  ``SAMPLES`` is keyed by the dotted names of ``mason.policy.SAFE_DATA_NAMES``
and a test checks that it covers every one of them, so a name added to the policy without a
sample here fails.
"""

from __future__ import annotations

import array
import collections
import datetime
import decimal
import fractions
import io
import ipaddress
import math
import pathlib
import pickle
import sys
import time
import types
import uuid
import zoneinfo

import pytest

import mason
from mason.policy import SAFE_DATA_NAMES

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


def _exceptions() -> dict[str, BaseException]:
    """One instance of every builtin exception class, keyed by its name in builtins (the
    aliases EnvironmentError and IOError included), built with arguments it accepts."""
    special = {
        "UnicodeDecodeError": ("utf-8", b"\xff", 0, 1, "invalid start byte"),
        "UnicodeEncodeError": ("ascii", "\xff", 0, 1, "ordinal not in range"),
        "UnicodeTranslateError": ("\xff", 0, 1, "no mapping"),
        "BaseExceptionGroup": ("group", [KeyboardInterrupt(), KeyError("k")]),
        "ExceptionGroup": ("group", [ValueError(1), KeyError("k")]),
        "StopIteration": ("done",),
    }
    found = {}
    for name, value in vars(__import__("builtins")).items():
        if isinstance(value, type) and issubclass(value, BaseException):
            if issubclass(value, SyntaxError):
                args = ("bad", ("f.py", 1, 2, "x y", 1, 3))
            else:
                args = special.get(name, ("message", 42))
            found[name] = value(*args)
    # errno, strerror and filename of an OSError, and state beyond args (in __dict__)
    found["FileNotFoundError (errno, filename)"] = OSError(2, "No such file", "/nonexistent")
    with_state = ValueError("with state")
    with_state.note = "kept"
    found["ValueError (with __dict__)"] = with_state
    return found


# dotted name of the policy -> samples whose pickles name it (directly or as the class).
SAMPLES: dict[str, list] = {
    "builtins.bool": [True, False],
    "builtins.int": [0, 1, -1, 255, 256, 65535, 2**31 - 1, -2**31, 2**63, -2**64,
                     12345678910111213141516178920 << 2048],
    "builtins.float": [0.0, -0.0, 1.5, -2.25e300, math.inf, -math.inf, 5e-324],
    "builtins.complex": [0j, 1 + 2j, complex(-0.0, math.inf)],
    "builtins.str": ["", "ascii", "\u20ac\x00\n\\", "\U0001f600" * 3, "a" * 70000,
                     "\ud800 lone surrogate"],
    "builtins.tuple": [(), (1,), (1, 2), (1, 2, 3), tuple(range(300))],
    "builtins.list": [[], [1, [2, [3]]], list(range(2000))],
    "builtins.dict": [{}, {"a": 1, 2: [3], (4, 5): {6: 7}}, {i: str(i) for i in range(2000)}],
    "builtins.set": [set(), {1, "a", (2, 3)}, set(range(2000))],
    "builtins.frozenset": [frozenset(), frozenset({1, frozenset({2})})],
    "builtins.slice": [slice(None), slice(1, 10, 2), slice("a", None, [1])],
    "builtins.object": [object()],
    "builtins.Ellipsis": [Ellipsis],
    "builtins.NotImplemented": [NotImplemented],
    "datetime.date": [datetime.date(2024, 2, 29), datetime.date.min, datetime.date.max],
    "datetime.time": [datetime.time(12, 30, 1, 5), datetime.time(1, fold=1),
                      datetime.time(3, tzinfo=datetime.timezone.utc)],
    "datetime.datetime": [datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
                          datetime.datetime(2021, 11, 7, 1, 30, fold=1),
                          datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone(
                              datetime.timedelta(hours=-5), "EST"))],
    "datetime.timedelta": [datetime.timedelta(0), datetime.timedelta(days=-3, microseconds=7),
                           datetime.timedelta.max],
    "datetime.timezone": [datetime.timezone.utc,
                          datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
                          datetime.timezone(datetime.timedelta(hours=-1), "CET-ish")],
    "zoneinfo.ZoneInfo": [zoneinfo.ZoneInfo("Europe/Paris"),
                                    datetime.datetime(2024, 6, 1, 12,
                                                      tzinfo=zoneinfo.ZoneInfo("Asia/Tokyo"))],
    "decimal.Decimal": [decimal.Decimal("3.14159"), decimal.Decimal("-0"),
                        decimal.Decimal("Infinity"), decimal.Decimal("1E+4000"),
                        decimal.Decimal("-1E-999999"), decimal.Decimal("NaN"),
                        decimal.Decimal(2) ** 200],
    "fractions.Fraction": [fractions.Fraction(1, 3), fractions.Fraction(-7, 2**70),
                           fractions.Fraction(0)],
    "uuid.UUID": [uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.UUID(int=0)],
    "uuid.SafeUUID": [uuid.UUID(int=5, is_safe=uuid.SafeUUID.safe),
                      uuid.UUID(int=6, is_safe=uuid.SafeUUID.unsafe), uuid.SafeUUID.unknown],
    "collections.OrderedDict": [collections.OrderedDict([("b", 1), ("a", 2)]),
                                collections.OrderedDict()],
    "collections.deque": [collections.deque([1, 2, 3]), collections.deque([1], maxlen=5),
                          collections.deque()],
    "collections.defaultdict": [collections.defaultdict(list, {"a": [1]}),
                                collections.defaultdict(None, {1: 2}),
                                collections.defaultdict(int)],
    "collections.Counter": [collections.Counter("abracadabra"), collections.Counter()],
    "collections.ChainMap": [collections.ChainMap({"a": 1}, {"b": 2})],
    "ipaddress.IPv4Address": [ipaddress.IPv4Address("192.0.2.1")],
    "ipaddress.IPv6Address": [ipaddress.IPv6Address("2001:db8::1"),
                              ipaddress.IPv6Address("fe80::1%eth0")],
    "ipaddress.IPv4Network": [ipaddress.IPv4Network("192.0.2.0/24")],
    "ipaddress.IPv6Network": [ipaddress.IPv6Network("2001:db8::/32")],
    "ipaddress.IPv4Interface": [ipaddress.IPv4Interface("192.0.2.5/24")],
    "ipaddress.IPv6Interface": [ipaddress.IPv6Interface("2001:db8::5/64")],
    "pathlib.PurePath": [pathlib.PurePath("a/b")],
    "pathlib.PurePosixPath": [pathlib.PurePosixPath("/etc/passwd"), pathlib.PurePosixPath()],
    "pathlib.PureWindowsPath": [pathlib.PureWindowsPath(r"C:\Users\x")],
    "pathlib.PosixPath": [pathlib.PosixPath("/tmp/x"), pathlib.Path("relative")],
    "types.SimpleNamespace": [types.SimpleNamespace(a=1, b=[2]), types.SimpleNamespace()],
    "time.struct_time": [time.gmtime(0), time.localtime(1_700_000_000)],
    "array.array": [array.array("i", [1, -2, 3]), array.array("d", [1.5]),
                    array.array("u", "text"), array.array("B"), array.array("q", [2**62])],
    "array._array_reconstructor": [array.array("l", range(10)), array.array("f", [0.5])],
    "builtins.range": [range(5), range(1, 7), range(10, -10, -3), range(0)],
    "builtins.bytes": [b"", b"\x00\xff" * 10, bytes(range(256)), b"x" * 70000],
    "builtins.bytearray": [bytearray(), bytearray(b"abc\x00"), bytearray(70000)],
    "builtins.type": [type(None), type(...), type(NotImplemented)],
    "_codecs.encode": [b"\x80\xff bytes in protocols 0-2"],
    "copyreg._reconstructor": [collections.OrderedDict(a=1)],
    "copyreg.__newobj__": [collections.Counter(a=1)],
}

# Names that the samples of another name exercise too.
SAMPLED_WITH = {
    "zoneinfo.ZoneInfo._unpickle": "zoneinfo.ZoneInfo",  # getattr(ZoneInfo, "_unpickle")
}

# Names of the policy that no sample can exercise on this platform, with the reason.
NOT_SAMPLED = {
    # WindowsPath cannot be instantiated on POSIX (and PosixPath not on Windows)
    "pathlib.WindowsPath" if sys.platform != "win32" else "pathlib.PosixPath":
        "a concrete path of the other OS cannot be instantiated here",
    # Names the default policy admits only through a checked stand-in, and that no object
    # the standard library pickles writes (the stand-ins are tested in tests/security/).
    "copyreg.__newobj_ex__": "written only for classes whose __getnewargs_ex__ has keywords",
    "builtins.getattr": "written for enum members and methods: see test_getattr_stand_in",
}

EXCEPTIONS = _exceptions()


def _all_samples():
    for name, samples in SAMPLES.items():
        for index, sample in enumerate(samples):
            yield pytest.param(sample, id=f"{name}[{index}]")
    for name, exc in EXCEPTIONS.items():
        yield pytest.param(exc, id=f"builtins.{name}")


def _same(a, b) -> bool:
    """Equality that also holds for the types without a value ==."""
    if type(a) is not type(b):
        return False
    if isinstance(a, BaseExceptionGroup):
        return (a.message == b.message and len(a.exceptions) == len(b.exceptions)
                and all(_same(x, y) for x, y in zip(a.exceptions, b.exceptions)))
    if isinstance(a, BaseException):
        return (a.args == b.args and vars(a) == vars(b)
                and all(getattr(a, attr, None) == getattr(b, attr, None)
                        for attr in ("errno", "strerror", "filename", "object", "start",
                                     "end", "reason", "encoding", "msg", "lineno",
                                     "offset", "text", "value", "code")))
    if type(a) is object:
        return True
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, datetime.datetime | datetime.time):
        return a == b and a.fold == b.fold and a.tzinfo == b.tzinfo
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, collections.deque):
        return a == b and a.maxlen == b.maxlen
    if isinstance(a, collections.defaultdict):
        return a == b and a.default_factory is b.default_factory
    if isinstance(a, uuid.UUID):
        return a == b and a.is_safe is b.is_safe
    if isinstance(a, collections.OrderedDict):
        return list(a.items()) == list(b.items())
    return a == b


def _dumpers():
    yield "pickle", pickle.dumps
    yield "mason", mason.dumps


def _load_all_ways(data: bytes):
    """Load ``data`` with the default policy through loads, load and Unpickler."""
    results = [mason.loads(data)]
    results.append(mason.load(io.BytesIO(data)))
    results.append(mason.Unpickler(io.BytesIO(data)).load())
    return results


# Where pickle itself does not give back the very object it was given.
def _pickle_changes(sample, proto) -> bool:
    # protocols 0-2 write OSError's subclasses under their Python 2 name, OSError
    if proto <= 2 and isinstance(sample, OSError) and type(sample) not in (OSError,
                                                                          BlockingIOError):
        return True
    if proto <= 2 and isinstance(sample, ImportError) and type(sample) is not ImportError:
        return True
    # fold is written from protocol 4 on
    if proto < 4 and getattr(sample, "fold", 0):
        return True
    return False


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("sample", list(_all_samples()))
def test_roundtrip(sample, proto):
    for who, dumps in _dumpers():
        data = dumps(sample, proto)
        # mason gives back what pickle gives back ...
        expected = pickle.loads(data)
        for loaded in _load_all_ways(data):
            assert _same(expected, loaded), (who, proto, expected, loaded)
        # ... which is the sample itself, but where pickle is known to change it.
        assert _same(sample, expected) or _pickle_changes(sample, proto), (who, proto, sample)


def test_samples_cover_the_default_policy():
    covered = set(SAMPLES) | set(NOT_SAMPLED) | set(SAMPLED_WITH)
    covered |= {f"builtins.{name}" for name in EXCEPTIONS}
    missing = set(SAFE_DATA_NAMES) - covered
    assert not missing, f"names of the default policy without a round-trip sample: {missing}"


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_shared_and_recursive_structures(proto):
    shared = [1, 2]
    recursive_list = []
    recursive_list.append(recursive_list)
    recursive_dict = {}
    recursive_dict["self"] = recursive_dict
    recursive_tuple_via_list = ([],)
    recursive_tuple_via_list[0].append(recursive_tuple_via_list)
    obj = {"a": shared, "b": shared, "l": recursive_list, "d": recursive_dict,
           "t": recursive_tuple_via_list, "fs": frozenset({(1, 2)}),
           "dq": collections.deque([shared])}
    for who, dumps in _dumpers():
        for got in _load_all_ways(dumps(obj, proto)):
            assert got["a"] is got["b"] and got["a"] == [1, 2]
            assert got["l"][0] is got["l"]
            assert got["d"]["self"] is got["d"]
            assert got["t"][0][0] is got["t"]
            assert got["dq"][0] is got["a"]
            assert got["fs"] == frozenset({(1, 2)})


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_huge_int_and_long_strings(proto):
    # protocols 0 and 1 write ints in decimal, which CPython caps at 4300 digits
    big = 7 ** 20000 if proto >= 2 else 7 ** 5000
    data = mason.dumps([big, -big, "x" * 100_000, b"y" * 100_000], proto)
    assert mason.loads(data) == [big, -big, "x" * 100_000, b"y" * 100_000]


@pytest.mark.parametrize("proto", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_getattr_stand_in(proto):
    """ZoneInfo pickles as getattr(ZoneInfo, '_unpickle')(key, 1) from protocol 2 on: the
    default policy's getattr looks up exactly the allowed name zoneinfo.ZoneInfo._unpickle."""
    zone = zoneinfo.ZoneInfo("America/New_York")
    data = pickle.dumps(zone, proto)
    assert b"getattr" in data
    assert mason.loads(data) is zone  # ZoneInfo caches: the same key gives the same object


def test_enum_members_through_getattr_when_the_enum_is_allowed():
    """uuid.SafeUUID is an Enum of the default policy; getattr(SafeUUID, 'safe') -- the
    form in which an enum member can be written by hand -- resolves to the member."""
    data = b"\x80\x04cbuiltins\ngetattr\ncuuid\nSafeUUID\nX\x04\x00\x00\x00safe\x86R."
    assert mason.loads(data) is uuid.SafeUUID.safe


def test_decimal_beyond_the_int_digit_limit_needs_allow():
    """A Decimal with more integer digits than the interpreter parses into an int is refused
    by default (int() of it runs for minutes), and loads when decimal.Decimal is allowed."""
    huge = decimal.Decimal("1E+999999")
    data = pickle.dumps(huge)
    with pytest.raises(mason.LimitError, match="allow 'decimal.Decimal'"):
        mason.loads(data)
    assert mason.loads(data, allow=["decimal.Decimal"]) == huge
