# The MFRC522 emulation at register level: SPI framing, FIFO, IRQ registers, the CRC
# coprocessor and the ISO 14443-3 answers of the cards, without the driver.
from check import eq, true, raises
from sim_rc522 import Rc522Chip, crc_a, IDLE, READY, ACTIVE, HALT, PROTOCOL

COMMAND = 0x01
COM_IRQ = 0x04
DIV_IRQ = 0x05
ERROR = 0x06
FIFO_DATA = 0x09
FIFO_LEVEL = 0x0A
CONTROL = 0x0C
BIT_FRAMING = 0x0D
COLL = 0x0E
MODE = 0x11
TX_CONTROL = 0x14
CRC_H = 0x21
CRC_L = 0x22
T_MODE = 0x2A
T_PRESCALER = 0x2B
T_RELOAD_L = 0x2D
VERSION = 0x37

UID_A = b"\x01\x02\x03\x04"
UID_B = b"\x01\x02\x03\x44"  # differs from UID_A in bit 6 of byte 3 (bit 30 of CL1)


def wreg(chip, reg, *vals):
    chip.cs.value(0)
    chip.spi.write(bytes([(reg << 1) & 0x7E] + list(vals)))
    chip.cs.value(1)


def rreg(chip, reg):
    out = bytes(((reg << 1) & 0x7E | 0x80, 0))
    got = bytearray(2)
    chip.cs.value(0)
    chip.spi.write_readinto(out, got)
    chip.cs.value(1)
    return got[1]


def read_fifo(chip):
    return bytes(rreg(chip, FIFO_DATA) for _ in range(rreg(chip, FIFO_LEVEL)))


def ready_chip(*cards):
    """A chip set up as the driver does: timer on TAuto, antenna on, ValuesAfterColl 0."""
    chip = Rc522Chip()
    wreg(chip, T_MODE, 0x80)
    wreg(chip, T_PRESCALER, 0xA9)
    wreg(chip, T_RELOAD_L, 0xE8)
    wreg(chip, MODE, 0x3D)
    wreg(chip, COLL, 0x00)
    wreg(chip, TX_CONTROL, 0x83)
    for uid, kind in cards:
        chip.present(uid, kind)
    return chip


def transceive(chip, frame, tx_last_bits=0, rx_align=0):
    """Runs Transceive on the frame; returns (ComIrqReg, ErrorReg, FIFO bytes)."""
    wreg(chip, COMMAND, 0x00)
    wreg(chip, COM_IRQ, 0x7F)
    wreg(chip, FIFO_LEVEL, 0x80)
    wreg(chip, FIFO_DATA, *frame)
    wreg(chip, COMMAND, 0x0C)
    wreg(chip, BIT_FRAMING, 0x80 | rx_align << 4 | tx_last_bits)
    return rreg(chip, COM_IRQ), rreg(chip, ERROR), read_fifo(chip)


def with_crc(frame):
    c = crc_a(frame)
    return bytes(frame) + bytes((c & 0xFF, c >> 8))


def test_spi_read_write_and_bursts():
    chip = Rc522Chip()
    eq(rreg(chip, VERSION), 0x92, "VersionReg")
    # Read burst: each byte carries the next address, MISO the previous register.
    got = bytearray(3)
    chip.cs.value(0)
    chip.spi.write_readinto(bytes((0xEE, 0xEE, 0x00)), got)
    chip.cs.value(1)
    eq(bytes(got), b"\x00\x92\x92", "burst read")
    # Write burst: every data byte goes to the one register.
    wreg(chip, FIFO_DATA, 1, 2, 3)
    eq(rreg(chip, FIFO_LEVEL), 3, "FIFOLevel")
    eq(read_fifo(chip), b"\x01\x02\x03", "FIFO")


def test_fifo_reads_back_in_order_and_flushes():
    chip = Rc522Chip()
    wreg(chip, FIFO_DATA, 7, 8, 9)
    eq(read_fifo(chip), b"\x07\x08\x09", "FIFO")
    wreg(chip, FIFO_DATA, *range(65))
    eq(rreg(chip, FIFO_LEVEL), 64, "FIFO holds 64 bytes")
    true(rreg(chip, ERROR) & 0x10, "BufferOvfl")
    wreg(chip, FIFO_LEVEL, 0x80)
    eq(rreg(chip, FIFO_LEVEL), 0, "level after FlushBuffer")
    eq(rreg(chip, ERROR) & 0x10, 0, "BufferOvfl after flush")


