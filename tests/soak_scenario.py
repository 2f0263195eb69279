"""The soak: sessions back to back on the main charger of a soak_rig.Rig while faults,
card taps, central-system outages and meter losses come at seeded random instants;
checks throughout (soak_check.Watcher on every charger's events, the pool sum, task
restarts, heap after GC) and at the end (every session recorded once in the history and
reported once to the central system, no MemoryError).

    result = Soak(rig, seed=1, duration=150).run()    # {"violations": [...], ...}

Everything random comes from one random.Random(seed); the wall clock decides only how many
steps fit in the duration, so a seed replays the same sequence of decisions.
"""

import random
import re
import threading
import time

from soak_check import Watcher
from soak_rig import (
    CARD,
    HOUSE_A,
    MAIN_MAX_A,
    NODE_MAX_A,
    STRANGER,
    login,
    read_records,
    transactions,
)

STEP_S = 0.1
POLL_S = 0.25
WEB_POLL_S = 0.5
NOMINAL_V = [230.0, 230.0, 230.0]
# Heap samples before this are the charger settling, not a trend: bounded state fills up
# with the first sessions, faults and reconnections (measured: the floor rises about
# 2-3 KB in the first 3 minutes, then stays within about 1 KB; docs/soak.md).
WARMUP_S = 180.0
# Heap after GC moves with what is in flight: the WebSocket buffers exist only while the
# central system is connected, messages wait in RAM while it is not. So the floor is taken
# over the samples in one state (connected, nothing queued); a leak shows as a floor that
# keeps rising. Growth of that floor allowed over the run:
HEAP_GROWTH_MAX = 6 * 1024
STEADY_S = 5.0
HEAP_PROBE_S = 10.0  # how often the largest free block of the main charger is probed
# ... which must give at least an OTA buffer (evse/otaimage.py CHUNK) throughout: without the
# app's gc.threshold it fell to 1.3-1.7 KB within 150 s; with it, 13.5 KB at least in 1 h.
HEAP_BLOCK_MIN = 4096
STUCK_S = 60.0
LOG_BAD = re.compile(r"MemoryError|task \w+ died|Traceback")


