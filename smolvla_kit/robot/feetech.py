"""The Feetech STS3215 serial-bus protocol, written out in full, and a small bus driver on top of `pyserial`.

The SO-101 has six STS3215 servos daisy-chained on one half-duplex TTL bus at 1 Mbaud. Every exchange is a
packet:

    instruction (host -> servo):  0xFF 0xFF  ID  LEN  INSTR  PARAM_1 .. PARAM_N  CHECKSUM
    status      (servo -> host):  0xFF 0xFF  ID  LEN  ERROR  PARAM_1 .. PARAM_N  CHECKSUM

    LEN      = N + 2                    (the instruction/error byte and the checksum)
    CHECKSUM = ~(ID + LEN + INSTR/ERROR + PARAM_1 + ... + PARAM_N) & 0xFF

Instructions used here: PING 0x01, READ 0x02 (params: address, length), WRITE 0x03 (params: address, bytes...),
SYNC_READ 0x82 (sent to the broadcast ID 0xFE; params: address, length, id_1 .. id_k; every listed servo answers
with its own status packet) and SYNC_WRITE 0x83 (broadcast; params: address, length, then for each servo its id
followed by `length` bytes; nobody answers). Multi-byte values are little-endian. Some registers are signed in
sign-magnitude form: bit 15 is the sign of a position, bit 11 the sign of the homing offset.

The status packet's ERROR byte is a set of alarm bits (voltage, angle sensor, overheat, over-current, overload).

Register addresses are those of Feetech's STS/SMS memory table (the same numbers LeRobot's `feetech/tables.py`
and other public STS3215 drivers use).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from smolvla_kit.errors import KitError, MissingKey

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# Protocol constants
# ----------------------------------------------------------------------------------------------------------------

HEADER = b"\xff\xff"
BROADCAST_ID = 0xFE
MAX_SERVO_ID = 0xFC  # 252: the highest ID a servo may be given
MAX_PACKET_SIZE = 250  # whole packet, header to checksum (the Feetech SDK's TX/RX buffer size)
MIN_PACKET_SIZE = 6  # FF FF ID LEN INSTR/ERR CHK

INST_PING = 0x01
INST_READ = 0x02
INST_WRITE = 0x03
INST_SYNC_READ = 0x82
INST_SYNC_WRITE = 0x83

INSTRUCTION_NAMES = {
    INST_PING: "PING",
    INST_READ: "READ",
    INST_WRITE: "WRITE",
    INST_SYNC_READ: "SYNC_READ",
    INST_SYNC_WRITE: "SYNC_WRITE",
}

# Alarm bits of the status packet's error byte.
ERROR_BITS = {
    0x01: "input voltage out of range",
    0x02: "angle sensor fault",
    0x04: "overheating",
    0x08: "over-current",
    0x20: "overload",
}

STS3215_MODEL_NUMBER = 777
STS3215_RESOLUTION = 4096  # encoder steps per turn

BAUDRATE_CODES = {  # value of the Baud_Rate register for each speed
    1_000_000: 0,
    500_000: 1,
    250_000: 2,
    128_000: 3,
    115_200: 4,
    76_800: 5,
    57_600: 6,
    38_400: 7,
}


# ----------------------------------------------------------------------------------------------------------------
# The control table
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Register:
    """One field of the servo's control table."""

    name: str
    address: int
    size: int  # bytes: 1 or 2
    sign_bit: int | None = None  # sign-magnitude sign bit, or None for unsigned
    read_only: bool = False

    @property
    def eeprom(self) -> bool:
        """Addresses below 40 live in EEPROM: they survive a power cycle when the Lock register is 0."""
        return self.address < 40


def _table(*regs: Register) -> dict[str, Register]:
    return {r.name: r for r in regs}