def test_bus_ignored_without_chip_select():
    chip = Rc522Chip()
    chip.spi.write(bytes(((FIFO_DATA << 1), 0x55)))
    eq(rreg(chip, FIFO_LEVEL), 0, "write with CS high")
    got = bytearray(2)
    chip.spi.write_readinto(b"\xEE\x00", got)
    eq(got[1], chip.garbage, "read with CS high")


def test_irq_registers_set1_semantics():
    chip = Rc522Chip()
    wreg(chip, COM_IRQ, 0x7F)
    eq(rreg(chip, COM_IRQ), 0, "all cleared")
    wreg(chip, COM_IRQ, 0x80 | 0x21)
    eq(rreg(chip, COM_IRQ), 0x21, "Set1 = 1 sets the marked bits")
    wreg(chip, COM_IRQ, 0x01)
    eq(rreg(chip, COM_IRQ), 0x20, "Set1 = 0 clears the marked bits")


def test_calc_crc_matches_iso14443_annex_b():
    chip = Rc522Chip()
    wreg(chip, MODE, 0x3D)  # CRCPreset 0x6363
    for data, want in (
        (b"\x00\x00", b"\xA0\x1E"),
        (b"\x12\x34", b"\x26\xCF"),
        (b"\x50\x00", b"\x57\xCD"),  # HLTA
        (b"\xE0\x50", b"\xBC\xA5"),  # RATS
    ):
        wreg(chip, COMMAND, 0x00)
        wreg(chip, DIV_IRQ, 0x04)
        wreg(chip, FIFO_LEVEL, 0x80)
        wreg(chip, FIFO_DATA, *data)
        wreg(chip, COMMAND, 0x03)
        true(rreg(chip, DIV_IRQ) & 0x04, "CRCIRq")
        eq(bytes((rreg(chip, CRC_L), rreg(chip, CRC_H))), want, "CRC_A %r" % data)
        eq(rreg(chip, FIFO_LEVEL), 0, "FIFO consumed")


def test_reqa_is_a_7_bit_frame():
    chip = ready_chip((UID_A, "M1"))
    irq, err, data = transceive(chip, b"\x26", 7)
    true(irq & 0x20, "RxIRq")
    eq(irq & 0x01, 0, "TimerIRq")
    eq((err, data), (0, b"\x04\x00"), "ATQA of a 4-byte MIFARE Classic")
    eq(rreg(chip, CONTROL) & 7, 0, "RxLastBits: whole bytes")
    chip = ready_chip((UID_A, "M1"))
    irq, err, data = transceive(chip, b"\x26")  # 8 bits: not a short frame
    eq((irq & 0x21, data), (0x01, b""), "full-byte 0x26 ignored")


def test_silence_fires_the_timer_only_when_tauto_is_set():
    chip = ready_chip()
    irq, _, data = transceive(chip, b"\x26", 7)
    eq((irq & 0x61, data), (0x41, b""), "TxIRq + TimerIRq, no RxIRq")
    wreg(chip, T_MODE, 0x00)
    irq, _, _ = transceive(chip, b"\x26", 7)
    eq(irq & 0x61, 0x40, "no timer: only TxIRq")


def test_antenna_off_nobody_answers():
    chip = ready_chip((UID_A, "M1"))
    wreg(chip, TX_CONTROL, 0x80)
    irq, _, data = transceive(chip, b"\x26", 7)
    eq((irq & 0x21, data), (0x01, b""), "field off")


def anticollision_cl1(chip):
    transceive(chip, b"\x26", 7)
    return transceive(chip, b"\x93\x20")


def test_anticollision_and_select_with_bcc_and_crc():
    chip = ready_chip((UID_A, "M1"))
    irq, err, data = anticollision_cl1(chip)
    eq((err, data), (0, UID_A + b"\x04"), "UID CL1 + BCC")
    irq, err, data = transceive(chip, b"\x93\x70" + UID_A + b"\x04\x00\x00")
    eq((irq & 0x21, data), (0x01, b""), "SELECT with a bad CRC_A")
    chip = ready_chip((UID_A, "M1"))
    anticollision_cl1(chip)
    irq, err, data = transceive(chip, with_crc(b"\x93\x70" + UID_A + b"\x04"))
    eq(data, with_crc(b"\x08"), "SAK + CRC_A")
    eq(chip.cards[0].state, ACTIVE, "state")


