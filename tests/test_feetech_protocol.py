"""The Feetech protocol layer: packets, checksum, sign-magnitude values, the stream reader, and a fuzz test."""

from __future__ import annotations

import random

import pytest

from smolvla_kit.robot.feetech import (
    CONTROL_TABLE,
    HEADER,
    INST_PING,
    INST_READ,
    INST_SYNC_READ,
    INST_SYNC_WRITE,
    INST_WRITE,
    MAX_PACKET_SIZE,
    Packet,
    PacketError,
    PacketReader,
    build_packet,
    decode_sign_magnitude,
    decode_value,
    encode_sign_magnitude,
    encode_value,
    parse_packet,
    parse_status_packet,
)


def test_known_packets_byte_for_byte():
    # PING servo 1: sum(01 02 01) = 4, ~4 & 0xFF = 0xFB.
    assert build_packet(1, INST_PING) == bytes.fromhex("ff ff 01 02 01 fb")
    # READ Present_Position (56 = 0x38, 2 bytes) of servo 1: sum = 0x41 -> checksum 0xBE.
    assert build_packet(1, INST_READ, [0x38, 0x02]) == bytes.fromhex("ff ff 01 04 02 38 02 be")
    # WRITE Goal_Position = 2048 (0x0800, little-endian) to servo 6.
    pkt = build_packet(6, INST_WRITE, bytes([42]) + encode_value(CONTROL_TABLE["Goal_Position"], 2048))
    assert pkt[:7] == bytes.fromhex("ff ff 06 05 03 2a 00") and pkt[7] == 0x08
    assert pkt[-1] == (~sum(pkt[2:-1])) & 0xFF
    # A status packet with 2 data bytes and the overload bit.
    status = build_packet(3, 0x20, b"\x34\x12")
    assert parse_status_packet(status) == Packet(3, 0x20, b"\x34\x12")


def test_build_parse_round_trip_every_instruction():
    cases = [
        (1, INST_PING, b""),
        (2, INST_READ, bytes([56, 2])),
        (3, INST_WRITE, bytes([40, 1])),
        (0xFE, INST_SYNC_READ, bytes([56, 2, 1, 2, 3, 4, 5, 6])),
        (0xFE, INST_SYNC_WRITE, bytes([42, 2, 1, 0, 8, 2, 0xFF, 7])),
    ]
    for sid, inst, params in cases:
        raw = build_packet(sid, inst, params)
        assert raw[:2] == HEADER and raw[3] == len(params) + 2
        assert parse_packet(raw) == Packet(sid, inst, params)


def test_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match="servo id"):
        build_packet(0xFF, INST_PING)
    with pytest.raises(ValueError, match="do not fit"):
        build_packet(1, INST_WRITE, bytes(MAX_PACKET_SIZE))


def test_sign_magnitude_positions_and_homing_offset():
    assert encode_sign_magnitude(5, 15) == 5
    assert encode_sign_magnitude(-5, 15) == 0x8005
    assert encode_sign_magnitude(-2047, 11) == 0x800 | 2047
    assert decode_sign_magnitude(0x8005, 15) == -5
    assert decode_sign_magnitude(0x0FFF, 11) == -2047
    for v in range(-2047, 2048):
        assert decode_sign_magnitude(encode_sign_magnitude(v, 11), 11) == v
    with pytest.raises(ValueError, match="bit 11"):
        encode_sign_magnitude(2048, 11)
    offset = CONTROL_TABLE["Homing_Offset"]
    assert encode_value(offset, -300) == (0x800 | 300).to_bytes(2, "little")
    assert decode_value(offset, encode_value(offset, -300)) == -300
    goal = CONTROL_TABLE["Goal_Position"]
    for v in (-32767, -1, 0, 1, 2047, 4095, 32767):
        assert decode_value(goal, encode_value(goal, v)) == v
    with pytest.raises(ValueError):
        encode_value(CONTROL_TABLE["P_Coefficient"], 256)


def test_register_addresses_match_the_sts3215_table():
    # The addresses LeRobot and Feetech's memory table give (and so101.md lists).
    expected = {
        "Model_Number": (3, 2),
        "ID": (5, 1),
        "Min_Position_Limit": (9, 2),
        "Max_Position_Limit": (11, 2),
        "Max_Torque_Limit": (16, 2),
        "P_Coefficient": (21, 1),
        "D_Coefficient": (22, 1),
        "I_Coefficient": (23, 1),
        "Protection_Current": (28, 2),
        "Homing_Offset": (31, 2),
        "Operating_Mode": (33, 1),
        "Overload_Torque": (36, 1),
        "Torque_Enable": (40, 1),
        "Goal_Position": (42, 2),
        "Lock": (55, 1),
        "Present_Position": (56, 2),
    }
    for name, (addr, size) in expected.items():
        assert (CONTROL_TABLE[name].address, CONTROL_TABLE[name].size) == (addr, size), name
    assert CONTROL_TABLE["Homing_Offset"].sign_bit == 11
    assert CONTROL_TABLE["Present_Position"].sign_bit == 15 and CONTROL_TABLE["Goal_Position"].sign_bit == 15


