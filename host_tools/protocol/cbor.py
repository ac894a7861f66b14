"""The edgepay CBOR profile (SPEC §3): a strict, bounded decoder and a deterministic encoder.

Decoding is three passes over at most ``MAX_MESSAGE`` bytes:

1. ``_Scanner`` walks the encoded item heads without building values and reports the first
   profile violation in stream order (well-formedness, indefinite lengths, non-shortest
   arguments, tags, floats and simple values, map key type/order/duplicates, bounds). Every
   length and count is checked against its bound before the bytes it announces are read.
2. cbor2 builds the value with its safe settings (no indefinite lengths, no duplicate keys,
   strict UTF-8, a small max_depth, every tag routed to a marker instead of a built-in decoder).
3. The value is re-encoded with ``encode`` (RFC 8949 §4.2.1 ordering) and must give back the
   input bytes exactly, else ``non_canonical``.

Pass 1 makes the error codes exact; passes 2 and 3 are independent belts behind it.

Interpretations of SPEC §3 made here: depth counts every item (a scalar inside 8 nested
containers is at depth 9), tags count neither for depth nor as items, map keys count as data
items, a string's bound is its byte length, and only the byte strings directly inside the
envelope array (protected header, payload, tag) are bounded by the message size instead of the
512-byte string bound (the payload is decoded, and bounded, on its own); any other item there,
a text string included, has the usual bounds. The one exception inside a payload is the caller's
to ask for (``top_bstr``): on dn/ota a byte string that is a value of the top-level map may be
``MAX_CHUNK_DATA`` bytes (a firmware chunk's data); text strings, and byte strings anywhere else
(in an array, deeper), keep the 512-byte bound. Among several defects the first in stream order is
reported; within one item: malformed, indefinite (its head), unsupported_cbor (its type, map keys
included: a key's head is read first), too_large (the item total), too_deep, too_large (its length
or count), non_canonical.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Any, Mapping

import cbor2

from .errors import ProtocolError

MAX_MESSAGE = 2048
MAX_DEPTH = 8
MAX_STRING = 512
MAX_ENTRIES = 64
MAX_ITEMS = 256
MAX_CHUNK_DATA = 1536  # a bstr value of a dn/ota payload's top-level map (SPEC §3, §10)
ENVELOPE_TAG = 17

_UINT_LIMIT = 1 << 64
# Tags that cbor2 would otherwise turn into Python objects (datetime, bignum, set, shared and
# string references, ...). Each is routed to the same marker as an unknown tag.
_CBOR2_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258,
                       260, 261, 1004, 43000, 55799)


@dataclass(frozen=True)
class Tag:
    """A tagged item; the profile allows only ``Tag(17, ...)`` as the top of an envelope."""

    tag: int
    value: Any


def _fail(code: str, detail: str) -> ProtocolError:
    return ProtocolError(code, detail)


class _Scanner:
    """Pass 1: validate the encoding of one top-level item against the profile."""

    def __init__(self, data: bytes, allow_top_tag: bool, top_bstr: int = MAX_STRING) -> None:
        self.data = data
        self.pos = 0
        self.items = 0
        self.allow_top_tag = allow_top_tag
        self.top_bstr = top_bstr  # the bound of a byte string valued in the top-level map

    def run(self) -> None:
        self._item(1, self.allow_top_tag)
        if self.pos != len(self.data):
            raise _fail("trailing", f"{len(self.data) - self.pos} bytes after the top item")

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _fail("malformed", "truncated")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def _head(self) -> tuple[int, int, int, bool]:
        """Read an item head: (major, additional info, argument, argument is shortest)."""
        start = self.pos
        ib = self._take(1)[0]
        major, ai = ib >> 5, ib & 0x1F
        if ai < 24:
            return major, ai, ai, True
        if ai == 31:
            if 2 <= major <= 5:
                raise _fail("indefinite", f"indefinite length at offset {start}")
            raise _fail("malformed", f"additional info 31 on major type {major}")
        if ai > 27:
            raise _fail("malformed", f"reserved additional info {ai}")
        size = 1 << (ai - 24)
        arg = int.from_bytes(self._take(size), "big")
        if major == 7:
            if ai == 24 and arg < 32:
                raise _fail("malformed", "two-byte simple value below 32")
            return major, ai, arg, True
        shortest = arg >= (24 if size == 1 else 1 << (4 * size))
        return major, ai, arg, shortest

    def _item(self, depth: int, allow_tag: bool, key: bool = False,
              top_value: bool = False) -> None:
        major, ai, arg, shortest = self._head()
        if key and major not in (0, 1, 3):
            raise _fail("unsupported_cbor", "map key is not an integer or text string")
        if major == 6:
            if not allow_tag:
                raise _fail("unsupported_cbor", f"tag {arg}")
            if not shortest:
                raise _fail("non_canonical", "non-shortest tag number")
            self._item(depth, False)  # tags count neither as depth nor as items
            return
        if major == 7:
            if ai >= 25:
                raise _fail("unsupported_cbor", "float")
            if arg not in (20, 21, 22):
                raise _fail("unsupported_cbor", "undefined" if arg == 23 else f"simple value {arg}")
        self.items += 1
        if self.items > MAX_ITEMS:
            raise _fail("too_large", f"more than {MAX_ITEMS} data items")
        if depth > MAX_DEPTH:
            raise _fail("too_deep", f"nesting deeper than {MAX_DEPTH}")
        if major in (2, 3):
            # The envelope's own byte strings (protected header, payload, tag) are embedded
            # CBOR or a MAC, bounded by the message size; the string bound is for data, and for
            # any text string, even one directly in the envelope array.
            envelope_bstr = major == 2 and self.allow_top_tag and depth == 2
            limit = (MAX_MESSAGE if envelope_bstr else
                     self.top_bstr if major == 2 and top_value else MAX_STRING)
            if arg > limit:
                raise _fail("too_large", f"string of {arg} bytes")
            self._shortest(shortest)
            chunk = self._take(arg)
            if major == 3:
                try:
                    bytes(chunk).decode("utf-8", "strict")
                except UnicodeDecodeError as exc:
                    raise _fail("malformed", f"invalid UTF-8: {exc.reason}") from None
        elif major == 4:
            self._count(arg)
            self._shortest(shortest)
            for _ in range(arg):
                self._item(depth + 1, False)
        elif major == 5:
            self._count(arg)
            self._shortest(shortest)
            self._map_entries(arg, depth)
        else:
            self._shortest(shortest)

    def _map_entries(self, count: int, depth: int) -> None:
        previous: bytes | None = None
        for _ in range(count):
            start = self.pos
            self._item(depth + 1, False, key=True)  # its head is read before its type is judged
            key = bytes(self.data[start:self.pos])
            if previous is not None:
                if key == previous:
                    raise _fail("dup_key", f"map key {key.hex()} repeated")
                if key < previous:
                    raise _fail("non_canonical", "map keys not in bytewise order")
            previous = key
            self._item(depth + 1, False, top_value=depth == 1)

    @staticmethod
    def _count(n: int) -> None:
        if n > MAX_ENTRIES:
            raise _fail("too_large", f"{n} entries")

    @staticmethod
    def _shortest(shortest: bool) -> None:
        if not shortest:
            raise _fail("non_canonical", "non-shortest integer or length")


def _tag_marker(tag: int) -> Any:
    return lambda value, immutable=False: Tag(tag, value)


_SEMANTIC = {t: _tag_marker(t) for t in _CBOR2_BUILTIN_TAGS}


def _tag_hook(tag: cbor2.CBORTag, immutable: bool = False) -> Tag:
    return Tag(tag.tag, tag.value)


def _cbor2_error(exc: cbor2.CBORDecodeError) -> ProtocolError:
    text = str(exc)
    if isinstance(exc, cbor2.CBORDecodeEOF):
        return _fail("malformed", "truncated")
    if "Duplicate map key" in text:
        return _fail("dup_key", text)
    if "nesting depth" in text:
        return _fail("too_deep", text)
    if "indefinite length" in text and "integer" not in text:
        return _fail("indefinite", text)
    return _fail("malformed", text)


_SCALARS = frozenset((int, str, bytes, bool, type(None)))


def _thaw(value: Any) -> Any:
    """cbor2 decodes the content of a tag immutably (tuple, frozendict): make it plain again."""
    t = type(value)
    if t in _SCALARS:  # the common case first: exact types, no ABC check (typing's is slow)
        return value
    if t is dict:
        return {_thaw(key): _thaw(item) for key, item in value.items()}
    if t is list:
        return [_thaw(item) for item in value]
    if isinstance(value, Tag):
        return Tag(value.tag, _thaw(value.value))
    if isinstance(value, (list, tuple)):
        return [_thaw(item) for item in value]
    if isinstance(value, Mapping):
        return {_thaw(key): _thaw(item) for key, item in value.items()}
    return value


def _walk(value: Any, depth: int, top: bool) -> None:
    """Belt behind the scanner: the decoded value holds only profile types and keys."""
    if isinstance(value, Tag):
        if not top:
            raise _fail("unsupported_cbor", f"tag {value.tag}")
        _walk(value.value, depth, False)
        return
    if depth > MAX_DEPTH:
        raise _fail("too_deep", f"nesting deeper than {MAX_DEPTH}")
    if type(value) in _SCALARS or value is None or isinstance(value, (bool, int, bytes, str)):
        return
    if isinstance(value, list):
        for item in value:
            _walk(item, depth + 1, False)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise _fail("unsupported_cbor", "map key is not an integer or text string")
            _walk(item, depth + 1, False)
        return
    raise _fail("unsupported_cbor", type(value).__name__)


def decode(data: bytes | bytearray | memoryview, *, envelope: bool = False,
           top_bstr: int = MAX_STRING) -> Any:
    """Decode one profile-conforming item; raise ProtocolError otherwise.

    With ``envelope=True`` a tag is accepted as the outermost item only and returned as
    ``Tag(number, value)``; checking that the number is 17 is the caller's job (``bad_tag``).
    ``top_bstr`` bounds a byte string that is a value of the top-level map (``MAX_CHUNK_DATA``
    for a payload on dn/ota, SPEC §3; see messages.payload_bstr_bound).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _fail("malformed", f"expected bytes, not {type(data).__name__}")
    if len(data) > MAX_MESSAGE:
        raise _fail("too_large", f"{len(data)} bytes")
    data = bytes(data)
    _Scanner(data, envelope, top_bstr).run()
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        stream,
        tag_hook=_tag_hook,
        semantic_decoders=_SEMANTIC,
        str_errors="strict",
        max_depth=MAX_DEPTH + 1,
        allow_indefinite=False,
        allow_duplicate_keys=False,
    )
    try:
        value = decoder.decode()
    except cbor2.CBORDecodeError as exc:
        raise _cbor2_error(exc) from None
    if stream.tell() != len(data):
        raise _fail("trailing", "bytes after the top item")
    value = _thaw(value)
    _walk(value, 1, envelope)
    if encode(value) != data:
        raise _fail("non_canonical", "re-encoding differs")
    return value


