"""``mason.load(path)``: find what a file is by its first bytes and load it.

Formats, in the order they are recognised:

* a mason container (a zip whose first member is ``.mason``): ``mason.files``;
* a torch checkpoint in zip form (``<name>/data.pkl`` and ``<name>/data/<key>`` members):
  the pickle is loaded by mason, its storages (persistent ids ``('storage', type, key,
  location, numel)``) resolved to the members' bytes, read once into the tensors' memory or
  mapped copy-on-write (``mmap=True``); torch's own loader is not used;
* a legacy torch checkpoint (``torch.save(..., _use_new_zipfile_serialization=False)``):
  magic number, protocol version and system information pickles, the object pickle, the
  list of storage keys, then each storage's size and bytes;
* gzip, zstd, bz2, xz, lzma and zlib compression (joblib's ``compress=`` among them): the
  file is decompressed in memory and recognised again;
* numpy's ``.npy`` (one array) and ``.npz`` (a zip of ``.npy`` members, stored or deflated:
  loaded as a dict of arrays): numpy reads plain arrays (``mmap=True`` maps an ``.npy``
  read-only); an object array is a pickle after the header, loaded by mason under the
  policy, and must be the array the header describes;
* a joblib file: a pickle in which each numpy array is a ``NumpyArrayWrapper`` followed by
  the array's raw bytes.  Those bytes are cut out of the stream (found by running it on
  mason's symbolic machine, which calls nothing), and each wrapper becomes the array;
* anything else is read as a pickle, as ``pickle.load`` would.

Torch checkpoints load under the ``torch`` preset, and joblib and numpy files under the
``numpy`` preset, unless ``policy=``, ``allow=``, ``preset=`` or ``trusted=`` says otherwise: those
presets admit nothing that runs code, and they are what such files need.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import struct
import zlib
from typing import Any

from . import _zip
from .errors import MalformedPickleError, TruncatedPickleError, UnsafeGlobalError

__all__ = ["load_path", "sniff"]

TORCH_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_PROTOCOL_VERSION = 1001
# The legacy format starts with the pickle of the magic number: PROTO 2, LONG1 of 10 bytes.
_TORCH_LEGACY_HEAD = b"\x80\x02\x8a\x0a" + TORCH_MAGIC.to_bytes(10, "little")
_COMPRESSED = (
    (b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"), (b"]\x00\x00", "lzma"),
)
_NPY_MAGIC = b"\x93NUMPY"
_JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"
_MAX_NESTING = 4


def sniff(head: bytes) -> str:
    """What a file that starts with ``head`` is: "mason", "zip", "torch-legacy", "npy", a
    compression ("gzip", "zstd", "bz2", "xz", "lzma", "zlib") or "pickle"."""
    from .files import is_container

    if is_container(head):
        return "mason"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head.startswith(_TORCH_LEGACY_HEAD):
        return "torch-legacy"
    for magic, kind in _COMPRESSED:
        if head.startswith(magic):
            return kind
    # zlib: a CMF byte of deflate with a 32K window and a valid check (what joblib writes)
    if len(head) >= 2 and head[0] == 0x78 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib"
    return "pickle"


def _default_preset(options: dict, preset: str) -> dict:
    if options.get("policy") is None and not options.get("allow") \
            and options.get("preset") is None and not options.get("trusted"):
        options = dict(options, preset=preset)
    return options


def load_path(path: str, *, mmap: bool, verify, options: dict, key) -> Any:
    with open(path, "rb", buffering=0) as file:
        fd = file.fileno()
        size = os.fstat(fd).st_size
        head = os.pread(fd, 64, 0)
        kind = sniff(head)
        if kind == "mason":
            from .files import load_container
            try:
                return load_container(fd, size, mmap=mmap, verify=verify, key=key,
                                      options=options)
            except TruncatedPickleError as exc:
                raise _where_truncated(fd, size, exc) from None
        if key is not None:
            raise MalformedPickleError(f"key= verifies a signed mason container; {path} is "
                                       f"a {kind} file")
        if kind == "zip":
            entries = _zip.read_directory(fd, size, "zip file")
            if entries and all(name.endswith(".npy") for name in entries):
                return _load_npz(file, _default_preset(options, "numpy"))
            return _load_torch_zip(fd, size, entries, mmap, verify,
                                   _default_preset(options, "torch"))
        if kind == "npy":   # read by numpy from the file itself: one copy of the data
            return _load_npy(file, _default_preset(options, "numpy"), path if mmap else None)
        if kind == "pickle":
            data = _read_all(fd, size)
            return load_bytes(data, options, 0)
        data = _read_all(fd, size)
    return load_bytes(data, options, 0)


def _read_all(fd: int, size: int) -> memoryview:
    from .files import allocate, read_into
    view = allocate(size)
    done = read_into(fd, 0, view)
    return view[:done]


def load_bytes(data, options: dict, depth: int) -> Any:
    """Load a whole file held in memory (after decompression, perhaps)."""
    head = bytes(data[:64])
    kind = sniff(head)
    if kind in ("gzip", "zstd", "bz2", "xz", "lzma", "zlib"):
        if depth >= _MAX_NESTING:
            raise MalformedPickleError("compressed more than 4 times over: refused")
        return load_bytes(_decompress(data, kind), options, depth + 1)
    if kind == "torch-legacy":
        return _load_torch_legacy(io.BytesIO(data), _default_preset(options, "torch"))
    if kind in ("mason", "zip"):
        raise MalformedPickleError(f"a compressed {kind} archive: decompress it first")
    if kind == "npy":
        return _load_npy(io.BytesIO(data), _default_preset(options, "numpy"))
    if _names_joblib_wrapper(data):
        return _load_joblib(data, _default_preset(options, "numpy"))
    from .unpickler import load
    return load(io.BytesIO(data), **options)


def _load_npy(file, options: dict, mapped_path: str | None = None):
    """The array of the ``.npy`` file open as ``file`` (at its start); with
    ``mapped_path``, a plain array is mapped read-only from that file instead of read."""
    import numpy

    fmt = numpy.lib.format
    try:
        version = fmt.read_magic(file)
        # numpy's own reader of every header version (3.0 is 2.0 in UTF-8)
        read_header = getattr(fmt, "_read_array_header", None)
        if read_header is not None:
            shape, fortran, dtype = read_header(file, version)
        else:   # pragma: no cover - a numpy without it
            shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0)
                                     else fmt.read_array_header_2_0)(file)
    except (ValueError, OSError, EOFError) as exc:
        raise MalformedPickleError(f"a damaged .npy header: {exc}") from None
    if not dtype.hasobject:
        file.seek(0)
        try:
            if mapped_path is not None:
                return numpy.load(mapped_path, mmap_mode="r", allow_pickle=False)
            return fmt.read_array(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise MalformedPickleError(f"a damaged .npy file: {exc}") from None
    # An object array: numpy wrote the array itself as a pickle after the header.
    from .unpickler import load
    array = load(file, **options)
    if not isinstance(array, numpy.ndarray) or array.shape != tuple(shape) \
            or array.dtype != dtype:
        raise MalformedPickleError(
            f"the .npy header describes an array of {dtype} and shape {tuple(shape)}, but its "
            f"pickle holds {type(array).__name__} "
            f"{getattr(array, 'dtype', '')}{getattr(array, 'shape', '')}")
    return array


def _load_npz(file, options: dict) -> dict:
    """The arrays of an ``.npz`` file, by name (without ``.npy``), as numpy.load names them."""
    import zipfile

    arrays = {}
    try:
        with zipfile.ZipFile(file) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    # numpy's reader needs seek; deflated members are read whole
                    data = io.BytesIO(member.read())
                arrays[info.filename[:-len(".npy")]] = _load_npy(data, options)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise MalformedPickleError(f"a damaged .npz file: {exc}") from None
    return arrays


def _decompress(data, kind: str) -> bytes:
    try:
        if kind == "gzip":
            return gzip.decompress(data)
        if kind == "bz2":
            return bz2.decompress(data)
        if kind in ("xz", "lzma"):
            return lzma.decompress(data)
        if kind == "zlib":
            return zlib.decompress(data)
        try:
            import zstandard
        except ImportError:
            raise ImportError("this file is compressed with zstd: install the 'zstandard' "
                              "package to read it") from None
        reader = zstandard.ZstdDecompressor().stream_reader(bytes(data))
        return reader.read()
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
        raise MalformedPickleError(f"the {kind}-compressed data is damaged: {exc}") from None
    except Exception as exc:  # zstandard.ZstdError
        if type(exc).__module__.startswith("zstandard"):
            raise MalformedPickleError(f"the zstd-compressed data is damaged: {exc}") from None
        raise


def _where_truncated(fd: int, size: int, exc: TruncatedPickleError) -> TruncatedPickleError:
    """A container without its directory: say which member the file ends in."""
    if "no end-of-directory record" not in str(exc):
        return exc
    last = None
    for name, start, stored in _zip.walk_local_headers(fd, size):
        last = (name, start, stored)
        if start + stored > size:
            return TruncatedPickleError(
                f"the mason container is truncated: it ends at byte {size}, inside {name} "
                f"(bytes {start}-{start + stored}); the table and directory that follow are "
                f"missing", size)
    where = f"after {last[0]}" if last else "before its first member"
    return TruncatedPickleError(f"the mason container is truncated: it ends at byte {size}, "
                                f"{where}; its table and directory are missing", size)


# --- torch ---------------------------------------------------------------------------------

def _torch_unpickler(options: dict):
    from .unpickler import Unpickler

    class TorchUnpickler(Unpickler):
        """Resolves a checkpoint's storages through ``storage_for``."""

        storage_for = None

        def persistent_load(self, pid):
            return self.storage_for(pid)

        def find_class(self, module, name):
            # The storages this loader hands out are its own (LoadedStorage), so the storage
            # classes and the functions that take a storage are always its stand-ins, also
            # when the policy (trusted=True, allow=) admits torch's own.
            found = super().find_class(module, name)
            return _checkpoint_plumbing().get(_identity(found), found)

    return TorchUnpickler


