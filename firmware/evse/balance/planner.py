# The master's plan (docs/load-balancing.md, "Allocation"): what it knows of each node,
# who charges and who waits (rotation), demand caps, and raises staged behind the cuts.
import time
from micropython import const

from evse import limits
from evse.balance.allocate import allocate
from evse.balance.codec import ALL, ST_IDLE, ST_WANT, phases
import log

_log = log.get("balance")

MIN_A = limits.MIN_A  # IEC 61851-1: the smallest current a PWM may offer
CYCLE_MS = const(1000)  # the master allocates this often
ROTATE_MS = 15 * 60 * 1000  # a charging node yields to a waiting one after this turn
# A node allocated current but drawing less than this is not charging (a car asleep in
# B2, its wake-up still to come): its turn stands still, at most SLEEP_GRACE_MS a turn, so
# a car that does not wake, or is full, yields in the end all the same.
SLEEP_A = 1.0
SLEEP_GRACE_MS = const(120000)
UNUSED_A = 2.0  # draw this far below the offer ...
UNUSED_CYCLES = const(3)  # ... for this many cycles: the rest goes to the others
ASK_AGAIN_A = 0.5  # draw within this of the capped allocation: the car asks again
CAP_LIFT_MS = 180000  # a capped car gets its full share again this often ...
LIFT_GRACE_MS = const(15000)  # ... and this long to take it before it is capped again
# Stored times are kept at most this old (cap_age): past every window they are compared
# with, the answers stay the same, and none reads as new once the ticks wrap.
_TURN_OLD_MS = const(1 << 28)  # 3.1 days: a turn or a wait, far past ROTATE_MS
# Times compared with solar_min_on_s (at most 7200 s) and the shorter start/stop holds of
# the pool's solar modes and tariff (surplus.py, pooltariff.py).
MIN_ON_OLD_MS = const(7200001)


def cap_age(d, now, cap_ms):
    """Keeps every time in dict `d` at most cap_ms old. A time compared days later would
    read as recent once the ticks wrap (ticks_diff is right only below 2**29 ms, 6.2 days
    on a 32-bit port); past the cap every comparison gives the same answer."""
    for k in d:
        if time.ticks_diff(now, d[k]) > cap_ms:
            d[k] = time.ticks_add(now, -cap_ms)


def capped(t, now, cap_ms):
    """Time t (None: none) kept at most cap_ms old, as cap_age keeps a dict's."""
    if t is not None and time.ticks_diff(now, t) > cap_ms:
        return time.ticks_add(now, -cap_ms)
    return t


class Node:
    """What is known of one pool member (from its status frames, or ourselves)."""

    def __init__(self, addr):
        self.addr = addr
        self.state = ST_IDLE
        self.mask = ALL
        self.meter = False
        self.min_a = MIN_A
        self.max_a = MIN_A
        self.draw_a = 0.0
        self.offered_a = 0.0
        self.starting = False  # B2, or its contacts closed less than START_MS ago
        self.seen_ms = 0
        self.last = None  # (epoch, seq) of the last status accepted

    def counted_a(self):
        """What the master may give back of this node's current at the meter: its draw,
        never more than it offers now (after a cut the meter may still see the old
        current while the node already reports its new offer)."""
        return min(self.draw_a, self.offered_a)

    def as_dict(self):
        return {"addr": self.addr, "state": self.state, "mask": self.mask,
                "meter": self.meter, "max_a": self.max_a, "draw_a": self.draw_a,
                "offered_a": self.offered_a}


def mins(ns, p):
    """The minimum currents of the Nodes in ns that load phase p, summed."""
    t = 0.0
    for n in ns:
        if n.mask & (1 << p):
            t += n.min_a
    return t


def pool_w(pw, u, nodes, sent=None):
    """The pool's own power at voltage u at a reading of the master's meter (power manager
    `pw`): the master's own of the same reading, and each other node's draw, never more
    than it offers now (Node.counted_a), on every phase it loads. nodes: the others.
    sent: the master's last allocations (Planner.sent): a node starting, or sent current
    it does not report offering yet (its report lags the frame), counts what it was sent
    at least (its car ramps up before its reports show it)."""
    a = pw.own_a
    w = (a[0] + a[1] + a[2]) * u  # evse/meters.py own_w, without importing the meter code
    for n in nodes:
        a = n.counted_a()
        if sent is not None and (n.starting or not n.offered_a):
            a = max(a, sent.get(n.addr, 0.0))
        w += a * len(phases(n.mask)) * u
    return w


def loaded(nodes):
    """The phases the pool loads: those of the Nodes that need current, else of all."""
    mask = 0
    for n in nodes:
        if n.state == ST_WANT:
            mask |= n.mask
    if not mask:
        for n in nodes:
            mask |= n.mask
    return mask or ALL


