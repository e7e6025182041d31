"""The wire format of asynchronous inference: round trips, and refusal of malformed or oversized input."""

from __future__ import annotations

import random
import socket
import struct
import threading

import msgpack
import numpy as np
import pytest

from smolvla_kit.deploy.protocol import (
    HEADER,
    MAGIC,
    ConnectionClosed,
    ProtocolError,
    decode_header,
    encode_frame,
    message,
    pack,
    recv_message,
    send_message,
    unpack,
)


def _observation(**over):
    fields = dict(
        episode=0,
        timestep=7,
        timestamp=123.5,
        state=np.array([1.0, -2.0, 3.5, 4.0, 5.0, 50.0], dtype=np.float32),
        images={"observation.images.front": np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)},
        task="put the red cube in the bin",
        must_go=False,
    )
    fields.update(over)
    return message("observation", **fields)


def test_round_trip_keeps_arrays_exactly():
    msg = _observation()
    back = unpack(pack(msg))
    assert back["type"] == "observation" and back["task"] == msg["task"] and back["must_go"] is False
    assert back["state"].dtype == np.float32 and np.array_equal(back["state"], msg["state"])
    img = back["images"]["observation.images.front"]
    assert img.dtype == np.uint8 and img.shape == (4, 5, 3) and np.array_equal(img, msg["images"]["observation.images.front"])
    img[0, 0, 0] = 99  # decoded arrays are writable copies, not views into the message buffer
    for dtype in (np.float64, np.int32, np.int64, np.bool_):
        arr = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
        out = unpack(pack(message("actions", episode=1, timestep=0, timestamp=0.0, actions=arr, inference_ms=1.0,
                                  added_latency_ms=0.0)))["actions"]
        assert out.dtype == dtype and np.array_equal(out, arr)
    # big-endian input is sent little-endian, same values
    be = np.array([[1.5, -2.0]], dtype=">f4")
    out = unpack(pack(message("actions", episode=0, timestep=0, timestamp=0.0, actions=be, inference_ms=0,
                              added_latency_ms=0)))["actions"]
    assert out.dtype == np.float32 and np.array_equal(out, be.astype(np.float32))


def test_frames_over_a_real_socket():
    a, b = socket.socketpair()
    try:
        msg = _observation(timestep=3)
        send_message(a, msg)
        got = recv_message(b)
        assert got["timestep"] == 3 and np.array_equal(got["state"], msg["state"])
        a.close()
        with pytest.raises(ConnectionClosed):
            recv_message(b)
    finally:
        b.close()


def test_no_pickle_no_objects_no_extension_types():
    with pytest.raises(TypeError, match="cannot send"):
        pack({"type": "stats", "x": object()})
    with pytest.raises(TypeError, match="dtype"):
        pack(message("actions", episode=0, timestep=0, timestamp=0.0, actions=np.array(["a"], dtype=object),
                     inference_ms=0, added_latency_ms=0))
    ext = msgpack.packb({"type": "stats", "x": msgpack.ExtType(1, b"\x80\x04payload")})
    with pytest.raises(ProtocolError):
        unpack(ext)
    # a pickle stream is not msgpack of a map: refused before anything looks at it
    import pickle

    with pytest.raises(ProtocolError):
        unpack(pickle.dumps({"type": "stats"}))


@pytest.mark.parametrize(
    "array_map, needle",
    [
        ({"__ndarray__": 1, "dtype": "|O", "shape": [1], "data": b"\x00" * 8}, "not allowed"),
        ({"__ndarray__": 1, "dtype": "<f4", "shape": [2, 3], "data": b"\x00" * 20}, "needs 24 bytes"),
        ({"__ndarray__": 1, "dtype": "<f4", "shape": [-1], "data": b""}, "shape"),
        ({"__ndarray__": 1, "dtype": "<f4", "shape": [1] * 9, "data": b"\x00" * 4}, "shape"),
        ({"__ndarray__": 1, "dtype": "<f4", "shape": [True], "data": b"\x00" * 4}, "shape"),
        ({"__ndarray__": 1, "dtype": "<f4", "shape": [1], "data": "text"}, "bytes"),
        ({"__ndarray__": 1, "dtype": "<f4", "shape": [1]}, "exactly the keys"),
        ({"__ndarray__": 1, "dtype": "<f4", "shape": [2**40], "data": b""}, "shape"),
    ],
)
def test_malformed_arrays_are_refused(array_map, needle):
    body = msgpack.packb({"type": "actions", "episode": 0, "timestep": 0, "timestamp": 0.0, "actions": array_map,
                          "inference_ms": 0.0, "added_latency_ms": 0.0})
    with pytest.raises(ProtocolError, match=needle):
        unpack(body)