_PLUMBING: dict = {}


def _identity(obj):
    try:
        hash(obj)
    except TypeError:
        return None
    return obj


def _checkpoint_plumbing() -> dict:
    """torch's storage classes and storage-taking rebuild functions -> their stand-ins."""
    if not _PLUMBING:
        import importlib

        from . import _torch_checks as tc
        from .presets import TORCH_SUBSTITUTES

        for dotted, stand_in in TORCH_SUBSTITUTES.items():
            if not (isinstance(stand_in, tc.StorageType)
                    or stand_in in (tc.rebuild_tensor_v2, tc.rebuild_qtensor)):
                continue
            module, _, name = dotted.rpartition(".")
            real = getattr(importlib.import_module(module), name, None)
            if real is not None:
                _PLUMBING[real] = stand_in
    return _PLUMBING


def _storage_pid(pid, legacy: bool):
    from ._torch_checks import StorageType

    size = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == size and pid[0] == "storage"):
        raise UnsafeGlobalError(f"persistent id {pid!r:.80} is not a torch storage")
    _, storage_type, key, location, numel = pid[:5]
    if not isinstance(storage_type, StorageType):
        raise UnsafeGlobalError(f"a torch storage of type {storage_type!r:.60}: not one of "
                                f"torch's storage classes")
    if type(key) is not str or type(location) is not str or type(numel) is not int \
            or numel < 0:
        raise UnsafeGlobalError(f"malformed torch storage id {pid!r:.80}")
    if legacy and pid[5] is not None:
        raise UnsafeGlobalError("legacy torch storage views are not supported")
    return storage_type, key, numel


