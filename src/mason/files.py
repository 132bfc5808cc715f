"""The file container for objects with large buffers, and ``load`` of a whole file by path.

``mason.dump(obj, path)`` writes one file that holds the pickle stream and, beside it, every
large buffer of the object (numpy arrays, torch tensors, anything that gives protocol 5 a
``PickleBuffer``), each aligned to 64 bytes so that it can be memory-mapped in place.
``mason.load(path, mmap=True)`` returns arrays that are views of the file, without reading
their data; ``mason.load(path)`` reads each buffer once, straight into the memory the array
keeps.

The file is a zip archive of stored members, as torch checkpoints and ``.npz`` files are, so
``unzip -l`` lists it and any zip tool extracts it::

    .mason          "mason container" and the format version: the magic, first in the file
    data.pkl        the pickle stream (protocol 5), buffers out of band
    buffers/0 ...   one member per buffer, data aligned to 64 bytes
    table.json      the table: format version, protocol, checksum algorithm, compression,
                    and for the pickle and each buffer its offset, size, checksum, whether
                    it was read-only and whether it must be writable (torch tensors)
    (central directory, zip64 records when a size or offset needs them)

Checksums: every member carries the CRC-32 that zip requires; the table also carries an
XXH3-64 of the pickle and of each buffer (when the ``xxhash`` package is installed when the
file is written; otherwise the table's checksums are the CRC-32s), which a load checks
before it unpickles anything.  A memory-mapped load checks the table and the pickle, not the
buffers (that would read them; ``verify="full"`` does).  A truncated or altered file raises
a ``MalformedPickleError`` (``TruncatedPickleError`` for a truncation) that names the damaged
part, and no object is returned.

Options: ``compress="zstd"`` compresses each member with Zstandard (zip method 93; needs the
``zstandard`` package; such a file is read, not mapped); ``key=`` signs the file: the table
then also holds the SHA-256 of every part and an HMAC-SHA256 of the table, and
``mason.load(path, key=...)`` verifies all of it before anything is unpickled (and then
loads trusted, as signed pickles do, unless a policy is given).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import mmap as _mmap
import os
import pickle
import stat
import sys
import tempfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import _zip
from .errors import MalformedPickleError, SignatureError, TruncatedPickleError

__all__ = ["dump", "load", "MAGIC", "FORMAT_VERSION", "ALIGNMENT"]

MAGIC_NAME = ".mason"
MAGIC = b"mason container\n"
FORMAT_VERSION = 1
ALIGNMENT = 64
PICKLE_NAME = "data.pkl"
TABLE_NAME = "table.json"
_CHUNK = 8 << 20
_SIGN_CONTEXT = b"mason signed container\0"


# --- checksums -----------------------------------------------------------------------------

def _fast_crc32():
    """zlib's CRC-32, computed as fast as this installation can: ISA-L's (the ``isal``
    package) when it is installed, else mason's own with the CPU's carry-less multiply
    (``mason._crc32``, four times zlib's speed), else zlib's.  The same values, always."""
    try:
        from isal.isal_zlib import crc32
        return crc32, True
    except ImportError:
        pass
    try:
        from ._crc32 import HARDWARE, crc32
    except ImportError:
        HARDWARE = False
    if HARDWARE:
        return crc32, True
    return zlib.crc32, False


crc32, FAST_CRC32 = _fast_crc32()


def _xxhash():
    try:
        import xxhash
    except ImportError:
        return None
    return xxhash


class _Hasher:
    """The CRC-32 that zip needs, plus the table's checksum (XXH3-64 or CRC-32) and, when
    signing, a SHA-256."""

    __slots__ = ("crc", "xxh", "sha")

    def __init__(self, algorithm: str, sign: bool):
        self.crc = 0
        self.xxh = _xxhash().xxh3_64() if algorithm == "xxh3_64" else None
        self.sha = hashlib.sha256() if sign else None

    def update(self, chunk) -> None:
        self.crc = crc32(chunk, self.crc)
        if self.xxh is not None:
            self.xxh.update(chunk)
        if self.sha is not None:
            self.sha.update(chunk)

    def checksum(self) -> str:
        return self.xxh.hexdigest() if self.xxh is not None else f"{self.crc:08x}"


class _Checker:
    """Computes the table's checksum (and SHA-256 when verifying a signature) of data read
    back."""

    __slots__ = ("algorithm", "state", "sha")

    def __init__(self, algorithm: str, sign: bool):
        self.algorithm = algorithm
        if algorithm == "xxh3_64":
            xxhash = _xxhash()
            if xxhash is None:
                raise MalformedPickleError(
                    "this container's checksums are XXH3-64: install the 'xxhash' package "
                    "to verify them, or load with verify=False")
            self.state = xxhash.xxh3_64()
        elif algorithm == "crc32":
            self.state = 0
        else:
            raise MalformedPickleError(f"unknown checksum algorithm {algorithm!r} in the "
                                       f"container's table")
        self.sha = hashlib.sha256() if sign else None

    def update(self, chunk) -> None:
        if self.algorithm == "crc32":
            self.state = crc32(chunk, self.state)
        else:
            self.state.update(chunk)
        if self.sha is not None:
            self.sha.update(chunk)

    def checksum(self) -> str:
        return self.state.hexdigest() if self.algorithm != "crc32" else f"{self.state:08x}"


# --- writing -------------------------------------------------------------------------------

def _pickle_with_buffers(obj, protocol: int, fix_imports: bool, by_value: bool):
    """The pickle of ``obj`` with its buffers out of band: (stream, [(view, writable)])."""
    from . import arrays
    from .pickler import Pickler

    buffers: list[tuple[memoryview, bool]] = []
    writable_ids: set[int] = set()
    table = arrays.dispatch_table(protocol=protocol)
    torch = sys.modules.get("torch")
    if torch is not None:
        def tensor(obj, _reduce=table[torch.Tensor]):
            reduced = _reduce(obj)
            if reduced[0] is arrays.rebuild_tensor_view:
                # torch has no read-only tensors: a mapped load must give this storage
                # writable (copy-on-write) memory
                writable_ids.add(id(reduced[1][0].buffer))
            return reduced
        table[torch.Tensor] = table[torch.nn.Parameter] = tensor

    def collect(buffer: pickle.PickleBuffer):
        raw = buffer.raw()
        buffers.append((raw, id(buffer) in writable_ids))
        return False   # out of band

    stream = io.BytesIO()
    pickler = Pickler(stream, protocol, fix_imports=fix_imports, buffer_callback=collect,
                      by_value=by_value)
    pickler.dispatch_table = table
    pickler.dump(obj)
    return stream.getbuffer(), buffers


def dump(obj: Any, path, protocol: int = 5, *, compress: str | None = None, level: int = 3,
         key=None, fix_imports: bool = True, by_value: bool = True) -> None:
    """Write ``obj`` to the file ``path`` as a mason container (see the module docstring).

    The file is written beside its final name and renamed into place when complete, so a
    reader never sees half a file.  ``compress``: None or "zstd"; ``level``: its level.
    ``key``: sign the file (bytes or str of at least 16 bytes).
    """
    if protocol < 5:
        raise ValueError("a container needs protocol 5 (out-of-band buffers)")
    if compress not in (None, "zstd"):
        raise ValueError(f"compress must be None or 'zstd', not {compress!r}")
    compressor = None
    if compress == "zstd":
        try:
            import zstandard
        except ImportError:
            raise ImportError("compress='zstd' needs the 'zstandard' package") from None
        compressor = zstandard.ZstdCompressor(level=level)
    sign_key = None
    if key is not None:
        from .signing import _key_bytes
        sign_key = _key_bytes(key)
    stream, buffers = _pickle_with_buffers(obj, protocol, fix_imports, by_value)
    # The table's checksum: the CRC-32 that zip needs anyway when it is fast (ISA-L),
    # else XXH3-64 when xxhash is there (a second, cheap pass), else the CRC-32.
    algorithm = "xxh3_64" if not FAST_CRC32 and _xxhash() is not None else "crc32"
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    old = _open_replaced(path)
    try:
        fd, temp = tempfile.mkstemp(prefix=".mason-", suffix=".tmp", dir=directory)
    except BaseException:
        _release(old)
        raise
    try:
        writer = _zip.LocalWriter(fd)
        with ThreadPoolExecutor(1) as pool:
            head = MAGIC + f"version {FORMAT_VERSION}\n".encode()
            writer.begin(MAGIC_NAME, len(head))
            writer.write(head)
            writer.end(zlib.crc32(head), len(head))
            parts = []
            for index, (name, view, writable) in enumerate(
                    [(PICKLE_NAME, memoryview(stream), False)]
                    + [(f"buffers/{i}", view, writable)
                       for i, (view, writable) in enumerate(buffers)]):
                entry = _write_member(writer, pool, name, view, algorithm, sign_key is not None,
                                      compressor)
                if index:
                    entry["readonly"] = bool(view.readonly)
                    entry["writable"] = writable
                parts.append(entry)
            table = {
                "format": "mason", "version": FORMAT_VERSION, "protocol": protocol,
                "checksum": algorithm, "compression": compress, "alignment": ALIGNMENT,
                "pickle": parts[0], "buffers": parts[1:],
            }
            if sign_key is not None:
                from .signing import key_id
                table["signature"] = {
                    "algorithm": "hmac-sha256", "key_id": key_id(sign_key),
                    "mac": _table_mac(sign_key, table)}
            raw_table = json.dumps(table, separators=(",", ":")).encode()
            writer.begin(TABLE_NAME, len(raw_table))
            writer.write(raw_table)
            writer.end(zlib.crc32(raw_table), len(raw_table))
            writer.finish()
        os.close(fd)
        fd = -1
        os.replace(temp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    finally:
        del stream
        _release(old)


def _open_replaced(path: str) -> int:
    """The file that ``path`` names before a dump replaces it (-1 if none), held open so
    that ``_release`` can free it after the rename, with its cached pages dropped now.

    Writing a large file needs as many fresh page-cache pages as it has; while the old file
    keeps its own, those come from memory the kernel (in a virtual machine, the host) must
    first hand out, and the write runs at half speed or worse.  Dropping the old file's
    clean pages first (``POSIX_FADV_DONTNEED``) lets the new file reuse them, as
    ``open(path, "wb")`` does by truncating.  The old file stays whole on disk until the
    rename: a reader still gets all of it, from disk; mapped pages are not dropped."""
    try:
        # Never block or follow a link here: whatever is at ``path`` (a FIFO planted in a
        # cache directory, say) is only being replaced.
        old = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                      | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return -1
    try:
        if stat.S_ISREG(os.fstat(old).st_mode) and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(old, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass   # only a hint
    return old


def _release(old: int) -> None:
    """Close the replaced file on another thread: freeing a large file's blocks (with
    discard, waiting for its writeback) takes the kernel about as long as writing it, and
    the caller need not wait for it (the open descriptor keeps the old file alive until
    it is closed)."""
    if old >= 0:
        threading.Thread(target=os.close, args=(old,), name="mason-release",
                         daemon=True).start()


def _table_mac(key: bytes, table: dict) -> str:
    unsigned = {k: v for k, v in table.items() if k != "signature"}
    body = json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, _SIGN_CONTEXT + body, hashlib.sha256).hexdigest()


def _write_and_hash(writer, hasher, chunk) -> None:
    writer.write(chunk)
    if hasher.xxh is not None:
        hasher.xxh.update(chunk)
    if hasher.sha is not None:
        hasher.sha.update(chunk)


def _write_member(writer, pool, name: str, view: memoryview, algorithm: str, sign: bool,
                  compressor) -> dict:
    """Write one member; while a chunk is being written (the write releases the GIL), the
    checksums of the next run on this thread."""
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    size = view.nbytes
    hasher = _Hasher(algorithm, sign)
    if compressor is not None:
        for start in range(0, size, _CHUNK):
            hasher.update(view[start:start + _CHUNK])
        packed = compressor.compress(view)
        offset = writer.begin(name, size, ALIGNMENT, _zip.ZSTD)
        writer.write(packed)
        stored = len(packed)
        writer.end(hasher.crc, stored, _zip.ZSTD)
    else:
        offset = writer.begin(name, size, ALIGNMENT)
        # The CRC-32 (the slow one) runs here while the other thread writes the chunk and
        # updates the fast checksums: zlib.crc32 and the write both release the GIL.
        pending = None
        crc = 0
        for start in range(0, size, _CHUNK):
            chunk = view[start:start + _CHUNK]
            if pending is not None:
                pending.result()
            pending = pool.submit(_write_and_hash, writer, hasher, chunk)
            crc = crc32(chunk, crc)
        if pending is not None:
            pending.result()
        hasher.crc = crc
        stored = size
        writer.end(crc, stored)
    entry = {"offset": offset, "size": size, "stored_size": stored,
             "checksum": hasher.checksum()}
    if sign:
        entry["sha256"] = hasher.sha.hexdigest()
    return entry


# --- reading -------------------------------------------------------------------------------

def load(path, *, mmap: bool = False, verify: bool | str = True, fix_imports: bool = True,
         encoding: str = "ASCII", errors: str = "strict", allow=None, policy=None,
         trusted: bool = False, renames=None, limits=None, key=None, preset=None) -> Any:
    """Load the object in the file at ``path``, detecting its format by content.

    mason container, pickle (one object, as ``pickle.load``), torch checkpoint (zip or
    legacy; loaded without torch's loader, under the ``torch`` preset unless a policy is
    given), joblib file, numpy ``.npy`` / ``.npz`` (a dict of arrays), and any of these
    compressed with gzip, zstd, bz2, xz or zlib.

    ``mmap=True``: a container's (or torch zip's) buffers become views of the file, mapped
    copy-on-write: numpy arrays read-only, torch tensors writable without touching the
    file; a plain ``.npy`` array is mapped read-only.  ``verify``: True checks the checksums of what is read (for a mapped file: the
    table and the pickle), "full" also the mapped buffers, False nothing.
    """
    from ._containers_read import load_path
    return load_path(os.fspath(path), mmap=mmap, verify=verify, options=dict(
        fix_imports=fix_imports, encoding=encoding, errors=errors, allow=allow,
        policy=policy, trusted=trusted, renames=renames, limits=limits, preset=preset),
        key=key)


def is_container(head: bytes) -> bool:
    """Whether a file starting with ``head`` (at least 40 bytes) is a mason container."""
    return head[:4] == b"PK\x03\x04" and head[30:30 + len(MAGIC_NAME)] == MAGIC_NAME.encode()


def allocate(size: int) -> memoryview:
    """Uninitialised writable memory for a buffer that a read fills completely (numpy's
    empty when numpy is there: a bytearray would be zero-filled first, a second pass),
    starting at a multiple of 64 bytes."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        try:
            import numpy
        except ImportError:
            return memoryview(bytearray(size))
    raw = numpy.empty(size + ALIGNMENT, numpy.uint8)
    skip = -raw.ctypes.data % ALIGNMENT
    return memoryview(raw[skip:skip + size])


