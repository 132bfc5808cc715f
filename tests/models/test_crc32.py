"""mason._crc32 gives zlib.crc32's values: every length around the 16- and 64-byte folding
steps, unaligned starts, running values, large buffers and any contiguous buffer."""

import random
import zlib

import pytest

crc = pytest.importorskip("mason._crc32")


def test_same_values_as_zlib_at_every_length_start_and_running_value():
    rng = random.Random(32)
    data = bytes(rng.randrange(256) for _ in range(4096))
    for length in range(0, 600):
        for start in (0, 1, 15):
            piece = data[start:start + length]
            value = rng.randrange(1 << 32)
            assert crc.crc32(piece) == zlib.crc32(piece), (length, start)
            assert crc.crc32(piece, value) == zlib.crc32(piece, value), (length, start)


def test_large_buffers_in_pieces_and_buffer_types():
    rng = random.Random(64)
    block = bytes(rng.randrange(256) for _ in range(1 << 16))
    big = block * 64 + b"tail"
    assert crc.crc32(big) == zlib.crc32(big)
    running = 0
    for at in range(0, len(big), 100_003):
        running = crc.crc32(memoryview(big)[at:at + 100_003], running)
    assert running == zlib.crc32(big)
    assert crc.crc32(bytearray(b"abc")) == zlib.crc32(b"abc")
    with pytest.raises(BufferError):
        crc.crc32(memoryview(big)[::2])
    with pytest.raises(TypeError):
        crc.crc32("text")


def test_the_container_uses_a_fast_crc_when_the_cpu_has_one():
    from mason import files
    if crc.HARDWARE:
        assert files.FAST_CRC32
    assert files.crc32(b"x" * 1000) == zlib.crc32(b"x" * 1000)
