"""Shared by the load-balancing tests (tests/test_load_balancing*.py) and
tools/bench_balance.py: a pool of firmware processes on one simulated CAN bus, a watcher
that records every charger's offer, and the waits.

Numbers of the protocol (docs/load-balancing.md) the tests lean on are repeated here."""
import socket
import time

from harness import Charger, free_port, wait_until

CYCLE_S = 1.0  # the master allocates this often (balance.planner.CYCLE_MS)
TICK_S = 0.1  # the balancer's tick: frames are read, a due cycle runs (balance.node._TICK_MS)
# A tick or a meter read that runs late on a loaded host (asyncio sleeps, the scheduler):
# the most one comes after its place on its grid.
LATE_S = 0.3
HMI_S = 0.1  # app._HMI_MS: the display follows within one HMI tick
ID_ALLOC = 0x600  # + destination address: master -> node
ID_STATUS = 0x610  # + sender address: node -> all
ST_WANT = 2  # status byte 3, bits 0-1: a session that needs current
NODE_TIMEOUT_S = 3.0
MASTER_TIMEOUT_S = 3.0
MASTER_LOST_TEXT = "CAN MST LOST"  # balance.node.MASTER_LOST_TEXT, in the display rotation


def offers(snaps):
    return [s["offered_a"] if s else None for s in snaps]


def bal(s, key):
    return s and s.get("balance") and s["balance"].get(key)


def plug(c, max_a=32, phases=1):
    """A car in state C (it asks for current) drawing at most max_a on `phases` phases."""
    c.sim("ev", state="C", diode=True, max_a=max_a, phases=phases)


class Watch:
    """Takes every charger's snapshot in turn (one request at a time on each charger's
    socket) and keeps what it saw: the largest sum of offers, and every round as
    (host time at its start and end, offers) for checks against a limit that
    changes (a meter's house load)."""

    def __init__(self, chargers, limit=None, masks=None):
        self.chargers = chargers
        self.limit = limit
        self.masks = masks or [7] * len(chargers)  # phases each charger loads (L1|L2|L3)
        self.worst = (0.0, None)
        self.snaps = []
        self.rounds = []
        self.hooks = []  # fn(snaps): called on every round (extra checks)

    def poll(self):
        t0 = time.monotonic()
        total = 0.0
        snaps = []
        for c in self.chargers:
            s = c.try_snapshot(timeout=0.5) if c.running else None
            snaps.append(s)
            if s is not None and "offered_a" in s:
                total += s["offered_a"]
        if total > self.worst[0]:
            self.worst = (total, offers(snaps))
        self.snaps = snaps
        self.rounds.append((t0, time.monotonic(), offers(snaps)))
        for h in self.hooks:
            h(snaps)
        return snaps

    def offers(self):
        return offers(self.snaps)

    def wait(self, pred, timeout, what):
        return wait_until(lambda: pred(self.poll()), timeout, what, step=0.05)

    def phase_sums(self, offered):
        out = [0.0, 0.0, 0.0]
        for i, o in enumerate(offered):
            for p in range(3):
                if o and self.masks[i] & (1 << p):
                    out[p] += o
        return out

    def check(self, limit=None):
        limit = self.limit if limit is None else limit
        assert self.worst[0] <= limit + 1e-6, f"offers {self.worst} above {limit} A"


def can_frames(c, since_us=0):
    """The CAN frames charger `c` sent (`dir` tx) and read (rx) from `since_us` on, each
    {"t_us", "dir", "id", "data" (bytes)}, stamped on its own clock (the `can` op's trace:
    a frame is stamped when the firmware read it, i.e. when it could act on it)."""
    can = c.sim("can", since=since_us)["can"]
    out = can["frames"]
    oldest = can["trace_oldest_us"]
    assert not (can["trace_dropped"] and oldest is not None and oldest > since_us), \
        f"{c.name}: its CAN trace no longer reaches back to {since_us} (oldest {oldest}): " \
        "read it sooner"
    for f in out:
        f["data"] = bytes.fromhex(f["data"])
    return out


def asked(frames, addr):
    """The first status frame of node `addr` saying it needs current, or None."""
    return next((f for f in frames if f["id"] == ID_STATUS + addr and len(f["data"]) == 8
                 and f["data"][3] & 3 == ST_WANT), None)


def granted(frames, addr, after_us):
    """The first allocation of at least 6 A to node `addr` after `after_us`, or None."""
    return next((f for f in frames if f["id"] == ID_ALLOC + addr and len(f["data"]) == 8
                 and f["t_us"] > after_us and f["data"][4] >= 12), None)


