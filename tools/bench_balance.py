"""Load balancing over CAN: how fast a pool converges (`make bench`, docs/load-balancing.md).

    python tools/bench_balance.py [--nodes 3,8] [--reps 3] [--json build/bench/balance.json]

For each pool size, firmware processes on one simulated CAN bus with a pymodbus SDM630
on the master (the setup of tests/test_load_balancing_meter.py), every car plugged in:

- meter step: the house load on L2 steps up (the pool shrinks) and back (it grows);
  measured until every offer is within the new limit and then unchanged for SETTLE_S
  (the time of the last change);
- car arrives: with as many cars charging as the pool can take but one, one more is
  plugged in; measured until it is offered >= 6 A and until the offers settle.

Peer in the same run: one charger alone with the same meter and no load balancing
(power management only), for the same house-load step.

Times are host wall-clock from the step (the meter's control request) or the plug-in
(the simulator request) to the first snapshot round showing the result; the watcher
takes every charger's snapshot in turn, so a figure is late by up to one round
(printed). Nothing passes or fails here.
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

from pool import offers, plug  # noqa: E402
from test_load_balancing_meter import LOAD, MeterPool, limit_for  # noqa: E402

SETTLE_S = 6.0  # offers unchanged this long: settled (beyond power's 5 s resume hold)
USED_A = 2.0  # settled also means: the pool used within this much
TIMEOUT_S = 40.0


def _track(mp, first, settle=None, timeout=TIMEOUT_S):
    """Polls from now; returns (seconds until first(offers) held, seconds until the last
    change of the offers after which settle(offers) held for SETTLE_S unchanged), None
    for what did not happen within timeout."""
    settle = settle or first
    w = mp.watch
    t0 = time.monotonic()
    t_first = None
    last_change = 0.0
    prev = None
    while time.monotonic() - t0 < timeout:
        o = offers(w.poll())
        t = time.monotonic() - t0
        if o != prev:
            last_change = t
            prev = o
        if t_first is None and first(o):
            t_first = t
        if t_first is not None and settle(o) and t - last_change >= SETTLE_S:
            return t_first, last_change
        time.sleep(0.02)
    return t_first, None


def _s(x):
    return "-" if x is None else f"{x:.2f} s"


def _sum(o):
    return sum(a or 0 for a in o)


def _offers_now(mp):
    return offers(mp.watch.snaps)


def _summary(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"p50": None, "max": None, "n": 0}
    return {"p50": round(statistics.median(xs), 2), "max": round(max(xs), 2), "n": len(xs),
            "samples": [round(x, 2) for x in xs]}


def _round_s(mp):
    r = mp.watch.rounds[-20:]
    return statistics.median(b - a for a, b, _ in r) if r else None


def bench_pool(n, reps, tmp):
    """Meter steps and car arrivals on an n-node pool."""
    (tmp / f"pool{n}").mkdir()
    mp = MeterPool(tmp / f"pool{n}", None, n)
    res = {"shrink_within": [], "shrink_settled": [], "grow_settled": [],
           "car_offered": [], "car_settled": []}
    try:
        mp.start()
        w = mp.watch
        w.wait(lambda ss: all(s["balance"] and s["balance"]["master"] == 1 for s in ss), 20,
               "master")
        fit = min(n, int(min(limit_for(LOAD)) // 6))
        for i in range(fit - 1):
            plug(mp.cs[i], phases=3)
        pool = min(limit_for(LOAD))
        _track(mp, lambda o: sum(1 for a in o if a and a >= 6) == fit - 1)
        high = [5.0, 17.0, 5.0]  # the pool: 35 A -> 23 A
        lim = min(limit_for(high))
        for _ in range(reps):
            # A car arrives: it gets room and the pool settles.
            new = mp.cs[fit - 1]
            plug(new, phases=3)
            got, settled = _track(mp, lambda o: (o[fit - 1] or 0) >= 6,
                                  lambda o: (o[fit - 1] or 0) >= 6 and _sum(o) >= pool - USED_A)
            res["car_offered"].append(got)
            res["car_settled"].append(settled)
            print(f"  {n} nodes: car arrives: offered >= 6 A after {_s(got)}, "
                  f"settled after {_s(settled)}: {_offers_now(mp)}")
            # The house load rises: the pool shrinks.
            mp.loads.append((time.monotonic(), list(high)))
            mp.meter.ctl(op="load", amps=high)
            within, settled = _track(mp, lambda o: _sum(o) <= lim,
                                     lambda o: lim - USED_A <= _sum(o) <= lim)
            res["shrink_within"].append(within)
            res["shrink_settled"].append(settled)
            print(f"  {n} nodes: load up (pool {lim:g} A): within after {_s(within)}, "
                  f"settled after {_s(settled)}: {_offers_now(mp)}")
            # And falls back: the pool grows.
            mp.loads.append((time.monotonic(), list(LOAD)))
            mp.meter.ctl(op="load", amps=list(LOAD))
            _, settled = _track(mp, lambda o: _sum(o) >= pool - USED_A)
            res["grow_settled"].append(settled)
            print(f"  {n} nodes: load down: settled after {_s(settled)}: {_offers_now(mp)}")
            new.sim("ev", state="A")  # the car leaves for the next repetition
            _track(mp, lambda o: not o[fit - 1])
        res["round_s"] = _round_s(mp)
    finally:
        mp.close()
    return res


def bench_peer(reps, tmp):
    """One charger, the same meter, no load balancing: power management alone."""
    (tmp / "peer").mkdir()
    mp = MeterPool(tmp / "peer", None, 1)
    settings = json.loads((mp.cs[0].data_dir / "settings.json").read_text())
    settings["lb_enabled"] = False
    (mp.cs[0].data_dir / "settings.json").write_text(json.dumps(settings))
    res = {"shrink_within": [], "shrink_settled": []}
    high = [5.0, 17.0, 5.0]
    lim = min(limit_for(high))
    try:
        mp.start()
        plug(mp.cs[0], phases=3)
        _track(mp, lambda o: (o[0] or 0) >= 30)
        for _ in range(reps):
            mp.meter.ctl(op="load", amps=high)
            within, settled = _track(mp, lambda o: (o[0] or 0) <= lim)
            res["shrink_within"].append(within)
            res["shrink_settled"].append(settled)
            print(f"  alone: load up (limit {lim:g} A): within after {_s(within)}, "
                  f"settled after {_s(settled)}")
            mp.meter.ctl(op="load", amps=list(LOAD))
            _track(mp, lambda o: (o[0] or 0) >= 30)
    finally:
        mp.close()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="3,8", help="pool sizes, comma-separated")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "build" / "bench" / "balance.json"))
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.nodes.split(",")]
    out = {"clock": "host wall-clock, late by up to one snapshot round",
           "settle_s": SETTLE_S, "reps": args.reps, "pools": {}}
    with tempfile.TemporaryDirectory(prefix="bench_balance-") as d:
        tmp = Path(d)
        print("peer: one charger, power management only")
        peer = bench_peer(args.reps, tmp)
        out["peer"] = {k: _summary(v) for k, v in peer.items()}
        for n in sizes:
            print(f"{n} nodes")
            r = bench_pool(n, args.reps, tmp)
            out["pools"][str(n)] = {k: _summary(v) if isinstance(v, list) else v
                                    for k, v in r.items()}
    table = []
    print(f"\n{'what':58} {'p50 s':>7} {'max s':>7} {'peer p50':>9}   ({out['clock']})")
    peer_within = out["peer"]["shrink_within"]["p50"]
    for n, r in out["pools"].items():
        rows = [("meter step up: offers within the new limit", "shrink_within", peer_within),
                ("meter step up: settled", "shrink_settled",
                 out["peer"]["shrink_settled"]["p50"]),
                ("meter step down: settled", "grow_settled", None),
                ("car arrives: offered >= 6 A", "car_offered", None),
                ("car arrives: settled", "car_settled", None)]
        for what, key, peer_v in rows:
            s = r[key]
            label = f"{n} nodes, {what}"
            print(f"{label:58} {s['p50'] if s['p50'] is not None else '-':>7} "
                  f"{s['max'] if s['max'] is not None else '-':>7} "
                  f"{peer_v if peer_v is not None else '-':>9}")
            table.append({"what": label + " (p50)", "value": s["p50"], "peer": peer_v,
                          "unit": "s"})
        print(f"{n} nodes: one snapshot round took {r['round_s']:.3f} s (median)")
    out["table"] = table
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