def read_into(fd: int, offset: int, view: memoryview, checker=None, pool=None) -> int:
    """Fill ``view`` from ``fd`` at ``offset``, chunk by chunk; while the next chunk is
    read (the read releases the GIL), the checksum of the last one runs on ``pool``.
    Returns the number of bytes read (less than asked when the file ends)."""
    size = view.nbytes
    done = 0
    pending = None
    while done < size:
        want = min(_CHUNK, size - done)
        got = os.preadv(fd, [view[done:done + want]], offset + done)
        if got <= 0:
            break
        if checker is not None:
            chunk = view[done:done + got]
            if pending is not None:
                pending.result()
            pending = pool.submit(checker.update, chunk) if pool is not None else None
            if pool is None:
                checker.update(chunk)
        done += got
    if pending is not None:
        pending.result()
    return done


def load_container(fd: int, file_size: int, *, mmap: bool, verify, key, options: dict):
    """Load a mason container open on ``fd``: verify, read or map, then unpickle."""
    entries = _zip.read_directory(fd, file_size, "mason container")
    table = _read_table(fd, file_size, entries)
    version = table.get("version")
    if version != FORMAT_VERSION:
        raise MalformedPickleError(f"mason container of format version {version!r}: this "
                                   f"mason reads version {FORMAT_VERSION}")
    keys = None
    if key is not None:
        keys = _verify_table_signature(table, key)
    algorithm = table.get("checksum", "crc32")
    compression = table.get("compression")
    if compression not in (None, "zstd"):
        raise MalformedPickleError(f"mason container compressed with {compression!r}")
    parts = [("the pickle stream (data.pkl)", table["pickle"])] + [
        (f"buffer {i} (buffers/{i})", entry) for i, entry in enumerate(table["buffers"])]
    for what, entry in parts:
        end = entry["offset"] + entry["stored_size"]
        if entry["offset"] < 0 or end > file_size:
            raise TruncatedPickleError(
                f"{what} at bytes {entry['offset']}-{end} runs past the end of the file "
                f"(byte {file_size}): the file is truncated", file_size)
    signed = keys is not None
    check = bool(verify) or signed
    decompressor = None
    if compression == "zstd":
        try:
            import zstandard
        except ImportError:
            raise ImportError("this container is compressed with zstd: install the "
                              "'zstandard' package to read it") from None
        decompressor = zstandard.ZstdDecompressor()
    mapped = None
    if mmap and decompressor is None and file_size:
        mapped = memoryview(_mmap.mmap(fd, 0, access=_mmap.ACCESS_COPY))
    with ThreadPoolExecutor(1) as pool:
        stream = _read_part(fd, parts[0], None, check, algorithm, signed, decompressor, pool)
        buffers = []
        if mapped is None and decompressor is None and len(parts) > 2:
            # Many buffers: read them as one span (the zip headers between them are a few
            # dozen bytes each) into one allocation, which each array then views.  One
            # sequential read, and one fresh mapping for the kernel to fault in rather
            # than one per array: for a state dict of many arrays, most of the cost of a
            # load is the kernel handing out fresh pages.
            buffers = _read_span(fd, parts[1:], check, algorithm, signed, pool)
        for what, entry in parts[1 + len(buffers):]:
            if mapped is not None:
                view = mapped[entry["offset"]:entry["offset"] + entry["size"]]
                if check and (verify == "full" or signed):
                    _check_view(view, what, entry, algorithm, signed)
                if not entry.get("writable"):
                    view = view.toreadonly()
            else:
                view = _read_part(fd, (what, entry), None, check, algorithm, signed,
                                  decompressor, pool)
                if entry.get("readonly") and not entry.get("writable"):
                    view = view.toreadonly()
            buffers.append(view)
    from .unpickler import loads
    options = dict(options)
    if signed and options.get("allow") is None and options.get("policy") is None \
            and options.get("preset") is None:
        options["trusted"] = True   # a verified signature: only the key holder wrote it
    return loads(stream, buffers=buffers, **options)


