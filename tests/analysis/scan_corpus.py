"""The scanner's test corpus: hostile and benign pickles, built here, in several protocols and
containers.

Hostile samples are assembled opcode by opcode (the opcode bytes come from mason's table),
so that they do not depend on what a pickler chooses to write; each says which verdict the
scanner must give under which policy, and which global or category the findings must name.
Benign samples are written by pickle itself (and by numpy, joblib, or by hand in torch's exact
layout) and must scan ``safe`` under the policy given with them.

The classes here are importable as ``scan_corpus.*``, so that loading the benign samples
(the scan-implies-load test) finds them.
"""

from __future__ import annotations

import bz2
import collections
import copyreg
import dataclasses
import datetime
import decimal
import enum
import fractions
import gzip
import io
import ipaddress
import lzma
import pathlib
import pickle
import struct
import tarfile
import types
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field

from mason.format.opcodes import BY_NAME

# --------------------------------------------------------------------------------------------
# Opcodes, assembled from the table


def op(name: str, payload: bytes = b"") -> bytes:
    return BY_NAME[name].char + payload


MARK, STOP, TUPLE, TUPLE1, TUPLE2, TUPLE3 = (op(n) for n in
                                             ("MARK", "STOP", "TUPLE", "TUPLE1", "TUPLE2",
                                              "TUPLE3"))
REDUCE, BUILD, EMPTY_TUPLE, EMPTY_DICT, EMPTY_LIST = (op(n) for n in
                                                      ("REDUCE", "BUILD", "EMPTY_TUPLE",
                                                       "EMPTY_DICT", "EMPTY_LIST"))
NONE, NEWTRUE, NEWFALSE, APPEND, APPENDS, SETITEM, SETITEMS = (
    op(n) for n in ("NONE", "NEWTRUE", "NEWFALSE", "APPEND", "APPENDS", "SETITEM", "SETITEMS"))
NEWOBJ, NEWOBJ_EX, OBJ, POP, DUP, MEMOIZE, STACK_GLOBAL = (
    op(n) for n in ("NEWOBJ", "NEWOBJ_EX", "OBJ", "POP", "DUP", "MEMOIZE", "STACK_GLOBAL"))
BINPERSID, NEXT_BUFFER, LIST, DICT = (op(n) for n in ("BINPERSID", "NEXT_BUFFER", "LIST",
                                                      "DICT"))


def proto(n: int) -> bytes:
    return op("PROTO", bytes([n]))


def global_(module: str, name: str) -> bytes:
    return op("GLOBAL", f"{module}\n{name}\n".encode())


def inst(module: str, name: str) -> bytes:
    return op("INST", f"{module}\n{name}\n".encode())


