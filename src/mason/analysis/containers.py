"""The files pickles travel in: what each is, and where its pickles are.

The scanner never trusts a file name: ``sniff`` looks at the bytes.  What it recognises:

* raw pickles, one or several written one after another (``pickle.dump`` called repeatedly);
* zip archives, with their structure checked (every entry's local header against the central
  directory, entries that overlap, duplicate names, encryption), and among them
  - torch checkpoints (``torch.save``: ``<name>/data.pkl`` with ``<name>/data/<key>`` storage
    records, which the pickle's persistent ids must name),
  - numpy ``.npz`` files (a zip of ``.npy`` members);
* tar archives;
* gzip, bz2, xz, lzma, zlib (joblib's ``compress=``), zstd (with the ``zstandard`` package)
  and joblib's old ``ZF`` format, decompressed with a cap on the output size;
* numpy ``.npy`` files, whose object arrays are a pickle after the header;
* torch's legacy (pre-1.6, non-zip) format: five pickles and the raw storages after them;
* joblib files: a pickle with raw array data written after each ``NumpyArrayWrapper``.

Nothing here imports or calls anything from the data: headers are parsed by hand (the
``.npy`` header with ``ast.literal_eval``, which builds only literals).
"""

from __future__ import annotations

import ast
import bz2
import io
import lzma
import math
import re
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["sniff", "decompress", "read_zip", "read_tar", "read_npy", "ZipEntry",
           "TorchArchive", "torch_archives", "STORAGE_SIZES", "TORCH_MAGIC", "joblib_hook",
           "JOBLIB_WRAPPERS", "BufferFile"]

# Magic numbers, longest first where they share a prefix.
_MAGIC = (
    (b"\x93NUMPY", "npy"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),           # an empty archive
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"]\x00\x00", "lzma"),            # lzma "alone" format, as joblib writes it
    (b"ZF0x", "joblib-zf"),            # joblib < 0.10's zlib container
)
COMPRESSED = {"gzip", "bz2", "xz", "zstd", "lz4", "lzma", "zlib", "joblib-zf"}


def sniff(data) -> str:
    """The format of ``data`` from its first bytes: "npy", "zip", "tar", a compression
    ("gzip", "bz2", "xz", "zstd", "lz4", "lzma", "zlib", "joblib-zf") or "pickle"."""
    head = bytes(data[:8])
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0 \
            and head[1] in (0x01, 0x5E, 0x9C, 0xDA):
        return "zlib"   # 'x' is no pickle opcode, so this cannot be mistaken for one
    if len(data) >= 262 and bytes(data[257:262]) == b"ustar":
        return "tar"
    return "pickle"


def has_zip_directory(data) -> bool:
    """Whether the data ends with a zip archive's end-of-directory record (a file can be a
    pickle at the front and a zip archive at the back, which zip readers find from the
    end).  The record, with its comment, must end exactly at the end of the data."""
    n = len(data)
    if n < 22:
        return False
    tail = bytes(data[max(0, n - 65557):n])
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0:
        if at + 22 <= len(tail):
            comment = int.from_bytes(tail[at + 20:at + 22], "little")
            if at + 22 + comment == len(tail):
                return True
        at = tail.rfind(b"PK\x05\x06", 0, at)
    return False


# --- a file over a buffer -----------------------------------------------------------------

