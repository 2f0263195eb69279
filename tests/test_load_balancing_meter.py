"""Load balancing over CAN with a grid meter on the master (docs/load-balancing.md,
manual §8.1.2 point 12 and §10), end to end: 3 and 8 firmware processes on one simulated
CAN bus; node 1 reads tests/modbus_meter.py (a pymodbus SDM630 on a socat pty pair),
which measures the house's other loads, set by the test, plus the current of every
charger of the pool (their simulated plants).

The pool limit then comes from the master's power-management headroom: per phase,
`max_house_current_a` minus the other loads. A watcher takes every charger's snapshot
in turn and checks, per phase, that the offers never add up to more than that limit,
allowing the old limit for REACT_S after the load rises (the meter is read once per
cycle, the master allocates once per cycle, the nodes apply it at their next tick), and
that every charger's offer stays within its `balance` limit and the master's also within
its own power limit ("power", docs/power-management.md) one control tick after a change.
"""
import shutil
import time

import pytest
from pool import CYCLE_S, MASTER_LOST_TEXT, MASTER_TIMEOUT_S, Pool, Watch, bal, offers, plug
from test_power_management import MeterServer, PtyPair

LIMIT_A = 40  # max_house_current_a: the contract limit per phase at the meter
LOAD = [5.0, 5.0, 5.0]  # the house's other loads at the start
METER_CYCLE_S = 1.0  # power.CYCLE_MS: the master reads the meter this often
REACT_S = METER_CYCLE_S + CYCLE_S + 0.6  # read, allocation cycle, node and control ticks
TICK_LAG_S = 0.5  # a lower limit is applied at the next control tick (100 ms) + slack
LOST_S = 5.0  # power.LOST_MS: no valid reading this long -> ERR MET on the master
RECOVER_S = 5.0  # power.RECOVER_MS
ROOM_S = 2 * CYCLE_S + 3.0  # a new car gets room within two cycles (+ ticks, EV, polls)

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat")


def limit_for(load):
    """The pool limit per phase the master's headroom gives for a house load."""
    return [max(0.0, min(LIMIT_A, LIMIT_A - a)) for a in load]


