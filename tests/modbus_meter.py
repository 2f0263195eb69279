"""A grid meter on a serial line: a pymodbus RTU server that answers like one of the
supported meters, for the tests and for a person at the bench.

    python tests/modbus_meter.py --model SDM630 --port /dev/pts/N
        [--slave 1] [--baud 9600] [--load 10,5,5] [--volts 230,230,230]
        [--map meter_custom.json]             (--model custom: the charger's JSON map)
        [--charger-sim 8090[,8091...] | --charger-status http://127.0.0.1:8080/api/status]
        [--charger-phases L123] [--control-port 0]

The meter measures the grid connection: per phase, the house's other loads (`--load`,
amps) plus the charger's own current. With `--charger-sim` it asks the simulated
charger's control socket (127.0.0.1) for the current through its contacts (snapshot
`plant.amps`) ten times a second (several ports: chargers side by side behind the
meter, a load-balancing pool, their currents added); with `--charger-status` it polls
the charger's `GET /api/status` (`output_a`, the internal meter's last reading) instead.
So a reply may show the charger's current of up to a tenth of a second (more on a busy
host) before: a reading taken just as the car starts or changes its draw sees the
charger's own current differently from the charger, and counts the difference as house
load (or room). Tests step the house load from a steady state (the charger's draw
already in a reading) and judge the reaction from the reading that shows the step.
Asking the charger at each request instead put a round trip between two processes into
every reply, which a loaded host stretched past the charger's 250 ms reply timeout.
`--charger-phases` says where the charger's current flows (L123: its L1/L2/L3 on the
house's L1/L2/L3; L1, L2 or L3: its one phase on that house phase).

Once serving it prints one line `READY control=<port>` on stdout. The control port
(127.0.0.1, newline-delimited JSON, one reply line per request) changes the meter at run
time:

    {"op": "load", "amps": [a1, a2, a3]}        other loads, amps per phase
    {"op": "charger", "amps": [a1, a2, a3]}     the charger's current (stops the polling)
    {"op": "volts", "volts": [v1, v2, v3]}
    {"op": "fault", "kind": K, "every": N}      spoil every Nth reply (N = 1: all of them);
        K: crc (last byte flipped), exception (exception 04, slave device failure),
        garbage (random bytes instead of the reply), noise (random bytes before the
        reply), wrong_slave (answers as another address), silent (no reply), none
    {"op": "state"}                             counters and what the meter shows

Everything stays on 127.0.0.1 and the serial device given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
import urllib.request

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

QUANTITIES = ("v_l1", "v_l2", "v_l3", "i_l1", "i_l2", "i_l3", "p_l1", "p_l2", "p_l3",
              "p_total", "e_import")

# Register maps as the manufacturers publish them (see firmware/evse/meters.py for the
# sources). Each field: quantity -> (function, register, type, word order, scale), where
# value on the wire = physical value / scale.
_EASTRON = {
    "v_l1": (4, 0x0000, "f32", "big", 1), "v_l2": (4, 0x0002, "f32", "big", 1),
    "v_l3": (4, 0x0004, "f32", "big", 1), "i_l1": (4, 0x0006, "f32", "big", 1),
    "i_l2": (4, 0x0008, "f32", "big", 1), "i_l3": (4, 0x000A, "f32", "big", 1),
    "p_l1": (4, 0x000C, "f32", "big", 1), "p_l2": (4, 0x000E, "f32", "big", 1),
    "p_l3": (4, 0x0010, "f32", "big", 1), "p_total": (4, 0x0034, "f32", "big", 1),
    "e_import": (4, 0x0048, "f32", "big", 1),
}
MODELS = {
    "SDM630": {"phases": 3, "max_regs": 80, "fields": _EASTRON},
    "SDM72": {"phases": 3, "max_regs": 80, "fields": _EASTRON},
    "SDM120": {"phases": 1, "max_regs": 80, "fields": {
        "v_l1": (4, 0x0000, "f32", "big", 1), "i_l1": (4, 0x0006, "f32", "big", 1),
        "p_l1": (4, 0x000C, "f32", "big", 1), "e_import": (4, 0x0048, "f32", "big", 1),
    }},
    "ABB_B23": {"phases": 3, "max_regs": 125, "fields": {
        "v_l1": (3, 0x5B00, "u32", "big", 0.1), "v_l2": (3, 0x5B02, "u32", "big", 0.1),
        "v_l3": (3, 0x5B04, "u32", "big", 0.1), "i_l1": (3, 0x5B0C, "u32", "big", 0.01),
        "i_l2": (3, 0x5B0E, "u32", "big", 0.01), "i_l3": (3, 0x5B10, "u32", "big", 0.01),
        "p_total": (3, 0x5B14, "i32", "big", 0.01), "p_l1": (3, 0x5B16, "i32", "big", 0.01),
        "p_l2": (3, 0x5B18, "i32", "big", 0.01), "p_l3": (3, 0x5B1A, "i32", "big", 0.01),
        "e_import": (3, 0x5000, "u64", "big", 0.01),
    }},
    "EM340": {"phases": 3, "max_regs": 50, "fields": {
        "v_l1": (4, 0x0000, "i32", "little", 0.1), "v_l2": (4, 0x0002, "i32", "little", 0.1),
        "v_l3": (4, 0x0004, "i32", "little", 0.1), "i_l1": (4, 0x000C, "i32", "little", 0.001),
        "i_l2": (4, 0x000E, "i32", "little", 0.001), "i_l3": (4, 0x0010, "i32", "little", 0.001),
        "p_l1": (4, 0x0012, "i32", "little", 0.1), "p_l2": (4, 0x0014, "i32", "little", 0.1),
        "p_l3": (4, 0x0016, "i32", "little", 0.1), "p_total": (4, 0x0028, "i32", "little", 0.1),
        "e_import": (4, 0x0034, "i32", "little", 0.1),
    }},
    "DTSU666": {"phases": 3, "max_regs": 125, "fields": {
        "v_l1": (3, 0x2006, "f32", "big", 0.1), "v_l2": (3, 0x2008, "f32", "big", 0.1),
        "v_l3": (3, 0x200A, "f32", "big", 0.1), "i_l1": (3, 0x200C, "f32", "big", 0.001),
        "i_l2": (3, 0x200E, "f32", "big", 0.001), "i_l3": (3, 0x2010, "f32", "big", 0.001),
        "p_total": (3, 0x2012, "f32", "big", 0.1), "p_l1": (3, 0x2014, "f32", "big", 0.1),
        "p_l2": (3, 0x2016, "f32", "big", 0.1), "p_l3": (3, 0x2018, "f32", "big", 0.1),
        "e_import": (3, 0x401E, "f32", "big", 1),
    }},
}
_TYPES = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "f32": ">f", "u64": ">Q",
          "i64": ">q"}
_SPAN_GAP = 64  # registers closer than this share one register block of the image


def custom_model(path):
    """A model from the charger's custom map format (docs/power-management.md)."""
    with open(path) as f:
        obj = json.load(f)
    fc = obj.get("function", 4)
    words = obj.get("word_order", "big")
    fields = {}
    for qty, f in obj["fields"].items():
        reg = f["reg"]
        reg = int(reg, 0) if isinstance(reg, str) else reg
        fields[qty] = (f.get("function", fc), reg, f.get("type", "f32"),
                       f.get("word_order", words), f.get("scale", 1))
    phases = 3 if "i_l2" in fields else 1
    return {"phases": phases, "max_regs": obj.get("max_regs", 125), "fields": fields}


