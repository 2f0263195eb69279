# A load balancing pool in the solar modes (evse/balance/surplus.py) on the in-memory bus
# of test_balance: the master with the grid meter shares one surplus among the nodes.
# Two and three nodes sharing it, a surplus for one node only, the fair pause, a cloud
# within the stop delay, a mode switch on the master, `solar_min`, the mode in the
# allocation frames. Cars follow their offer at once; a meter reading every second.
import sys

from check import eq, true
from evse.balance import codec
from test_balance import Pool

# The runner frees each test module after its run; test_balance, imported here, goes too.
sys.modules.pop("test_balance", None)

_U = 230.0
_DELAYS = {"solar_start_s": 10, "solar_stop_s": 30, "solar_min_on_s": 60}


class Meter:
    """The master's power manager as the balancer reads it: a grid meter whose signed
    power is the house load less the sun plus every charger's current (three phases)."""

    def __init__(self):
        self.headroom_a = [40.0, 40.0, 40.0]
        self.ok = True
        self.lost = False
        self.last_ok_ms = None
        self.values = [None] * 11
        self.own_a = [0.0, 0.0, 0.0]
        self.pool = None


class SunPool(Pool):
    """Pool whose node 1 reads the meter. sun(a): the export, in amps per phase, that the
    house has with no charger drawing (the surplus)."""

    def __init__(self, addrs, mode="solar", **kw):
        self.meter = Meter()
        self.surplus = 0.0
        s = dict(_DELAYS)
        s.update(kw)
        super().__init__(addrs, charge_mode=mode, **s)
        for a in addrs:
            self.plug(a - 1)

    def _make(self, settings, port, data_dir, epoch):
        if settings["can_addr"] == 1:
            settings["meter_model"] = "SDM630"
        b = super()._make(settings, port, data_dir, epoch)
        if settings["can_addr"] == 1:
            b.power = self.meter
        return b

    def drawn(self):
        return sum(self.offers())

    def read(self):
        """A meter reading now."""
        m = self.meter
        m.last_ok_ms = self.t
        m.own_a = [self.nodes[0].ch.offered_a] * 3
        m.values[9] = (self.drawn() - self.surplus) * 3 * _U
        m.values[0] = m.values[1] = m.values[2] = _U

    def secs(self, n, check=None):
        """n seconds, a reading each; check(pool) after each second but the first after a
        change of the surplus (one meter cycle)."""
        for i in range(n):
            self.read()
            self.run(1000)
            if check is not None and i > 0:
                check(self)

    def at(self, addr):
        return self.nodes[addr - 1]


def _within_surplus(pool):
    true(pool.drawn() <= pool.surplus + 1e-9, "offers %r > surplus %r A at %d ms"
         % (pool.offers(), pool.surplus, pool.t))


def _sum_at_least_6_each(pool, n):
    on = [a for a in pool.offers() if a > 0]
    eq(len(on), n, "charging nodes: %r" % pool.offers())
    true(all(a >= 6.0 for a in on), "at least 6 A each: %r" % pool.offers())


def test_two_nodes_share_one_surplus():
    """20 A of surplus: the first node starts after the start delay, the second after
    another one (it needs 6 A more), and together they never draw more than 20 A."""
    pool = SunPool([1, 2])
    pool.surplus = 20.0
    pool.secs(8, _within_surplus)
    eq(pool.offers(), [0.0, 0.0], "nobody before the start delay")
    pool.secs(6, _within_surplus)
    _sum_at_least_6_each(pool, 1)
    pool.secs(40, _within_surplus)
    _sum_at_least_6_each(pool, 2)
    true(pool.drawn() >= 18.0, "the surplus used: %r" % pool.offers())
    eq(pool.at(1).solar_view()["mode"], "solar", "the master's page")
    eq(pool.at(2).solar_view()["mode"], "solar", "the follower's page: the pool's mode")
    eq(pool.at(2).view()["charge_mode"], "solar", "the follower's balance view")


