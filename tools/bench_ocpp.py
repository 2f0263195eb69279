"""OCPP client round trips per second and peak heap: this firmware's client on the
MicroPython unix port, and a CPython `ocpp` ChargePoint, against the same central system
(tests/csms.py) in the same run.

    python tools/bench_ocpp.py [--calls 500] [--json build/bench_ocpp.json]

Each client connects over loopback, sends a BootNotification, then `--calls` Heartbeats
and `--calls` MeterValues (ten sampled values, a typical periodic sample), one at a time
as OCPP-J allows, and reports round trips per second for each. Heap is the data the
client needs once its code is loaded. MicroPython: the smallest -X heapsize the whole
run completes in (found by bisection) minus what the code took before the client was
built, so the peak with the collector doing its job; and what stays after gc.collect().
CPython: tracemalloc's peak and what is left at the end. It only measures: no number
makes it fail.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from csms import CentralSystem  # noqa: E402
from harness import micropython  # noqa: E402

_MP = r"""
import sys, gc, time
sys.path[:0] = [%(firmware)r, %(lib)r]
import asyncio
import wsclient
from evse.ocpp.link import Link
from evse.ocpp import rpc
gc.collect()
base = gc.mem_alloc()
N = %(calls)d
SV = [{"value": "%%d" %% i, "context": "Sample.Periodic",
       "measurand": "Energy.Active.Import.Register", "unit": "Wh"} for i in range(10)]
MV = {"connectorId": 1, "transactionId": 1,
      "meterValue": [{"timestamp": "2024-01-01T00:00:00Z", "sampledValue": SV}]}
BOOT = {"chargePointVendor": "Cabur", "chargePointModel": "bench"}

async def on_call(mid, action, payload):
    await link.reply_error(mid, "NotImplemented", "")

async def run():
    global link
    ws = wsclient.WsClient(max_message=6144, tx_size=1024)
    link = Link(ws, on_call)
    await ws.connect(%(url)r, protocols=("ocpp1.6",))
    tasks = link.start()
    await link.call("BootNotification", BOOT, 5000)
    out = {}
    kinds = (("heartbeat", "Heartbeat", {}), ("meter_values", "MeterValues", MV))
    for name, action, payload in kinds:
        t0 = time.ticks_ms()
        for _ in range(N):
            await link.call(action, payload, 5000)
        out[name] = N * 1000 / max(1, time.ticks_diff(time.ticks_ms(), t0))
    gc.collect()
    out["retained"] = gc.mem_alloc() - base
    out["code"] = base
    await ws.close()
    for t in tasks:
        t.cancel()
    print("RESULT", out)

asyncio.run(run())
"""

_CPY = r"""
import asyncio, json, sys, time, tracemalloc
import websockets
from ocpp.v16 import ChargePoint, call

N = %(calls)d
SV = [{"value": str(i), "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register",
       "unit": "Wh"} for i in range(10)]

async def run():
    tracemalloc.start()
    async with websockets.connect(%(url)r, subprotocols=["ocpp1.6"]) as ws:
        cp = ChargePoint("BENCH2", ws)
        task = asyncio.create_task(cp.start())
        boot = call.BootNotification(charge_point_vendor="Cabur", charge_point_model="bench")
        await cp.call(boot)
        out = {}
        t0 = time.perf_counter()
        for _ in range(N):
            await cp.call(call.Heartbeat())
        out["heartbeat"] = N / (time.perf_counter() - t0)
        mv = [{"timestamp": "2024-01-01T00:00:00Z", "sampled_value": SV}]
        t0 = time.perf_counter()
        for _ in range(N):
            await cp.call(call.MeterValues(connector_id=1, transaction_id=1, meter_value=mv))
        out["meter_values"] = N / (time.perf_counter() - t0)
        cur, peak = tracemalloc.get_traced_memory()
        out["retained"] = cur
        out["peak"] = peak
        task.cancel()
    print("RESULT", json.dumps(out))

asyncio.run(run())
"""


def _result(proc):
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            text = line[7:]
            try:
                return json.loads(text)
            except ValueError:
                return json.loads(text.replace("'", '"'))
    raise RuntimeError("no result:\n" + proc.stdout[-2000:] + proc.stderr[-2000:])


def _mp_run(cs, calls, heap_kb):
    code = _MP % {
        "firmware": str(ROOT / "firmware"),
        "lib": str(ROOT / "lib"),
        "calls": calls,
        "url": cs.url("BENCH1"),
    }
    return subprocess.run(
        [micropython(), "-X", f"heapsize={heap_kb}k", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _min_heap_kb(cs, calls, lo=8, hi=512):
    """Smallest heapsize (KB, 2 KB steps) the MicroPython run completes in."""
    while hi - lo > 2:
        mid = (lo + hi) // 2
        if "RESULT " in _mp_run(cs, calls, mid).stdout:
            hi = mid
        else:
            lo = mid
    return hi


def bench(calls, heap_kb):
    cs = CentralSystem()
    cs.start()
    try:
        mp = _result(_mp_run(cs, calls, heap_kb))
        need = _min_heap_kb(cs, min(calls, 200))
        mp["min_heapsize_kb"] = need
        mp["peak"] = need * 1024 - mp["code"]
        py_code = _CPY % {"calls": calls, "url": cs.url("BENCH2")}
        py = subprocess.run(
            [sys.executable, "-c", py_code], capture_output=True, text=True, timeout=300
        )
        return {"micropython_client": mp, "cpython_ocpp_chargepoint": _result(py), "calls": calls}
    finally:
        cs.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--heap-kb", type=int, default=512, help="micropython heap for the timed run")
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "bench_ocpp.json")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    res = bench(args.calls, args.heap_kb)
    row = "{:<28} {:>14} {:>16} {:>14} {:>16}"
    print(
        row.format(
            "client", "heartbeat rt/s", "metervalues rt/s", "peak heap KB", "retained heap KB"
        )
    )
    for name in ("micropython_client", "cpython_ocpp_chargepoint"):
        r = res[name]
        print(
            row.format(
                name,
                "%.0f" % r["heartbeat"],
                "%.0f" % r["meter_values"],
                "%.1f" % (r["peak"] / 1024),
                "%.1f" % (r["retained"] / 1024),
            )
        )
    print(
        "(%d round trips of each kind per client, %.1f s in all)"
        % (args.calls, time.monotonic() - t0)
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