def _itemsize(dtype) -> int:
    return dtype.itemsize


def _load_torch_zip(fd: int, size: int, entries, mmap: bool, verify, options: dict):
    import torch

    from ._torch_checks import LoadedStorage
    from .files import read_into

    pickles = [name for name in entries if name.endswith("/data.pkl") or name == "data.pkl"]
    pickles.sort(key=lambda name: name.count("/"))
    if not pickles:
        raise MalformedPickleError("a zip file that is neither a mason container nor a torch "
                                   "checkpoint (no data.pkl member)")
    prefix = pickles[0][:-len("data.pkl")]
    order = entries.get(prefix + "byteorder")
    if order is not None:
        raw = os.pread(fd, order.size, _zip.data_offset(fd, order, size, "torch checkpoint"))
        if raw.strip() != b"little":
            raise MalformedPickleError(f"a torch checkpoint of byte order {raw!r:.20}: only "
                                       f"little-endian checkpoints are read")
    entry = entries[pickles[0]]
    if entry.method != _zip.STORED:
        raise MalformedPickleError(f"{entry.name} is compressed (zip method {entry.method}):"
                                   f" torch writes it stored")
    start = _zip.data_offset(fd, entry, size, "torch checkpoint")
    data = os.pread(fd, entry.size, start)
    if len(data) != entry.size:
        raise TruncatedPickleError(f"{entry.name} is truncated", start)
    if verify and zlib.crc32(data) != entry.crc:
        raise MalformedPickleError(f"{entry.name} (bytes {start}-{start + entry.size}) is "
                                   f"corrupted: its CRC-32 does not match", start)
    mapped = None
    if mmap and size:
        import mmap as _mmap
        mapped = memoryview(_mmap.mmap(fd, 0, access=_mmap.ACCESS_COPY))
    raw_storages: dict[str, Any] = {}
    typed: dict[tuple[str, Any], LoadedStorage] = {}

    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(1) if verify and not mapped else None
    preloaded: dict[str, memoryview] = {}
    if mapped is None:
        try:
            preloaded = _read_storages(fd, size, entries, prefix, verify, pool)
        except BaseException:
            if pool is not None:
                pool.shutdown()
            raise

    def storage_for(pid):
        storage_type, key, numel = _storage_pid(pid, legacy=False)
        dtype = storage_type.dtype
        found = typed.get((key, dtype))
        if found is not None:
            return found
        raw = raw_storages.get(key)
        if raw is None:
            member = entries.get(f"{prefix}data/{key}")
            if member is None:
                raise MalformedPickleError(f"the checkpoint names storage {key!r}, but has no "
                                           f"member {prefix}data/{key}")
            if member.method != _zip.STORED:
                raise MalformedPickleError(f"storage member {member.name} is compressed")
            nbytes = numel * _itemsize(dtype)
            if member.size != nbytes:
                raise MalformedPickleError(
                    f"storage {member.name} holds {member.size} bytes; the checkpoint says "
                    f"{numel} elements of {dtype} ({nbytes} bytes)")
            begin = _zip.data_offset(fd, member, size, "torch checkpoint")
            if not nbytes:
                raw = torch.empty(0, dtype=torch.uint8)
            elif key in preloaded:
                raw = torch.frombuffer(preloaded[key], dtype=torch.uint8)
            elif mapped is not None:
                raw = torch.frombuffer(mapped[begin:begin + nbytes], dtype=torch.uint8)
            else:
                raw = torch.empty(nbytes, dtype=torch.uint8)
                checker = _Crc() if verify else None
                done = read_into(fd, begin, memoryview(raw.numpy()), checker, pool)
                if done != nbytes:
                    raise TruncatedPickleError(f"storage {member.name} is truncated", begin)
                if checker is not None and checker.crc != member.crc:
                    raise MalformedPickleError(
                        f"storage {member.name} (bytes {begin}-{begin + nbytes}) is "
                        f"corrupted: its CRC-32 does not match", begin)
            raw_storages[key] = raw
        found = typed[(key, dtype)] = LoadedStorage(raw, dtype, key)
        return found

    try:
        unpickler = _torch_unpickler(options)(io.BytesIO(data), **options)
        unpickler.storage_for = storage_for
        return unpickler.load()
    finally:
        if pool is not None:
            pool.shutdown()


