# The capacity tariff in a load balancing pool (evse/tariff.py on the master, for the pool:
# evse/balance/pooltariff.py) on the in-memory bus of test_balance, with the master's grid
# meter of test_pool_solar and a house load scripted second by second: the pool's import
# averaged over each window stays under the limit with two and three nodes, the master's
# own "tariff" limit does not count twice, a follower's own setting is ignored, the tariff
# and the solar modes compose by min, the pool pauses at once and resumes by the tariff's
# rules, a master without a meter pauses the pool; the energy from surplus of a pool's
# sessions, the surplus module forgotten back in `normal`, stored times across the wrap.
import sys

_FAKES = (__file__.rpartition("/")[0] or ".") + "/fakes"
if _FAKES not in sys.path:
    sys.path.append(_FAKES)
import fake_time  # noqa: E402
from check import eq, true  # noqa: E402
from evse import limits  # noqa: E402
from test_balance import FakeCharger  # noqa: E402
from test_pool_solar import SunPool, _U  # noqa: E402

# The runner frees each test module after its run; the ones imported here go too.
sys.modules.pop("test_pool_solar", None)
sys.modules.pop("test_balance", None)

T0 = 1767225600  # 2026-01-01 00:00:00 UTC: windows on the clock's minutes
_SURPLUS = "evse.balance.surplus"


class Charger(FakeCharger):
    """The charging core: offers the smallest of all its limits (the allocation, and a
    "tariff" limit should one be set), 0 below 6 A, while a session runs."""

    phases = 3

    def __init__(self):
        super().__init__()
        self.hw = self  # hw.relays.closed: its contacts close while it offers current
        self.relays = self

    @property
    def closed(self):
        return self.offered_a > 0

    def follow(self):
        lim = 32.0
        for v in self.external.values():
            if v is not None and v < lim:
                lim = v
        self.offered_a = limits.offer_of(lim) if self.session and not self.active else 0.0


class Metering:
    """A node's internal meter: its car draws its offer on three phases."""

    def __init__(self, ch):
        self.ch = ch
        self.car_mask = None
        self.ok = True  # readings come (evse/metering.py)

    @property
    def amps(self):
        a = self.ch.offered_a
        return [a, a, a]

    @property
    def power_w(self):
        return self.ch.offered_a * 3 * _U


