"""External meter read cycle, per meter map: exchanges, registers, wire time, duration.

    python tools/bench_modbus.py [--cycles 50] [--pty] [--json build/bench_modbus.json]

For each supported meter map (firmware/evse/meters.py):

- exchanges per read and registers read (the map's read blocks);
- bytes on the wire and the wire time of one read at 9600 baud: every request and
  reply at 11 bits per character, plus t3.5 of silence before each request and after
  each reply (the meter's own turnaround time comes on top and is not counted);
- cycle_ms: one full read cycle of the firmware's PowerManager on the MicroPython unix
  port against a meter that answers at once (in-process loopback UART): the t3.5 gaps,
  the 2 ms polling steps, framing, CRC and decoding;
- cpu_ms: the same read through the master's synchronous core on a stopped clock, so
  only the processing counts;
- with --pty, pty_ms: the cycle over a socat pseudo-terminal pair against
  tests/modbus_meter.py (pymodbus), as the host tests run it.

It only measures; nothing makes it fail except a cycle that does not complete.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BAUD = 9600
BITS_PER_CHAR = 11

# Runs inside MicroPython: prints one JSON line per model.
_MP_SCRIPT = r'''
import sys
import time
import json
import asyncio
ROOT = sys.argv[1]
CYCLES = int(sys.argv[2])
DATA_DIR = sys.argv[3]
PTY = sys.argv[4]
MODELS = sys.argv[5].split(",") if sys.argv[5] else None
for p in (ROOT + "/firmware", ROOT + "/lib", ROOT + "/boards/unix_sim"):
    sys.path.append(p)
from evse import meters
from evse.power import PowerManager
import modbus_rtu


class LoopUart:
    """A meter that answers every read at once with zeroed registers."""
    baudrate = 9600

    def __init__(self):
        self.rx = bytearray(300)
        self.n = 0
        self.pos = 0

    def write(self, buf):
        count = (buf[4] << 8) | buf[5]
        r = self.rx
        r[0] = buf[0]
        r[1] = buf[1]
        r[2] = 2 * count
        for i in range(2 * count):
            r[3 + i] = 0
        n = 3 + 2 * count
        c = modbus_rtu.crc16(r, 0, n)
        r[n] = c & 0xFF
        r[n + 1] = c >> 8
        self.n = n + 2
        self.pos = 0
        return len(buf)

    def any(self):
        return self.n - self.pos

    def readinto(self, buf):
        k = min(len(buf), self.n - self.pos)
        for i in range(k):
            buf[i] = self.rx[self.pos + i]
        self.pos += k
        return k


class Stub:
    pass


def manager(model, master, data_dir):
    settings = {"meter_model": model, "max_house_current_a": 40, "phase_set": "L123"}
    ch = Stub()
    ch.phases = 3
    ch.set_external_limit = lambda name, a: None
    ch.trip = lambda bit: None
    metering = Stub()
    metering.amps = [0.0, 0.0, 0.0]
    return PowerManager(ch, settings, Stub(), metering, master=master, data_dir=data_dir)


def cpu_ms(m, cycles):
    """The reads through the sync core on a stopped clock: processing only."""
    t = [0]
    clock = lambda: t[0]
    master = modbus_rtu.ModbusRtu(LoopUart(), None, ticks_ms=clock)
    vals = [None] * meters.N_QTY
    t0 = time.ticks_us()
    for _ in range(cycles):
        for i, (fc, start, count, _) in enumerate(m.blocks):
            master.start(1, fc, start, count)
            r = None
            while r is None:
                t[0] += 1
                r = master.poll()
            m.decode(i, r, vals)
    return time.ticks_diff(time.ticks_us(), t0) / 1000 / cycles


async def cycle_ms(pm, cycles):
    await pm.poll_once()  # configure, first read
    t0 = time.ticks_us()
    for _ in range(cycles):
        await pm.poll_once()
    return time.ticks_diff(time.ticks_us(), t0) / 1000 / cycles


def custom_dir():
    with open(DATA_DIR + "/" + meters.CUSTOM_FILE, "w") as f:
        f.write(json.dumps(CUSTOM))
    return DATA_DIR


CUSTOM = json.loads(sys.stdin.read() or "{}")
for model in MODELS or meters.MODELS:
    data_dir = custom_dir() if model == "custom" else DATA_DIR
    m = meters.make(model, data_dir)
    out = {
        "model": model,
        "blocks": [[fc, start, count] for fc, start, count, _ in m.blocks],
        "max_regs": m.max_regs,
        "serial": m.serial,
    }
    if PTY:
        from sim_uart import SimUart
        master = modbus_rtu.ModbusRtu(SimUart(PTY), None)
        pm = manager(model, master, data_dir)
        out["pty_ms"] = asyncio.run(cycle_ms(pm, CYCLES))
        out["pty_reads"] = pm.reads
    else:
        pm = manager(model, modbus_rtu.ModbusRtu(LoopUart(), None), data_dir)
        out["cycle_ms"] = asyncio.run(cycle_ms(pm, CYCLES))
        out["cpu_ms"] = cpu_ms(m, CYCLES)
    asyncio.new_event_loop()
    print(json.dumps(out))
'''

# The custom map measured: the example of docs/power-management.md (Eastron layout).
CUSTOM = {
    "name": "Example", "function": 4, "word_order": "big", "max_regs": 80,
    "fields": {
        "v_l1": {"reg": "0x0000", "type": "f32"}, "v_l2": {"reg": "0x0002", "type": "f32"},
        "v_l3": {"reg": "0x0004", "type": "f32"}, "i_l1": {"reg": "0x0006", "type": "f32"},
        "i_l2": {"reg": "0x0008", "type": "f32"}, "i_l3": {"reg": "0x000A", "type": "f32"},
        "p_total": {"reg": "0x0034", "type": "f32"}, "e_import": {"reg": "0x0048", "type": "f32"},
    },
}


def micropython():
    venv = ROOT / ".venv" / "bin" / "micropython"
    return str(venv) if venv.exists() else "micropython"


def run_mp(script, cycles, pty="", models=None, timeout=120):
    args = [micropython(), str(script), str(ROOT), str(cycles), str(Path(script).parent),
            pty, ",".join(models or [])]
    p = subprocess.run(args, input=json.dumps(CUSTOM), capture_output=True, text=True,
                       timeout=timeout)
    rows = []
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line))
    if p.returncode != 0 or not rows:
        raise SystemExit(f"micropython failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return rows


def wire(blocks, baud=BAUD):
    """(bytes, ms) of one read: requests, replies, and t3.5 around each exchange."""
    char_s = BITS_PER_CHAR / baud
    t35 = 0.00175 if baud > 19200 else 3.5 * char_s
    nbytes = 0
    seconds = 0.0
    for _fc, _start, count in blocks:
        n = 8 + 5 + 2 * count
        nbytes += n
        seconds += n * char_s + 2 * t35
    return nbytes, seconds * 1000


def pty_cycles(script, cycles, models, tmp):
    """Each model against tests/modbus_meter.py over socat."""
    out = {}
    for model in models:
        a, b = Path(tmp) / f"{model}_a", Path(tmp) / f"{model}_b"
        socat = subprocess.Popen(["socat", f"pty,raw,echo=0,link={a}",
                                  f"pty,raw,echo=0,link={b}"], stderr=subprocess.DEVNULL)
        meter = None
        try:
            deadline = time.monotonic() + 5
            while not (a.exists() and b.exists()):
                if time.monotonic() > deadline:
                    raise SystemExit("socat links did not appear")
                time.sleep(0.02)
            cmd = [sys.executable, str(ROOT / "tests" / "modbus_meter.py"), "--model", model,
                   "--port", str(b), "--load", "5,5,5"]
            if model == "custom":
                mp = Path(tmp) / "custom.json"
                mp.write_text(json.dumps(CUSTOM))
                cmd += ["--map", str(mp)]
            meter = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
            line = meter.stdout.readline()  # READY control=... (the server exits on error)
            if not line.startswith("READY"):
                raise SystemExit(f"meter server for {model} did not start")
            out[model] = run_mp(script, cycles, str(a), [model])[0]
        finally:
            for p in (meter, socat):
                if p is not None and p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(timeout=3)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=50, help="cycles averaged per model")
    ap.add_argument("--pty", action="store_true",
                    help="also over socat against tests/modbus_meter.py (pymodbus)")
    ap.add_argument("--json", default=str(ROOT / "build" / "bench_modbus.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench_modbus_mp.py"
        script.write_text(_MP_SCRIPT)
        rows = run_mp(script, args.cycles)
        if args.pty:
            if shutil.which("socat") is None:
                raise SystemExit("--pty needs socat")
            over = pty_cycles(script, max(5, args.cycles // 5), [r["model"] for r in rows], tmp)
            for r in rows:
                r["pty_ms"] = over[r["model"]]["pty_ms"]
    head = ("model", "exchanges", "registers", "wire bytes", "wire ms @9600", "cycle ms",
            "cpu ms") + (("pty ms",) if args.pty else ())
    print("External meter read cycle (one PowerManager cycle per model)")
    print(" ".join(f"{h:>13}" for h in head))
    for r in rows:
        nbytes, ms = wire(r["blocks"])
        r["exchanges"] = len(r["blocks"])
        r["registers"] = sum(b[2] for b in r["blocks"])
        r["wire_bytes"] = nbytes
        r["wire_ms_9600"] = round(ms, 1)
        r["cycle_ms"] = round(r["cycle_ms"], 2)
        r["cpu_ms"] = round(r["cpu_ms"], 3)
        cells = [r["model"], r["exchanges"], r["registers"], nbytes, r["wire_ms_9600"],
                 r["cycle_ms"], r["cpu_ms"]]
        if args.pty:
            r["pty_ms"] = round(r["pty_ms"], 1)
            cells.append(r["pty_ms"])
        print(" ".join(f"{c:>13}" for c in cells))
    print("wire ms: requests + replies at 11 bits/char + t3.5 before and after each "
          "exchange; the meter's turnaround comes on top")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"baud": BAUD, "models": rows}, indent=1) + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
