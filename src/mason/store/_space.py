"""The free space of a store's values file: a map at the file's start, shared by every process
through a writable memory map, and changed only by whoever holds SQLite's write lock.

Why not a table.  A put of a large value used to change three B-tree pages (its row, and the
free list twice: the extent it took and the one it gave back), and each changed page is a
frame written to the WAL: a 100 KB put spent as long committing as writing its bytes.  With
the free list here, the commit writes only the row's page.

The map is a cache of a fact the database holds: every byte of ``[REGION, end)`` that no row's
extent covers is free.  It is kept exact by one rule (an extent goes onto the map only after
the commit that freed it, and only by a holder of the write lock) and rebuilt from the rows
whenever it cannot be trusted:

* ``state`` is set while a holder changes the map: a process killed half-way leaves it set;
* ``boot`` is the machine's boot id: after a power loss neither the map (never fsynced) nor
  the database's last commits (``synchronous=NORMAL``) are to be trusted together;
* ``uid`` names the database the map belongs to (a database recreated beside an old values
  file gets a fresh map).

A rebuild bumps ``gen``.  Extents freed by a commit wait, in their process, until that process
next holds the write lock (or closes the store); each carries the ``gen`` it was freed under,
and one from before a rebuild is dropped, because the rebuild already found it free.  A
process killed between its commit and that moment leaks what it freed until the next rebuild;
nothing is ever free twice, and no live extent is ever free.

Layout (little-endian)::

    0   magic  "mason-sp"          40  gen    u64          56  state  u32
    8   uid    16 bytes            48  end    u64          60  count  u32
    24  boot   16 bytes            64  count x (offset u64, length u64), unordered

``_statements`` (when compiled) has the same ``space_take`` / ``space_give`` in C; these are
their pure-Python twins, held to identical results by the tests.
"""

from __future__ import annotations

import mmap
import os
import struct
import time

__all__ = ["REGION", "SpaceMap", "boot_id", "take", "give"]

REGION = 1 << 20  # the map's bytes at the start of the values file; extents start here
MAGIC = b"mason-sp"
_HEAD = struct.Struct("<8s16s16sQQII")
_U64 = struct.Struct("<Q")
_GEN_AT, _END_AT, _STATE_AT, _COUNT_AT, _ENTRIES_AT = 40, 48, 56, 60, 64
_ENTRY = struct.Struct("<QQ")
CAPACITY = (REGION - _ENTRIES_AT) // _ENTRY.size


def boot_id() -> bytes:
    """16 bytes that change when the machine boots."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return bytes.fromhex(f.read().strip().decode("ascii").replace("-", ""))[:16]
    except (OSError, ValueError):
        # Elsewhere: the boot time to the minute (a clock step of more than that only costs a
        # rebuild).
        booted = int((time.time() - time.monotonic()) // 60)
        return struct.pack("<q8x", booted)


# -- the two operations, shared with _statements' C twins -------------------------------------

def _entries(view) -> list[tuple[int, int]]:
    count = struct.unpack_from("<I", view, _COUNT_AT)[0]
    return [_ENTRY.unpack_from(view, _ENTRIES_AT + i * _ENTRY.size) for i in range(count)]


def _store(view, entries: list[tuple[int, int]]) -> None:
    for i, entry in enumerate(entries):
        _ENTRY.pack_into(view, _ENTRIES_AT + i * _ENTRY.size, *entry)
    struct.pack_into("<I", view, _COUNT_AT, len(entries))


def _merge(view, entries: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent extents merged, and a free tail handed back to ``end``."""
    merged: list[list[int]] = []
    for off, size in sorted(entries):
        if merged and merged[-1][0] + merged[-1][1] == off:
            merged[-1][1] += size
        else:
            merged.append([off, size])
    end = _U64.unpack_from(view, _END_AT)[0]
    if merged and merged[-1][0] + merged[-1][1] == end:
        _U64.pack_into(view, _END_AT, merged.pop()[0])
    return [(off, size) for off, size in merged]


