# Canonical CBOR (RFC 7049 section 3.9, the same bytes as cbor2's canonical=True) for everything
# that is hashed or signed. Runs on CPython and MicroPython.
#
# Encoded: int (-2**64 .. 2**64-1), bytes (bytearray and memoryview too), str, list, tuple, dict,
# bool, None. No floats: their encodings are not canonical across implementations.
# Map keys are ints, text or bytes only, in both directions: a bool key would collide with an int
# in a Python dict (True == 1), and other keys are either unhashable or unused by the protocols.
# Keys are ordered by their encoded form, shorter first, then bytewise.
#
# loads() accepts only what dumps() produces, so loads(b) succeeding implies dumps(loads(b)) == b:
# definite lengths, shortest ints and lengths, sorted unique keys, no tags, floats or simple values
# other than false/true/null, strict UTF-8, and no trailing bytes. Every rejection is a CBORError
# naming what was wrong and the byte offset of the item.

import struct

MAX_SIZE = 65536  # bytes of input
MAX_DEPTH = 16  # nested arrays and maps
MAX_ITEMS = 4096  # data items of the whole message: every value, array element, map key and value

# Guards dumps() against cyclic containers; MicroPython's stack gives out near 200 frames.
_MAX_ENCODE_DEPTH = 64
_UINT64_LIMIT = 1 << 64

# Argument sizes for additional information 24..27, and the smallest value each may hold in
# shortest form.
_ARG_FORMATS = (">B", ">H", ">I", ">Q")
_ARG_MINIMUMS = (24, 0x100, 0x10000, 0x100000000)


class CBORError(ValueError):
    """Input that canonical CBOR cannot represent, or bytes that are not canonical CBOR."""


def _decodes_surrogates():
    # MicroPython's UTF-8 decoder accepts surrogates, overlong forms and code points past
    # U+10FFFF; CPython's rejects them. Detect the lax one instead of naming interpreters.
    try:
        b"\xed\xa0\x80".decode("utf-8")
    except UnicodeError:
        return False
    return True


_LAX_UTF8 = _decodes_surrogates()


def _check_scalar_values(raw, text):
    """Raise UnicodeError unless `text`, decoded leniently from `raw`, is strict UTF-8."""
    expected = 0
    for ch in text:
        cp = ord(ch)
        if 0xD800 <= cp <= 0xDFFF or cp > 0x10FFFF:
            raise UnicodeError("code point U+%X" % cp)
        expected += 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4
    # A lenient decoder keeps the input bytes, so an overlong form makes `raw` longer than the
    # shortest encoding of the same code points.
    if expected != len(raw):
        raise UnicodeError("overlong encoding")


def _utf8_encode(text):
    raw = text.encode("utf-8")
    if _LAX_UTF8 and len(raw) != len(text):
        _check_scalar_values(raw, text)
    return raw


def _utf8_decode(raw):
    text = raw.decode("utf-8")
    if _LAX_UTF8 and len(raw) != len(text):
        _check_scalar_values(raw, text)
    return text


def _head(major, arg):
    """The initial byte and shortest argument of an item of major type `major`."""
    ib = major << 5
    if arg < 24:
        return bytes((ib | arg,))
    if arg < 0x100:
        return struct.pack(">BB", ib | 24, arg)
    if arg < 0x10000:
        return struct.pack(">BH", ib | 25, arg)
    if arg < 0x100000000:
        return struct.pack(">BI", ib | 26, arg)
    return struct.pack(">BQ", ib | 27, arg)


def _map_key(key):
    # Keys are encoded on their own so they can be sorted by their encoded form.
    if key is True or key is False or not isinstance(key, (int, str, bytes)):
        raise CBORError(
            "cannot encode map key of type %s: keys are int, str or bytes" % type(key).__name__
        )
    out = []
    _encode(key, out, 0)
    return b"".join(out)


def _canonical_order(pair):
    # One sort with the whole key: MicroPython's sort is not stable, so sorting bytewise and
    # then by length would not give the same order.
    return (len(pair[0]), pair[0])


def _encode(obj, out, depth):
    if obj is None:
        out.append(b"\xf6")
    elif obj is False:
        out.append(b"\xf4")
    elif obj is True:
        out.append(b"\xf5")
    elif isinstance(obj, int):
        if obj >= 0:
            if obj >= _UINT64_LIMIT:
                raise CBORError("cannot encode int %d: above 2**64-1" % obj)
            out.append(_head(0, obj))
        else:
            if obj < -_UINT64_LIMIT:
                raise CBORError("cannot encode int %d: below -2**64" % obj)
            out.append(_head(1, -1 - obj))
    elif isinstance(obj, str):
        try:
            raw = _utf8_encode(obj)
        except UnicodeError as e:
            raise CBORError("cannot encode str: not valid Unicode text (%s)" % e) from None
        out.append(_head(3, len(raw)))
        out.append(raw)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        raw = bytes(obj)
        out.append(_head(2, len(raw)))
        out.append(raw)
    elif isinstance(obj, (list, tuple, dict)):
        if depth >= _MAX_ENCODE_DEPTH:
            raise CBORError(
                "cannot encode containers nested deeper than %d (a cycle?)" % _MAX_ENCODE_DEPTH
            )
        if isinstance(obj, dict):
            pairs = [(_map_key(k), v) for k, v in obj.items()]
            pairs.sort(key=_canonical_order)
            out.append(_head(5, len(pairs)))
            previous = None
            for key, value in pairs:
                if key == previous:
                    raise CBORError("cannot encode map: two keys encode to %r" % key)
                previous = key
                out.append(key)
                _encode(value, out, depth + 1)
        else:
            out.append(_head(4, len(obj)))
            for value in obj:
                _encode(value, out, depth + 1)
    elif isinstance(obj, float):
        raise CBORError(
            "cannot encode float %r: floats are not allowed in canonical messages" % obj
        )
    else:
        raise CBORError("cannot encode type %s" % type(obj).__name__)