class BufferFile(io.RawIOBase):
    """A read-only, seekable file over any buffer, without copying it (for zipfile, tarfile)."""

    def __init__(self, data):
        super().__init__()
        self._view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self._pos
        elif whence == 2:
            pos += len(self._view)
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n is None or n < 0 else min(len(self._view), self._pos + n)
        chunk = bytes(self._view[self._pos:end]) if end > self._pos else b""
        self._pos = max(self._pos, end)
        return chunk

    def readinto(self, buf) -> int:
        chunk = self.read(len(buf))
        buf[:len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self._view = b""
        super().close()


# --- compression ----------------------------------------------------------------------------

class TooLarge(Exception):
    """The data decompresses to more than the cap allows."""


def decompress(data, kind: str, cap: int) -> bytes:
    """Decompress all of ``data`` (every member of a multi-member gzip / bz2 / xz stream).

    Raises ``TooLarge`` past ``cap`` bytes of output, ``ValueError`` (with a message) on
    data that does not decompress, and ``ImportError`` when the codec is not installed.
    """
    if kind == "joblib-zf":
        # b"ZF" + "0x%016x" % length of the uncompressed data (padded to 19), then zlib.
        return decompress(bytes(data[21:]) if len(data) > 21 else b"", "zlib", cap)
    if kind == "zstd":
        return _zstd(data, cap)
    if kind == "lz4":
        import lz4.frame  # optional; the caller reports its absence
        return _chunked(data, lambda: lz4.frame.LZ4FrameDecompressor(), cap)
    makers = {
        "gzip": lambda: zlib.decompressobj(31),
        "zlib": lambda: zlib.decompressobj(),
        "bz2": bz2.BZ2Decompressor,
        "xz": lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
        "lzma": lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE),
    }
    return _chunked(data, makers[kind], cap)


def _chunked(data, make, cap: int) -> bytes:
    out = bytearray()
    rest = data if isinstance(data, bytes) else memoryview(data).cast("B")
    chunk_size = 1 << 20
    try:
        while True:
            dec = make()
            zlib_style = hasattr(dec, "unconsumed_tail")
            pos = 0
            while not dec.eof:
                if zlib_style and dec.unconsumed_tail:
                    piece = dec.unconsumed_tail
                elif (not zlib_style and not dec.needs_input) or pos >= len(rest):
                    piece = b""   # output is pending inside the decompressor
                else:
                    piece = bytes(rest[pos:pos + chunk_size])
                    pos += len(piece)
                got = dec.decompress(piece, cap - len(out) + 1)
                if not got and not piece and not dec.eof:
                    raise ValueError("the compressed data ends early")
                out += got
                if len(out) > cap:
                    raise TooLarge
            unused = bytes(dec.unused_data) + bytes(rest[pos:])
            if not unused.strip(b"\x00"):
                return bytes(out)
            rest = unused   # another member follows (gzip, bz2 and xz allow several)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None


def _zstd(data, cap: int) -> bytes:
    import zstandard  # optional; the caller reports its absence
    reader = zstandard.ZstdDecompressor().stream_reader(BufferFile(data),
                                                        read_across_frames=True)
    out = bytearray()
    try:
        while True:
            chunk = reader.read(1 << 20)
            if not chunk:
                return bytes(out)
            out += chunk
            if len(out) > cap:
                raise TooLarge
    except zstandard.ZstdError as exc:
        raise ValueError(str(exc)) from None


# --- zip --------------------------------------------------------------------------------------

@dataclass
class ZipEntry:
    """One entry of a zip archive's central directory, with where its data lies."""

    name: str
    info: zipfile.ZipInfo
    data_start: int | None   # offset of its data in the archive (None if the header is bad)
    end: int                 # offset just past its data (or its header, when bad)


@dataclass
class ZipListing:
    entries: list[ZipEntry]
    issues: list[tuple[str, str, str, int | None]]   # (member, severity, message, offset)
    archive: Any


