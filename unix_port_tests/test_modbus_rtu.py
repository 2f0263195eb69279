# Modbus RTU master against a fake UART that replays frames on a fake clock: CRC,
# framing, exceptions, wrong slave/function, short frames, noise, timeouts, t3.5 gaps.
import asyncio
import struct

from check import eq, true, raises, assert_no_alloc
import modbus_rtu
from modbus_rtu import ModbusRtu, ModbusError, crc16


class Clock:
    def __init__(self):
        self.ms = 5000

    def __call__(self):
        return self.ms


def frame(*parts):
    """bytes of the parts (ints or bytes) with the CRC appended, low byte first."""
    b = bytearray()
    for p in parts:
        if isinstance(p, int):
            b.append(p)
        else:
            b.extend(p)
    c = crc16(b)
    b.append(c & 0xFF)
    b.append(c >> 8)
    return bytes(b)


class Pin:
    def __init__(self):
        self.v = 0
        self.history = []

    def value(self, v):
        self.v = v
        self.history.append(v)


class FakeUart:
    """Delivers scripted replies `delay_ms` after each request; `noise` is waiting in
    the receiver before anything is sent."""

    def __init__(self, clock, baudrate=9600):
        self.clock = clock
        self.baudrate = baudrate
        self.writes = []
        self.write_times = []
        self.replies = []  # queue of (delay_ms, bytes) or callables(request) -> bytes
        self.pending = []  # [(due_ms, byte)]
        self.de = None
        self.de_at_write = []

    def inject(self, data, delay_ms=0):
        due = self.clock() + delay_ms
        for b in data:
            self.pending.append((due, b))

    def write(self, buf):
        req = bytes(buf)
        self.writes.append(req)
        self.write_times.append(self.clock())
        if self.de is not None:
            self.de_at_write.append(self.de.v)
        if self.replies:
            r = self.replies.pop(0)
            if callable(r):
                r = r(req)
            if r is not None:
                delay, data = r
                self.inject(data, delay)
        return len(req)

    def _ready(self):
        now = self.clock()
        n = 0
        for due, _ in self.pending:
            if due > now:
                break
            n += 1
        return n

    def any(self):
        return self._ready()

    def readinto(self, buf):
        n = min(self._ready(), len(buf))
        for i in range(n):
            buf[i] = self.pending[i][1]
        del self.pending[:n]
        return n


def rig(baud=9600, timeout_ms=250, de=True):
    clock = Clock()
    uart = FakeUart(clock, baud)
    pin = Pin() if de else None
    uart.de = pin
    m = ModbusRtu(uart, pin, timeout_ms=timeout_ms, ticks_ms=clock)
    return m, uart, clock, pin


