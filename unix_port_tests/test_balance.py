# Load balancing (evse/balance.py) without processes: the allocation function on random
# pools (never above the limit per phase, >= 6 A or waiting, max-min fair), the codec
# against hostile frames, the master's planner (rotation, unused current, staged
# raises), and several Balancer nodes on an in-memory bus with a fake clock (election,
# allocation, master loss, address clash, a node leaving).
import os

from check import eq, true
from evse import balance as lb
from evse import faults


def _rand(n):
    return int.from_bytes(os.urandom(2), "little") % n


# ---- allocate() ------------------------------------------------------------------------------
def _check_alloc(limit, nodes, out):
    for p in range(3):
        tot = sum(out[i] for i in range(len(nodes)) if nodes[i][0] & (1 << p))
        true(tot <= limit[p] + 1e-9, "phase %d: %r > %r (%r %r)" % (p, tot, limit[p], nodes, out))
    for i in range(len(nodes)):
        mask, lo, cap = nodes[i]
        true(out[i] == 0 or lo <= out[i] <= cap, "node %d: %r" % (i, out[i]))
        eq(out[i] * 2, int(out[i] * 2), "half-amp steps")


def test_allocate_random_pools_never_exceed_and_min_or_wait():
    for _ in range(400):
        n = 1 + _rand(8)
        limit = [float(_rand(80)), float(_rand(80)), float(_rand(80))]
        if _rand(2):
            limit = [limit[0]] * 3
        nodes = []
        for _ in range(n):
            mask = (1, 2, 4, 7, 7, 7)[_rand(6)]
            nodes.append((mask, 6.0, 6.0 + _rand(27)))
        out = lb.allocate(limit, nodes)
        _check_alloc(limit, nodes, out)
        # Waiting only when the node's minimum no longer fits on one of its phases.
        for i in range(n):
            if out[i] == 0:
                for p in range(3):
                    if nodes[i][0] & (1 << p):
                        used = sum(out[j] for j in range(i) if nodes[j][0] & (1 << p))
                        # the admission test counts the admitted minimums before i
                        mins = sum(6.0 for j in range(i) if out[j] > 0 and nodes[j][0] & (1 << p))
                        if mins + 6.0 > limit[p]:
                            break
                else:
                    raise AssertionError("node %d waits with room: %r %r %r" % (i, limit, nodes, out))


def test_allocate_fair_and_caps():
    eq(lb.allocate([40.0] * 3, [(7, 6.0, 32.0)] * 3), [13.0, 13.0, 13.0], "equal share")
    eq(lb.allocate([40.0] * 3, [(7, 6.0, 7.0), (7, 6.0, 32.0), (7, 6.0, 32.0)]),
       [7.0, 16.5, 16.5], "the capped node's rest goes to the others")
    eq(lb.allocate([20.0] * 3, [(7, 6.0, 32.0)] * 4), [6.5, 6.5, 6.5, 0.0], "last one waits")
    eq(lb.allocate([16.0, 40.0, 40.0], [(1, 6.0, 32.0), (2, 6.0, 32.0), (7, 6.0, 32.0)]),
       [8.0, 32.0, 8.0], "per phase")
    eq(lb.allocate([5.0] * 3, [(7, 6.0, 32.0)]), [0.0], "below 6 A: pause")


# ---- codec -------------------------------------------------------------------------------------
def test_codec_round_trip():
    b = bytearray(8)
    lb.encode_status(b, 1, 200, 5, lb.ST_WANT, 7, True, 6.0, 32.0, 15.3, 16.0)
    f = lb.decode(0x613, b, 1)
    eq(f, ("S", 3, 5, 200, lb.ST_WANT, 7, True, 6.0, 32.0, 15.5, 16.0), "status")
    lb.encode_alloc(b, 1, 7, 2, 1, 13.37, False, 3, 40.0)
    eq(lb.decode(0x602, b, 1), ("A", 2, 2, 7, 1, 13.0, False, 3, 40.0), "alloc rounds down")