def read_zip(data, member: str) -> ZipListing:
    """The entries of a zip archive and what is wrong with its structure.

    Checked for every entry: the local header is where the central directory says, with the
    same name; the data lies inside the file; no two entries overlap (overlapping entries
    make zip bombs, and let a loader and a scanner read different bytes under one name);
    no name repeats (loaders disagree on which copy they read: every copy is scanned).
    """
    issues: list[tuple[str, str, str, int | None]] = []
    archive = zipfile.ZipFile(BufferFile(data))
    n = len(data)
    entries: list[ZipEntry] = []
    seen: dict[str, int] = {}
    for info in archive.infolist():
        where = _join(member, info.filename)
        if info.filename in seen:
            issues.append((where, "note", f"the archive has {seen[info.filename] + 1} "
                           f"entries named {info.filename!r}; loaders differ on which one they "
                           f"read, so each is scanned", info.header_offset))
        seen[info.filename] = seen.get(info.filename, 0) + 1
        start = info.header_offset
        header = bytes(data[start:start + 30]) if 0 <= start <= n else b""
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            issues.append((where, "malformed", "its local header is missing or damaged",
                           start))
            entries.append(ZipEntry(info.filename, info, None, min(n, start + 30)))
            continue
        name_len, extra_len = struct.unpack_from("<HH", header, 26)
        raw_name = bytes(data[start + 30:start + 30 + name_len])
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        if raw_name.decode(encoding, "replace") != info.orig_filename:
            issues.append((where, "malformed", f"its local header names it "
                           f"{raw_name.decode(encoding, 'replace')!r}: readers that trust "
                           f"the local header see another file", start))
        data_start = start + 30 + name_len + extra_len
        end = data_start + info.compress_size
        if end > n:
            issues.append((where, "malformed", f"its data runs {end - n} bytes past the end "
                           f"of the archive", start))
        entries.append(ZipEntry(info.filename, info, data_start, min(end, n)))
    spans = sorted((e.info.header_offset, e.end, e.name) for e in entries)
    for (a_start, a_end, a_name), (b_start, b_end, b_name) in zip(spans, spans[1:]):
        if b_start < a_end:
            issues.append((_join(member, b_name), "dangerous",
                           f"its bytes overlap those of {a_name!r}: overlapping entries make "
                           f"zip bombs, and show different readers different data", b_start))
    return ZipListing(entries, issues, archive)


def zip_member(listing: ZipListing, entry: ZipEntry, data, cap: int):
    """The uncompressed bytes of a zip entry: a view of ``data`` when it is stored, else
    decompressed (at most ``cap`` bytes: ``TooLarge`` past that).  ``ValueError`` if it
    cannot be read (encrypted, unknown method, damaged)."""
    info = entry.info
    if info.flag_bits & 0x1:
        raise ValueError("it is encrypted")
    if entry.data_start is None:
        raise ValueError("its local header is damaged")
    if info.file_size > cap:
        raise TooLarge
    if info.compress_type == zipfile.ZIP_STORED:
        view = memoryview(data).cast("B") if not isinstance(data, (bytes, memoryview)) \
            else memoryview(data)
        chunk = view[entry.data_start:entry.data_start + info.compress_size]
        if len(chunk) != info.compress_size:
            raise ValueError("its data is cut off")
        return chunk
    try:
        with listing.archive.open(info) as handle:
            out = bytearray()
            while True:
                piece = handle.read(1 << 20)
                if not piece:
                    return bytes(out)
                out += piece
                if len(out) > cap:
                    raise TooLarge
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError,
            zlib.error, lzma.LZMAError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None


def _join(member: str, name: str) -> str:
    return f"{member}!{name}" if member else name


# --- torch checkpoints -------------------------------------------------------------------------

TORCH_MAGIC = 0x1950A86A20F9469CFC6C   # the first pickle of torch's legacy format
# Bytes per element of each storage type a checkpoint's persistent ids name.
STORAGE_SIZES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8,
    "QUInt8Storage": 1, "QInt8Storage": 1, "QInt32Storage": 4, "QUInt4x2Storage": 1,
    "QUInt2x4Storage": 1, "UntypedStorage": 1, "ByteStorage ": 1,
}
_TORCH_METADATA = {"version", "byteorder", ".data/version", ".data/serialization_id",
                   ".format_version", ".storage_alignment", "data.pkl"}


@dataclass
class TorchArchive:
    """The records of one ``torch.save`` archive inside a zip: ``prefix/...``."""

    prefix: str
    records: dict[str, ZipEntry] = field(default_factory=dict)   # name below prefix -> entry

    def storage(self, key: str) -> ZipEntry | None:
        return self.records.get(f"data/{key}")

    def is_storage(self, name: str) -> bool:
        return name.startswith("data/")

    def is_metadata(self, name: str) -> bool:
        return name in _TORCH_METADATA


