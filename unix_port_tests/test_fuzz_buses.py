# Seeded fuzzing of what arrives from the buses: Modbus RTU replies (lib/modbus_rtu.py on
# a scripted UART and clock), CAN load-balancing frames (evse/balance/codec.py's decoder and
# live Balancer nodes), the MCP2515 driver's receive path (against the register-level
# emulation and against a chip answering garbage) and the simulated CAN bus datagrams
# (boards/unix_sim/sim_can.py). The oracle: only the documented errors, bounded time, no
# result that is not in the bytes received, the safety limits of load balancing kept
# (IEC 61851-1: nothing between 0 and 6 A, the pool limit never exceeded), valid
# samples round-trip. See fuzz.py for FUZZ_SEED / FUZZ_N.
import os
import socket
import struct

import fuzz
import log
from check import eq, true
from evse.balance import codec, node as bal, planner
from mcp2515 import Mcp2515, Mcp2515Error
from modbus_rtu import ModbusError, ModbusRtu, crc16
from sim_mcp2515 import SimCanWire, SimMcp2515

log.set_level(log.ERROR + 10)  # hostile frames log an error each: thousands of lines


# ---- Modbus RTU replies ----------------------------------------------------------------------
class _Clock:
    def __init__(self):
        self.ms = 1000

    def __call__(self):
        return self.ms


class _Uart:
    """Answers each request with the next scripted reply, visible `delay` ms later."""

    def __init__(self, clock):
        self.clock = clock
        self.baudrate = 9600
        self.reply = b""
        self.delay = 0
        self.rx = []  # (due_ms, byte)

    def write(self, buf):
        due = self.clock() + self.delay
        for b in self.reply:
            self.rx.append((due, b))
        return len(buf)

    def _n(self):
        now = self.clock()
        n = 0
        for due, _ in self.rx:
            if due > now:
                break
            n += 1
        return n

    def any(self):
        return self._n()

    def readinto(self, buf):
        n = min(self._n(), len(buf))
        for i in range(n):
            buf[i] = self.rx[i][1]
        del self.rx[:n]
        return n


def _crc_frame(body):
    c = crc16(body)
    return bytes(body) + bytes((c & 0xFF, c >> 8))


def _request(r):
    slave = r.pick((1, 1, 2, 247))
    fc = r.pick((3, 4, 4, 6, 16))
    addr = r.pick((0, 0x0C, 0x156, 0xFFFF))
    qty = r.pick((1, 2, 10, 60, 125)) if fc in (3, 4) else (r.below(0x10000) if fc == 6 else 1 + r.below(4))
    return slave, fc, addr, qty


def _good_reply(r, slave, fc, addr, qty):
    if fc in (3, 4):
        return _crc_frame(bytes((slave, fc, 2 * qty)) + r.bytes(2 * qty))
    val = qty if fc == 6 else qty
    return _crc_frame(bytes((slave, fc)) + struct.pack(">HH", addr, val))


def _exchange(m, clock, uart, req, r):
    """Runs one exchange with random poll spacing; (result or error, elapsed ms)."""
    slave, fc, addr, qty = req
    values = [r.below(0x10000) for _ in range(qty)] if fc == 16 else None
    m.start(slave, fc, addr, qty, values)
    t0 = clock.ms
    while True:
        try:
            res = m.poll()
        except ModbusError as e:
            return e, clock.ms - t0
        if res is not None:
            return res, clock.ms - t0
        true(clock.ms - t0 < 5000, "exchange bounded in time")
        clock.ms += r.pick((0, 1, 1, 2, 5, 30))


def test_fuzz_modbus_replies():
    """Modbus over serial line §2.5.1: any reply is a result or a ModbusError, in bounded
    time; a result is what the slave sent; the master is ready for the next exchange."""
    clock = _Clock()
    uart = _Uart(clock)
    m = ModbusRtu(uart, None, timeout_ms=100, ticks_ms=clock)

    def case(r, i):
        req = _request(r)
        good = _good_reply(r, *req)
        if i < 20:
            reply = good
        elif r.chance(1, 8):
            reply = r.bytes(r.below(300))
        else:
            noise = r.bytes(r.below(4)) if r.chance(1, 4) else b""
            exc = _crc_frame(bytes((req[0], req[1] | 0x80, r.pick((1, 2, 4, 11, 0, 255)))))
            reply = noise + fuzz.mutate(r, good, [exc, good + good], [b"\x00", b"\xff"])
        return req, good, reply, r.pick((0, 0, 3, 90, 400)), r.u32()

    def check(c):
        req, good, reply, delay, sub = c
        uart.reply = reply
        uart.delay = delay
        res, took = _exchange(m, clock, uart, req, fuzz.Rng(sub))
        kind = res.kind if isinstance(res, ModbusError) else type(res).__name__
        seen[kind] = seen.get(kind, 0) + 1
        true(took < 1200, "done within the reply timeout, took %d ms" % took)
        if not isinstance(res, ModbusError):
            if req[1] in (3, 4):
                data = bytes(res)
                eq(len(data), 2 * req[3], "register bytes")
                true(data in reply, "result is in what the slave sent")
            else:
                eq(res, True, "write acknowledged")
        if reply == good and delay < 100:
            true(not isinstance(res, ModbusError), "a valid reply is taken: %r" % res)
            if req[1] in (3, 4):
                eq(bytes(res), good[3:-2], "registers round-trip")
        uart.rx = []
        clock.ms += 10
        # The next exchange on a clean line works.
        uart.reply = _good_reply(fuzz.Rng(sub), *req)
        uart.delay = 0
        res2, _t = _exchange(m, clock, uart, req, fuzz.Rng(sub))
        true(not isinstance(res2, ModbusError), "next exchange after a bad one: %r" % res2)
        clock.ms += 10

    seen = {}
    fuzz.run("modbus_rtu", 4000, case, check)
    print("  outcomes:", seen)
    true(len(seen) >= 5, "results and every kind of ModbusError reached")