def test_three_nodes_the_third_waits_for_6_a_more():
    pool = SunPool([1, 2, 3])
    pool.surplus = 15.0
    pool.secs(60, _within_surplus)
    _sum_at_least_6_each(pool, 2)
    waiting = [b for b in pool.nodes if b.ch.offered_a == 0]
    true(waiting[0].waiting, "the third waits")
    eq(waiting[0].solar_view()["waiting"], "export", "and says why")
    pool.surplus = 25.0
    pool.secs(40, _within_surplus)
    _sum_at_least_6_each(pool, 3)
    true(pool.drawn() >= 23.0, "the surplus used: %r" % pool.offers())


def test_a_surplus_for_one_node_only():
    pool = SunPool([1, 2])
    pool.surplus = 9.0
    pool.secs(80, _within_surplus)
    _sum_at_least_6_each(pool, 1)
    true(pool.drawn() >= 8.0, "one node takes it: %r" % pool.offers())
    v = pool.at(1).solar_view()
    true(v["running"] and v["pool"] == [1], "the master charges, on its own: %r" % v)
    eq(pool.at(2).solar_view()["waiting"], "export", "the other waits for export")
    pool.at(1).ch.session = None  # the master's car leaves: the other one's turn
    pool.secs(20, _within_surplus)
    eq(pool.offers()[1] >= 8.0, True, "the other takes it: %r" % pool.offers())


def test_the_fair_pause_one_node_at_a_time():
    """16 A shared by two nodes; the surplus falls to 8 A: both stay at 6 A for the stop
    delay, then the one that charged longest pauses and the other goes on (not both)."""
    pool = SunPool([1, 2, 3])
    pool.surplus = 24.0
    pool.secs(10)
    pool.secs(12)  # the first starts
    first = [i for i, a in enumerate(pool.offers()) if a > 0]
    eq(len(first), 1, "one started: %r" % pool.offers())
    pool.secs(100)
    _sum_at_least_6_each(pool, 3)
    pool.surplus = 8.0
    pool.secs(20)
    _sum_at_least_6_each(pool, 3)  # never below 6 A, no stop within the stop delay
    pool.secs(15)
    _sum_at_least_6_each(pool, 2)  # one paused after the stop delay
    eq(pool.offers()[first[0]], 0.0, "the one that charged longest paused")
    pool.secs(25)
    _sum_at_least_6_each(pool, 2)  # the next one only after another stop delay
    pool.secs(15)
    _sum_at_least_6_each(pool, 1)
    pool.secs(40, _within_surplus)
    _sum_at_least_6_each(pool, 1)


def test_a_cloud_within_the_stop_delay_stops_nobody():
    pool = SunPool([1, 2])
    pool.surplus = 20.0
    pool.secs(60)
    _sum_at_least_6_each(pool, 2)
    pool.surplus = 2.0  # a cloud for 20 s
    pool.secs(20)
    _sum_at_least_6_each(pool, 2)
    eq(pool.offers(), [6.0, 6.0], "held at 6 A each")
    true(pool.at(1).solar_view()["stop_in_s"] is not None, "stop delay shown")
    pool.surplus = 20.0
    pool.secs(40)
    _sum_at_least_6_each(pool, 2)
    true(pool.drawn() >= 18.0, "back to the surplus: %r" % pool.offers())
    true(pool.at(1).solar_view()["stop_in_s"] is None, "no stop counting")


def test_mode_switch_on_the_master():
    """Normal: both charge from the grid. Switched to `solar` with 14 A of surplus, both
    go on (no start delay); with 8 A, one of them stops in that cycle. Back to `normal`
    from the master, the followers hear it in the next allocation."""
    pool = SunPool([1, 2], mode="normal")
    pool.surplus = 14.0
    pool.secs(10)
    eq(pool.offers(), [20.0, 20.0], "normal: the supply shared")
    eq(pool.at(2).pool_mode, "normal", "the follower hears the mode")
    eq(pool.at(2).solar_view(), None, "normal: no solar line")
    pool.at(1).settings["charge_mode"] = "solar"
    pool.secs(2)
    eq(pool.at(2).pool_mode, "solar", "within a cycle")
    _sum_at_least_6_each(pool, 2)
    pool.secs(10, _within_surplus)
    pool.at(1).settings["charge_mode"] = "normal"
    pool.secs(6)
    eq(pool.offers(), [20.0, 20.0], "normal again")
    pool.surplus = 8.0
    pool.at(1).settings["charge_mode"] = "solar"
    pool.secs(2)
    _sum_at_least_6_each(pool, 1)
    pool.secs(10, _within_surplus)