def test_codec_hostile_frames_ignored():
    b = bytearray(8)
    lb.encode_status(b, 1, 1, 0, lb.ST_WANT, 7, False, 6.0, 32.0, 0.0, 0.0)
    good = bytes(b)
    eq(lb.decode(0x612, good, 2), None, "foreign pool")
    eq(lb.decode(0x612, good[:7], 1), None, "short")
    eq(lb.decode(0x612, good + b"\0", 1), None, "long")
    eq(lb.decode(0x610, good, 1), None, "address 0")
    eq(lb.decode(0x619, good, 1), None, "address 9")
    eq(lb.decode(0x123, good, 1), None, "other id")
    eq(lb.decode(0x612, b"\x21" + good[1:], 1), None, "version 2")
    eq(lb.decode(0x612, good[:3] + b"\xc8" + good[4:], 1), None, "reserved bits")
    eq(lb.decode(0x612, good[:3] + b"\x02" + good[4:], 1), None, "no phase")
    eq(lb.decode(0x612, good[:4] + b"\x02" + good[5:], 1), None, "min below 6 A")
    eq(lb.decode(0x612, good[:5] + b"\x0b" + good[6:], 1), None, "max below min")
    lb.encode_alloc(b, 1, 1, 0, 1, 10.0, False, 3, 40.0)
    a = bytes(b)
    eq(lb.decode(0x602, a[:4] + b"\x05" + a[5:], 1), None, "2.5 A allocation")
    eq(lb.decode(0x602, a[:3] + b"\x09" + a[4:], 1), None, "master 9")
    eq(lb.decode(0x602, a[:6] + b"\x00" + a[7:], 1), None, "0 nodes")
    eq(lb.decode(0x602, a[:5] + b"\x07" + a[6:], 1), None, "bad flags")
    for _ in range(2000):  # noise: never an exception, rarely accepted
        data = os.urandom(_rand(10))
        lb.decode(0x600 + _rand(0x20), data, 1)


def test_sequence_freshness():
    true(lb.fresh(None, 1, 5), "first")
    true(lb.fresh((1, 5), 1, 6), "next")
    true(lb.fresh((1, 255), 1, 0), "wrap")
    true(not lb.fresh((1, 5), 1, 5), "repeat")
    true(not lb.fresh((1, 5), 1, 4), "older")
    true(lb.fresh((1, 5), 2, 0), "restarted sender (new epoch)")


# ---- planner -------------------------------------------------------------------------------------
def _node(addr, state=lb.ST_WANT, max_a=32.0, draw=None, offered=0.0, mask=7):
    n = lb.Node(addr)
    n.state = state
    n.max_a = max_a
    n.offered_a = offered
    n.draw_a = offered if draw is None else draw
    n.mask = mask
    return n


def _follow(nodes, sent):
    """The nodes apply what they were sent (and draw all of it, unless capped)."""
    for n in nodes:
        n.offered_a = sent[n.addr]


def test_planner_staged_raise_never_exceeds():
    p = lb.Planner()
    lim = [40.0] * 3
    a, b = _node(1, offered=0.0), _node(2, offered=0.0)
    sent = p.plan(0, lim, [a, b])
    eq(sent, {1: 20.0, 2: 20.0}, "two share")
    _follow([a, b], sent)
    c = _node(3)
    sent = p.plan(1000, lim, [a, b, c])
    eq(sent[3], 0.0, "new car waits one cycle for the cuts")
    true(sent[1] + sent[2] <= 40, "cuts at once")
    _follow([a, b], sent)  # c not yet
    sent = p.plan(2000, lim, [a, b, c])
    eq(sent[3], 13.0, "room within two cycles")
    true(sum(sent.values()) <= 40, "sum")


def test_planner_unused_current_given_away_and_back():
    p = lb.Planner()
    lim = [40.0] * 3
    a, b = _node(1), _node(2)
    _follow([a, b], p.plan(0, lim, [a, b]))
    a.draw_a = 6.0  # the car takes only 6 A of its 20
    t = 1000
    for _ in range(lb.UNUSED_CYCLES + 3):
        sent = p.plan(t, lim, [a, b])
        _follow([a, b], sent)
        a.draw_a = min(6.0, a.offered_a)
        b.draw_a = b.offered_a
        t += 1000
    eq(sent[1], 7.0, "capped at draw + 1 A")
    eq(sent[2], 32.0, "the rest to the other (up to its max)")
    a.draw_a = 7.0  # asks again
    for _ in range(3):
        sent = p.plan(t, lim, [a, b])
        _follow([a, b], sent)
        a.draw_a = a.offered_a
        t += 1000
    eq(sent, {1: 20.0, 2: 20.0}, "given back")