def _read_storages(fd: int, size: int, entries, prefix: str, verify, pool) -> dict:
    """Every stored storage member of a torch checkpoint, read as one span (the zip headers
    between them are small) into one aligned allocation, each CRC-32 checked on ``pool`` as
    soon as the read has passed its end: {key: view of its bytes}.  One sequential read,
    one fresh mapping to fault in rather than one per tensor."""
    from .files import _CHUNK, allocate, crc32

    stem = f"{prefix}data/"
    members = [entry for name, entry in entries.items()
               if name.startswith(stem) and "/" not in name[len(stem):]
               and entry.method == _zip.STORED and entry.size]
    if len(members) < 2:
        return {}
    placed = sorted(((_zip.data_offset(fd, m, size, "torch checkpoint"), m) for m in members),
                    key=lambda pair: pair[0])
    start = placed[0][0]
    end = max(begin + m.size for begin, m in placed)
    slab = allocate(end - start)
    views = {m.name[len(stem):]: slab[begin - start:begin - start + m.size]
             for begin, m in placed}

    def check(group):
        for begin, member in group:
            view = views[member.name[len(stem):]]
            if crc32(view) != member.crc:
                raise MalformedPickleError(
                    f"storage {member.name} (bytes {begin}-{begin + member.size}) is "
                    f"corrupted: its CRC-32 does not match", begin)

    pending, done, next_member = [], 0, 0
    while done < end - start:
        got = os.preadv(fd, [slab[done:done + min(_CHUNK, end - start - done)]], start + done)
        if got <= 0:
            break
        done += got
        first = next_member
        while next_member < len(placed) and \
                placed[next_member][0] + placed[next_member][1].size - start <= done:
            next_member += 1
        if verify and pool is not None and next_member > first:
            pending.append(pool.submit(check, placed[first:next_member]))
    if next_member < len(placed):
        begin, member = placed[next_member]
        raise TruncatedPickleError(f"storage {member.name} is truncated: the file ends at "
                                   f"byte {start + done}", start + done)
    for future in pending:
        future.result()
    return views


