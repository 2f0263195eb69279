# Modbus RTU master on an injected UART and RS-485 direction pin.
#
#   m = ModbusRtu(uart, de_pin)                    # de_pin may be None (the UART drives DE)
#   data = await m.read_input_registers(1, 0x0000, 10)    # memoryview of 20 bytes
#
# `uart` needs write(buf), readinto(buf) -> count (0 or None when nothing waits, never
# blocks), any() and a `baudrate` attribute; `txdone()` is used when present. Read
# results are big-endian register bytes, a memoryview into a buffer of this object that
# stays valid until the next exchange.
#
# Wire format (STANDARDS.md §5): address | function | data | CRC-16 (init 0xFFFF,
# reflected polynomial 0xA001, low byte first). Before a request the line must have
# been silent for t3.5 (3.5 characters of 11 bits; a fixed 1.75 ms above 19200 baud).
# A reply is complete when its length (known from its header) has arrived; a reply
# that cannot be recognised ends after t3.5 of silence. Every failure raises a
# ModbusError (its `kind` says which) and flushes the line; the master is then ready for
# the next exchange.
#
# The core is synchronous and needs no event loop: start() queues a request, poll()
# advances it (None while waiting, the result when done, or raises). The async methods
# poll it with asyncio sleeps in between, so the event loop never blocks.
import time
from micropython import const

try:
    import asyncio
except ImportError:  # a port without asyncio still has the sync core
    asyncio = None

FC_READ_HOLDING = const(3)
FC_READ_INPUT = const(4)
FC_WRITE_SINGLE = const(6)
FC_WRITE_MULTIPLE = const(16)

MAX_READ = const(125)  # registers per read (Modbus application protocol §6.3/6.4)
_MAX_WRITE = const(123)  # registers per FC 16 write
_BUF = const(256)  # the largest RTU frame
_CHUNK = const(64)  # bytes taken from the UART per read call
_BITS_PER_CHAR = const(11)  # start + 8 data + parity/stop + stop
_FAST_BAUD = const(19200)
_FAST_T35_US = const(1750)
_POLL_MS = const(2)  # async polling period while a reply is awaited
_BROADCAST_GAP_MS = const(100)  # turnaround delay after a broadcast write

_IDLE = const(0)
_GAP = const(1)  # queued, waiting for the inter-frame silence
_TX = const(2)  # sending, DE high
_RX = const(3)  # awaiting the reply

# The names of the exception codes, by code ("": none): a tuple of constants, in flash.
EXCEPTION_NAMES = (
    "",
    "illegal function",
    "illegal data address",
    "illegal data value",
    "slave device failure",
    "acknowledge",
    "slave device busy",
    "",
    "memory parity error",
    "",
    "gateway path unavailable",
    "gateway target failed to respond",
)

# CRC-16/MODBUS, one entry per 4-bit nibble of the reflected polynomial 0xA001.
_T = (
    0x0000, 0xCC01, 0xD801, 0x1400, 0xF001, 0x3C00, 0x2800, 0xE401,
    0xA001, 0x6C00, 0x7800, 0xB401, 0x5000, 0x9C01, 0x8801, 0x4400,
)


def crc16(buf, start=0, end=None):
    """CRC-16/MODBUS of buf[start:end]; sent low byte first."""
    t = _T
    crc = 0xFFFF
    if end is None:
        end = len(buf)
    for i in range(start, end):
        crc ^= buf[i]
        crc = (crc >> 4) ^ t[crc & 15]
        crc = (crc >> 4) ^ t[crc & 15]
    return crc


class ModbusError(Exception):
    """Any failed exchange. The line has been flushed; the next exchange may follow.
    `kind` says what failed (one class, not one per kind: each class costs heap):
      "timeout"    no reply within the response timeout, or a line never silent
      "crc"        a reply arrived but its CRC does not match
      "frame"      a reply that is not the answer to the request: wrong slave id, wrong
                   function, wrong length or byte count, short frame, or line noise
      "exception"  the slave answered with an exception response; `code` is its code
      "bus"        the serial port itself failed"""

    def __init__(self, msg, kind="bus", code=0):
        super().__init__(msg)
        self.kind = kind
        self.code = code


def t35_us(baud):
    """Inter-frame silence t3.5 in microseconds (fixed above 19200 baud)."""
    if baud > _FAST_BAUD:
        return _FAST_T35_US
    return 35 * _BITS_PER_CHAR * 100000 // baud


def wire_us(nbytes, baud):
    """Time to send nbytes, in microseconds."""
    return nbytes * _BITS_PER_CHAR * 1000000 // baud


