"""The zip layout that mason's container and torch checkpoints share: reading the central
directory and local headers, writing stored (or zstd) members with aligned data, zip64
when a size or offset needs it.  Only what these two formats use; no zipfile import, no
extraction of anything but what the loader asks for, by offset.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from .errors import MalformedPickleError, TruncatedPickleError

__all__ = ["Entry", "read_directory", "data_offset", "LocalWriter", "ZipDamaged",
           "walk_local_headers", "STORED", "ZSTD"]

STORED, ZSTD = 0, 93          # zip methods: 93 is Zstandard (APPNOTE 6.3.7)
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<4sHHHHIIH")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_LOC64 = struct.Struct("<4sIQI")
_LOCAL_SIG, _CENTRAL_SIG = b"PK\x03\x04", b"PK\x01\x02"
_EOCD_SIG, _EOCD64_SIG, _LOC64_SIG = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
_MAX32 = 0xFFFFFFFF
_PAD_ID = 0x6D61            # extra field that pads a member's data to its alignment


class ZipDamaged(MalformedPickleError):
    """Raised (as a MalformedPickleError) when the zip structure itself is broken."""


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    method: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int


def _pread(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def read_directory(fd: int, file_size: int, what: str = "zip file") -> dict[str, Entry]:
    """The central directory: every member by name.  Raises ``TruncatedPickleError`` when
    the end records are missing (a truncated file), ``ZipDamaged`` when they are garbled."""
    tail_size = min(file_size, 65536 + _EOCD.size + _LOC64.size)
    tail = _pread(fd, tail_size, file_size - tail_size)
    at = tail.rfind(_EOCD_SIG)
    if at < 0 or len(tail) - at < _EOCD.size:
        raise TruncatedPickleError(
            f"the {what} has no end-of-directory record: it is truncated (or not a zip); "
            f"{file_size} bytes remain", file_size)
    (_, _, _, _, count, cd_size, cd_offset, _) = _EOCD.unpack_from(tail, at)
    eocd_pos = file_size - tail_size + at
    if (count == 0xFFFF or cd_size == _MAX32 or cd_offset == _MAX32) and at >= _LOC64.size:
        loc = tail[at - _LOC64.size:at]
        if loc[:4] == _LOC64_SIG:
            _, _, eocd64_pos, _ = _LOC64.unpack(loc)
            record = _pread(fd, _EOCD64.size, eocd64_pos)
            if len(record) != _EOCD64.size or record[:4] != _EOCD64_SIG:
                raise ZipDamaged(f"the {what}'s zip64 end record at byte {eocd64_pos} is "
                                 f"damaged", eocd64_pos)
            (_, _, _, _, _, _, _, count, cd_size, cd_offset) = _EOCD64.unpack(record)
            eocd_pos = eocd64_pos
    if cd_offset + cd_size > eocd_pos:
        raise ZipDamaged(f"the {what}'s central directory (bytes {cd_offset}-"
                         f"{cd_offset + cd_size}) overlaps its end record at byte {eocd_pos}",
                         cd_offset)
    raw = _pread(fd, cd_size, cd_offset)
    entries: dict[str, Entry] = {}
    pos = 0
    for _ in range(count):
        if pos + _CENTRAL.size > len(raw) or raw[pos:pos + 4] != _CENTRAL_SIG:
            raise ZipDamaged(f"the {what}'s central directory is damaged at byte "
                             f"{cd_offset + pos}", cd_offset + pos)
        (_, _, _, _, method, _, _, crc, csize, usize, name_len, extra_len, comment_len,
         _, _, _, offset) = _CENTRAL.unpack_from(raw, pos)
        pos += _CENTRAL.size
        name = raw[pos:pos + name_len].decode("utf-8", "replace")
        extra = raw[pos + name_len:pos + name_len + extra_len]
        pos += name_len + extra_len + comment_len
        if _MAX32 in (usize, csize, offset):
            usize, csize, offset = _zip64_fields(extra, usize, csize, offset)
        entries[name] = Entry(name, method, crc, csize, usize, offset)
    return entries


def _zip64_fields(extra: bytes, usize: int, csize: int, offset: int):
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            values = list(struct.unpack_from(f"<{size // 8}Q", extra, pos + 4))
            if usize == _MAX32 and values:
                usize = values.pop(0)
            if csize == _MAX32 and values:
                csize = values.pop(0)
            if offset == _MAX32 and values:
                offset = values.pop(0)
            break
        pos += 4 + size
    return usize, csize, offset


def data_offset(fd: int, entry: Entry, file_size: int, what: str = "zip file") -> int:
    """Where the data of ``entry`` starts, from its local header; checks that it ends
    inside the file."""
    header = _pread(fd, _LOCAL.size, entry.header_offset)
    if len(header) != _LOCAL.size or header[:4] != _LOCAL_SIG:
        raise ZipDamaged(f"the local header of {entry.name} in the {what} (byte "
                         f"{entry.header_offset}) is damaged", entry.header_offset)
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    start = entry.header_offset + _LOCAL.size + name_len + extra_len
    if start + entry.compressed_size > file_size:
        raise TruncatedPickleError(
            f"{entry.name} in the {what} (bytes {start}-{start + entry.compressed_size}) "
            f"runs past the end of the file at byte {file_size}: the file is truncated",
            file_size)
    return start


def walk_local_headers(fd: int, file_size: int):
    """(name, data start, stored size) of each member, read from the local headers alone:
    for saying where a truncated file (no central directory) ends."""
    pos = 0
    while pos + _LOCAL.size <= file_size:
        header = _pread(fd, _LOCAL.size, pos)
        if header[:4] != _LOCAL_SIG:
            return
        fields = _LOCAL.unpack(header)
        csize, usize, name_len, extra_len = fields[7], fields[8], fields[9], fields[10]
        tail = _pread(fd, name_len + extra_len, pos + _LOCAL.size)
        name = tail[:name_len].decode("utf-8", "replace")
        if csize == _MAX32:
            usize, csize, _ = _zip64_fields(tail[name_len:], usize, csize, 0)
        start = pos + _LOCAL.size + name_len + extra_len
        yield name, start, csize
        pos = start + csize


class LocalWriter:
    """Writes members one after the other to a file descriptor, then the directory.

    ``begin(name, size, align)`` writes a local header padded so that the data starts at a
    multiple of ``align`` and returns the data's offset; the caller writes the data, then
    ``end(crc, stored_size, method)`` fixes the header's CRC and sizes in place."""

    def __init__(self, fd: int):
        self.fd = fd
        self.pos = 0
        self.members: list[tuple[str, int, int, int, int, int]] = []
        self._open: tuple[str, int, int] | None = None

    def write(self, data) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.write(self.fd, view[done:])
        self.pos += len(view)

    def begin(self, name: str, size: int, align: int = 1, method: int = STORED) -> int:
        raw = name.encode()
        big = size >= _MAX32 or self.pos >= _MAX32
        extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
        start = self.pos + _LOCAL.size + len(raw) + len(extra)
        if align > 1 and start % align:
            pad = (-(start + 4)) % align
            extra += struct.pack("<HH", _PAD_ID, pad) + bytes(pad)
        header = _LOCAL.pack(_LOCAL_SIG, 45 if big else 20, 0, method, 0, 0x21, 0,
                             _MAX32 if big else size, _MAX32 if big else size,
                             len(raw), len(extra))
        self._open = (name, self.pos, size)
        self.write(header + raw + extra)
        return self.pos

    def end(self, crc: int, stored_size: int, method: int = STORED) -> None:
        name, offset, size = self._open
        self._open = None
        fields = struct.pack("<I", crc)
        os.pwrite(self.fd, fields, offset + 14)
        if stored_size != size:
            if size >= _MAX32 or offset >= _MAX32:
                # zip64: the sizes live in the extra field, after name
                name_len = len(name.encode())
                os.pwrite(self.fd, struct.pack("<QQ", size, stored_size),
                          offset + _LOCAL.size + name_len + 4)
            else:
                os.pwrite(self.fd, struct.pack("<II", stored_size, size), offset + 18)
        self.members.append((name, offset, crc, stored_size, size, method))

    def finish(self) -> None:
        cd_start = self.pos
        parts = []
        for name, offset, crc, csize, usize, method in self.members:
            raw = name.encode()
            big = max(csize, usize, offset) >= _MAX32
            extra = struct.pack("<HHQQQ", 1, 24, usize, csize, offset) if big else b""
            parts.append(_CENTRAL.pack(
                _CENTRAL_SIG, 45 if big else 20, 45 if big else 20, 0, method, 0, 0x21, crc,
                _MAX32 if big else csize, _MAX32 if big else usize, len(raw), len(extra), 0,
                0, 0, 0, _MAX32 if big else offset) + raw + extra)
        directory = b"".join(parts)
        self.write(directory)
        count = len(self.members)
        if count >= 0xFFFF or cd_start >= _MAX32 or len(directory) >= _MAX32:
            eocd64 = self.pos
            self.write(_EOCD64.pack(_EOCD64_SIG, 44, 45, 45, 0, 0, count, count,
                                    len(directory), cd_start))
            self.write(_LOC64.pack(_LOC64_SIG, 0, eocd64, 1))
            self.write(_EOCD.pack(_EOCD_SIG, 0, 0, 0xFFFF, 0xFFFF, _MAX32, _MAX32, 0))
        else:
            self.write(_EOCD.pack(_EOCD_SIG, 0, 0, count, count, len(directory), cd_start, 0))