# ---- CAN load-balancing frames -----------------------------------------------------------------
def _frame_case(r, i):
    if i < 2:  # valid samples: a status and an allocation
        buf = bytearray(8)
        if i == 0:
            codec.encode_status(buf, 1, 5, 3, codec.ST_WANT, 7, False, 6.0, 32.0, 15.5, 16.0)
            return codec.ID_STATUS + 2, bytes(buf)
        codec.encode_alloc(buf, 1, 9, 3, 1, 10.0, True, 2, 40.0)
        return codec.ID_ALLOC + 2, bytes(buf)
    can_id = r.pick((codec.ID_STATUS, codec.ID_ALLOC)) + r.below(codec.MAX_NODES + 2)
    if r.chance(1, 8):
        can_id = r.pick((0, 0x7FF, 0x800, -1, 1 << 32, codec.ID_STATUS + 1))
    data = bytes(bytearray(r.u32() & 0xFF for _ in range(8)))
    if r.chance(1, 2):
        b = bytearray(data)
        b[0] = (codec.VERSION << 4) | (b[0] & 0x0F)
        b[1] = 1
        data = bytes(b)
    if r.chance(1, 6):
        data = fuzz.mutate(r, data)
    return can_id, data


def test_fuzz_balance_decode():
    """Manual §8 load balancing: a frame decodes to None or a well-formed frame that never
    offers between 0 and 6 A (IEC 61851-1 §A.2.2) and never a node outside the pool."""
    def check(c):
        can_id, data = c
        f = codec.decode(can_id, data, 1)
        if f is None:
            return
        if isinstance(f, codec.Status):
            true(1 <= f.addr <= codec.MAX_NODES, "sender address")
            true(f.min_a >= planner.MIN_A and f.max_a >= f.min_a, "min/max current")
            true(f.mask in range(1, 8), "phase mask")
        else:
            true(isinstance(f, codec.Alloc), "kind")
            true(1 <= f.dest <= codec.MAX_NODES and 1 <= f.master <= codec.MAX_NODES,
                 "addresses")
            true(f.amps == 0 or f.amps >= planner.MIN_A, "allocation %r" % f.amps)
        eq(len(data), 8, "only 8-byte frames decode")

    fuzz.run("balance.decode", 10000, _frame_case, check)
    # Round trip of valid values (half-amp steps).
    r = fuzz.rng_for("balance.codec")
    buf = bytearray(8)
    for _ in range(500):
        lo = 6 + r.below(27) / 2
        hi = lo + r.below(40) / 2
        draw = r.below(100) / 2
        codec.encode_status(buf, 7, r.below(256), r.below(16), r.below(4), 1 + r.below(7),
                            r.chance(1, 2), lo, hi, draw, hi)
        f = codec.decode(codec.ID_STATUS + 3, bytes(buf), 7)
        eq((f.min_a, f.max_a, f.draw_a, f.offered_a), (lo, hi, draw, hi), "status round trip")


class _Port:
    def __init__(self, bus):
        self.bus = bus
        self.q = []

    def send(self, can_id, data):
        for p in self.bus:
            if p is not self:
                p.q.append((can_id, bytes(data)))

    def recv(self):
        return self.q.pop(0) if self.q else None


class _Charger:
    def __init__(self):
        self.external = {}
        self.active = 0
        self.session = object()
        self.connected = True
        self.cable_a = None
        self.thermal_a = None
        self.offered_a = 0.0

    def set_external_limit(self, name, amps):
        if amps is None:
            self.external.pop(name, None)
        else:
            self.external[name] = amps

    def trip(self, bit):
        self.active |= bit

    def pause(self, bit):  # a mild condition (the CAN clash): here as a trip
        self.active |= bit