def _read_table(fd: int, file_size: int, entries) -> dict:
    entry = entries.get(TABLE_NAME)
    if entry is None:
        raise MalformedPickleError(f"the mason container has no {TABLE_NAME}: its table "
                                   f"is missing")
    start = _zip.data_offset(fd, entry, file_size, "mason container")
    raw = os.pread(fd, entry.compressed_size, start)
    if len(raw) != entry.size or zlib.crc32(raw) != entry.crc:
        raise MalformedPickleError(f"the container's table ({TABLE_NAME}, bytes {start}-"
                                   f"{start + entry.compressed_size}) is corrupted: its "
                                   f"CRC-32 does not match", start)
    try:
        table = json.loads(raw)
        for part in [table["pickle"], *table["buffers"]]:
            for field in ("offset", "size", "stored_size"):
                if type(part[field]) is not int or part[field] < 0:
                    raise ValueError(field)
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedPickleError(f"the container's table ({TABLE_NAME}) is not a valid "
                                   f"table: {exc}", start) from None
    return table


def _verify_table_signature(table: dict, key) -> list:
    from .signing import _keys
    keys = _keys(key)
    signature = table.get("signature")
    if not isinstance(signature, dict) or "mac" not in signature:
        raise SignatureError("this container is not signed, but key= was given: it may have "
                             "been replaced by an unsigned one")
    for candidate in keys:
        if hmac.compare_digest(_table_mac(candidate, table), str(signature["mac"])):
            return [candidate]
    raise SignatureError("the container's signature does not verify: the file was altered, "
                         "or signed with another key")