class _Crc:
    __slots__ = ("crc",)

    def __init__(self):
        self.crc = 0

    def update(self, chunk) -> None:
        from .files import crc32
        self.crc = crc32(chunk, self.crc)


def _load_torch_legacy(file, options: dict):
    import torch

    from ._torch_checks import LoadedStorage, deferred_sparse_checks
    from .unpickler import load

    plain = {k: v for k, v in options.items() if k not in ("policy", "allow", "preset",
                                                          "trusted")}
    if load(file, **plain) != TORCH_MAGIC:
        raise MalformedPickleError("not a torch checkpoint: wrong magic number")
    version = load(file, **plain)
    if version != TORCH_PROTOCOL_VERSION:
        raise MalformedPickleError(f"legacy torch checkpoint of protocol {version!r}")
    info = load(file, **plain)
    if not isinstance(info, dict) or not info.get("little_endian", False):
        raise MalformedPickleError("only little-endian legacy torch checkpoints are read")
    storages: dict[str, Any] = {}
    typed: dict[tuple[str, Any], LoadedStorage] = {}

    def storage_for(pid):
        storage_type, key, numel = _storage_pid(pid, legacy=True)
        dtype = storage_type.dtype
        if (key, dtype) in typed:
            return typed[(key, dtype)]
        if key not in storages:
            # filled from the file after the pickle; every one is checked to be filled
            storages[key] = (torch.empty(numel * _itemsize(dtype), dtype=torch.uint8),
                             _itemsize(dtype))
        typed[(key, dtype)] = LoadedStorage(storages[key][0], dtype, key)
        return typed[(key, dtype)]

    unpickler = _torch_unpickler(options)(file, **options)
    unpickler.storage_for = storage_for
    # the storages are filled after the pickle: sparse indices are checked once they are
    sparse = deferred_sparse_checks()
    with sparse:
        result = unpickler.load()
    keys = load(file, **plain)
    if not isinstance(keys, list) or not all(type(k) is str for k in keys) \
            or set(keys) != set(storages) or len(keys) != len(set(keys)):
        raise MalformedPickleError("the legacy checkpoint's storage list does not match the "
                                   "storages its pickle names")
    for key in keys:
        raw, itemsize = storages[key]
        head = file.read(8)
        if len(head) != 8:
            raise TruncatedPickleError(f"storage {key!r} is missing: the file ends first")
        (numel,) = struct.unpack("<q", head)
        if numel * itemsize != raw.numel():
            raise MalformedPickleError(f"storage {key!r} holds {numel} elements; the pickle "
                                       f"says {raw.numel() // max(itemsize, 1)}")
        view = memoryview(raw.numpy())
        done = file.readinto(view) if raw.numel() else 0
        if done != raw.numel():
            raise TruncatedPickleError(f"storage {key!r} is truncated")
    sparse.check()
    return result