def test_seven_byte_uid_starts_with_the_cascade_tag():
    uid = b"\x04\x11\x22\x33\x44\x55\x66"
    chip = ready_chip((uid, "M1"))
    irq, err, data = transceive(chip, b"\x26", 7)
    eq(data, b"\x44\x00", "ATQA double size")
    _, _, cl1 = transceive(chip, b"\x93\x20")
    eq(cl1, b"\x88\x04\x11\x22" + bytes((0x88 ^ 0x04 ^ 0x11 ^ 0x22,)), "CL1")
    _, _, sak = transceive(chip, with_crc(b"\x93\x70" + cl1))
    eq(sak, with_crc(b"\x04"), "SAK: cascade bit")
    _, _, cl2 = transceive(chip, b"\x95\x20")
    eq(cl2[:4], uid[3:], "CL2")
    _, _, sak = transceive(chip, with_crc(b"\x95\x70" + cl2))
    eq(sak, with_crc(b"\x08"), "final SAK")


def test_collision_reports_position_and_zeroes_later_bits():
    chip = ready_chip((UID_A, "M1"), (UID_B, "M1"))
    irq, err, data = anticollision_cl1(chip)
    true(irq & 0x22 == 0x22, "RxIRq + ErrIRq")
    eq(err, 0x08, "CollErr")
    eq(rreg(chip, COLL) & 0x3F, 31, "CollPos: bit 31 counted from 1")
    eq(data, b"\x01\x02\x03\x04\x00", "bits up to the collision kept, the rest 0")


def test_collision_position_counts_the_rx_align_offset():
    chip = ready_chip((UID_A, "M1"), (UID_B, "M1"))
    anticollision_cl1(chip)
    # Send the first 28 UID bits: the answer starts at bit 4 of the 4th byte.
    irq, err, data = transceive(chip, b"\x93\x54\x01\x02\x03\x04", 4, 4)
    eq(err, 0x08, "CollErr")
    eq(rreg(chip, COLL) & 0x3F, 7, "CollPos with RxAlign 4: stored bit 7")
    eq(data[0] & 0xF0, 0x00, "collided bit and later read 0")


def test_values_after_coll_keeps_the_superposed_bits():
    chip = ready_chip((UID_A, "M1"), (UID_B, "M1"))
    wreg(chip, COLL, 0x80)
    _, err, data = anticollision_cl1(chip)
    eq(data[3], 0x44, "OR of both cards' byte 3")


def test_halt_then_only_wupa_wakes():
    chip = ready_chip((UID_A, "M1"))
    anticollision_cl1(chip)
    transceive(chip, with_crc(b"\x93\x70" + UID_A + b"\x04"))
    irq, _, data = transceive(chip, with_crc(b"\x50\x00"))
    eq((irq & 0x21, data), (0x01, b""), "HLTA is not answered")
    eq(chip.cards[0].state, HALT, "state")
    eq(transceive(chip, b"\x26", 7)[2], b"", "REQA ignored when halted")
    eq(transceive(chip, b"\x52", 7)[2], b"\x04\x00", "WUPA answered")
    eq(chip.cards[0].state, READY, "state")
    transceive(chip, with_crc(b"\x50\x00"))  # HLTA in READY: back to HALT, not ACTIVE
    eq(chip.cards[0].state, HALT, "unexpected frame returns a woken card to HALT")


def test_field_off_brings_halted_cards_back_idle():
    chip = ready_chip((UID_A, "M1"))
    chip.cards[0].state = HALT
    wreg(chip, TX_CONTROL, 0x80)
    wreg(chip, TX_CONTROL, 0x83)
    eq(chip.cards[0].state, IDLE, "after a field reset")
    eq(transceive(chip, b"\x26", 7)[2], b"\x04\x00", "answers REQA again")