class _Prot:
    can_clash = False


def test_fuzz_balancer_under_hostile_frames():
    """Two real nodes share 40 A while a third party floods the bus with seeded, mostly
    well-formed frames (forged allocations, spoofed statuses, stale sequences): nothing
    raises, no offer is between 0 and 6 A, the pool limit holds (manual §8)."""
    bus = []
    nodes = []
    for i, addr in enumerate((1, 2)):
        s = {"lb_enabled": True, "can_addr": addr, "max_house_current_a": 40,
             "phase_set": "L123", "meter_model": "none", "max_current_a": 32}
        p = _Port(bus)
        bus.append(p)
        nodes.append(bal.Balancer(_Charger(), s, _Prot(), p, clock=lambda: t[0], epoch=i))
    t = [0]
    r = fuzz.rng_for("balance.pool")
    n = fuzz.count(5000)
    print("fuzz balance.pool: %d ticks, FUZZ_SEED=0x%08x" % (n, fuzz.seed()))
    worst = 0.0
    for i in range(n):
        for _ in range(r.below(4)):
            can_id, data = _frame_case(r, 2 + i)
            for p in bus:
                p.q.append((can_id, data))
        try:
            for b in nodes:
                b.tick(t[0])
                lim = b.ch.external.get("balance", 32.0)
                b.ch.offered_a = lim if lim >= 6 else 0.0
                true(lim == 0 or lim >= planner.MIN_A, "limit %r" % lim)
        except Exception as e:
            raise AssertionError("fuzz balance.pool tick %d: %r (replay: FUZZ_SEED=0x%08x FUZZ_N=%d)"
                                 % (i, e, fuzz.seed(), i + 1))
        total = sum(b.ch.offered_a for b in nodes)
        worst = max(worst, total)
        true(total <= 40, "fuzz balance.pool tick %d: offers %r sum above the 40 A pool "
             "(replay: FUZZ_SEED=0x%08x FUZZ_N=%d)"
             % (i, [b.ch.offered_a for b in nodes], fuzz.seed(), i + 1))
        t[0] += 100
    print("  largest sum of offers: %.1f A" % worst)
    # Spoofed statuses add members (a phantom meter master or too many silent members can
    # leave the pool paused: safe), and both tables stay bounded.
    true(all(len(b.nodes) < codec.MAX_NODES for b in nodes), "node table bounded")
    true(all(len(b.members) <= codec.MAX_NODES for b in nodes), "members bounded")


# ---- MCP2515 ------------------------------------------------------------------------------------
def test_fuzz_mcp2515_frames_round_trip():
    """CAN 2.0A (ISO 11898-1) through two emulated chips: every 11-bit id and 0-8 bytes
    arrive as sent; out-of-range arguments are a ValueError and send nothing."""
    wire = SimCanWire()
    a = SimMcp2515(wire)
    b = SimMcp2515(wire)
    da = Mcp2515(a.spi, a.cs)
    db = Mcp2515(b.spi, b.cs)
    da.init()
    db.init()

    def case(r, i):
        return r.pick((r.below(0x800), 0, 0x7FF, 0x800, -1, r.int_edge())), r.bytes(r.pick((0, 1, 8, 8, 9, 64)))

    def check(c):
        can_id, data = c
        a.sent.clear()  # the emulation keeps every frame sent: bound it
        sent = 0
        if not 0 <= can_id <= 0x7FF or len(data) > 8:
            try:
                da.send(can_id, data)
            except ValueError:
                eq(len(a.sent), sent, "nothing sent")
                return
            raise AssertionError("accepted a bad frame")
        da.send(can_id, data)
        eq(db.recv(), (can_id, data), "round trip")
        eq(db.recv(), None, "one frame")

    fuzz.run("mcp2515.emulated", 3000, case, check)


class _GarbageSpi:
    """An MCP2515 answering random bytes: a broken chip or a noisy SPI line."""

    def __init__(self, r):
        self.r = r

    def write(self, buf):
        pass

    def readinto(self, buf, write=0):
        for i in range(len(buf)):
            buf[i] = self.r.u32() & 0xFF


class _Pin:
    def value(self, v=None):
        return 1


def test_fuzz_mcp2515_garbage_chip():
    """A chip answering garbage: recv() gives None or a valid 2.0A frame (id <= 0x7FF,
    at most 8 bytes, DLC 9-15 read as 8); everything else is a Mcp2515Error (OSError)."""
    r = fuzz.rng_for("mcp2515.garbage")
    d = Mcp2515(_GarbageSpi(r), _Pin())

    def check(k):
        try:
            if k == 0:
                f = d.recv()
                if f is not None:
                    true(0 <= f[0] <= 0x7FF and len(f[1]) <= 8, "frame %r" % (f,))
            elif k == 1:
                d.send(0x610, b"\x10\x01")
            elif k == 2:
                true(isinstance(d.errors(), dict), "errors")
            else:
                d.init()
        except Mcp2515Error:
            pass

    fuzz.run("mcp2515.garbage", 5000, lambda r, i: r.pick((0, 0, 0, 0, 1, 2, 3)), check)


