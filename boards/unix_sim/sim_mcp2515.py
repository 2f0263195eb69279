# Register-level emulation of an MCP2515 behind SPI + CS, for testing lib/mcp2515.py on
# the unix port (the unix_sim board itself uses the UDP bus of sim_can.py).
#
#   bus = SimCanWire()
#   chip = SimMcp2515(bus)        # chip.spi and chip.cs go to Mcp2515(spi, cs)
#
# Modelled: the instruction set (RESET, READ, WRITE, BIT MODIFY, READ STATUS, READ RX
# BUF, LOAD TX BUF, RTS), operating modes with a CANSTAT lag of `mode_lag` reads,
# configuration-only CNF registers, TXB0-2 with TXREQ, acceptance masks and filters, RXB0
# roll-over into RXB1, overflow flags, TEC/REC/EFLG with error-passive and bus-off, and
# loopback. A frame sent while no other node is in normal mode is never acknowledged: TEC
# grows by 8 per TXBnCTRL read until bus-off, as on a real bus with nobody to ACK.


class SimCanWire:
    """The wire between emulated chips."""

    def __init__(self):
        self.nodes = []

    def deliver(self, src, can_id, data):
        """True when some other node in normal or listen-only mode saw the frame."""
        acked = False
        for n in self.nodes:
            if n is not src and n.opmode() in (0x00, 0x60):
                n.receive(can_id, data)
                if n.opmode() == 0x00:
                    acked = True
        return acked


class _Cs:
    def __init__(self, chip):
        self._chip = chip
        self.level = 1

    def value(self, v=None):
        if v is None:
            return self.level
        v = 1 if v else 0
        if v == self.level:
            return None
        self.level = v
        if v:
            self._chip._end()
        else:
            self._chip._begin()
        return None


class _Spi:
    def __init__(self, chip):
        self._chip = chip

    def write(self, buf):
        for b in buf:
            self._chip._xfer(b)

    def readinto(self, buf, write=0):
        for i in range(len(buf)):
            buf[i] = self._chip._xfer(write)

    def write_readinto(self, out, into):
        for i in range(len(out)):
            into[i] = self._chip._xfer(out[i])


_TXB = (0x30, 0x40, 0x50)
_FILTERS = (0x00, 0x04, 0x08, 0x10, 0x14, 0x18)