def torch_archives(entries: list[ZipEntry]) -> dict[str, TorchArchive]:
    """The torch archives among zip entries: each ``<prefix>/data.pkl`` makes one."""
    found: dict[str, TorchArchive] = {}
    for entry in entries:
        prefix, slash, rest = entry.name.partition("/")
        if slash and rest == "data.pkl":
            found[prefix] = TorchArchive(prefix)
    for entry in entries:
        prefix, slash, rest = entry.name.partition("/")
        if slash and prefix in found:
            found[prefix].records.setdefault(rest, entry)
    return found


# --- tar ----------------------------------------------------------------------------------------

def read_tar(data, member: str, cap: int):
    """Yields ``(name, bytes_or_None, issue)`` for each regular file of a tar archive."""
    try:
        archive = tarfile.open(fileobj=BufferFile(data), mode="r:")
    except tarfile.TarError as exc:
        yield member, None, f"it is not a readable tar archive: {exc}"
        return
    view = memoryview(data).cast("B") if not isinstance(data, (bytes, memoryview)) \
        else memoryview(data)
    try:
        for info in archive:
            if not info.isreg():
                continue
            name = _join(member, info.name)
            if info.size > cap:
                yield name, None, "too large"
                continue
            if info.sparse is None:
                chunk = view[info.offset_data:info.offset_data + info.size]
                if len(chunk) != info.size:
                    yield name, None, "its data is cut off"
                    continue
                yield name, chunk, None
            else:
                handle = archive.extractfile(info)
                yield name, handle.read() if handle else b"", None
    except tarfile.TarError as exc:
        yield member, None, f"the tar archive is damaged: {exc}"


# --- numpy .npy -------------------------------------------------------------------------------

MAX_NPY_HEADER = 1 << 16


@dataclass
class NpyInfo:
    pickle_at: int | None       # where the object array's pickle starts, if it has one
    problem: str | None         # what is wrong with the file, if anything


def read_npy(data) -> NpyInfo:
    """Parse a ``.npy`` header: an object array holds a pickle right after it."""
    head = bytes(data[:12])
    if len(head) < 10:
        return NpyInfo(None, "the .npy header is cut off")
    major = head[6]
    if major == 1:
        (length,), at = struct.unpack_from("<H", head, 8), 10
    elif major in (2, 3) and len(head) >= 12:
        (length,), at = struct.unpack_from("<I", head, 8), 12
    else:
        return NpyInfo(None, f"unknown .npy format version {major}")
    if length > MAX_NPY_HEADER or at + length > len(data):
        return NpyInfo(None, "the .npy header is cut off or too long")
    text = bytes(data[at:at + length]).decode("utf-8" if major == 3 else "latin-1", "replace")
    try:
        header = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return NpyInfo(None, "the .npy header is not a literal dict")
    if not isinstance(header, dict) or not {"descr", "shape"} <= set(header):
        return NpyInfo(None, "the .npy header lacks descr or shape")
    end = at + length
    try:
        itemsize, objects = _descr(header["descr"])
    except (ValueError, TypeError):
        return NpyInfo(None, f"the .npy header has an unknown dtype {header['descr']!r}")
    if objects:
        return NpyInfo(end, None)
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        return NpyInfo(None, f"the .npy header has a bad shape {shape!r}")
    need = math.prod(shape) * itemsize
    if len(data) - end < need:
        return NpyInfo(None, f"the array data is cut off: {need} bytes declared, "
                             f"{len(data) - end} present")
    return NpyInfo(None, None)


_SIMPLE = re.compile(r"[<>|=]?([bBhHiIlLqQpPefdgFDGuiSUVaOMmc?])(\d*)(?:\[\w+\])?")


def _descr(descr) -> tuple[int, bool]:
    """(itemsize, holds objects) of a .npy ``descr``: a type string or a list of fields."""
    if isinstance(descr, str):
        match = _SIMPLE.fullmatch(descr)
        if not match:
            raise ValueError(descr)
        kind, digits = match.group(1), match.group(2)
        if kind == "O":
            return 8, True
        if not digits:
            raise ValueError(descr)
        size = int(digits)
        return (size * 4 if kind == "U" else size), False
    if isinstance(descr, list):
        total, objects = 0, False
        for item in descr:
            if not isinstance(item, tuple) or len(item) not in (2, 3):
                raise ValueError(descr)
            size, obj = _descr(item[1])
            if len(item) == 3:
                shape = item[2] if isinstance(item[2], tuple) else (item[2],)
                size *= math.prod(int(d) for d in shape)
            total += size
            objects = objects or obj
        return total, objects
    raise TypeError(descr)


