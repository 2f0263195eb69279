# One charger of the pool (docs/load-balancing.md): its status frames, the allocations
# it follows, members and quorum, the election, the master's cycle and the fallback.
# What it may offer feeds `charger.set_external_limit("balance")`.
import time
from micropython import const

import evse
from evse import faults
from evse import limits
from evse.balance import codec
from evse.balance.codec import ALL, ID_ALLOC, ID_STATUS, MAX_NODES, ST_CONNECTED, ST_FAULT
from evse.balance.codec import ST_IDLE, ST_WANT, encode_alloc, encode_status, fresh, phases
from evse.balance.planner import CYCLE_MS, MIN_A, ROTATE_MS, MeterLimit, Node, Planner
from evse.balance.planner import cap_age, capped
from evse.balance.members import MEMBERS_FILE, forget, has_quorum, load_pool, save_changed
import log
import periodic

_log = log.get("balance")

LIMIT_NAME = "balance"
POOL_ID = const(1)  # pool id when the settings have no `lb_pool_id`
STATUS_MS = const(500)  # every node announces itself this often
NODE_TIMEOUT_MS = const(3000)  # a node not heard this long is gone: its share is freed
MASTER_TIMEOUT_MS = const(3000)  # no allocation this long -> fallback
DISCOVER_MS = const(1500)  # a new master listens this long before allocating
CLASH_CLEAR_MS = const(3000)  # no frame with our address this long -> clash gone
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
# A car starting draws nothing for a while: in the first START_MS of its session (B2: it
# has not asked yet) and after each close of its contacts its draw is no sign of what it
# can take (status byte 3 bit 6, "starting"), and its cap is lifted.
START_MS = const(30000)
_TICK_MS = const(100)
_MAX_RX = const(32)  # frames handled per tick: bounded work
# Stored times are kept at most this old (cap_age): past every window they are compared
# with, the answers stay the same, and none reads as new once the ticks wrap.
_ALLOC_OLD_MS = const(MASTER_TIMEOUT_MS + FALLBACK_HOLD_MS + 1)
_MASTER_OLD_MS = const(FREE_MS + 1)  # FREE_MS > DISCOVER_MS


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
        self.solar = None  # the master's PoolSolar (evse/balance/surplus.py) in a solar mode
        self.pool_mode = "normal"  # the charge mode the master sends
        self.share = None  # ... and of the pool's power the part from surplus (solar modes)
        self.solar_ms = None  # the tick surplus.count() last ran (history's solar_kwh)
        self._buf = bytearray(8)
        self._seq = self._aseq = 0
        self.enabled = False
        self.addr = 0
        self.pool = POOL_ID
        self.nodes = {}  # addr -> Node (others)
        # addr -> (since_ms, amps, mask, known): the last shares of silent nodes; known:
        # we were its master, else `amps` is at least the fallback share (_unsettled)
        self._gone = {}
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
        self._meter = MeterLimit()  # the pool limit behind our meter
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
        # Every tick, before anything compares them (cap_age).
        self.alloc_ms = capped(self.alloc_ms, now, _ALLOC_OLD_MS)
        self._master_since = capped(self._master_since, now, _MASTER_OLD_MS)
        cap_age(self.members, now, GONE_HOLD_MS + 1)
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
            self._meter.take(self.power, self.settings, self.nodes.values())
        self.quorum = has_quorum(self.addr, self.members, self.nodes)
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
        if self.pool_mode != "normal" or self.solar_ms is not None or self.solar is not None:
            from evse.balance import surplus  # the session's energy from surplus (solar_kwh)

            surplus.count(self, now)  # back in `normal`: forgets the module
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
        self.alloc_a = self.alloc_ms = None
        self.fallback = False
        self.planner = Planner(self.planner.rotate_ms)
        self.solar = self.solar_ms = self.share = None
        evse.unload("evse.balance.surplus")  # the pool's solar modes' code (surplus.count)
        if self.power is not None:
            self.power.pool = self if on else None  # the pool's mode governs, not ours
        if on:
            _log.info("load balancing on")
            # A session found here reports starting as a new one does (_starting, this
            # tick): its car drew nothing while it had no allocation.
            self._want = False
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
        me.mask = {"L1": 1, "L2": 2, "L3": 4}.get(ps, ALL)
        car = getattr(self.metering, "car_mask", None)
        if car and me.mask == ALL and ch.phases == 3:
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
        f = codec.decode(can_id, data, self.pool)  # overwritten by the next decode
        if f is None:
            self.dropped += 1
            return
        if isinstance(f, codec.Status):
            addr = f.addr
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
            elif self._stale(f, n.last, n.seen_ms, now, NODE_TIMEOUT_MS):
                return
            n.last = (f.epoch, f.seq)
            n.seen_ms = now
            n.state = f.state
            n.mask = f.mask
            n.meter = f.meter
            n.min_a = f.min_a
            n.max_a = f.max_a
            n.draw_a = f.draw_a
            n.offered_a = f.offered_a
            n.starting = f.starting
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
        if f.dest != self.addr or f.master != self.master or self.master == self.addr:
            self.dropped += 1
            return
        if self._stale(f, self._master_last, self.alloc_ms, now, MASTER_TIMEOUT_MS):
            return
        self._master_last = (f.epoch, f.seq)
        self.alloc_ms = now
        self.alloc_a = f.amps
        self.waiting = f.waiting
        self.pool_limit_a = f.limit_a
        self.pool_mode = codec.MODES[f.mode]
        self.share = f.share
        if self.fallback:
            self.fallback = False
            _log.warning("master %d allocates again", self.master)

    def _stale(self, f, last, heard_ms, now, timeout_ms):
        """True (the frame dropped) when frame f does not follow `last`, (epoch, seq) of
        the last one accepted from its sender, heard at heard_ms: within timeout_ms a
        repeated or older frame is stale; after it (or never heard) any seq is taken."""
        if (fresh(last, f.epoch, f.seq) or heard_ms is None
                or time.ticks_diff(now, heard_ms) > timeout_ms):
            return False
        self.dropped += 1
        return True

    def _on_clash(self, now):
        self._clash_ms = now
        if not self.clash:
            self.clash = True
            self.prot.can_clash = True
            self.ch.pause(faults.CAN)  # mild (docs/errors.md); first: the log may wait
            _log.error("another node uses CAN address %d -> ERR CAN ADDR", self.addr)

    # ---- members and quorum ----------------------------------------------------------------
    def _load(self, addr, pool, now):
        """The members and meter master of the last run (members.load_pool)."""
        self.members, self.meter_addr, self._saved = load_pool(self._path, addr, pool, now)
        self._dirty = True  # written only if it differs from the file

    def _reset(self, addr, now):
        """The pool starts anew: we are its only known member (settings changed)."""
        self.members = {addr: now}
        self.meter_addr = None
        self._dirty = True

    def _forget(self, now):
        """A node holding quorum (a master with quorum, or a follower of a live master)
        forgets a member silent for GONE_HOLD_MS; a node without quorum forgets nothing."""
        if self.master == self.addr:
            if not self.quorum:
                return
        elif self.alloc_a is None or self.fallback:
            return
        if forget(self.members, self.addr, self.nodes, now, GONE_HOLD_MS):
            self._dirty = True

    def _persist(self):
        """Writes the members file when what it should hold has changed."""
        if self._dirty:
            want = (self.addr, self.pool, sorted(self.members), self.meter_addr)
            self._saved = save_changed(self._path, want, self._saved)
        self._dirty = False

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
                self.solar = None
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
        max_a = limits.supply_a(self.settings)
        if self.power is None or not self.me.meter:
            return [max_a, max_a, max_a]
        return self._meter.limit(self.power, self.settings, self.nodes.values())

    def _limit(self, now):
        """The pool limit less what silent nodes may still offer: a dropped node its last
        share, then its fallback share (`_gone`); a member not heard since we started
        (it may run on its fallback share in another part of a cut bus) the fallback
        share on every phase, until it is forgotten."""
        out = self._pool_limit()
        for since, amps, mask, _known in self._gone.values():
            if time.ticks_diff(now, since) > FREE_MS:
                amps = min(amps, FALLBACK_A)
            for p in phases(mask):
                out[p] = max(0.0, out[p] - amps)
        for _a in self._unheard():
            for p in range(3):
                out[p] = max(0.0, out[p] - FALLBACK_A)
        return out

    def _allocate(self, now):
        limit = self._limit(now)
        nodes = [self.me] + list(self.nodes.values())
        mode = self.settings.get("charge_mode", "normal")
        only, self.share = None, 0  # no share of surplus in `normal`
        if mode != "normal":  # the pool's share of the surplus, by the master's mode
            if self.solar is None:
                from evse.balance.surplus import PoolSolar

                self.solar = PoolSolar()
            pw = self.power if self.me.meter else None
            limit, only = self.solar.plan(now, pw, self.settings, nodes, limit)
            self.share = self.solar.share
        raises = not self._unsettled(now)
        if self.settings.get("tariff_limit_w"):  # the master's capacity tariff caps the pool
            from evse.balance.pooltariff import cap

            limit, raises, only = cap(self, now, limit, nodes, raises, only)
        self.pool_mode = mode
        self.pool_limit_a = min(limit)
        sent = self.planner.plan(now, limit, nodes, raises, only)
        self._aseq = (self._aseq + 1) & 0xFF
        n = len(nodes)
        for node in nodes:
            a = node.addr
            if a == self.addr:
                continue
            encode_alloc(self._buf, self.pool, self._aseq, self.epoch, self.addr, sent[a],
                         a in self.planner.waiting, n, self.pool_limit_a,
                         codec.MODES.index(mode) if mode in codec.MODES else 1, self.share)
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
            "charge_mode": self.pool_mode,
        }

    def solar_view(self):
        """/api/status `solar` in a pool: the pool's mode, set on the master (None: normal)."""
        if self.master == self.addr and self.solar is not None:
            return self.solar.view(self.addr, self.clock(), self.settings)
        m = self.pool_mode
        return None if m == "normal" else {
            "mode": m, "waiting": "export" if m == "solar" and self.waiting else None}

