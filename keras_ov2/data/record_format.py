"""How one record is stored in an ArrayRecord shard.

A self-describing framing that any language can read without pickle or
TensorFlow: a 4-byte little-endian header length, a UTF-8 JSON header, then
the raw bytes of the binary fields, one after another:

    header = {"v": 1, "fields": {name: JSON value}, "bytes": [[name, length], ...]}

Text, numbers, None and lists of them live in the header; `bytes` values
(encoded images, captions that are not UTF-8) follow it, untouched.
"""

import json

VERSION = 1
_LENGTH_BYTES = 4


class RecordFormatError(ValueError):
    """Bytes that are not a record in this format (truncated, foreign, corrupt)."""


def storable(value):
    """Whether `encode_record` can store `value`: bytes, or a JSON value
    (str, int, float, bool, None, and lists of them)."""
    if isinstance(value, (list, tuple)):
        return all(_json_scalar(v) for v in value)
    return isinstance(value, (bytes, bytearray, memoryview)) or _json_scalar(value)


def _json_scalar(value):
    return value is None or isinstance(value, (str, int, float, bool))


def encode_record(record):
    """A dict of storable values (see `storable`) -> bytes."""
    fields, blobs = {}, []
    for name, value in record.items():
        if not isinstance(name, str) or not storable(value):
            raise TypeError(f"Cannot store field {name!r} of type {type(value).__name__}; "
                            "expected bytes, str, int, float, bool, None or a list of them.")
        if isinstance(value, (bytes, bytearray, memoryview)):
            blobs.append((name, bytes(value)))
        else:
            fields[name] = list(value) if isinstance(value, tuple) else value
    header = {"v": VERSION, "fields": fields, "bytes": [[n, len(b)] for n, b in blobs]}
    # ensure_ascii keeps lone surrogates (from JSON "\udc80") encodable.
    header = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return b"".join([len(header).to_bytes(_LENGTH_BYTES, "little"), header]
                    + [b for _, b in blobs])


def decode_record(data):
    """Bytes from `encode_record` -> the dict, or RecordFormatError."""
    data = memoryview(data)
    if len(data) < _LENGTH_BYTES:
        raise RecordFormatError(f"{len(data)} bytes, shorter than the header length")
    end = _LENGTH_BYTES + int.from_bytes(data[:_LENGTH_BYTES], "little")
    if end > len(data):
        raise RecordFormatError(f"header of {end - _LENGTH_BYTES} bytes in a record of "
                                f"{len(data)} bytes")
    try:
        header = json.loads(bytes(data[_LENGTH_BYTES:end]).decode("utf-8"))
        version, fields, lengths = header["v"], dict(header["fields"]), header["bytes"]
        names, sizes = zip(*lengths) if lengths else ((), ())
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise RecordFormatError(f"bad header ({type(error).__name__}: {error})") from None
    if version != VERSION:
        raise RecordFormatError(f"format version {version!r}, expected {VERSION}")
    if not all(isinstance(n, str) for n in names) or not all(
        isinstance(s, int) and s >= 0 for s in sizes
    ) or end + sum(sizes) != len(data):
        raise RecordFormatError(f"binary fields {lengths} after the header, but "
                                f"{len(data) - end} bytes there")
    for name, size in zip(names, sizes):
        fields[name] = bytes(data[end : end + size])
        end += size
    return fields