class ModbusRtu:
    def __init__(self, uart, de_pin=None, timeout_ms=250, ticks_ms=None):
        """timeout_ms: how long a slave may take to start answering (on top of the
        wire time of the request and the expected reply)."""
        self._uart = uart
        self._de = de_pin
        self.timeout_ms = timeout_ms
        self._ticks = ticks_ms or time.ticks_ms
        self._txdone = getattr(uart, "txdone", None)
        self._tx = bytearray(_BUF)
        self._rx = bytearray(_BUF)
        self._rxmv = memoryview(self._rx)
        self._txmv = memoryview(self._tx)
        self._chunk = bytearray(_CHUNK)
        self._txlen = 0
        self._n = 0  # bytes received for the current reply
        self._state = _IDLE
        self._slave = 0
        self._fc = 0
        self._qty = 0
        self._addr = 0
        self._t_line = self._ticks()  # last activity on the line (our send or a byte in)
        self._t_sent = 0
        self._deadline_ms = 0
        self._lock = asyncio.Lock() if asyncio else None
        # counters for diagnostics
        self.exchanges = 0
        self.failures = 0
        self.noise_bytes = 0  # bytes discarded while flushing the line
        self._de_off()

    # ---- timing -------------------------------------------------------------------------
    @property
    def baudrate(self):
        return self._uart.baudrate

    def _gap_ms(self):
        # Whole milliseconds, rounded up, plus one: a ms tick may be nearly over.
        return (t35_us(self._uart.baudrate) + 999) // 1000 + 1

    def _wire_ms(self, nbytes):
        return (wire_us(nbytes, self._uart.baudrate) + 999) // 1000

    # ---- the synchronous core -------------------------------------------------------------
    def start(self, slave, fc, addr, qty_or_value, values=None):
        """Queues one request. For FC 3/4 `qty_or_value` is the register count, for
        FC 6 the value, for FC 16 the count of `values`. Sent by the next poll()."""
        if self._state != _IDLE:
            raise RuntimeError("modbus exchange already running")
        if not 0 <= slave <= 247 or (slave == 0 and fc in (FC_READ_HOLDING, FC_READ_INPUT)):
            raise ValueError("bad slave address %d" % slave)
        if not 0 <= addr <= 0xFFFF:
            raise ValueError("bad register address")
        tx = self._tx
        tx[0] = slave
        tx[1] = fc
        tx[2] = addr >> 8
        tx[3] = addr & 0xFF
        if fc == FC_READ_HOLDING or fc == FC_READ_INPUT:
            if not 1 <= qty_or_value <= MAX_READ:
                raise ValueError("read 1 to 125 registers")
            n = 6
        elif fc == FC_WRITE_SINGLE:
            qty_or_value &= 0xFFFF
            n = 6
        elif fc == FC_WRITE_MULTIPLE:
            qty_or_value = len(values)
            if not 1 <= qty_or_value <= _MAX_WRITE:
                raise ValueError("write 1 to 123 registers")
            tx[6] = 2 * qty_or_value
            n = 7
            for v in values:
                tx[n] = (v >> 8) & 0xFF
                tx[n + 1] = v & 0xFF
                n += 2
        else:
            raise ValueError("unsupported function %d" % fc)
        tx[4] = qty_or_value >> 8
        tx[5] = qty_or_value & 0xFF
        crc = crc16(tx, 0, n)
        tx[n] = crc & 0xFF
        tx[n + 1] = crc >> 8
        self._txlen = n + 2
        self._slave = slave
        self._fc = fc
        self._addr = addr
        self._qty = qty_or_value  # count for reads and FC 16, the value for FC 6
        self._n = 0
        self._state = _GAP
        # Bounds the wait for a silent line too (a chattering bus never lets us send).
        self._deadline_ms = time.ticks_add(self._ticks(), self.timeout_ms + 2 * self._gap_ms())
        self.exchanges += 1

    def poll(self):
        """Advances the queued exchange: None while waiting; the result when done (a
        memoryview of the register bytes for reads, True for writes); raises a
        ModbusError (after flushing the line) when it failed."""
        try:
            return self._poll()
        except OSError as e:  # the serial device itself failed (unplugged adapter, ...)
            self._state = _IDLE
            self.failures += 1
            try:
                self._de_off()
            except OSError:
                pass
            raise ModbusError("serial port error: %r" % (e,))

    def _poll(self):
        st = self._state
        if st == _IDLE:
            raise RuntimeError("no modbus exchange queued")
        now = self._ticks()
        if st == _GAP:
            if self._uart.any():
                self._flush(now)  # noise or a late reply to someone: the line is busy
                if time.ticks_diff(now, self._deadline_ms) >= 0:
                    self._fail(now, ModbusError("the line never fell silent", "timeout"))
                return None
            # Below zero: a time over 2**29 ms old (the ticks wrapped), a line long silent.
            if 0 <= time.ticks_diff(now, self._t_line) < self._gap_ms():
                return None
            self._send(now)
            return None
        if st == _TX:
            if not self._tx_finished(now):
                return None
            self._de_off()
            self._state = _RX
            self._t_line = now
            if self._slave == 0:  # broadcast: nobody answers
                self._deadline_ms = time.ticks_add(now, _BROADCAST_GAP_MS)
            return None
        # _RX
        if self._slave == 0:
            if time.ticks_diff(now, self._deadline_ms) >= 0:
                self._done(now)
                return True
            return None
        return self._receive(now)

    def abort(self):
        """Drops the exchange (a cancelled caller); the line is flushed."""
        if self._state != _IDLE:
            self._state = _IDLE
            try:
                self._de_off()
                self._flush(self._ticks())
            except OSError:
                pass  # the next exchange reports a broken port

    def _send(self, now):
        self._flush(now)
        if self._de is not None:
            self._de.value(1)
        self._uart.write(self._txmv[: self._txlen])
        self._t_sent = now
        self._state = _TX
        if self._tx_finished(now):
            self._de_off()
            self._state = _RX
            self._t_line = now
            if self._slave == 0:
                self._deadline_ms = time.ticks_add(now, _BROADCAST_GAP_MS)
            else:
                self._arm_deadline(now)
        elif self._slave != 0:
            self._arm_deadline(time.ticks_add(now, self._wire_ms(self._txlen)))

    def _arm_deadline(self, now):
        if self._fc == FC_READ_HOLDING or self._fc == FC_READ_INPUT:
            reply = 5 + 2 * self._qty
        else:
            reply = 8
        self._deadline_ms = time.ticks_add(now, self.timeout_ms + self._wire_ms(reply))

    def _tx_finished(self, now):
        if self._txdone is not None:
            return self._txdone()
        if self._de is None:
            return True  # nothing to switch back: listen at once
        return time.ticks_diff(now, self._t_sent) >= self._wire_ms(self._txlen)

    def _de_off(self):
        if self._de is not None:
            self._de.value(0)

    def _receive(self, now):
        # Read through a fixed chunk: a memoryview slice per poll would allocate.
        n = self._n
        rx = self._rx
        chunk = self._chunk
        uart = self._uart
        over = False
        for _ in range(_BUF // _CHUNK + 1):
            got = uart.readinto(chunk)
            if not got:
                break
            if n + got > _BUF:
                got = _BUF - n  # keep what fits; the rest is not part of a frame
                over = True
            for i in range(got):
                rx[n + i] = chunk[i]
            n += got
            self._t_line = now
            if over or got < _CHUNK:
                break
        self._n = n
        expect = self._expected(0) if n >= 3 else 0
        if expect and n >= expect:
            return self._finish(now, self._check(0, expect))
        if over:
            self._fail(now, ModbusError("reply longer than %d bytes" % _BUF, "frame"))
        silent = time.ticks_diff(now, self._t_line) >= self._gap_ms()
        if n and not expect and silent:
            # Not a frame we can follow from its header: the silence ends it.
            return self._finish(now, self._scan())
        if time.ticks_diff(now, self._deadline_ms) >= 0:
            if n == 0:
                self._fail(now, ModbusError("no reply from slave %d" % self._slave, "timeout"))
            if expect:
                self._fail(now, ModbusError("short frame: %d of %d bytes" % (n, expect), "frame"))
            return self._finish(now, self._scan())
        return None

    def _expected(self, off):
        """Length of the reply starting at rx[off] when its header is ours, else 0."""
        rx = self._rx
        if rx[off] != self._slave:
            return 0
        f = rx[off + 1]
        if f == self._fc | 0x80:
            return 5
        if f != self._fc:
            return 0
        if f == FC_READ_HOLDING or f == FC_READ_INPUT:
            return 5 + rx[off + 2]
        return 8

    def _check(self, off, length):
        """Result of the reply rx[off:off+length], or a ModbusError to raise."""
        rx = self._rx
        end = off + length
        crc = crc16(rx, off, end - 2)
        if rx[end - 2] != crc & 0xFF or rx[end - 1] != crc >> 8:
            return ModbusError(
                "CRC error in a %d-byte reply from slave %d" % (length, self._slave), "crc"
            )
        fc = rx[off + 1]
        if fc & 0x80:
            c = rx[off + 2]
            name = EXCEPTION_NAMES[c] if c < len(EXCEPTION_NAMES) else ""
            return ModbusError("exception %d (%s) to function %d" % (c, name or "unknown", self._fc),
                               "exception", c)
        if fc == FC_READ_HOLDING or fc == FC_READ_INPUT:
            if rx[off + 2] != 2 * self._qty:
                return ModbusError(
                    "byte count %d, expected %d" % (rx[off + 2], 2 * self._qty), "frame"
                )
            return self._rxmv[off + 3 : off + 3 + 2 * self._qty]
        addr = (rx[off + 2] << 8) | rx[off + 3]
        val = (rx[off + 4] << 8) | rx[off + 5]
        if addr != self._addr or val != self._qty:
            return ModbusError("write echo does not match the request", "frame")
        return True

    def _scan(self):
        """The silence ended an unrecognised frame: find our reply inside (noise before
        it), else say what was there."""
        rx = self._rx
        n = self._n
        for off in range(1, n - 4):
            length = self._expected(off)
            if length and off + length <= n:
                r = self._check(off, length)
                if not isinstance(r, ModbusError) or r.kind != "crc":
                    return r
        if n >= 4 and crc16(rx, 0, n - 2) == rx[n - 2] | (rx[n - 1] << 8):
            if rx[0] != self._slave:
                return ModbusError(
                    "reply from slave %d, expected %d" % (rx[0], self._slave), "frame"
                )
            if rx[1] & 0x7F != self._fc:
                return ModbusError(
                    "reply to function %d, expected %d" % (rx[1] & 0x7F, self._fc), "frame"
                )
            return ModbusError("%d-byte reply of the wrong length" % n, "frame")
        if n >= 3 and rx[0] == self._slave and rx[1] & 0x7F == self._fc:
            return ModbusError("CRC error in a %d-byte reply" % n, "crc")
        if n < 5:
            return ModbusError("short frame: %d bytes" % n, "frame")
        return ModbusError("line noise: %d bytes not a reply" % n, "frame")

    def _finish(self, now, result):
        if isinstance(result, ModbusError):
            self._fail(now, result)
        self._done(now)
        return result

    def _done(self, now):
        self._state = _IDLE
        self._t_line = now

    def _fail(self, now, err):
        self.failures += 1
        self._de_off()
        self._flush(now)
        self._state = _IDLE
        raise err

    def _flush(self, now):
        """Discards whatever waits in the receiver (bounded: a chattering line cannot
        hold us here). Called only when the receive buffer holds nothing we need."""
        uart = self._uart
        for _ in range(8):
            got = uart.readinto(self._rx)
            if not got:
                break
            self.noise_bytes += got
            self._t_line = now

    # ---- async API ------------------------------------------------------------------------
    async def _exchange(self, slave, fc, addr, qty_or_value, values=None):
        async with self._lock:
            self.start(slave, fc, addr, qty_or_value, values)
            try:
                while True:
                    r = self.poll()
                    if r is not None:
                        return r
                    await asyncio.sleep_ms(_POLL_MS)
            finally:
                self.abort()  # no-op when done; cancellation leaves a clean line

    async def read_holding_registers(self, slave, addr, count):
        """FC 03: memoryview of 2*count bytes (valid until the next exchange)."""
        return await self._exchange(slave, FC_READ_HOLDING, addr, count)

    async def read_input_registers(self, slave, addr, count):
        """FC 04: memoryview of 2*count bytes (valid until the next exchange)."""
        return await self._exchange(slave, FC_READ_INPUT, addr, count)

    async def read_registers(self, fc, slave, addr, count):
        """FC 03 or 04 chosen by the caller (meter maps name their function)."""
        if fc != FC_READ_HOLDING and fc != FC_READ_INPUT:
            raise ValueError("read function must be 3 or 4")
        return await self._exchange(slave, fc, addr, count)

    async def write_register(self, slave, addr, value):
        """FC 06 (slave 0 broadcasts and awaits no reply)."""
        return await self._exchange(slave, FC_WRITE_SINGLE, addr, value)

    async def write_registers(self, slave, addr, values):
        """FC 16 (slave 0 broadcasts and awaits no reply)."""
        return await self._exchange(slave, FC_WRITE_MULTIPLE, addr, 0, values)