def encode(value, typ, words, scale):
    """Register words of a physical value."""
    raw = value / scale
    fmt = _TYPES[typ]
    if fmt != ">f":
        raw = int(round(raw))
        if fmt[1] in "HIQ":  # unsigned: a meter shows no negative current or energy
            raw = max(raw, 0)
    b = struct.pack(fmt, raw)
    out = [(b[i] << 8) | b[i + 1] for i in range(0, len(b), 2)]
    if words == "little":
        out.reverse()
    return out


class Meter:
    """What the meter measures, and the register image it answers from."""

    def __init__(self, model, load, volts, charger_phases):
        self.model = model
        self.load = list(load)
        self.volts = list(volts)
        self.charger = [0.0, 0.0, 0.0]
        self.charger_phases = charger_phases
        self.charger_fixed = False
        self.energy_kwh = 1000.0
        self._t = time.monotonic()
        self.fault_kind = "none"
        self.fault_every = 1
        self.replies = 0
        self.requests = 0
        self.faults = 0
        self.lock = threading.Lock()

    def grid_amps(self):
        own = [0.0, 0.0, 0.0]
        if self.charger_phases == "L123":
            own = list(self.charger)
        else:
            own[int(self.charger_phases[1]) - 1] = self.charger[0]
        if self.model["phases"] == 1:
            return [self.load[0] + sum(own), 0.0, 0.0]
        return [self.load[k] + own[k] for k in range(3)]

    def values(self):
        amps = self.grid_amps()
        watts = [self.volts[k] * amps[k] for k in range(3)]
        now = time.monotonic()
        self.energy_kwh += max(sum(watts), 0.0) * (now - self._t) / 3.6e6
        self._t = now
        return {
            "v_l1": self.volts[0], "v_l2": self.volts[1], "v_l3": self.volts[2],
            "i_l1": abs(amps[0]), "i_l2": abs(amps[1]), "i_l3": abs(amps[2]),
            "p_l1": watts[0], "p_l2": watts[1], "p_l3": watts[2],
            "p_total": sum(watts), "e_import": self.energy_kwh,
        }

    def spoil(self):
        """True when this reply gets the configured fault."""
        if self.fault_kind == "none":
            return False
        return self.replies % self.fault_every == 0