class MeterPool:
    """n three-phase chargers (22 kW, L123, three-phase cars) on one bus; node 1 has the
    SDM630 on an RS-485 pty; the meter sees the other loads plus all their currents."""

    def __init__(self, tmp_path, request, n, load=LOAD):
        self.pty = PtyPair(tmp_path)
        settings = {"max_house_current_a": LIMIT_A, "auth_mode": "free",
                    "charging_mode": "C", "cable_max_a": 32, "max_current_a": 32,
                    "charger_power": "22kW", "phase_set": "L123"}
        self.pool = Pool(tmp_path, n, settings,
                         extra=lambda i: {"meter_model": "SDM630"} if i == 0 else {},
                         env=lambda i: {"EVSE_RS485": str(self.pty.a)} if i == 0 else {},
                         request=request)
        self.cs = self.pool.chargers
        ports = ",".join(str(p) for p in self.pool.sim_ports)
        self.meter = MeterServer("SDM630", self.pty.b, tmp_path, ports, "L123", load)
        self.loads = [(0.0, list(load))]  # (host time from which it holds, amps per phase)
        self.watch = Watch(self.cs)
        self.lag = []  # (node, what, t_us, offered, limit): an offer above a limit
        self.watch.hooks.append(self._limits_hook)

    def start(self):
        self.meter.start()
        self.pool.start()

    def close(self):
        self.pool.close()
        self.meter.stop()
        self.pty.close()

    def set_load(self, load):
        """Changes the house load; returns once the master's pool limit has followed."""
        old = min(limit_for(self.loads[-1][1]))
        self.loads.append((time.monotonic(), list(load)))
        self.meter.load = list(load)  # kept when the meter process is started again
        self.meter.ctl(op="load", amps=list(load))
        new = min(limit_for(load))

        def followed(ss):
            # The master's reading shows the new load (the chargers load all phases
            # alike), then its pool limit moves.
            m = ss[0]["meter"]
            seen = m and m["amps"] and all(
                abs((m["amps"][p] - m["amps"][0]) - (load[p] - load[0])) < 1.0
                for p in (1, 2))
            pool = bal(ss[0], "pool_limit_a")
            return seen and pool is not None and (
                pool <= new + 1.0 if new < old else pool >= new - 1.0)

        t = time.monotonic()
        self.watch.wait(followed, REACT_S + 1, f"pool limit {new} A from the meter")
        return time.monotonic() - t

    def plug_all(self, idx=None):
        for i in idx if idx is not None else range(len(self.cs)):
            plug(self.cs[i], phases=3)

    # ---- checks ----------------------------------------------------------------------------
    def _limits_hook(self, snaps):
        """Each charger's offer against its own limits, seen in the same snapshot."""
        for i, s in enumerate(snaps):
            if not s or not s.get("balance"):
                continue
            lims = [("balance", s["balance"]["limit_a"])]
            if s.get("meter"):
                lims.append(("power", s["meter"]["limit_a"]))
            for what, lim in lims:
                if lim is not None and s["offered_a"] > lim + 1e-6:
                    self.lag.append((i, what, s["t_us"], s["offered_a"], lim))

    def check_own_limits(self):
        """An offer above the charger's balance (or, on the master, power) limit is
        allowed only until the next control tick: every such sample must be followed
        within TICK_LAG_S by one of the same charger that is within its limits."""
        seen = {}
        for i, what, t_us, off, lim in self.lag:
            seen.setdefault((i, what), []).append((t_us, off, lim))
        for (i, what), runs in seen.items():
            first = runs[0][0]
            prev = first
            for t_us, off, lim in runs[1:]:
                if t_us - prev > TICK_LAG_S * 1e6:
                    first = t_us  # a new run
                assert (t_us - first) / 1e6 <= TICK_LAG_S, \
                    f"node{i + 1} offers {off} A above its {what} limit {lim} A for " \
                    f"{(t_us - first) / 1e6:.2f} s"
                prev = t_us

    def allowed(self, t0, t1):
        """Per phase, the most any limit in force from t0 - REACT_S to t1 allows."""
        out = [0.0, 0.0, 0.0]
        for k, (since, load) in enumerate(self.loads):
            until = self.loads[k + 1][0] if k + 1 < len(self.loads) else float("inf")
            if since <= t1 and until >= t0 - REACT_S:
                out = [max(a, b) for a, b in zip(out, limit_for(load), strict=True)]
        return out

    def check_pool(self):
        """The sum of offers per phase never above the pool limit (REACT_S after a
        rise of the house load, the old one). The watcher reads the chargers one after
        another, so a round that straddles one reallocation can show one node's offer
        from before it beside another's from after it (the master cuts before it raises,
        docs/load-balancing.md): an excess counts when two rounds in a row show it."""
        w = self.watch
        over_before = None
        for t0, t1, offered in w.rounds:
            sums = w.phase_sums(offered)
            lim = self.allowed(t0, t1)
            over = None
            for p in range(3):
                if sums[p] > lim[p] + 1e-6:
                    over = (f"L{p + 1}: offers {offered} = {sums[p]} A above {lim[p]} A "
                            f"{t0 - w.rounds[0][0]:.1f} s after the first look")
            assert not (over and over_before), f"{over_before}, and in the next round {over}"
            over_before = over
        self.check_own_limits()

    def drawing(self, timeout=10):
        """Waits until the meter sees the cars draw what they are offered (the first
        current flows only after the relays close, about a second after the offer)."""
        load = self.loads[-1][1]

        def seen(snaps):
            m = snaps[0] and snaps[0]["meter"]
            o = offers(snaps)
            return m and m["amps"] and all(
                m["amps"][p] >= load[p] + sum(a or 0 for a in o) - 1.0 for p in range(3))

        self.watch.wait(seen, timeout, "the meter sees the cars' current")

    def settled(self, pred, timeout, what):
        """Waits until pred(offers) holds in two rounds in a row."""
        ok = [0]

        def both(snaps):
            ok[0] = ok[0] + 1 if pred(offers(snaps)) else 0
            return ok[0] >= 2

        self.watch.wait(both, timeout, what)
        return self.watch.offers()


@pytest.fixture
def meter_pool(request, tmp_path):
    made = []

    def make(n, load=LOAD):
        mp = MeterPool(tmp_path, request, n, load)
        made.append(mp)
        mp.start()
        w = mp.watch
        w.wait(lambda ss: all(bal(s, "master") == 1 for s in ss), 15, "node 1 master")
        w.wait(lambda ss: bal(ss[0], "pool_limit_a") == min(limit_for(load)), 10,
               "pool limit from the meter")
        return mp

    yield make
    for mp in made:
        mp.close()


