# lib/mfrc522.py against the register-level emulation in boards/unix_sim/sim_rc522.py.
import errno
import time
from check import eq, true, raises, assert_no_alloc
from mfrc522 import Mfrc522, ReaderError, uid_hex
from sim_rc522 import Rc522Chip, HALT

UID4 = b"\x01\x02\x03\x04"
UID7 = b"\x04\x11\x22\x33\x44\x55\x66"
UID10 = b"\x04\x11\x22\x33\x44\x55\x66\x77\x88\x99"


class FakeTicks:
    """ticks_ms that moves 1 ms per call: deadlines expire after a known number of reads."""

    def __init__(self):
        self.now = 0
        self.calls = 0

    def __call__(self):
        self.calls += 1
        self.now += 1
        return self.now


def make(*cards, version=0x92, ticks_ms=time.ticks_ms):
    chip = Rc522Chip(version=version)
    for uid, kind in cards:
        chip.present(uid, kind)
    return chip, Mfrc522(chip.spi, chip.cs, chip.rst, ticks_ms=ticks_ms)


def sw_crc_a(data):
    """CRC_A the byte-wise way of ISO 14443-3 Annex B, independent of the emulator's."""
    crc = 0x6363
    for b in data:
        b ^= crc & 0xFF
        b = (b ^ (b << 4)) & 0xFF
        crc = (crc >> 8) ^ (b << 8) ^ (b << 3) ^ (b >> 4)
    return bytes((crc & 0xFF, crc >> 8))


def frames(chip):
    return [f for f, _ in chip.log]


def test_init_configures_the_chip():
    chip, r = make()
    r.init()
    eq((r.chip_version, r.genuine), (0x92, True), "version")
    eq(r.version(), 0x92, "version()")
    regs = chip.regs
    eq((regs[0x2A], regs[0x2B], regs[0x2C], regs[0x2D]), (0x80, 0xA9, 0x01, 0x90), "timer")
    eq((regs[0x15], regs[0x11], regs[0x0E] & 0x80), (0x40, 0x3D, 0), "ASK, CRC preset, coll")
    true(chip.field_on, "antenna on")


def test_clone_versions_work_but_are_flagged():
    chip, r = make((UID4, "M1"), version=0x88)
    eq(r.poll().uid, UID4, "uid")
    eq((r.chip_version, r.genuine), (0x88, False), "flag")


def test_every_uid_length_for_both_kinds():
    for uid in (UID4, UID7, UID10):
        for kind, sak in (("M1", 0x08), ("CPU", 0x20)):
            chip, r = make((uid, kind))
            card = r.poll()
            eq((card.uid, card.kind, card.sak), (uid, kind, sak), "%s %d bytes" % (kind, len(uid)))
            eq(card.atqa & 0xC0, {4: 0x00, 7: 0x40, 10: 0x80}[len(uid)], "ATQA size bits")
            eq(card.ats, b"\x05\x78\x80\x70\x02" if kind == "CPU" else None, "ATS")


def test_uid_hex_is_upper_case_byte_0_first():
    eq(uid_hex(UID7), "04112233445566", "7 bytes")
    chip, r = make((b"\xDE\xAD\xBE\xEF", "M1"))
    eq(r.poll().uid_hex(), "DEADBEEF", "Card.uid_hex")


def test_empty_field_returns_none():
    chip, r = make()
    eq(r.poll(), None, "no card")
    eq(r.poll(wake=True), None, "no card, WUPA")


def test_frames_on_air_for_a_cpu_card():
    chip, r = make((UID4, "CPU"))
    r.init()
    chip.log = []
    r.poll()
    r.halt()
    want = [
        b"\x26",
        b"\x93\x20",
        b"\x93\x70" + UID4 + b"\x04" + sw_crc_a(b"\x93\x70" + UID4 + b"\x04"),
        b"\xE0\x50\xBC\xA5",  # RATS: FSD 64, CID 0
        b"\xC2\xE0\xB4",  # S(DESELECT)
    ]
    eq(frames(chip), want, "frames")
    eq(chip.log[0][1], 7, "REQA is a 7-bit short frame")


