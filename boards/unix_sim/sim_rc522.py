"""Register/FIFO-level emulation of an NXP MFRC522 and the ISO 14443 type A cards in its field.

The real driver (lib/mfrc522.py) runs on it unchanged:

    chip = Rc522Chip(clock_us=hw_clock_us)     # clock optional: tick(now_us) also works
    reader = Mfrc522(chip.spi, chip.cs, chip.rst)
    chip.present(b"\\x04\\x11\\x22\\x33", "M1", 3_000_000, now_us)   # a card for 3 s

Emulated subset (section numbers: MFRC522 datasheet rev. 3.9, ISO/IEC 14443-3):
- SPI (8.1.2): address byte (reg << 1) & 0x7E, bit 7 = read; a write burst goes to one
  register, a read burst sends one address per byte and ends with 0x00; only while CS is low.
- Registers: CommandReg (PowerDown reads 1 for `boot_reads` reads after a reset),
  ComIrqReg/DivIrqReg (Set1/Set2 write semantics), ErrorReg, FIFODataReg/FIFOLevelReg
  (64 bytes, FlushBuffer, BufferOvfl), ControlReg RxLastBits, BitFramingReg (StartSend,
  RxAlign, TxLastBits), CollReg, ModeReg CRCPreset, TxControlReg (antenna), TModeReg TAuto
  + TReload (they only decide whether TimerIRq fires: no time passes inside the chip),
  CRCResultReg, VersionReg (`version`, 0x92). Other registers are plain storage.
- Commands: Idle, CalcCRC (CRC_A, preset from ModeReg), Transceive (runs when StartSend is
  written), SoftReset, NoCmdChange. The others (Mem, GenerateRandomID, Transmit, Receive,
  MFAuthent) are refused as an error the driver can see: ErrorReg ProtocolErr, ComIrqReg
  ErrIRq, back to Idle, counted in `refused_commands`.
- Cards, per ISO 14443-3 6.3 (IDLE, READY, ACTIVE, HALT, plus PROTOCOL after RATS):
  REQA/WUPA short frames -> ATQA; anticollision and SELECT on cascade levels 1-3 with the
  cascade tag 0x88, BCC and CRC_A; HLTA; RATS -> ATS (CPU cards); S(DESELECT) in PROTOCOL.
  A frame a card does not expect sends it back to IDLE (HALT if WUPA woke it from HALT).
  Field off (antenna off, reset) powers every card down: it comes back IDLE.
- Collisions: answers that differ set ErrorReg CollErr and CollReg CollPos, counted from 1
  over the bits stored in the FIFO (RxAlign offset included; 32 reads as 0, beyond 32 sets
  CollPosNotValid). With ValuesAfterColl = 0 every bit from the collision on reads 0.
- No answer: TxIRq, plus TimerIRq when TAuto is set and TReload is not 0; never RxIRq.
- Faults: `silent` (reads return `garbage`, writes are lost), RST low (held in reset, reads
  return `garbage`), `irq_delay` (IRQ bits show only after that many IRQ register reads).
Not emulated: timing, parity and CRC errors on air, TxCRCEn/RxCRCEn, MIFARE authentication,
ISO 14443-4 I-blocks, soft power-down.

No answer to a frame costs no allocation, so the driver's idle poll can run under
micropython.heap_lock() on top of this emulation.
"""
from micropython import const

_COMMAND = const(0x01)
_COM_IRQ = const(0x04)
_DIV_IRQ = const(0x05)
_ERROR = const(0x06)
_STATUS1 = const(0x07)
_STATUS2 = const(0x08)
_FIFO_DATA = const(0x09)
_FIFO_LEVEL = const(0x0A)
_CONTROL = const(0x0C)
_BIT_FRAMING = const(0x0D)
_COLL = const(0x0E)
_MODE = const(0x11)
_TX_CONTROL = const(0x14)
_CRC_H = const(0x21)
_CRC_L = const(0x22)
_T_MODE = const(0x2A)
_T_RELOAD_H = const(0x2C)
_T_RELOAD_L = const(0x2D)
_T_COUNTER_H = const(0x2E)
_T_COUNTER_L = const(0x2F)
_VERSION = const(0x37)