def decode_own(data: bytes, top_bstr: int = MAX_STRING) -> Any:
    """Decode bytes that ``encode`` has just produced, for a sender's belt ("whatever we send, we
    would accept"): the bounds of ``decode`` (size, depth, items, entries, string bytes), without
    its scanner and re-encoding passes, which prove a canonical form the encoder makes by
    construction (and protocol/vectors test). A quarter of what ``decode`` costs. ``top_bstr`` as
    for ``decode``."""
    if len(data) > MAX_MESSAGE:
        raise _fail("too_large", f"{len(data)} bytes")
    value = cbor2.loads(data)
    _bounded(value, 1, [0], MAX_STRING, top_bstr)
    return value


def _bounded(value: Any, depth: int, items: list[int], bstr: int = MAX_STRING,
             top_bstr: int = MAX_STRING) -> None:
    # the scanner's order within one item: the item count, then depth, then its length or count;
    # bstr bounds this item if it is a byte string, top_bstr the top-level map's values
    items[0] += 1
    if items[0] > MAX_ITEMS:
        raise _fail("too_large", f"more than {MAX_ITEMS} data items")
    if depth > MAX_DEPTH:
        raise _fail("too_deep", f"nesting deeper than {MAX_DEPTH}")
    t = type(value)
    if t is str:
        if len(value) > MAX_STRING // 4 and len(value.encode("utf-8")) > MAX_STRING:
            raise _fail("too_large", f"string of {len(value.encode('utf-8'))} bytes")
    elif t is bytes:
        if len(value) > bstr:
            raise _fail("too_large", f"string of {len(value)} bytes")
    elif t is list:
        if len(value) > MAX_ENTRIES:
            raise _fail("too_large", f"{len(value)} entries")
        for item in value:
            _bounded(item, depth + 1, items)
    elif t is dict:
        if len(value) > MAX_ENTRIES:
            raise _fail("too_large", f"{len(value)} entries")
        for key, item in value.items():
            _bounded(key, depth + 1, items)
            _bounded(item, depth + 1, items, top_bstr if depth == 1 else MAX_STRING)