def su(text: str) -> bytes:
    """SHORT_BINUNICODE or BINUNICODE."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) < 256:
        return op("SHORT_BINUNICODE", bytes([len(raw)]) + raw)
    return op("BINUNICODE", struct.pack("<I", len(raw)) + raw)


def sbs(text: str) -> bytes:
    """SHORT_BINSTRING: a Python 2 str, which unpickles as str."""
    raw = text.encode("latin-1")
    return op("SHORT_BINSTRING", bytes([len(raw)]) + raw)


def sbb(raw: bytes) -> bytes:
    return op("SHORT_BINBYTES", bytes([len(raw)]) + raw)


def unicode0(text: str) -> bytes:
    return op("UNICODE", text.encode("raw-unicode-escape") + b"\n")


def string0(text: str) -> bytes:
    return op("STRING", repr(text).encode() + b"\n")


def int0(value: int) -> bytes:
    return op("INT", str(value).encode() + b"\n")


def binint(value: int) -> bytes:
    if 0 <= value < 256:
        return op("BININT1", bytes([value]))
    if 0 <= value < 65536:
        return op("BININT2", struct.pack("<H", value))
    if -2**31 <= value < 2**31:
        return op("BININT", struct.pack("<i", value))
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return op("LONG1", bytes([len(raw)]) + raw)


def binput(index: int) -> bytes:
    return op("BINPUT", bytes([index]))


def binget(index: int) -> bytes:
    return op("BINGET", bytes([index]))


def long_binput(index: int) -> bytes:
    return op("LONG_BINPUT", struct.pack("<I", index))


def ext1(code: int) -> bytes:
    return op("EXT1", bytes([code]))


def frame(length: int) -> bytes:
    return op("FRAME", struct.pack("<Q", length))


def sg(module: str, name: str) -> bytes:
    """STACK_GLOBAL with both names as string literals just before it."""
    return su(module) + su(name) + STACK_GLOBAL


def call0(module: str, name: str, *args: bytes) -> bytes:
    """Protocol 0: GLOBAL, MARK, the arguments, TUPLE, REDUCE."""
    return global_(module, name) + MARK + b"".join(args) + TUPLE + REDUCE


def call2(module: str, name: str, arg: bytes) -> bytes:
    """Protocol 2: GLOBAL, one argument, TUPLE1, REDUCE."""
    return global_(module, name) + arg + TUPLE1 + REDUCE


def call4(module: str, name: str, *args: bytes) -> bytes:
    """Protocol 4: STACK_GLOBAL, the arguments in a MARK...TUPLE, REDUCE."""
    return sg(module, name) + MARK + b"".join(args) + TUPLE + REDUCE


def stream(body: bytes, protocol: int | None = None) -> bytes:
    return (proto(protocol) if protocol is not None and protocol >= 2 else b"") + body + STOP


# --------------------------------------------------------------------------------------------
# Classes for the benign samples (importable as scan_corpus.*)


class Point:
    def __init__(self, x=0, y=0):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a=1, b=2):
        self.a, self.b = a, b


@dataclass
class Record:
    name: str
    tags: list = field(default_factory=list)
    when: datetime.date = datetime.date(2024, 1, 1)


class Bag(list):
    pass


class Table(dict):
    pass


class Color(enum.Enum):
    RED = 1
    GREEN = 2


Pair = collections.namedtuple("Pair", "left right")


class Reducing:
    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return (Reducing, (self.value,))


USER_NAMES = ("scan_corpus.Point", "scan_corpus.Slotted", "scan_corpus.Record",
              "scan_corpus.Bag", "scan_corpus.Table", "scan_corpus.Color", "scan_corpus.Pair",
              "scan_corpus.Reducing")


# --------------------------------------------------------------------------------------------
# Samples


@dataclass
class Sample:
    """One corpus entry: the bytes, the policy (the default one plus ``allow``), and what the
    scan must say: the verdict, and names / categories that must appear among findings."""

    name: str
    data: bytes
    verdict: str
    allow: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    hostile: bool = True
    extension: tuple[str, str, int] | None = None   # (module, name, code) to register
    preset: tuple[str, ...] = ()

    def policy(self):
        from mason.analysis.scan import resolve_policy
        return resolve_policy(None, self.allow or None, self.preset or None)

    def __repr__(self) -> str:
        return f"Sample({self.name!r})"


DANGEROUS_CALLABLES = [
    ("os", "system"), ("posix", "system"), ("nt", "system"), ("subprocess", "Popen"),
    ("subprocess", "check_output"), ("builtins", "eval"), ("builtins", "exec"),
    ("builtins", "__import__"), ("builtins", "open"), ("builtins", "compile"),
    ("builtins", "breakpoint"), ("pty", "spawn"), ("runpy", "run_path"),
    ("shutil", "rmtree"), ("socket", "create_connection"), ("urllib.request", "urlopen"),
    ("webbrowser", "open"), ("ctypes", "CDLL"), ("pickle", "loads"), ("_pickle", "loads"),
    ("marshal", "loads"), ("importlib", "import_module"), ("pkgutil", "resolve_name"),
    ("pydoc", "locate"), ("code", "InteractiveInterpreter"), ("timeit", "timeit"),
    ("cProfile", "run"), ("pdb", "run"), ("bdb", "Bdb"),
    ("numpy.testing._private.utils", "runstring"), ("torch.serialization", "load"),
    ("uuid", "_get_command_stdout"), ("_osx_support", "_read_output"),
    ("asyncio.subprocess", "create_subprocess_shell"), ("multiprocessing", "Process"),
    ("idlelib.pyshell", "ModifiedInterpreter"), ("operator", "attrgetter"),
    ("_operator", "methodcaller"), ("functools", "partial"), ("types", "FunctionType"),
    ("types", "CodeType"), ("io", "FileIO"), ("_io", "open"), ("logging", "FileHandler"),
    ("imaplib", "IMAP4_stream"), ("tempfile", "mkstemp"), ("sqlite3", "connect"),
    ("mason.byvalue", "_make_function"), ("numpy", "load"), ("joblib", "load"),
    ("pandas", "read_pickle"), ("sys", "exit"), ("signal", "raise_signal"),
    ("zipimport", "zipimporter"), ("site", "main"), ("ssl", "get_server_certificate"),
    ("http.client", "HTTPSConnection"), ("smtplib", "SMTP"), ("ftplib", "FTP"),
    ("glob", "glob"), ("linecache", "getline"), ("threading", "Thread"),
]

# Names on no public denylist: a denylist scanner lets them through; an allowlist does not.
UNLISTED = [("mymodule", "do_evil"), ("torch.utils.cpp_extension", "load_inline"),
            ("distutils_shim", "spawn"), ("setuptools_scm_git", "run"),
            ("numpy.lib.utils", "safe_eval_x"), ("sklearn.utils._testing", "run_module")]


def _cmd(text="echo pwned"):
    return text


def hostile_samples() -> list[Sample]:
    out: list[Sample] = []
    add = out.append
    for module, name in DANGEROUS_CALLABLES:
        dotted = f"{module}.{name}"
        add(Sample(f"p0 {dotted}", stream(call0(module, name, string0(_cmd()))), "dangerous",
                   names=(dotted,)))
        add(Sample(f"p2 {dotted}", stream(call2(module, name, su(_cmd())), 2), "dangerous",
                   names=(dotted,)))
        add(Sample(f"p4 {dotted}", stream(call4(module, name, su(_cmd())), 4), "dangerous",
                   names=(dotted,)))
    for module, name in UNLISTED:
        dotted = f"{module}.{name}"
        add(Sample(f"unlisted p4 {dotted}", stream(call4(module, name, su("x")), 4),
                   "needs-allow", names=(dotted,), categories=("not allowed",)))
        add(Sample(f"unlisted p0 {dotted}", stream(call0(module, name, string0("x"))),
                   "needs-allow", names=(dotted,)))

    # Python 2 spellings, mapped as the unpickler maps them.
    add(Sample("p0 __builtin__.eval", stream(call0("__builtin__", "eval", string0("1+1"))),
               "dangerous", names=("builtins.eval",)))
    add(Sample("p2 getattr(__import__('os'), 'system')",
               stream(global_("__builtin__", "getattr") + MARK
                      + call2("__builtin__", "__import__", su("os")) + su("system") + TUPLE
                      + REDUCE + su(_cmd()) + TUPLE1 + REDUCE, 2),
               "dangerous", names=("builtins.__import__",)))

    # Every opcode that calls.
    system = ("os", "system")
    add(Sample("INST os.system", stream(MARK + string0(_cmd()) + inst(*system)), "dangerous",
               names=("os.system",)))
    add(Sample("OBJ os.system", stream(MARK + global_(*system) + string0(_cmd()) + OBJ),
               "dangerous", names=("os.system",)))
    add(Sample("NEWOBJ subprocess.Popen",
               stream(global_("subprocess", "Popen") + su("ls") + TUPLE1 + NEWOBJ, 2),
               "dangerous", names=("subprocess.Popen",)))
    add(Sample("NEWOBJ_EX subprocess.Popen",
               stream(sg("subprocess", "Popen") + su("ls") + TUPLE1 + EMPTY_DICT + NEWOBJ_EX, 4),
               "dangerous", names=("subprocess.Popen",)))
    add(Sample("BUILD __setstate__ of os.system result",
               stream(call4("os", "system", su(_cmd())) + EMPTY_DICT + BUILD, 4), "dangerous",
               names=("os.system",)))
    add(Sample("EXT1 registered to os.system",
               stream(ext1(0x6E) + su(_cmd()) + TUPLE1 + REDUCE, 2), "dangerous",
               names=("os.system",), extension=("os", "system", 0x6E)))
    add(Sample("EXT1 unregistered code", stream(ext1(0x6F) + su(_cmd()) + TUPLE1 + REDUCE, 2),
               "dangerous", categories=("unknown import",)))

    # Where STACK_GLOBAL's names come from.
    add(Sample("STACK_GLOBAL names from the memo",
               stream(su("os") + MEMOIZE + POP + su("system") + MEMOIZE + POP + binget(0)
                      + binget(1) + STACK_GLOBAL + su(_cmd()) + TUPLE1 + REDUCE, 4),
               "dangerous", names=("os.system",)))
    add(Sample("STACK_GLOBAL names as SHORT_BINSTRING",
               stream(sbs("os") + sbs("system") + STACK_GLOBAL + su(_cmd()) + TUPLE1 + REDUCE,
                      4), "dangerous", names=("os.system",)))
    add(Sample("STACK_GLOBAL names as protocol 0 UNICODE",
               stream(unicode0("posix") + unicode0("system") + STACK_GLOBAL + unicode0(_cmd())
                      + TUPLE1 + REDUCE, 4), "dangerous", names=("posix.system",)))
    add(Sample("STACK_GLOBAL names through DUP",
               stream(su("builtins") + DUP + POP + su("eval") + STACK_GLOBAL + su("1")
                      + TUPLE1 + REDUCE, 4), "dangerous", names=("builtins.eval",)))
    add(Sample("STACK_GLOBAL with a name computed at load time",
               stream(call4("builtins", "str", sbb(b"os"), su("ascii")) + su("system")
                      + STACK_GLOBAL + su(_cmd()) + TUPLE1 + REDUCE, 4),
               "dangerous", categories=("unknown import",)))
    add(Sample("STACK_GLOBAL dotted name through an allowed class's dunders",
               stream(sg("builtins", "object.__subclasses__") + EMPTY_TUPLE + REDUCE, 4),
               "dangerous", categories=("attribute-access gadget",)))
    add(Sample("dunder walk named exactly in the policy",
               stream(sg("scan_corpus", "Point.__init__.__globals__"), 4), "dangerous",
               allow=("scan_corpus.Point.__init__.__globals__",),
               categories=("attribute-access gadget",)))
    add(Sample("wildcard module walking into os",
               stream(sg("scan_corpus", "os.system") + su(_cmd()) + TUPLE1 + REDUCE, 4),
               "dangerous", allow=("scan_corpus.*",), names=("scan_corpus.os.system",)))
    add(Sample("known-dangerous name under a wildcard",
               stream(sg("numpy.testing._private.utils", "runstring") + su("x") + TUPLE1
                      + REDUCE, 4), "dangerous", allow=("numpy.*",),
               names=("numpy.testing._private.utils.runstring",)))

    # Checked stand-ins of the default policy, used as gadgets.
    add(Sample("getattr(object, '__subclasses__')",
               stream(call4("builtins", "getattr", sg("builtins", "object"),
                            su("__subclasses__")), 4), "dangerous",
               categories=("attribute-access gadget",)))
    add(Sample("getattr on a call result (an instance)",
               stream(call4("builtins", "getattr", sg("builtins", "list") + EMPTY_TUPLE + REDUCE,
                            su("append")), 4), "dangerous",
               categories=("attribute-access gadget",)))
    add(Sample("getattr with a computed attribute name",
               stream(call4("builtins", "getattr", sg("builtins", "str"),
                            call4("builtins", "str", sbb(b"join"), su("ascii"))), 4),
               "dangerous", categories=("attribute-access gadget",)))
    add(Sample("getattr reaching a method the policy does not name",
               stream(call4("builtins", "getattr", sg("builtins", "str"), su("format")), 4),
               "needs-allow", names=("builtins.str.format",)))
    add(Sample("p2 __builtin__.getattr(object, '__subclasses__')",
               stream(global_("__builtin__", "getattr") + global_("__builtin__", "object")
                      + su("__subclasses__") + TUPLE2 + REDUCE, 2), "dangerous",
               categories=("attribute-access gadget",)))
    add(Sample("type() with three arguments",
               stream(call4("builtins", "type", su("X"), EMPTY_TUPLE, EMPTY_DICT), 4),
               "dangerous", names=("builtins.type",)))
    add(Sample("copyreg._reconstructor with an instance as base",
               stream(call4("copyreg", "_reconstructor", sg("collections", "OrderedDict"),
                            sg("builtins", "list") + EMPTY_TUPLE + REDUCE, NONE), 4),
               "dangerous", names=("copyreg._reconstructor",)))
    add(Sample("copyreg.__newobj__ of a non-class",
               stream(call4("copyreg", "__newobj__", sg("builtins", "list") + EMPTY_TUPLE
                            + REDUCE), 4), "dangerous", names=("copyreg.__newobj__",)))
    add(Sample("_codecs.encode through a compression codec",
               stream(call4("_codecs", "encode", su("x" * 50), su("zlib_codec")), 4),
               "dangerous", names=("_codecs.encode",)))
    add(Sample("range(2**40) materialized by list()",
               stream(call4("builtins", "list", call4("builtins", "range", binint(2**40))), 4),
               "dangerous", categories=("resource bomb",)))
    add(Sample("bytes(2**40)", stream(call4("builtins", "bytes", binint(2**40)), 4),
               "dangerous", categories=("resource bomb",)))
    add(Sample("bytearray(2**34) protocol 2",
               stream(call2("__builtin__", "bytearray", binint(2**34)), 2), "dangerous",
               categories=("resource bomb",)))
    add(Sample("Fraction with a huge exponent",
               stream(call4("fractions", "Fraction", su("1e100000000")), 4), "dangerous",
               categories=("resource bomb",)))
    add(Sample("range of a size computed at load time",
               stream(call4("builtins", "range", call4("builtins", "int", su("99999999999"))),
                      4), "needs-allow", names=("builtins.range",)))

    # Streams that run something and then break.
    add(Sample("os.system, then truncated",
               stream(call4("os", "system", su(_cmd())), 4)[:-1], "dangerous",
               names=("os.system",), categories=("malformed",)))
    add(Sample("os.system, then an unknown opcode",
               proto(4) + call4("os", "system", su(_cmd())) + b"\xff" + STOP, "dangerous",
               names=("os.system",), categories=("malformed",)))
    add(Sample("os.system, then a stack underflow",
               proto(4) + call4("os", "system", su(_cmd())) + POP + POP + STOP, "dangerous",
               names=("os.system",), categories=("malformed",)))
    add(Sample("truncated plain data", pickle.dumps(list(range(50)), 4)[:-7], "malformed",
               categories=("malformed",)))
    add(Sample("not a pickle", b"\xff\xfe not a pickle at all", "malformed"))
    add(Sample("empty file", b"", "malformed"))
    add(Sample("BINUNICODE that is not UTF-8", proto(4) + op("SHORT_BINUNICODE", b"\x02\xff\xfe")
               + STOP, "malformed"))
    add(Sample("an odd number of dict items", proto(2) + MARK + su("a") + DICT + STOP,
               "malformed"))
    add(Sample("memo fetched before it is written", proto(2) + binget(5) + STOP, "malformed"))

    # Several pickles in one file.
    benign = pickle.dumps({"a": 1}, 4)
    add(Sample("benign pickle, then a hostile one",
               benign + stream(call4("os", "system", su(_cmd())), 4), "dangerous",
               names=("os.system",)))
    add(Sample("three pickles, the last hostile",
               benign + benign + stream(call0("builtins", "exec", string0("x=1"))),
               "dangerous", names=("builtins.exec",)))
    add(Sample("a pickle followed by junk", benign + b"\x00\x01 junk", "malformed",
               categories=("malformed",)))

    # Resource bombs the limits check refuses.
    add(Sample("memo index bomb", proto(2) + NONE + long_binput(0x7FFFFFF0) + STOP,
               "dangerous", categories=("resource bomb",)))
    deep = proto(2) + EMPTY_LIST * 10_050 + APPEND * 10_049 + STOP
    add(Sample("nesting deeper than max_depth", deep, "dangerous",
               categories=("resource bomb",)))

    # Persistent ids in a raw pickle do not make it dangerous, but their globals count.
    add(Sample("persistent id naming a dangerous global",
               stream(MARK + su("storage") + sg("os", "system") + TUPLE + BINPERSID, 4),
               "dangerous", names=("os.system",)))
    return out


def benign_objects() -> list[tuple[str, object]]:
    recursive = [1]
    recursive.append(recursive)
    shared = ["shared"]
    return [
        ("none", None), ("bools", [True, False]), ("ints", [0, -1, 255, 65535, 2**31, 2**100]),
        ("floats", [1.5, -0.0, float("inf")]), ("complex", 1 + 2j), ("text", "héllo \u2603"),
        ("long text", "x" * 5000), ("bytes", b"\x00\xff" * 10), ("long bytes", b"z" * 6000),
        ("bytearray", bytearray(b"abc")), ("tuples", ((), (1,), (1, 2), (1, 2, 3), (1,) * 9)),
        ("nested", {"a": [1, {"b": (2, [3])}], (1, 2): frozenset({1, 2}), "s": {1, 2}}),
        ("recursive list", recursive), ("shared", [shared, shared, {"k": shared}]),
        ("many items", list(range(3000))), ("dict many", {str(i): i for i in range(1500)}),
        ("OrderedDict", collections.OrderedDict([("a", 1), ("b", [2])])),
        ("defaultdict", collections.defaultdict(list, {"a": [1]})),
        ("Counter", collections.Counter("hello")), ("deque", collections.deque([1, 2], 5)),
        ("datetime", [datetime.date(2024, 2, 3), datetime.datetime(2024, 2, 3, 4, 5, 6),
                      datetime.time(1, 2), datetime.timedelta(days=3),
                      datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)]),
        ("decimal", decimal.Decimal("1.25")), ("fraction", fractions.Fraction(3, 7)),
        ("uuid", uuid.UUID(int=12345)), ("range", range(3, 30, 4)),
        ("slice", slice(1, 9, 2)), ("ip", [ipaddress.ip_address("10.0.0.1"),
                                          ipaddress.ip_network("10.0.0.0/8")]),
        ("path", pathlib.PurePosixPath("/tmp/x")),
        ("namespace", types.SimpleNamespace(a=1)), ("types of singletons",
                                                   [type(None), type(...), ...]),
        ("exception", ValueError("bad value")),
    ]


def user_objects() -> list[tuple[str, object]]:
    return [
        ("Point", Point(1, 2)), ("Slotted", Slotted()), ("Record", Record("r", ["t"])),
        ("Bag", Bag([1, 2])), ("Table", Table(a=1)), ("Color", [Color.RED, Color.GREEN]),
        ("Pair", Pair(1, "b")), ("Reducing", Reducing([1, 2])),
        ("shared points", [Point(1, 1)] * 3),
    ]


def benign_samples() -> list[Sample]:
    out: list[Sample] = []
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for label, obj in benign_objects():
            out.append(Sample(f"p{protocol} {label}", pickle.dumps(obj, protocol), "safe",
                              hostile=False))
        for label, obj in user_objects():
            if label == "Slotted" and protocol < 2:
                continue   # copyreg cannot reduce __slots__ classes before protocol 2
            out.append(Sample(f"p{protocol} user {label}", pickle.dumps(obj, protocol), "safe",
                              allow=USER_NAMES, hostile=False))
    out.append(Sample("three pickles", pickle.dumps(1) + pickle.dumps("two", 2)
                      + pickle.dumps([3], 0), "safe", hostile=False))
    buffers: list = []
    data = pickle.dumps([pickle.PickleBuffer(b"abc"), b"x"], 5, buffer_callback=buffers.append)
    out.append(Sample("out-of-band buffer", data, "safe", hostile=False))
    return out


# --------------------------------------------------------------------------------------------
# Containers


def gzip_(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def bz2_(data: bytes) -> bytes:
    return bz2.compress(data)


def xz_(data: bytes) -> bytes:
    return lzma.compress(data)


def lzma_(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_ALONE)


def zlib_(data: bytes) -> bytes:
    return zlib.compress(data)


def zstd_(data: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdCompressor().compress(data)


COMPRESSORS = {"gzip": gzip_, "bz2": bz2_, "xz": xz_, "lzma": lzma_, "zlib": zlib_,
               "zstd": zstd_}


def zip_of(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def tar_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# torch.save's layout, written by hand: torch is not a test dependency.  Checked against
# torch 2.x: data.pkl in protocol 2, storages as stored members aligned to 64 bytes.

TORCH_NAMES = ("torch._utils._rebuild_tensor_v2", "torch.FloatStorage", "torch.DoubleStorage",
               "torch.LongStorage", "torch._utils._rebuild_parameter")


def torch_data_pkl(tensors: dict[str, tuple[str, str, int]], extra: bytes = b"") -> bytes:
    """data.pkl for {name: (storage type, key, numel)}: each a 1-d tensor of that storage."""
    body = proto(2) + EMPTY_DICT + MARK
    for name, (stype, key, numel) in tensors.items():
        pid = MARK + su("storage") + global_("torch", stype) + su(key) + su("cpu") \
            + binint(numel) + TUPLE + BINPERSID
        body += su(name) + global_("torch._utils", "_rebuild_tensor_v2") + MARK + pid \
            + binint(0) + binint(numel) + TUPLE1 + binint(1) + TUPLE1 + NEWFALSE \
            + global_("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + TUPLE + REDUCE
    return body + extra + SETITEMS + STOP


def torch_zip(data_pkl: bytes, storages: dict[str, bytes], prefix: str = "archive",
              extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        archive.writestr(f"{prefix}/.format_version", b"1")
        archive.writestr(f"{prefix}/byteorder", b"little")
        for key, raw in storages.items():
            archive.writestr(f"{prefix}/data/{key}", raw)
        archive.writestr(f"{prefix}/version", b"3\n")
        for name, raw in (extra or {}).items():
            archive.writestr(name, raw)
    return buf.getvalue()


def simple_torch(**tensors: int) -> bytes:
    """A checkpoint of float32 tensors of the given sizes, keys 0, 1, ..."""
    spec = {name: ("FloatStorage", str(i), n) for i, (name, n) in enumerate(tensors.items())}
    storages = {str(i): struct.pack(f"<{n}f", *range(n)) for i, n in enumerate(tensors.values())}
    return torch_zip(torch_data_pkl(spec), storages)


TORCH_MAGIC = 0x1950A86A20F9469CFC6C


def torch_legacy(data_pickle: bytes, keys: list[str], storages: list[bytes],
                 magic: bytes | None = None) -> bytes:
    """torch.save(..., _use_new_zipfile_serialization=False): magic, version, system info,
    the data pickle, the storage keys, then each storage as int64 count + raw elements."""
    out = magic if magic is not None else pickle.dumps(TORCH_MAGIC, 2)
    out += pickle.dumps(1001, 2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, 2)
    out += data_pickle + pickle.dumps(keys, 2)
    for raw in storages:
        out += struct.pack("<q", len(raw) // 4) + raw
    return out


def legacy_data_pickle(tensors: dict[str, tuple[str, int]], evil: bytes = b"") -> bytes:
    body = proto(2) + EMPTY_DICT + MARK
    for name, (key, numel) in tensors.items():
        pid = MARK + su("storage") + global_("torch", "FloatStorage") + su(key) + su("cpu") \
            + binint(numel) + NONE + TUPLE + BINPERSID
        body += su(name) + global_("torch._utils", "_rebuild_tensor_v2") + MARK + pid \
            + binint(0) + binint(numel) + TUPLE1 + binint(1) + TUPLE1 + NEWFALSE \
            + global_("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + TUPLE + REDUCE
    return body + evil + SETITEMS + STOP


def container_samples() -> list[Sample]:
    out: list[Sample] = []
    evil = stream(call4("os", "system", su(_cmd())), 4)
    benign = pickle.dumps({"weights": [0.5, 0.25], "name": "m"}, 4)
    for kind, compress in COMPRESSORS.items():
        out.append(Sample(f"{kind} of a hostile pickle", compress(evil), "dangerous",
                          names=("os.system",)))
        out.append(Sample(f"{kind} of a benign pickle", compress(benign), "safe", hostile=False))
    out.append(Sample("joblib ZF container of a hostile pickle",
                      b"ZF0x" + b"%016x" % len(evil) + b"\x00" + zlib.compress(evil),
                      "dangerous", names=("os.system",)))
    out.append(Sample("zip holding a hostile pickle", zip_of({"x/model.pkl": evil}),
                      "dangerous", names=("os.system",)))
    out.append(Sample("deflated zip holding a hostile pickle",
                      zip_of({"model.bin": evil}, zipfile.ZIP_DEFLATED), "dangerous",
                      names=("os.system",)))
    out.append(Sample("zip holding a hostile pickle without a pickle extension",
                      zip_of({"notes.txt": b"hello", "blob": evil}), "dangerous",
                      names=("os.system",)))
    out.append(Sample("zip of benign pickles", zip_of({"a.pkl": benign, "b.pickle": benign,
                                                       "readme.txt": b"text"}),
                      "safe", hostile=False))
    out.append(Sample("tar holding a hostile pickle", tar_of({"m/data.pkl": evil}),
                      "dangerous", names=("os.system",)))
    out.append(Sample("tar.gz holding a hostile pickle", gzip_(tar_of({"m.pkl": evil})),
                      "dangerous", names=("os.system",)))
    out.append(Sample("zip in a tar in xz", xz_(tar_of({"inner.zip": zip_of({"p.pkl": evil})})),
                      "dangerous", names=("os.system",)))
    out.append(Sample("tar of benign pickles", tar_of({"a.pkl": benign, "b.pkl": benign}),
                      "safe", hostile=False))
    out.append(Sample("a pickle that is also a zip archive",
                      _polyglot(benign, zip_of({"p.pkl": evil})), "dangerous",
                      names=("os.system",)))

    # torch checkpoints
    good = simple_torch(w=6, b=3)
    out.append(Sample("torch checkpoint", good, "safe", allow=TORCH_NAMES, hostile=False))
    out.append(Sample("torch checkpoint under the default policy", good, "needs-allow",
                      names=("torch._utils._rebuild_tensor_v2", "torch.FloatStorage"),
                      hostile=False))
    spec = {"w": ("FloatStorage", "0", 4)}
    storages = {"0": bytes(16)}
    out.append(Sample("torch checkpoint whose data.pkl runs os.system",
                      torch_zip(torch_data_pkl(spec, su("x") + call2("os", "system",
                                                                     su(_cmd()))), storages),
                      "dangerous", allow=TORCH_NAMES, names=("os.system",)))
    out.append(Sample("torch checkpoint with a hostile extra pickle",
                      torch_zip(torch_data_pkl(spec), storages,
                                extra={"archive/extra.pkl": evil}),
                      "dangerous", allow=TORCH_NAMES, names=("os.system",)))
    out.append(Sample("torch checkpoint with a second, hostile data.pkl",
                      _duplicate_member(torch_zip(torch_data_pkl(spec), storages),
                                        "archive/data.pkl", evil),
                      "dangerous", allow=TORCH_NAMES, names=("os.system",)))
    out.append(Sample("torch checkpoint naming a storage it lacks",
                      torch_zip(torch_data_pkl({"w": ("FloatStorage", "7", 4)}), storages),
                      "malformed", allow=TORCH_NAMES, categories=("malformed",)))
    out.append(Sample("torch checkpoint with a storage too small",
                      torch_zip(torch_data_pkl({"w": ("FloatStorage", "0", 400)}), storages),
                      "malformed", allow=TORCH_NAMES, categories=("malformed",)))
    out.append(Sample("torch checkpoint with overlapping entries", _overlap(good), "dangerous",
                      allow=TORCH_NAMES, categories=("archive",)))
    out.append(Sample("zip whose local header names another file",
                      _rename_local(zip_of({"safe.pkl": evil}), "safe.pkl", "evil.pkl"),
                      "dangerous", names=("os.system",), categories=("archive",)))
    legacy_spec = {"w": ("0", 4)}
    out.append(Sample("legacy torch checkpoint",
                      torch_legacy(legacy_data_pickle(legacy_spec), ["0"], [bytes(16)]),
                      "safe", allow=TORCH_NAMES, hostile=False))
    out.append(Sample("legacy torch checkpoint with a hostile data pickle",
                      torch_legacy(legacy_data_pickle(legacy_spec, su("e") + call2(
                          "builtins", "exec", su("x=1"))), ["0"], [bytes(16)]),
                      "dangerous", allow=TORCH_NAMES, names=("builtins.exec",)))
    out.append(Sample("legacy torch checkpoint whose magic number is computed by eval",
                      torch_legacy(legacy_data_pickle(legacy_spec), ["0"], [bytes(16)],
                                   magic=stream(call2("builtins", "eval",
                                                      su(hex(TORCH_MAGIC))), 2)),
                      "dangerous", allow=TORCH_NAMES, names=("builtins.eval",)))
    return out


def _polyglot(front: bytes, archive: bytes) -> bytes:
    """A pickle followed by a zip archive (whose offsets zip readers correct from the end)."""
    return front + archive


def _duplicate_member(archive: bytes, name: str, data: bytes) -> bytes:
    buf = io.BytesIO(archive)
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_STORED) as z:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z.writestr(name, data)
    return buf.getvalue()


def _overlap(archive: bytes) -> bytes:
    """Point the second central-directory entry at the first entry's local header."""
    data = bytearray(archive)
    end = data.rfind(b"PK\x05\x06")
    cd = struct.unpack_from("<I", data, end + 16)[0]
    first = cd
    size = 46 + sum(struct.unpack_from("<HHH", data, first + 28))
    second = first + size
    struct.pack_into("<I", data, second + 42, struct.unpack_from("<I", data, first + 42)[0] + 8)
    return bytes(data)