def build_device(meter, slave):
    """SimDevice with the model's registers in the holding (FC 03) and input (FC 04)
    blocks; every read refreshes them from the meter's state."""
    fields = meter.model["fields"]
    regs = {3: [], 4: []}
    for fc, reg, typ, _w, _s in fields.values():
        n = struct.calcsize(_TYPES[typ]) // 2
        regs[fc].append((reg, reg + n))
    blocks = {3: [], 4: []}
    for fc, spans in regs.items():
        spans.sort()
        merged = []
        for lo, hi in spans:
            if merged and lo - merged[-1][1] < _SPAN_GAP:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        for lo, hi in merged:
            blocks[fc].append(SimData(lo, count=hi - lo, values=0, datatype=DataType.REGISTERS))
        if not blocks[fc]:
            # Nothing served with this function: a lone register far away, so reads of
            # the real map with it fail with "illegal data address" as on the device.
            blocks[fc].append(SimData(0xFF00, values=0, datatype=DataType.REGISTERS))
    bits = [SimData(0, values=False, datatype=DataType.BITS)]

    async def action(function_code, start_address, address, count, registers, set_values):
        with meter.lock:
            meter.requests += 1
            meter.replies += 1
            if meter.fault_kind == "exception" and meter.spoil():
                meter.faults += 1
                return ExcCodes.DEVICE_FAILURE
            vals = meter.values()
        for qty, (fc, reg, typ, words, scale) in fields.items():
            if fc != function_code and not (fc == 3 and function_code in (6, 16)):
                continue
            i = reg - start_address
            w = encode(vals[qty], typ, words, scale)
            if 0 <= i and i + len(w) <= len(registers):
                registers[i : i + len(w)] = w
        return None

    return SimDevice(slave, simdata=(bits, list(bits), blocks[3], blocks[4]), action=action)


def make_tracer(meter, slave):
    def trace_packet(sending, packet):
        if not sending:
            return packet
        with meter.lock:
            kind = meter.fault_kind
            if kind in ("none", "exception") or not meter.spoil():
                return packet
            meter.faults += 1
        if kind == "crc":
            return packet[:-1] + bytes([packet[-1] ^ 0xFF])
        if kind == "garbage":
            return bytes(random.choice(range(0x10, 0x7F)) for _ in range(len(packet)))
        if kind == "noise":
            return bytes([0x00, 0xFF, 0x55, 0x3C]) + packet
        if kind == "wrong_slave":
            body = bytes([(slave % 247) + 1]) + packet[1:-2]
            return body + _crc(body)
        if kind == "silent":
            return b""
        return packet

    return trace_packet