_CMD_IDLE = const(0x00)
_CMD_CALC_CRC = const(0x03)
_CMD_NO_CHANGE = const(0x07)
_CMD_TRANSCEIVE = const(0x0C)
_CMD_SOFT_RESET = const(0x0F)

_IRQ_TX = const(0x40)
_IRQ_RX = const(0x20)
_IRQ_ERR = const(0x02)
_IRQ_TIMER = const(0x01)
_DIV_CRC = const(0x04)
_ERR_BUFFER_OVFL = const(0x10)
_ERR_COLL = const(0x08)
_ERR_PROTOCOL = const(0x01)
_COLL_POS_NOT_VALID = const(0x20)
_VALUES_AFTER_COLL = const(0x80)

_FIFO_SIZE = const(64)

# Reset values that differ from 0x00 (datasheet 9.2); VersionReg is set per chip.
_RESET_VALUES = (
    (_COMMAND, 0x20),
    (0x02, 0x80),
    (_COM_IRQ, 0x14),
    (_STATUS1, 0x21),
    (0x0B, 0x08),
    (_CONTROL, 0x10),
    (_COLL, 0xA0),
    (_MODE, 0x3F),
    (_TX_CONTROL, 0x80),
    (0x16, 0x10),
    (0x17, 0x84),
    (0x18, 0x84),
    (0x19, 0x4D),
    (0x1C, 0x62),
    (_CRC_H, 0xFF),
    (_CRC_L, 0xFF),
    (0x24, 0x26),
    (0x26, 0x48),
    (0x27, 0x88),
    (0x28, 0x20),
    (0x29, 0x20),
)
_CRC_PRESETS = (0x0000, 0x6363, 0xA671, 0xFFFF)  # ModeReg CRCPreset[1:0]

# ISO 14443-3 / -4 frames
_REQA = const(0x26)
_WUPA = const(0x52)
_SEL_CL1 = const(0x93)
_NVB_SELECT = const(0x70)
_CT = const(0x88)
_HLTA = const(0x50)
_RATS = const(0xE0)
_S_DESELECT = const(0xC2)

# Card states (ISO 14443-3 6.3)
IDLE = const(0)
READY = const(1)
ACTIVE = const(2)
HALT = const(3)
PROTOCOL = const(4)  # ISO 14443-4 after RATS
STATE_NAMES = ("IDLE", "READY", "ACTIVE", "HALT", "PROTOCOL")

# A typical smart-card ATS: TL 5, T0 0x78 (TA TB TC present, FSCI 8), TA, TB (FWI 7), TC.
DEFAULT_ATS = b"\x05\x78\x80\x70\x02"


def crc_a_update(crc, b):
    """One byte into an ISO 14443-3 CRC_A: CRC-16, reflected polynomial 0x8408."""
    crc ^= b
    for _ in range(8):
        crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def crc_a(buf, n=None, crc=0x6363):
    """CRC_A of buf[:n] as an int; on air the low byte goes first."""
    for i in range(len(buf) if n is None else n):
        crc = crc_a_update(crc, buf[i])
    return crc


def _with_crc(data):
    c = crc_a(data)
    return bytes(data) + bytes((c & 0xFF, c >> 8))


def _crc_ok(f, n):
    """The frame f holds n data bytes followed by their CRC_A."""
    c = crc_a(f, n)
    return f[n] == c & 0xFF and f[n + 1] == c >> 8