def _rename_local(archive: bytes, old: str, new: str) -> bytes:
    assert len(old) == len(new)
    data = bytearray(archive)
    name_at = data.find(old.encode(), data.find(b"PK\x03\x04"))
    data[name_at:name_at + len(old)] = new.encode()
    return bytes(data)


def numpy_samples() -> list[Sample]:
    import numpy as np
    out: list[Sample] = []
    names = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
             "numpy.ndarray", "numpy.dtype", "numpy.core.multiarray.scalar",
             "numpy._core.multiarray.scalar")

    def npy(array) -> bytes:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=True)
        return buf.getvalue()

    def npz(**arrays) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    obj = np.array([1, "two", None, {"k": [1.5]}], dtype=object)
    out.append(Sample("npy float array", npy(np.arange(12.0).reshape(3, 4)), "safe",
                      hostile=False))
    out.append(Sample("npy object array", npy(obj), "safe", allow=names, hostile=False))
    out.append(Sample("npy object array under the default policy", npy(obj), "needs-allow",
                      names=("numpy.ndarray",), hostile=False))
    header = npy(obj)
    start = header.index(b"\n", 10) + 1
    out.append(Sample("npy object array holding a hostile pickle",
                      header[:start] + stream(call2("os", "system", su(_cmd())), 3),
                      "dangerous", allow=names, names=("os.system",)))
    out.append(Sample("npy truncated array data", npy(np.arange(100.0))[:-8], "malformed"))
    out.append(Sample("npz of plain and object arrays", npz(a=np.arange(3), o=obj), "safe",
                      allow=names, hostile=False))
    hostile_npz = zip_of({"a.npy": npy(np.arange(3)), "o.npy": header[:start] + stream(
        call2("os", "system", su(_cmd())), 3)})
    out.append(Sample("npz with a hostile object array", hostile_npz, "dangerous", allow=names,
                      names=("os.system",)))
    return out


