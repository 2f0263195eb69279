# A pool's share of the solar surplus (docs/load-balancing.md, "Charge modes"): the master,
# which reads the grid meter, turns the export into the pool's budget in the charge modes
# `solar` and `solar_min` and decides which nodes charge on it, by the rules of one
# charger (docs/power-management.md, "Solar charging") applied node by node.
#
# The surplus is the pool's own power plus the export, shared evenly over the phases the
# pool loads. In `solar` a node starts once the surplus has covered its minimum on top of
# those charging for the start delay (the one waiting longest first); while it cannot keep
# every charging node at its minimum for the stop delay, one node pauses (the one charging
# longest, once it has run the minimum on-time), and the next one only after another stop
# delay. In `solar_min` every node that needs current gets its minimum and the surplus
# above it. The budget falls at once and rises by RAISE_STEP_A per node and reading.
#
# Every node of a pool in a solar mode counts its session's energy from surplus (count()).
#
# Imported by evse/balance/node.py only while the pool's charge mode is not `normal` (the
# master's PoolSolar, every node's count()), and forgotten after.
import time
from micropython import const

import evse
from evse import limits
from evse.balance.codec import ALL, ST_WANT, phases
from evse.balance.planner import MIN_ON_OLD_MS, Node, cap_age, loaded, mins, pool_w
from evse.power import RAISE_STEP_A
import log

_log = log.get("balance")

_MAX_GAP_MS = const(5000)  # a longer gap between ticks counts no energy from surplus
_UP = const(0)  # in `since`: the surplus covers the next node since then
_LOW = const(1)  # in `since`: the surplus does not cover the charging nodes since then


def _fits(ns, sur):
    """True when `sur` amps per phase cover the minimum of every Node in ns."""
    for p in range(3):
        if mins(ns, p) > sur + 1e-9:
            return False
    return True


def count(bal, now):
    """The session's energy from surplus on node `bal` (its Balancer), each tick: its own
    power times the pool's share from surplus of the master's last reading (allocation
    byte 5 bits 3-7), for the time since the tick before. One charger counts by the same
    rule (evse/solar.py _count); without a fresh allocation (fallback) nothing counts.
    Back in `normal` this module is forgotten: a mode switch back costs nothing."""
    if bal.pool_mode == "normal":
        bal.solar = bal.solar_ms = bal.share = None  # the master's PoolSolar too
        evse.unload("evse.balance.surplus")
        return
    sess = getattr(bal.ch, "session", None)
    last = bal.solar_ms
    bal.solar_ms = now  # every tick: never compared across the ticks wrap
    if sess is None:
        return
    if getattr(sess, "solar_wh", None) is None:
        sess.solar_wh = 0.0  # the record names it: counted in this session
    share = bal.share
    if last is None or not share or bal.fallback:
        return
    dt = time.ticks_diff(now, last)
    m = bal.metering
    # Only a fresh reading while current is offered: a meter that stopped answering keeps
    # its last power, which a paused charge did not draw.
    w = getattr(m, "power_w", 0.0) if getattr(m, "ok", False) and bal.ch.offered_a else 0.0
    if 0 < dt <= _MAX_GAP_MS and w > 0:
        sess.solar_wh += w * share * dt / 3600000