class Card:
    """A type A card in the field: its UID split in cascade levels and its ISO state."""

    def __init__(self, uid, kind, until_us, ats):
        self.uid = uid
        self.kind = kind
        self.until_us = until_us  # None: stays until removed
        n = len(uid)
        # UID CLn per cascade level, each with its BCC (ISO 14443-3 6.5.4)
        if n == 4:
            parts = (uid,)
        elif n == 7:
            parts = (bytes((_CT,)) + uid[0:3], uid[3:7])
        else:
            parts = (bytes((_CT,)) + uid[0:3], bytes((_CT,)) + uid[3:6], uid[6:10])
        self.levels = [p + bytes((p[0] ^ p[1] ^ p[2] ^ p[3],)) for p in parts]
        size = (0x00, 0x40, 0x80)[len(parts) - 1]  # ATQA b8b7: UID size
        cpu = kind == "CPU"
        # ATQA LSB first; b3 = bit frame anticollision; CPU cards carry 0x03 like DESFire.
        self.atqa = bytes((size | 0x04, 0x03 if cpu else 0x00))
        self.sak = 0x20 if cpu else 0x08  # ISO 14443-4 compliant / MIFARE Classic 1K
        self.ats = (ats or DEFAULT_ATS) if cpu else None
        self.power_off()

    def power_off(self):
        self.state = IDLE
        self.rest = IDLE  # where an unexpected frame sends it: HALT once woken from HALT
        self.level = 0

    def state_name(self):
        return STATE_NAMES[self.state]

    def answer(self, f, nbits):
        """Reacts to the frame f (nbits bits); returns (data, bits) or None (silence).

        Silence allocates nothing: the reader's idle poll depends on it.
        """
        st = self.state
        if nbits == 7:  # short frame
            cmd = f[0] & 0x7F
            if (cmd == _WUPA and (st == IDLE or st == HALT)) or (cmd == _REQA and st == IDLE):
                self.rest = st
                self.state = READY
                self.level = 0
                return self.atqa, 16
            if st == READY or st == ACTIVE:
                self.state = self.rest
            return None
        if st == READY:
            return self._anticollision(f, nbits)
        if st == ACTIVE:
            if nbits == 32 and f[0] == _HLTA and f[1] == 0 and _crc_ok(f, 2):
                self.state = HALT
                return None
            if nbits == 32 and f[0] == _RATS and self.ats and _crc_ok(f, 2):
                self.state = PROTOCOL
                return _with_crc(self.ats), 8 * len(self.ats) + 16
            self.state = self.rest
            return None
        if st == PROTOCOL and nbits == 24 and f[0] == _S_DESELECT and _crc_ok(f, 1):
            self.state = HALT
            return _with_crc(bytes((_S_DESELECT,))), 24
        return None

    def _anticollision(self, f, nbits):
        if nbits >= 16 and f[0] == _SEL_CL1 + 2 * self.level:
            cl = self.levels[self.level]
            nvb = f[1]
            if nvb == _NVB_SELECT:
                if nbits == 72 and _crc_ok(f, 7) and self._match(f, 40):
                    if self.level + 1 < len(self.levels):
                        self.level += 1
                        return _with_crc(b"\x04"), 24  # SAK: cascade bit, UID not complete
                    self.state = ACTIVE
                    return _with_crc(bytes((self.sak,))), 24
            else:
                known = ((nvb >> 4) - 2) * 8 + (nvb & 0x0F)
                if nvb & 0x0F < 8 and 0 <= known < 40 and nbits == 16 + known:
                    if not self._match(f, known):
                        return None  # not addressed: stays READY, silent
                    out = bytearray((40 - known + 7) // 8)
                    for i in range(40 - known):
                        j = known + i
                        if cl[j >> 3] >> (j & 7) & 1:
                            out[i >> 3] |= 1 << (i & 7)
                    return out, 40 - known
        self.state = self.rest
        return None

    def _match(self, f, nbits):
        """The first nbits UID bits in the frame (after SEL and NVB) are this level's."""
        cl = self.levels[self.level]
        for i in range(nbits >> 3):
            if f[2 + i] != cl[i]:
                return False
        r = nbits & 7
        if r:
            mask = (1 << r) - 1
            return f[2 + (nbits >> 3)] & mask == cl[nbits >> 3] & mask
        return True


class _Pin:
    def __init__(self, on_change):
        self._v = 1
        self._on_change = on_change

    def value(self, v=None):
        if v is None:
            return self._v
        v = 1 if v else 0
        if v != self._v:
            self._v = v
            self._on_change(v)

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class _Spi:
    """The calls of machine.SPI the driver uses, clocking bytes through the chip."""

    def __init__(self, chip):
        self._chip = chip

    def write(self, buf):
        chip = self._chip
        for b in buf:
            chip._xfer(b)

    def readinto(self, buf, write=0):
        chip = self._chip
        for i in range(len(buf)):
            buf[i] = chip._xfer(write)

    def read(self, n, write=0):
        buf = bytearray(n)
        self.readinto(buf, write)
        return bytes(buf)

    def write_readinto(self, out, buf):
        chip = self._chip
        for i in range(len(out)):
            buf[i] = chip._xfer(out[i])


class Rc522Chip:
    """The MFRC522 behind `spi`, `cs` and `rst`, and the cards in its field."""

    def __init__(self, version=0x92, clock_us=None):
        self.version = version
        self.clock_us = clock_us  # optional: called before each frame to expire cards
        self.now_us = 0
        self.silent = False
        self.garbage = 0x00  # what MISO reads when the chip does not drive it
        self.irq_delay = 0
        self.boot_reads = 1
        self.log = None  # set to a list to record each frame sent: (bytes, bits)
        self.transfers = 0  # SPI bytes clocked, to bound the driver's work in tests
        self.refused_commands = 0  # commands outside the emulated subset
        self.cards = []
        self.field_on = False
        self.regs = bytearray(64)
        self._fifo = bytearray(_FIFO_SIZE)
        self._frame = bytearray(_FIFO_SIZE)
        self._fifo_r = 0
        self._fifo_w = 0
        self._pend_com = 0
        self._pend_div = 0
        self._delay = 0
        self._boot = 0
        self._crc = 0
        self._addr = -1  # register of the running SPI transaction, -1 before its first byte
        self._reading = False
        self._selected = False
        self._in_reset = False
        self.spi = _Spi(self)
        self.cs = _Pin(self._on_cs)
        self.rst = _Pin(self._on_rst)
        self._reset()

    # -- cards ------------------------------------------------------------------------

    def present(self, uid, kind="M1", duration_us=None, now_us=None, ats=None):
        """Puts a card in the field for duration_us (None: until removed).

        A card with the same UID and kind only has its time extended; any other card
        joins the ones already there. kind "M1": MIFARE Classic (SAK 0x08); "CPU": ISO
        14443-4 (SAK 0x20, answers RATS with `ats`).
        """
        uid = bytes(uid)
        if len(uid) not in (4, 7, 10):
            raise ValueError("UID must be 4, 7 or 10 bytes")
        if kind not in ("M1", "CPU"):
            raise ValueError("kind must be M1 or CPU")
        if len(uid) == 4 and uid[0] == _CT:
            raise ValueError("0x88 is the cascade tag")  # ISO 14443-3 6.5.4
        if now_us is not None:
            self.tick(now_us)
        until = None if duration_us is None else self.now_us + duration_us
        for c in self.cards:
            if c.uid == uid and c.kind == kind:
                c.until_us = until
                return c
        c = Card(uid, kind, until, ats)
        self.cards.append(c)
        return c

    def remove(self, uid=None):
        """Takes the card with this UID (every card when None) out of the field."""
        n = len(self.cards)
        if uid is None:
            self.cards = []
        else:
            uid = bytes(uid)
            self.cards = [c for c in self.cards if c.uid != uid]
        return n - len(self.cards)

    def tick(self, now_us):
        """Advances the chip's notion of time; cards whose time is up leave the field."""
        self.now_us = now_us
        cards = self.cards
        i = len(cards)
        while i:
            i -= 1
            u = cards[i].until_us
            if u is not None and u <= now_us:
                del cards[i]

    # -- pins and SPI -----------------------------------------------------------------

    def _on_cs(self, v):
        self._selected = not v
        self._addr = -1

    def _on_rst(self, v):
        # RST low: hard power-down, nothing answers; the rising edge restarts the chip.
        self._in_reset = not v
        self._reset()

    def _xfer(self, b):
        self.transfers += 1
        if not self._selected or self._in_reset or self.silent:
            return self.garbage
        if self._addr < 0:
            self._addr = (b >> 1) & 0x3F
            self._reading = b & 0x80
            return 0
        if self._reading:
            v = self._get(self._addr)
            self._addr = (b >> 1) & 0x3F  # the next address of the burst
            return v
        self._put(self._addr, b)
        return 0

    # -- register file ----------------------------------------------------------------

    def _reset(self):
        r = self.regs
        for i in range(64):
            r[i] = 0
        for reg, v in _RESET_VALUES:
            r[reg] = v
        r[_VERSION] = self.version
        self._flush()
        self._pend_com = self._pend_div = self._delay = 0
        self._boot = self.boot_reads
        self._set_field(False)

    def _flush(self):
        self._fifo_r = self._fifo_w = 0

    def _compact(self):
        fifo = self._fifo
        n = self._fifo_w - self._fifo_r
        for i in range(n):
            fifo[i] = fifo[self._fifo_r + i]
        self._fifo_r = 0
        self._fifo_w = n

    def _set_field(self, on):
        if on != self.field_on:
            self.field_on = on
            if not on:
                for c in self.cards:
                    c.power_off()

    def _irq(self, com, div):
        if self.irq_delay:
            self._pend_com |= com
            self._pend_div |= div
            self._delay = self.irq_delay
        else:
            self.regs[_COM_IRQ] |= com
            self.regs[_DIV_IRQ] |= div

    def _get(self, reg):
        r = self.regs
        if reg == _FIFO_DATA:
            if self._fifo_r < self._fifo_w:
                v = self._fifo[self._fifo_r]
                self._fifo_r += 1
                if self._fifo_r == self._fifo_w:
                    self._flush()
                return v
            return 0
        if reg == _FIFO_LEVEL:
            return self._fifo_w - self._fifo_r
        if reg == _COMMAND:
            if self._boot:  # the oscillator is still starting (datasheet 8.8.2)
                self._boot -= 1
                return r[_COMMAND] | 0x10
            return r[_COMMAND]
        if reg == _COM_IRQ or reg == _DIV_IRQ:
            if self._delay:
                self._delay -= 1
            else:
                r[_COM_IRQ] |= self._pend_com
                r[_DIV_IRQ] |= self._pend_div
                self._pend_com = self._pend_div = 0
        return r[reg]

    def _put(self, reg, v):
        r = self.regs
        if reg == _COMMAND:
            self._command(v)
        elif reg == _COM_IRQ or reg == _DIV_IRQ:
            mask = v & (0x7F if reg == _COM_IRQ else 0x14)
            if v & 0x80:  # Set1/Set2: 1 sets the marked bits, 0 clears them
                r[reg] |= mask
            else:
                r[reg] &= ~mask
                if reg == _COM_IRQ:
                    self._pend_com &= ~mask
                else:
                    self._pend_div &= ~mask
        elif reg == _FIFO_DATA:
            if r[_COMMAND] & 0x0F == _CMD_CALC_CRC:
                self._crc_byte(v)
                return
            if self._fifo_w == _FIFO_SIZE and self._fifo_r:
                self._compact()
            if self._fifo_w < _FIFO_SIZE:
                self._fifo[self._fifo_w] = v
                self._fifo_w += 1
            else:
                r[_ERROR] |= _ERR_BUFFER_OVFL
        elif reg == _FIFO_LEVEL:
            if v & 0x80:
                self._flush()
                r[_ERROR] &= ~_ERR_BUFFER_OVFL
        elif reg == _BIT_FRAMING:
            r[reg] = v
            if v & 0x80 and r[_COMMAND] & 0x0F == _CMD_TRANSCEIVE:
                self._transceive()
        elif reg == _COLL:
            r[reg] = (r[reg] & 0x7F) | (v & 0x80)
        elif reg == _TX_CONTROL:
            r[reg] = v
            self._set_field(v & 0x03 != 0)
        elif (
            reg == _ERROR
            or reg == _STATUS1
            or reg == _STATUS2
            or reg == _CONTROL
            or reg == _CRC_H
            or reg == _CRC_L
            or reg == _T_COUNTER_H
            or reg == _T_COUNTER_L
            or reg == _VERSION
        ):
            pass  # read-only here (ControlReg's TStartNow/TStopNow: no timer runs)
        else:
            r[reg] = v

    def _command(self, v):
        cmd = v & 0x0F
        r = self.regs
        if cmd == _CMD_NO_CHANGE:
            r[_COMMAND] = (v & 0x30) | (r[_COMMAND] & 0x0F)
            return
        if cmd == _CMD_SOFT_RESET:
            self._reset()
            return
        if cmd != _CMD_IDLE and cmd != _CMD_CALC_CRC and cmd != _CMD_TRANSCEIVE:
            # Outside the emulated subset: fail visibly through the chip's own error
            # flags rather than pretend it ran (the driver uses none of these).
            self.refused_commands += 1
            r[_ERROR] |= _ERR_PROTOCOL
            r[_COM_IRQ] |= _IRQ_ERR
            r[_COMMAND] = (v & 0x30) | _CMD_IDLE
            return
        r[_COMMAND] = (v & 0x30) | cmd
        if cmd == _CMD_CALC_CRC:
            # The coprocessor takes what is in the FIFO, then each byte written to it.
            self._crc = _CRC_PRESETS[r[_MODE] & 0x03]
            while self._fifo_r < self._fifo_w:
                self._fifo_r += 1
                self._crc_byte(self._fifo[self._fifo_r - 1])
            self._flush()

    def _crc_byte(self, b):
        self._crc = c = crc_a_update(self._crc, b)
        self.regs[_CRC_H] = c >> 8
        self.regs[_CRC_L] = c & 0xFF
        self._irq(0, _DIV_CRC)

    # -- the air interface ------------------------------------------------------------

    def _transceive(self):
        r = self.regs
        framing = r[_BIT_FRAMING]
        tx_last = framing & 0x07
        rx_align = (framing >> 4) & 0x07
        n = self._fifo_w - self._fifo_r
        f = self._frame
        for i in range(n):
            f[i] = self._fifo[self._fifo_r + i]
        self._flush()
        nbits = (n - 1) * 8 + (tx_last or 8) if n else 0
        r[_ERROR] = 0
        r[_COLL] = (r[_COLL] & _VALUES_AFTER_COLL) | _COLL_POS_NOT_VALID
        r[_CONTROL] &= 0xF8
        if self.clock_us is not None:
            self.tick(self.clock_us())
        if self.log is not None:
            self.log.append((bytes(f[:n]), nbits))
        answers = None
        if self.field_on and nbits:
            for c in self.cards:  # every card hears the frame, answering or not
                a = c.answer(f, nbits)
                if a is not None:
                    if answers is None:
                        answers = []
                    answers.append(a)
        if answers is None:
            timer = r[_T_MODE] & 0x80 and (r[_T_RELOAD_H] or r[_T_RELOAD_L])
            self._irq(_IRQ_TX | (_IRQ_TIMER if timer else 0), 0)
            return
        self._receive(answers, rx_align)
        self._irq(_IRQ_TX | _IRQ_RX | (_IRQ_ERR if r[_ERROR] else 0), 0)

    def _receive(self, answers, rx_align):
        """Superposes the answers bit by bit into the FIFO, as the receiver would."""
        r = self.regs
        nb = max(bits for _, bits in answers)
        keep_after = r[_COLL] & _VALUES_AFTER_COLL
        fifo = self._fifo
        total = rx_align + nb
        nbytes = min((total + 7) >> 3, _FIFO_SIZE)
        for i in range(nbytes):
            fifo[i] = 0
        coll = -1
        for i in range(nb):
            ones = zeros = 0
            for data, bits in answers:
                if i >= bits:  # this card's answer has ended: a clash with the others
                    ones += 1
                    zeros += 1
                elif data[i >> 3] >> (i & 7) & 1:
                    ones += 1
                else:
                    zeros += 1
            if coll < 0 and ones and zeros:
                coll = i
            bit = ones and (coll < 0 or keep_after)
            pos = rx_align + i
            if bit and pos >> 3 < nbytes:
                fifo[pos >> 3] |= 1 << (pos & 7)
        self._fifo_r = 0
        self._fifo_w = nbytes
        r[_CONTROL] = (r[_CONTROL] & 0xF8) | (total & 7)
        if coll >= 0:
            r[_ERROR] |= _ERR_COLL
            pos = rx_align + coll + 1
            if pos <= 32:
                r[_COLL] = (r[_COLL] & _VALUES_AFTER_COLL) | (pos & 0x1F)
