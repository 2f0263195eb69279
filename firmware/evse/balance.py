# Load balancing between chargers over CAN (manual §8, §8.1.2 point 12).
#
# Every charger with `lb_enabled` announces itself on the bus; the master (the charger
# wired to the meter, else the lowest live `can_addr` of a quorum of the pool's members)
# shares the pool limit among them and broadcasts each node's allocation, which feeds
# `charger.set_external_limit("balance")`. Protocol, allocation rules, members and
# quorum, timeouts and fallbacks: docs/load-balancing.md.
import time
from micropython import const

from evse import faults
from evse import limits
import atomicfile
import log
import periodic

_log = log.get("balance")

LIMIT_NAME = "balance"
VERSION = const(1)
ID_ALLOC = const(0x600)  # + destination address: master -> node
ID_STATUS = const(0x610)  # + sender address: node -> all
MAX_NODES = const(8)
POOL_ID = const(1)  # pool id when the settings have no `lb_pool_id`

ST_IDLE = const(0)  # no vehicle
ST_CONNECTED = const(1)  # vehicle, no session: needs nothing
ST_WANT = const(2)  # session running: needs an allocation
ST_FAULT = const(3)

MIN_A = limits.MIN_A  # IEC 61851-1: the smallest current a PWM may offer
CYCLE_MS = const(1000)  # the master allocates this often
STATUS_MS = const(500)  # every node announces itself this often
NODE_TIMEOUT_MS = const(3000)  # a node not heard this long is gone: its share is freed
MASTER_TIMEOUT_MS = const(3000)  # no allocation this long -> fallback
DISCOVER_MS = const(1500)  # a new master listens this long before allocating
CLASH_CLEAR_MS = const(3000)  # no frame with our address this long -> clash gone
ROTATE_MS = 15 * 60 * 1000  # a charging node yields to a waiting one after this turn
# A node allocated current but drawing less than this is not charging (a car asleep in
# B2, its wake-up still to come): its turn stands still, at most SLEEP_GRACE_MS a turn, so
# a car that does not wake, or is full, yields in the end all the same.
SLEEP_A = 1.0
SLEEP_GRACE_MS = const(120000)
FALLBACK_A = 6.0  # the safe share while the master is silent (at most the last allocation)
FALLBACK_HOLD_MS = const(60000)  # ... for this long; then the node pauses
MASTER_LOST_TEXT = "CAN MST LOST"  # shown in the display rotation during the fallback
GONE_HOLD_MS = const(65000)  # the master keeps a silent node's fallback share this long
# A dropped node surely runs on its fallback share this long after it was dropped: its
# last report may be STATUS_MS old, its master may have sent it one more allocation
# (CYCLE_MS) before noticing, and it notices MASTER_TIMEOUT_MS after that. Until then its
# whole last share stays reserved, and a share of unknown size (a node we did not
# allocate) holds back every raise.
FREE_MS = const(4500)  # MASTER_TIMEOUT_MS + CYCLE_MS + STATUS_MS
MEMBERS_FILE = "balance.json"  # in the data dir: the pool's members, survives restarts
UNUSED_A = 2.0  # draw this far below the offer ...
UNUSED_CYCLES = const(3)  # ... for this many cycles: the rest goes to the others
ASK_AGAIN_A = 0.5  # draw within this of the capped allocation: the car asks again
# A car starting draws nothing for a while: in the first START_MS of its session (B2: it
# has not asked yet) and after each close of its contacts its draw is no sign of what it
# can take (status byte 3 bit 6, "starting"), and its cap is lifted.
START_MS = const(30000)
CAP_LIFT_MS = 180000  # a capped car gets its full share again this often ...
LIFT_GRACE_MS = const(15000)  # ... and this long to take it before it is capped again
_TICK_MS = const(100)
_MAX_RX = const(32)  # frames handled per tick: bounded work
_ALL = const(7)  # phase mask L1|L2|L3
# Stored times are kept at most this old (_cap_age): past every window they are compared
# with, the answers stay the same, and none reads as new once the ticks wrap.
_ALLOC_OLD_MS = const(MASTER_TIMEOUT_MS + FALLBACK_HOLD_MS + 1)
_MASTER_OLD_MS = const(FREE_MS + 1)  # FREE_MS > DISCOVER_MS
_TURN_OLD_MS = const(1 << 28)  # 3.1 days: a turn or a wait, far past ROTATE_MS