def test_two_cards_one_is_selected_deterministically():
    a = b"\x11\x22\x33\x40"
    b = b"\x11\x22\x33\x41"  # a 1 at bit 24, where they first differ: picked first
    for order in ((a, b), (b, a)):
        chip, r = make((order[0], "M1"), (order[1], "M1"))
        eq(r.poll().uid, b, "first pick")
        true(r.halt(), "HLTA")
        eq(r.poll().uid, a, "the other, once the first is halted")
        r.halt()
        eq(r.poll(), None, "both halted")


def test_collision_in_the_second_cascade_level():
    a = UID7
    b = UID7[:6] + b"\x67"
    chip, r = make((a, "M1"), (b, "CPU"))
    chip.log = []
    card = r.poll()
    eq((card.uid, card.kind), (b, "CPU"), "bit 0 of byte 6 set in b")
    true(any(f[:2] == b"\x95\x20" for f in frames(chip)), "CL2 anticollision ran")
    r.halt()
    eq(r.poll().uid, a, "then a")


def test_mixed_uid_sizes_collide_in_cascade_level_1():
    chip, r = make((UID4, "M1"), (UID10, "M1"), (UID7, "CPU"))
    seen = []
    for _ in range(3):
        card = r.poll()
        seen.append(card.uid)
        r.halt()
    eq(r.poll(), None, "all halted")
    eq(sorted(seen), sorted([UID4, UID7, UID10]), "each card once")
    chip, r = make((UID4, "M1"), (UID10, "M1"), (UID7, "CPU"))
    eq(r.poll().uid, seen[0], "same field, same first pick")


def test_same_uid_with_different_sak_is_unresolvable():
    chip, r = make((UID4, "M1"), (UID4, "CPU"))
    e = raises(ReaderError, r.poll)
    eq((e.kind, e.errno, e.args[1]), ("collision", errno.EIO, "SAK"), "a collision at SAK")
    chip.remove()
    chip.present(UID7, "M1")
    eq(r.poll().uid, UID7, "next poll works")


def test_card_removed_mid_select():
    now = [0]

    def clock_us():  # every frame on air takes 1 ms
        now[0] += 1000
        return now[0]

    for uid, kind, frames_seen in ((UID4, "M1", 2), (UID7, "M1", 4), (UID4, "CPU", 3)):
        chip, r = make()
        r.init()
        chip.clock_us = clock_us
        chip.log = []
        chip.present(uid, kind, frames_seen * 1000 + 500, now_us=now[0])
        eq(r.poll(), None, "card left during its select (%d-byte %s)" % (len(uid), kind))
        eq(len(chip.log), frames_seen + 1, "the frame after the last answered one timed out")
        chip.present(UID10, "M1", 10**9, now_us=now[0])
        eq(r.poll().uid, UID10, "next poll works")


def test_silent_chip_raises_within_bound_then_recovers():
    for garbage in (0x00, 0xFF):
        ticks = FakeTicks()
        chip, r = make((UID4, "M1"), ticks_ms=ticks)
        eq(r.poll().uid, UID4, "before")
        r.halt()
        chip.silent = True
        chip.garbage = garbage
        chip.transfers = 0
        ticks.calls = 0
        e = raises(ReaderError, r.poll)
        eq((e.kind, e.errno), ("timeout", errno.ETIMEDOUT), "timeout")
        true(ticks.calls <= 110, "bounded by the 100 ms boot deadline: %d ms" % ticks.calls)
        true(chip.transfers <= 500, "bounded SPI traffic: %d bytes" % chip.transfers)
        e = raises(ReaderError, r.poll)  # still silent: still a named error
        true(isinstance(e, OSError), "ReaderError is an OSError")
        chip.silent = False
        resets = r.resets
        eq(r.poll().uid, UID4, "read again after recovery (0x%02X)" % garbage)
        eq(r.resets, resets + 1, "recovered through a reset")
        true(chip.field_on, "antenna back on")