def _crc(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return bytes([crc & 0xFF, crc >> 8])


def _status_amps(url):
    with urllib.request.urlopen(url, timeout=1.0) as r:
        return json.loads(r.read()).get("output_a")


class _SumAmps:
    """The currents of several simulated chargers behind one meter, added phase by
    phase; a charger that does not answer counts with its last value."""

    def __init__(self, ports):
        self.sources = [_SimAmps(p) for p in ports]
        self.last = [[0.0, 0.0, 0.0] for _ in ports]

    def __call__(self):
        for i, src in enumerate(self.sources):
            try:
                amps = src()
            except (OSError, ValueError):
                continue
            if isinstance(amps, list) and len(amps) == 3:
                self.last[i] = [float(a or 0.0) for a in amps]
        return [sum(a[k] for a in self.last) for k in range(3)]


class _SimAmps:
    """The current through the charger's contacts, from its simulator socket."""

    def __init__(self, port):
        self.port = port
        self.sock = None
        self.reader = None

    def __call__(self):
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
                self.reader = self.sock.makefile("rb")
            self.sock.sendall(b'{"op": "plant"}\n')
            reply = json.loads(self.reader.readline() or b"{}")
            return reply.get("plant", {}).get("amps")
        except (OSError, ValueError):
            self.close()
            raise

    def close(self):
        if self.sock is not None:
            self.reader.close()
            self.sock.close()
            self.sock = self.reader = None


def _poll_charger(meter, read_amps, period_s, stop):
    """Thread: follows the charger's own current."""
    while not stop.is_set():
        if not meter.charger_fixed:
            try:
                amps = read_amps()
                if isinstance(amps, list) and len(amps) == 3:
                    with meter.lock:
                        meter.charger = [float(a or 0.0) for a in amps]
            except (OSError, ValueError):
                pass  # not up yet, or restarting: keep the last value
        stop.wait(period_s)


async def _control(meter, reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                req = json.loads(line)
                reply = _handle(meter, req)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                reply = {"ok": False, "error": str(e)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def _three(v):
    v = [float(x) for x in v]
    if len(v) != 3:
        raise ValueError("three values, one per phase")
    return v


def _handle(meter, req):
    op = req.get("op")
    with meter.lock:
        if op == "load":
            meter.load = _three(req["amps"])
        elif op == "charger":
            meter.charger = _three(req["amps"])
            meter.charger_fixed = True
        elif op == "volts":
            meter.volts = _three(req["volts"])
        elif op == "fault":
            kind = req.get("kind", "none")
            if kind not in ("none", "crc", "exception", "garbage", "noise", "wrong_slave",
                            "silent"):
                raise ValueError("unknown fault kind " + kind)
            every = int(req.get("every", 1))
            if every < 1:
                raise ValueError("every must be at least 1")
            meter.fault_kind = kind
            meter.fault_every = every
        elif op != "state":
            raise ValueError(f"unknown op {op!r}")
        return {
            "ok": True, "requests": meter.requests, "faults": meter.faults,
            "load_a": meter.load, "charger_a": meter.charger, "grid_a": meter.grid_amps(),
            "volts": meter.volts, "fault": meter.fault_kind,
        }


def _flush_input(port):
    """Requests sent while nobody listened are stale: drop them before serving."""
    import serial

    try:
        with serial.Serial(port, timeout=0) as s:
            s.reset_input_buffer()
    except (OSError, serial.SerialException):
        pass


async def serve(args):
    if args.model == "custom":
        if not args.map:
            raise SystemExit("--model custom needs --map FILE")
        model = custom_model(args.map)
    else:
        model = MODELS[args.model]
    meter = Meter(model, args.load, args.volts, args.charger_phases)
    stop = threading.Event()
    if args.charger_sim and len(args.charger_sim) > 1:
        source, period = _SumAmps(args.charger_sim), 0.1
    elif args.charger_sim:
        source, period = _SimAmps(args.charger_sim[0]), 0.1
    elif args.charger_status:
        source, period = (lambda: _status_amps(args.charger_status)), 0.2
    else:
        source = None
    if source is not None:
        threading.Thread(target=_poll_charger, args=(meter, source, period, stop),
                         daemon=True).start()
    _flush_input(args.port)
    server = ModbusSerialServer(
        build_device(meter, args.slave), framer=FramerType.RTU, port=args.port,
        baudrate=args.baud, bytesize=8, parity=args.parity, stopbits=1,
        trace_packet=make_tracer(meter, args.slave),
    )
    ctl = await asyncio.start_server(lambda r, w: _control(meter, r, w), "127.0.0.1",
                                     args.control_port, backlog=4)
    port = ctl.sockets[0].getsockname()[1]
    await server.serve_forever(background=True)
    print(f"READY control={port}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    stop.set()
    ctl.close()
    await server.shutdown()


def _ports(text):
    return [int(x) for x in text.split(",")]


def _floats(text):
    return [float(x) for x in text.split(",")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=sorted(MODELS) + ["custom"])
    p.add_argument("--port", required=True, help="serial device, e.g. /dev/pts/3")
    p.add_argument("--map", help="custom map JSON (with --model custom)")
    p.add_argument("--slave", type=int, default=1)
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--parity", default="N", choices=("N", "E", "O"))
    p.add_argument("--load", type=_floats, default=[0.0, 0.0, 0.0],
                   help="other loads, amps per phase: 10,5,5")
    p.add_argument("--volts", type=_floats, default=[230.0, 230.0, 230.0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--charger-sim", type=_ports, metavar="PORT[,PORT...]",
                     help="the simulated charger's control socket port (127.0.0.1); "
                          "several: their currents are added")
    src.add_argument("--charger-status", metavar="URL", help="the charger's /api/status URL")
    p.add_argument("--charger-phases", default="L123", choices=("L123", "L1", "L2", "L3"))
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if len(args.load) != 3 or len(args.volts) != 3:
        p.error("--load and --volts take three values")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.CRITICAL)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