# The node counts the master-lost timeout from its balancer tick's `now`, taken before
# that tick drains the received frames the trace stamps: a few ms before the frame's t_us.
EARLY_S = 0.02


def check_fallback(c, since_us, offered, frames=None):
    """On node c's own clock: MASTER_TIMEOUT_S after the last allocation it read, its
    offer falls to its fallback share (at the balancer's tick that notices, at once), the
    warning shows and the fault LED blinks (a new warning at once, at the next HMI
    tick). frames: its CAN trace from since_us, read earlier (a busy bus of many nodes
    wraps the trace in seconds)."""
    addr = bal(c.snapshot(), "addr")
    if frames is None:
        frames = can_frames(c, since_us)
    allocs = [f for f in frames if f["dir"] == "rx" and f["id"] == ID_ALLOC + addr]
    assert allocs, f"{c.name}: no allocation read before the master went silent"
    t_last = allocs[-1]["t_us"]
    events = c.events(t_last)
    shown = next((e for e in events if e["what"] == "display"
                  and e["value"] == MASTER_LOST_TEXT), None)
    assert shown is not None, f"{c.name}: the warning was never shown"
    took = (shown["t_us"] - t_last) / 1e6
    assert MASTER_TIMEOUT_S - EARLY_S <= took <= MASTER_TIMEOUT_S + TICK_S + HMI_S + 2 * LATE_S, \
        f"{c.name}: warning {took:.2f} s after the last allocation"
    blink = next((e for e in events if e["what"] == "leds" and e["value"]["name"] == "fault"
                  and e["value"]["pattern"] == "slow"), None)
    assert blink is not None, f"{c.name}: the fault LED never blinked"
    took = (blink["t_us"] - t_last) / 1e6
    assert took <= MASTER_TIMEOUT_S + TICK_S + HMI_S + 2 * LATE_S, \
        f"{c.name}: fault LED {took:.2f} s after the last allocation"
    # What it offered when the master went silent: its last duty change up to then (an
    # allocation may have moved it after the test's look), else what the test saw.
    earlier = [e for e in c.events(since_us) if e["what"] == "pwm_duty_pct"
               and e["t_us"] <= t_last]
    if earlier:
        offered = (earlier[-1]["value"] or 0) * 0.6
    offered = min(offered or 0, allocs[-1]["data"][4] / 2)  # the last allocation it read
    if offered and offered > 6.05:
        cut = next((e for e in events if e["what"] == "pwm_duty_pct" and e["value"] is not None
                    and e["value"] * 0.6 <= 6.05), None)
        duties = [(e["t_us"] - t_last, e["value"]) for e in c.events(since_us)
                  if e["what"] == "pwm_duty_pct"]
        assert cut is not None, \
            f"{c.name}: never cut to its fallback share from {offered} A; duty changes " \
            f"{duties}, allocations {[(f['t_us'] - t_last, f['data'][4] / 2) for f in allocs]}"
        took = (cut["t_us"] - t_last) / 1e6
        assert MASTER_TIMEOUT_S - EARLY_S <= took <= MASTER_TIMEOUT_S + TICK_S + LATE_S, \
            f"{c.name}: fallback share {took:.2f} s after the last allocation"


class Pool:
    """n chargers on one simulated CAN bus, node i at `can_addr` i + 1, each in its own
    directory with its own ports; started side by side. `extra(i)` gives settings of node
    i on top of `settings`, `env(i)` its environment. Stop them with close()."""

    def __init__(self, tmp_path, n, settings, extra=None, env=None, request=None):
        self.bus = {"EVSE_CAN_PORT": str(free_port(socket.SOCK_DGRAM))}
        self.chargers = []
        for i in range(n):
            s = dict(settings, lb_enabled=True, can_addr=i + 1)
            s.update(extra(i) if extra else {})
            e = dict(self.bus, **(env(i) if env else {}))
            self.chargers.append(Charger(tmp_path / f"node{i + 1}", settings=s, env=e,
                                         name=f"node{i + 1}"))
        if request is not None:
            request.node.chargers = self.chargers  # their logs in a failure's report

    @property
    def bus_port(self):
        return int(self.bus["EVSE_CAN_PORT"])

    @property
    def sim_ports(self):
        return [c.sim_port for c in self.chargers]

    def start(self, timeout=40.0):
        """Launches every process first, then waits for each (a loaded machine boots
        eight interpreters slowly: the deadline is for all of them)."""
        for c in self.chargers:
            c.launch()
        deadline = time.monotonic() + timeout
        for c in self.chargers:
            c.wait_ready(max(1.0, deadline - time.monotonic()))

    def close(self):
        for c in self.chargers:
            c.stop()
