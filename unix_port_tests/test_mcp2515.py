# lib/mcp2515.py against the register-level emulation of boards/unix_sim/sim_mcp2515.py:
# set-up and bit timing, mode changes with bounded polling, frames between two chips,
# both receive buffers, filters, error counters, bus-off and its recovery.
from check import eq, raises, true
from mcp2515 import BIT_TIMING, Mcp2515, Mcp2515Error, bit_rate, MODE_LOOPBACK
from sim_mcp2515 import SimCanWire, SimMcp2515


def _pair():
    wire = SimCanWire()
    a = SimMcp2515(wire)
    b = SimMcp2515(wire)
    da = Mcp2515(a.spi, a.cs)
    db = Mcp2515(b.spi, b.cs)
    da.init()
    db.init()
    return wire, a, b, da, db


def test_bit_timing_table_gives_the_rates():
    for mhz, rate, (c1, c2, c3) in BIT_TIMING:
        eq(bit_rate(mhz * 1000000, c1, c2, c3), rate, "%d MHz %d" % (mhz, rate))


def test_unknown_timing_refused():
    chip = SimMcp2515()
    raises(ValueError, Mcp2515, chip.spi, chip.cs, 12, 125000)
    raises(ValueError, Mcp2515, chip.spi, chip.cs, 8, 100000)
    for mhz, rate, cnf in BIT_TIMING:
        eq(Mcp2515(chip.spi, chip.cs, mhz, rate)._cnf, cnf, "%d MHz %d: its row" % (mhz, rate))


def test_init_writes_cnf_and_enters_normal_mode():
    chip = SimMcp2515(mode_lag=5)
    d = Mcp2515(chip.spi, chip.cs, xtal_mhz=16, bitrate=500000)
    d.init()
    eq(chip.opmode(), 0x00, "mode")
    eq(bytes(chip.regs[0x28:0x2B]), bytes((0x86, 0xF0, 0x00)), "CNF3 CNF2 CNF1")
    eq(chip.cs.level, 1, "CS released")
    eq(chip.cs_errors, 0, "bytes clocked without CS")


def test_mode_poll_is_bounded():
    chip = SimMcp2515()
    d = Mcp2515(chip.spi, chip.cs)
    d.init()
    chip.stuck_mode = True
    e = raises(Mcp2515Error, d.set_mode, 0x80)
    eq(e.errno, 110, "ETIMEDOUT")


def test_frames_between_two_chips_both_buffers():
    wire, a, b, da, db = _pair()
    da.send(0x123, b"\x01\x02\x03")
    da.send(0x7FF, b"")
    da.send(0x001, b"12345678")  # both buffers full: overflow flagged, frame lost
    eq(db.recv(), (0x123, b"\x01\x02\x03"), "RXB0")
    eq(db.recv(), (0x7FF, b""), "RXB1 (roll-over)")
    eq(db.recv(), None, "empty")
    true(db.errors()["rx_overflow"], "overflow flagged")
    da.send(0x456, b"abcdefgh")
    eq(db.recv(), (0x456, b"abcdefgh"), "after reading")
    eq(da.sent, 4, "sent count")
    eq(a.sent[0], (0x123, b"\x01\x02\x03"), "on the wire")


def test_send_checks_arguments():
    wire, a, b, da, db = _pair()
    raises(ValueError, da.send, 0x800, b"")
    raises(ValueError, da.send, 1, b"123456789")


def test_filters():
    wire, a, b, da, db = _pair()
    db.set_filters((0x7F0, 0x7FF), (0x610, 0x610, 0x601, 0x601, 0x601, 0x601))
    eq(b.opmode(), 0x00, "back in normal mode")
    da.send(0x615, b"x")  # matches mask 0 / filter 0
    da.send(0x200, b"y")  # no match
    da.send(0x601, b"z")  # exact match on RXB1
    eq(db.recv(), (0x615, b"x"), "filtered in")
    eq(db.recv(), (0x601, b"z"), "exact")
    eq(db.recv(), None, "0x200 filtered out")


def test_loopback():
    chip = SimMcp2515()
    d = Mcp2515(chip.spi, chip.cs)
    d.init(MODE_LOOPBACK)
    d.send(0x10, b"\xaa")
    eq(d.recv(), (0x10, b"\xaa"), "own frame back")


def test_alone_on_the_bus_goes_bus_off_and_recovers():
    wire = SimCanWire()
    a = SimMcp2515(wire)
    da = Mcp2515(a.spi, a.cs)
    da.init()
    raises(Mcp2515Error, da.send, 0x100, b"1")
    eq(da.tx_timeouts, 1, "timeout counted")
    err = da.errors()
    true(err["tec"] > 127, "TEC rose")
    true(err["bus_off"], "bus-off")
    true(err["tx_passive"], "error-passive")
    # A peer appears: the next send recovers from bus-off first and goes through.
    b = SimMcp2515(wire)
    db = Mcp2515(b.spi, b.cs)
    db.init()
    da.send(0x100, b"2")
    eq(da.recoveries, 1, "recovered")
    eq(da.tec(), 0, "TEC cleared")
    eq(db.recv(), (0x100, b"2"), "delivered")


def test_rec_and_error_passive():
    wire, a, b, da, db = _pair()
    b.add_rx_errors(130)
    eq(db.rec(), 130, "REC")
    true(db.errors()["rx_passive"], "RX error-passive")


def test_extended_frames_ignored():
    wire, a, b, da, db = _pair()
    b.receive(0x55, b"q")
    b.regs[0x62] |= 0x08  # EXIDE on the stored frame
    eq(db.recv(), None, "2.0B frame dropped")
    eq(db.recv(), None, "and consumed")
