"""The stable byte encoding of store keys.

A key is a ``str``, ``bytes`` or ``int``, or a tuple of keys.  Each is written as one tag byte
and a body, so keys of different types never collide (``1``, ``"1"`` and ``b"1"`` are three
keys) and the bytes depend only on the key's value: the same key has the same bytes in every
process, on every machine and in every Python version, which is what lets several processes,
or several machines sharing a Redis server, agree on where a value lives.  No hash is involved.

    str    b"s" + UTF-8 (lone surrogates kept, as "surrogatepass" writes them)
    bytes  b"b" + the bytes
    int    b"i" + the decimal digits, with "-" for negatives (canonical: no "+", no zeros)
    tuple  b"t" + for each item: its encoded length as a varint, then its encoding

``bool`` is refused: ``True == 1`` in a dict, but storing ``True`` and reading back ``1`` (or
the reverse) would surprise more than an error does.  Subclasses of ``str``, ``bytes`` and
``int`` (``IntEnum``, ``StrEnum``...) are stored as their base type and come back as it.
"""

from __future__ import annotations

from typing import Union

__all__ = ["encode_key", "decode_key", "Key"]

Key = Union[str, bytes, int, tuple]

_STR, _BYTES, _INT, _TUPLE = 0x73, 0x62, 0x69, 0x74  # s b i t


def encode_key(key) -> bytes:
    """Return the stable bytes of ``key``; ``TypeError`` for a type a store cannot key on."""
    kind = type(key)
    # Exact types first: this is on the path of every get and put.
    if kind is str:
        return b"s" + key.encode("utf-8", "surrogatepass")
    if kind is bytes:
        return b"b" + key
    if kind is int:
        return b"i%d" % key
    if kind is tuple:
        return _encode_tuple(key)
    if isinstance(key, bool):
        raise TypeError("a store key cannot be a bool: True == 1 in a dict, so the store "
                        "refuses to guess; use the int (1 / 0) or a str key")
    if isinstance(key, str):
        return b"s" + str.__str__(key).encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return b"b" + bytes(key)
    if isinstance(key, int):
        return b"i%d" % int(key)
    if isinstance(key, tuple):
        return _encode_tuple(key)
    raise TypeError(f"a store key must be str, bytes, int or a tuple of those, not "
                    f"{kind.__name__}")


def _encode_tuple(key: tuple) -> bytes:
    parts = [b"t"]
    for item in key:
        body = encode_key(item)
        parts.append(_varint(len(body)))
        parts.append(body)
    return b"".join(parts)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_key(data: bytes):
    """The key whose encoding is ``data`` (the inverse of ``encode_key``)."""
    if not data:
        raise ValueError("an empty key encoding")
    tag = data[0]
    if tag == _STR:
        return data[1:].decode("utf-8", "surrogatepass")
    if tag == _BYTES:
        return bytes(data[1:])
    if tag == _INT:
        return int(data[1:])
    if tag == _TUPLE:
        items = []
        pos, end = 1, len(data)
        while pos < end:
            length, shift = 0, 0
            while True:
                byte = data[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            if pos + length > end:
                raise ValueError("a tuple key encoding is truncated")
            items.append(decode_key(data[pos:pos + length]))
            pos += length
        return tuple(items)
    raise ValueError(f"unknown key tag {tag:#04x}: this store was written by a newer mason, "
                     "or its key column holds something else")