# --- joblib ------------------------------------------------------------------------------------

JOBLIB_WRAPPERS = frozenset({
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ("sklearn.externals.joblib.numpy_pickle", "NumpyArrayWrapper"),
})


class JoblibProblem(ValueError):
    """A joblib array whose size cannot be worked out without running anything."""


def joblib_hook(data, on_nested):
    """An ``after_build`` hook for the symbolic machine that steps over joblib's arrays.

    joblib writes each numpy array as a ``NumpyArrayWrapper`` object and, right after the
    BUILD that sets its state, the array itself: raw bytes (after a padding-length byte and
    that much padding, from joblib 1.2 on), or, for an array of Python objects, a complete
    pickle of its own.  The hook works out the length from the wrapper's state -- shape,
    dtype, alignment -- as joblib's reader does, and resumes decoding after it;
    ``on_nested(offset)`` is called for a nested pickle and returns where it ends.  A state
    it cannot size exactly raises ``JoblibProblem`` (the scan stops there and says why).
    """
    from ..format.machine import Call, Global

    def wrapper_class(node) -> bool:
        return isinstance(node, Call) and isinstance(node.func, Global) \
            and (node.func.module, node.func.name) in JOBLIB_WRAPPERS

    def hook(target, state, end, stack):
        if not wrapper_class(target):
            return None
        if not isinstance(state, dict):
            raise JoblibProblem("a NumpyArrayWrapper's state is not a dict")
        shape, dtype = state.get("shape"), state.get("dtype")
        if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
            raise JoblibProblem(f"a NumpyArrayWrapper has a shape that is not a tuple of "
                                f"sizes: {shape!r}")
        itemsize, objects = _joblib_dtype(dtype)
        if objects:
            return on_nested(end)
        pos = end
        if state.get("numpy_array_alignment_bytes") is not None:
            if pos >= len(data):
                raise JoblibProblem("the array's padding byte is missing")
            pos += 1 + data[pos]
        count = math.prod(shape) if shape else 1
        pos += count * itemsize
        if pos > len(data):
            raise JoblibProblem(f"the array data is cut off: it needs {pos - len(data)} more "
                                f"bytes")
        return pos

    return hook


def _joblib_dtype(dtype) -> tuple[int, bool]:
    """(itemsize, holds objects) of a dtype as the stream builds it: numpy.dtype(str, ...)
    with a BUILD of its state tuple (version, byteorder, subarray, names, fields, elsize,
    alignment, flags)."""
    from ..format.machine import Build, Call, Global

    if not (isinstance(dtype, Call) and isinstance(dtype.func, Global)
            and dtype.func.name == "dtype" and dtype.func.module.split(".")[0] == "numpy"
            and isinstance(dtype.args, tuple) and dtype.args and type(dtype.args[0]) is str):
        raise JoblibProblem(f"an array's dtype is not numpy.dtype('...'): {dtype!r}")
    states = [e.state for e in dtype.effects if isinstance(e, Build)]
    state = states[-1] if states else None
    flags = elsize = None
    if isinstance(state, tuple) and len(state) >= 8:
        elsize, flags = state[5], state[7]
    spelled = dtype.args[0]
    if type(flags) is int and flags & 0x1:   # NPY_ITEM_HASOBJECT
        return 8, True
    if spelled.startswith("O"):
        return 8, True
    if type(elsize) is int and elsize > 0:
        return elsize, False
    match = re.fullmatch(r"[<>|=]?[a-zA-Z?](\d+)", spelled)
    if not match:
        raise JoblibProblem(f"an array has a dtype whose size is unknown: {spelled!r}")
    return int(match.group(1)), False
