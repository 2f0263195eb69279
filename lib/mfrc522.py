"""NXP MFRC522 (RC522) 13.56 MHz reader: ISO 14443-3 type A select, ISO 14443-4 RATS.

The caller injects the SPI bus and the CS and RST pins (RST may be None). The chip's
timer bounds every exchange with a card, a software deadline bounds every exchange with
the chip, and `poll()` allocates nothing until a card answers.

    reader = Mfrc522(spi, cs, rst)
    card = reader.poll()          # None, or a Card: uid, kind ("M1"/"CPU"), sak, atqa, ats
    if card:
        reader.halt()             # not read again until it leaves the field (or poll(wake=True))

Section numbers refer to the MFRC522 datasheet (rev. 3.9) and ISO/IEC 14443-3/-4.
"""
import errno
import time
from micropython import const

# Registers (datasheet 9.2). SPI address byte: (reg << 1) & 0x7E, | 0x80 to read (8.1.2.3).
_REG_COMMAND = const(0x01)  # 9.3.1.2: RcvOff, PowerDown, Command[3:0]
_REG_COM_IRQ = const(0x04)  # 9.3.1.5: Set1, TxIRq, RxIRq, IdleIRq, ..., ErrIRq, TimerIRq
_REG_DIV_IRQ = const(0x05)  # 9.3.1.6: Set2, MfinActIRq, CRCIRq
_REG_ERROR = const(0x06)  # 9.3.1.7
_REG_FIFO_DATA = const(0x09)  # 9.3.1.10
_REG_FIFO_LEVEL = const(0x0A)  # 9.3.1.11: FlushBuffer, FIFOLevel[6:0]
_REG_CONTROL = const(0x0C)  # 9.3.1.13: RxLastBits[2:0]
_REG_BIT_FRAMING = const(0x0D)  # 9.3.1.14: StartSend, RxAlign[6:4], TxLastBits[2:0]
_REG_COLL = const(0x0E)  # 9.3.1.15: ValuesAfterColl, CollPosNotValid, CollPos[4:0]
_REG_MODE = const(0x11)  # 9.3.2.2: CRCPreset[1:0]
_REG_TX_CONTROL = const(0x14)  # 9.3.2.5: Tx2RFEn, Tx1RFEn
_REG_TX_ASK = const(0x15)  # 9.3.2.6: Force100ASK
_REG_CRC_H = const(0x21)  # 9.3.3.2
_REG_CRC_L = const(0x22)
_REG_T_MODE = const(0x2A)  # 9.3.3.10: TAuto, TPrescaler_Hi[3:0]
_REG_T_PRESCALER = const(0x2B)  # 9.3.3.10: TPrescaler_Lo
_REG_T_RELOAD_H = const(0x2C)  # 9.3.3.11
_REG_T_RELOAD_L = const(0x2D)
_REG_VERSION = const(0x37)  # 9.3.4.8

# Commands (datasheet 10.3)
_CMD_IDLE = const(0x00)
_CMD_CALC_CRC = const(0x03)
_CMD_TRANSCEIVE = const(0x0C)
_CMD_SOFT_RESET = const(0x0F)

_POWER_DOWN = const(0x10)  # CommandReg: set until the oscillator runs after a reset
_IRQ_RX = const(0x20)
_IRQ_IDLE = const(0x10)
_IRQ_TIMER = const(0x01)
_IRQ_ALL = const(0x7F)  # written with Set1 = 0: clears every ComIrqReg bit
_DIV_CRC_IRQ = const(0x04)
_ERR_COLL = const(0x08)
_ERR_FATAL = const(0x13)  # BufferOvfl, ParityErr, ProtocolErr
_FLUSH = const(0x80)
_START_SEND = const(0x80)
_COLL_POS_NOT_VALID = const(0x20)
_ANTENNA = const(0x03)  # Tx1RFEn | Tx2RFEn

# Configuration written by init()
_T_MODE = const(0x80)  # TAuto: the timer starts when a transmission ends (9.3.3.10)
_T_PRESCALER = const(0xA9)  # 13.56 MHz / (2 * 0xA9 + 1) = 40 kHz: 25 us per tick
# 400 ticks = 10 ms: above the ISO 14443-4 activation frame wait time (65536/fc = 4.8 ms,
# the slowest answer we wait for, the ATS) and short, since an empty field waits it out.
_T_RELOAD = const(400)
_FORCE_100_ASK = const(0x40)  # type A needs 100 % ASK modulation
_MODE = const(0x3D)  # TxWaitRF, MFIN active high, CRCPreset 01 = 0x6363 (ISO 14443-3 CRC_A)

