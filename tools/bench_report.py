"""Every benchmark of the charger in one run, gathered into one table (`make bench`).

    python tools/bench_report.py [--out build/bench] [--only boot,http,...] [--quick]

Runs each benchmark tool in turn (each prints its own detailed table as it goes and
writes its JSON into --out), then prints one summary table, each figure beside its peer
from the same run where there is one, and writes it to <out>/report.json. --only runs a
subset; --report-only rebuilds the table from the JSON files already in --out. Nothing
here passes or fails on a time: a tool that cannot run is reported as not run.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# name -> (tool, arguments, arguments with --quick); every tool takes --json/--out PATH.
BENCHES = {
    "boot": ("bench.py", ["--boots", "5"], ["--boots", "2"]),
    "latency": ("bench_latency.py", ["--runs", "30"], ["--runs", "5"]),
    "http": ("bench_http.py", [], ["--duration", "1", "--warmup", "0.3"]),
    "ocpp": ("bench_ocpp.py", ["--calls", "500"], ["--calls", "100"]),
    "modbus": ("bench_modbus.py", ["--pty"], ["--cycles", "10"]),
    "ota": ("bench_ota.py", [], ["--runs", "1"]),
    "balance": ("bench_balance.py", [], ["--reps", "1"]),
    "soak": ("soak.py", ["--duration", "120", "--seed", "1"], ["--duration", "30", "--seed", "1"]),
    "session": ("bench_session.py", ["--seed", "1"], ["--seed", "1", "--minutes", "20"]),
    "grid": ("bench_grid.py", [], ["--hours", "4"]),
    "mcu": ("mcu.py", ["--soak-s", "150"], ["--soak-s", "30"]),
}
OUT_FLAG = {"bench.py": "--out"}


def run_all(names, out, quick):
    ran = {}
    for name in names:
        tool, args, quick_args = BENCHES[name]
        path = ROOT / "tools" / tool
        if not path.exists():
            ran[name] = "missing"
            continue
        cmd = [PY, str(path), *(quick_args if quick else args),
               OUT_FLAG.get(tool, "--json"), str(out / f"{name}.json")]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        status = subprocess.run(cmd, cwd=ROOT).returncode
        ran[name] = {"status": status, "seconds": round(time.monotonic() - t0, 1)}
    return ran


def load(out, name):
    try:
        return json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def _g(data, *keys):
    for k in keys:
        if isinstance(data, dict):
            data = data.get(k)
        elif isinstance(data, list) and isinstance(k, int) and -len(data) <= k < len(data):
            data = data[k]
        else:
            return None
    return data


def rows_boot(d):
    s = _g(d, "summary") or {}
    for key, what in (("pilot_ready_ms", "boot to pilot ready"),
                      ("http_ready_ms", "boot to web app ready"),
                      ("ocpp_accepted_ms", "boot to OCPP BootNotification accepted")):
        yield what, _g(s, key, "median"), None, "ms, median"
    free = _g(s, "heap_free", "median")
    yield "heap free after boot, OCPP connected", free and free / 1024, None, "KB"


def rows_latency(d):
    for key, what in (("cp_c_to_b", "CP C->B to relays open, web under load"),
                      ("ocp_fast", "over-current 45 A to relays open")):
        r = _g(d, key) or {}
        for stat in ("p50_ms", "p99_ms", "max_ms"):
            if stat in r:
                yield f"{what} ({stat[:-3]})", r[stat], None, "ms"


def rows_http(d):
    results = _g(d, "results") or []
    cells = {(r.get("server"), r.get("heap"), r.get("clients")): r for r in results}
    for heap, clients in sorted({(h, c) for _, h, c in cells}, key=lambda k: (str(k[0]), k[1])):
        ours = _g(cells.get(("httpd", heap, clients)), "rps")
        peer = _g(cells.get(("microdot", heap, clients)), "rps")
        yield f"HTTP GET /api/status, {clients} clients, heap {heap}", ours, peer, \
            "req/s (peer: microdot)"
    floods = {(r.get("server"), r.get("heap"), r.get("flood")): r
              for r in _g(d, "floods") or []}
    for heap, name in sorted({(h, f) for _, h, f in floods},
                             key=lambda k: (str(k[0]), k[1] != "none", k[1])):
        ours = _g(floods.get(("httpd", heap, name)), "p99_ms")
        peer = _g(floods.get(("microdot", heap, name)), "p99_ms")
        yield f"HTTP GET /api/status p99 latency, flood {name}, heap {heap}", ours, peer, \
            "ms (peer: microdot)"


def rows_ocpp(d):
    ours, peer = _g(d, "micropython_client") or {}, _g(d, "cpython_ocpp_chargepoint") or {}
    for key, what, unit in (("heartbeat", "OCPP Heartbeat round trips", "rt/s"),
                            ("meter_values", "OCPP MeterValues round trips", "rt/s"),
                            ("peak", "OCPP client peak heap", "KB")):
        a, b = ours.get(key), peer.get(key)
        if unit == "KB":
            a, b = a and a / 1024, b and b / 1024
        yield what, a, b, unit + " (peer: CPython ocpp)"


def rows_modbus(d):
    for m in _g(d, "models") or []:
        yield f"Modbus read cycle {m.get('model')} (wire at 9600 baud)", m.get("wire_ms_9600"), \
            None, "ms"
        if "pty_ms" in m:
            yield f"Modbus read cycle {m.get('model')} vs pymodbus over socat", m["pty_ms"], \
                None, "ms"


def rows_generic(d, prefix):
    """Tools that write {"table": [{"what", "value", "peer", "unit"}]} (ota, balance, soak,
    session, grid)."""
    for r in _g(d, "table") or []:
        yield f"{prefix}{r.get('what')}", r.get("value"), r.get("peer"), r.get("unit", "")


ROWS = {
    "boot": rows_boot,
    "latency": rows_latency,
    "http": rows_http,
    "ocpp": rows_ocpp,
    "modbus": rows_modbus,
    "ota": lambda d: rows_generic(d, "OTA "),
    "balance": lambda d: rows_generic(d, "balancing "),
    "soak": lambda d: rows_generic(d, "all features (soak) "),
    "session": lambda d: rows_generic(d, "charging "),
    "grid": lambda d: rows_generic(d, "grid "),
    "mcu": lambda d: rows_generic(d, "32-bit frozen build: "),
}


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def report(names, out, ran):
    table = []
    for name in names:
        data = load(out, name)
        if data is None:
            table.append({"bench": name, "what": "not run", "value": None, "peer": None,
                          "unit": str(_g(ran, name) or "no JSON")})
            continue
        for what, value, peer, unit in ROWS[name](data):
            table.append({"bench": name, "what": what, "value": value, "peer": peer,
                          "unit": unit})
    width = max(len(r["what"]) for r in table) if table else 10
    line = "{:<8} {:<%d} {:>10} {:>10}  {}" % width
    print("\n" + line.format("bench", "measure", "this", "peer", "unit"))
    for r in table:
        print(line.format(r["bench"], r["what"], fmt(r["value"]), fmt(r["peer"]), r["unit"]))
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    ap.add_argument("--only", help="comma-separated subset of: " + ",".join(BENCHES))
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown bench {unknown}; known: {', '.join(BENCHES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    ran = {} if args.report_only else run_all(names, args.out, args.quick)
    table = report(names, args.out, ran)
    (args.out / "report.json").write_text(json.dumps(
        {"generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": ran,
         "table": table}, indent=2) + "\n")
    print(f"\nwrote {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
