"""The wire format between the robot client and the policy server: framed msgpack, numpy arrays as raw bytes.

One message on the socket is

    b"SVK1" | uint32 big-endian body length | msgpack body

and the body is a map with a "type" field (see `SCHEMAS`). A numpy array travels as a map

    {"__ndarray__": 1, "dtype": "<f4", "shape": [50, 6], "data": <raw bytes>}

Nothing here can run code: msgpack only builds maps, lists, strings, numbers and bytes (extension types are
refused), arrays are rebuilt with `np.frombuffer` from a short list of plain dtypes, and every message is checked
against its schema before anyone reads it. (The reference implementation pickles Python objects over gRPC, which
lets whoever can reach the port run code on the robot computer.)

Limits, checked before anything is allocated: a frame larger than `max_bytes` (16 MiB by default) is refused, as
is an array whose bytes do not match its dtype and shape, or one with more than `MAX_ARRAY_DIMS` axes.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any, Mapping

import msgpack
import numpy as np

from smolvla_kit.errors import KitError

PROTOCOL_VERSION = 2  # 2: the hello carries a shared token
TOKEN_ENV = "SMOLVLA_KIT_TOKEN"  # environment variable holding that token, on the server and the robot computer
MAX_DECODED_ITEMS = 1 << 14  # maps, lists and their entries in one message (a real one holds under a hundred)
MAGIC = b"SVK1"
HEADER = struct.Struct(">4sI")  # magic, body length
DEFAULT_MAX_BYTES = 16 * 1024 * 1024  # two 512x512 RGB frames are 1.5 MiB: plenty of room, no memory bomb
MAX_ARRAY_DIMS = 6
# Plain numeric dtypes only (little-endian on the wire): no objects, no strings, no structured records.
ALLOWED_DTYPES = {
    "|u1": np.uint8, "<f4": np.float32, "<f8": np.float64, "<i4": np.int32, "<i8": np.int64, "|b1": np.bool_,
}
_ND_KEYS = {"__ndarray__", "dtype", "shape", "data"}


class ProtocolError(KitError, ValueError):
    """A frame or message that breaks the protocol (bad magic, too large, malformed, wrong fields)."""


class ConnectionClosed(ConnectionError):
    """The other side closed the connection (cleanly, or by dying)."""


# ----------------------------------------------------------------------------------------------------------------
# numpy arrays <-> msgpack maps
# ----------------------------------------------------------------------------------------------------------------


def _encode_default(obj: Any) -> Any:
    """msgpack hook: numpy arrays and scalars become plain data; anything else is an error."""
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        key = dtype.str
        if key not in ALLOWED_DTYPES:
            raise TypeError(f"cannot send an array of dtype {obj.dtype}; allowed: {sorted(ALLOWED_DTYPES)}")
        return {"__ndarray__": 1, "dtype": key, "shape": list(arr.shape), "data": arr.astype(dtype).tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send an object of type {type(obj).__name__} (only plain data and numpy arrays)")


def _decode_ndarray(m: dict) -> Any:
    """msgpack object hook: rebuild arrays from their maps, checking dtype, shape and size."""
    if "__ndarray__" not in m:
        return m
    if set(m) != _ND_KEYS:
        raise ProtocolError(f"array map must have exactly the keys {sorted(_ND_KEYS)}, got {sorted(map(str, m))}")
    dtype, shape, data = m["dtype"], m["shape"], m["data"]
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"array dtype {dtype!r} is not allowed; allowed: {sorted(ALLOWED_DTYPES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_ARRAY_DIMS
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in shape)
    ):
        raise ProtocolError(f"array shape must be a list of at most {MAX_ARRAY_DIMS} sizes >= 0, got {shape!r}")
    if not isinstance(data, bytes):
        raise ProtocolError(f"array data must be bytes, got {type(data).__name__}")
    np_dtype = np.dtype(ALLOWED_DTYPES[dtype])
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if expected != len(data):
        raise ProtocolError(f"array of dtype {dtype} and shape {shape} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=np_dtype).reshape(shape).copy()  # copy: writable, owns its memory


def pack(message: Mapping[str, Any]) -> bytes:
    """Message -> msgpack body (no frame header)."""
    return msgpack.packb(message, default=_encode_default, use_bin_type=True)


def unpack(body: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """msgpack body -> message, with arrays rebuilt and the schema checked."""
    # msgpack's own limits cap each container; the budget caps them all together, so a few MiB of tiny maps
    # cannot become millions of Python objects.
    left = [MAX_DECODED_ITEMS]

    def spend(container: Any) -> Any:
        left[0] -= 1 + len(container)
        if left[0] < 0:
            raise ProtocolError(f"message holds more than {MAX_DECODED_ITEMS} maps, lists and their items; refused")
        return container

    try:
        msg = msgpack.unpackb(
            body,
            raw=False,
            object_hook=lambda m: _decode_ndarray(spend(m)),
            list_hook=spend,
            strict_map_key=True,  # map keys must be str or bytes
            max_ext_len=0,  # no extension types: nothing but plain data
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=1 << 12,
            max_map_len=1 << 10,
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError) as e:
        raise ProtocolError(f"message is not valid msgpack: {type(e).__name__}: {e}") from None
    validate(msg)
    return msg


# ----------------------------------------------------------------------------------------------------------------
# Message schemas
# ----------------------------------------------------------------------------------------------------------------

_NUM = (int, float)
# type -> {field: allowed python types}. Every field is required; no others are allowed.
SCHEMAS: dict[str, dict[str, tuple[type, ...]]] = {
    # client -> server
    "hello": {"protocol": (int,), "client": (str,), "features": (dict,), "mode": (str,),
              "token": (str,)},  # the server's shared token ("" when it has none)
    "observation": {
        "episode": (int,),  # the client's episode counter: replies to an earlier episode are ignored
        "timestep": (int,),  # index of the action the robot is about to execute when this was observed
        "timestamp": _NUM,  # client's monotonic clock, seconds (echoed back to measure round trips)
        "state": (np.ndarray,),
        "images": (dict,),
        "task": (str,),
        "must_go": (bool,),  # the client's queue is empty: never filter this one
    },
    "reset": {},  # a new episode: forget the last processed observation
    "ping": {},  # keeps an idle connection open; not answered
    "stats": {},
    "bye": {},
    # server -> client
    "ready": {"protocol": (int,), "policy": (dict,)},
    "actions": {
        "episode": (int,),
        "timestep": (int,),  # the observation's timestep: actions[i] is for timestep + i
        "timestamp": _NUM,
        "actions": (np.ndarray,),
        "inference_ms": _NUM,
        "added_latency_ms": _NUM,
    },
    "filtered": {
        "episode": (int,), "timestep": (int,), "timestamp": _NUM, "distance": _NUM, "threshold": _NUM, "reason": (str,),
    },
    "error": {"code": (str,), "message": (str,)},
    "stats_reply": {"stats": (dict,)},
}


def _check_keys_are_text(value: Any, where: str) -> None:
    """Every map key, at any depth, must be text (msgpack also allows bytes keys; the kit never sends them)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"{where} has a key that is not text: {key!r}")
            _check_keys_are_text(item, f"field '{key}'")
    elif isinstance(value, list):
        for item in value:
            _check_keys_are_text(item, where)