class SimMcp2515:
    def __init__(self, wire=None, mode_lag=2):
        self.wire = wire
        if wire is not None:
            wire.nodes.append(self)
        self.mode_lag = mode_lag  # CANSTAT reads before a requested mode shows
        self.stuck_mode = False  # True: the chip never leaves its mode (a broken chip)
        self.spi = _Spi(self)
        self.cs = _Cs(self)
        self.sent = []  # frames that went onto the wire
        self.cs_errors = 0  # bytes clocked while CS was high
        self._reset()
        self._op = None

    def _reset(self):
        self.regs = bytearray(128)
        self.regs[0x0E] = 0x80
        self.regs[0x0F] = 0x87
        self._lag = 0
        self._pending_mode = 0x80

    # ---- state the tests look at -------------------------------------------------------
    def opmode(self):
        return self.regs[0x0E] & 0xE0

    def receive(self, can_id, data):
        r = self.regs
        intf = r[0x2C]
        if self._accept(0, can_id) and not intf & 0x01:
            self._store(0x60, 0x01, can_id, data)
        elif (self._accept(0, can_id) and r[0x60] & 0x04) or self._accept(1, can_id):
            if not intf & 0x02:
                self._store(0x70, 0x02, can_id, data)
            else:
                r[0x2D] |= 0x80  # RX1OVR
        elif self._accept(0, can_id):
            r[0x2D] |= 0x40  # RX0OVR

    def add_rx_errors(self, n):
        """Noise on the wire: REC rises by 1 per error (error-passive above 127)."""
        r = self.regs
        r[0x1D] = min(255, r[0x1D] + n)
        self._flags()

    # ---- internals --------------------------------------------------------------------
    def _accept(self, buf, can_id):
        r = self.regs
        ctrl = r[0x60 if buf == 0 else 0x70]
        if ctrl & 0x60 == 0x60:
            return True
        ma = 0x20 if buf == 0 else 0x24
        mask = (r[ma] << 3) | (r[ma + 1] >> 5)
        filters = _FILTERS[0:2] if buf == 0 else _FILTERS[2:6]
        for fa in filters:
            f = (r[fa] << 3) | (r[fa + 1] >> 5)
            if (can_id ^ f) & mask == 0:
                return True
        return False

    def _store(self, base, flag, can_id, data):
        r = self.regs
        r[base + 1] = can_id >> 3
        r[base + 2] = (can_id & 7) << 5
        r[base + 3] = 0
        r[base + 4] = 0
        r[base + 5] = len(data)
        for i in range(8):
            r[base + 6 + i] = data[i] if i < len(data) else 0
        r[0x2C] |= flag

    def _flags(self):
        r = self.regs
        e = r[0x2D] & 0xC0
        tec, rec = r[0x1C], r[0x1D]
        if tec > 95 or rec > 95:
            e |= 0x01  # EWARN
        if rec > 127:
            e |= 0x08
        if tec > 127:
            e |= 0x10
        if self._bus_off:
            e |= 0x20
        r[0x2D] = e

    _bus_off = False

    def _write_reg(self, addr, v):
        r = self.regs
        addr &= 0x7F
        if 0x28 <= addr <= 0x2A and self.opmode() != 0x80:
            return  # CNF1-3 are writable in configuration mode only
        if addr in (0x0F, 0x1F, 0x2F, 0x3F, 0x4F, 0x5F, 0x6F, 0x7F):
            addr = 0x0F  # CANCTRL is mirrored in every row
            r[addr] = v
            self._pending_mode = v & 0xE0
            self._lag = self.mode_lag
            return
        if addr in (0x0E, 0x1E, 0x2E, 0x3E, 0x4E, 0x5E, 0x6E, 0x7E):
            return  # CANSTAT is read-only
        if addr in (0x1C, 0x1D):
            return  # TEC/REC are read-only
        old = r[addr]
        r[addr] = v
        if addr in _TXB and v & 0x08 and not old & 0x08:
            self._try_send(_TXB.index(addr))

    def _read_reg(self, addr):
        r = self.regs
        addr &= 0x7F
        if addr & 0x0F == 0x0E:
            if self._pending_mode != r[0x0E] & 0xE0 and not self.stuck_mode:
                if self._lag <= 0:
                    r[0x0E] = (r[0x0E] & 0x1F) | self._pending_mode
                else:
                    self._lag -= 1
            return r[0x0E]
        if addr in _TXB and r[addr] & 0x08:
            self._try_send(_TXB.index(addr))
        return r[addr]

    def _try_send(self, i):
        r = self.regs
        ctrl = _TXB[i]
        if not r[ctrl] & 0x08 or self._bus_off:
            return
        mode = self.opmode()
        base = ctrl
        can_id = (r[base + 1] << 3) | (r[base + 2] >> 5)
        n = r[base + 5] & 0x0F
        data = bytes(r[base + 6 : base + 6 + min(n, 8)])
        if mode == 0x40:  # loopback: to our own receive buffers only
            self.receive(can_id, data)
            acked = True
        elif mode == 0x00:
            acked = self.wire is not None and self.wire.deliver(self, can_id, data)
        else:
            return  # configuration, sleep, listen-only: the request waits
        if acked:
            r[ctrl] &= ~0x08
            r[0x2C] |= 0x04 << i
            if r[0x1C]:
                r[0x1C] -= 1
            self.sent.append((can_id, data))
        else:
            r[0x1C] = min(255, r[0x1C] + 8)  # ACK error, retried by the chip
            r[ctrl] |= 0x10  # TXERR
            if r[0x1C] >= 255:
                self._bus_off = True
                r[ctrl] &= ~0x08
                r[ctrl] |= 0x40  # ABTF
                r[0x2C] |= 0x20  # ERRIF
        self._flags()

    # ---- SPI transaction ---------------------------------------------------------------
    def _begin(self):
        self._op = None
        self._addr = 0
        self._n = 0

    def _end(self):
        op = self._op
        if op in (0x90, 0x92):
            self.regs[0x2C] &= ~0x01
        elif op in (0x94, 0x96):
            self.regs[0x2C] &= ~0x02
        elif op == 0x05 and self._n >= 3:
            a = self._addr
            self._write_reg(a, (self.regs[a & 0x7F] & ~self._mask) | (self._data & self._mask))
        self._op = None

    def _xfer(self, b):
        if self.cs.level:
            self.cs_errors += 1
            return 0xFF
        op = self._op
        if op is None:
            self._op = b
            self._n = 0
            if b == 0xC0:
                self._reset()
                self._bus_off = False
            elif b & 0xF8 == 0x80 and b != 0x80:  # RTS
                for i in range(3):
                    if b & (1 << i):
                        self._write_reg(_TXB[i], self.regs[_TXB[i]] | 0x08)
            elif b in (0x90, 0x92, 0x94, 0x96):
                self._addr = {0x90: 0x61, 0x92: 0x66, 0x94: 0x71, 0x96: 0x76}[b]
            elif b in (0x40, 0x41, 0x42, 0x43, 0x44, 0x45):
                base = _TXB[(b - 0x40) >> 1]
                self._addr = base + (6 if b & 1 else 1)
            return 0xFF
        self._n += 1
        if op == 0x03:
            if self._n == 1:
                self._addr = b
                return 0xFF
            v = self._read_reg(self._addr)
            self._addr += 1
            return v
        if op == 0x02:
            if self._n == 1:
                self._addr = b
            else:
                self._write_reg(self._addr, b)
                self._addr += 1
            return 0xFF
        if op == 0x05:
            if self._n == 1:
                self._addr = b
            elif self._n == 2:
                self._mask = b
            elif self._n == 3:
                self._data = b
            return 0xFF
        if op in (0x90, 0x92, 0x94, 0x96):
            v = self.regs[self._addr & 0x7F]
            self._addr += 1
            return v
        if op in (0x40, 0x41, 0x42, 0x43, 0x44, 0x45):
            self.regs[self._addr & 0x7F] = b
            self._addr += 1
            return 0xFF
        if op == 0xA0:
            r = self.regs
            intf = r[0x2C]
            v = intf & 0x03
            for i in range(3):
                if r[_TXB[i]] & 0x08:
                    v |= 0x04 << (2 * i)
                if intf & (0x04 << i):
                    v |= 0x08 << (2 * i)
            return v
        return 0xFF
