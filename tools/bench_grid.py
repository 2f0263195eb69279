"""A scripted day at the grid connection: capacity tariff and solar charging (`make bench`).

    python tools/bench_grid.py [--hours 24] [--json build/bench/grid.json]

Plays unix_port_tests/bench_grid.py on the MicroPython unix port: the power task with
evse/tariff.py and evse/solar.py on the fake meter and simulated time (a day of readings
in about 30 s). Capacity tariff: the highest 15-minute average import of a day of house
load with a car charging all day, without and with a 5 kW limit, and the car's energy.
Solar: over a sunny day with clouds, the energy the car took from surplus against the
ideal, and the grid import its charging caused. Nothing passes or fails.
"""
import argparse
import json
import sys
from pathlib import Path

from bench_session import play

DRIVER = "unix_port_tests/bench_grid.py"


def run(hours, timeout=900):
    return play(DRIVER, ["--hours", str(hours)], timeout)


def table(res):
    """Rows for tools/bench_report.py (`peer`: the same day without the feature, or the
    ideal)."""
    h = f"{res['hours']:g} h"
    lim = res["tariff_limit_w"] / 1000
    s = res["solar"]
    return [
        {"what": f"{h} tariff {lim:g} kW: highest 15-min average import",
         "unit": "W (peer: no limit)", "value": res["window_max_w_with"],
         "peer": res["window_max_w_without"]},
        {"what": f"{h} tariff {lim:g} kW: energy charged", "unit": "kWh (peer: no limit)",
         "value": res["car_kwh_with"], "peer": res["car_kwh_without"]},
        {"what": f"{h} solar with clouds: energy from surplus", "unit": "kWh (peer: ideal)",
         "value": s["taken_kwh"], "peer": s["ideal_kwh"]},
        {"what": f"{h} solar with clouds: grid import caused by charging", "unit": "kWh",
         "value": s["import_kwh"], "peer": None},
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if not args.hours > 0:
        ap.error("--hours must be > 0")
    res = run(args.hours)
    rows = table(res)
    width = max(len(r["what"]) for r in rows)
    print(f"scripted day at the grid connection ({res['wall_s']:.1f} s of wall time)")
    for r in rows:
        peer = "" if r["peer"] is None else f"  (peer {r['peer']:.1f})"
        print(f"{r['what']:<{width}} {r['value']:>10.1f} {r['unit']}{peer}")
    print(f"solar: {res['solar']['clouds']} clouds; the charger counted "
          f"{res['solar']['counted_kwh']:.1f} kWh from surplus")
    if args.json:
        res["table"] = rows
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