JOBLIB_NAMES = ("joblib.numpy_pickle.NumpyArrayWrapper", "numpy.ndarray", "numpy.dtype",
                "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")


def joblib_samples() -> list[Sample]:
    import joblib
    import numpy as np
    out: list[Sample] = []

    def dump(obj, **kwargs) -> bytes:
        buf = io.BytesIO()
        joblib.dump(obj, buf, **kwargs)
        return buf.getvalue()

    model = {"coef": np.arange(10.0), "ints": np.arange(7, dtype=np.int32).reshape(7, 1),
             "names": np.array(["ab", "c"]), "obj": np.array([1, "x", None], dtype=object),
             "params": {"alpha": 0.5}, "empty": np.zeros((0, 3))}
    plain = dump(model)
    out.append(Sample("joblib file", plain, "safe", allow=JOBLIB_NAMES, hostile=False))
    for compress in ("zlib", "gzip", "bz2", "xz", "lzma"):
        out.append(Sample(f"joblib file compressed with {compress}",
                          dump(model, compress=(compress, 3)), "safe", allow=JOBLIB_NAMES,
                          hostile=False))
    out.append(Sample("joblib file under the default policy", plain, "needs-allow",
                      names=("joblib.numpy_pickle.NumpyArrayWrapper",), hostile=False))
    # An object array whose nested pickle runs os.system.
    evil_nested = stream(call2("os", "system", su(_cmd())), 2)
    at = plain.index(b"\x80\x05", plain.index(b"O8"))
    nested_end = at + _pickle_end(plain[at:])
    out.append(Sample("joblib object array holding a hostile pickle",
                      plain[:at] + evil_nested + plain[nested_end:], "dangerous",
                      allow=JOBLIB_NAMES, names=("os.system",)))
    # A float array whose raw bytes are, for pickle.load, a hostile pickle.
    hidden = dump({"a": np.frombuffer(evil_nested + bytes(-len(evil_nested) % 8), np.float64)})
    out.append(Sample("joblib array data that is a pickle for pickle.load",
                      _strip_padding(hidden), "dangerous", allow=JOBLIB_NAMES,
                      names=("os.system",)))
    return out