def _cap_age(d, now, cap_ms):
    """Keeps every time in dict `d` at most cap_ms old. A time compared days later would
    read as recent once the ticks wrap (ticks_diff is right only below 2**29 ms, 6.2 days
    on a 32-bit port); past the cap every comparison gives the same answer."""
    for k in d:
        if time.ticks_diff(now, d[k]) > cap_ms:
            d[k] = time.ticks_add(now, -cap_ms)


# ---- codec -------------------------------------------------------------------------------
def _ha(a):
    """Amps -> half-amps in a byte, rounded down (an allocation is never overstated)."""
    v = int(a * 2 + 1e-6)
    return 0 if v < 0 else (255 if v > 255 else v)


def _ha_up(a):
    """Amps -> half-amps rounded up (a reported offer or draw is never understated)."""
    v = int(a * 2 + 0.999)
    return 0 if v < 0 else (255 if v > 255 else v)


def encode_status(buf, pool, seq, epoch, state, mask, meter, min_a, max_a, draw_a, offered_a,
                  starting=False):
    buf[0] = (VERSION << 4) | (epoch & 0x0F)
    buf[1] = pool & 0xFF
    buf[2] = seq & 0xFF
    buf[3] = (state & 3) | ((mask & 7) << 2) | (0x20 if meter else 0) | (0x40 if starting else 0)
    buf[4] = _ha(min_a)
    buf[5] = _ha(max_a)
    buf[6] = _ha_up(draw_a)
    buf[7] = _ha_up(offered_a)


def encode_alloc(buf, pool, seq, epoch, master, amps, waiting, n_nodes, limit_a):
    buf[0] = (VERSION << 4) | (epoch & 0x0F)
    buf[1] = pool & 0xFF
    buf[2] = seq & 0xFF
    buf[3] = master
    buf[4] = _ha(amps)
    buf[5] = 1 if waiting else 0
    buf[6] = n_nodes
    buf[7] = _ha(limit_a)


def decode(can_id, data, pool):
    """A frame of this pool as a tuple, or None for anything else (foreign, malformed):
    ("S", addr, epoch, seq, state, mask, meter, min_a, max_a, draw_a, offered_a, starting)
    ("A", dest, epoch, seq, master, amps, waiting, n_nodes, limit_a)"""
    if len(data) != 8 or data[0] >> 4 != VERSION or data[1] != pool:
        return None
    epoch = data[0] & 0x0F
    seq = data[2]
    if ID_STATUS < can_id <= ID_STATUS + MAX_NODES:
        b = data[3]
        state = b & 3
        mask = (b >> 2) & 7
        if b & 0x80 or mask == 0 or data[4] < 12 or data[5] < data[4]:
            return None
        return ("S", can_id - ID_STATUS, epoch, seq, state, mask, bool(b & 0x20),
                data[4] / 2, data[5] / 2, data[6] / 2, data[7] / 2, bool(b & 0x40))
    if ID_ALLOC < can_id <= ID_ALLOC + MAX_NODES:
        master = data[3]
        amps = data[4]
        if not 1 <= master <= MAX_NODES or data[5] > 1 or not 1 <= data[6] <= MAX_NODES:
            return None
        if 0 < amps < 12:
            return None  # 0 (pause) or at least 6 A
        return ("A", can_id - ID_ALLOC, epoch, seq, master, amps / 2, bool(data[5]),
                data[6], data[7] / 2)
    return None


def fresh(last, epoch, seq):
    """True when (epoch, seq) follows `last` = (epoch, seq) or None: a repeated or older
    frame is stale; a new epoch is a restarted sender."""
    if last is None or last[0] != epoch:
        return True
    return 1 <= ((seq - last[1]) & 0xFF) <= 127