def test_rats_and_deselect_for_cpu_cards_only():
    for kind, want in (("M1", b""), ("CPU", with_crc(b"\x05\x78\x80\x70\x02"))):
        chip = ready_chip((UID_A, kind))
        anticollision_cl1(chip)
        transceive(chip, with_crc(b"\x93\x70" + UID_A + b"\x04"))
        eq(transceive(chip, with_crc(b"\xE0\x50"))[2], want, "ATS of %s" % kind)
    eq(chip.cards[0].state, PROTOCOL, "after RATS")
    eq(transceive(chip, with_crc(b"\x50\x00"))[2], b"", "HLTA ignored in protocol state")
    eq(transceive(chip, with_crc(b"\xC2"))[2], with_crc(b"\xC2"), "DESELECT answered")
    eq(chip.cards[0].state, HALT, "after DESELECT")


def test_rst_low_holds_the_chip_in_reset():
    chip = ready_chip()
    chip.rst.value(0)
    eq(rreg(chip, VERSION), chip.garbage, "no answer in reset")
    chip.rst.value(1)
    eq(rreg(chip, T_MODE), 0x00, "registers back to reset values")
    eq(rreg(chip, TX_CONTROL), 0x80, "antenna off")
    true(rreg(chip, COMMAND) & 0x10, "PowerDown while the oscillator starts")
    eq(rreg(chip, COMMAND) & 0x10, 0, "PowerDown cleared")


def test_soft_reset_restores_defaults():
    chip = ready_chip((UID_A, "M1"))
    wreg(chip, COMMAND, 0x0F)
    eq(rreg(chip, T_MODE), 0x00, "TModeReg")
    eq(chip.field_on, False, "field")
    eq(rreg(chip, VERSION), 0x92, "VersionReg")


def test_silent_chip_reads_garbage_and_drops_writes():
    chip = ready_chip()
    for garbage in (0x00, 0xFF):
        chip.silent = True
        chip.garbage = garbage
        eq(rreg(chip, VERSION), garbage, "VersionReg while silent")
        wreg(chip, T_MODE, 0x00)
        chip.silent = False
        eq(rreg(chip, T_MODE), 0x80, "write lost while silent")


def test_irq_delay_hides_irqs_for_some_reads():
    chip = ready_chip((UID_A, "M1"))
    chip.irq_delay = 3
    wreg(chip, COM_IRQ, 0x7F)
    wreg(chip, FIFO_DATA, 0x26)
    wreg(chip, COMMAND, 0x0C)
    wreg(chip, BIT_FRAMING, 0x87)
    eq([rreg(chip, COM_IRQ) & 0x20 for _ in range(4)], [0, 0, 0, 0x20], "RxIRq on the 4th read")


def test_unsupported_command_is_refused_through_the_error_flags():
    chip = Rc522Chip()
    wreg(chip, COM_IRQ, 0x7F)  # clear
    wreg(chip, COMMAND, 0x0E)  # MFAuthent: not emulated
    eq(rreg(chip, ERROR) & 0x01, 0x01, "ProtocolErr")
    eq(rreg(chip, COM_IRQ) & 0x02, 0x02, "ErrIRq")
    eq(rreg(chip, COMMAND) & 0x0F, 0x00, "back to Idle")
    eq(chip.refused_commands, 1)


def test_present_remove_and_expiry():
    chip = Rc522Chip()
    raises(ValueError, chip.present, b"\x01\x02\x03", "M1")
    raises(ValueError, chip.present, UID_A, "NFC")
    raises(ValueError, chip.present, b"\x88\x02\x03\x04", "M1")
    chip.present(UID_A, "M1", 1000, now_us=0)
    chip.present(UID_B, "CPU", 5000, now_us=0)
    chip.present(UID_A, "M1", 3000, now_us=500)  # same card: time extended to 3500
    eq(len(chip.cards), 2, "cards")
    chip.tick(3499)
    eq(len(chip.cards), 2, "before expiry")
    chip.tick(3500)
    eq([c.uid for c in chip.cards], [UID_B], "after expiry")
    eq(chip.remove(UID_B), 1, "removed")
    chip.present(UID_A, "M1")
    chip.tick(10**9)
    eq(len(chip.cards), 1, "no duration: stays")
    eq(chip.remove(), 1, "remove all")


def test_clock_expires_cards_at_frame_time():
    now = [0]
    chip = ready_chip()
    chip.clock_us = lambda: now[0]
    chip.present(UID_A, "M1", 100, now_us=0)
    now[0] = 99
    eq(transceive(chip, b"\x26", 7)[2], b"\x04\x00", "still there")
    now[0] = 100
    eq(transceive(chip, b"\x93\x20")[2], b"", "gone mid-select")