def test_planner_rotation():
    p = lb.Planner(rotate_ms=10000)
    lim = [20.0] * 3
    nodes = [_node(i) for i in (1, 2, 3, 4)]
    waited = {}
    t = 0
    for _ in range(80):
        sent = p.plan(t, lim, nodes)
        _follow(nodes, sent)
        true(sum(sent.values()) <= 20, "sum")
        true(all(v == 0 or v >= 6 for v in sent.values()), "6 A or waiting")
        eq(len(p.waiting), 1, "one waits")
        for a in p.waiting:
            waited[a] = waited.get(a, 0) + 1
        t += 1000
    eq(sorted(waited), [1, 2, 3, 4], "everyone waited in turn")
    true(max(waited.values()) - min(waited.values()) <= 12, "turns about even: %r" % waited)


def test_planner_node_leaving_frees_share():
    p = lb.Planner()
    lim = [30.0] * 3
    a, b, c = _node(1), _node(2), _node(3)
    _follow([a, b, c], p.plan(0, lim, [a, b, c]))
    sent = p.plan(1000, lim, [a, b])
    _follow([a, b], sent)
    sent = p.plan(2000, lim, [a, b])
    eq(sent, {1: 15.0, 2: 15.0}, "share freed")


# ---- Balancer nodes on an in-memory bus ------------------------------------------------------------
class Bus:
    def __init__(self):
        self.ports = []

    def port(self):
        q = Port(self)
        self.ports.append(q)
        return q


class Port:
    def __init__(self, bus):
        self.bus = bus
        self.q = []
        self.up = True

    def send(self, can_id, data):
        if not self.up:
            return
        for p in self.bus.ports:
            if p is not self and p.up:
                p.q.append((can_id, bytes(data)))

    def recv(self):
        return self.q.pop(0) if self.q else None


class Settings(dict):
    pass


class FakeCharger:
    def __init__(self):
        self.external = {}
        self.active = 0
        self.session = None
        self.connected = False
        self.cable_a = None
        self.thermal_a = None
        self.offered_a = 0.0
        self.trips = []

    def set_external_limit(self, name, amps):
        if amps is None:
            self.external.pop(name, None)
        else:
            self.external[name] = amps

    def trip(self, bit):
        self.trips.append(bit)
        self.active |= bit

    def follow(self):
        """The charging core: offers the limit when a session runs (>= 6 A)."""
        lim = self.external.get("balance", 32.0)
        self.offered_a = lim if self.session and not self.active and lim >= 6 else 0.0


class Prot:
    can_clash = False


def _settings(addr, **kw):
    s = Settings(lb_enabled=True, can_addr=addr, max_house_current_a=40,
                 phase_set="L123", meter_model="none", max_current_a=32)
    s.update(kw)
    return s


class Pool:
    def __init__(self, addrs):
        self.bus = Bus()
        self.t = 0
        self.nodes = []
        for i, a in enumerate(addrs):
            ch = FakeCharger()
            b = lb.Balancer(ch, _settings(a), Prot(), self.bus.port(),
                            clock=lambda: self.t, epoch=i)
            self.nodes.append(b)

    def run(self, ms, check=True):
        end = self.t + ms
        while self.t < end:
            for b in self.nodes:
                if b.can.up:
                    b.tick(self.t)
                    b.ch.follow()
            if check:
                tot = sum(b.ch.offered_a for b in self.nodes if b.can.up)
                true(tot <= 40, "sum of offers %r at %d" % (tot, self.t))
            self.t += 100

    def plug(self, i):
        ch = self.nodes[i].ch
        ch.connected = True
        ch.session = object()


def test_pool_elects_lowest_and_shares():
    pool = Pool([3, 1, 2])
    for i in range(3):
        pool.plug(i)
    pool.run(6000)
    eq([b.master for b in pool.nodes], [1, 1, 1], "lowest address is master")
    eq([b.ch.offered_a for b in pool.nodes], [13.0, 13.0, 13.0], "shared")