class MeterLimit:
    """The pool limit per phase behind the master's meter (docs/load-balancing.md,
    "Allocation" point 1): taken once per valid reading, held until the next."""

    def __init__(self):
        self.ok = [0.0, 0.0, 0.0]  # the pool limit of the last valid meter reading
        self.ms = None  # when that reading was taken (power.last_ok_ms)
        self.seen = None  # the pool limits the last two readings gave on their own

    def limit(self, pw, settings, nodes):
        """The pool limit now; pw: the power manager, nodes: the others' Nodes."""
        if pw.lost or pw.last_ok_ms is None:
            self.seen = None
            return [0.0, 0.0, 0.0]  # house load unknown: nobody charges
        self.take(pw, settings, nodes)
        # Until the next valid reading the limit of this one stays: the others' draws
        # move on, the headroom it gave does not. Counting a rise the meter has not
        # seen would give the same amps twice (a reading that is late, or a meter that
        # stopped answering, while the cars ramp up).
        return list(self.ok)

    def take(self, pw, settings, nodes):
        """A new valid meter reading, at the first tick after it: its pool limit per
        phase is the headroom (which already gives back our own current) plus the
        others' draw as they report it now, as little of it as the meter may have seen."""
        if pw is None or pw.last_ok_ms is None or pw.last_ok_ms == self.ms:
            return
        self.ms = pw.last_ok_ms
        max_a = limits.supply_a(settings)
        h = pw.headroom_a
        known = [x for x in h if x is not None]
        out = [0.0, 0.0, 0.0]
        if known:
            for p in range(3):
                room = h[p] if h[p] is not None else min(known)
                for n in nodes:
                    if n.mask & (1 << p):
                        room += n.counted_a()
                out[p] = max(0.0, min(max_a, room))
        # A limit above both readings before counts from the second reading that shows
        # it; a fall at once. A car that draws less on its own is in the meter's reading
        # before its next report, and counting its old draw would give the same amps
        # twice for a reading. Coming back to where it was after a dip counts at once:
        # a car ramping up is in the reading before its report, which dips the limit
        # for a reading.
        seen = self.seen
        self.seen = (list(out), seen[0] if seen is not None else list(out))
        if seen is not None:
            for p in range(3):
                out[p] = min(out[p], max(seen[0][p], seen[1][p]))
        self.ok = out