class Soak:
    def __init__(self, rig, seed, duration, log=print):
        self.rig = rig
        self.seed = seed
        self.duration = duration
        self.rng = random.Random(seed)
        self.log = log
        self.violations = []
        self.counts = {"sessions": 0, "faults": 0, "latched_cleared": 0, "csms_outages": 0,
                       "meter_losses": 0, "card_taps": 0, "stranger_taps": 0, "stop_taps": 0,
                       "node_plugs": 0, "load_steps": 0}
        self.faults_by_code = {}
        self.heap = []  # (elapsed s, heap_alloc after GC, steady) of the main charger
        self._unsteady_t = 0.0  # when the main charger was last not connected or had a queue
        self.worst_pool = 0.0
        self.heap_free_min = 1 << 30
        self.heap_largest_min = 1 << 30  # the largest free block: fragmentation
        self._heap_probe_t = -HEAP_PROBE_S
        self.watch = {c.name: Watcher(c.name, MAIN_MAX_A if c is rig.main else
                                      NODE_MAX_A[i % len(NODE_MAX_A)], free=c is not rig.main)
                      for i, c in enumerate([rig.main, *rig.nodes], start=-1)}
        self._since = {c.name: 0 for c in rig.chargers}
        self._stop = threading.Event()
        self._errors = []  # exceptions of the background threads
        self._base_no = 0
        self._t0 = 0.0
        self.web_requests = 0

    def bad(self, what):
        self.violations.append(f"seed {self.seed} t={time.monotonic() - self._t0:.1f}s: {what}")
        self.log(f"VIOLATION {self.violations[-1]}")

    def now(self):
        return time.monotonic() - self._t0

    # ---- driving the simulator, noting what was commanded -------------------------------------
    def ev(self, c, state, **kw):
        t = c.sim("ev", state=state, diode=True, **kw)["t_us"]
        self.watch[c.name].ev_state(t, state)
        return t

    def temp(self, relay_c=25.0, socket_c=25.0):
        t = self.rig.main.sim("temp", relay_c=relay_c, socket_c=socket_c)["t_us"]
        self.watch["main"].temp(t, relay_c, socket_c)

    # ---- the run ---------------------------------------------------------------------------------
    def run(self):
        rig = self.rig
        self._t0 = time.monotonic()
        self._base_no = max(read_records(rig.main.data_dir)[0], default=0)
        self._tx_mark = rig.cs.mark()
        # Events from now on: a reply with every event since boot is a large allocation
        # for the charger's heap, and nothing has moved the relays yet.
        for c in rig.chargers:
            self._since[c.name] = c.snapshot()["t_us"]
        threads = [threading.Thread(target=self._guard, args=(fn,), daemon=True)
                   for fn in (self._monitor, self._web_client)]
        for th in threads:
            th.start()
        stopped = False
        try:
            self._scenario()
            self._settle()
        except Exception as e:  # a wait that timed out is a finding too
            self.bad(f"scenario stopped: {type(e).__name__}: {e}")
            stopped = True
        finally:
            self._stop.set()
            for th in threads:
                th.join(15)
        for e in self._errors:
            self.bad(f"watcher thread: {e}")
        try:
            self._poll_events()
            if not stopped:
                self._final_checks()
        except Exception as e:
            self.bad(f"final checks stopped: {type(e).__name__}: {e}")
        for w in self.watch.values():
            self.violations.extend(f"seed {self.seed}: {v}" for v in w.violations)
        return self.result()

    def _guard(self, fn):
        try:
            fn()
        except Exception as e:
            self._errors.append(f"{fn.__name__}: {type(e).__name__}: {e}")

    # ---- the scenario thread ---------------------------------------------------------------------
    def _scenario(self):
        rng = self.rng
        main = self.rig.main
        self.main_ev = _MainEv(self)
        nodes = [_NodeEv(self, n) for n in self.rig.nodes]
        plans = {  # what: next time (s)
            "fault": rng.uniform(5, 15), "csms": rng.uniform(10, 30), "meter": rng.uniform(15, 40),
            "stranger": rng.uniform(3, 10), "load": rng.uniform(5, 20),
        }
        undo = []  # (time s, fn) to run later
        while self.now() < self.duration:
            t = self.now()
            self.main_ev.step(t)
            for n in nodes:
                n.step(t)
            for item in [u for u in undo if u[0] <= t]:
                undo.remove(item)
                item[1]()
            if t >= plans["fault"] and self.main_ev.can_inject():
                undo += self._inject_fault(t)
                plans["fault"] = t + rng.uniform(12, 30)
            if t >= plans["csms"] and self.rig.csms_running():
                down = rng.uniform(5, 25)
                self.log(f"{t:6.1f} central system down for {down:.0f} s")
                self.rig.csms_down()
                self.counts["csms_outages"] += 1
                undo.append((t + down, self.rig.csms_up))
                plans["csms"] = t + down + rng.uniform(15, 60)
            if t >= plans["meter"] and self.rig.meter_running():
                down = rng.uniform(3, 12)
                self.log(f"{t:6.1f} meter lost for {down:.0f} s")
                self.rig.meter_down()
                self.counts["meter_losses"] += 1
                undo.append((t + down, self.rig.meter_up))
                plans["meter"] = t + down + rng.uniform(20, 60)
            if t >= plans["stranger"]:
                if self.main_ev.reader_free(t):
                    main.sim("card", uid=STRANGER, ms=400)
                    self.counts["stranger_taps"] += 1
                # At least 15 s apart: 5 refused cards within a minute would pause the
                # reader (evse/rfid.py), and the driver's own card with it.
                plans["stranger"] = t + rng.uniform(15, 40)
            if t >= plans["load"] and self.rig.meter_running():
                load = [round(rng.uniform(0, 25), 1) for _ in range(3)]
                self.rig.meter.load = load
                self.rig.meter.ctl(op="load", amps=load)
                self.counts["load_steps"] += 1
                plans["load"] = t + rng.uniform(10, 30)
            time.sleep(STEP_S)
        for _t, fn in sorted(undo, key=lambda u: u[0]):
            fn()
        self.main_ev.finish()
        for n in nodes:
            n.finish()

    def _inject_fault(self, t):
        """One fault that clears by itself once its cause is gone, or the latched PE that a
        technician clears; returns the undo steps."""
        rng = self.rng
        main = self.rig.main
        kinds = ["ROT", "OCT", "derate", "OVP", "MET"]
        if self.main_ev.state == "charge":
            kinds += ["CP", "PE"]
        kind = rng.choice(kinds)
        hold = rng.uniform(2, 8)
        self.counts["faults"] += 1
        self.faults_by_code[kind] = self.faults_by_code.get(kind, 0) + 1
        self.log(f"{t:6.1f} fault {kind} for {hold:.0f} s")
        if kind == "ROT":
            self.temp(relay_c=90.0)
            return [(t + hold, self.temp)]
        if kind == "OCT":
            self.temp(socket_c=80.0)
            return [(t + hold, self.temp)]
        if kind == "derate":
            self.temp(relay_c=round(rng.uniform(71, 84), 1), socket_c=round(rng.uniform(20, 74), 1))
            return [(t + hold * 2, self.temp)]
        if kind == "OVP":
            main.sim("grid", volts=[280.0, 230.0, 230.0])
            return [(t + hold, lambda: main.sim("grid", volts=NOMINAL_V))]
        if kind == "MET":
            main.sim("fault", name="internal_meter", active=True)
            return [(t + hold, lambda: main.sim("fault", name="internal_meter", active=False))]
        if kind == "CP":
            # The vehicle's diode fails: ERR CP until the vehicle is unplugged (docs/errors.md).
            main.sim("fault", name="diode", active=True)
            self.main_ev.diode_failed = True
            return []
        # PE: a latched trip ends the session; the technician clears it once the cause is gone.
        # The session ends when the firmware detects it (the watcher sees the PE event).
        main.sim("fault", name="pe", active=True)
        return [(t + hold, self._technician_clears_pe)]

    def _technician_clears_pe(self):
        main = self.rig.main
        main.sim("fault", name="pe", active=False)
        main.wait_for(lambda s: "PE" in s["latched"], 10)
        login(main)
        r = main.http("POST", "/api/faults/clear", json={"codes": ["PE"]})
        if r.status != 200:
            self.bad(f"POST /api/faults/clear answered {r.status} {r.body}")
            return
        main.wait_for(lambda s: "PE" not in s["errors"], 10)
        self.counts["latched_cleared"] += 1

    def _settle(self):
        """Peers back, causes gone, vehicles gone; then everything must be delivered."""
        rig = self.rig
        if not rig.csms_running():
            rig.csms_up()
        if not rig.meter_running():
            rig.meter_up()
        self.temp()
        rig.main.sim("grid", volts=NOMINAL_V)
        for name in ("internal_meter", "diode", "pe"):
            rig.main.sim("fault", name=name, active=False)
        snap = rig.main.snapshot()
        if snap["latched"]:
            self._technician_clears_pe()
        rig.main.wait_for(lambda s: not s["session"]["active"] and s["cp_state"] == "A", 15)
        rig.cs.wait_connected("CP1", timeout=30)
        deadline = time.monotonic() + 60
        while True:
            o = rig.main.http("GET", "/api/status").body["ocpp"]
            if o["connected"] and o["queued"] == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"OCPP queue not drained within 60 s: {o}")
            time.sleep(0.2)

    # ---- the watching threads --------------------------------------------------------------------
    def _monitor(self):
        n = 0
        while not self._stop.is_set():
            self._poll_events()
            if n % 4 == 0:
                self._poll_snapshots()
            n += 1
            self._stop.wait(POLL_S)

    def _poll_events(self):
        for c in self.rig.chargers:
            if not c.running:
                continue
            w = self.watch[c.name]
            reply = c.sim("events", since=self._since[c.name])
            evs = reply["events"]
            if len(evs) >= 256 and evs[0]["t_us"] > self._since[c.name]:
                w.gaps += 1  # the ring overflowed between two polls
            w.feed(evs)
            if evs:
                self._since[c.name] = evs[-1]["t_us"] + 1
            w.check_time(reply["t_us"])

    def _poll_snapshots(self):
        total = 0.0
        offers = []
        for c in self.rig.chargers:
            s = c.snapshot()
            offers.append(s["offered_a"])
            total += s["offered_a"]
            if s["restarts"]:
                self.bad(f"{c.name}: task restarts {s['restarts']}")
            if s["offered_a"] > s["limit_a"] + 1e-6:
                self.bad(f"{c.name}: offers {s['offered_a']} A above its limit {s['limit_a']} A "
                         f"({s['limit_binding']})")
            if c is self.rig.main:
                o = s["ocpp"] or {}
                now = self.now()
                if not (o.get("connected") and not o.get("queued")):
                    self._unsteady_t = now
                # The buffers of a new connection settle within a few seconds.
                steady = now - self._unsteady_t >= STEADY_S
                self.heap.append((round(now, 1), s["heap_alloc"], steady))
                self.heap_free_min = min(self.heap_free_min, s["heap_free"])
                if now - self._heap_probe_t >= HEAP_PROBE_S:
                    self._heap_probe_t = now
                    h = c.sim("heap")
                    self.heap_largest_min = min(self.heap_largest_min, h["heap_largest"])
                    if h["heap_largest"] < HEAP_BLOCK_MIN:
                        self.bad(f"heap fragmented: largest free block {h['heap_largest']} B "
                                 f"of {h['heap_free']} B free")
        self.worst_pool = max(self.worst_pool, total)
        if total > HOUSE_A + 1e-6:
            self.bad(f"pool offers {offers} add up to {total} A, above {HOUSE_A} A")

    def _web_client(self):
        """A browser on the Charger State page, now and then another page."""
        main = self.rig.main
        pages = ["/api/history", "/api/faults", "/", "/api/status"]
        n = 0
        while not self._stop.is_set():
            path = "/api/status" if n % 6 else pages[(n // 6) % len(pages)]
            r = main.http("GET", path, timeout=15, headers={"Accept-Encoding": "gzip"})
            if r.status != 200:
                self.bad(f"GET {path} answered {r.status}")
            self.web_requests += 1
            n += 1
            self._stop.wait(WEB_POLL_S)

    # ---- at the end ------------------------------------------------------------------------
    def _final_checks(self):
        rig = self.rig
        sessions = self.counts["sessions"]
        recs, torn = read_records(rig.main.data_dir)
        for what in torn:
            self.bad(what)
        nos = sorted(recs)
        mine = [recs[n] for n in nos if n > self._base_no]
        last_no = nos[-1] if nos else self._base_no
        if last_no - self._base_no != sessions:
            self.bad(f"{sessions} sessions ran, history numbers {self._base_no + 1}..{last_no}")
        if nos != list(range(nos[0], nos[-1] + 1)) if nos else False:
            self.bad(f"history records missing or unreadable: {nos}")
        for h in mine:
            if h.get("id") != CARD or h.get("stop_mode") == "PowerLoss":
                self.bad(f"history record {h}")
        cs = rig.cs
        starts, stops, wrong = transactions(cs, "CP1", self._tx_mark)
        for what in wrong:
            self.bad(what)
        answers = cs.answered("CP1")
        twice = [mid for mid, a, _ in cs.calls("CP1", None, self._tx_mark)
                 if a in ("StartTransaction", "StopTransaction") and answers.get(mid, 0) > 1]
        if twice:
            self.bad(f"transaction messages answered twice (no power cut here): {twice}")
        if len(starts) != sessions or len(stops) != sessions:
            self.bad(f"{sessions} sessions, central system got {len(starts)} StartTransaction "
                     f"and {len(stops)} StopTransaction")
        self.counts["transactions"] = len(starts)
        for c in rig.chargers:
            text = c.log_path.read_text(errors="replace")
            for line in text.splitlines():
                if LOG_BAD.search(line):
                    self.bad(f"{c.name} log: {line.strip()}")
                    break
        g = self.heap_growth()
        if g is not None and g > HEAP_GROWTH_MAX:
            self.bad(f"heap after GC grows: floor {g} B higher at the end than after warm-up")
        for w in self.watch.values():
            if w.gaps:
                self.bad(f"{w.name}: events lost between polls {w.gaps} times")

    def heap_growth(self):
        """Floor (minimum) of heap_alloc in the last quarter minus that of the first quarter
        of the steady samples after the warm-up; None when there are too few to tell."""
        xs = [(t, h) for t, h, steady in self.heap if t >= WARMUP_S and steady]
        if len(xs) < 8:
            return None
        q = max(2, len(xs) // 4)
        return min(h for _, h in xs[-q:]) - min(h for _, h in xs[:q])

    def result(self):
        heap = [h for _, h, _ in self.heap]
        return {
            "seed": self.seed,
            "duration_s": round(self.now(), 1),
            **self.counts,
            "faults_by_code": self.faults_by_code,
            "relay_closes": {n: w.closes for n, w in self.watch.items()},
            "max_offer_a": {n: round(w.max_duty_a, 1) for n, w in self.watch.items()},
            "worst_pool_a": self.worst_pool,
            "web_requests": self.web_requests,
            "heap_alloc_worst": max(heap) if heap else None,
            "heap_alloc_first": heap[0] if heap else None,
            "heap_alloc_last": heap[-1] if heap else None,
            "heap_growth": self.heap_growth(),
            "heap_free_min": self.heap_free_min if self.heap else None,
            "heap_largest_min": self.heap_largest_min if self.heap else None,
            "sim_drops": {c.name: c.dropped for c in self.rig.chargers},
            "heap_samples": self.heap,
            "violations": self.violations,
        }


class _MainEv:
    """The EV at the main charger: plug (B), card, C, charge for a while, B, unplug."""

    def __init__(self, soak):
        self.s = soak
        self.c = soak.rig.main
        self.w = soak.watch["main"]
        self.state = "idle"
        self.until = soak.now() + 1.0
        self.deadline = None
        self.tap_t = None
        self.tap_at = -10.0
        self.taps = 0
        self.diode_failed = False
        self.active = False

    def can_inject(self):
        return self.state in ("idle", "charge")

    def reader_free(self, t):
        return self.state in ("idle", "charge") and t - self.tap_at > 1.5

    def _tap(self, t):
        self.tap_t = self.c.sim("card", uid=CARD, ms=500)["t_us"]
        self.tap_at = t
        self.taps += 1
        self.s.counts["card_taps"] += 1

    def step(self, t):
        s = self.s
        rng = s.rng
        st = self.state
        if st == "idle" and t >= self.until:
            s.ev(self.c, "B", max_a=rng.choice((16, 32)), phases=3)
            self.state, self.deadline, self.taps = "plugged", t + 5, 0
        elif st == "plugged":
            snap = self.c.snapshot()
            if snap["cp_state"] == "B" and not snap["errors"]:
                self._tap(t)
                self.state, self.deadline = "authorizing", t + 8
            elif t > self.deadline and not snap["errors"]:
                s.bad(f"main: vehicle plugged, pilot still {snap['cp_state']}")
                self._unplug(t)
            elif t > self.deadline + STUCK_S:
                # Every injected cause is gone within 30 s and clears within 10 s more.
                s.bad(f"main: vehicle plugged for {STUCK_S:.0f} s, charger still shows "
                      f"{snap['errors']} ({snap['state']})")
                self._unplug(t)
        elif st == "authorizing":
            snap = self.c.snapshot()
            if snap["session"]["active"]:
                self.active = True
                s.counts["sessions"] += 1
                self.w.authorized(self.tap_t)
                s.ev(self.c, "C", max_a=rng.choice((16, 32)), phases=3)
                self.state, self.until = "charge", t + rng.uniform(8, 40)
            elif t > self.deadline:
                if self.taps < 3 and not snap["latched"]:
                    self._tap(t)
                    self.deadline = t + 8
                else:
                    if not snap["latched"] and not snap["errors"]:
                        s.bad(f"main: the learned card was refused {self.taps} times")
                    self._unplug(t)
        elif st == "charge":
            snap = self.c.snapshot()
            if not snap["session"]["active"]:
                self.active = False  # ended by a latched trip
                self._end(t)
            elif t >= self.until:
                if rng.random() < 0.25 and self.reader_free(t):
                    self._tap(t)  # the driver ends it with the card
                    s.counts["stop_taps"] += 1
                    self.w.deauthorized(self.tap_t)
                    self.state, self.deadline = "stopping", t + 8
                else:
                    self._end(t)
        elif st == "stopping":
            snap = self.c.snapshot()
            if not snap["session"]["active"]:
                self.active = False
                self._end(t)
            elif t > self.deadline:
                s.bad("main: the card that started the charge did not stop it")
                self._end(t)
        elif st == "ending" and t >= self.until:
            self._unplug(t)
        elif st == "unplugging":
            snap = self.c.snapshot()
            if not snap["session"]["active"] and snap["cp_state"] in ("A", "F", "E"):
                self.active = False
                self.state, self.until = "idle", t + s.rng.uniform(1, 4)
            elif t > self.deadline:
                s.bad(f"main: unplugged, session still {snap['session']} / {snap['cp_state']}")
                self.state, self.until = "idle", t + 1

    def _end(self, t):
        self.s.ev(self.c, "B", max_a=16, phases=3)
        self.state, self.until = "ending", t + self.s.rng.uniform(0.5, 3)

    def _unplug(self, t):
        t_us = self.s.ev(self.c, "A")
        self.w.deauthorized(t_us)
        if self.diode_failed:
            self.c.sim("fault", name="diode", active=False)
            self.diode_failed = False
        self.state, self.deadline = "unplugging", t + 10

    def finish(self):
        """The run is over: end the cycle at once."""
        t = self.s.now()
        if self.state == "authorizing":  # a tap in flight may still start a session
            deadline = time.monotonic() + 8
            while self.state == "authorizing" and time.monotonic() < deadline:
                self.step(t)
                time.sleep(STEP_S)
            t = self.s.now()
        if self.state in ("charge", "stopping", "authorizing"):
            self._end(t)
        if self.state != "idle":
            self._unplug(t)
            while self.state == "unplugging":
                time.sleep(STEP_S)
                self.step(self.s.now())
        # A tap that started a session after we stopped waiting for it still counts.
        if self.s.rig.main.snapshot()["session"]["active"]:
            self.s.bad("main: a session still runs after the unplug")


class _NodeEv:
    """A car at one of the other chargers (free mode): charges, pauses, leaves, comes back."""

    def __init__(self, soak, c):
        self.s = soak
        self.c = c
        self.state = "A"
        self.until = soak.now() + soak.rng.uniform(0, 5)

    def step(self, t):
        if t < self.until:
            return
        rng = self.s.rng
        nxt = {"A": "B", "B": "C", "C": rng.choice(("B", "B", "A"))}[self.state]
        self.s.ev(self.c, nxt, max_a=rng.choice((10, 16, 32)), phases=3)
        if nxt == "B" and self.state == "A":
            self.s.counts["node_plugs"] += 1
        self.state = nxt
        self.until = t + (rng.uniform(1, 3) if nxt == "B" else rng.uniform(10, 40))

    def finish(self):
        self.s.ev(self.c, "A")