def _total(o):
    return sum(a or 0 for a in o)  # None: a charger that did not answer this round


def _charging(o):
    return sum(1 for a in o if a and a >= 6)


def _near(a, b, tol=0.6):
    return a is not None and abs(a - b) <= tol


# ---- scenarios ---------------------------------------------------------------------------------
def test_three_nodes_cars_arrive_and_house_load_steps(meter_pool):
    """Cars arrive one by one (a new car gets room within two cycles), then the house
    load on L2 steps up and down: the offers follow, per phase never above
    max_house_current_a minus the other loads (manual §10, §8.1.2 point 12)."""
    t_start = time.monotonic()
    mp = meter_pool(3)
    w, cs = mp.watch, mp.cs
    mp.plug_all([0])
    mp.settled(lambda o: o[0] == 32, 10, "one car: its max (pool 35 A)")
    for i in (1, 2):
        mp.plug_all([i])
        t = time.monotonic()
        w.wait(lambda ss, i=i: (offers(ss)[i] or 0) >= 6, ROOM_S, f"car {i + 1} gets room")
        print(f"car {i + 1}: room after {time.monotonic() - t:.1f} s")
    o = mp.settled(lambda o: _total(o) >= 33 and all((a or 0) >= 11 for a in o), 20,
                   "three share 35 A")
    print("three cars, load 5 A:", o)
    mp.drawing()
    # The house takes 15 A more on L2: the pool is 23 A on L2.
    took = mp.set_load([5.0, 20.0, 5.0])
    w.wait(lambda ss: _total(offers(ss)) <= 20, REACT_S, "offers cut to 20 A")
    print(f"pool limit followed the meter after {took:.1f} s")
    o = mp.settled(lambda o: _charging(o) == 3 and _total(o) >= 18, 15, "three share 20 A")
    print("load 20 A on L2:", o)
    # The load goes: the pool grows back, the nodes follow.
    mp.set_load(LOAD)
    o = mp.settled(lambda o: _total(o) >= 33 and all((a or 0) >= 11 for a in o), 30,
                   "three share 35 A again")
    print("load back to 5 A:", o)
    snap = cs[0].snapshot()
    assert snap["meter"]["ok"] and not snap["errors"]
    mp.check_pool()
    print(f"3-node meter test {time.monotonic() - t_start:.1f} s, worst sum {w.worst}")


def test_three_nodes_meter_lost(meter_pool):
    """The meter stops answering: after LOST_S the master shows ERR MET and the pool
    limit is 0 (house load unknown: nobody charges); the other nodes pause without a
    fault of their own. The meter back: after RECOVER_S all charge again."""
    mp = meter_pool(3)
    w = mp.watch
    mp.plug_all()
    mp.settled(lambda o: _charging(o) == 3 and _total(o) >= 33, 25, "three share 35 A")
    t = time.monotonic()
    mp.meter.stop()
    w.wait(lambda ss: "MET" in ss[0]["errors"], LOST_S + METER_CYCLE_S + 3,
           "ERR MET on the master")
    took = time.monotonic() - t
    assert took >= LOST_S - METER_CYCLE_S, f"ERR MET after {took:.1f} s"
    w.wait(lambda ss: offers(ss) == [0, 0, 0], 2 * CYCLE_S + 2, "nobody charges")
    for s in w.snaps[1:]:
        assert s["errors"] == [] and bal(s, "pool_limit_a") == 0, s["errors"]
        assert not bal(s, "fallback") and s["display"] != MASTER_LOST_TEXT
        assert s["session"]["active"], "the session is kept"
    mp.meter.start()
    t = time.monotonic()
    w.wait(lambda ss: "MET" not in ss[0]["errors"], RECOVER_S + 2 * METER_CYCLE_S + 3,
           "ERR MET cleared")
    assert time.monotonic() - t >= RECOVER_S - METER_CYCLE_S
    mp.settled(lambda o: _charging(o) == 3, 25, "all charge again")
    mp.check_pool()