# (name, address, size[, sign bit][, read-only]); EEPROM 0..39, SRAM 40.., factory area 80..
CONTROL_TABLE: dict[str, Register] = _table(
    Register("Firmware_Major_Version", 0, 1, read_only=True),
    Register("Firmware_Minor_Version", 1, 1, read_only=True),
    Register("Model_Number", 3, 2, read_only=True),
    Register("ID", 5, 1),
    Register("Baud_Rate", 6, 1),
    Register("Return_Delay_Time", 7, 1),
    Register("Response_Status_Level", 8, 1),  # 0: answer only READ and PING; 1: answer everything
    Register("Min_Position_Limit", 9, 2),
    Register("Max_Position_Limit", 11, 2),
    Register("Max_Temperature_Limit", 13, 1),
    Register("Max_Voltage_Limit", 14, 1),
    Register("Min_Voltage_Limit", 15, 1),
    Register("Max_Torque_Limit", 16, 2),  # 0..1000 = 0..100 % of stall torque
    Register("Phase", 18, 1),  # bit 4: 1 = report the multi-turn angle, 0 = single-turn 0..4095
    Register("Unloading_Condition", 19, 1),
    Register("LED_Alarm_Condition", 20, 1),
    Register("P_Coefficient", 21, 1),
    Register("D_Coefficient", 22, 1),
    Register("I_Coefficient", 23, 1),
    Register("Minimum_Startup_Force", 24, 2),
    Register("CW_Dead_Zone", 26, 1),
    Register("CCW_Dead_Zone", 27, 1),
    Register("Protection_Current", 28, 2),  # unit 6.5 mA
    Register("Angular_Resolution", 30, 1),
    Register("Homing_Offset", 31, 2, sign_bit=11),
    Register("Operating_Mode", 33, 1),  # 0 position, 1 velocity, 2 PWM, 3 step
    Register("Protective_Torque", 34, 1),
    Register("Protection_Time", 35, 1),
    Register("Overload_Torque", 36, 1),
    Register("Torque_Enable", 40, 1),
    Register("Acceleration", 41, 1),
    Register("Goal_Position", 42, 2, sign_bit=15),
    Register("Goal_Time", 44, 2),
    Register("Goal_Velocity", 46, 2, sign_bit=15),
    Register("Torque_Limit", 48, 2),
    Register("Lock", 55, 1),  # 0: EEPROM writes are saved; 1: they last until power-off
    Register("Present_Position", 56, 2, sign_bit=15, read_only=True),
    Register("Present_Velocity", 58, 2, sign_bit=15, read_only=True),
    Register("Present_Load", 60, 2, sign_bit=10, read_only=True),
    Register("Present_Voltage", 62, 1, read_only=True),  # 0.1 V
    Register("Present_Temperature", 63, 1, read_only=True),  # deg C
    Register("Status", 65, 1, read_only=True),
    Register("Moving", 66, 1, read_only=True),
    Register("Present_Current", 69, 2, read_only=True),
    Register("Maximum_Acceleration", 85, 1),
)

CONTROL_TABLE_SIZE = 128  # bytes of table the emulator models (everything above is unused here)


def register(name: str) -> Register:
    """Look a register up by name, with an error that lists the known names."""
    try:
        return CONTROL_TABLE[name]
    except KeyError:
        raise MissingKey(f"unknown STS3215 register {name!r}; known: {', '.join(CONTROL_TABLE)}") from None


# ----------------------------------------------------------------------------------------------------------------
# Value encoding
# ----------------------------------------------------------------------------------------------------------------


def encode_sign_magnitude(value: int, sign_bit: int) -> int:
    """Signed int -> sign-magnitude (the magnitude in the bits below `sign_bit`, the sign in `sign_bit`)."""
    limit = (1 << sign_bit) - 1
    if abs(value) > limit:
        raise ValueError(
            f"{value} does not fit a sign-magnitude field with the sign in bit {sign_bit} (|v| <= {limit})"
        )
    return ((1 << sign_bit) | -value) if value < 0 else value