def dumps(obj):
    """The canonical CBOR encoding of `obj`, as bytes."""
    out = []
    _encode(obj, out, 0)
    return b"".join(out)


class _Decoder:
    def __init__(self, data, max_depth, max_items):
        self.data = data
        self.pos = 0
        self.items = 0
        self.max_depth = max_depth
        self.max_items = max_items

    def fail(self, what, offset):
        raise CBORError("%s at offset %d" % (what, offset))

    def argument(self, ib, start):
        """The shortest-form argument of the item whose initial byte `ib` is at `start`."""
        info = ib & 0x1F
        if info < 24:
            self.pos = start + 1
            return info
        if info == 31 and 2 <= ib >> 5 <= 5:
            self.fail("indefinite-length item", start)
        if info > 27:
            self.fail("reserved additional information %d" % info, start)
        size = 1 << (info - 24)
        if start + 1 + size > len(self.data):
            self.fail("truncated input: %d-byte argument cut short" % size, start)
        arg = struct.unpack_from(_ARG_FORMATS[info - 24], self.data, start + 1)[0]
        if arg < _ARG_MINIMUMS[info - 24]:
            self.fail("non-shortest argument %d in %d bytes" % (arg, size), start)
        self.pos = start + 1 + size
        return arg

    def simple(self, ib, start):
        self.pos = start + 1
        if ib == 0xF4:
            return False
        if ib == 0xF5:
            return True
        if ib == 0xF6:
            return None
        if ib == 0xF7:
            self.fail("undefined", start)
        if 0xF9 <= ib <= 0xFB:
            self.fail("float", start)
        if ib == 0xFF:
            self.fail("unexpected break", start)
        self.fail("simple value", start)

    def item(self, depth):
        data = self.data
        start = self.pos
        self.items += 1
        if self.items > self.max_items:
            self.fail("more than max_items=%d data items" % self.max_items, start)
        if start >= len(data):
            self.fail("truncated input: item missing", start)
        ib = data[start]
        major = ib >> 5
        if major == 7:
            return self.simple(ib, start)
        if major == 6:
            self.fail("tag", start)
        arg = self.argument(ib, start)
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major <= 3:
            end = self.pos + arg
            if end > len(data):
                self.fail("truncated input: string of %d bytes cut short" % arg, start)
            raw = data[self.pos : end]
            self.pos = end
            if major == 2:
                return raw
            try:
                return _utf8_decode(raw)
            except UnicodeError:
                self.fail("invalid UTF-8 in text string", start)
        if depth >= self.max_depth:
            self.fail("nesting deeper than max_depth=%d" % self.max_depth, start)
        # Every element takes at least one byte: a count past the input's end is truncation,
        # caught here before looping over it.
        count = arg if major == 4 else 2 * arg
        if count > len(data) - self.pos:
            self.fail("truncated input: %d items announced" % count, start)
        if major == 4:
            return [self.item(depth + 1) for _ in range(arg)]
        return self.map(arg, depth, start)

    def map(self, length, depth, start):
        data = self.data
        result = {}
        previous = b""
        for _ in range(length):
            key_start = self.pos
            if key_start < len(data) and data[key_start] >> 5 > 3:
                self.fail("map key that is not an int, text or bytes", key_start)
            key = self.item(depth + 1)
            encoded = data[key_start : self.pos]
            if len(encoded) < len(previous) or (
                len(encoded) == len(previous) and encoded <= previous
            ):
                what = "duplicate map key" if encoded == previous else "map keys out of order"
                self.fail(what, key_start)
            previous = encoded
            result[key] = self.item(depth + 1)
        return result


def loads(data, max_size=MAX_SIZE, max_depth=MAX_DEPTH, max_items=MAX_ITEMS):
    """The value encoded by canonical CBOR `data`; raises CBORError on anything else.

    Byte strings decode to bytes, arrays to lists, maps to dicts."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CBORError("cannot decode type %s: want bytes" % type(data).__name__)
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > max_size:
        raise CBORError("input of %d bytes exceeds max_size=%d at offset 0" % (len(data), max_size))
    decoder = _Decoder(data, max_depth, max_items)
    value = decoder.item(0)
    if decoder.pos != len(decoder.data):
        decoder.fail("%d trailing bytes" % (len(decoder.data) - decoder.pos), decoder.pos)
    return value