def test_schema_checks_name_the_field():
    good = pack(_observation())
    with pytest.raises(ProtocolError, match="unknown message type"):
        unpack(msgpack.packb({"type": "exec", "code": "rm -rf /"}))
    with pytest.raises(ProtocolError, match=r"missing fields \['must_go'\]"):
        d = msgpack.unpackb(good)
        del d["must_go"]
        unpack(msgpack.packb(d))
    with pytest.raises(ProtocolError, match="unexpected fields"):
        unpack(pack({**_observation(), "extra": 1}))
    with pytest.raises(ProtocolError, match="'timestep' must be int"):
        unpack(pack({**_observation(), "timestep": "7"}))
    with pytest.raises(ProtocolError, match="'must_go' must be bool"):
        unpack(pack({**_observation(), "must_go": 1}))
    with pytest.raises(ProtocolError, match="'timestep' must be int"):
        unpack(pack({**_observation(), "timestep": True}))  # a bool is not a number here
    with pytest.raises(ProtocolError, match="must be a map"):
        unpack(msgpack.packb([1, 2, 3]))
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        unpack(good[:-5])  # truncated
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        unpack(good + b"\x00")  # trailing bytes


def test_oversized_and_foreign_frames_are_refused_before_reading_the_body():
    with pytest.raises(ProtocolError, match="over the 1000-byte limit"):
        decode_header(HEADER.pack(MAGIC, 1001), max_bytes=1000)
    with pytest.raises(ProtocolError, match="not a smolvla-kit message"):
        decode_header(b"GET / HTTP/1.1"[:8])
    with pytest.raises(ProtocolError, match="over the 100-byte limit"):
        encode_frame(_observation(), max_bytes=100)
    # A header announcing 4 GiB on a socket that then goes quiet: refused at once, nothing allocated.
    a, b = socket.socketpair()
    try:
        a.sendall(struct.pack(">4sI", MAGIC, 0xFFFFFFFF))
        b.settimeout(2.0)
        with pytest.raises(ProtocolError, match="over the"):
            recv_message(b)
    finally:
        a.close()
        b.close()


def test_fuzz_random_bytes_and_mutations_never_escape_as_other_errors():
    """Random garbage and single-byte mutations of a valid body: ProtocolError or a valid message, nothing else."""
    rng = random.Random(0)
    good = pack(_observation())
    accepted = 0
    for i in range(1500):
        if i % 3 == 0:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        else:
            mutated = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
            body = bytes(mutated)
        try:
            msg = unpack(body)
        except ProtocolError:
            continue
        accepted += 1
        assert msg["type"] == "observation"  # whatever got through is a well-formed message
    assert accepted < 1500


def test_receiver_threads_see_whole_messages_when_sent_in_pieces():
    a, b = socket.socketpair()
    frame = encode_frame(_observation(timestep=42))
    out = {}

    def recv():
        out["msg"] = recv_message(b)

    th = threading.Thread(target=recv)
    th.start()
    for k in range(0, len(frame), 7):  # dribble the frame in 7-byte pieces
        a.sendall(frame[k : k + 7])
    th.join(5)
    a.close()
    b.close()
    assert out["msg"]["timestep"] == 42


def test_a_message_cannot_decode_into_millions_of_objects():
    # 4 MiB of empty maps, nested one list deep: within every per-container limit, refused by the total budget
    body = msgpack.packb({"type": "stats", "x": [[{}] * 4000] * 1000})
    assert len(body) < 5 * 2**20
    with pytest.raises(ProtocolError, match="more than 16384 maps, lists and their items"):
        unpack(body)
    assert unpack(pack(_observation()))["type"] == "observation"  # a real message is far inside the budget


def test_keys_that_are_not_text_are_refused_as_protocol_errors():
    hello = {"type": "hello", "protocol": 1, "client": "c", "mode": "sync",
             "features": {"state_dim": 6, "image_keys": [], "image_shapes": {b"cam": [8, 8, 3], "x": []}}}
    for msg in ({"type": "stats", b"type": "bye"}, hello):
        with pytest.raises(ProtocolError, match="key that is not text"):
            unpack(msgpack.packb(msg, use_bin_type=True))
