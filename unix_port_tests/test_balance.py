# Load balancing (the evse/balance package) without processes: the allocation function on random
# pools (never above the limit per phase, >= 6 A or waiting, max-min fair), the codec
# against hostile frames, the master's planner (rotation, unused current, staged
# raises), and several Balancer nodes on an in-memory bus with a fake clock (election,
# allocation, master loss, address clash, a node leaving).
import os

import atomicfile
from check import eq, true, tmpdir
from evse.balance import codec, node as bal, planner
from evse.balance.allocate import allocate
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
        out = allocate(limit, nodes)
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
    eq(allocate([40.0] * 3, [(7, 6.0, 32.0)] * 3), [13.0, 13.0, 13.0], "equal share")
    eq(allocate([40.0] * 3, [(7, 6.0, 7.0), (7, 6.0, 32.0), (7, 6.0, 32.0)]),
       [7.0, 16.5, 16.5], "the capped node's rest goes to the others")
    eq(allocate([20.0] * 3, [(7, 6.0, 32.0)] * 4), [6.5, 6.5, 6.5, 0.0], "last one waits")
    eq(allocate([16.0, 40.0, 40.0], [(1, 6.0, 32.0), (2, 6.0, 32.0), (7, 6.0, 32.0)]),
       [8.0, 32.0, 8.0], "per phase")
    eq(allocate([5.0] * 3, [(7, 6.0, 32.0)]), [0.0], "below 6 A: pause")


# ---- codec -------------------------------------------------------------------------------------
def _fields(f):
    """A decoded frame's kind and fields, in the frame's order."""
    if isinstance(f, codec.Status):
        return ("S", f.addr, f.epoch, f.seq, f.state, f.mask, f.meter, f.min_a, f.max_a,
                f.draw_a, f.offered_a, f.starting)
    return ("A", f.dest, f.epoch, f.seq, f.master, f.amps, f.waiting, f.n_nodes, f.limit_a)


def test_codec_round_trip():
    b = bytearray(8)
    codec.encode_status(b, 1, 200, 5, codec.ST_WANT, 7, True, 6.0, 32.0, 15.3, 16.0)
    f = codec.decode(0x613, b, 1)
    eq(_fields(f), ("S", 3, 5, 200, codec.ST_WANT, 7, True, 6.0, 32.0, 15.5, 16.0, False),
       "status")
    codec.encode_status(b, 1, 201, 5, codec.ST_WANT, 1, False, 8.0, 16.0, 0.0, 16.0, True)
    eq(_fields(codec.decode(0x613, b, 1)),
       ("S", 3, 5, 201, codec.ST_WANT, 1, False, 8.0, 16.0, 0.0, 16.0, True),
       "a starting car needing 8 A")
    codec.encode_alloc(b, 1, 7, 2, 1, 13.37, False, 3, 40.0)
    eq(_fields(codec.decode(0x602, b, 1)), ("A", 2, 2, 7, 1, 13.0, False, 3, 40.0),
       "alloc rounds down")


def test_codec_hostile_frames_ignored():
    b = bytearray(8)
    codec.encode_status(b, 1, 1, 0, codec.ST_WANT, 7, False, 6.0, 32.0, 0.0, 0.0)
    good = bytes(b)
    eq(codec.decode(0x612, good, 2), None, "foreign pool")
    eq(codec.decode(0x612, good[:7], 1), None, "short")
    eq(codec.decode(0x612, good + b"\0", 1), None, "long")
    eq(codec.decode(0x610, good, 1), None, "address 0")
    eq(codec.decode(0x619, good, 1), None, "address 9")
    eq(codec.decode(0x123, good, 1), None, "other id")
    eq(codec.decode(0x612, b"\x21" + good[1:], 1), None, "version 2")
    eq(codec.decode(0x612, good[:3] + b"\xc8" + good[4:], 1), None, "reserved bits")
    eq(codec.decode(0x612, good[:3] + b"\x02" + good[4:], 1), None, "no phase")
    eq(codec.decode(0x612, good[:4] + b"\x02" + good[5:], 1), None, "min below 6 A")
    eq(codec.decode(0x612, good[:5] + b"\x0b" + good[6:], 1), None, "max below min")
    codec.encode_alloc(b, 1, 1, 0, 1, 10.0, False, 3, 40.0)
    a = bytes(b)
    eq(codec.decode(0x602, a[:4] + b"\x05" + a[5:], 1), None, "2.5 A allocation")
    eq(codec.decode(0x602, a[:3] + b"\x09" + a[4:], 1), None, "master 9")
    eq(codec.decode(0x602, a[:6] + b"\x00" + a[7:], 1), None, "0 nodes")
    eq(codec.decode(0x602, a[:5] + b"\x07" + a[6:], 1), None, "bad flags")
    for _ in range(2000):  # noise: never an exception, rarely accepted
        data = os.urandom(_rand(10))
        codec.decode(0x600 + _rand(0x20), data, 1)


def test_sequence_freshness():
    true(codec.fresh(None, 1, 5), "first")
    true(codec.fresh((1, 5), 1, 6), "next")
    true(codec.fresh((1, 255), 1, 0), "wrap")
    true(not codec.fresh((1, 5), 1, 5), "repeat")
    true(not codec.fresh((1, 5), 1, 4), "older")
    true(codec.fresh((1, 5), 2, 0), "restarted sender (new epoch)")


# ---- planner -------------------------------------------------------------------------------------
def _node(addr, state=codec.ST_WANT, max_a=32.0, draw=None, offered=0.0, mask=7):
    n = planner.Node(addr)
    n.state = state
    n.max_a = max_a
    n.offered_a = offered
    n.draw_a = offered if draw is None else draw
    n.mask = mask
    return n


def _follow(nodes, sent, draw=False):
    """The nodes apply what they were sent; draw: their cars draw all of it."""
    for n in nodes:
        n.offered_a = sent[n.addr]
        if draw:
            n.draw_a = n.offered_a


def test_planner_staged_raise_never_exceeds():
    p = planner.Planner()
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


def test_planner_cut_not_yet_applied():
    """A report lost after a raise: the master sees less than the node offers. The node
    may offer what it was sent until it applies this cycle's cut, so no raise for
    another node counts on the cut (found by partitions: a status lost when the bus
    came back)."""
    p = planner.Planner()
    lim = [40.0] * 3
    a = _node(1, max_a=28.0, offered=20.0)
    eq(p.plan(0, lim, [a]), {1: 28.0}, "raised")
    # a offers 28 A now, but its next status is lost: the master still sees 20 A.
    b = _node(2)
    sent = p.plan(1000, lim, [a, b])
    eq(sent[1], 20.0, "cut at once")
    eq(sent[2], 12.0, "room only beside the 28 A a may still offer")


def test_planner_unused_current_given_away_and_back():
    p = planner.Planner()
    lim = [40.0] * 3
    a, b = _node(1), _node(2)
    _follow([a, b], p.plan(0, lim, [a, b]))
    a.draw_a = 6.0  # the car takes only 6 A of its 20
    t = 1000
    for _ in range(planner.UNUSED_CYCLES + 3):
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