def decode_sign_magnitude(raw: int, sign_bit: int) -> int:
    """Sign-magnitude -> signed int. Bits above the sign bit are ignored, as the servo does."""
    magnitude = raw & ((1 << sign_bit) - 1)
    return -magnitude if raw & (1 << sign_bit) else magnitude


def encode_value(reg: Register, value: int) -> bytes:
    """A register value (signed where the register is) -> its little-endian bytes."""
    value = int(value)
    if reg.sign_bit is not None:
        value = encode_sign_magnitude(value, reg.sign_bit)
    if not 0 <= value < (1 << (8 * reg.size)):
        raise ValueError(f"{value} does not fit register {reg.name} ({reg.size} byte(s), unsigned)")
    return value.to_bytes(reg.size, "little")


def decode_value(reg: Register, data: bytes) -> int:
    """Little-endian bytes of one register -> its value (signed where the register is)."""
    if len(data) != reg.size:
        raise ValueError(f"register {reg.name} has {reg.size} byte(s), got {len(data)}")
    raw = int.from_bytes(data, "little")
    return decode_sign_magnitude(raw, reg.sign_bit) if reg.sign_bit is not None else raw


# ----------------------------------------------------------------------------------------------------------------
# Packets
# ----------------------------------------------------------------------------------------------------------------


class PacketError(KitError, ValueError):
    """Bytes that are not a valid Feetech packet (bad header, length, ID or checksum). Never accepted."""


@dataclass(frozen=True)
class Packet:
    """A parsed packet. `code` is the instruction (host -> servo) or the error byte (servo -> host)."""

    id: int
    code: int
    params: bytes = b""


def checksum(body: bytes | bytearray | Sequence[int]) -> int:
    """The Feetech checksum of ID..last parameter: the low byte of the inverted sum."""
    return (~sum(body)) & 0xFF


def build_packet(servo_id: int, code: int, params: bytes | bytearray | Sequence[int] = b"") -> bytes:
    """Assemble one packet (instruction or status)."""
    params = bytes(params)
    if not 0 <= servo_id <= BROADCAST_ID:
        raise ValueError(f"servo id must be 0..{BROADCAST_ID}, got {servo_id}")
    if not 0 <= code <= 0xFF:
        raise ValueError(f"instruction/error byte must be 0..255, got {code}")
    if len(params) + MIN_PACKET_SIZE > MAX_PACKET_SIZE:
        raise ValueError(
            f"{len(params)} parameter bytes do not fit one packet (max {MAX_PACKET_SIZE - MIN_PACKET_SIZE})"
        )
    body = bytes([servo_id, len(params) + 2, code]) + params
    return HEADER + body + bytes([checksum(body)])


def parse_packet(data: bytes | bytearray) -> Packet:
    """Parse exactly one complete packet, or raise :class:`PacketError` saying what is wrong with it."""
    data = bytes(data)
    if len(data) < MIN_PACKET_SIZE:
        raise PacketError(f"packet too short: {len(data)} bytes < {MIN_PACKET_SIZE}")
    if len(data) > MAX_PACKET_SIZE:
        raise PacketError(f"packet too long: {len(data)} bytes > {MAX_PACKET_SIZE}")
    if data[:2] != HEADER:
        raise PacketError(f"bad header {data[:2].hex(' ')} (expected ff ff)")
    servo_id, length = data[2], data[3]
    if servo_id == 0xFF:
        raise PacketError("invalid servo id 0xff")
    if length < 2:
        raise PacketError(f"bad length field {length} (< 2)")
    if len(data) != length + 4:
        raise PacketError(f"length field says {length + 4} bytes, got {len(data)}")
    expected = checksum(data[2:-1])
    if data[-1] != expected:
        raise PacketError(f"bad checksum 0x{data[-1]:02x} (expected 0x{expected:02x})")
    return Packet(servo_id, data[4], data[5:-1])