class Planner:
    """The master's side: who charges (rotation), demand caps (unused current), staged
    raises so that a node only gets more once the others have reported their cut."""

    def __init__(self, rotate_ms=ROTATE_MS):
        self.rotate_ms = rotate_ms
        self.sent = {}  # addr -> amps last sent
        self.target = {}
        self.cap = {}  # addr -> demand cap (max_a unless the car leaves some unused)
        self._low = {}  # addr -> cycles in a row drawing well below the offer
        self._capped = {}  # addr -> when its demand cap last went below its max
        self._lift = {}  # addr -> when its cap was last lifted (CAP_LIFT_MS)
        self.since = {}  # addr -> when it started charging or waiting
        self.charging = {}  # addr -> True admitted, False waiting
        # addr -> when its turn began: charging, it was cut because the pool limit fell
        # (not at its turn's end). It keeps its place at the head of the queue until
        # its turn would have ended.
        self.preempted = {}
        self.waiting = set()
        self.slept = {}  # addr -> ms its turn stood still this turn (SLEEP_A)
        self._plan_ms = None  # the last plan

    def forget(self, addr):
        for d in (self.sent, self.target, self.cap, self._low, self._capped, self._lift,
                  self.since, self.charging, self.preempted, self.slept):
            d.pop(addr, None)

    def _hold_turns(self, now, want):
        """The turn of a node that is allocated current but draws none does not run."""
        last = self._plan_ms
        self._plan_ms = now
        if last is None:
            return
        dt = min(max(time.ticks_diff(now, last), 0), 2 * CYCLE_MS)  # a stall counts once
        for n in want:
            a = n.addr
            if not (self.charging.get(a) and a in self.since and n.draw_a < SLEEP_A
                    and self.sent.get(a, 0.0) >= n.min_a):
                continue
            d = min(dt, SLEEP_GRACE_MS - self.slept.get(a, 0))
            if d > 0:
                self.since[a] = time.ticks_add(self.since[a], d)
                self.slept[a] = self.slept.get(a, 0) + d

    def _demand(self, n, now):
        a = n.addr
        cap = min(self.cap.get(a, n.max_a), n.max_a)
        if n.starting:
            # Not asked yet, or still starting: what it draws says nothing of what it
            # can take (a car may need seconds, or 8 A, to start).
            cap = n.max_a
            self._low[a] = 0
        elif (n.offered_a >= n.min_a and n.draw_a < n.offered_a - UNUSED_A
              and not self._lifted(a, now)):
            self._low[a] = self._low.get(a, 0) + 1
            if self._low[a] >= UNUSED_CYCLES:
                cap = max(n.min_a, min(cap, int((n.draw_a + 1.0) * 2 + 0.999) / 2))
        else:
            self._low[a] = 0
        if cap < n.max_a and n.draw_a >= cap - ASK_AGAIN_A:
            cap = n.max_a  # it uses what it has: give back the rest
            self._low[a] = 0
        if cap < n.max_a:
            since = self._capped.get(a)
            if since is None:
                self._capped[a] = now
            elif time.ticks_diff(now, since) >= CAP_LIFT_MS:
                # Now and then the whole share again: a car that draws a little below
                # its offer (5.5 A of 6) would otherwise never show that it can take more.
                cap = n.max_a
                self._low[a] = 0
                self._lift[a] = now
                _log.info("node %d: demand cap lifted", a)
        if cap >= n.max_a:
            self._capped.pop(a, None)
        self.cap[a] = cap
        return cap

    def _lifted(self, a, now):
        """True within LIFT_GRACE_MS of its cap's lift: the raise takes a few cycles to
        reach the car, and the car up to 5 s to follow it."""
        t = self._lift.get(a)
        if t is not None and time.ticks_diff(now, t) >= LIFT_GRACE_MS:
            del self._lift[a]
            t = None
        return t is not None

    def _kept_place(self, a, now):
        turn = self.preempted.get(a)
        return turn is not None and time.ticks_diff(now, turn) < self.rotate_ms

    def plan(self, now, limit_a, nodes, raises=True, only=None):
        """nodes: Node list (the master included). Returns {addr: amps to send}.
        raises False: cuts only (what silent nodes hold is not known yet).
        only: the addresses that may charge (a solar pool's, evse/balance/surplus.py);
        the others that need current wait. None: all of them."""
        cap_age(self.since, now, _TURN_OLD_MS)
        cap_age(self.preempted, now, _TURN_OLD_MS)
        cap_age(self._capped, now, CAP_LIFT_MS)
        cap_age(self._lift, now, LIFT_GRACE_MS)
        for a in list(self.sent):
            if not any(n.addr == a for n in nodes):
                self.forget(a)
        want = []
        for n in nodes:
            if n.addr not in self.sent:
                self.sent[n.addr] = n.offered_a  # a new master starts from what it sees
            if n.state == ST_WANT and (only is None or n.addr in only):
                want.append(n)
            else:
                self.cap.pop(n.addr, None)
                self._low.pop(n.addr, None)
                self._capped.pop(n.addr, None)
                self._lift.pop(n.addr, None)
                self.charging.pop(n.addr, None)
                self.since.pop(n.addr, None)
                self.preempted.pop(n.addr, None)
                self.slept.pop(n.addr, None)
        self._hold_turns(now, want)
        anyone_waits = any(self.charging.get(n.addr) is False for n in want)

        def turn_over(a):
            return (anyone_waits and self.charging.get(a)
                    and time.ticks_diff(now, self.since.get(a, now)) >= self.rotate_ms)

        def rank(n):
            a = n.addr
            age = time.ticks_diff(now, self.since.get(a, now))
            if self.charging.get(a):
                if turn_over(a):
                    return (2, 0, -age, a)  # turn over: yields to who waits
                return (0, 0, 0, a)
            if self._kept_place(a, now):
                return (1, 0, 0, a)  # cut for room: first again, in the charging order
            return (1, 1, -age, a)  # waits (or new): longest wait first

        want.sort(key=rank)
        ended = [n.addr for n in want if turn_over(n.addr)]
        spec = [(n.mask, n.min_a, self._demand(n, now)) for n in want]
        amps = allocate(limit_a, spec)
        target = {}
        self.waiting = set()
        if only is not None:
            self.waiting.update(n.addr for n in nodes if n.state == ST_WANT and n.addr not in only)
        for i in range(len(want)):
            a = want[i].addr
            on = amps[i] > 0
            was = self.charging.get(a)
            if was is not on:
                self.charging[a] = on
                turn = self.preempted.pop(a, None)
                if on and turn is not None and time.ticks_diff(now, turn) < self.rotate_ms:
                    self.since[a] = turn  # back after a cut: its turn goes on
                else:
                    if was and a not in ended:
                        self.preempted[a] = self.since.get(a, now)
                    self.since[a] = now
                    self.slept.pop(a, None)  # a new turn, or a new wait
                _log.info("node %d %s", a, "charges" if on else "waits")
            if not on:
                self.waiting.add(a)
            target[a] = amps[i]
        for n in nodes:
            target.setdefault(n.addr, 0.0)
        self.target = target
        # Cuts apply at once; raises only within what is free while every node may still
        # offer max(what it was sent, what it reports). A cut sent now is not yet
        # applied (and a report may be stale or lost): until a later cycle the node may
        # still offer what it was sent before.
        sent = self.sent
        held = {}
        for n in nodes:
            a = n.addr
            held[a] = max(sent[a], n.offered_a)
            if target[a] <= sent[a]:
                sent[a] = target[a]
        for n in nodes:
            a = n.addr
            t = target[a]
            if t <= sent[a] or not raises:
                continue
            room = t - sent[a]
            for p in phases(n.mask):
                busy = 0.0
                for m in nodes:
                    if m.addr != a and m.mask & (1 << p):
                        busy += max(sent[m.addr], held[m.addr])
                room = min(room, limit_a[p] - busy - max(sent[a], n.offered_a))
            if room <= 0:
                continue
            new = int((sent[a] + room) * 2 + 1e-6) / 2
            if new >= n.min_a and new > sent[a]:
                sent[a] = min(new, t)
        return dict(sent)