@functools.lru_cache(maxsize=4096)
def _key_bytes(kind: type, key: int | str) -> bytes:
    """A map key's encoding, its sort key (RFC 8949 §4.2.1): message keys repeat, cbor2 need not."""
    if kind is int and not -_UINT_LIMIT <= key < _UINT_LIMIT:  # type: ignore[operator]
        raise _fail("unsupported_cbor", "integer out of 64-bit range")
    return cbor2.dumps(key)


def _prepare(value: Any) -> Any:
    """Turn a value into what cbor2 encodes deterministically with canonical=False."""
    t = type(value)
    if t is str or t is bytes or t is bool or value is None:
        return value
    if t is int:
        if not -_UINT_LIMIT <= value < _UINT_LIMIT:
            raise _fail("unsupported_cbor", "integer out of 64-bit range")
        return value
    if t is dict:
        entries = []
        for key, item in value.items():
            kt = type(key)
            if kt is not int and kt is not str:
                if isinstance(key, bool) or not isinstance(key, (int, str)):
                    raise _fail("unsupported_cbor", "map key is not an integer or text string")
                kt = int if isinstance(key, int) else str  # a subclass: encoded as its base
            entries.append((_key_bytes(kt, kt(key)), key, item))
        entries.sort(key=lambda entry: entry[0])
        return {key: _prepare(item) for _, key, item in entries}
    if t is list:
        return [_prepare(item) for item in value]
    if value is None or isinstance(value, (bool, str, bytes)):
        return value
    if isinstance(value, int):
        if not -_UINT_LIMIT <= value < _UINT_LIMIT:
            raise _fail("unsupported_cbor", "integer out of 64-bit range")
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Tag):
        return cbor2.CBORTag(value.tag, _prepare(value.value))
    if isinstance(value, (list, tuple)):
        return [_prepare(item) for item in value]
    if isinstance(value, Mapping):
        encoded: list[tuple[bytes, Any, Any]] = []
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise _fail("unsupported_cbor", "map key is not an integer or text string")
            encoded.append((cbor2.dumps(_prepare(key)), key, item))
        encoded.sort(key=lambda entry: entry[0])
        return {key: _prepare(item) for _, key, item in encoded}
    raise _fail("unsupported_cbor", type(value).__name__)


def encode(value: Any) -> bytes:
    """RFC 8949 §4.2.1 deterministic encoding: shortest arguments, map keys sorted bytewise."""
    return cbor2.dumps(_prepare(value), canonical=False)