def test_pool_master_lost_fallback_and_clash():
    pool = Pool([1, 2, 3])
    for i in range(3):
        pool.plug(i)
    pool.run(6000)
    pool.nodes[0].can.up = False  # the master dies
    pool.run(lb.MASTER_TIMEOUT_MS + 300)
    true(pool.nodes[1].fallback and pool.nodes[2].fallback, "fallback")
    eq(pool.nodes[1].view()["fault"], "master_lost", "shown")
    true(pool.nodes[1].ch.offered_a <= lb.FALLBACK_A, "safe share")
    pool.run(4000)  # no meter in this pool: node 2 takes over
    eq(pool.nodes[2].master, 2, "takeover")
    true(not pool.nodes[2].fallback, "allocating again")
    eq(pool.nodes[1].ch.offered_a + pool.nodes[2].ch.offered_a, 34.0, "two share, 6 A kept for the lost master")
    # An address clash: a fourth node configured as 2.
    ch = FakeCharger()
    extra = lb.Balancer(ch, _settings(2), Prot(), pool.bus.port(), clock=lambda: pool.t, epoch=9)
    pool.nodes.append(extra)
    pool.run(1000)
    eq(pool.nodes[1].ch.trips, [faults.CAN], "clash on the old node")
    eq(ch.trips, [faults.CAN], "clash on the new node")
    true(pool.nodes[1].prot.can_clash and extra.prot.can_clash, "protection told")
    extra.settings["can_addr"] = 4  # renumbered
    pool.run(lb.CLASH_CLEAR_MS + 1000)
    true(not pool.nodes[1].prot.can_clash and not extra.prot.can_clash, "clash gone")


def test_pool_meter_master_lost_no_takeover():
    pool = Pool([1, 2, 3])
    pool.nodes[0].settings["meter_model"] = "SDM630"  # no power manager given: static limit
    for i in range(3):
        pool.plug(i)
    pool.run(6000)
    pool.nodes[0].can.up = False
    pool.run(8000)
    eq(pool.nodes[1].master, 1, "still follows the meter's charger")
    true(pool.nodes[1].fallback and pool.nodes[2].fallback, "fallback")
    eq(pool.nodes[1].ch.offered_a, 6.0, "6 A")
    old = pool.nodes[0]  # restarted: a fresh process on the same port
    old.can.up = True
    old.can.q = []
    ch = FakeCharger()
    ch.connected = True
    ch.session = object()
    pool.nodes[0] = lb.Balancer(ch, old.settings, Prot(), old.can, clock=lambda: pool.t, epoch=7)
    pool.run(5000)
    true(not pool.nodes[1].fallback, "master back")
    eq([b.ch.offered_a for b in pool.nodes], [13.0, 13.0, 13.0], "shared again")
    pool.run(lb.FALLBACK_HOLD_MS)


def test_pool_node_leaves():
    pool = Pool([1, 2, 3])
    for i in range(3):
        pool.plug(i)
    pool.run(6000)
    pool.nodes[2].can.up = False
    pool.nodes[2].ch.offered_a = 0.0
    pool.run(lb.NODE_TIMEOUT_MS + 8000)
    eq(pool.nodes[0].ch.offered_a + pool.nodes[1].ch.offered_a, 34.0, "freed but its fallback share")
    pool.run(lb.GONE_HOLD_MS)
    eq(pool.nodes[0].ch.offered_a + pool.nodes[1].ch.offered_a, 40.0, "share freed")


def test_fallback_ends_in_pause():
    pool = Pool([1, 2])
    for i in range(2):
        pool.plug(i)
    pool.run(6000)
    pool.nodes[0].can.up = False
    pool.nodes[0].settings["meter_model"] = "SDM630"
    pool.nodes[1].meter_addr = 1
    pool.run(lb.MASTER_TIMEOUT_MS + 1000)
    eq(pool.nodes[1].ch.offered_a, 6.0, "fallback share")
    pool.run(lb.FALLBACK_HOLD_MS)
    eq(pool.nodes[1].ch.offered_a, 0.0, "then a pause")


def test_disabled_does_nothing():
    ch = FakeCharger()
    port = Bus().port()
    b = lb.Balancer(ch, _settings(1, lb_enabled=False), Prot(), port, clock=lambda: 0)
    b.tick(0)
    eq(ch.external, {}, "no limit")
    eq(b.view(), None, "no view")