# Software deadlines: the chip's timer should always fire first (10 ms).
_CMD_TIMEOUT_MS = const(30)
_CRC_TIMEOUT_MS = const(10)
_BOOT_TIMEOUT_MS = const(100)  # oscillator start-up after RST, then soft reset (8.8.2)

# ISO 14443-3 / -4 commands
_REQA = const(0x26)
_WUPA = const(0x52)
_SEL_CL1 = const(0x93)  # CL2 = 0x95, CL3 = 0x97
_NVB_SELECT = const(0x70)  # 7 full bytes: SEL, NVB, 4 UID bytes, BCC
_CT = const(0x88)  # cascade tag: the UID continues at the next level
_SAK_CASCADE = const(0x04)
_SAK_ISO14443_4 = const(0x20)
_HLTA = const(0x50)
_RATS = const(0xE0)
_RATS_PARAM = const(0x50)  # FSDI 5 = 64-byte frames (the FIFO size), CID 0
_S_DESELECT = const(0xC2)  # ISO 14443-4 S(DESELECT), no CID

# _transceive results
_OK = const(0)
_NO_ANSWER = const(1)
_COLLISION = const(2)
_BAD_FRAME = const(3)

_FIFO_SIZE = const(64)
_TX_SIZE = const(9)  # the longest frame we send: SELECT with CRC_A


class ReaderError(OSError):
    """Anything that went wrong talking to the chip or a card. `kind` says what (one
    class, not one per kind: each class costs heap):
      "timeout"    the chip did not answer, or did not finish a command in time
                   (errno ETIMEDOUT; the next poll resets it)
      "collision"  cards answered over each other and it could not be resolved
      "crc"        a CRC_A or BCC check on a card's answer failed
      "frame"      a card's answer had the wrong length or content
    The last three are a card seen but not read (errno EIO), not a reader fault."""

    def __init__(self, code, what, kind):
        super().__init__(code, what)
        self.kind = kind


def uid_hex(uid):
    """UID as upper-case hex, byte 0 first (the OCPP idTag form)."""
    return "".join("%02X" % b for b in uid)


class Card:
    """One selected card: `uid` (4, 7 or 10 bytes), `sak`, `atqa`, `kind`, `ats` (CPU only)."""

    def __init__(self, uid, sak, atqa, ats=None):
        self.uid = uid
        self.sak = sak
        self.atqa = atqa
        self.ats = ats
        self.kind = "CPU" if sak & _SAK_ISO14443_4 else "M1"

    def uid_hex(self):
        return uid_hex(self.uid)

    def __repr__(self):
        return "<Card %s %s sak=%02X>" % (self.kind, uid_hex(self.uid), self.sak)