def _read_span(fd, parts, check, algorithm, signed, pool) -> list:
    """Read the buffers ``parts`` (stored, in file order) with one sequential read into one
    64-byte aligned allocation; each buffer's checksum runs on ``pool`` as soon as the read
    has passed its end."""
    start = parts[0][1]["offset"]
    end = max(entry["offset"] + entry["size"] for _, entry in parts)
    slab = allocate(end - start)
    views = [slab[entry["offset"] - start:entry["offset"] - start + entry["size"]]
             for _, entry in parts]
    pending = []
    next_part = 0
    done = 0
    while done < end - start:
        want = min(_CHUNK, end - start - done)
        got = os.preadv(fd, [slab[done:done + want]], start + done)
        if got <= 0:
            break
        done += got
        first = next_part
        while next_part < len(parts) and \
                parts[next_part][1]["offset"] + parts[next_part][1]["size"] - start <= done:
            next_part += 1
        if check and next_part > first:
            pending.append(pool.submit(_check_parts, parts[first:next_part],
                                       views[first:next_part], algorithm, signed))
    if next_part < len(parts):
        what, entry = parts[next_part]
        raise TruncatedPickleError(
            f"{what} is truncated: the file ends at byte {start + done}, inside it (bytes "
            f"{entry['offset']}-{entry['offset'] + entry['size']})", start + done)
    for future in pending:
        future.result()   # raises the first mismatch
    return views