def test_hung_command_hits_the_software_deadline():
    ticks = FakeTicks()
    chip, r = make((UID4, "M1"), ticks_ms=ticks)
    r.init()
    chip.irq_delay = 10**9  # ComIrqReg never shows an IRQ
    ticks.calls = 0
    eq(raises(ReaderError, r.poll).kind, "timeout", "timeout")
    true(ticks.calls <= 40, "Transceive deadline 30 ms: %d" % ticks.calls)
    chip.irq_delay = 0
    eq(r.poll().uid, UID4, "after recovery")


def test_slow_irqs_are_waited_for():
    chip, r = make((UID7, "CPU"))
    r.init()
    chip.irq_delay = 5
    eq(r.poll().uid, UID7, "uid with IRQs late by 5 reads")


def test_chip_reset_behind_the_drivers_back_is_reconfigured():
    chip, r = make((UID4, "M1"))
    r.init()
    chip.cs.value(0)
    chip.spi.write(b"\x02\x0F")  # SoftReset, as a brown-out would: timer and antenna gone
    chip.cs.value(1)
    resets = r.resets
    eq(r.poll().uid, UID4, "read")
    eq(r.resets, resets + 1, "reset once")


def test_halt_then_reqa_skips_and_wupa_wakes():
    for kind in ("M1", "CPU"):
        chip, r = make((UID7, kind))
        eq(r.poll().uid, UID7, kind)
        true(r.halt(), "acknowledged")
        eq(chip.cards[0].state, HALT, "halted")
        eq(r.poll(), None, "REQA does not wake a halted %s card" % kind)
        eq(r.poll(wake=True).uid, UID7, "WUPA does")


def test_halted_card_leaving_and_returning_is_read_again():
    chip, r = make((UID4, "M1"))
    r.poll()
    r.halt()
    eq(r.poll(), None, "halted")
    chip.remove()
    chip.present(UID4, "M1")
    eq(r.poll().uid, UID4, "back in the field: IDLE again")


def test_card_left_selected_skips_one_poll():
    # Without halt() the selected card drops to IDLE on the next REQA without answering.
    chip, r = make((UID4, "M1"))
    eq([bool(r.poll()) for _ in range(4)], [True, False, True, False], "polls")


def test_antenna_off_no_card():
    chip, r = make((UID4, "M1"))
    r.init()
    r.antenna(False)
    eq(r.poll(), None, "field off")
    r.antenna(True)
    eq(r.poll().uid, UID4, "field on")


def test_without_rst_pin():
    chip = Rc522Chip()
    chip.present(UID4, "M1")
    r = Mfrc522(chip.spi, chip.cs, None)
    eq(r.poll().uid, UID4, "soft reset only")


def test_crc_coprocessor_matches_software_crc_a():
    chip, r = make()
    r.init()
    eq(r.crc_a(b"\x00\x00"), b"\xA0\x1E", "ISO 14443-3 Annex B example 1")
    eq(r.crc_a(b"\x12\x34"), b"\x26\xCF", "ISO 14443-3 Annex B example 2")
    for data in (b"\x50\x00", b"\xE0\x50", b"\x93\x70" + UID4 + b"\x04", bytes(range(60))):
        eq(r.crc_a(data), sw_crc_a(data), "CRC_A of %r" % data)


def test_empty_field_poll_allocates_nothing():
    chip, r = make()
    r.poll()  # first poll initialises the chip
    poll = r.poll
    assert_no_alloc(poll)
    chip.present(UID4, "M1")
    r.poll()
    r.halt()  # a halted card left on the reader: also silence
    assert_no_alloc(poll)


def test_empty_field_poll_is_bounded():
    ticks = FakeTicks()
    chip, r = make(ticks_ms=ticks)
    r.poll()
    chip.transfers = 0
    ticks.calls = 0
    eq(r.poll(), None, "no card")
    true(chip.transfers <= 40, "SPI bytes per empty poll: %d" % chip.transfers)
    true(ticks.calls <= 3, "clock reads per empty poll: %d" % ticks.calls)