def take(view, need: int) -> int:
    """The offset of ``need`` free bytes: the best fit (split), else after merging, else from
    the end of the file."""
    struct.pack_into("<I", view, _STATE_AT, 1)
    entries = _entries(view)
    for attempt in (0, 1):
        best = -1
        for i, (_, size) in enumerate(entries):
            if size >= need and (best < 0 or size < entries[best][1]):
                best = i
        if best >= 0:
            off, size = entries[best]
            if size > need:
                entries[best] = (off + need, size - need)
            else:
                entries[best] = entries[-1]
                entries.pop()
            break
        if attempt == 0:
            entries = _merge(view, entries)
    else:
        off = _U64.unpack_from(view, _END_AT)[0]
        _U64.pack_into(view, _END_AT, off + need)
    _store(view, entries)
    struct.pack_into("<I", view, _STATE_AT, 0)
    return off


def give(view, freed: list) -> None:
    """Put ``(offset, length, gen)`` extents back; those of another generation than the map's
    are dropped (a rebuild since found them free).  A full map is merged; what still does not
    fit leaks until the next rebuild."""
    gen = _U64.unpack_from(view, _GEN_AT)[0]
    struct.pack_into("<I", view, _STATE_AT, 1)
    entries = _entries(view)
    for off, size, when in freed:
        if when != gen:
            continue
        if len(entries) == CAPACITY:
            entries = _merge(view, entries)
            if len(entries) == CAPACITY:
                break
        entries.append((off, size))
    _store(view, entries)
    struct.pack_into("<I", view, _STATE_AT, 0)


try:
    from ._statements import space_give as give, space_take as take  # noqa: F811
except ImportError:
    pass


class SpaceMap:
    """The map of one values file (open file descriptor ``fd``)."""

    def __init__(self, fd: int):
        if os.fstat(fd).st_size < REGION:
            os.ftruncate(fd, REGION)  # a hole: no disk space until written
        self.map = mmap.mmap(fd, REGION, access=mmap.ACCESS_WRITE)

    def gen(self) -> int:
        return _U64.unpack_from(self.map, _GEN_AT)[0]

    def valid(self, uid: bytes, boot: bytes) -> bool:
        magic, its_uid, its_boot, _, end, state, count = _HEAD.unpack_from(self.map, 0)
        return (magic == MAGIC and its_uid == uid and its_boot == boot and state == 0
                and count <= CAPACITY and end >= REGION)

    def rebuild(self, live: list[tuple[int, int]], uid: bytes, boot: bytes) -> None:
        """Start again from the extents the rows hold: every gap between them is free."""
        gaps, at = [], REGION
        for off, size in sorted(live):
            if off > at:
                gaps.append((at, off - at))
            at = max(at, off + size)
        if len(gaps) > CAPACITY:  # keep the largest; the rest leak until the next rebuild
            gaps = sorted(gaps, key=lambda g: g[1])[-CAPACITY:]
        magic, _, _, gen, _, _, _ = _HEAD.unpack_from(self.map, 0)
        # A new generation (wrapping: a damaged map's may be anything), unlike any before.
        gen = (gen + 1) % (1 << 64) if magic == MAGIC else int.from_bytes(os.urandom(7), "little")
        struct.pack_into("<I", self.map, _STATE_AT, 1)
        _store(self.map, gaps)
        _HEAD.pack_into(self.map, 0, MAGIC, uid, boot, gen, at, 1, len(gaps))
        struct.pack_into("<I", self.map, _STATE_AT, 0)

    def take(self, need: int) -> int:
        return take(self.map, need)

    def give(self, freed: list) -> None:
        give(self.map, freed)

    def free_extents(self) -> list[tuple[int, int]]:
        """``(offset, length)`` of every free extent, by offset (for checks and tests)."""
        return sorted(_entries(self.map))

    def end(self) -> int:
        return _U64.unpack_from(self.map, _END_AT)[0]

    def close(self) -> None:
        try:
            self.map.close()
        except (BufferError, ValueError):
            pass