class Mfrc522:
    def __init__(self, spi, cs, rst=None, ticks_ms=time.ticks_ms):
        self._spi = spi
        self._cs = cs
        self._rst = rst
        self._ticks_ms = ticks_ms
        cs.value(1)
        # Every buffer the polling path needs, allocated once.
        self._wr = bytearray(2)
        self._rd_out = bytearray(2)
        self._rd_in = bytearray(2)
        self._tx = bytearray(_TX_SIZE)
        self._rx = bytearray(_FIFO_SIZE)
        self._rx_n = 0  # bytes in _rx after the last exchange
        self._cl = bytearray(5)  # UID CLn + BCC of the cascade level being selected
        self._uid = bytearray(10)
        self._ready = False  # True once init() succeeded and nothing since looked wrong
        self._l4 = False  # the selected card is in ISO 14443-4 protocol state (after RATS)
        self.chip_version = 0  # VersionReg as read by the last init()
        self.genuine = False  # 0x91/0x92; clones (0x88, 0x12, ...) work but are flagged
        self.resets = 0

    # -- chip access ------------------------------------------------------------------

    def _wreg(self, reg, val):
        b = self._wr
        b[0] = (reg << 1) & 0x7E
        b[1] = val
        self._cs.value(0)
        try:
            self._spi.write(b)
        finally:
            self._cs.value(1)

    def _rreg(self, reg):
        out = self._rd_out
        out[0] = ((reg << 1) & 0x7E) | 0x80
        out[1] = 0  # ends the read burst (8.1.2.1)
        self._cs.value(0)
        try:
            self._spi.write_readinto(out, self._rd_in)
        finally:
            self._cs.value(1)
        return self._rd_in[1]

    def _expired(self, t0, limit_ms):
        return time.ticks_diff(self._ticks_ms(), t0) > limit_ms

    def _timeout(self, what):
        # The chip is in an unknown state: the next poll() resets it.
        self._ready = False
        return ReaderError(errno.ETIMEDOUT, what, "timeout")

    def version(self):
        """VersionReg: 0x91 (v1.0), 0x92 (v2.0); 0x00/0xFF when nothing answers."""
        return self._rreg(_REG_VERSION)

    # -- set-up -----------------------------------------------------------------------

    def reset(self):
        """Pulses RST (when wired) and configures the chip again; raises ReaderError (kind "timeout")."""
        self._ready = False
        self.resets += 1
        if self._rst is not None:
            self._rst.value(0)  # hard power-down; > 100 ns is enough (8.8.1)
            self._rst.value(1)
        self.init()

    def init(self):
        """Soft-resets and configures the chip, antenna on. Raises ReaderError (kind "timeout") if absent."""
        self._ready = False
        # Until the oscillator runs, and forever when nothing is wired, reads are 0x00/0xFF.
        t0 = self._ticks_ms()
        v = self.version()
        while v == 0x00 or v == 0xFF:
            if self._expired(t0, _BOOT_TIMEOUT_MS):
                raise self._timeout("no MFRC522 answers")
            v = self.version()
        self._wreg(_REG_COMMAND, _CMD_SOFT_RESET)
        t0 = self._ticks_ms()
        while self._rreg(_REG_COMMAND) & _POWER_DOWN:
            if self._expired(t0, _BOOT_TIMEOUT_MS):
                raise self._timeout("MFRC522 soft reset")
        self.chip_version = self.version()
        self.genuine = self.chip_version in (0x91, 0x92)
        self._wreg(_REG_T_MODE, _T_MODE)
        self._wreg(_REG_T_PRESCALER, _T_PRESCALER)
        self._wreg(_REG_T_RELOAD_H, _T_RELOAD >> 8)
        self._wreg(_REG_T_RELOAD_L, _T_RELOAD & 0xFF)
        self._wreg(_REG_TX_ASK, _FORCE_100_ASK)
        self._wreg(_REG_MODE, _MODE)
        # ValuesAfterColl = 0: bits after a collision read as 0 (needed for anticollision)
        self._wreg(_REG_COLL, 0x00)
        self.antenna(True)
        if self._rreg(_REG_T_PRESCALER) != _T_PRESCALER:
            raise self._timeout("MFRC522 ignores writes")
        self._ready = True

    def antenna(self, on):
        """Switches the 13.56 MHz field; cards lose power (and their HALT state) when off."""
        v = self._rreg(_REG_TX_CONTROL)
        self._wreg(_REG_TX_CONTROL, (v | _ANTENNA) if on else (v & ~_ANTENNA))

    # -- the chip's coprocessors ------------------------------------------------------

    def _calc_crc(self, buf, n):
        """CRC_A of buf[:n] from the chip's CRC coprocessor (10.3.1.4), as lo | hi << 8."""
        self._wreg(_REG_COMMAND, _CMD_IDLE)
        self._wreg(_REG_DIV_IRQ, _DIV_CRC_IRQ)  # Set2 = 0: clears CRCIRq
        self._wreg(_REG_FIFO_LEVEL, _FLUSH)
        for i in range(n):
            self._wreg(_REG_FIFO_DATA, buf[i])
        self._wreg(_REG_COMMAND, _CMD_CALC_CRC)
        t0 = self._ticks_ms()
        while not self._rreg(_REG_DIV_IRQ) & _DIV_CRC_IRQ:
            if self._expired(t0, _CRC_TIMEOUT_MS):
                raise self._timeout("CalcCRC")
        self._wreg(_REG_COMMAND, _CMD_IDLE)
        return self._rreg(_REG_CRC_L) | (self._rreg(_REG_CRC_H) << 8)

    def crc_a(self, data):
        """CRC_A of data as the two bytes sent on air (low byte first)."""
        c = self._calc_crc(data, len(data))
        return bytes((c & 0xFF, c >> 8))

    def _append_crc(self, n):
        c = self._calc_crc(self._tx, n)
        self._tx[n] = c & 0xFF
        self._tx[n + 1] = c >> 8
        return n + 2

    def _rx_crc_ok(self):
        n = self._rx_n
        c = self._calc_crc(self._rx, n - 2)
        return self._rx[n - 2] == c & 0xFF and self._rx[n - 1] == c >> 8

    def _transceive(self, n, tx_last_bits=0, rx_align=0):
        """Sends _tx[:n] and receives into _rx (10.3.1.8); returns _OK, _NO_ANSWER, ...

        tx_last_bits: valid bits of the last byte sent (0 = all 8); rx_align: bit position
        of the first received bit in _rx[0] (anticollision splits a byte between both).
        """
        self._wreg(_REG_COMMAND, _CMD_IDLE)
        self._wreg(_REG_COM_IRQ, _IRQ_ALL)
        self._wreg(_REG_FIFO_LEVEL, _FLUSH)
        tx = self._tx
        for i in range(n):
            self._wreg(_REG_FIFO_DATA, tx[i])
        framing = (rx_align << 4) | tx_last_bits
        self._wreg(_REG_BIT_FRAMING, framing)
        self._wreg(_REG_COMMAND, _CMD_TRANSCEIVE)
        self._wreg(_REG_BIT_FRAMING, framing | _START_SEND)
        t0 = self._ticks_ms()
        while True:
            irq = self._rreg(_REG_COM_IRQ)
            if irq & (_IRQ_RX | _IRQ_IDLE):
                break
            if irq & _IRQ_TIMER:  # nothing answered before the chip's timer ran out
                self._rx_n = 0
                return _NO_ANSWER
            if self._expired(t0, _CMD_TIMEOUT_MS):
                raise self._timeout("Transceive")
        self._wreg(_REG_BIT_FRAMING, framing)  # clears StartSend
        err = self._rreg(_REG_ERROR)
        n = self._rreg(_REG_FIFO_LEVEL) & 0x7F
        if n > _FIFO_SIZE:
            n = _FIFO_SIZE
        rx = self._rx
        for i in range(n):
            rx[i] = self._rreg(_REG_FIFO_DATA)
        self._rx_n = n
        if not n:  # an error without data (noise): the same as silence
            return _NO_ANSWER
        if err & _ERR_FATAL:
            return _BAD_FRAME
        if err & _ERR_COLL:
            return _COLLISION
        return _OK

    # -- ISO 14443-3 ------------------------------------------------------------------

    def poll(self, wake=False):
        """Selects one card in the field; returns a Card, or None when none answers.

        REQA wakes only idle cards; wake=True sends WUPA, which also wakes halted ones.
        The card is left selected (ACTIVE); call halt() once it has been handled.
        Raises ReaderError: kind "timeout" when the chip does not answer (the next call
        resets it), "collision", "crc" or "frame" for a card that was seen but not read.
        """
        if not self._ready:
            self.reset()
        elif self._rreg(_REG_T_PRESCALER) != _T_PRESCALER:
            # One read per poll: a chip that stopped answering reads 0x00/0xFF, one that
            # reset itself (brown-out) reads the reset default; either way, reconfigure.
            self.reset()
        self._l4 = False
        self._tx[0] = _WUPA if wake else _REQA
        st = self._transceive(1, 7)  # short frame: 7 bits (ISO 14443-3 6.3.1)
        if st == _NO_ANSWER:
            return None
        # Cards with different ATQAs collide here: normal, anticollision sorts it out.
        if st == _BAD_FRAME or self._rx_n != 2:
            raise ReaderError(errno.EIO, "ATQA", "frame")
        atqa = self._rx[0] | (self._rx[1] << 8)
        n = 0
        for level in range(3):
            sak = self._select_level(_SEL_CL1 + 2 * level)
            if sak < 0:
                return None  # the card left the field
            cl = self._cl
            if sak & _SAK_CASCADE:
                if cl[0] != _CT:
                    raise ReaderError(errno.EIO, "cascade tag", "frame")
                self._uid[n : n + 3] = cl[1:4]
                n += 3
            else:
                self._uid[n : n + 4] = cl[0:4]
                n += 4
                break
        else:
            raise ReaderError(errno.EIO, "UID longer than 3 cascade levels", "frame")
        ats = None
        if sak & _SAK_ISO14443_4:
            ats = self._rats()
            if ats is None:
                return None
        return Card(bytes(self._uid[:n]), sak, atqa, ats)

    def _select_level(self, sel):
        """Anticollision and SELECT for one cascade level (ISO 14443-3 6.5.3).

        Leaves UID CLn + BCC in _cl and returns the SAK, or -1 when the card went away.
        """
        cl = self._cl
        tx = self._tx
        known = 0  # UID bits of this level already settled
        # Each collision settles at least one more bit, so 32 rounds resolve any field.
        for _ in range(33):
            nbytes = known >> 3
            nbits = known & 7
            tx[0] = sel
            tx[1] = ((2 + nbytes) << 4) | nbits  # NVB: bytes and bits sent, SEL and NVB included
            m = nbytes + (1 if nbits else 0)
            for i in range(m):
                tx[2 + i] = cl[i]
            st = self._transceive(2 + m, nbits, nbits)
            if st == _NO_ANSWER:
                return -1
            if st == _BAD_FRAME:
                raise ReaderError(errno.EIO, "anticollision", "frame")
            # The answer starts at bit `known`: rx[0] completes the split byte.
            rx = self._rx
            keep = (1 << nbits) - 1
            cl[nbytes] = (cl[nbytes] & keep) | (rx[0] & ~keep & 0xFF)
            for i in range(1, self._rx_n):
                if nbytes + i < 5:
                    cl[nbytes + i] = rx[i]
            if st == _OK:
                if self._rx_n != 5 - nbytes:
                    raise ReaderError(errno.EIO, "anticollision length", "frame")
                break
            coll = self._rreg(_REG_COLL)
            if coll & _COLL_POS_NOT_VALID:
                raise ReaderError(errno.EIO, "collision position unknown", "collision")
            # CollPos counts the bits stored in the FIFO from 1 (0 means 32), so it
            # includes the RxAlign offset: the absolute bit is relative to byte `nbytes`.
            bit = nbytes * 8 + ((coll & 0x1F) or 32) - 1
            if bit < known or bit >= 32:  # no progress, or a clash in the BCC alone
                raise ReaderError(errno.EIO, "unresolvable collision", "collision")
            # Follow the cards with a 1 at the first differing bit (the choice ISO
            # 14443-3 calls typical); the others stay quiet until the next REQA.
            cl[bit >> 3] = (cl[bit >> 3] | (1 << (bit & 7))) & ((2 << (bit & 7)) - 1)
            known = bit + 1
        else:
            raise ReaderError(errno.EIO, "anticollision did not converge", "collision")
        if cl[4] != cl[0] ^ cl[1] ^ cl[2] ^ cl[3]:
            raise ReaderError(errno.EIO, "BCC", "crc")
        tx[0] = sel
        tx[1] = _NVB_SELECT
        tx[2:7] = cl
        st = self._transceive(self._append_crc(7))
        if st == _NO_ANSWER:
            return -1
        if st == _COLLISION:  # two cards with this very UID but different SAKs
            raise ReaderError(errno.EIO, "SAK", "collision")
        if st != _OK or self._rx_n != 3:
            raise ReaderError(errno.EIO, "SAK", "frame")
        if not self._rx_crc_ok():
            raise ReaderError(errno.EIO, "SAK", "crc")
        return self._rx[0]

    def _rats(self):
        """Request for Answer To Select (ISO 14443-4 5.6.1); returns the ATS or None."""
        tx = self._tx
        tx[0] = _RATS
        tx[1] = _RATS_PARAM
        st = self._transceive(self._append_crc(2))
        if st == _NO_ANSWER:
            return None
        n = self._rx_n
        tl = self._rx[0] if n else 0
        # TL counts the ATS bytes including itself; CRC_A follows.
        if st != _OK or n < 3 or tl != n - 2:
            raise ReaderError(errno.EIO, "ATS", "frame")
        if not self._rx_crc_ok():
            raise ReaderError(errno.EIO, "ATS", "crc")
        self._l4 = True
        return bytes(self._rx[:tl])

    def halt(self):
        """Puts the selected card in HALT: only WUPA (or leaving the field) wakes it.

        A card that answered RATS gets S(DESELECT) (ISO 14443-4 8.3): in protocol state
        it ignores HLTA. Returns True when the card acknowledged.
        """
        tx = self._tx
        if self._l4:
            self._l4 = False
            tx[0] = _S_DESELECT
            st = self._transceive(self._append_crc(1))
            return st == _OK and self._rx_n == 3 and self._rx[0] == _S_DESELECT
        tx[0] = _HLTA
        tx[1] = 0
        # ISO 14443-3 6.4.3: any answer to HLTA means it was not acknowledged.
        return self._transceive(self._append_crc(2)) == _NO_ANSWER
