# MCP2515 stand-alone CAN controller over SPI (CAN 2.0A, 11-bit ids).
#
# The caller passes in the SPI bus (mode 0,0, <= 10 MHz) and the chip-select pin, as the
# sdcard driver does. The driver offers the board contract of docs/hal.md:
# `send(can_id, data)` and `recv()` -> (can_id, bytes) or None, never blocking.
# Every poll of the chip is bounded and raises Mcp2515Error (OSError ETIMEDOUT) when
# it runs out. Register map and instruction set: MCP2515 datasheet §12 and §11
# (summary in STANDARDS.md §6).
from micropython import const

# SPI instructions (datasheet table 12-1)
_RESET = const(0xC0)
_READ = const(0x03)
_WRITE = const(0x02)
_BIT_MODIFY = const(0x05)
_READ_STATUS = const(0xA0)
_READ_RX0 = const(0x90)  # starts at RXB0SIDH; the RX0IF flag clears when CS rises
_READ_RX1 = const(0x94)
_LOAD_TX0 = const(0x40)  # starts at TXB0SIDH
_RTS_TX0 = const(0x81)

# Registers
_CANSTAT = const(0x0E)
_CANCTRL = const(0x0F)
_TEC = const(0x1C)
_REC = const(0x1D)
_RXM0 = const(0x20)
_RXM1 = const(0x24)
_CNF3 = const(0x28)
_CANINTE = const(0x2B)
_CANINTF = const(0x2C)
_EFLG = const(0x2D)
_TXB0CTRL = const(0x30)
_RXB0CTRL = const(0x60)
_RXB1CTRL = const(0x70)
_RXF_ADDR = (0x00, 0x04, 0x08, 0x10, 0x14, 0x18)

# Bits
_MODE_MASK = const(0xE0)
MODE_NORMAL = const(0x00)
MODE_SLEEP = const(0x20)
MODE_LOOPBACK = const(0x40)
MODE_LISTEN = const(0x60)
MODE_CONFIG = const(0x80)
_TXREQ = const(0x08)
_TXERR = const(0x10)
_ABTF = const(0x40)
_RXM_ANY = const(0x60)  # RXBnCTRL RXM = 11: filters off, every frame accepted
_BUKT = const(0x04)  # RXB0CTRL: roll over into RXB1 when RXB0 is full
_RX0IF = const(0x01)
_RX1IF = const(0x02)
_ERRIF = const(0x20)
_TXBO = const(0x20)  # EFLG bit 5: bus-off
_TXEP = const(0x10)
_RXEP = const(0x08)
_RX0OVR = const(0x40)
_RX1OVR = const(0x80)

_MODE_POLLS = const(50)  # CANSTAT reads before a mode change counts as failed
_TX_POLLS = const(100)  # TXBnCTRL reads before a transmission is aborted
_ETIMEDOUT = const(110)

# (crystal MHz, bit/s, (CNF1, CNF2, CNF3)), STANDARDS.md §6: a tuple of constants, in
# flash on a board.
BIT_TIMING = (
    (8, 125000, (0x01, 0xB1, 0x05)),
    (8, 250000, (0x00, 0xB1, 0x05)),
    (8, 500000, (0x00, 0x90, 0x02)),
    (16, 125000, (0x03, 0xF0, 0x86)),
    (16, 250000, (0x41, 0xF1, 0x85)),
    (16, 500000, (0x00, 0xF0, 0x86)),
)


class Mcp2515Error(OSError):
    """The chip did not reach a mode or finish a transmission in time (errno ETIMEDOUT;
    the unix port has no TimeoutError)."""


def bit_rate(xtal_hz, cnf1, cnf2, cnf3):
    """Bit rate a CNF1-3 setting gives (datasheet §5): for checking the table."""
    brp = cnf1 & 0x3F
    tq = 1 + ((cnf2 & 0x07) + 1) + (((cnf2 >> 3) & 0x07) + 1) + ((cnf3 & 0x07) + 1)
    return xtal_hz // (2 * (brp + 1) * tq)