def run(m, clock, step_ms=1, limit_ms=5000):
    """Polls with the fake clock until a result or an error; returns (result, elapsed)."""
    t0 = clock.ms
    for _ in range(limit_ms // step_ms):
        r = m.poll()
        if r is not None:
            return r, clock.ms - t0
        clock.ms += step_ms
    raise AssertionError("exchange never finished")


def regs_reply(slave, fc, words):
    data = bytearray()
    for w in words:
        data.extend(struct.pack(">H", w))
    return frame(slave, fc, len(data), bytes(data))


# ---- CRC and frames ------------------------------------------------------------------------
def test_crc_vectors_from_the_standard():
    # STANDARDS.md §5: 01 03 00 00 00 0A -> C5 CD, 01 04 00 00 00 02 -> 71 CB (low first)
    eq(frame(1, 3, 0, 0, 0, 10)[-2:], b"\xc5\xcd", "read holding crc")
    eq(frame(1, 4, 0, 0, 0, 2)[-2:], b"\x71\xcb", "read input crc")
    eq(crc16(b"123456789"), 0x4B37, "CRC-16/MODBUS check value")


def test_request_frames_for_every_function():
    m, uart, clock, pin = rig()
    uart.replies = [(5, regs_reply(1, 4, [0x4366, 0]))]
    m.start(1, 4, 0, 2)
    run(m, clock)
    eq(uart.writes[0], b"\x01\x04\x00\x00\x00\x02\x71\xcb", "FC 04 request")
    uart.replies = [lambda req: (5, req)]  # FC 06 echoes the request
    m.start(7, 6, 0x0014, 0x1234)
    eq(run(m, clock)[0], True)
    eq(uart.writes[1], frame(7, 6, 0x00, 0x14, 0x12, 0x34))
    uart.replies = [(5, frame(7, 16, 0x00, 0x1C, 0x00, 0x02))]
    m.start(7, 16, 0x001C, 0, [0x4000, 0x0000])
    eq(run(m, clock)[0], True)
    eq(uart.writes[2], frame(7, 16, 0x00, 0x1C, 0x00, 0x02, 4, b"\x40\x00\x00\x00"))


def test_read_returns_the_register_bytes():
    m, uart, clock, pin = rig()
    uart.replies = [(8, regs_reply(1, 4, [0x4366, 0x0000, 0x1234]))]
    m.start(1, 4, 0, 3)
    data, _ = run(m, clock)
    eq(bytes(data), b"\x43\x66\x00\x00\x12\x34")
    eq(struct.unpack(">f", bytes(data[0:4]))[0], 230.0, "0x43660000 is 230.0")


def test_de_pin_high_while_sending_low_to_listen():
    m, uart, clock, pin = rig()
    uart.replies = [(20, regs_reply(1, 3, [1]))]
    m.start(1, 3, 0, 1)
    run(m, clock)
    eq(uart.de_at_write, [1], "DE high while the request goes out")
    eq(pin.v, 0, "DE low afterwards")
    true(pin.history[-2:] == [1, 0], "DE released after the request")


def test_de_released_after_the_wire_time():
    m, uart, clock, pin = rig()
    uart.replies = [None]
    m.start(1, 3, 0, 1)
    clock.ms += 10
    m.poll()  # the line was silent long enough: sends now
    eq(pin.v, 1)
    clock.ms += 9  # 8 bytes at 9600 baud take 9.2 ms
    m.poll()
    eq(pin.v, 1, "still sending")
    clock.ms += 1
    m.poll()
    eq(pin.v, 0, "released once the last byte is out")
    m.abort()


# ---- errors ---------------------------------------------------------------------------------
def test_crc_error_raises_and_the_next_exchange_works():
    m, uart, clock, pin = rig()
    bad = bytearray(regs_reply(1, 4, [1, 2]))
    bad[-1] ^= 0xFF
    uart.replies = [(5, bytes(bad)), (5, regs_reply(1, 4, [3, 4]))]
    m.start(1, 4, 0, 2)
    e = raises(ModbusError, run, m, clock)
    eq(e.kind, "crc", "a CRC error")
    m.start(1, 4, 0, 2)
    eq(bytes(run(m, clock)[0]), b"\x00\x03\x00\x04")


def test_exception_reply_carries_its_code():
    m, uart, clock, pin = rig()
    uart.replies = [(5, frame(1, 0x84, 2))]
    m.start(1, 4, 0x9999, 2)
    e = raises(ModbusError, run, m, clock)
    eq((e.kind, e.code), ("exception", 2))
    eq(str(e), "exception 2 (illegal data address) to function 4", "named")
    for code, name in ((1, "illegal function"), (11, "gateway target failed to respond"),
                       (0, "unknown"), (7, "unknown"), (12, "unknown"), (255, "unknown")):
        uart.replies = [(5, frame(1, 0x84, code))]
        m.start(1, 4, 0x9999, 2)
        e = raises(ModbusError, run, m, clock)
        eq((e.kind, e.code, str(e)), ("exception", code, "exception %d (%s) to function 4" % (code, name)))


def test_wrong_slave_id():
    m, uart, clock, pin = rig()
    uart.replies = [(5, regs_reply(2, 4, [1, 2]))]
    m.start(1, 4, 0, 2)
    e = raises(ModbusError, run, m, clock)
    eq(e.kind, "frame", str(e))
    true("slave 2" in str(e), str(e))


def test_wrong_function():
    m, uart, clock, pin = rig()
    uart.replies = [(5, regs_reply(1, 3, [1, 2]))]
    m.start(1, 4, 0, 2)
    e = raises(ModbusError, run, m, clock)
    eq(e.kind, "frame", str(e))
    true("function 3" in str(e), str(e))


def test_wrong_byte_count():
    m, uart, clock, pin = rig()
    uart.replies = [(5, regs_reply(1, 4, [1, 2, 3]))]
    m.start(1, 4, 0, 2)
    e = raises(ModbusError, run, m, clock)
    eq(e.kind, "frame", str(e))
    true("byte count" in str(e), str(e))


def test_short_frame_ends_at_the_timeout():
    m, uart, clock, pin = rig(timeout_ms=100)
    full = regs_reply(1, 4, [1, 2, 3, 4])
    uart.replies = [(5, full[:7])]
    m.start(1, 4, 0, 4)
    t0 = clock.ms
    e = raises(ModbusError, run, m, clock)
    eq(e.kind, "frame", str(e))
    true("short frame" in str(e), str(e))
    # timeout 100 ms + the reply's wire time (13 bytes, 15 ms) + the request (9 ms)
    true(clock.ms - t0 < 100 + 15 + 9 + 10, "bounded: %d ms" % (clock.ms - t0))


def test_timeout_when_nobody_answers():
    m, uart, clock, pin = rig(timeout_ms=200)
    uart.replies = [None]
    m.start(1, 4, 0, 2)
    t0 = clock.ms
    eq(raises(ModbusError, run, m, clock).kind, "timeout")
    took = clock.ms - t0
    true(200 <= took <= 200 + 30, "timeout after %d ms" % took)


def test_line_noise_is_an_error_not_a_crash():
    m, uart, clock, pin = rig()
    uart.replies = [(5, b"\x55\xaa\x00\xff\x13\x37\x42\x99")]
    m.start(1, 4, 0, 2)
    e = raises(ModbusError, run, m, clock)
    eq(e.kind, "frame", str(e))
    true("noise" in str(e), str(e))
    uart.replies = [(5, regs_reply(1, 4, [9, 9]))]
    m.start(1, 4, 0, 2)
    eq(bytes(run(m, clock)[0]), b"\x00\x09\x00\x09", "polling goes on")


def test_noise_before_the_reply_is_skipped():
    m, uart, clock, pin = rig()
    uart.replies = [(5, b"\x00\xff\x17" + regs_reply(1, 4, [0xABCD, 1]))]
    m.start(1, 4, 0, 2)
    eq(bytes(run(m, clock)[0]), b"\xab\xcd\x00\x01")


def test_noise_waiting_before_the_request_is_flushed():
    m, uart, clock, pin = rig()
    uart.inject(b"\x01\x04\x04garbage")
    uart.replies = [(5, regs_reply(1, 4, [5, 6]))]
    m.start(1, 4, 0, 2)
    eq(bytes(run(m, clock)[0]), b"\x00\x05\x00\x06")
    true(m.noise_bytes >= 10, "noise counted: %d" % m.noise_bytes)


def test_a_chattering_line_times_out():
    m, uart, clock, pin = rig(timeout_ms=50)
    for i in range(200):
        uart.inject(b"\x55", delay_ms=i)
    m.start(1, 4, 0, 2)
    e = raises(ModbusError, run, m, clock)
    eq(e.kind, "timeout", str(e))
    true("silent" in str(e), str(e))
    eq(uart.writes, [], "never talked over the noise")


def test_trailing_bytes_after_a_good_reply():
    m, uart, clock, pin = rig()
    uart.replies = [(5, regs_reply(1, 4, [1, 2]) + b"\xee\xee"), (5, regs_reply(1, 4, [3, 4]))]
    m.start(1, 4, 0, 2)
    eq(bytes(run(m, clock)[0]), b"\x00\x01\x00\x02")
    m.start(1, 4, 0, 2)
    eq(bytes(run(m, clock)[0]), b"\x00\x03\x00\x04")


def test_write_echo_mismatch():
    m, uart, clock, pin = rig()
    uart.replies = [(5, frame(1, 6, 0, 0x14, 0, 9))]
    m.start(1, 6, 0x0014, 8)
    eq(raises(ModbusError, run, m, clock).kind, "frame")


def test_broadcast_write_awaits_no_reply():
    m, uart, clock, pin = rig()
    uart.replies = [None]
    m.start(0, 6, 0x0014, 3)
    r, took = run(m, clock)
    eq(r, True)
    true(took < 150, "returns after the turnaround delay: %d ms" % took)


def test_argument_checks():
    m, uart, clock, pin = rig()
    raises(ValueError, m.start, 1, 4, 0, 126)
    raises(ValueError, m.start, 0, 4, 0, 1)  # no broadcast reads
    raises(ValueError, m.start, 1, 5, 0, 1)
    raises(ValueError, m.start, 1, 16, 0, 0, [0] * 124)


# ---- timing ---------------------------------------------------------------------------------
def test_t35_from_the_baud_rate():
    eq(modbus_rtu.t35_us(9600), 4010, "3.5 x 11 bits at 9600")
    eq(modbus_rtu.t35_us(19200), 2005)
    eq(modbus_rtu.t35_us(38400), 1750, "fixed above 19200")
    eq(modbus_rtu.t35_us(115200), 1750)
    eq(modbus_rtu.wire_us(8, 9600), 9166)


def test_silence_before_each_request():
    m, uart, clock, pin = rig()
    uart.replies = [(5, regs_reply(1, 4, [1, 2])), (5, regs_reply(1, 4, [1, 2]))]
    m.start(1, 4, 0, 2)
    run(m, clock)
    reply_done = clock.ms
    m.start(1, 4, 0, 2)
    run(m, clock)
    gap = uart.write_times[1] - reply_done
    true(gap >= 4, "t3.5 (4.0 ms at 9600) before the next request: %d ms" % gap)


def test_reply_time_counts_wire_time_of_long_replies():
    # 125 registers = 255 bytes: 292 ms on the wire at 9600 baud. A slow meter that
    # starts 200 ms later and streams the whole frame must not time out at 250 ms.
    m, uart, clock, pin = rig(timeout_ms=250)
    uart.replies = [(520, regs_reply(1, 3, list(range(125))))]
    m.start(1, 3, 0, 125)
    data, _ = run(m, clock)
    eq(len(data), 250)


class SilentUart:
    baudrate = 9600

    def write(self, buf):
        return len(buf)

    def any(self):
        return 0

    def readinto(self, buf):
        return 0


def test_waiting_for_a_reply_allocates_nothing():
    clock = Clock()
    m = ModbusRtu(SilentUart(), Pin(), ticks_ms=clock)
    m.start(1, 4, 0, 10)
    clock.ms += 10
    m.poll()  # sends
    clock.ms += 20
    m.poll()  # DE released, listening
    assert_no_alloc(m.poll)
    clock.ms += 1
    assert_no_alloc(m.poll)
    m.abort()


def test_a_long_reply_arrives_in_chunks():
    m, uart, clock, pin = rig()
    uart.replies = [(5, regs_reply(1, 3, list(range(125))))]
    m.start(1, 3, 0, 125)
    data, _ = run(m, clock)
    eq(bytes(data[-4:]), b"\x00\x7b\x00\x7c")


def test_a_reply_longer_than_a_frame_is_refused():
    m, uart, clock, pin = rig()
    uart.replies = [(5, b"\x55" * 300)]
    m.start(1, 3, 0, 125)
    e = raises(ModbusError, run, m, clock)
    eq(e.kind, "frame", str(e))
    true("longer" in str(e), str(e))
    # A full-size reply with noise behind it is still a good reply.
    uart.replies = [(5, regs_reply(1, 3, list(range(125))) + b"\x55" * 40)]
    m.start(1, 3, 0, 125)
    data, _ = run(m, clock)
    eq(len(data), 250)


# ---- async API --------------------------------------------------------------------------------
def test_async_reads_never_block_the_loop():
    import time

    uart = FakeUart(time.ticks_ms, 9600)
    m = ModbusRtu(uart, Pin(), timeout_ms=100)
    ticks = [0]

    async def other():
        while True:
            ticks[0] += 1
            await asyncio.sleep_ms(1)

    async def main():
        t = asyncio.create_task(other())
        uart.replies = [(30, regs_reply(1, 4, [0x4366, 0]))]
        data = await m.read_input_registers(1, 0, 2)
        eq(bytes(data), b"\x43\x66\x00\x00")
        uart.replies = [None]
        try:
            await m.read_holding_registers(1, 0, 2)
        except ModbusError as e:
            eq(e.kind, "timeout")
        else:
            raise AssertionError("no timeout")
        uart.replies = [(5, regs_reply(1, 3, [7]))]
        data = await m.read_registers(3, 1, 0, 1)
        eq(bytes(data), b"\x00\x07")
        t.cancel()

    asyncio.run(main())
    asyncio.new_event_loop()
    true(ticks[0] >= 50, "the other task ran during the exchanges: %d" % ticks[0])


def test_cancelled_exchange_leaves_a_clean_master():
    import time

    uart = FakeUart(time.ticks_ms, 9600)
    m = ModbusRtu(uart, Pin(), timeout_ms=500)

    async def main():
        uart.replies = [None]
        try:
            await asyncio.wait_for_ms(m.read_input_registers(1, 0, 2), 50)
        except asyncio.TimeoutError:
            pass
        uart.replies = [(5, regs_reply(1, 4, [1, 1]))]
        data = await m.read_input_registers(1, 0, 2)
        eq(bytes(data), b"\x00\x01\x00\x01")

    asyncio.run(main())
    asyncio.new_event_loop()


class BrokenUart(SilentUart):
    def write(self, buf):
        raise OSError(5)


def test_a_failing_serial_port_is_a_modbus_error():
    clock = Clock()
    m = ModbusRtu(BrokenUart(), Pin(), ticks_ms=clock)
    m.start(1, 4, 0, 2)
    clock.ms += 10
    e = raises(ModbusError, m.poll)
    true("serial port" in str(e), str(e))
    m.start(1, 4, 0, 2)  # the master is usable again
    m.abort()