def test_planner_starting_car_not_capped():
    """A car in B2 or just after its contacts closed draws nothing yet: not a sign that it
    needs less (a Zoe takes seconds, and 8 A, to start)."""
    p = planner.Planner()
    lim = [40.0] * 3
    a, b = _node(1), _node(2)
    a.starting = True
    t = 0
    for _ in range(planner.UNUSED_CYCLES + 5):
        sent = p.plan(t, lim, [a, b])
        _follow([a, b], sent)
        a.draw_a = 0.0
        b.draw_a = b.offered_a
        t += 1000
    eq(sent, {1: 20.0, 2: 20.0}, "the starting car keeps its share")
    a.starting = False  # started, and still draws nothing: the rest goes to the other
    for _ in range(planner.UNUSED_CYCLES + 3):
        sent = p.plan(t, lim, [a, b])
        _follow([a, b], sent)
        a.draw_a = 0.0
        b.draw_a = b.offered_a
        t += 1000
    eq(sent[1], 6.0, "capped at its minimum")
    a.starting = True  # its contacts closed again: its cap is lifted
    for _ in range(3):
        sent = p.plan(t, lim, [a, b])
        _follow([a, b], sent)
        b.draw_a = b.offered_a
        t += 1000
    eq(sent, {1: 20.0, 2: 20.0}, "full share at a new start")


def test_planner_min_start_current():
    """A node that needs 8 A to start is admitted and capped at 8 A, not 6 A."""
    p = planner.Planner()
    a, b = _node(1), _node(2)
    a.min_a = 8.0
    t = 0
    for _ in range(planner.UNUSED_CYCLES + 3):
        sent = p.plan(t, [40.0] * 3, [a, b])
        _follow([a, b], sent)
        a.draw_a = 0.0
        b.draw_a = b.offered_a
        t += 1000
    eq(sent[1], 8.0, "its cap never below what it needs to start")
    eq(allocate([14.0] * 3, [(7, 8.0, 32.0), (7, 6.0, 32.0)]), [8.0, 6.0], "admitted at 8 A")
    eq(allocate([13.0] * 3, [(7, 6.0, 32.0), (7, 8.0, 32.0)]), [13.0, 0.0], "waits for 8 A")


def test_pool_min_start_setting_in_status():
    """`min_start_a` is the node's minimum in its status: the master admits it only with
    that much room and never caps it below."""
    pool = Pool([1, 2], limit=14)
    pool.nodes[1].settings["min_start_a"] = 8
    pool.plug(0)
    pool.run(3000)
    pool.plug(1)
    pool.run(6000)
    eq(pool.nodes[0].nodes[2].min_a, 8.0, "reported")
    eq(pool.offers(), [6.0, 8.0], "8 A to start it, 6 A to the other")


def test_a_session_found_when_balancing_is_switched_on_reports_starting():
    """Its car drew nothing while the node had no allocation: load balancing switched on
    in the middle of a session reports it starting for START_MS, as a new session."""
    pool = Pool([1])
    pool.plug(0)
    b = pool.nodes[0]
    pool.run(bal.START_MS + 1000)
    true(not b.me.starting, "started long ago")
    b.settings["lb_enabled"] = False
    pool.run(1000)
    b.settings["lb_enabled"] = True
    pool.run(100)
    true(b.me.starting, "starting again once switched on")
    pool.run(bal.START_MS)
    true(not b.me.starting, "for START_MS")


def test_pool_counts_only_the_phases_the_car_draws_on():
    """A one-phase car on a three-phase charger loads L1 only: the charger beside it on
    L2 no longer shares that phase with it."""

    class Met:
        amps = None
        car_mask = None

    pool = Pool([1, 2], limit=20)
    pool.nodes[1].settings["phase_set"] = "L2"
    for b in pool.nodes:
        b.ch.phases = 3
        b.metering = Met()
    pool.plug(0)
    pool.plug(1)
    pool.run(6000)
    eq(pool.offers(), [10.0, 10.0], "phases unknown: both counted on L2")
    pool.nodes[0].metering.car_mask = 1
    pool.run(10000, check=False)  # Pool.sums counts the configured phases
    eq(pool.nodes[1].nodes[1].mask, 1, "reported as L1 only")
    eq(pool.offers(), [20.0, 20.0], "each has its phase")


