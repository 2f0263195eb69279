"""Boot time and heap after boot of the simulated charger, over several boots.

    python tools/bench.py [--boots 5] [--board-dir build/unix_sim] [--heap 128k]

For each boot (all on one data directory, so boot 1 is a first boot): milliseconds from
process start until the simulator socket answers a snapshot, until the pilot is ready
(+12 V on the CP and state A classified), until GET /api/status answers and until the
central system (tests/csms.py, the `ocpp` package, on loopback) has accepted the
BootNotification, then `heap_free` / `heap_alloc` from a snapshot (after gc.collect).
Prints a table and writes build/bench.json. It only measures: no time makes it fail,
only a boot that never becomes ready does.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from csms import CentralSystem  # noqa: E402
from harness import Charger, NotReady  # noqa: E402

FIELDS = ("sim_ready_ms", "pilot_ready_ms", "http_ready_ms", "ocpp_accepted_ms", "heap_free",
          "heap_alloc")
HEAD = ("boot", "sim ready ms", "pilot ready ms", "http ready ms", "ocpp accepted ms",
        "heap free", "heap alloc")
ROW = "{:>6} {:>13} {:>15} {:>14} {:>17} {:>10} {:>11}"


def http_ready(charger):
    try:
        return charger.http("GET", "/api/status", timeout=1.0).status == 200
    except (OSError, ValueError):
        return False


def pilot_ready(snap):
    return snap is not None and snap.get("cp") == "+12" and snap.get("cp_state") == "A"


def ocpp_accepted(snap):
    return bool(snap and snap.get("ocpp") and snap["ocpp"].get("registration") == "Accepted")


def one_boot(charger, timeout):
    t0 = time.monotonic()
    charger.launch()
    result = dict.fromkeys(FIELDS)
    checks = {"sim_ready_ms": lambda s: s is not None, "pilot_ready_ms": pilot_ready,
              "ocpp_accepted_ms": ocpp_accepted}
    try:
        while any(result[k] is None for k in (*checks, "http_ready_ms")):
            if charger.proc.poll() is not None:
                raise NotReady(f"exited with status {charger.proc.returncode}:\n"
                               f"{charger.log_tail(20)}")
            if time.monotonic() - t0 > timeout:
                raise NotReady(f"not ready within {timeout:g} s:\n{charger.log_tail(20)}")
            snap = charger.try_snapshot(timeout=1.0)
            ms = round((time.monotonic() - t0) * 1000, 1)
            for key, ready in checks.items():
                if result[key] is None and ready(snap):
                    result[key] = ms
            if result["http_ready_ms"] is None and http_ready(charger):
                result["http_ready_ms"] = round((time.monotonic() - t0) * 1000, 1)
            time.sleep(0.005)
        snap = charger.snapshot()
        result["heap_free"] = snap.get("heap_free")
        result["heap_alloc"] = snap.get("heap_alloc")
    finally:
        charger.stop()
    return result


def summary(boots):
    out = {}
    for field in FIELDS:
        values = [b[field] for b in boots if b.get(field) is not None]
        if values:
            out[field] = {"min": min(values), "median": statistics.median(values),
                          "max": max(values)}
    return out


def show(value):
    return "-" if value is None else f"{value:g}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--board-dir", type=Path,
                    help="run <dir>/main.py, e.g. build/unix_sim (default firmware/main.py)")
    ap.add_argument("--heap", default=None, help="heapsize (default: 128 KB data + code)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one boot")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench.json")
    args = ap.parse_args(argv)

    boots, failed = [], 0
    cs = CentralSystem()
    cs.start()
    with tempfile.TemporaryDirectory(prefix="evse-bench-") as tmp:
        charger = Charger(tmp, settings={"ocpp_url": cs.url("BENCH")}, heap=args.heap,
                          board_dir=args.board_dir, name="bench")
        print(ROW.format(*HEAD))
        for n in range(1, args.boots + 1):
            try:
                b = one_boot(charger, args.timeout)
            except NotReady as e:
                failed += 1
                print(f"{n:>6} boot failed: {e}")
                continue
            boots.append(b)
            print(ROW.format(n, *(show(b[f]) for f in FIELDS)))
    cs.close()

    stats = summary(boots)
    for name in ("min", "median", "max"):
        print(ROW.format(name, *(show(stats.get(f, {}).get(name)) for f in FIELDS)))

    report = {
        "entry": charger.cmd[-1],
        "heap": args.heap,
        "boots": boots,
        "failed_boots": failed,
        "summary": stats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