class Mcp2515:
    def __init__(self, spi, cs, xtal_mhz=8, bitrate=125000):
        for row in BIT_TIMING:
            if row[0] == xtal_mhz and row[1] == bitrate:
                break
        else:
            raise ValueError("no bit timing for %d MHz / %d bit/s" % (xtal_mhz, bitrate))
        self._spi = spi
        self._cs = cs
        self._cnf = row[2]
        self._cmd = bytearray(2)
        self._one = bytearray(1)
        self._tx = bytearray(14)  # LOAD TX BUF: instruction + SIDH SIDL EID8 EID0 DLC D0-7
        self._rx = bytearray(13)  # SIDH SIDL EID8 EID0 DLC D0-7
        self.mode = None
        self.sent = 0
        self.received = 0
        self.tx_timeouts = 0
        self.recoveries = 0
        cs.value(1)

    # ---- SPI primitives ---------------------------------------------------------------
    def _select(self):
        self._cs.value(0)

    def _release(self):
        self._cs.value(1)

    def reset(self):
        self._one[0] = _RESET
        self._select()
        self._spi.write(self._one)
        self._release()

    def read(self, addr):
        c = self._cmd
        c[0] = _READ
        c[1] = addr
        self._select()
        try:
            self._spi.write(c)
            self._spi.readinto(self._one, 0)
        finally:
            self._release()
        return self._one[0]

    def write(self, addr, *values):
        self._select()
        try:
            c = self._cmd
            c[0] = _WRITE
            c[1] = addr
            self._spi.write(c)
            self._spi.write(bytes(values))
        finally:
            self._release()

    def modify(self, addr, mask, value):
        self._select()
        try:
            self._spi.write(bytes((_BIT_MODIFY, addr, mask, value)))
        finally:
            self._release()

    def read_status(self):
        self._one[0] = _READ_STATUS
        self._select()
        try:
            self._spi.write(self._one)
            self._spi.readinto(self._one, 0)
        finally:
            self._release()
        return self._one[0]

    # ---- set-up -----------------------------------------------------------------------
    def init(self, mode=MODE_NORMAL):
        """Reset, bit timing, receive-any, then `mode`. Raises Mcp2515Error."""
        self.reset()
        self._wait_mode(MODE_CONFIG)  # the chip comes out of reset in configuration mode
        c1, c2, c3 = self._cnf
        self.write(_CNF3, c3, c2, c1)  # CNF3, CNF2, CNF1 are consecutive (0x28-0x2A)
        self.write(_CANINTE, 0)  # polled: no interrupt pin needed
        self.write(_CANINTF, 0)
        self.write(_RXB0CTRL, _RXM_ANY | _BUKT)
        self.write(_RXB1CTRL, _RXM_ANY)
        self.set_mode(mode)

    def set_mode(self, mode):
        self.modify(_CANCTRL, _MODE_MASK, mode)
        self._wait_mode(mode)

    def _wait_mode(self, mode):
        for _ in range(_MODE_POLLS):
            if self.read(_CANSTAT) & _MODE_MASK == mode:
                self.mode = mode
                return
        raise Mcp2515Error(_ETIMEDOUT, "MCP2515 did not enter mode 0x%02x" % mode)

    def set_filters(self, masks, filters):
        """Acceptance for 11-bit ids: masks (2 ints: RXB0, RXB1), filters (up to 6 ints:
        0-1 for RXB0, 2-5 for RXB1). Only in configuration mode; the previous mode is
        restored afterwards."""
        if len(masks) != 2 or not 1 <= len(filters) <= 6:
            raise ValueError("2 masks and 1-6 filters")
        back = self.mode
        self.set_mode(MODE_CONFIG)
        self.write(_RXM0, (masks[0] >> 3) & 0xFF, (masks[0] & 7) << 5, 0, 0)
        self.write(_RXM1, (masks[1] >> 3) & 0xFF, (masks[1] & 7) << 5, 0, 0)
        for i in range(6):
            f = filters[i] if i < len(filters) else filters[-1]
            self.write(_RXF_ADDR[i], (f >> 3) & 0xFF, (f & 7) << 5, 0, 0)
        self.write(_RXB0CTRL, _BUKT)  # RXM = 00: filters on
        self.write(_RXB1CTRL, 0)
        self.set_mode(back if back is not None else MODE_NORMAL)

    # ---- frames -----------------------------------------------------------------------
    def send(self, can_id, data):
        """Transmits one standard frame through TXB0; returns when the chip has sent it.
        Raises Mcp2515Error (transmission aborted) when it is not acknowledged in time."""
        if not 0 <= can_id <= 0x7FF:
            raise ValueError("CAN id must be 11-bit")
        n = len(data)
        if n > 8:
            raise ValueError("CAN data is at most 8 bytes")
        if self.bus_off():
            self.recover()
        t = self._tx
        t[0] = _LOAD_TX0
        t[1] = can_id >> 3
        t[2] = (can_id & 7) << 5
        t[3] = 0
        t[4] = 0
        t[5] = n
        for i in range(8):
            t[6 + i] = data[i] if i < n else 0
        self._select()
        try:
            self._spi.write(t)
        finally:
            self._release()
        self._one[0] = _RTS_TX0
        self._select()
        try:
            self._spi.write(self._one)
        finally:
            self._release()
        for _ in range(_TX_POLLS):
            ctrl = self.read(_TXB0CTRL)
            if not ctrl & _TXREQ:
                if ctrl & (_ABTF | _TXERR):
                    break
                self.sent += 1
                return
        # Not acknowledged (alone on the bus, wrong bit rate): abort, so the buffer is
        # free for the next frame.
        self.modify(_TXB0CTRL, _TXREQ, 0)
        self.tx_timeouts += 1
        raise Mcp2515Error(_ETIMEDOUT, "CAN frame 0x%03x not sent" % can_id)

    def recv(self):
        """The next received frame as (can_id, bytes), or None. Never blocks."""
        st = self.read_status()
        if st & _RX0IF:
            ins = _READ_RX0
        elif st & _RX1IF:
            ins = _READ_RX1
        else:
            return None
        r = self._rx
        self._one[0] = ins
        self._select()
        try:
            self._spi.write(self._one)
            self._spi.readinto(r, 0)
        finally:
            self._release()  # READ RX BUF clears RXnIF here (datasheet §12.4)
        if r[1] & 0x08:  # EXIDE: an extended frame; this pool speaks 2.0A only
            return None
        n = r[4] & 0x0F
        if n > 8:
            n = 8  # DLC 9-15 mean 8 data bytes (ISO 11898-1)
        self.received += 1
        return (r[0] << 3) | (r[1] >> 5), bytes(r[5 : 5 + n])

    # ---- errors -----------------------------------------------------------------------
    def tec(self):
        return self.read(_TEC)

    def rec(self):
        return self.read(_REC)

    def eflg(self):
        return self.read(_EFLG)

    def bus_off(self):
        return bool(self.eflg() & _TXBO)

    def errors(self):
        """Counters and flags for diagnostics."""
        e = self.eflg()
        return {
            "tec": self.tec(),
            "rec": self.rec(),
            "bus_off": bool(e & _TXBO),
            "tx_passive": bool(e & _TXEP),
            "rx_passive": bool(e & _RXEP),
            "rx_overflow": bool(e & (_RX0OVR | _RX1OVR)),
        }

    def recover(self):
        """Leaves bus-off at once: a reset and a new set-up clear TEC and REC (the chip
        would otherwise wait for 128 x 11 recessive bits, STANDARDS.md §6)."""
        self.recoveries += 1
        self.init(self.mode if self.mode is not None else MODE_NORMAL)
        self.modify(_EFLG, _RX0OVR | _RX1OVR, 0)
        self.modify(_CANINTF, _ERRIF, 0)