def test_master_offer_within_power_and_balance(meter_pool):
    """On the meter master the power limit (its own headroom, which counts the other
    chargers as house load) applies beside its balance allocation: its offer is never
    above either, also while the others take their share and the load steps."""
    mp = meter_pool(3)
    w = mp.watch
    bindings = set()
    w.hooks.append(lambda ss: ss[0] and ss[0]["session"]["active"]
                   and bindings.add(ss[0]["limit_binding"]))
    mp.plug_all([0])
    mp.settled(lambda o: o[0] == 32, 10, "master alone: 32 A")
    mp.plug_all([1, 2])
    mp.settled(lambda o: _total(o) >= 33, 20, "three charge")
    mp.drawing()
    # The master reads the rise first: its own headroom is gone (pause, power binding)
    # before the next allocation cuts the others.
    mp.set_load([5.0, 24.0, 5.0])
    mp.settled(lambda o: _total(o) <= 16 and _charging(o) >= 2, 20, "16 A left")
    mp.set_load(LOAD)
    mp.settled(lambda o: _charging(o) == 3 and _total(o) >= 30, 30, "35 A again")
    mp.check_pool()  # includes: never above either limit past the next control tick
    assert {"power", "balance"} <= bindings, f"binding limits seen: {bindings}"


def test_eight_nodes_house_load_step(meter_pool):
    """8 chargers, 35 A at the meter: five charge, three wait. The house load on L2
    steps up to leave 17 A (two charge) and back: the sum per phase follows."""
    t_start = time.monotonic()
    mp = meter_pool(8)
    w = mp.watch
    mp.plug_all()
    o = mp.settled(lambda o: _charging(o) == 5 and _total(o) >= 30, 30, "five charge")
    print("8 cars, 35 A:", o)
    mp.drawing()
    took = mp.set_load([5.0, 23.0, 5.0])
    w.wait(lambda ss: _total(offers(ss)) <= 17, REACT_S, "offers cut to 17 A")
    print(f"pool limit followed the meter after {took:.1f} s")
    o = mp.settled(lambda o: _charging(o) == 2, 15, "two charge")
    print("8 cars, 17 A:", o)
    mp.set_load(LOAD)
    o = mp.settled(lambda o: _charging(o) == 5 and _total(o) >= 30, 30, "five charge again")
    print("8 cars, 35 A again:", o)
    mp.check_pool()
    dt = time.monotonic() - t_start
    print(f"8-node meter step {dt:.1f} s, worst sum {w.worst}")


def test_eight_nodes_master_killed_and_restarted(meter_pool):
    """The meter master is killed: after MASTER_TIMEOUT_S every node falls back to at
    most min(its allocation, 6 A) (a waiting one stays at 0), shows the warning on its
    display, and no node takes over (none knows the house load). The master restarted:
    it allocates from the meter again and the warning goes."""
    mp = meter_pool(8)
    w, cs = mp.watch, mp.cs
    mp.plug_all()
    before = mp.settled(lambda o: _charging(o) == 5 and _total(o) >= 30, 30, "five charge")
    cs[0].kill()
    w.wait(lambda ss: all(bal(s, "fallback") for s in ss[1:]), MASTER_TIMEOUT_S + 3, "fallback")
    w.wait(lambda ss: all(s["display"] == MASTER_LOST_TEXT for s in ss[1:]), 2, "warning shown")
    w.wait(lambda ss: all((offers(ss)[i] or 0) <= min(before[i], 6) for i in range(1, 8)),
           1.0, "fallback share applied")
    for s in w.snaps[1:]:
        assert bal(s, "master") == 1 and bal(s, "fault") == "master_lost"
        assert s["errors"] == [] and s["leds"]["fault"]["pattern"] == "slow"
    charging = [i for i in range(1, 8) if before[i]]
    assert all(w.snaps[i]["relays_closed"] for i in charging), "charging on at 6 A"
    cs[0].start()
    plug(cs[0], phases=3)  # a fresh process: the simulated car is plugged in again
    w.wait(lambda ss: not any(bal(s, "fallback") for s in ss), 15, "master allocates again")
    w.wait(lambda ss: all(s["display"] != MASTER_LOST_TEXT for s in ss), 3, "warning gone")
    mp.settled(lambda o: _charging(o) == 5 and _total(o) >= 30, 30, "five charge again")
    mp.check_pool()