def validate(msg: Any) -> None:
    """Raise ProtocolError unless `msg` is a known message with exactly its fields, of the right types."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"message must be a map, got {type(msg).__name__}")
    _check_keys_are_text(msg, "the message")
    kind = msg.get("type")
    if kind not in SCHEMAS:
        raise ProtocolError(f"unknown message type {kind!r}; known: {sorted(SCHEMAS)}")
    schema = SCHEMAS[kind]
    fields = set(msg) - {"type"}
    missing, extra = sorted(set(schema) - fields), sorted(fields - set(schema))
    if missing or extra:
        raise ProtocolError(f"'{kind}' message: missing fields {missing}, unexpected fields {extra}")
    for name, types in schema.items():
        value = msg[name]
        # bool is an int in Python: keep them apart, a flag is not a number and a number is not a flag
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            want = " or ".join(t.__name__ for t in types)
            raise ProtocolError(f"'{kind}' message: field '{name}' must be {want}, got {type(value).__name__}")


def message(kind: str, **fields: Any) -> dict[str, Any]:
    """Build a message and check it against its schema (so the sender fails, not the receiver)."""
    msg = {"type": kind, **fields}
    validate(msg)
    return msg


# ----------------------------------------------------------------------------------------------------------------
# Frames on a socket
# ----------------------------------------------------------------------------------------------------------------


def encode_frame(msg: Mapping[str, Any], max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    body = pack(msg)
    if len(body) > max_bytes:
        raise ProtocolError(f"'{msg.get('type')}' message is {len(body)} bytes, over the {max_bytes}-byte limit")
    return HEADER.pack(MAGIC, len(body)) + body


def send_message(sock: socket.socket, msg: Mapping[str, Any], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    validate(dict(msg))
    sock.sendall(encode_frame(msg, max_bytes))


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:  # the whole message, not each read, must arrive in time
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"message not complete in time ({got}/{n} bytes)")
            sock.settimeout(left)
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            where = f" in the middle of a message ({got}/{n} bytes)" if got else ""
            raise ConnectionClosed("connection closed by the other side" + where)
        got += k
    return bytes(buf)


def decode_header(header: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """The body length announced by a frame header; refuses a wrong magic or an oversized body."""
    magic, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(
            f"not a smolvla-kit message (starts with {magic!r}, expected {MAGIC!r}): is something else "
            "talking to this port, or a different protocol version?"
        )
    if length > max_bytes:
        raise ProtocolError(f"announced message of {length} bytes is over the {max_bytes}-byte limit; refused")
    return length


def recv_message(sock: socket.socket, max_bytes: int = DEFAULT_MAX_BYTES,
                 deadline: float | None = None) -> dict[str, Any]:
    """Read one framed message: blocking, honouring the socket's timeout, or whole by `deadline` (a
    `time.monotonic()` value) when one is given, however slowly its bytes trickle in."""
    length = decode_header(_recv_exact(sock, HEADER.size, deadline), max_bytes)
    return unpack(_recv_exact(sock, length, deadline), max_bytes)


__all__ = [
    "ALLOWED_DTYPES",
    "ConnectionClosed",
    "DEFAULT_MAX_BYTES",
    "MAGIC",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "SCHEMAS",
    "decode_header",
    "encode_frame",
    "message",
    "pack",
    "recv_message",
    "send_message",
    "unpack",
    "validate",
]