# ---- allocation ----------------------------------------------------------------------------
def allocate(limit_a, nodes):
    """Shares a per-phase limit (3 floats) among nodes in priority order.

    nodes: list of (mask, min_a, cap_a); mask bits 0-2 = L1-L3 the node loads.
    Returns a list of amps: 0.0 for a node that waits (the first nodes in the order are
    admitted while every phase can give each admitted node its minimum), else between
    its min and its cap, shared max-min fairly. The sum on each phase never exceeds
    its limit; every value is a multiple of 0.5 A, rounded down."""
    n = len(nodes)
    out = [0.0] * n
    used = [0.0, 0.0, 0.0]
    admitted = []
    for i in range(n):
        mask, lo, cap = nodes[i]
        if cap < lo:
            continue
        ok = True
        for p in range(3):
            if mask & (1 << p) and used[p] + lo > limit_a[p] + 1e-9:
                ok = False
        if ok:
            for p in range(3):
                if mask & (1 << p):
                    used[p] += lo
            out[i] = lo
            admitted.append(i)
    active = list(admitted)
    for _ in range(n + 1):  # each round freezes at least one node
        if not active:
            break
        k = [0, 0, 0]
        for i in active:
            for p in range(3):
                if nodes[i][0] & (1 << p):
                    k[p] += 1
        step = None
        for i in active:
            mask, lo, cap = nodes[i]
            s = cap - out[i]
            for p in range(3):
                if mask & (1 << p):
                    s = min(s, (limit_a[p] - used[p]) / k[p])
            if step is None or s < step:
                step = s
        step = max(step, 0.0)
        for i in active:
            out[i] += step
            for p in range(3):
                if nodes[i][0] & (1 << p):
                    used[p] += step
        still = []
        for i in active:
            mask, lo, cap = nodes[i]
            full = out[i] >= cap - 1e-9
            for p in range(3):
                if mask & (1 << p) and used[p] >= limit_a[p] - 1e-9:
                    full = True
            if not full:
                still.append(i)
        if len(still) == len(active):
            break
        active = still
    for i in admitted:
        out[i] = int(out[i] * 2 + 1e-6) / 2
    return out


class Node:
    """What is known of one pool member (from its status frames, or ourselves)."""

    def __init__(self, addr):
        self.addr = addr
        self.state = ST_IDLE
        self.mask = _ALL
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

    def plan(self, now, limit_a, nodes, raises=True):
        """nodes: Node list (the master included). Returns {addr: amps to send}.
        raises False: cuts only (what silent nodes hold is not known yet)."""
        _cap_age(self.since, now, _TURN_OLD_MS)
        _cap_age(self.preempted, now, _TURN_OLD_MS)
        _cap_age(self._capped, now, CAP_LIFT_MS)
        _cap_age(self._lift, now, LIFT_GRACE_MS)
        for a in list(self.sent):
            if not any(n.addr == a for n in nodes):
                self.forget(a)
        want = []
        for n in nodes:
            if n.addr not in self.sent:
                self.sent[n.addr] = n.offered_a  # a new master starts from what it sees
            if n.state == ST_WANT:
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
            for p in range(3):
                if not n.mask & (1 << p):
                    continue
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