def test_a_followers_own_mode_does_not_count():
    """The mode is the master's: a follower set to `solar_min` follows a `solar` pool."""
    pool = SunPool([1, 2])
    pool.at(2).settings["charge_mode"] = "solar_min"
    pool.surplus = 3.0
    pool.secs(30)
    eq(pool.offers(), [0.0, 0.0], "too little surplus: nobody")
    eq(pool.at(2).solar_view()["mode"], "solar", "the pool's mode shown")


def test_solar_min_6_a_each_and_the_surplus_shared():
    pool = SunPool([1, 2], mode="solar_min")
    pool.surplus = 0.0
    pool.secs(10)
    eq(pool.offers(), [6.0, 6.0], "6 A each from the grid")
    pool.surplus = 24.0
    pool.secs(20, _within_surplus)
    true(pool.drawn() >= 22.0, "the surplus shared: %r" % pool.offers())


def test_no_meter_reading_nobody_charges_in_solar():
    pool = SunPool([1, 2])
    pool.run(20000)
    eq(pool.offers(), [0.0, 0.0], "no reading: nothing")
    eq(pool.at(1).solar_view()["waiting"], "no_reading", "why")


def test_the_mode_in_the_allocation_frame():
    b = bytearray(8)
    for i, mode in enumerate(codec.MODES):
        for waiting in (False, True):
            codec.encode_alloc(b, 1, 7, 2, 1, 10.0, waiting, 2, 20.0, i)
            f = codec.decode(0x602, b, 1)
            eq((f.mode, f.waiting), (i, waiting), mode)
    a = bytes(b)
    for flags in (6, 7, 0x0E, 0xFF):
        eq(codec.decode(0x602, a[:5] + bytes([flags]) + a[6:], 1), None, "flags %d" % flags)
    # Bits 3-7: the pool's share from surplus, in 31sts rounded down (the low side).
    for share, code in ((0.0, 0), (None, 0), (0.5, 15), (1.0, 31), (1.5, 31), (-1.0, 0)):
        codec.encode_alloc(b, 1, 7, 2, 1, 10.0, True, 2, 20.0, 2, share)
        eq(b[5] >> 3, code, "share %r" % share)
        f = codec.decode(0x602, b, 1)
        eq((f.mode, f.waiting, f.share), (2, True, code / 31), "share %r decoded" % share)


def test_the_start_delay_is_served_at_the_waiting_nodes_own_minimum():
    """7 A of export while no car waits covers the 6 A of a next node; the export
    reaches 10 A and 5 s later a car that needs 10 A (min_start_a) waits: it starts
    once 10 A have lasted the start delay, as one charger does, not at once on the
    time the export covered 6 A."""
    from evse.balance.planner import Node
    from evse.balance.surplus import PoolSolar

    ps = PoolSolar()
    m = Meter()
    n = Node(1)
    n.min_a = 10.0
    s = dict(_DELAYS, charge_mode="solar")
    lim = [40.0, 40.0, 40.0]

    def step(t, export_a):
        m.last_ok_ms = t
        m.values[9] = -export_a * 3 * _U
        m.values[0] = m.values[1] = m.values[2] = _U
        return ps.plan(t, m, s, [n], lim)[1]

    for t in range(0, 20000, 1000):
        step(t, 7.0)
    for t in range(20000, 25000, 1000):
        step(t, 10.0)
    n.state = codec.ST_WANT
    for t in range(25000, 30000, 1000):
        eq(sorted(step(t, 10.0)), [], "no start at %d ms: 10 A for less than 10 s" % t)
    for t in range(30000, 36000, 1000):
        on = step(t, 10.0)
    eq(sorted(on), [1], "after the start delay at 10 A")
