"""Soak: the whole charger for a while under everything at once (docs/soak.md).

    python tools/soak.py --duration 3600 --seed 7 [--json build/soak.json] [--keep DIR]

The firmware (compiled tree, the harness's default heap) as OCPP charge point of a
central system on the `ocpp` package, reading a pymodbus house meter on a socat pty, load-
balancing master of two more chargers on the simulated CAN bus, its web app polled; an EV
charges back to back while faults, card taps, central-system outages and meter losses
come at seeded random instants (tests/soak_scenario.py). Prints a summary; exits 1 on any
violation (each names the seed: run again with that --seed to replay), 2 when the rig
could not start. The JSON holds the summary, the heap series and a `table` for
tools/bench_report.py.
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from soak_rig import Rig, tool_finish, tool_start  # noqa: E402
from soak_scenario import Soak  # noqa: E402


def _kb(b):
    return "-" if b is None else f"{b / 1024:.1f} KB"


def summary(r):
    kb = _kb
    lines = [
        f"soak seed {r['seed']}: {r['duration_s']:.0f} s",
        f"  sessions {r['sessions']} (transactions at the central system "
        f"{r.get('transactions', '-')}), "
        f"card taps {r['card_taps']} (+{r['stranger_taps']} unknown, {r['stop_taps']} stops)",
        f"  faults injected {r['faults']} {r['faults_by_code']}, latched cleared "
        f"{r['latched_cleared']}",
        f"  central-system outages {r['csms_outages']}, meter losses {r['meter_losses']}, "
        f"house load steps {r['load_steps']}, node plug-ins {r['node_plugs']}",
        f"  relay closes {r['relay_closes']}, largest offer {r['max_offer_a']}, "
        f"worst pool sum {r['worst_pool_a']} A",
        f"  heap after GC: first {kb(r['heap_alloc_first'])}, last {kb(r['heap_alloc_last'])}, "
        f"worst {kb(r['heap_alloc_worst'])}, floor growth {kb(r['heap_growth'])}, "
        f"least free {kb(r['heap_free_min'])}, smallest largest free block "
        f"{kb(r.get('heap_largest_min'))}",
        f"  web requests {r['web_requests']}, simulator connections dropped {r['sim_drops']}",
    ]
    if r["violations"]:
        lines.append(f"  {len(r['violations'])} VIOLATIONS (replay: --seed {r['seed']}):")
        lines += [f"    {v}" for v in r["violations"][:50]]
    else:
        lines.append("  no violation")
    return "\n".join(lines)


def table(r):
    """Rows for tools/bench_report.py (measures only)."""
    def kb(b):
        return None if b is None else round(b / 1024, 1)

    return [
        {"what": "heap after GC, worst", "value": kb(r["heap_alloc_worst"]), "peer": None,
         "unit": "KB"},
        {"what": "heap after GC, floor growth over the run", "value": kb(r["heap_growth"]),
         "peer": None, "unit": "KB"},
        {"what": "sessions", "value": r["sessions"], "peer": None,
         "unit": f"in {r['duration_s']:.0f} s"},
        {"what": "violations", "value": len(r["violations"]), "peer": None, "unit": "count"},
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600, help="seconds of scenario")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--keep", type=Path, help="keep the chargers' directories and logs here")
    ap.add_argument("--heap", help="heap size (default: 160 KB of data + code footprint)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    heap, work = tool_start(args, "soak")
    t0 = time.monotonic()
    log = (lambda *a: None) if args.quiet else (lambda m: print(f"soak: {m}", flush=True))
    rig = Rig(work, heap=heap)
    try:
        try:
            rig.start()
        except Exception as e:
            print(f"soak: the rig did not start: {e}", file=sys.stderr)
            return 2
        log(f"started in {time.monotonic() - t0:.1f} s (heap {heap}, work dir {work})")
        result = Soak(rig, args.seed, args.duration, log=log).run()
    finally:
        rig.close()
    result["heap"] = heap
    result["table"] = table(result)
    print(summary(result), flush=True)
    return tool_finish(args, "soak", result, work)


if __name__ == "__main__":
    sys.exit(main())