# --- joblib --------------------------------------------------------------------------------

def _names_joblib_wrapper(data) -> bool:
    """Whether the bytes name joblib's NumpyArrayWrapper (searched chunk by chunk: a copy
    of a large file would double the memory a load needs)."""
    needle = b"NumpyArrayWrapper"
    view = memoryview(data)
    step = 1 << 20
    for start in range(0, len(view), step):
        if bytes(view[start:start + step + len(needle)]).find(needle) >= 0:
            return True
    return False


def _load_joblib(data, options: dict):
    """Cut the raw arrays out of a joblib stream, then load it with each wrapper standing
    for its array."""
    import numpy as np

    from . import _numpy_checks as npc
    from .format.machine import Call, Global, simulate
    from .unpickler import loads

    segments = []   # (build offset, data start, data end, dtype, shape, order, nested)

    def hook(target, state, end, stack):
        if not (isinstance(target, Call) and isinstance(target.func, Global)
                and f"{target.func.module}.{target.func.name}" == _JOBLIB_WRAPPER):
            return None
        if target.kind != "NEWOBJ":
            raise ValueError("a NumpyArrayWrapper not made by NEWOBJ")
        if not isinstance(state, dict):
            raise ValueError("a NumpyArrayWrapper's state is not a dict")
        shape, order = state.get("shape"), state.get("order", "C")
        if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape) \
                or order not in ("C", "F"):
            raise ValueError("a NumpyArrayWrapper with a bad shape or order")
        dtype = npc.dtype_of_node(state.get("dtype"))
        pos = end
        if dtype.hasobject:
            run = simulate(data, pos)
            if run.error is not None:
                raise ValueError("the nested pickle of an object array is broken")
            segments.append((end - 1, pos, run.end, dtype, shape, order, True))
            return run.end
        if state.get("numpy_array_alignment_bytes") is not None:
            if pos >= len(data):
                raise ValueError("the array's padding byte is missing")
            pos += 1 + data[pos]
        count = 1
        for n in shape:
            count *= n
        stop = pos + count * dtype.itemsize
        if stop > len(data):
            raise ValueError(f"the array data is cut off at byte {len(data)}")
        segments.append((end - 1, pos, stop, dtype, shape, order, False))
        return stop

    run = simulate(data, 0, after_build=hook)
    if run.error is not None:
        raise MalformedPickleError(f"the joblib file is damaged: {run.error}")
    pieces, arrays, pos = [], [], 0
    for build, start, stop, dtype, shape, order, nested in segments:
        pieces.append(data[pos:build])
        pieces.append(b"0")            # POP the wrapper's state instead of BUILD-ing it
        if nested:
            arrays.append(loads(data[start:stop], **options))
        else:
            count = _count(shape)
            array = np.frombuffer(data, dtype=dtype, count=count, offset=start) \
                if count and dtype.itemsize else np.empty(0, dtype)
            arrays.append(array.reshape(shape, order=order))
        pos = stop
    pieces.append(data[pos:run.end])
    stream = b"".join(pieces)
    queue = iter(arrays)

    class NumpyArrayWrapper:
        """Stands for joblib's wrapper: NEWOBJ of it gives the next array."""

        def __new__(cls, *args):
            try:
                return next(queue)
            except StopIteration:
                raise MalformedPickleError("more NumpyArrayWrapper objects than arrays") \
                    from None

    from .unpickler import Unpickler

    class JoblibUnpickler(Unpickler):
        def find_class(self, module, name):
            if f"{module}.{name}" == _JOBLIB_WRAPPER:
                return NumpyArrayWrapper
            return super().find_class(module, name)

    return JoblibUnpickler(io.BytesIO(stream), **options).load()


def _count(shape) -> int:
    count = 1
    for n in shape:
        count *= n
    return count
