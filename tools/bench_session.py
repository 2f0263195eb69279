"""A scripted 2-hour charging session: contactor cycles, duty changes, pauses (`make bench`).

    python tools/bench_session.py [--seed 1] [--minutes 120] [--json build/bench/session.json]

Plays unix_port_tests/bench_session.py on the MicroPython unix port: the charging core,
its protection, metering and power management tasks on the fake board and a virtual
clock (2 hours of charging in about 10-30 s), a car that follows the pilot as cars do,
a noisy house load behind the external meter, relay temperature noise and a wobbling
OCPP limit, in segments (docs/development.md). Prints per segment and in total the
contactor cycles (closes), duty changes (PWM duty writes that changed the value), pauses
(PWM stopped during the session), relays opened with the car drawing > 1 A, trips
(state F) and the energy the car took. Same seed, same numbers. Nothing passes or fails.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from harness import micropython  # noqa: E402

DRIVER = "unix_port_tests/bench_session.py"
COLUMNS = (  # (key, column heading, what the summary table calls it, unit there)
    ("contactor_cycles", "cycles", "contactor cycles", "closes"),
    ("duty_changes", "duty", "duty changes", "PWM writes that changed it"),
    ("pauses", "pauses", "pauses", "PWM stopped in the session"),
    ("opens_under_load", "opn@load", "relays opened under load", "opens at > 1 A"),
    ("trips", "trips", "trips", "state F"),
    ("energy_kwh", "kWh", "energy", "kWh"),
)


def run(seed, minutes=None, timeout=900):
    args = ["--seed", str(seed)]
    if minutes is not None:
        args += ["--minutes", str(minutes)]
    return play(DRIVER, args, timeout)


def play(driver, args, timeout=900):
    """Runs a driver of unix_port_tests/ on the unix port: the JSON of its last line."""
    cmd = [micropython(), driver, *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n"
                           f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return json.loads(lines[-1])


def table(res):
    """Rows for tools/bench_report.py: the totals of the session."""
    t = res["total"]
    return [{"what": f"{res['minutes']:.0f}-min session seed {res['seed']}: {name}",
             "value": t[key], "peer": None, "unit": unit} for key, _, name, unit in COLUMNS]


def show(res):
    heads = [h for _, h, _, _ in COLUMNS]
    width = max(len(s["segment"]) for s in res["segments"]) + 12
    line = "{:<%d}" % width + " {:>8}" * len(heads)
    print(f"scripted session, seed {res['seed']}, {res['minutes']:.0f} min on the firmware clock "
          f"({res['wall_s']:.1f} s of wall time)")
    print(line.format("segment (min)", *heads))
    for s in res["segments"] + [dict(res["total"], segment="total", from_min=0,
                                     to_min=res["minutes"])]:
        name = f"{s['segment']} ({s['from_min']:g}-{s['to_min']:g})"
        print(line.format(name, *(s[k] for k, _, _, _ in COLUMNS)))
    if res.get("restarts"):
        print("task restarts:", res["restarts"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=None,
                    help="stop after this many minutes of the script (default: all 120)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.minutes is not None and not args.minutes > 0:
        ap.error("--minutes must be > 0")
    res = run(args.seed, args.minutes)
    show(res)
    if args.json:
        res["table"] = table(res)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