class PoolSolar:
    def __init__(self):
        self.mode = None
        self.ms = None  # the meter reading last taken (power.last_ok_ms)
        self.grid_w = None  # signed power at the grid connection (import > 0)
        self.surplus_a = None  # per phase the pool loads; None: unknown
        self.mask = ALL  # the phases the pool loads
        self.need_w = None  # export still missing for the next node to start
        self.reason = None  # why the surplus is unknown (no_meter, meter_lost, ...)
        self.share = None  # of the pool's power, the part from surplus (None: unknown)
        self.budget = [0.0, 0.0, 0.0]  # the pool limit of the mode, per phase (damped)
        self.run = {}  # addr -> when it started on surplus (`solar`)
        self.wait = {}  # addr -> since when it waits for surplus (`solar`)
        self.since = {}  # _UP, _LOW -> since when
        self.next = None  # the address that starts next (`solar`)
        self._up_need = 0.0  # the amps the surplus has covered since since[_UP]
        self._u = 230.0  # the voltage of the last reading
        self._ghost = Node(0)  # the next node while nobody waits: 6 A on the pool's phases

    def plan(self, now, pw, s, nodes, limit):
        """(the pool limit per phase in this mode, at most `limit`; the addresses that
        may charge, None: all). nodes: every Node, the master first; pw: the master's
        power manager, None when it has no meter. Once per allocation cycle."""
        mode = s["charge_mode"]
        entered = mode != self.mode
        if entered:
            _log.info("pool charge mode %s", mode)
            self.mode = mode
            self.run = {}
            self.wait = {}
            self.since = {}
        for d in (self.run, self.wait, self.since):
            cap_age(d, now, MIN_ON_OLD_MS)
        want = [n for n in nodes if n.state == ST_WANT]
        self.mask = loaded(nodes)
        new = self._take(pw, nodes)
        sur = self.surplus_a
        if mode == "solar_min":
            self.run = {}
            on = want
        elif sur is None:
            self.run = {}
            self.wait = {}
            self.since = {}
            on = []
        else:
            on = self._solar(now, s, want, sur, entered)
        b = self.budget
        for p in range(3):
            floor = 0.0
            k = 0
            for n in on:
                if n.mask & (1 << p):
                    floor += n.min_a
                    k += 1
            t = floor
            if sur is not None and k and self.mask & (1 << p):
                t = max(sur, floor)
            if t < b[p]:
                b[p] = t  # down at once
            elif new:
                b[p] = min(t, b[p] + RAISE_STEP_A * (k or 1))
            b[p] = max(b[p], floor)  # never below the charging nodes' minimums
        out = [min(limit[p], b[p]) for p in range(3)]
        return out, (None if mode == "solar_min" else set(self.run))

    def _take(self, pw, nodes):
        """The surplus of a new meter reading; True when one was taken."""
        if pw is None:
            return self._unknown("no_meter")
        if pw.lost:
            return self._unknown("meter_lost")
        if pw.last_ok_ms is None:
            return self._unknown("no_reading")
        if pw.last_ok_ms == self.ms:
            return False
        self.ms = pw.last_ok_ms
        from evse import meters  # a valid reading: imported with the meter's map

        p = meters.total_w(pw.values)
        if p is None:
            return self._unknown("no_power")  # currents only: no direction
        u = meters.volts(pw.values)
        own = pool_w(pw, u, nodes[1:])
        w = own - p
        # The share of the pool's power from surplus, by the rule of one charger (the
        # import counted as the pool's first: evse/solar.py _count); each node counts its
        # own power times it (count()).
        self.share = max(0.0, min(1.0, w / own)) if own > 0 else 0.0
        self.grid_w = p
        self.reason = None
        self._u = u
        self.surplus_a = max(0.0, limits.floor_tenth(w / (len(phases(self.mask)) * u)))
        return True

    def _unknown(self, why):
        self.surplus_a = self.grid_w = self.need_w = self.share = None
        self.reason = why
        self.ms = None
        return False

    def _solar(self, now, s, want, sur, entered):
        """`solar`: who charges on the surplus. Returns their Nodes."""
        by = {}
        for n in want:
            by[n.addr] = n
        for a in list(self.run):
            if a not in by:
                del self.run[a]
        for a in list(self.wait):
            if a not in by or a in self.run:
                del self.wait[a]
        for a in by:
            if a not in self.run and a not in self.wait:
                self.wait[a] = now
        if entered:
            # Switched to `solar`: the nodes charging now go on while the surplus covers
            # them (no start delay); the others stop in this cycle.
            for n in want:
                if n.offered_a > 0 and _fits([by[a] for a in self.run] + [n], sur):
                    self.run[n.addr] = now
                    del self.wait[n.addr]
        on = [by[a] for a in self.run]
        if _fits(on, sur):
            self.since.pop(_LOW, None)
        else:
            self.since.setdefault(_LOW, now)
            if limits.held(now, self.since.get(_LOW), s["solar_stop_s"] * 1000):
                # One node at a time, the one charging longest of those that have run
                # their minimum on-time; the next one after another stop delay.
                old = None
                for a in self.run:
                    age = time.ticks_diff(now, self.run[a])
                    if age >= s["solar_min_on_s"] * 1000 and (old is None or (age, -a) > old):
                        old = (age, -a)  # on a tie the lower address
                if old is not None:
                    a = -old[1]
                    _log.info("solar: node %d pauses, %.1f A of surplus", a, sur)
                    del self.run[a]
                    self.wait[a] = now
                    self.since.pop(_LOW, None)
                    on = [by[x] for x in self.run]
        nxt = None
        for a in self.wait:  # the longest wait; on a tie the lower address
            d = 1 if nxt is None else time.ticks_diff(self.wait[nxt], self.wait[a])
            if d > 0 or d == 0 and a < nxt:
                nxt = a
        self.next = nxt
        g = self._ghost
        g.mask = self.mask
        cand = g if nxt is None else by[nxt]
        need = 0.0
        for p in phases(cand.mask):
            need = max(need, mins(on + [cand], p))
        self.need_w = max(0.0, (need - sur) * len(phases(self.mask)) * self._u)
        if _fits(on + [cand], sur):
            if _UP not in self.since or need > self._up_need + 1e-9:
                # The delay is served at the need of the node that starts: the time the
                # surplus covered a smaller one (6 A of the next node while nobody
                # waited, a node that left) does not count for one that needs more.
                self.since[_UP] = now
                self._up_need = need
            if nxt is not None and limits.held(now, self.since.get(_UP), s["solar_start_s"] * 1000):
                _log.info("solar: node %d starts, %.1f A of surplus", nxt, sur)
                self.run[nxt] = now
                del self.wait[nxt]
                self.since.pop(_UP, None)
                on.append(cand)
        else:
            self.since.pop(_UP, None)
        return on

    def view(self, addr, now, s):
        """/api/status `solar` of the master (node `addr`): the pool's mode, surplus, and
        why this node waits."""
        mode = self.mode
        wait = None
        start = stop = None
        if mode == "solar" and self.reason is not None:
            wait = self.reason  # the surplus is unknown: nobody charges
        elif mode == "solar" and addr in self.wait:
            wait = "export"
            if addr == self.next and _UP in self.since:
                wait = "start_delay"
                start = max(0, s["solar_start_s"] - time.ticks_diff(now, self.since[_UP]) // 1000)
        elif mode == "solar" and addr in self.run and _LOW in self.since:
            stop = max(0, s["solar_stop_s"] - time.ticks_diff(now, self.since[_LOW]) // 1000)
        return {
            "mode": mode,
            "grid_w": None if self.grid_w is None else round(self.grid_w),
            "surplus_a": self.surplus_a,
            "phases": len(phases(self.mask)),
            "limit_a": min(self.budget[p] for p in phases(self.mask)),
            "running": addr in self.run,
            "waiting": wait,
            "need_w": None if self.need_w is None or wait != "export" else round(self.need_w),
            "start_in_s": start,
            "stop_in_s": stop,
            "pool": sorted(self.run),
        }
