"""The whole charger and its peers, for the soak (tools/soak.py, tests/test_soak.py) and
the power-cut campaign (tools/powercut.py, tests/test_powercut_campaign.py).

    rig = Rig(workdir)
    rig.start()          # central system, socat + pymodbus meter, main charger, 2 nodes
    rig.main.sim("ev", state="B")
    rig.close()

The main charger (CP1, RFID cards, case B) is the OCPP charge point, reads the house
meter (SDM630 on a socat pty, tests/modbus_meter.py) and is the load-balancing master of
two more chargers on the same simulated CAN bus (free mode). Everything runs on loopback
and everything started here is stopped by close().
"""

import json
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import csms
from harness import ROOT, Charger, default_heap, firmware_tree, free_port
from test_power_management import MeterServer, PtyPair

CARD = "04A1B2C3"  # learned on the main charger
STRANGER = "0BADCAFE"  # unknown: the central system answers Invalid
HOUSE_A = 40  # max_house_current_a: the pool limit per phase
MAIN_MAX_A = 32
NODE_MAX_A = (16, 32)
OCPP_FAST = {  # reconnect quickly after an outage, report meter values now and then
    "RetryBackOffWaitMinimum": 1,
    "RetryBackOffRandomRange": 0,
    "RetryBackOffRepeatTimes": 1,
    "MessageTimeout": 5,
    "MeterValueSampleInterval": 10,
}
METER_LOAD = [4.0, 4.0, 4.0]
# Every feature at once (OCPP, meter, CAN master, web polling) holds about 110 KB of data
# after GC on this port, and at 128 KB the heap fragments below a 4 KB free block: the
# soak runs with 160 KB of data until that is brought down (docs/development.md).
SOAK_DATA_KB = 160


def soak_heap():
    return default_heap(firmware_tree(), data_kb=SOAK_DATA_KB)