# ---- the simulated CAN bus -----------------------------------------------------------------------
def test_fuzz_sim_can_datagrams():
    """docs/simulator.md CAN datagrams: anything that is not a 16-byte frame with an 11-bit
    id and DLC <= 8 is dropped and counted; good frames arrive exactly."""
    from sim_can import SimCan

    can = None
    for k in range(20):
        # Below the ephemeral range the harness takes its buses from, and not 29536 (make run).
        port = 21000 + (os.urandom(2)[0] * 37 + k * 101) % 8000
        try:
            can = SimCan(port)
            break
        except OSError:
            continue
    true(can is not None, "a free UDP port")
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dest = socket.getaddrinfo("127.0.0.1", can.port)[0][-1]
    try:
        def case(r, i):
            good = struct.pack("<IB3x", r.below(0x800), r.below(9)) + r.bytes(8)
            if i < 5:
                return good
            return fuzz.mutate(r, good, None, [struct.pack("<I", 0x800), b"\x09", b"\x00" * 8])

        def check(d):
            before = (can.received, can.dropped)
            tx.sendto(d, dest)
            got = None
            for _ in range(200):
                got = can.recv()
                if got is not None or (can.received, can.dropped) != before:
                    break
            can_id, dlc = struct.unpack_from("<IB", d, 0) if len(d) >= 5 else (None, None)
            if len(d) == 16 and can_id <= 0x7FF and dlc <= 8:
                eq(got, (can_id, d[8 : 8 + dlc]), "frame")
            else:
                eq(got, None, "dropped")
                eq(can.dropped, before[1] + 1, "drop counted")

        fuzz.run("sim_can", 3000, case, check)
    finally:
        tx.close()
        can.close()


# ---- RC522 --------------------------------------------------------------------------------------
class _NoisySpi:
    """The emulated RC522 behind an SPI line that flips bits of what the chip answers."""

    def __init__(self, spi, r):
        self.spi = spi
        self.r = r
        self.rate = 0  # in 1/1000 of the bytes read

    def _spoil(self, buf):
        for i in range(len(buf)):
            if self.r.below(1000) < self.rate:
                buf[i] ^= 1 << self.r.below(8)

    def write(self, buf):
        self.spi.write(buf)

    def readinto(self, buf, write=0):
        self.spi.readinto(buf, write)
        self._spoil(buf)

    def write_readinto(self, out, buf):
        self.spi.write_readinto(out, buf)
        self._spoil(buf)


class _Ticks:
    def __init__(self):
        self.now = 0

    def __call__(self):
        self.now += 1  # each read of the clock is a millisecond: deadlines come quickly
        return self.now


def test_fuzz_rc522_noisy_chip():
    """ISO 14443-3 select through an RC522 whose answers have flipped bits: poll() gives
    None, a Card with a 4/7/10-byte UID, or a ReaderError (OSError); never another
    exception. With a clean line the card is read exactly."""
    from mfrc522 import Mfrc522, ReaderError
    from sim_rc522 import Rc522Chip

    r = fuzz.rng_for("rc522.noise")
    chip = Rc522Chip()
    spi = _NoisySpi(chip.spi, r)
    reader = Mfrc522(spi, chip.cs, chip.rst, ticks_ms=_Ticks())
    uids = (b"\x01\x02\x03\x04", b"\x04\x11\x22\x33\x44\x55\x66", b"\x04\x11\x22\x33\x44\x55\x66\x77\x88\x99")
    seen = {}

    def case(r, i):
        return r.pick(uids), r.pick(("M1", "CPU")), 0 if i < 10 else r.pick((1, 5, 20, 100))

    def check(c):
        uid, kind, rate = c
        chip.remove()
        chip.present(uid, kind)
        spi.rate = rate
        try:
            card = reader.poll(wake=True)
        except ReaderError as e:
            seen[e.kind] = seen.get(e.kind, 0) + 1
            return
        if card is None:
            seen["none"] = seen.get("none", 0) + 1
            return
        true(len(card.uid) in (4, 7, 10) and card.kind in ("M1", "CPU"), "card %r" % card)
        if rate == 0:
            eq((bytes(card.uid), card.kind), (uid, kind), "clean read")
        key = "read" if bytes(card.uid) == uid else "other uid"
        seen[key] = seen.get(key, 0) + 1

    fuzz.run("rc522.noise", 1500, case, check)
    print("  outcomes:", seen)
    true(seen.get("read") and len(seen) >= 3, "reads and errors both reached")