def parse_status_packet(data: bytes | bytearray) -> Packet:
    """Parse a servo's status packet: a valid packet from a real servo ID whose error byte has bit 7 clear."""
    pkt = parse_packet(data)
    if pkt.id > MAX_SERVO_ID:
        raise PacketError(f"status packet from invalid servo id {pkt.id}")
    if pkt.code & 0x80:
        raise PacketError(f"status error byte 0x{pkt.code:02x} has bit 7 set (not a status packet)")
    return pkt


class PacketReader:
    """Cuts a byte stream into packets.

    Bytes before a header are skipped (line noise, a half-received packet). A complete packet with a bad length
    or checksum raises :class:`PacketError` once, after the reader has dropped its header, so the next call
    resynchronises on the following header. An incomplete packet waits for more bytes.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def next_packet(self) -> Packet | None:
        """The next complete valid packet, None if more bytes are needed, or PacketError for a corrupt one."""
        buf = self._buf
        while True:
            start = buf.find(HEADER)
            if start < 0:
                # Keep a trailing 0xFF: it may be the first half of the next header.
                del buf[: max(0, len(buf) - 1) if buf.endswith(b"\xff") else len(buf)]
                return None
            del buf[:start]
            if len(buf) < 4:
                return None
            if buf[2] == 0xFF:  # "FF FF FF ...": the real header starts one byte later
                del buf[:1]
                continue
            length = buf[3]
            if length < 2 or length + 4 > MAX_PACKET_SIZE:
                servo_id = buf[2]
                del buf[:2]
                raise PacketError(f"bad length field {length} in packet from id {servo_id}")
            total = length + 4
            if len(buf) < total:
                return None
            raw = bytes(buf[:total])
            try:
                pkt = parse_packet(raw)
            except PacketError:
                del buf[:2]
                raise
            del buf[:total]
            return pkt


def describe_error_byte(error: int) -> str:
    names = [text for bit, text in ERROR_BITS.items() if error & bit]
    unknown = error & ~sum(ERROR_BITS)
    if unknown:
        names.append(f"unknown bits 0x{unknown:02x}")
    return ", ".join(names) or "no error"


# ----------------------------------------------------------------------------------------------------------------
# Errors the bus raises
# ----------------------------------------------------------------------------------------------------------------


class FeetechError(KitError, RuntimeError):
    """Base class of the bus errors."""


class PortError(FeetechError):
    """The serial port could not be opened (missing, unplugged, no permission)."""


class CommunicationError(FeetechError):
    """No valid reply after every retry: timeouts or corrupt packets. Names the motors and the port."""


class MotorAlarmError(FeetechError):
    """A servo answered with alarm bits set in its error byte (overload, overheating, voltage...)."""


# ----------------------------------------------------------------------------------------------------------------
# The bus
# ----------------------------------------------------------------------------------------------------------------

SO101_MOTORS: dict[str, int] = {
    "shoulder_pan": 1,
    "shoulder_lift": 2,
    "elbow_flex": 3,
    "wrist_flex": 4,
    "wrist_roll": 5,
    "gripper": 6,
}


def _port_help(port: str) -> str:
    try:
        from serial.tools import list_ports

        found = [p.device for p in list_ports.comports()]
    except Exception:  # listing ports is only a hint
        found = []
    listing = ", ".join(found) if found else "none found"
    return (
        f"Check that the arm's USB cable is plugged in, that the servo power supply is on, that '{port}' is the "
        f"right device (serial ports seen now: {listing}; on Linux usually /dev/ttyACM0 or /dev/ttyUSB0, on macOS "
        "/dev/tty.usbmodem...), and that you may open it (Linux: add yourself to the 'dialout' group)."
    )


class FeetechBus:
    """A Feetech STS bus on a serial port: ping, read, write, sync-read and sync-write, with retries.

    Values are raw register values (ticks for positions), decoded from sign-magnitude where the register is
    signed. Motors are addressed by name (`motors` maps name -> ID). All transactions are serialised by a lock so
    a watchdog thread and the control loop can share the bus.
    """

    def __init__(
        self,
        port: str,
        motors: Mapping[str, int] = SO101_MOTORS,
        baudrate: int = 1_000_000,
        timeout_s: float = 0.05,
        retries: int = 3,
    ) -> None:
        self.port = port
        self.motors = dict(motors)
        self.baudrate = baudrate
        self.timeout_s = timeout_s  # how long to wait for one status packet
        self.retries = retries  # extra attempts after a failed transaction
        self._serial = None
        self._reader = PacketReader()
        self._lock = threading.RLock()  # re-entrant: an emergency stop may run inside a transaction's thread

    # -- port ----------------------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        """Open the serial port, or raise :class:`PortError` naming the port and what to check."""
        try:
            import serial
        except ImportError as e:  # pragma: no cover - pyserial is a dependency of the robot extra
            raise ImportError("The real-arm driver needs pyserial: pip install 'smolvla-kit[robot]'") from e
        try:
            # A short read timeout: the transaction loop polls and keeps its own deadline.
            self._serial = serial.Serial(self.port, baudrate=self.baudrate, timeout=0.002, write_timeout=1.0)
        except (serial.SerialException, OSError, ValueError) as e:
            raise PortError(f"Cannot open serial port '{self.port}': {e}. {_port_help(self.port)}") from e
        self._reader.clear()

    def close(self) -> None:
        with self._lock:
            if self._serial is not None:
                try:
                    self._serial.close()
                finally:
                    self._serial = None

    def __enter__(self) -> "FeetechBus":
        if not self.is_open:
            self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- names ---------------------------------------------------------------------------------------------------

    def motor_id(self, motor: str | int) -> int:
        if isinstance(motor, int):
            return motor
        try:
            return self.motors[motor]
        except KeyError:
            raise MissingKey(f"unknown motor {motor!r}; this bus has {', '.join(self.motors)}") from None

    def motor_name(self, motor_id: int) -> str:
        for name, mid in self.motors.items():
            if mid == motor_id:
                return name
        return f"id {motor_id}"

    def _label(self, ids: Iterable[int]) -> str:
        return ", ".join(f"'{self.motor_name(i)}' (id {i})" for i in ids)

    # -- transport -----------------------------------------------------------------------------------------------

    def _require_open(self):
        if self._serial is None:
            raise FeetechError(f"bus on '{self.port}' is not open: call open() (or connect()) first")
        return self._serial

    def _send(self, packet: bytes) -> None:
        ser = self._require_open()
        self._reader.clear()
        try:
            # Drop anything left from an earlier, failed exchange so a late reply cannot be taken for this one.
            ser.reset_input_buffer()
            ser.write(packet)
            ser.flush()
        except Exception as e:  # SerialException, OSError, termios.error: the device went away
            raise CommunicationError(
                f"serial port '{self.port}' stopped working ({e!r}): was the arm unplugged or switched off? "
                f"{_port_help(self.port)}"
            ) from e

    def _receive(self, ids: Sequence[int]) -> dict[int, Packet]:
        """Collect one status packet from each of `ids`; raise on timeout or a corrupt packet."""
        ser = self._require_open()
        wanted = set(ids)
        got: dict[int, Packet] = {}
        deadline = time.monotonic() + self.timeout_s
        while wanted - got.keys():
            pkt = self._reader.next_packet()  # PacketError propagates: the caller retries
            if pkt is not None:
                if pkt.id in wanted and pkt.id not in got:
                    if pkt.code & 0x80:
                        raise PacketError(f"status from id {pkt.id} has invalid error byte 0x{pkt.code:02x}")
                    got[pkt.id] = pkt
                    deadline = time.monotonic() + self.timeout_s  # each servo gets its own reply window
                continue
            if time.monotonic() > deadline:
                missing = sorted(wanted - got.keys())
                raise TimeoutError(f"no reply from {self._label(missing)} within {self.timeout_s * 1000:.0f} ms")
            try:
                chunk = ser.read(max(1, ser.in_waiting))
            except Exception as e:
                raise CommunicationError(
                    f"serial port '{self.port}' stopped working ({e!r}): was the arm unplugged or switched off? "
                    f"{_port_help(self.port)}"
                ) from e
            if chunk:
                self._reader.feed(chunk)
        return got

    def _transact(self, packet: bytes, reply_ids: Sequence[int], what: str) -> dict[int, Packet]:
        """Send `packet` and collect replies from `reply_ids`, retrying the whole exchange on failure."""
        with self._lock:
            last: Exception | None = None
            for _attempt in range(1 + self.retries):
                self._send(packet)
                if not reply_ids:
                    return {}
                try:
                    replies = self._receive(reply_ids)
                except (TimeoutError, PacketError) as e:
                    last = e
                    continue
                alarms = {i: p.code for i, p in replies.items() if p.code}
                if alarms:
                    text = "; ".join(f"{self._label([i])}: {describe_error_byte(c)}" for i, c in alarms.items())
                    raise MotorAlarmError(
                        f"{what}: servo alarm on '{self.port}': {text}. Let the servo cool down, check the load and "
                        "the power supply (the STS3215 wants 12 V for the follower), then power-cycle the arm."
                    )
                return replies
            raise CommunicationError(
                f"{what} failed after {1 + self.retries} attempts on '{self.port}': {last}. Check the daisy-chain "
                "cables between the servos, the servo power supply, and that the motor IDs are 1..6 at 1 Mbaud."
            )

    # -- instructions --------------------------------------------------------------------------------------------

    def ping(self, motor: str | int) -> int:
        """PING one motor; return the error byte of its status packet (0 = healthy)."""
        mid = self.motor_id(motor)
        pkt = build_packet(mid, INST_PING)
        return self._transact(pkt, [mid], f"PING {self._label([mid])}")[mid].code

    def read(self, name: str, motor: str | int) -> int:
        """READ one register of one motor."""
        reg, mid = register(name), self.motor_id(motor)
        pkt = build_packet(mid, INST_READ, [reg.address, reg.size])
        reply = self._transact(pkt, [mid], f"READ {name} from {self._label([mid])}")[mid]
        if len(reply.params) != reg.size:
            raise CommunicationError(
                f"READ {name}: {self._label([mid])} sent {len(reply.params)} bytes, expected {reg.size}"
            )
        return decode_value(reg, reply.params)

    def write(self, name: str, motor: str | int, value: int) -> None:
        """WRITE one register of one motor and wait for its acknowledgement."""
        reg, mid = register(name), self.motor_id(motor)
        if reg.read_only:
            raise ValueError(f"register {name} is read-only")
        pkt = build_packet(mid, INST_WRITE, bytes([reg.address]) + encode_value(reg, value))
        self._transact(pkt, [mid], f"WRITE {name}={value} to {self._label([mid])}")

    def sync_read(self, name: str, motors: Sequence[str] | None = None) -> dict[str, int]:
        """SYNC_READ one register from several motors (all by default) in one exchange."""
        reg = register(name)
        names = list(self.motors) if motors is None else list(motors)
        ids = [self.motor_id(m) for m in names]
        pkt = build_packet(BROADCAST_ID, INST_SYNC_READ, bytes([reg.address, reg.size, *ids]))
        replies = self._transact(pkt, ids, f"SYNC_READ {name}")
        out = {}
        for m, mid in zip(names, ids):
            data = replies[mid].params
            if len(data) != reg.size:
                raise CommunicationError(
                    f"SYNC_READ {name}: {self._label([mid])} sent {len(data)} bytes, expected {reg.size}"
                )
            out[m] = decode_value(reg, data)
        return out

    def sync_write(self, name: str, values: Mapping[str, int]) -> None:
        """SYNC_WRITE one register of several motors in one packet (no replies on this instruction)."""
        reg = register(name)
        if reg.read_only:
            raise ValueError(f"register {name} is read-only")
        params = bytearray([reg.address, reg.size])
        for m, v in values.items():
            params.append(self.motor_id(m))
            params += encode_value(reg, v)
        self._transact(build_packet(BROADCAST_ID, INST_SYNC_WRITE, params), [], f"SYNC_WRITE {name}")

    # -- helpers LeRobot's driver also has -----------------------------------------------------------------------

    def disable_torque(self, motors: Sequence[str] | None = None) -> None:
        """Torque off and EEPROM unlocked (Lock=0), motor by motor, each acknowledged."""
        for m in self.motors if motors is None else motors:
            self.write("Torque_Enable", m, 0)
            self.write("Lock", m, 0)

    def enable_torque(self, motors: Sequence[str] | None = None) -> None:
        """Torque on and EEPROM locked (Lock=1), motor by motor, each acknowledged."""
        for m in self.motors if motors is None else motors:
            self.write("Torque_Enable", m, 1)
            self.write("Lock", m, 1)

    def emergency_torque_off(self, confirm_s: float = 0.5) -> bool:
        """Torque off on every motor: one SYNC_WRITE sent twice, which needs no reply and so works on a bus that is
        dropping or corrupting replies; then each motor's Torque_Enable is read back, and a motor that does not
        confirm 0 (it missed the broadcast while the bus glitched) is sent the off again, until all confirm or
        `confirm_s` has passed. Returns whether every motor confirmed. Never raises (it is called while handling
        another error)."""
        with self._lock:
            if self._serial is None:
                return False
            self._broadcast_torque_off()
            pending = list(self.motors)
            deadline = time.monotonic() + confirm_s
            while True:
                pending = [m for m in pending if not self._confirms_torque_off(m)]
                if not pending or time.monotonic() >= deadline:
                    break
                self._broadcast_torque_off()
                time.sleep(0.02)
            if pending:
                log.error("torque-off not confirmed by %s on '%s' within %.1f s: switch the arm's power off",
                          ", ".join(pending), self.port, confirm_s)
            return not pending

    def _broadcast_torque_off(self) -> None:
        pkt = build_packet(
            BROADCAST_ID,
            INST_SYNC_WRITE,
            bytes([register("Torque_Enable").address, 1]) + b"".join(bytes([i, 0]) for i in self.motors.values()),
        )
        for _ in range(2):
            try:
                self._serial.write(pkt)
                self._serial.flush()
            except Exception:  # noqa: BLE001 - best effort; the read-back below decides
                pass

    def _confirms_torque_off(self, motor: str) -> bool:
        """Read Torque_Enable back; True only for a reply that says 0 (a servo alarm does not hide the value)."""
        reg, mid = register("Torque_Enable"), self.motors[motor]
        try:
            self._send(build_packet(mid, INST_READ, [reg.address, reg.size]))
            reply = self._receive([mid])[mid]
            return len(reply.params) == reg.size and decode_value(reg, reply.params) == 0
        except Exception:  # noqa: BLE001 - no answer, a garbled one: not confirmed
            return False


__all__ = [
    "BROADCAST_ID",
    "CONTROL_TABLE",
    "CommunicationError",
    "FeetechBus",
    "FeetechError",
    "INST_PING",
    "INST_READ",
    "INST_SYNC_READ",
    "INST_SYNC_WRITE",
    "INST_WRITE",
    "MotorAlarmError",
    "Packet",
    "PacketError",
    "PacketReader",
    "PortError",
    "Register",
    "SO101_MOTORS",
    "STS3215_MODEL_NUMBER",
    "STS3215_RESOLUTION",
    "build_packet",
    "checksum",
    "decode_sign_magnitude",
    "decode_value",
    "encode_sign_magnitude",
    "encode_value",
    "parse_packet",
    "parse_status_packet",
    "register",
]