def _pickle_end(data: bytes) -> int:
    from mason.format.reader import pickle_spans
    return next(iter(pickle_spans(data)))[1]


def _strip_padding(data: bytes) -> bytes:
    """Rewrite a joblib file's first array as joblib before 1.2 wrote it: alignment None, so
    no padding precedes the array data, which then sits where a plain unpickler reads its
    next opcode.  The first frame, which ends at the array, is shortened to match."""
    old = b"numpy_array_alignment_bytes\x94K\x10u"
    at = data.index(old)
    data = data[:at] + b"numpy_array_alignment_bytes\x94Nu" + data[at + len(old):]
    build = at + len(old) - 1
    padding = data[build + 1]
    data = data[:build + 1] + data[build + 2 + padding:]
    length = struct.unpack_from("<Q", data, 3)[0]
    return data[:3] + struct.pack("<Q", length - 1) + data[11:]


def all_samples() -> list[Sample]:
    return hostile_samples() + benign_samples() + container_samples() + numpy_samples() \
        + joblib_samples()


def register(sample: Sample):
    """Register the sample's copyreg extension, if it has one; returns an undo function."""
    if sample.extension is None:
        return lambda: None
    module, name, code = sample.extension
    copyreg.add_extension(module, name, code)
    return lambda: copyreg.remove_extension(module, name, code)


_ = dataclasses  # the Record sample uses the dataclass machinery