class TariffPool(SunPool):
    """Three-phase nodes, node 1 the master with the grid meter; every node has the tariff
    set. house(t): the house's other loads (W) at second t; the grid imports them and the
    cars' draw, less the sun (`surplus`, A per phase). `windows`: each window's import
    (W s) on the clock, counted every 100 ms."""

    def __init__(self, addrs, limit_w=12000, house=None, mode="normal", window=1, min_on=0,
                 **kw):
        self.house = house or (lambda t: 1000.0)
        self.windows = {}
        self.win_s = window * 60
        super().__init__(addrs, mode=mode, tariff_limit_w=limit_w, tariff_window_min=window,
                         solar_min_on_s=min_on, **kw)
        m = self.meter
        m.settings = self.nodes[0].settings
        m.model = "SDM630"
        m.ch = self.nodes[0].ch
        m.rtc = self.rtc
        m.metering = self.nodes[0].metering
        m.tariff = None

    def _make(self, settings, port, data_dir, epoch):
        b = super()._make(settings, port, data_dir, epoch)
        b.ch = Charger()
        b.metering = Metering(b.ch)
        return b

    def rtc(self):
        return T0 + self.t // 1000

    def grid_w(self):
        return self.house(self.t // 1000) + (self.drawn() - self.surplus) * 3 * _U

    def read(self):
        """A meter reading, then the power manager's step (evse/power.py poll_once): the
        tariff runs while set, in a pool only on its master."""
        super().read()
        m = self.meter
        m.values[9] = self.grid_w()
        pool = m.pool
        if m.settings["tariff_limit_w"] and (pool is None or pool.master == pool.addr):
            if m.tariff is None:
                from evse.tariff import Tariff

                m.tariff = Tariff(m)
            m.tariff.step(self.t, True)
        else:
            m.tariff = None

    def run(self, ms, check=True):
        for _ in range(ms // 100):
            k = self.rtc() // self.win_s
            super().run(100, check)
            self.windows[k] = self.windows.get(k, 0.0) + max(0.0, self.grid_w()) * 0.1

    def averages(self):
        """The average import of every whole window (the last one may be partial)."""
        keys = sorted(self.windows)[:-1]
        return [self.windows[k] / self.win_s for k in keys]


def _office(t):
    """A house load: 1.5 kW, 5 kW more for 30 s of every 90, 2 kW more for 10 s of 40."""
    w = 1500.0
    if 40 <= t % 90 < 70:
        w += 5000.0
    if t % 40 < 10:
        w += 2000.0
    return w


def _under(pool, limit_w):
    avg = pool.averages()
    true(len(avg) >= 3, "whole windows: %r" % avg)
    for a in avg:
        true(a <= limit_w, "a window's average import %.0f W > %d W: %r" % (a, limit_w, avg))



def test_two_nodes_keep_every_window_under_the_limit():
    """Alone each car would take 20 A (13.8 kW); the tariff set on the master caps the pool,
    so the follower's draw is part of the plan, not house load it cannot limit."""
    pool = TariffPool([1, 2], limit_w=12000, house=_office)
    seen = [0.0, 0.0]

    def both(p):
        for i in range(2):
            seen[i] = max(seen[i], p.offers()[i])

    pool.secs(300, both)
    _under(pool, 12000)
    true(seen[0] >= 6.0 and seen[1] >= 6.0, "both charged: %r" % seen)
    true(sum(pool.averages()) / len(pool.averages()) >= 9000, "the budget used: %r"
         % pool.averages())
    for b in pool.nodes:
        true("tariff" not in b.ch.external, "no charger-level tariff limit: %r" % b.ch.external)
    v = pool.meter.tariff.view()
    eq(v["pool_master"], 1, "the master's view: the pool's tariff")
    true(pool.at(1).pool_limit_a <= v["limit_a"], "the pool limit under the tariff's")


def test_three_nodes_keep_every_window_under_the_limit():
    def house(t):
        return 800.0 + (6000.0 if 20 <= t % 75 < 50 else 0.0)

    pool = TariffPool([1, 2, 3], limit_w=15000, house=house)
    pool.secs(300)
    _under(pool, 15000)
    true(pool.drawn() > 0 or max(pool.averages()) >= 10000, "the pool charged: %r"
         % pool.averages())


def test_a_followers_own_tariff_is_ignored_it_charges_on_its_allocation():
    """A follower without a meter, its own tariff_limit_w set: alone it pauses (import
    unknown); in a pool with a master the limit is the master's, the follower's power
    manager runs no tariff and its status says who governs it."""
    from test_power import Rig

    sys.modules.pop("test_power", None)

    from evse.balance.planner import Node, Planner

    class Pool:
        master = 1
        addr = 2
        nodes = {}
        me = Node(2)
        planner = Planner()

    r = Rig(model="none", tariff_limit_w=4000, tariff_window_min=15)
    r.cycle(2)
    eq(r.ch.external.get("tariff"), 0.0, "alone, without a meter: a pause")
    r.pm.pool = Pool()
    Pool.ch = r.ch
    r.cycle(2)
    true("tariff" not in r.ch.external, "in a pool: no limit of its own")
    eq(r.pm.tariff, None, "no tariff object")
    true("evse.tariff" not in sys.modules, "nor its code")
    eq(r.pm.tariff_view(), {"limit_w": 4000, "pool_master": 1, "follower": True}, "status")
    Pool.master = 2  # it becomes the pool's master: the tariff is its own, for the pool
    r.cycle(2)
    true(r.pm.tariff is not None and r.pm.tariff.view()["pool_master"] == 2, "the master's")
    true("evse.balance.pooltariff" in sys.modules, "with its pool part")
    r.pm.pool = None
    r.settings["tariff_limit_w"] = 0
    r.cycle(1)
    eq(r.pm.tariff_view(), None, "off")
    true("evse.tariff" not in sys.modules and "evse.balance.pooltariff" not in sys.modules,
         "both forgotten")
    # In the pool: the follower (every node has the tariff set) charges on its allocation.
    pool = TariffPool([1, 2], limit_w=20000)
    pool.secs(20)
    true(pool.offers()[1] >= 6.0, "the follower charges: %r" % pool.offers())


def test_solar_modes_and_the_tariff_compose_by_min():
    pool = TariffPool([1, 2], limit_w=4000, mode="solar_min", window=15)
    pool.secs(15)
    eq(pool.offers(), [0.0, 0.0], "solar_min's minimums from the grid exceed the tariff's plan")
    v = pool.meter.tariff.view()
    true(v["paused"] and v["plan_a"] < 6.0, "the tariff pauses the pool: %r" % v)

    def by_min(p):
        b = p.at(1)
        t = p.meter.tariff.limit_a
        true(b.pool_limit_a <= min(t, min(b.solar.budget)) + 1e-9, "pool limit %r > min(%r, %r)"
             % (b.pool_limit_a, t, b.solar.budget))

    pool.surplus = 10.0  # solar_min: max(10 A, 2 x 6 A) per phase; the tariff's plan 14 A
    pool.secs(30, by_min)
    eq(pool.offers(), [6.0, 6.0], "both at their minimum: the solar budget binds")
    pool.house = lambda t: 5000.0  # the tariff's plan falls to 8.5 A: one node only
    pool.secs(10, by_min)
    b = pool.at(1)
    eq(len([a for a in pool.offers() if a]), 1, "the tariff binds: %r" % pool.offers())
    true(b.pool_limit_a < min(b.solar.budget), "below solar_min's budget %r: %r"
         % (b.solar.budget, b.pool_limit_a))


def test_the_pool_pauses_at_once_and_resumes_by_the_tariffs_rules():
    load = [1000.0]
    pool = TariffPool([1, 2], limit_w=12000, min_on=60, house=lambda t: load[0])
    pool.secs(20)
    true(sum(pool.offers()) >= 12.0, "charging: %r" % pool.offers())
    load[0] = 11000.0  # the plan falls below 6 A
    pool.secs(2)
    eq(pool.offers(), [0.0, 0.0], "paused within a cycle")
    true(pool.meter.tariff.paused, "the tariff's pause")
    load[0] = 1000.0
    for _ in range(60):
        pool.secs(1)
        if any(pool.offers()):
            break
    # The pool's charge started at 1 s: solar_min_on_s (60 s) since then.
    true(pool.t >= 61000, "no resume within solar_min_on_s of the last start: %d" % pool.t)
    true(pool.t <= 64000, "but then: %d" % pool.t)
    true(sum(pool.offers()) <= limits.start_a({}) + 2.0, "resumed at the start current + 2 A:"
         " %r" % pool.offers())
    pool.secs(15)  # raised 2 A per reading; the second node on its minimum + 1 A for 5 s
    true(min(pool.offers()) >= 6.0, "then raised, 2 A per reading: %r" % pool.offers())
    true(pool.at(1).pool_limit_a <= pool.meter.tariff.limit_a, "within the plan")


def test_the_pool_does_not_resume_before_5_s_of_room():
    load = [1000.0]
    pool = TariffPool([1, 2], limit_w=12000, house=lambda t: load[0])
    pool.secs(20)
    load[0] = 11000.0
    pool.secs(2)
    load[0] = 1000.0
    pool.secs(4)
    eq(pool.offers(), [0.0, 0.0], "room for 4 s: still paused")
    pool.secs(5)
    true(sum(pool.offers()) >= 6.0, "after 5 s: %r" % pool.offers())


def test_a_master_without_a_meter_pauses_the_pool():
    pool = TariffPool([1, 2], limit_w=20000)
    pool.at(1).settings["meter_model"] = "none"
    pool.meter.model = "none"
    pool.secs(15)
    eq(pool.offers(), [0.0, 0.0], "the import unknown: nobody charges")
    eq(pool.meter.tariff.view()["waiting"], "no_meter", "and why")
    pool.at(1).settings["tariff_limit_w"] = 0
    pool.secs(8)
    true(pool.offers()[0] >= 6.0 and pool.offers()[1] >= 6.0, "without the tariff: %r"
         % pool.offers())


def test_a_pool_sessions_energy_from_surplus_is_counted():
    """solar_min, 6 A of surplus, two cars at 6 A: half the pool's power from surplus, so
    each node counts half of its own energy (31sts, rounded down: the low side); in full
    sun all of it. The follower counts its own, from the share in the allocation frame."""
    pool = TariffPool([1, 2], limit_w=0, mode="solar_min", house=lambda t: 0.0)
    pool.surplus = 6.0
    pool.secs(20)
    eq(pool.offers(), [6.0, 6.0], "both at 6 A")
    wh0 = [b.ch.session.solar_wh for b in pool.nodes]
    pool.secs(60)
    got = [b.ch.session.solar_wh - wh0[i] for i, b in enumerate(pool.nodes)]
    want = 6.0 * 3 * _U * 60 / 3600 * 15 / 31  # 4.14 kW for 60 s, 15/31 of it
    for g in got:
        true(abs(g - want) < 0.05 * want, "half from surplus: %r, want %.1f Wh" % (got, want))
    pool.surplus = 30.0
    pool.secs(30)
    wh0 = [b.ch.session.solar_wh for b in pool.nodes]
    pool.secs(60)
    for i, b in enumerate(pool.nodes):
        full = b.ch.offered_a * 3 * _U * 60 / 3600
        true(abs(b.ch.session.solar_wh - wh0[i] - full) < 0.05 * full, "all from surplus")
    from evse import history

    rec = {}
    history._solar(rec, pool.at(2).ch.session.solar_wh)
    true(rec["solar_kwh"] > 0, "the follower's record names it: %r" % rec)


def test_back_in_normal_every_node_forgets_the_surplus_module():
    pool = TariffPool([1, 2], limit_w=0, mode="solar")
    pool.surplus = 20.0
    pool.secs(5)
    true(_SURPLUS in sys.modules, "loaded in a solar mode")
    pool.at(1).settings["charge_mode"] = "normal"
    pool.secs(3)
    true(_SURPLUS not in sys.modules, "forgotten")
    for b in pool.nodes:
        eq((b.solar, b.solar_ms, b.pool_mode), (None, None, "normal"), "node %d" % b.addr)


def test_stored_times_across_the_tick_wrap():
    """A pool in solar_min under a tariff whose clock wraps (32-bit ticks) while it
    charges, then a week passes with a reading an hour: the counts stay sane and the pool
    charges again as soon as the rules allow, not days later or at once."""
    from evse import tariff
    from evse.balance import node, planner, surplus

    mods = (node, planner, surplus, tariff, limits)
    with fake_time.Ticks32(*mods):
        pool = TariffPool([1, 2], limit_w=20000, mode="solar_min", min_on=60)
        pool.t = fake_time.TICKS_PERIOD - 30000  # the wrap 30 s in
        pool.surplus = 6.0
        pool.secs(60)
        eq(pool.offers(), [6.0, 6.0], "charging across the wrap")
        wh = pool.at(2).ch.session.solar_wh
        true(0 < wh < 30, "the follower's count across the wrap: %r" % wh)
        for _ in range(7 * 24):  # a week, a reading and a tick an hour
            pool.t += 3600000
            pool.read()
            for b in pool.nodes:
                b.tick(pool.t)
                b.ch.follow()
        eq(pool.at(2).ch.session.solar_wh, wh, "nothing counted for hour-long gaps")
        pool.secs(5)
        eq(pool.offers(), [6.0, 6.0], "charging again")


class _Frozen:
    """An internal meter that stopped answering: evse/metering.py keeps power_w at the last
    good reading; protection trips MET: the charge pauses, the session is kept."""

    def __init__(self, w):
        self.power_w = w
        self.amps = [0.0, 0.0, 0.0]
        self.car_mask = None
        self.ok = False


def test_a_node_whose_meter_fails_counts_no_surplus_energy():
    pool = TariffPool([1, 2, 3], limit_w=0, mode="solar_min", house=lambda t: 0.0)
    pool.surplus = 30.0
    pool.secs(30)
    b = pool.at(3)
    true(b.ch.offered_a >= 6.0, "node 3 charges: %r" % pool.offers())
    b.metering = _Frozen(b.ch.offered_a * 3 * _U)
    b.ch.active = 8  # MET: paused, session kept
    wh0 = b.ch.session.solar_wh
    pool.secs(600)
    eq(b.ch.offered_a, 0.0, "node 3 draws nothing")
    got = b.ch.session.solar_wh - wh0
    true(got < 1.0, "counted %.0f Wh from surplus while drawing nothing" % got)


def test_a_roomy_tariff_set_on_the_master_does_not_pause_the_pool():
    # Set while the pool charges: the allocation cycle may come before the power task has
    # built the tariff and planned; until then nobody gets more (cuts only), nobody less.
    pool = TariffPool([1, 2], limit_w=0, house=lambda t: 500.0)
    pool.secs(30)
    before = pool.offers()
    true(min(before) >= 6.0, "charging: %r" % before)
    for b in pool.nodes:
        b.settings["tariff_limit_w"] = 40000
    pool.run(1000, check=False)
    after = pool.offers()
    true(min(after) >= 6.0, "a roomy tariff must not pause the pool: %r" % after)
    true(all(a <= b0 for a, b0 in zip(after, before)), "nobody more before the plan: %r" % after)


def test_back_in_normal_no_frame_carries_a_surplus_share():
    pool = TariffPool([1, 2], limit_w=0, mode="solar_min", house=lambda t: 0.0)
    pool.surplus = 30.0
    pool.secs(20)
    m = pool.at(1)
    true(m.share, "a share of surplus while in solar_min: %r" % m.share)
    m.settings["charge_mode"] = "normal"
    pool.secs(3)
    eq(m.share, 0, "normal: no share in the allocations")


def _starts(pool, secs):
    """Seconds of the pool run in 100 ms steps; how often each node's offer rose from 0."""
    starts = [0] * len(pool.nodes)
    prev = [0.0] * len(pool.nodes)
    for _ in range(secs):
        pool.read()
        for _ in range(10):
            pool.run(100, check=False)
            for k, o in enumerate(pool.offers()):
                if prev[k] == 0 and o > 0:
                    starts[k] += 1
                prev[k] = o
    return starts


def test_a_plan_wavering_around_one_more_node_does_not_start_and_stop_it():
    # The plan alternates 11.8 / 12.4 A per phase: around the 12 A two 6 A nodes need.
    # One more node starts only on its minimum + 1 A held 5 s; a node starts again only
    # solar_min_on_s after its last start.
    def house(t):
        return 0.97 * 12000 - (11.8 if t % 4 < 2 else 12.4) * 3 * _U

    pool = TariffPool([1, 2], limit_w=12000, house=house, min_on=60, window=15)
    starts = _starts(pool, 120)
    true(sum(starts) <= 2, "starts per node in 120 s: %r" % (starts,))


def test_turns_still_rotate_under_the_tariff():
    # Room for two of three nodes: the one waiting gets its turn as under any pool limit.
    pool = TariffPool([1, 2, 3], limit_w=12000, house=lambda t: 1000.0, min_on=10)
    pool.at(1).planner.rotate_ms = 20000
    seen = set()
    for _ in range(120):
        pool.secs(1)
        for k, o in enumerate(pool.offers()):
            if o:
                seen.add(k)
    eq(sorted(seen), [0, 1, 2], "every node had a turn")


def test_a_node_just_sent_current_counts_at_it_before_its_report():
    # Its report lags the frame: counted at 0 the plan would fall by its current at the
    # next reading and cut it again at once.
    load = [1000.0]
    pool = TariffPool([1, 2], limit_w=12000, min_on=60, house=lambda t: load[0])
    pool.secs(20)
    load[0] = 11000.0
    pool.secs(2)
    load[0] = 1000.0
    for _ in range(60):
        pool.secs(1)
        if any(pool.offers()):
            break
    starts = _starts(pool, 30)
    eq(starts[1], 1, "the second node starts once and stays: %r" % (starts,))
    true(min(pool.offers()) >= 6.0, "both charge: %r" % pool.offers())