def test_pool_limit_from_meter_headroom():
    """With a meter: headroom plus the others' draw, never more than each offers; blind
    for less than the meter timeout -> the last limit; lost or never read -> 0."""

    class Power:
        headroom_a = [20.0, 10.0, 20.0]
        ok = True
        lost = False
        last_ok_ms = 0

    pw = Power()
    b = lb.Balancer(FakeCharger(), _settings(1, meter_model="SDM630"), Prot(), Bus().port(),
                    clock=lambda: 0, power=pw, epoch=1)
    b.tick(0)
    n = b.nodes[2] = lb.Node(2)
    n.draw_a, n.offered_a = 8.0, 10.0
    eq(b._pool_limit(), [28.0, 18.0, 28.0], "headroom + draw")
    n.offered_a = 6.0  # cut: the meter may still see 8 A
    eq(b._pool_limit(), [26.0, 16.0, 26.0], "at most the offer")
    pw.ok = False
    n.draw_a, n.offered_a = 16.0, 16.0  # moved since the last valid reading
    eq(b._pool_limit(), [26.0, 16.0, 26.0], "blind: the last limit stays")
    pw.lost = True
    eq(b._pool_limit(), [0.0, 0.0, 0.0], "lost: nobody charges")
    pw.lost, pw.last_ok_ms = False, None
    eq(b._pool_limit(), [0.0, 0.0, 0.0], "never read: nobody charges")


class _Out:
    def __init__(self):
        self.v = None

    def show(self, text):
        self.v = text

    def set(self, *a):
        self.v = a


class _Leds:
    def __init__(self):
        self.v = {}

    def set(self, what, colour, pattern):
        self.v[what] = (colour, pattern)


class _Hw:
    def __init__(self):
        self.display = _Out()
        self.belt = _Out()
        self.tap_light = _Out()
        self.leds = _Leds()

        class Wlan:
            mode = "ap"

            def ap_clients(self):
                return 0

            def isconnected(self):
                return False

        class Button:
            def pressed(self):
                return False

        class Rtc:
            def now(self):
                return 0

        self.wlan = Wlan()
        self.button = Button()
        self.rtc = Rtc()


class _HmiCharger(FakeCharger):
    latched = 0
    status = "Charging"

    def ocpp_status(self):
        return self.status


def test_master_lost_shown_as_warning():
    """Fallback -> `CAN MST LOST` at once, then between the rotation's items, the fault
    LED blinking; not a fault, and a fault's ERR code takes precedence."""
    from evse.hmi import Hmi

    class Met:
        volts = [230.0, 230.0, 230.0]
        hz = 50.0
        amps = [6.0, 6.0, 6.0]

    class Session:
        start_s = 0
        energy_wh = 0.0

    pool = Pool([1, 2])
    for i in range(2):
        pool.plug(i)
    pool.run(6000)
    b = pool.nodes[1]
    eq(b.notice(), None, "no warning while allocated")
    hw = _Hw()
    ch = _HmiCharger()
    ch.session = Session()
    ch.connected = True
    hmi = Hmi(hw, ch, Met(), lambda: "ap")
    hmi.notices.append(b.notice)
    t = 10000
    hmi.tick(t)
    true(hw.display.v != lb.MASTER_LOST_TEXT, "normal rotation")
    eq(hw.leds.v["fault"], ("off", "steady"), "fault LED off")
    pool.nodes[0].can.up = False
    pool.run(lb.MASTER_TIMEOUT_MS + 300, check=False)
    eq(b.notice(), lb.MASTER_LOST_TEXT, "fallback -> warning")
    hmi.tick(t + 100)
    eq(hw.display.v, lb.MASTER_LOST_TEXT, "shown at once")
    eq(hw.leds.v["fault"], ("red", "slow"), "fault LED blinks")
    shown = []
    for k in range(1, 7):
        hmi.tick(t + 100 + k * 3000)
        shown.append(hw.display.v)
    eq(shown[1::2], [lb.MASTER_LOST_TEXT] * 3, "every other item")
    true(all(x != lb.MASTER_LOST_TEXT for x in shown[0::2]), "the rotation between")
    ch.active = faults.MET
    hmi.tick(t + 30000)
    eq(hw.display.v, faults.display_text(faults.codes(faults.MET)[0]), "a fault first")
    eq(hw.leds.v["fault"], ("red", "steady"), "fault LED steady")