def _check_parts(parts, views, algorithm, signed) -> None:
    for (what, entry), view in zip(parts, views):
        _check_view(view, what, entry, algorithm, signed)


def _read_part(fd, part, into, check, algorithm, signed, decompressor, pool) -> memoryview:
    what, entry = part
    size, stored = entry["size"], entry["stored_size"]
    checker = _Checker(algorithm, signed) if check else None
    if decompressor is not None:
        packed = os.pread(fd, stored, entry["offset"])
        if len(packed) != stored:
            raise TruncatedPickleError(f"{what} is truncated", entry["offset"])
        view = allocate(size) if into is None else into
        try:
            with decompressor.stream_reader(packed) as reader:
                done = 0
                while done < size:
                    got = reader.readinto(view[done:])
                    if not got:
                        break
                    done += got
        except Exception as exc:
            raise MalformedPickleError(f"{what} does not decompress: {exc}",
                                       entry["offset"]) from None
        if done != size:
            raise MalformedPickleError(f"{what} decompresses to {done} bytes, not {size}",
                                       entry["offset"])
        if checker is not None:
            checker.update(view)
    else:
        view = allocate(size) if into is None else into
        done = read_into(fd, entry["offset"], view, checker, pool)
        if done != size:
            raise TruncatedPickleError(
                f"{what} is truncated: {done} of its {size} bytes are in the file",
                entry["offset"] + done)
    if checker is not None:
        _compare(checker, what, entry)
    return view


def _check_view(view, what, entry, algorithm, signed) -> None:
    checker = _Checker(algorithm, signed)
    for start in range(0, view.nbytes, _CHUNK):
        checker.update(view[start:start + _CHUNK])
    _compare(checker, what, entry)


def _compare(checker, what: str, entry: dict) -> None:
    if checker.checksum() != entry.get("checksum"):
        raise MalformedPickleError(
            f"{what} at bytes {entry['offset']}-{entry['offset'] + entry['stored_size']} is "
            f"corrupted: its {checker.algorithm} checksum does not match the table's",
            entry["offset"])
    if checker.sha is not None and not hmac.compare_digest(
            checker.sha.hexdigest(), str(entry.get("sha256", ""))):
        raise SignatureError(f"{what} was altered after the container was signed")
