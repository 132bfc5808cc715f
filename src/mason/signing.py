"""Signed envelopes: a pickle with an HMAC-SHA256 that ``loads(data, key=...)`` verifies
before a single opcode of it runs.  A verified signature permits trusted loading (the
signer's code and classes load), since only a holder of the key could have made it.

The envelope is itself a tiny standard pickle, laid out byte for byte (no pickler makes it)::

    PROTO 4
    SHORT_BINUNICODE 'mason.signing'  SHORT_BINUNICODE 'signed'  STACK_GLOBAL
    SHORT_BINBYTES  header (12 bytes): b"MS", format version, algorithm, key id (8 bytes)
    BINBYTES8       payload: the signed pickle
    SHORT_BINBYTES  mac (32 bytes): HMAC-SHA256(key, context + header + len + payload)
    TUPLE3 REDUCE STOP

so that whatever loads it without the key says what it is: mason's safe ``loads`` and a
trusted one both reach ``mason.signing.signed``, which raises ``SignatureError`` ("this
pickle is signed; pass key="), and so does the standard library's ``pickle.loads``.

Keys are bytes (or str, encoded as UTF-8), at least 16 bytes long.  The key id is derived
from the key (the first 8 bytes of a domain-separated SHA-256), names which key signed
without revealing it, and lets ``loads`` pick the right key from several (rotation:
``key=[new, old]``).  The comparison of MACs is constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable

from .errors import SignatureError
from .format.opcodes import BY_NAME

__all__ = ["seal", "open_envelope", "read_envelope", "is_signed", "key_id", "signed",
           "ENVELOPE_VERSION", "MIN_KEY_SIZE"]

ENVELOPE_VERSION = 1
ALG_HMAC_SHA256 = 1
MIN_KEY_SIZE = 16
_MAC_SIZE = 32
_MAGIC = b"MS"
# Domain separation: a MAC over a mason envelope is never valid for anything else.
_CONTEXT = b"mason signed pickle\0"


def _op(name: str) -> bytes:
    return BY_NAME[name].char


def _short_str(text: str) -> bytes:
    raw = text.encode()
    return _op("SHORT_BINUNICODE") + bytes([len(raw)]) + raw


_HEADER_SIZE = len(_MAGIC) + 2 + 8
_PREFIX = (_op("PROTO") + bytes([4]) + _short_str("mason.signing") + _short_str("signed")
           + _op("STACK_GLOBAL") + _op("SHORT_BINBYTES") + bytes([_HEADER_SIZE]))
_PAYLOAD_OP = _op("BINBYTES8")
_MAC_OP = _op("SHORT_BINBYTES") + bytes([_MAC_SIZE])
_SUFFIX = _op("TUPLE3") + _op("REDUCE") + _op("STOP")
_HEAD_SIZE = len(_PREFIX) + _HEADER_SIZE + len(_PAYLOAD_OP) + 8
_TAIL_SIZE = len(_MAC_OP) + _MAC_SIZE + len(_SUFFIX)


def _key_bytes(key) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"a signing key is bytes or str, not {type(key).__name__}")
    key = bytes(key)
    if len(key) < MIN_KEY_SIZE:
        raise ValueError(f"a signing key must be at least {MIN_KEY_SIZE} bytes long "
                         f"(got {len(key)}); use e.g. secrets.token_bytes(32)")
    return key


def key_id(key) -> str:
    """The id of ``key`` as written in envelopes (16 hex digits)."""
    return _key_id(_key_bytes(key)).hex()


def _key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"mason key id\0" + key).digest()[:8]


def _mac(key: bytes, header: bytes, payload) -> bytes:
    mac = hmac.new(key, _CONTEXT, hashlib.sha256)
    mac.update(header)
    mac.update(struct.pack("<Q", len(payload)))
    mac.update(payload)
    return mac.digest()


def seal(data, key) -> bytes:
    """Wrap the pickle ``data`` in an envelope signed with ``key``."""
    key = _key_bytes(key)
    header = _MAGIC + bytes([ENVELOPE_VERSION, ALG_HMAC_SHA256]) + _key_id(key)
    return b"".join((_PREFIX, header, _PAYLOAD_OP, struct.pack("<Q", len(data)), data,
                     _MAC_OP, _mac(key, header, data), _SUFFIX))


def is_signed(data) -> bool:
    """Whether ``data`` starts like a mason envelope (says nothing of its validity)."""
    return bytes(data[:len(_PREFIX) + len(_MAGIC)]) == _PREFIX + _MAGIC


def _keys(key) -> list[bytes]:
    if isinstance(key, (bytes, bytearray, memoryview, str)):
        return [_key_bytes(key)]
    if isinstance(key, Iterable):
        keys = [_key_bytes(k) for k in key]
        if keys:
            return keys
    raise TypeError("key= takes a key (bytes or str) or a list of keys")


def _parse_head(head) -> tuple[bytes, int]:
    """Check the fixed part of an envelope; return (header, payload length)."""
    if len(head) < len(_PREFIX) + len(_MAGIC) or not is_signed(head):
        raise SignatureError(
            "the data is not signed: a key was given, and only a signed pickle (made with "
            "mason.dumps(obj, key=...)) loads with one")
    if len(head) < _HEAD_SIZE:
        raise SignatureError(f"the signed envelope is truncated: {len(head)} bytes, its "
                             f"header alone takes {_HEAD_SIZE}")
    header = bytes(head[len(_PREFIX):len(_PREFIX) + _HEADER_SIZE])
    version, alg = header[2], header[3]
    if version != ENVELOPE_VERSION:
        raise SignatureError(f"the signed envelope has format version {version}; this "
                             f"mason reads version {ENVELOPE_VERSION}")
    if alg != ALG_HMAC_SHA256:
        raise SignatureError(f"the signed envelope uses algorithm {alg}, which this mason "
                             "does not know")
    if bytes(head[len(_PREFIX) + _HEADER_SIZE:_HEAD_SIZE - 8]) != _PAYLOAD_OP:
        raise SignatureError("the signed envelope is malformed (no payload where expected)")
    (length,) = struct.unpack("<Q", head[_HEAD_SIZE - 8:_HEAD_SIZE])
    return header, length


def _verify(header: bytes, payload, tail, keys: list[bytes]) -> None:
    if bytes(tail[:len(_MAC_OP)]) != _MAC_OP or bytes(tail[-len(_SUFFIX):]) != _SUFFIX:
        raise SignatureError("the signed envelope is malformed (no signature where expected)")
    mac = bytes(tail[len(_MAC_OP):len(_MAC_OP) + _MAC_SIZE])
    signer = header[4:12]
    matching = [k for k in keys if hmac.compare_digest(_key_id(k), signer)]
    if not matching:
        given = ", ".join(_key_id(k).hex() for k in keys)
        raise SignatureError(f"the pickle was signed with key id {signer.hex()}, not with the "
                             f"key given (key id {given}): wrong key")
    for k in matching:
        if hmac.compare_digest(_mac(k, header, payload), mac):
            return
    raise SignatureError("the signature does not match: the signed pickle was altered after "
                         "it was signed (or signed with a different key of the same id)")


def open_envelope(data, key) -> memoryview:
    """Verify the envelope ``data`` with ``key`` (or any of a list of keys) and return the
    signed pickle inside it.  Raises ``SignatureError`` when ``data`` is not an envelope, is
    truncated or altered, or was signed with another key."""
    keys = _keys(key)
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    header, length = _parse_head(view[:_HEAD_SIZE])
    end = _HEAD_SIZE + length
    if len(view) < end + _TAIL_SIZE:
        raise SignatureError(f"the signed envelope is truncated: it declares a pickle of "
                             f"{length} bytes and ends {end + _TAIL_SIZE - len(view)} "
                             "bytes early")
    if len(view) > end + _TAIL_SIZE:
        raise SignatureError(f"{len(view) - end - _TAIL_SIZE} unexpected bytes follow the "
                             "signed envelope")
    payload = view[_HEAD_SIZE:end]
    _verify(header, payload, view[end:end + _TAIL_SIZE], keys)
    return payload


def read_envelope(file, key) -> bytes:
    """Read one envelope from a binary file, verify it and return the pickle inside.  Leaves
    the file just after the envelope."""
    keys = _keys(key)
    head = _read_exactly(file, _HEAD_SIZE)
    header, length = _parse_head(head)
    payload = _read_exactly(file, length)
    if len(payload) < length:
        raise SignatureError(f"the signed envelope is truncated: it declares a pickle of "
                             f"{length} bytes and the file holds {len(payload)}")
    tail = _read_exactly(file, _TAIL_SIZE)
    if len(tail) < _TAIL_SIZE:
        raise SignatureError("the signed envelope is truncated: its signature is missing")
    _verify(header, payload, tail, keys)
    return payload


def _read_exactly(file, n: int) -> bytes:
    """Up to ``n`` bytes, in bounded chunks: a lying length costs no more than the file."""
    chunks = []
    remaining = n
    while remaining > 0:
        chunk = file.read(min(remaining, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def signed(header=b"", payload=b"", mac=b""):
    """The global an envelope names.  Loading an envelope without its key reaches it, and it
    says what to do; it never returns."""
    signer = bytes(header[4:12]).hex() if isinstance(header, (bytes, bytearray)) else "?"
    raise SignatureError(
        f"this pickle is signed (HMAC-SHA256, key id {signer}): load it with its key, "
        "mason.loads(data, key=...) or mason.load(file, key=...), which verifies the "
        "signature before loading")