def test_reader_resynchronises_after_garbage_and_bad_checksum():
    good1 = build_packet(1, 0, b"\x01\x02")
    good2 = build_packet(2, 0, b"")
    bad = bytearray(build_packet(3, 0, b"\x05"))
    bad[-1] ^= 0xFF
    reader = PacketReader()
    # Garbage, an extra 0xFF before a header, a corrupt packet, then two good ones, fed one byte at a time.
    stream = b"\x00\x13\xff" + good1 + bytes(bad) + good2
    got, errors = [], 0
    for b in stream:
        reader.feed(bytes([b]))
        while True:
            try:
                pkt = reader.next_packet()
            except PacketError:
                errors += 1
                continue
            if pkt is None:
                break
            got.append(pkt)
    assert got == [Packet(1, 0, b"\x01\x02"), Packet(2, 0, b"")]
    assert errors == 1


# ----------------------------------------------------------------------------------------------------------------
# Fuzz: random and corrupted bytes never crash the parser and are never accepted when invalid
# ----------------------------------------------------------------------------------------------------------------


def _independently_valid(raw: bytes) -> bool:
    """A second, separately written statement of what a valid packet is."""
    if len(raw) < 6 or raw[0] != 0xFF or raw[1] != 0xFF or raw[2] == 0xFF:
        return False
    if raw[3] < 2 or len(raw) != raw[3] + 4 or len(raw) > MAX_PACKET_SIZE:
        return False
    total = 0
    for b in raw[2:-1]:
        total = (total + b) & 0xFF
    return raw[-1] == 0xFF - total


def _random_valid(rng: random.Random) -> bytes:
    return build_packet(
        rng.randrange(0, 0xFF), rng.randrange(0, 256), bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
    )


def test_fuzz_parse_packet_random_and_corrupted():
    rng = random.Random(1234)
    accepted_random = 0
    for _ in range(20000):
        n = rng.randrange(0, 64)
        raw = bytes(rng.randrange(256) for _ in range(n))
        if rng.random() < 0.5 and n >= 2:
            raw = HEADER + raw[2:]  # give half of them a real header so the deeper checks get exercised
        try:
            pkt = parse_packet(raw)
        except PacketError:
            assert not _independently_valid(raw)
            continue
        assert _independently_valid(raw), raw.hex()
        assert build_packet(pkt.id, pkt.code, pkt.params) == raw
        accepted_random += 1

    for _ in range(5000):
        good = _random_valid(rng)
        assert parse_packet(good) is not None
        kind = rng.randrange(5)
        bad = bytearray(good)
        if kind == 0:  # one flipped bit anywhere: always caught (header, id 0xff, length or checksum)
            i = rng.randrange(len(bad))
            bad[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncated
            bad = bad[: rng.randrange(len(bad))]
        elif kind == 2:  # extra bytes
            bad += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5)))
        elif kind == 3:  # wrong header
            bad[rng.randrange(2)] = rng.choice([b for b in range(256) if b != 0xFF])
        else:  # wrong checksum
            bad[-1] = (bad[-1] + rng.randrange(1, 256)) & 0xFF
        with pytest.raises(PacketError):
            parse_packet(bytes(bad))
        with pytest.raises(PacketError):
            parse_status_packet(bytes(bad))


def test_fuzz_stream_reader_never_accepts_invalid_packets():
    rng = random.Random(99)
    for _ in range(300):
        reader = PacketReader()
        sent: list[bytes] = []
        stream = bytearray()
        for _ in range(rng.randrange(1, 12)):
            choice = rng.random()
            if choice < 0.5:
                pkt = _random_valid(rng)
                sent.append(pkt)
                stream += pkt
            elif choice < 0.8:
                bad = bytearray(_random_valid(rng))
                bad[rng.randrange(2, len(bad))] ^= 1 << rng.randrange(8)
                stream += bad
            else:
                stream += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
        pos = 0
        accepted = []
        while pos < len(stream):
            step = rng.randrange(1, 16)
            reader.feed(bytes(stream[pos : pos + step]))
            pos += step
            for _ in range(10000):
                try:
                    pkt = reader.next_packet()
                except PacketError:
                    continue
                if pkt is None:
                    break
                accepted.append(pkt)
        for pkt in accepted:
            raw = build_packet(pkt.id, pkt.code, pkt.params)
            assert _independently_valid(raw)
            # Every accepted packet is a substring of what was on the wire: the reader invents nothing.
            assert raw in bytes(stream)
        # Clean packets after a resync point are found again: at least the last clean one, if it ended the stream.
        if sent and stream.endswith(sent[-1]) and reader.pending == 0:
            assert accepted and build_packet(accepted[-1].id, accepted[-1].code, accepted[-1].params) == sent[-1]
