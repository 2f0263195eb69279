"""Shared by the load-balancing tests (tests/test_load_balancing*.py) and
tools/bench_balance.py: a pool of firmware processes on one simulated CAN bus, a watcher
that records every charger's offer, and the waits.

Numbers of the protocol (docs/load-balancing.md) the tests lean on are repeated here."""
import socket
import struct
import threading
import time

from harness import Charger, free_port, wait_until

CYCLE_S = 1.0  # the master allocates this often (balance.CYCLE_MS)
TICK_S = 0.1  # the balancer's tick: frames are read, a due cycle runs (balance._TICK_MS)
ID_ALLOC = 0x600  # + destination address: master -> node
ID_STATUS = 0x610  # + sender address: node -> all
ST_WANT = 2  # status byte 3, bits 0-1: a session that needs current
NODE_TIMEOUT_S = 3.0
MASTER_TIMEOUT_S = 3.0
MASTER_LOST_TEXT = "CAN MST LOST"  # balance.MASTER_LOST_TEXT, in the display rotation


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


class BusTap:
    """Listens on a simulated CAN bus (boards/unix_sim/sim_can.py: UDP datagrams to
    127.255.255.255:port) beside the chargers and keeps every frame it hears as
    (host time, id, data), so that a test can tell when a node asked for current and
    when the master granted it. A context manager; close() stops it."""

    def __init__(self, port):
        self.frames = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._sock.bind(("127.255.255.255", port))  # the bus's broadcasts, loopback only
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self._sock.recv(64)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) == 16:  # id u32 LE, dlc, 3 pad bytes, 8 data bytes
                can_id, dlc = struct.unpack_from("<IB", data)
                self.frames.append((time.monotonic(), can_id, bytes(data[8:8 + dlc])))

    def close(self):
        self._stop.set()
        self._thread.join(timeout=1.0)
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _first(self, since, match):
        for t, can_id, data in list(self.frames):
            if t >= since and len(data) == 8 and match(can_id, data):
                return t
        return None

    def asked(self, addr, since):
        """When node `addr` first announced after `since` that it needs current."""
        return self._first(since, lambda i, d: i == ID_STATUS + addr and d[3] & 3 == ST_WANT)

    def granted(self, addr, since):
        """When the master first allocated node `addr` at least 6 A after `since`."""
        return self._first(since, lambda i, d: i == ID_ALLOC + addr and d[4] >= 12)


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