# ---- the node ---------------------------------------------------------------------------------
class Balancer:
    def __init__(self, charger, settings, protection, can, metering=None, power=None,
                 clock=None, rotate_ms=ROTATE_MS, epoch=None, data_dir=None):
        """can: the board's `hw.can` (send/recv, never blocking), None when not wired.
        data_dir: where the members file is kept (None: members in memory only)."""
        self.ch = charger
        self.settings = settings
        self.prot = protection
        self.can = can
        self.metering = metering
        self.power = power
        self.clock = clock or time.ticks_ms
        if epoch is None:
            import os

            epoch = os.urandom(1)[0]
        self.epoch = epoch & 0x0F
        self.planner = Planner(rotate_ms)
        self._buf = bytearray(8)
        self._seq = 0
        self._aseq = 0
        self.enabled = False
        self.addr = 0
        self.pool = POOL_ID
        self.nodes = {}  # addr -> Node (others)
        self._gone = {}  # addr -> (since_ms, amps, mask): last shares of silent nodes
        self._peak = {}  # addr -> the most it may hold of what it was sent since last heard
        self._path = None if data_dir is None else data_dir + "/" + MEMBERS_FILE
        self.members = {}  # addr -> last heard (ms): the pool's known members, us included
        self._saved = None  # what the members file holds (None: unknown)
        self._dirty = False  # members or meter master changed since the last write
        self.quorum = False
        self.me = Node(0)
        self.master = None  # address of the master we follow (ours when we are it)
        self.meter_addr = None  # a meter node was seen: nobody else may take over
        self._master_since = None
        self._master_last = None  # (epoch, seq) of the last allocation accepted
        self.alloc_ms = None
        self.alloc_a = None  # last allocation received (None: none yet)
        self.waiting = False
        self.limit_a = None
        self.fallback = False
        self.clash = False
        self._clash_ms = 0
        self._status_ms = None
        self._cycle_due = None  # when the next allocation cycle is due (master)
        self.pool_limit_a = None
        self._pool_ok = [0.0, 0.0, 0.0]  # the pool limit of the last valid meter reading
        self._pool_ms = None  # when that reading was taken (power.last_ok_ms)
        self._pool_seen = None  # the pool limits the last two readings gave on their own
        self.dropped = 0  # frames ignored: foreign, malformed, stale
        self._start_ms = None  # when its car began to start (B2, or the contacts closed)
        self._want = False  # it needed current at the last look
        self._closed = False  # its contacts were closed at the last look
        self.send_errors = 0

    async def run(self):
        import asyncio

        due = self.clock()
        while True:
            self.tick(self.clock())
            # Ticks on a fixed grid: a sleep after each tick would let every late one
            # push the allocation cycles (and a new car's grant) later and later.
            due = periodic.next_due(due, self.clock(), _TICK_MS)
            wait = time.ticks_diff(due, self.clock())
            await asyncio.sleep_ms(wait if wait > 0 else 0)

    # ---- one tick ---------------------------------------------------------------------------
    def tick(self, now):
        s = self.settings
        on = bool(s["lb_enabled"]) and self.can is not None
        if on != self.enabled:
            self._switch(on, now)
        if not on:
            return
        # Every tick, before anything compares them (_cap_age).
        if self.alloc_ms is not None and time.ticks_diff(now, self.alloc_ms) > _ALLOC_OLD_MS:
            self.alloc_ms = time.ticks_add(now, -_ALLOC_OLD_MS)
        t = self._master_since
        if t is not None and time.ticks_diff(now, t) > _MASTER_OLD_MS:
            self._master_since = time.ticks_add(now, -_MASTER_OLD_MS)
        _cap_age(self.members, now, GONE_HOLD_MS + 1)
        addr = s["can_addr"]
        pool = s.get("lb_pool_id") or POOL_ID
        if addr != self.addr or pool != self.pool:
            if self.addr == 0:  # just switched on: the members of the last run
                self._load(addr, pool, now)
            else:
                _log.warning("CAN address or pool id changed: the pool starts anew")
                if pool != self.pool:
                    self.nodes = {}  # another pool's nodes
                self._reset(addr, now)
            self.addr = addr
            self.pool = pool
            self.me = Node(addr)
            self.nodes.pop(addr, None)
        for _ in range(_MAX_RX):
            f = self.can.recv()
            if f is None:
                break
            self._on_frame(f[0], f[1], now)
        for a in list(self.nodes):
            n = self.nodes[a]
            if time.ticks_diff(now, n.seen_ms) > NODE_TIMEOUT_MS:
                _log.warning("node %d silent: dropped from the plan", a)
                del self.nodes[a]
                # It may only be cut off from us: it keeps what it holds until it notices
                # (FREE_MS), then runs on its fallback share until its fallback has ended.
                # What it holds: at most what it reported or we sent it since. A node we
                # did not allocate may have had more since its last report (the old
                # master raises itself and its followers until it notices a cut): at
                # least the fallback share, and no raises until FREE_MS (_unsettled).
                keep = max(self._peak.pop(a, 0.0), n.offered_a)
                known = self.master == self.addr and a in self.planner.sent
                if not known:
                    keep = max(keep, FALLBACK_A)
                self._gone[a] = (now, keep, n.mask, known)
        for a in list(self._gone):
            if a in self.nodes or time.ticks_diff(now, self._gone[a][0]) > GONE_HOLD_MS:
                del self._gone[a]
        if self.clash and time.ticks_diff(now, self._clash_ms) > CLASH_CLEAR_MS:
            self.clash = False
            self.prot.can_clash = False
            _log.info("CAN address %d no longer used by another node", addr)
        self._update_me(now)
        if self._status_ms is None or time.ticks_diff(now, self._status_ms) >= STATUS_MS:
            self._status_ms = now
            self._send_status()
        if self.me.meter:
            self._take_reading()
        self.quorum = self._has_quorum()
        self._elect(now)
        self._forget(now)
        self._persist()
        if self.master == addr:
            if (time.ticks_diff(now, self._master_since) >= DISCOVER_MS
                    and (self._cycle_due is None
                         or time.ticks_diff(now, self._cycle_due) >= 0)):
                # Cycles on a 1 s grid, each at the first tick after its time: two
                # cycles are 2 s and a late tick, however late the other ticks run.
                self._cycle_due = periodic.next_due(
                    now if self._cycle_due is None else self._cycle_due, now, CYCLE_MS)
                self._allocate(now)
        else:
            self._cycle_due = None
        if self.alloc_ms is not None and time.ticks_diff(now, self.alloc_ms) > MASTER_TIMEOUT_MS:
            if not self.fallback:
                self.fallback = True
                _log.error("no allocation from master %s for %d ms: fallback share",
                           self.master, MASTER_TIMEOUT_MS)
        if self._apply(now) and self.master != addr and self.alloc_a is not None:
            # A changed allocation is reported as soon as it is applied, not at the next
            # status period: the master grants a raise only once every other node has
            # reported its cut, and a report up to 500 ms later (more on a loaded node)
            # pushed a new car's grant into the third cycle.
            self._update_me(now)
            self._status_ms = now
            self._send_status()

    def _switch(self, on, now):
        if not on and self.addr:
            # Switched off while running: the pool is formed anew when switched on
            # (how an installer removes a charger for good, docs/load-balancing.md).
            self._reset(self.addr, now)
            self._persist()
        self.enabled = on
        self.addr = 0  # tick() takes the address and loads the members
        self.nodes = {}
        self._gone = {}
        self._peak = {}
        self.members = {}
        self.quorum = False
        self.meter_addr = None
        self.master = None
        self.alloc_a = None
        self.alloc_ms = None
        self.fallback = False
        self.planner = Planner(self.planner.rotate_ms)
        if on:
            _log.info("load balancing on")
            self._start_ms = now
            self.limit_a = 0.0  # nothing until the master allocates
            self.ch.set_external_limit(LIMIT_NAME, 0.0)
        else:
            _log.info("load balancing off")
            self.limit_a = None
            self.ch.set_external_limit(LIMIT_NAME, None)
            if self.clash:
                self.clash = False
                self.prot.can_clash = False

    def _update_me(self, now):
        ch = self.ch
        s = self.settings
        me = self.me
        me.seen_ms = now
        if ch.active:
            me.state = ST_FAULT
        elif ch.session is not None and ch.connected:
            me.state = ST_WANT
        elif ch.connected:
            me.state = ST_CONNECTED
        else:
            me.state = ST_IDLE
        ps = s["phase_set"]
        me.mask = {"L1": 1, "L2": 2, "L3": 4}.get(ps, _ALL)
        car = getattr(self.metering, "car_mask", None)
        if car and me.mask == _ALL and ch.phases == 3:
            # Three-phase wiring: the car loads only the phases it draws on (measured;
            # before it has drawn, all three). A single-phase charger's phase is unknown.
            me.mask = car
        me.meter = s["meter_model"] not in ("none", "auto")  # auto: none found yet
        m = float(s["max_current_a"])
        if ch.cable_a is not None:
            m = min(m, ch.cable_a)
        if ch.thermal_a is not None:
            m = min(m, ch.thermal_a)
        for name, v in ch.external.items():
            # Our own limit and the meter's (it counts the pool's other chargers as
            # house load) are not limits of what this node could take.
            if v is not None and name not in (LIMIT_NAME, "power"):
                m = min(m, v)
        me.max_a = max(m, MIN_A)
        # What the car needs to start: admitted with it, never capped below it (the frame
        # needs min <= max: a node held below it cannot start its car anyway).
        me.min_a = max(MIN_A, min(float(s.get("min_start_a") or MIN_A), me.max_a))
        me.offered_a = ch.offered_a
        amps = self.metering.amps if self.metering is not None else None
        me.draw_a = max(amps) if amps else ch.offered_a
        me.starting = self._starting(now, me.state)

    def _starting(self, now, state):
        """True in B2 (session, contacts open, its car not yet drawing) and for START_MS
        after each close of the contacts: its draw is not yet a sign of its demand."""
        relays = getattr(getattr(self.ch, "hw", None), "relays", None)
        closed = bool(relays is not None and relays.closed)
        if state != ST_WANT:
            self._start_ms = None
            self._want = False
        elif not self._want or (closed and not self._closed):
            self._start_ms = now
            self._want = True
        elif self._start_ms is not None:
            d = time.ticks_diff(now, self._start_ms)
            if not 0 <= d < START_MS:
                self._start_ms = None  # not kept: it would read as new once the ticks wrap
        self._closed = closed
        return self._start_ms is not None

    def _send_status(self):
        me = self.me
        self._seq = (self._seq + 1) & 0xFF
        encode_status(self._buf, self.pool, self._seq, self.epoch, me.state, me.mask,
                      me.meter, me.min_a, me.max_a, me.draw_a, me.offered_a, me.starting)
        self._send(ID_STATUS + self.addr)

    def _send(self, can_id):
        try:
            self.can.send(can_id, self._buf)
        except OSError as e:
            self.send_errors += 1
            _log.debug("CAN send failed: %r", e)

    # ---- receiving -------------------------------------------------------------------------
    def _on_frame(self, can_id, data, now):
        f = decode(can_id, data, self.pool)
        if f is None:
            self.dropped += 1
            return
        if f[0] == "S":
            addr = f[1]
            if addr == self.addr:
                self._on_clash(now)
                return
            n = self.nodes.get(addr)
            if n is None:
                if len(self.nodes) >= MAX_NODES - 1:
                    self.dropped += 1
                    return
                n = self.nodes[addr] = Node(addr)
                _log.info("node %d joined", addr)
            elif (not fresh(n.last, f[2], f[3])
                  and time.ticks_diff(now, n.seen_ms) <= NODE_TIMEOUT_MS):
                self.dropped += 1
                return
            n.last = (f[2], f[3])
            n.seen_ms = now
            (n.state, n.mask, n.meter, n.min_a, n.max_a, n.draw_a, n.offered_a,
             n.starting) = f[4:]
            if addr not in self.members:
                _log.info("node %d is a member of the pool", addr)
                self._dirty = True
            self.members[addr] = now
            # What it may hold from now on: what stands for it, or what is sent next.
            self._peak[addr] = self.planner.sent.get(addr, 0.0) if self.master == self.addr else 0.0
            if n.meter and (self.meter_addr is None or addr < self.meter_addr):
                self.meter_addr = addr
                self._dirty = True
            return
        # An allocation: only ours, only from the master we follow.
        if f[1] != self.addr or f[4] != self.master or self.master == self.addr:
            self.dropped += 1
            return
        if not fresh(self._master_last, f[2], f[3]) and self.alloc_ms is not None and \
                time.ticks_diff(now, self.alloc_ms) <= MASTER_TIMEOUT_MS:
            self.dropped += 1
            return
        self._master_last = (f[2], f[3])
        self.alloc_ms = now
        self.alloc_a = f[5]
        self.waiting = f[6]
        self.pool_limit_a = f[8]
        if self.fallback:
            self.fallback = False
            _log.warning("master %d allocates again", self.master)

    def _on_clash(self, now):
        self._clash_ms = now
        if not self.clash:
            self.clash = True
            self.prot.can_clash = True
            self.ch.pause(faults.CAN)  # mild (docs/errors.md); first: the log may wait
            _log.error("another node uses CAN address %d -> ERR CAN ADDR", self.addr)

    # ---- members and quorum ----------------------------------------------------------------
    def _load(self, addr, pool, now):
        """The members and meter master of the last run, from the members file; a missing,
        corrupt or foreign file (another address or pool id) gives an empty pool."""
        members, meter = (), None
        got = None
        if self._path is not None:
            try:
                got = _parse(atomicfile.load_json(self._path, dict,
                                                  lambda m: _log.warning("%s", m)), addr, pool)
            except Exception as e:  # a broken flash must not stop the charger
                _log.warning("members file unreadable: %r", e)
            if got is None:
                _log.info("no members file for address %d pool %d: a new pool", addr, pool)
        self._saved = None
        if got is not None:
            members, meter = got
            self._saved = (addr, pool, sorted(members), meter)
        self.members = {}
        for a in members:
            self.members[a] = now  # silent since boot: forgotten GONE_HOLD_MS from now
        self.members[addr] = now
        self.meter_addr = meter
        self._dirty = True  # written only if it differs from the file

    def _reset(self, addr, now):
        """The pool starts anew: we are its only known member (settings changed)."""
        self.members = {addr: now}
        self.meter_addr = None
        self._dirty = True

    def _has_quorum(self):
        """More than half of the members live (heard, us included), or exactly half with
        the lowest member among them."""
        members = self.members
        n = len(members) + (0 if self.addr in members else 1)
        low = self.addr
        for a in members:
            if a < low:
                low = a
        live = 1
        for a in self.nodes:  # heard nodes are members; be exact should one not be yet
            live += 1
            if a not in members:
                n += 1
            if a < low:
                low = a
        if 2 * live > n:
            return True
        return 2 * live == n and (low == self.addr or low in self.nodes)

    def _forget(self, now):
        """A node holding quorum (a master with quorum, or a follower of a live master)
        forgets a member silent for GONE_HOLD_MS; a node without quorum forgets nothing."""
        if self.master == self.addr:
            if not self.quorum:
                return
        elif self.alloc_a is None or self.fallback:
            return
        for a in list(self.members):
            if a == self.addr or a in self.nodes:
                continue
            if time.ticks_diff(now, self.members[a]) > GONE_HOLD_MS:
                del self.members[a]
                self._dirty = True
                _log.warning("node %d silent for %d ms: no longer a member", a, GONE_HOLD_MS)

    def _persist(self):
        """Writes the members file when what it should hold has changed."""
        if not self._dirty:
            return
        self._dirty = False
        if self._path is None:
            return
        want = (self.addr, self.pool, sorted(self.members), self.meter_addr)
        if want == self._saved:
            return
        self._saved = want
        try:
            atomicfile.save_json(self._path, {"addr": want[0], "pool": want[1],
                                              "members": want[2], "meter": want[3]})
        except OSError as e:
            _log.error("members file not written: %r", e)

    # ---- roles ---------------------------------------------------------------------------------
    def _elect(self, now):
        me = self.me
        if me.meter:
            # Its limit is the meter's headroom, which counts every charger it does not
            # hear as house load: it allocates without quorum.
            best = self.addr
            if self.meter_addr is not None and self.meter_addr in self.nodes:
                best = min(best, self.meter_addr)
        elif self.meter_addr is not None:
            best = self.meter_addr  # the meter's charger, even while silent: no takeover
        else:
            best = self.addr
            for a in self.nodes:
                best = min(best, a)
            if best == self.addr and not self.quorum:
                # No takeover without quorum: keep waiting for the master we had.
                best = None if self.master == self.addr else self.master
        if best != self.master:
            _log.info("master: %s -> %s", self.master, best)
            if self.master == self.addr and not self.quorum and not self.fallback:
                # A master that stops allocating keeps at most the fallback share.
                self.fallback = True
                _log.error("master without quorum (%d of %d members heard): fallback share",
                           1 + len(self.nodes), len(self.members))
            self.master = best
            self._master_since = now
            self._master_last = None
            if best == self.addr:
                self.planner = Planner(self.planner.rotate_ms)
            elif self.alloc_ms is None:
                self.alloc_ms = now  # the timeout counts from when we first follow it
        elif best is None and self.alloc_ms is None:
            self.alloc_ms = now  # nobody to follow: the master-lost timeout runs

    def _unsettled(self, now):
        """True while a silent node may hold a share of unknown size: one we did not
        allocate (the old master's follower, the old master itself) dropped less than
        FREE_MS ago, or a member not heard since we became master (after a restart we
        do not know what we sent it). Until it surely runs on its fallback share the
        master only cuts. A meter master's meter sees what they draw."""
        if self.me.meter:
            return False
        for since, _amps, _mask, known in self._gone.values():
            if not known and time.ticks_diff(now, since) <= FREE_MS:
                return True
        return (time.ticks_diff(now, self._master_since) <= FREE_MS
                and bool(self._unheard()))

    def _unheard(self):
        """Members neither heard nor dropped since we started: they may be on another
        part of a cut bus, on their fallback share."""
        return [a for a in self.members
                if a != self.addr and a not in self.nodes and a not in self._gone]

    def _pool_limit(self):
        s = self.settings
        max_a = limits.supply_a(s)
        pw = self.power
        if pw is None or not self.me.meter:
            return [max_a, max_a, max_a]
        if pw.lost or pw.last_ok_ms is None:
            self._pool_seen = None
            return [0.0, 0.0, 0.0]  # house load unknown: nobody charges
        self._take_reading()
        # Until the next valid reading the limit of this one stays: the others' draws
        # move on, the headroom it gave does not. Counting a rise the meter has not
        # seen would give the same amps twice (a reading that is late, or a meter that
        # stopped answering, while the cars ramp up).
        return list(self._pool_ok)

    def _take_reading(self):
        """A new valid meter reading, at the first tick after it: its pool limit per
        phase is the headroom (which already gives back our own current) plus the
        others' draw as they report it now, as little of it as the meter may have seen."""
        pw = self.power
        if pw is None or pw.last_ok_ms is None or pw.last_ok_ms == self._pool_ms:
            return
        self._pool_ms = pw.last_ok_ms
        max_a = limits.supply_a(self.settings)
        h = pw.headroom_a
        known = [x for x in h if x is not None]
        out = [0.0, 0.0, 0.0]
        if known:
            for p in range(3):
                room = h[p] if h[p] is not None else min(known)
                for n in self.nodes.values():
                    if n.mask & (1 << p):
                        room += n.counted_a()
                out[p] = max(0.0, min(max_a, room))
        # A limit above both readings before counts from the second reading that shows
        # it; a fall at once. A car that draws less on its own is in the meter's reading
        # before its next report, and counting its old draw would give the same amps
        # twice for a reading. Coming back to where it was after a dip counts at once:
        # a car ramping up is in the reading before its report, which dips the limit
        # for a reading.
        seen = self._pool_seen
        self._pool_seen = (list(out), seen[0] if seen is not None else list(out))
        if seen is not None:
            for p in range(3):
                out[p] = min(out[p], max(seen[0][p], seen[1][p]))
        self._pool_ok = out

    def _limit(self, now):
        """The pool limit less what silent nodes may still offer: a dropped node its last
        share, then its fallback share (`_gone`); a member not heard since we started
        (it may run on its fallback share in another part of a cut bus) the fallback
        share on every phase, until it is forgotten."""
        out = self._pool_limit()
        for since, amps, mask, _known in self._gone.values():
            if time.ticks_diff(now, since) > FREE_MS:
                amps = min(amps, FALLBACK_A)
            for p in range(3):
                if mask & (1 << p):
                    out[p] = max(0.0, out[p] - amps)
        for _a in self._unheard():
            for p in range(3):
                out[p] = max(0.0, out[p] - FALLBACK_A)
        return out

    def _allocate(self, now):
        limit = self._limit(now)
        self.pool_limit_a = min(limit)
        nodes = [self.me] + list(self.nodes.values())
        sent = self.planner.plan(now, limit, nodes, not self._unsettled(now))
        self._aseq = (self._aseq + 1) & 0xFF
        n = len(nodes)
        for node in nodes:
            a = node.addr
            if a == self.addr:
                continue
            encode_alloc(self._buf, self.pool, self._aseq, self.epoch, self.addr, sent[a],
                         a in self.planner.waiting, n, self.pool_limit_a)
            self._send(ID_ALLOC + a)
            if sent[a] > self._peak.get(a, 0.0):
                self._peak[a] = sent[a]
        self.alloc_a = sent[self.addr]
        self.alloc_ms = now
        self.waiting = self.addr in self.planner.waiting
        self.fallback = False

    def _apply(self, now):
        if self.alloc_a is None:
            lim = 0.0
        elif self.fallback:
            lim = min(self.alloc_a, FALLBACK_A)
            if time.ticks_diff(now, self.alloc_ms) > MASTER_TIMEOUT_MS + FALLBACK_HOLD_MS:
                lim = 0.0
        else:
            lim = self.alloc_a
        if lim != self.limit_a:
            self.limit_a = lim
            self.ch.set_external_limit(LIMIT_NAME, lim)
            return True
        return False

    # ---- views ---------------------------------------------------------------------------------
    def notice(self):
        """The display's warning (evse/hmi.py `notices`): the master is silent and this
        node runs on its fallback share. Not a fault: charging goes on at that share."""
        if self.enabled and self.fallback and not self.clash:
            return MASTER_LOST_TEXT
        return None

    def view(self):
        """/api/status and snapshot `balance`; None while load balancing is off."""
        if not self.enabled:
            return None
        fault = None
        if self.clash:
            fault = "address_clash"
        elif self.fallback:
            fault = "master_lost"
        return {
            "addr": self.addr,
            "master": self.master,
            "is_master": self.master == self.addr,
            "allocation_a": self.alloc_a,
            "limit_a": self.limit_a,
            "waiting": self.waiting,
            "fallback": self.fallback,
            "fault": fault,
            "pool_limit_a": self.pool_limit_a,
            "nodes": sorted(self.nodes),
            "members": sorted(self.members),
            "quorum": self.quorum,
            "dropped": self.dropped,
        }


def _parse(d, addr, pool):
    """(members, meter address or None) of a members file's object, or None when it is
    malformed or belongs to another address or pool id."""
    if type(d) is not dict or d.get("addr") != addr or d.get("pool") != pool:
        return None
    if type(d.get("addr")) is not int or type(d.get("pool")) is not int:
        return None
    members = d.get("members")
    if type(members) is not list or len(members) > MAX_NODES:
        return None
    for a in members:
        if type(a) is not int or not 1 <= a <= MAX_NODES:
            return None
    meter = d.get("meter")
    if meter is not None and (type(meter) is not int or not 1 <= meter <= MAX_NODES):
        return None
    return members, meter