class SharedCharger(Charger):
    """A Charger whose simulator socket several threads may use (one request at a time)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.RLock()
        self.dropped = 0  # simulator connections the charger closed on us

    def request(self, obj, timeout=10.0):
        """One request; asked once more on a new connection when the charger dropped the
        first one (its log says why, and the soak reads the logs)."""
        with self._lock:
            try:
                return super().request(obj, timeout)
            except ConnectionError as e:
                if not self.running or isinstance(e, ConnectionRefusedError):
                    raise  # not up yet (start() polls), or gone
                self.dropped += 1
                return super().request(obj, timeout)

    def launch(self):
        with self._lock:
            return super().launch()

    def kill(self):
        with self._lock:
            return super().kill()

    def stop(self, timeout=5.0):
        with self._lock:
            return super().stop(timeout)


def seed_ocpp(c, config=None, cards=(CARD,)):
    """What an installer leaves in the data directory: OCPP keys and learned cards."""
    (c.data_dir / "ocpp_config.json").write_text(
        json.dumps({k: str(v) for k, v in (config or OCPP_FAST).items()}))
    slots = list(cards) + [None] * (3 - len(cards))
    (c.data_dir / "cards.json").write_text(json.dumps({"slots": slots}))


class Rig:
    def __init__(self, workdir, nodes=2, heap=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.n_nodes = nodes
        self.heap = heap
        self.cs = None
        self.pty = None
        self.meter = None
        self.main = None
        self.nodes = []

    @property
    def chargers(self):
        return [self.main, *self.nodes]

    def start(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self):
        self.cs = csms.CentralSystem()
        self.cs.tags = {STRANGER: "Invalid"}
        self.cs.start()
        self.pty = PtyPair(self.workdir)
        bus = {"EVSE_CAN_PORT": str(free_port(socket.SOCK_DGRAM))}
        self.main = SharedCharger(
            self.workdir / "main", name="main", heap=self.heap,
            env={**bus, "EVSE_RS485": str(self.pty.a)},
            settings={
                "ocpp_url": self.cs.url("CP1"), "auth_mode": "rfid", "meter_model": "SDM630",
                "max_house_current_a": HOUSE_A, "max_current_a": MAIN_MAX_A,
                "lb_enabled": True, "can_addr": 1, "charger_power": "22kW",
                "phase_set": "L123",
            })
        seed_ocpp(self.main)
        self.meter = MeterServer("SDM630", self.pty.b, self.workdir, self.main.sim_port,
                                 "L123", METER_LOAD)
        self.meter.start()
        self.main.start()
        for i in range(self.n_nodes):
            node = SharedCharger(
                self.workdir / f"node{i + 2}", name=f"node{i + 2}", heap=self.heap, env=bus,
                settings={"auth_mode": "free", "lb_enabled": True, "can_addr": i + 2,
                          "max_house_current_a": HOUSE_A,
                          "max_current_a": NODE_MAX_A[i % len(NODE_MAX_A)]})
            self.nodes.append(node)
            node.start()
        self.cs.wait_connected("CP1", timeout=20)

    def close(self):
        for c in self.chargers:
            if c is not None:
                c.stop()
        if self.meter is not None:
            self.meter.stop()
        if self.pty is not None:
            self.pty.close()
        if self.cs is not None:
            self.cs.close()

    # ---- peers going away and coming back --------------------------------------------------
    def meter_down(self):
        self.meter.stop()

    def meter_up(self):
        self.meter.start()

    def meter_running(self):
        return self.meter.proc is not None and self.meter.proc.poll() is None

    def csms_down(self):
        self.cs.stop()

    def csms_up(self):
        self.cs.start()

    def csms_running(self):
        return self.cs._server is not None


def login(c):
    r = c.http("POST", "/api/login", json={"password": c.password})
    if r.status != 200:
        raise AssertionError(f"{c.name}: login refused: {r.status} {r.body}")


MAX_RECORD = 512  # history.py: bytes per charge record


def _parse_segment(data):
    """Whole records of one lib/recordlog segment: magic "RL", length, sequence number,
    payload, CRC-32 of all before it. Returns ([seq], leftover bytes)."""
    seqs, off = [], 0
    while len(data) - off >= 12:
        magic, n, seq = struct.unpack_from("<HHI", data, off)
        end = off + 12 + n
        if magic != 0x4C52 or n > MAX_RECORD or end > len(data):
            break
        if struct.unpack_from("<I", data, end - 4)[0] != zlib.crc32(data[off : end - 4]):
            break
        seqs.append(seq)
        off = end
    return seqs, data[off:]


def read_records(data_dir, log="sessions"):
    """The charge records on disk ({no: record}), read by the documented record format
    (every CRC checked) rather than through the firmware, whose GET /api/history builds
    the whole answer in memory; and what is wrong with the files (torn bytes anywhere but
    at the end of the newest segment)."""
    recs, bad = {}, []
    segs = sorted(Path(data_dir).glob(f"{log}.*.log"), key=lambda p: int(p.name.split(".")[1]))
    for i, seg in enumerate(segs):
        data = seg.read_bytes()
        seqs, rest = _parse_segment(data)
        if rest and i != len(segs) - 1:
            bad.append(f"{seg.name}: {len(rest)} bytes after the good records")
        off = 0
        for seq in seqs:
            n = struct.unpack_from("<H", data, off + 2)[0]
            rec = json.loads(data[off + 8 : off + 8 + n])
            rec["no"] = seq
            recs[seq] = rec
            off += 12 + n
    return recs, bad


def transactions(cs, cp_id, since):
    """What the central system processed since `since` (a cs.mark()): the StartTransaction
    and StopTransaction payloads, each message id once, and what is wrong with them: a
    transaction stopped twice (a repeated transactionId) or started twice (a
    transactionId given that is never stopped)."""
    msgs = cs.delivered(cp_id, ("StartTransaction", "StopTransaction"), since)
    given = {}  # StartTransaction message id -> the transactionId the central system gave
    for f in cs.frames[since:]:
        m = f["msg"]
        if f["dir"] == "out" and f["cp"] == cp_id and isinstance(m, list) and len(m) == 3 \
                and m[0] == 3 and isinstance(m[2], dict) and "transactionId" in m[2]:
            given[m[1]] = m[2]["transactionId"]
    starts = [p for _, a, p in msgs if a == "StartTransaction"]
    stops = [p for _, a, p in msgs if a == "StopTransaction"]
    started = sorted(given.get(mid, -1) for mid, a, _ in msgs if a == "StartTransaction")
    stopped = sorted(p["transactionId"] for p in stops)
    bad = []
    if len(stopped) != len(set(stopped)):
        bad.append(f"a transaction stopped twice: {stopped}")
    if started != stopped:
        bad.append(f"transactions started {started} but stopped {stopped}")
    return starts, stops, bad


# ---- the command-line tools (tools/soak.py, tools/powercut.py) -------------------------------
def tool_start(args, name):
    """A SIGTERM stops everything the tool started, as Ctrl-C does. Returns the heap size
    (--heap or the harness default) and the work dir (--keep or a new one under build/)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    heap = args.heap or soak_heap()
    work = args.keep or Path(tempfile.mkdtemp(prefix=name + "-", dir=ROOT / "build"))
    return heap, work


def tool_finish(args, name, result, work):
    """Writes --json, keeps the logs when something failed (or --keep), else removes the
    work dir. Returns the exit code: 1 on any violation."""
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if result["violations"]:
        print(f"{name}: logs kept in {work}", file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0