def test_planner_cap_lifted_now_and_then():
    """A car that draws a little below its capped offer (5.5 A of 6) never asks again by
    the draw rule: every CAP_LIFT_MS it gets its full share back to show what it takes."""
    p = planner.Planner()
    lim = [40.0] * 3
    a, b = _node(1), _node(2)
    t = 0
    capped_at = None
    lifted_at = None
    for _ in range((planner.CAP_LIFT_MS + planner.LIFT_GRACE_MS) // 1000 + 20):
        sent = p.plan(t, lim, [a, b])
        _follow([a, b], sent)
        a.draw_a = min(a.offered_a, 5.0)
        b.draw_a = b.offered_a
        if sent[1] == 6.0 and capped_at is None:
            capped_at = t
        if capped_at is not None and lifted_at is None and sent[1] > 6.0:
            lifted_at = t
        t += 1000
    true(capped_at is not None and capped_at <= 5000, "capped: %r" % capped_at)
    true(lifted_at is not None, "lifted")
    true(planner.CAP_LIFT_MS <= lifted_at - capped_at <= planner.CAP_LIFT_MS + 3000,
         "lifted after %r ms" % (lifted_at - capped_at))
    eq(sent[1], 6.0, "capped again once it showed it takes no more")
    # A car that takes the lifted share keeps it.
    p = planner.Planner()
    a, b = _node(1), _node(2)
    t = 0
    for i in range(planner.CAP_LIFT_MS // 1000 + 30):
        sent = p.plan(t, lim, [a, b])
        _follow([a, b], sent)
        a.draw_a = min(a.offered_a, 5.0 if i < 60 else 32.0)
        b.draw_a = b.offered_a
        t += 1000
    eq(sent, {1: 20.0, 2: 20.0}, "the share it takes stays")


def test_planner_rotation():
    p = planner.Planner(rotate_ms=10000)
    lim = [20.0] * 3
    nodes = [_node(i) for i in (1, 2, 3, 4)]
    waited = {}
    t = 0
    for _ in range(80):
        sent = p.plan(t, lim, nodes)
        _follow(nodes, sent, draw=True)
        true(sum(sent.values()) <= 20, "sum")
        true(all(v == 0 or v >= 6 for v in sent.values()), "6 A or waiting")
        eq(len(p.waiting), 1, "one waits")
        for a in p.waiting:
            waited[a] = waited.get(a, 0) + 1
        t += 1000
    eq(sorted(waited), [1, 2, 3, 4], "everyone waited in turn")
    true(max(waited.values()) - min(waited.values()) <= 12, "turns about even: %r" % waited)


def _settle(p, t, lim, nodes, cycles=4):
    for _ in range(cycles):
        sent = p.plan(t, lim, nodes)
        _follow(nodes, sent, draw=True)
        t += 1000
    return t, sent


def _turns(p, nodes, lim, t, ms, asleep=()):
    """Plans every second for `ms`; the cars of `asleep` draw nothing. Returns the time
    and, per cycle, who charges."""
    who = []
    for _ in range(ms // 1000):
        sent = p.plan(t, lim, nodes)
        _follow(nodes, sent, draw=True)
        for n in nodes:
            if n.addr in asleep:
                n.draw_a = 0.0
        who.append(sorted(a for a in sent if sent[a]))
        t += 1000
    return t, who


def test_planner_a_sleeping_car_does_not_use_up_its_turn():
    """A node whose car sits in B2 under its allocation (asleep, its wake-up to come)
    draws nothing: its turn does not run until the car draws."""
    p = planner.Planner(rotate_ms=10000)
    nodes = [_node(1, max_a=7.0), _node(2, max_a=7.0)]
    lim = [7.0] * 3
    t, who = _turns(p, nodes, lim, 0, 3000)
    eq(who[-1], [1], "1 charges, 2 waits")
    t, who = _turns(p, nodes, lim, t, 9000)
    eq(who[-1], [2], "1's turn over: 2's")
    # 2's car slept while it waited: 36 s until its wake-up and S2, then it draws.
    t, who = _turns(p, nodes, lim, t, 36000, asleep=(2,))
    eq(who.count([2]), 36, "its turn stood still while it slept")
    t, who = _turns(p, nodes, lim, t, 12000)
    eq(who[:8], [[2]] * 8, "then a whole turn for 2")
    eq(who[-1], [1], "and 1 again")


def test_planner_a_car_that_never_draws_yields_in_the_end():
    p = planner.Planner(rotate_ms=10000)
    nodes = [_node(1, max_a=7.0), _node(2, max_a=7.0)]
    lim = [7.0] * 3
    t, who = _turns(p, nodes, lim, 0, 3000, asleep=(1,))
    eq(who[-1], [1], "1 has the turn")
    t, who = _turns(p, nodes, lim, t, planner.SLEEP_GRACE_MS + 10000, asleep=(1,))
    eq(who[-1], [2], "at most SLEEP_GRACE_MS held: then 2's turn")


def test_planner_cut_for_room_keeps_its_place():
    """docs/load-balancing.md, Allocation §3: a charging node cut because the pool limit
    fell for a moment (a car that leaves is still in the meter's reading while it
    reports 0 A) is first again when room comes back; the ones waiting before it do
    not overtake it, and two cars leaving give their room to the two that waited
    longest (seen with 8 chargers: the charging node waited and all three waiting
    ones got room)."""
    p = planner.Planner(rotate_ms=600000)
    nodes = [_node(i, max_a=7.0) for i in range(1, 9)]
    lim = [35.0] * 3
    t, sent = _settle(p, 0, lim, nodes)
    eq(sorted(p.waiting), [6, 7, 8], "five charge")
    t, sent = _settle(p, t, [17.0] * 3, nodes)
    eq(sorted(a for a in sent if sent[a]), [1, 2], "two charge at 17 A")
    t, sent = _settle(p, t, lim, nodes)
    charging = sorted(a for a in sent if sent[a])
    eq(charging, [1, 2, 3, 4, 5], "cut for room: first again, before 6, 7, 8")
    # Cars 2 and 3 leave; the reading still sees their current: one cycle at 14 A.
    for n in nodes:
        if n.addr in (2, 3):
            n.state, n.offered_a, n.draw_a = codec.ST_IDLE, 0.0, 0.0
    sent = p.plan(t, [14.0] * 3, nodes)
    _follow(nodes, sent)
    eq(sorted(a for a in sent if sent[a]), [1, 4], "the dip cuts 5")
    t, sent = _settle(p, t + 1000, lim, nodes, 5)
    eq(sorted(a for a in sent if sent[a]), [1, 4, 5, 6, 7], "5 back, then the two waiting longest")
    eq(sorted(p.waiting), [8], "8 waits")


def test_planner_cut_for_room_place_ends_with_its_turn():
    """The place kept after a cut lasts until the node's turn would have ended: then it
    waits behind those who waited longer (the rotation of Allocation §3 goes on)."""
    p = planner.Planner(rotate_ms=10000)
    a, b, c = _node(1, max_a=7.0), _node(2, max_a=7.0), _node(3, max_a=7.0)
    nodes = [a, b, c]
    t, sent = _settle(p, 0, [14.0] * 3, nodes, 2)  # 1, 2 charge since 0; 3 waits
    eq(sorted(p.waiting), [3], "3 waits")
    t, sent = _settle(p, t, [7.0] * 3, nodes, 1)  # 2 cut for room at 2000
    eq(sorted(p.waiting), [2, 3], "2 cut")
    t, sent = _settle(p, t, [14.0] * 3, nodes, 2)
    eq(sorted(p.waiting), [3], "2 back first, within its turn")
    # 2 cut again at 5000. At 10000 the turns of 1 and 2 (both since 0) end: 1 yields
    # to who waits, and 2's kept place ends with them, so 3 (waiting since 0) goes first.
    t, sent = _settle(p, t, [7.0] * 3, nodes, 9)
    eq(t, 14000, "time")
    eq(sorted(p.waiting), [1, 2], "3's turn, not 2's")
    t, sent = _settle(p, t, [14.0] * 3, nodes, 2)
    eq(sorted(p.waiting), [1], "then 2 (waiting since 5000) before 1 (since 10000)")


def test_planner_node_leaving_frees_share():
    p = planner.Planner()
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
    """One node's CAN controller. `up` False: its cable is cut (it neither sends nor
    receives; a frame nobody acknowledges fails). `seg`: the piece of a split bus it is on."""

    def __init__(self, bus):
        self.bus = bus
        self.q = []
        self.up = True
        self.seg = 0
        self.powered = True

    def send(self, can_id, data):
        if not self.up:
            raise OSError(110)  # ETIMEDOUT: no acknowledgement
        for p in self.bus.ports:
            if p is not self and p.up and p.powered and p.seg == self.seg:
                p.q.append((can_id, bytes(data)))

    def recv(self):
        return self.q.pop(0) if self.q else None


class Settings(dict):
    pass


class Session:
    """A charging session: what a pool in a solar mode counts in it (`solar_wh`)."""


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
            if amps < self.offered_a:  # a cut applies at once, as in evse/charger.py
                self.offered_a = amps if amps >= 6 else 0.0

    def trip(self, bit):
        self.trips.append(bit)

    def pause(self, bit):  # a mild condition's pause (evse/charger.py): a trip here
        self.trip(bit)
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


def _mask(settings):
    return {"L1": 1, "L2": 2, "L3": 4}.get(settings["phase_set"], 7)


def _tmpdir():
    return tmpdir("balance")


def _rmtree(d):
    for n in os.listdir(d):
        p = d + "/" + n
        try:
            os.remove(p)
        except OSError:
            os.rmdir(p)
    os.rmdir(d)


class Pool:
    """Balancer nodes on one in-memory bus with a fake clock. After every node's tick the
    per-phase sum of what every powered node offers (cut off from the bus or not) is
    checked against the pool limit: the worst sums are kept in `worst`."""

    def __init__(self, addrs, data_dirs=None, limit=40, **kw):
        self.bus = Bus()
        self.t = 0
        self.limit = limit
        self.nodes = []
        self.off = set()  # indexes of nodes powered off
        self.worst = [0.0, 0.0, 0.0]
        self.dirs = data_dirs or [None] * len(addrs)
        for i, a in enumerate(addrs):
            s = _settings(a, max_house_current_a=limit, **kw)
            self.nodes.append(self._make(s, self.bus.port(), self.dirs[i], i))

    def _make(self, settings, port, data_dir, epoch):
        return bal.Balancer(FakeCharger(), settings, Prot(), port, clock=lambda: self.t,
                           epoch=epoch, data_dir=data_dir)

    def sums(self):
        out = [0.0, 0.0, 0.0]
        for i, b in enumerate(self.nodes):
            if i in self.off:
                continue
            m = _mask(b.settings)
            for p in range(3):
                if m & (1 << p):
                    out[p] += b.ch.offered_a
        return out

    def run(self, ms, check=True):
        end = self.t + ms
        while self.t < end:
            for i, b in enumerate(self.nodes):
                if i in self.off:
                    continue
                b.tick(self.t)
                b.ch.follow()
                if check:
                    sums = self.sums()
                    for p in range(3):
                        self.worst[p] = max(self.worst[p], sums[p])
                        true(sums[p] <= self.limit + 1e-9, "phase L%d: offers %r sum %r > %r at %d ms"
                             % (p + 1, self.offers(), sums[p], self.limit, self.t))
            self.t += 100

    def offers(self):
        return [b.ch.offered_a for b in self.nodes]

    def plug(self, i):
        ch = self.nodes[i].ch
        ch.connected = True
        ch.session = Session()

    def cut(self, i):
        """Node i's CAN cable is cut: it still runs and charges."""
        self.nodes[i].can.up = False
        self.nodes[i].can.q = []

    def reconnect(self, i):
        self.nodes[i].can.up = True

    def split(self, seg_of):
        """The bus is cut in pieces: node i on piece seg_of[i]."""
        for i, b in enumerate(self.nodes):
            b.can.seg = seg_of[i]
            b.can.q = []

    def power_off(self, i):
        self.off.add(i)
        self.nodes[i].ch.offered_a = 0.0
        self.nodes[i].can.powered = False
        self.nodes[i].can.q = []

    def restart(self, i, plugged=True, epoch=None):
        """Node i starts again (power back, or a reset): a fresh process on the same
        controller and data dir; its bus stays as it is."""
        old = self.nodes[i]
        old.can.q = []
        old.can.powered = True
        b = self._make(old.settings, old.can, self.dirs[i], 8 + i if epoch is None else epoch)
        self.nodes[i] = b
        self.off.discard(i)
        if plugged:
            self.plug(i)
        return b


def test_pool_elects_lowest_and_shares():
    pool = Pool([3, 1, 2])
    for i in range(3):
        pool.plug(i)
    pool.run(6000)
    eq([b.master for b in pool.nodes], [1, 1, 1], "lowest address is master")
    eq([b.ch.offered_a for b in pool.nodes], [13.0, 13.0, 13.0], "shared")
    eq([b.view()["members"] for b in pool.nodes], [[1, 2, 3]] * 3, "members")
    true(all(b.view()["quorum"] for b in pool.nodes), "quorum")


def test_a_changed_allocation_is_reported_in_the_tick_that_applies_it():
    """The master raises a node only once the others have reported their cuts: a node
    that waited for its next status period could push a new car's grant a cycle later."""
    pool = Pool([1, 2, 3])
    pool.plug(0)
    pool.plug(1)
    pool.run(6000)
    eq(pool.offers(), [20.0, 20.0, 0.0], "two share 40 A")
    b = pool.nodes[1]
    sent = []
    send = b.can.send

    def spy(can_id, data):
        sent.append((pool.t, can_id, bytes(data)))
        send(can_id, data)

    b.can.send = spy
    pool.plug(2)
    t_cut = None
    while t_cut is None and pool.t < 20000:
        before = b.alloc_a
        pool.run(100)
        if b.alloc_a != before:
            t_cut = pool.t - 100
    true(t_cut is not None and b.alloc_a < 20.0, "node 2 cut for the new car")
    reports = [d for t, i, d in sent if t == t_cut and i == codec.ID_STATUS + 2]
    true(reports, "a status frame in the tick that applied the cut")
    eq(reports[-1][7], codec._ha_up(b.alloc_a), "reporting the offer already cut")
    master = pool.nodes[0]
    heard = None
    granted = None
    while granted is None and pool.t < 30000:
        n3 = master.nodes.get(3)
        if heard is None and n3 is not None and n3.state == codec.ST_WANT:
            heard = pool.t
        if master.planner.sent.get(3, 0) >= 6:
            granted = pool.t
        pool.run(100)
    true(heard is not None and granted is not None, "heard and granted")
    true(granted - heard <= 2 * planner.CYCLE_MS, "granted %d ms after the ask" % (granted - heard))


def test_pool_master_lost_fallback_and_clash():
    pool = Pool([1, 2, 3])
    for i in range(3):
        pool.plug(i)
    pool.run(6000)
    pool.power_off(0)  # the master dies
    pool.run(bal.MASTER_TIMEOUT_MS + 300)
    true(pool.nodes[1].fallback and pool.nodes[2].fallback, "fallback")
    eq(pool.nodes[1].view()["fault"], "master_lost", "shown")
    true(pool.nodes[1].ch.offered_a <= bal.FALLBACK_A, "safe share")
    pool.run(6000)  # no meter in this pool: node 2 takes over (2 of 3 members: quorum)
    eq(pool.nodes[2].master, 2, "takeover")
    true(pool.nodes[1].quorum and pool.nodes[2].quorum, "quorum")
    true(not pool.nodes[2].fallback, "allocating again")
    eq(pool.nodes[1].ch.offered_a + pool.nodes[2].ch.offered_a, 34.0, "two share, 6 A kept for the lost master")
    # An address clash: a fourth node configured as 2.
    ch = FakeCharger()
    extra = bal.Balancer(ch, _settings(2), Prot(), pool.bus.port(), clock=lambda: pool.t, epoch=9)
    pool.nodes.append(extra)
    pool.run(1000)
    eq(pool.nodes[1].ch.trips, [faults.CAN], "clash on the old node")
    eq(ch.trips, [faults.CAN], "clash on the new node")
    true(pool.nodes[1].prot.can_clash and extra.prot.can_clash, "protection told")
    extra.settings["can_addr"] = 4  # renumbered
    pool.run(bal.CLASH_CLEAR_MS + 1000)
    true(not pool.nodes[1].prot.can_clash and not extra.prot.can_clash, "clash gone")


def test_pool_meter_master_lost_no_takeover():
    pool = Pool([1, 2, 3])
    pool.nodes[0].settings["meter_model"] = "SDM630"  # no power manager given: static limit
    for i in range(3):
        pool.plug(i)
    pool.run(6000)
    pool.power_off(0)
    pool.run(8000)
    eq(pool.nodes[1].master, 1, "still follows the meter's charger")
    true(pool.nodes[1].fallback and pool.nodes[2].fallback, "fallback")
    eq(pool.nodes[1].ch.offered_a, 6.0, "6 A")
    pool.restart(0)  # back: a fresh process on the same controller
    pool.run(5000)
    true(not pool.nodes[1].fallback, "master back")
    eq([b.ch.offered_a for b in pool.nodes], [13.0, 13.0, 13.0], "shared again")
    pool.run(bal.FALLBACK_HOLD_MS)


def test_pool_node_leaves():
    pool = Pool([1, 2, 3])
    for i in range(3):
        pool.plug(i)
    pool.run(6000)
    pool.power_off(2)
    pool.run(bal.NODE_TIMEOUT_MS + 8000)
    eq(pool.nodes[0].ch.offered_a + pool.nodes[1].ch.offered_a, 34.0, "freed but its fallback share")
    pool.run(bal.GONE_HOLD_MS)
    eq(pool.nodes[0].ch.offered_a + pool.nodes[1].ch.offered_a, 40.0, "share freed")


def test_fallback_ends_in_pause():
    pool = Pool([1, 2])
    for i in range(2):
        pool.plug(i)
    pool.run(6000)
    pool.power_off(0)
    pool.nodes[0].settings["meter_model"] = "SDM630"
    pool.nodes[1].meter_addr = 1
    pool.run(bal.MASTER_TIMEOUT_MS + 1000)
    eq(pool.nodes[1].ch.offered_a, 6.0, "fallback share")
    pool.run(bal.FALLBACK_HOLD_MS)
    eq(pool.nodes[1].ch.offered_a, 0.0, "then a pause")


# ---- partitions: members and quorum ------------------------------------------------------------
def _charging(addrs, **kw):
    pool = Pool(addrs, **kw)
    for i in range(len(addrs)):
        pool.plug(i)
    pool.run(6000)
    return pool


def _lost(b, what):
    """b runs without a master: fallback, the warning, no takeover."""
    true(b.fallback and not b.quorum, "%s: fallback without quorum" % what)
    eq(b.notice(), bal.MASTER_LOST_TEXT, "%s: warning" % what)
    eq(b.view()["fault"], "master_lost", "%s: fault" % what)
    true(b.master != b.addr and not b.view()["is_master"], "%s: no takeover" % what)


def test_partition_isolated_node_of_three():
    """The probe of the split brain: node 3's cable is cut while it charges. Before the fix
    it made itself master of 40 A (62 A summed after 5 s, 72 A steady)."""
    pool = _charging([1, 2, 3])
    eq(pool.offers(), [13.0, 13.0, 13.0], "shared")
    pool.cut(2)
    b3 = pool.nodes[2]
    pool.run(bal.MASTER_TIMEOUT_MS + 300)
    _lost(b3, "cut node")
    true(b3.ch.offered_a <= bal.FALLBACK_A, "fallback share")
    pool.run(bal.FALLBACK_HOLD_MS)
    eq(b3.ch.offered_a, 0.0, "then paused")
    _lost(b3, "cut node, paused")
    eq(pool.offers()[:2], [17.0, 17.0], "the two share all but its fallback share")
    true(pool.nodes[0].quorum and pool.nodes[0].master == 1, "the majority goes on")
    pool.run(bal.NODE_TIMEOUT_MS + bal.GONE_HOLD_MS - bal.FALLBACK_HOLD_MS - bal.MASTER_TIMEOUT_MS
             + 1000)
    eq(pool.offers(), [20.0, 20.0, 0.0], "its fallback share freed once it has paused")
    eq(b3.view()["members"], [1, 2, 3], "without quorum it forgets nothing")
    true(max(pool.worst) <= 40, "worst %r" % pool.worst)


def test_partition_two_and_two():
    """A 4-node pool cut in halves: the half with the lowest member goes on, the other
    pauses; neither half has the whole limit."""
    pool = _charging([1, 2, 3, 4])
    eq(pool.offers(), [10.0] * 4, "shared")
    pool.split([0, 0, 1, 1])
    pool.run(bal.MASTER_TIMEOUT_MS + 300)
    for i in (2, 3):
        _lost(pool.nodes[i], "node %d" % (i + 1))
    true(pool.nodes[0].quorum and pool.nodes[1].quorum, "the half with node 1: quorum")
    pool.run(bal.FALLBACK_HOLD_MS + 1000)
    eq(pool.offers()[2:], [0.0, 0.0], "the other half paused")
    eq(pool.offers()[:2], [14.0, 14.0], "two fallback shares kept")
    pool.run(bal.GONE_HOLD_MS - bal.FALLBACK_HOLD_MS + 4000)
    eq(pool.offers(), [20.0, 20.0, 0.0, 0.0], "then freed")
    eq([b.master for b in pool.nodes[:2]], [1, 1], "one master")
    eq(pool.nodes[0].view()["members"], [1, 2], "the majority forgot the others")
    pool.split([0, 0, 0, 0])
    pool.run(8000)
    eq([b.master for b in pool.nodes], [1] * 4, "whole again")
    eq(pool.offers(), [10.0] * 4, "shared again")
    eq(pool.nodes[0].view()["members"], [1, 2, 3, 4], "members again")


def test_partition_master_cut_off():
    """The master's cable is cut: it loses quorum and runs on its fallback share, the
    other two (2 of 3) elect node 2."""
    pool = _charging([1, 2, 3])
    pool.cut(0)
    pool.run(bal.MASTER_TIMEOUT_MS + 300)
    b1 = pool.nodes[0]
    true(b1.fallback and not b1.quorum and b1.master is None, "old master without quorum")
    eq(b1.notice(), bal.MASTER_LOST_TEXT, "warning")
    true(b1.ch.offered_a <= bal.FALLBACK_A, "fallback share at once")
    pool.run(4000)
    eq([pool.nodes[1].master, pool.nodes[2].master], [2, 2], "takeover with quorum")
    pool.run(bal.FALLBACK_HOLD_MS)
    eq(b1.ch.offered_a, 0.0, "paused")
    pool.reconnect(0)
    pool.run(8000)
    eq([b.master for b in pool.nodes], [1, 1, 1], "node 1 master again")
    true(not b1.fallback and b1.ch.offered_a >= 6, "charging again")


def test_master_powered_off_two_take_over():
    pool = _charging([1, 2, 3])
    pool.power_off(0)
    pool.run(bal.NODE_TIMEOUT_MS + bal.DISCOVER_MS + bal.FREE_MS + 2000)
    eq([pool.nodes[1].master, pool.nodes[2].master], [2, 2], "node 2 master")
    true(pool.nodes[1].quorum and pool.nodes[2].quorum, "2 of 3: quorum")
    eq(pool.offers()[1:], [17.0, 17.0], "node 1's fallback share kept")
    pool.run(bal.GONE_HOLD_MS)
    eq(pool.offers()[1:], [20.0, 20.0], "then freed")
    eq(pool.nodes[1].view()["members"], [2, 3], "node 1 forgotten")
    pool.restart(0)
    pool.run(8000)
    eq([b.master for b in pool.nodes], [1, 1, 1], "back and master")
    eq(pool.offers(), [13.0, 13.0, 13.0], "shared")


def test_two_nodes_higher_loses_lower():
    """Node 2 cannot tell node 1 switched off from its own cable cut: it pauses."""
    pool = _charging([1, 2])
    eq(pool.offers(), [20.0, 20.0], "shared")
    pool.cut(1)  # node 1 still charges
    pool.run(bal.MASTER_TIMEOUT_MS + bal.FALLBACK_HOLD_MS + 500)
    _lost(pool.nodes[1], "node 2")
    eq(pool.offers(), [32.0, 0.0], "node 1 goes on (its max), node 2 paused")
    pool.power_off(0)  # now gone as well: node 2 still alone, still no quorum
    pool.run(bal.GONE_HOLD_MS + 5000)
    _lost(pool.nodes[1], "node 2 alone")
    eq(pool.offers()[1], 0.0, "still paused")


def test_two_nodes_lower_loses_higher():
    """Node 1 alone is half of the members and the lowest: it goes on."""
    pool = _charging([1, 2], max_current_a=40)
    pool.power_off(1)
    pool.run(bal.NODE_TIMEOUT_MS + bal.FREE_MS + 2000)
    b1 = pool.nodes[0]
    true(b1.quorum and b1.master == 1 and not b1.fallback, "goes on as master")
    eq(b1.ch.offered_a, 34.0, "all but node 2's fallback share")
    pool.run(bal.GONE_HOLD_MS)
    eq(b1.ch.offered_a, 40.0, "then the whole pool")
    eq(b1.view()["members"], [1], "node 2 forgotten")


def test_isolated_node_restarts_with_members_file():
    """Node 3 restarts while its cable is cut: its members file says it is one of three,
    so it does not take over (before: a fresh node alone made itself master)."""
    dirs = [_tmpdir() for _ in range(3)]
    try:
        pool = _charging([1, 2, 3], data_dirs=dirs)
        eq(atomicfile.load_json(dirs[2] + "/balance.json"),
           {"addr": 3, "pool": 1, "members": [1, 2, 3], "meter": None}, "persisted")
        pool.cut(2)
        b3 = pool.restart(2)
        b3.tick(pool.t)
        eq(b3.view()["members"], [1, 2, 3], "members from the file")
        pool.run(bal.MASTER_TIMEOUT_MS + 500)
        _lost(b3, "restarted node")
        eq(b3.ch.offered_a, 0.0, "nothing before an allocation")
        pool.run(bal.GONE_HOLD_MS + 5000)
        _lost(b3, "restarted node, later")
        eq(b3.ch.offered_a, 0.0, "still nothing")
        eq(pool.offers()[:2], [20.0, 20.0], "the others share the pool")
        eq(atomicfile.load_json(dirs[0] + "/balance.json")["members"], [1, 2], "node 1 forgot it")
        pool.reconnect(2)
        pool.run(8000)
        eq(b3.master, 1, "rejoined")
        eq(pool.offers(), [13.0, 13.0, 13.0], "shared again")
        eq(atomicfile.load_json(dirs[0] + "/balance.json")["members"], [1, 2, 3], "member again")
    finally:
        for d in dirs:
            _rmtree(d)


def test_meter_master_known_after_restart():
    """A restarted node remembers the pool's meter master: no takeover while it is silent."""
    dirs = [_tmpdir() for _ in range(3)]
    try:
        pool = Pool([1, 2, 3], data_dirs=dirs)
        pool.nodes[0].settings["meter_model"] = "SDM630"
        for i in range(3):
            pool.plug(i)
        pool.run(6000)
        eq(atomicfile.load_json(dirs[1] + "/balance.json")["meter"], 1, "meter master persisted")
        pool.power_off(0)
        pool.restart(1)
        pool.restart(2)
        pool.run(bal.MASTER_TIMEOUT_MS + 3000)
        for i in (1, 2):
            b = pool.nodes[i]
            eq(b.master, 1, "follows the meter's charger")
            true(b.fallback and b.ch.offered_a == 0.0, "fallback, nothing allocated")
    finally:
        for d in dirs:
            _rmtree(d)


def test_corrupt_members_file():
    """A corrupt, foreign or unreadable members file is an empty pool, never a crash; a
    valid one is written back."""
    d = _tmpdir()
    path = d + "/balance.json"
    bad = [
        b"", b"\xff\xfe\x00garbage", b"[1, 2]", b"null", b"{", b'"x"',
        b'#crc32 00000000\n{"addr": 2, "pool": 1, "members": [1, 2, 3], "meter": null}',
        b'{"addr": 3, "pool": 1, "members": [1, 2, 3], "meter": null}',  # another address
        b'{"addr": 2, "pool": 7, "members": [1, 2, 3], "meter": null}',  # another pool
        b'{"addr": true, "pool": 1, "members": [1, 2], "meter": null}',
        b'{"addr": 2, "pool": 1, "members": [1, 99], "meter": null}',
        b'{"addr": 2, "pool": 1, "members": "123", "meter": null}',
        b'{"addr": 2, "pool": 1, "members": [1, 2, 3, 4, 5, 6, 7, 8, 1], "meter": null}',
        b'{"addr": 2, "pool": 1, "members": [1.5], "meter": null}',
        b'{"addr": 2, "pool": 1, "members": [1, 2], "meter": "1"}',
        b'{"addr": 2, "pool": 1, "members": [1, 2], "meter": 0}',
    ]
    def clear():
        _rmtree(d)
        os.mkdir(d)

    try:
        for data in bad:
            clear()
            with open(path, "wb") as f:
                f.write(data)
            b = bal.Balancer(FakeCharger(), _settings(2), Prot(), Bus().port(),
                            clock=lambda: 0, epoch=1, data_dir=d)
            b.tick(0)
            eq(b.view()["members"], [2], "empty pool for %r" % data)
            eq(b.meter_addr, None, "no meter for %r" % data)
            eq(atomicfile.load_json(path), {"addr": 2, "pool": 1, "members": [2], "meter": None},
               "written back for %r" % data)
        clear()
        os.mkdir(path)  # a directory where the file belongs: unreadable
        b = bal.Balancer(FakeCharger(), _settings(2), Prot(), Bus().port(),
                        clock=lambda: 0, epoch=1, data_dir=d)
        b.tick(0)
        b.tick(100)
        eq(b.view()["members"], [2], "empty pool")
        b = bal.Balancer(FakeCharger(), _settings(2), Prot(), Bus().port(),
                        clock=lambda: 0, epoch=1, data_dir=d + "/missing")
        b.tick(0)  # nothing to read, nowhere to write: logged, not raised
        eq(b.view()["members"], [2], "empty pool, not written")
        clear()
        with open(path, "wb") as f:
            f.write(b'{"addr": 2, "pool": 1, "members": [1, 2, 5], "meter": 5}')  # by hand
        b = bal.Balancer(FakeCharger(), _settings(2), Prot(), Bus().port(),
                        clock=lambda: 0, epoch=1, data_dir=d)
        b.tick(0)
        eq((b.view()["members"], b.meter_addr), ([1, 2, 5], 5), "a valid file")
        eq(b.view()["quorum"], False, "1 of 3")
    finally:
        _rmtree(d)


def test_forgets_after_gone_hold_and_rejoins():
    dirs = [_tmpdir() for _ in range(3)]
    try:
        pool = _charging([1, 2, 3], data_dirs=dirs)
        pool.cut(2)
        pool.run(bal.GONE_HOLD_MS - 1000)
        eq(pool.nodes[0].view()["members"], [1, 2, 3], "not yet forgotten")
        pool.run(1500)
        for i in (0, 1):
            eq(pool.nodes[i].view()["members"], [1, 2], "forgotten after GONE_HOLD_MS")
            eq(atomicfile.load_json(dirs[i] + "/balance.json")["members"], [1, 2], "persisted")
        eq(pool.nodes[2].view()["members"], [1, 2, 3], "the cut node forgets nothing")
        eq(atomicfile.load_json(dirs[2] + "/balance.json")["members"], [1, 2, 3], "its file too")
        pool.run(5000)
        pool.reconnect(2)
        pool.run(1000)
        true(pool.nodes[2].quorum and pool.nodes[2].master == 1, "hears the pool again")
        pool.run(7000)
        eq([b.view()["members"] for b in pool.nodes], [[1, 2, 3]] * 3, "member again")
        eq(pool.offers(), [13.0, 13.0, 13.0], "shared again")
        true(not pool.nodes[2].fallback and pool.nodes[2].notice() is None, "warning gone")
    finally:
        for d in dirs:
            _rmtree(d)


def test_lb_off_on_resets_members():
    """Node 1 of a 2-node pool is removed for good: node 2 alone has no quorum until the
    installer switches load balancing off and on; a new address or pool id does the same."""
    d = _tmpdir()
    try:
        pool = _charging([1, 2], data_dirs=[None, d])
        pool.power_off(0)
        pool.run(bal.MASTER_TIMEOUT_MS + bal.FALLBACK_HOLD_MS + bal.GONE_HOLD_MS)
        b2 = pool.nodes[1]
        _lost(b2, "node 2 alone")
        eq(b2.ch.offered_a, 0.0, "paused")
        eq(b2.view()["members"], [1, 2], "still a member of the old pool")
        b2.settings["lb_enabled"] = False
        pool.run(1000)
        b2.settings["lb_enabled"] = True
        pool.run(500)
        eq(b2.view()["members"], [2], "reset")
        eq(atomicfile.load_json(d + "/balance.json")["members"], [2], "persisted")
        pool.run(5000)
        true(b2.quorum and b2.master == 2 and not b2.fallback, "a one-charger pool")
        eq(b2.ch.offered_a, 32.0, "charges")
        pool.restart(1)  # and it stays so across a restart
        pool.run(5000)
        eq(pool.nodes[1].ch.offered_a, 32.0, "after a restart")
        # A member heard again, then another address: the pool starts anew.
        pool.restart(0)
        pool.run(3000)
        eq(pool.nodes[1].view()["members"], [1, 2], "node 1 back")
        pool.nodes[1].settings["can_addr"] = 5
        pool.run(100)
        eq(pool.nodes[1].view()["members"], [1, 5], "new address: itself and who it hears")
        pool.power_off(0)
        pool.nodes[1].settings["lb_pool_id"] = 3
        pool.run(100)
        eq(pool.nodes[1].view()["members"], [5], "new pool id: itself")
        eq(atomicfile.load_json(d + "/balance.json"),
           {"addr": 5, "pool": 3, "members": [5], "meter": None}, "persisted")
    finally:
        _rmtree(d)


def test_partitions_seeded_single_faults():
    """Seeded episodes from a formed pool: one fault (a node cut off, the bus split in
    two, a node switched off, a node restarted while cut off or after being off), random
    phases, maxima and cars coming and going, a random duration, then the bus whole and
    every charger on again. The per-phase check of Pool.run holds at every tick, and the
    members agree again after each episode. FUZZ_SEED / FUZZ_N replay or widen it."""
    import fuzz

    r = fuzz.rng_for("balance.partitions")
    episodes = fuzz.count(10)
    print("balance.partitions: %d episodes per pool, FUZZ_SEED=0x%08x" % (episodes, fuzz.seed()))
    for n in (3, 4):
        dirs = [_tmpdir() for _ in range(n)]
        try:
            pool = Pool(list(range(1, n + 1)), data_dirs=dirs)
            for b in pool.nodes:
                b.settings["phase_set"] = ("L123", "L1", "L2", "L3")[r.below(4)]
                b.settings["max_current_a"] = 6 + r.below(27)
            for i in range(n):
                if r.below(4):
                    pool.plug(i)
            pool.run(8000)
            for ep in range(episodes):
                kind, i = r.below(5), r.below(n)
                what = "pool of %d, episode %d: fault %d on node %d at %d ms" % (n, ep, kind, i + 1, pool.t)
                if kind == 0:
                    pool.cut(i)
                elif kind == 1:
                    pool.split([r.below(2) for _ in range(n)])
                elif kind == 2:
                    pool.power_off(i)
                else:
                    if kind == 3:
                        pool.cut(i)
                    else:
                        pool.power_off(i)
                    pool.run(100 * r.below(900))
                    pool.restart(i, plugged=bool(r.below(2)))
                for k in range(n):
                    if r.below(6) == 0:
                        ch = pool.nodes[k].ch
                        if ch.session:
                            ch.session, ch.connected = None, False
                        else:
                            pool.plug(k)
                try:
                    pool.run(100 * (1 + r.below(1500)))
                    for k in range(n):
                        if k in pool.off:
                            pool.restart(k, plugged=bool(r.below(2)))
                        pool.reconnect(k)
                    pool.split([0] * n)
                    pool.run(15000)
                except AssertionError as e:
                    raise AssertionError("%s: %s" % (what, e))
                eq([b.view()["members"] for b in pool.nodes], [list(range(1, n + 1))] * n,
                   "%s: members agree again" % what)
            print("  pool of %d: worst per-phase sums %r" % (n, pool.worst))
        finally:
            for d in dirs:
                _rmtree(d)


def test_disabled_does_nothing():
    ch = FakeCharger()
    port = Bus().port()
    b = bal.Balancer(ch, _settings(1, lb_enabled=False), Prot(), port, clock=lambda: 0)
    b.tick(0)
    eq(ch.external, {}, "no limit")
    eq(b.view(), None, "no view")


class _Power:
    """What the balancer reads of power management: a valid reading at 0 ms."""

    def __init__(self, headroom_a):
        self.headroom_a = headroom_a
        self.ok = True
        self.lost = False
        self.last_ok_ms = 0


def _meter_master(headroom_a):
    pw = _Power(headroom_a)
    b = bal.Balancer(FakeCharger(), _settings(1, meter_model="SDM630"), Prot(), Bus().port(),
                    clock=lambda: 0, power=pw, epoch=1)
    b.tick(0)
    return pw, b


def test_pool_limit_from_meter_headroom():
    """With a meter: headroom plus the others' draw, never more than each offers; a rise
    from the second reading that shows it, a fall at once; blind for less than the meter
    timeout -> the last limit; lost or never read -> 0."""

    pw, b = _meter_master([20.0, 10.0, 20.0])
    eq(b._pool_limit(), [20.0, 10.0, 20.0], "the first reading: headroom, nobody else")
    n = b.nodes[2] = planner.Node(2)
    n.draw_a, n.offered_a = 8.0, 10.0
    pw.last_ok_ms = 1000
    eq(b._pool_limit(), [20.0, 10.0, 20.0], "a rise shown by one reading only")
    pw.last_ok_ms = 2000
    eq(b._pool_limit(), [28.0, 18.0, 28.0], "headroom + draw, shown twice")
    n.offered_a = 6.0  # cut: the meter may still see 8 A
    pw.last_ok_ms = 3000
    eq(b._pool_limit(), [26.0, 16.0, 26.0], "at most the offer, and a fall at once")
    pw.ok = False
    n.draw_a, n.offered_a = 16.0, 16.0  # moved since the last valid reading
    eq(b._pool_limit(), [26.0, 16.0, 26.0], "blind: the last limit stays")
    pw.lost = True
    eq(b._pool_limit(), [0.0, 0.0, 0.0], "lost: nobody charges")
    pw.lost, pw.last_ok_ms = False, None
    eq(b._pool_limit(), [0.0, 0.0, 0.0], "never read: nobody charges")


def test_pool_limit_car_drawing_less_before_its_report():
    """A car drops from 11 A to 6 A on its own (its battery is nearly full) just before
    a meter reading: the meter sees 6 A, its last report still says 11 A. Counting the
    report beside that reading would give 5 A of room that another car is already using
    as soon as this one draws again: 40 A instead of 35 A on a 35 A supply."""
    pw, b = _meter_master([13.0, 13.0, 13.0])  # 40 A - (5 A house + 11 + 11 A) + own 11 A
    others = []
    for a in (2, 3):
        n = b.nodes[a] = planner.Node(a)
        n.draw_a, n.offered_a = 11.0, 11.5
        others.append(n)
    pw.last_ok_ms = 1000
    eq(b._pool_limit(), [13.0, 13.0, 13.0], "the others' rise shown by one reading")
    pw.last_ok_ms = 2000
    eq(b._pool_limit(), [35.0, 35.0, 35.0], "5 A of house load: 35 A")
    pw.headroom_a = [18.0, 18.0, 18.0]  # node 3 draws 6 A; its report is not in yet
    pw.last_ok_ms = 3000
    eq(b._pool_limit(), [35.0, 35.0, 35.0], "the drop seen before its report: no room")
    others[1].draw_a = 6.0  # its report
    pw.last_ok_ms = 4000
    eq(b._pool_limit(), [35.0, 35.0, 35.0], "the drop reported: still 35 A")


def test_pool_limit_back_after_a_dip_at_once():
    """A car ramping up to 17.5 A is in the meter's reading before its report: the limit
    dips for that reading and comes back with the next one (as high as it was two
    readings ago, so at once); a new car's grant is not held back a cycle more."""
    pw, b = _meter_master([35.0, 35.0, 35.0])
    n = b.nodes[2] = planner.Node(2)
    n.draw_a, n.offered_a = 0.0, 17.5
    pw.last_ok_ms = 1000
    eq(b._pool_limit(), [35.0, 35.0, 35.0], "the car granted, not drawing yet")
    pw.headroom_a = [17.5, 17.5, 17.5]  # the meter sees it draw; its report says 0 A
    pw.last_ok_ms = 2000
    eq(b._pool_limit(), [17.5, 17.5, 17.5], "a dip for the reading before its report")
    n.draw_a = 17.5
    pw.last_ok_ms = 3000
    eq(b._pool_limit(), [35.0, 35.0, 35.0], "back at once")


def test_pool_limit_counts_the_draws_of_its_reading():
    """IEC 61851-1 offers within the supply: a draw that rises after a meter reading is
    not counted as room until a reading that sees it. Three cars at 0 A, the meter read
    (5 A house load on a 40 A supply: 35 A), then the meter stops answering while the
    cars ramp to 11.5 A each: counting their new draw beside the old headroom would give
    35 + 23 = 58 A (capped 40), i.e. 13 A each on 35 A."""
    pw, b = _meter_master([35.0, 35.0, 35.0])
    others = []
    for a in (2, 3):
        n = b.nodes[a] = planner.Node(a)
        n.draw_a = n.offered_a = 0.0
        others.append(n)
    pw.last_ok_ms = 1000
    b.tick(1000)
    eq(b._pool_limit(), [35.0, 35.0, 35.0], "the reading with the cars at 0 A")
    for n in others:
        n.draw_a = n.offered_a = 11.5  # reported after the reading; the meter is silent
    b.tick(1500)
    eq(b._pool_limit(), [35.0, 35.0, 35.0], "the rise not seen by a reading is not room")
    # The next reading sees the cars' current: 35 - 23 A of headroom, plus their draws.
    pw.headroom_a = [12.0, 12.0, 12.0]
    pw.last_ok_ms = 2000
    b.tick(2000)
    eq(b._pool_limit(), [35.0, 35.0, 35.0], "a reading that sees it")


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
            module_ok = True

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
    auth_pending = None
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
    hmi.tick(t - 3000)  # the welcome after the restart: over by t
    hmi.tick(t)
    true(hw.display.v != bal.MASTER_LOST_TEXT, "normal rotation")
    eq(hw.leds.v["fault"], ("off", "steady"), "fault LED off")
    pool.power_off(0)
    pool.run(bal.MASTER_TIMEOUT_MS + 300)
    eq(b.notice(), bal.MASTER_LOST_TEXT, "fallback -> warning")
    hmi.tick(t + 100)
    eq(hw.display.v, bal.MASTER_LOST_TEXT, "shown at once")
    eq(hw.leds.v["fault"], ("red", "slow"), "fault LED blinks")
    shown = []
    for k in range(1, 7):
        hmi.tick(t + 100 + k * 3000)
        shown.append(hw.display.v)
    eq(shown[1::2], [bal.MASTER_LOST_TEXT] * 3, "every other item")
    true(all(x != bal.MASTER_LOST_TEXT for x in shown[0::2]), "the rotation between")
    ch.active = faults.MET
    hmi.tick(t + 30000)
    eq(hw.display.v, faults.display_text(faults.codes(faults.MET)[0]), "a fault first")
    eq(hw.leds.v["fault"], ("red", "steady"), "fault LED steady")


def _balance_modules():
    """The load-balancing modules loaded: the evse.balance package and its modules."""
    import sys

    return sorted(m for m in sys.modules if m == "evse.balance" or m.startswith("evse.balance."))


def test_the_app_builds_its_balancer_only_once_balancing_is_switched_on():
    """A charger that never balances spends no heap on it (evse/app.py _Balancing); one
    switched on at run time balances within a tick, and keeps its balancer."""
    import asyncio
    import sys

    from evse.app import _Balancing

    class App:
        pass

    app = App()
    app.settings = _settings(1, lb_enabled=False)
    app.charger = FakeCharger()
    app.protection = Prot()
    app.hw = App()
    app.hw.can = Bus().port()
    app.metering = app.power = None
    app.data_dir = _tmpdir()
    for m in _balance_modules():  # what this test file imported does not count
        sys.modules.pop(m)
    slot = _Balancing(app)

    async def main():
        task = asyncio.create_task(slot.run())
        await asyncio.sleep_ms(300)
        off = (slot.balancer, slot.view(), slot.notice(), _balance_modules())
        app.settings["lb_enabled"] = True
        await asyncio.sleep_ms(300)
        task.cancel()
        return off

    eq(asyncio.run(main()), (None, None, None, []), "nothing built while it is off")
    true(slot.balancer is not None and slot.balancer.enabled, "built and running once on")
    true(slot.view() is not None, "its status shows")
