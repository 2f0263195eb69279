"""Power-cut campaign across features (docs/soak.md).

    python tools/powercut.py --cuts 300 --seed 7 [--json build/powercut.json] [--keep DIR]

SIGKILLs one charger (OCPP charge point of a central system on the `ocpp` package) at
seeded random instants while it charges, saves settings, appends a charge record, queues
transaction messages with the central system down, or receives and installs an upgrade;
after each restart checks the settings, the charge records, the queue, and at the end that
every transaction reached the central system exactly once (tests/soak_powercut.py).
Exits 1 on any violation (each names the seed and the cut: --seed replays it).
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from soak_powercut import KINDS, Campaign  # noqa: E402
from soak_rig import tool_finish, tool_start  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuts", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kinds", default=",".join(KINDS), help="subset of " + ",".join(KINDS))
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--keep", type=Path, help="keep the charger's directory and log here")
    ap.add_argument("--heap", help="heap size (default: 128 KB of data + code footprint)")
    args = ap.parse_args(argv)
    kinds = tuple(args.kinds.split(","))
    if not set(kinds) <= set(KINDS):
        ap.error(f"--kinds: choose from {','.join(KINDS)}")
    heap, work = tool_start(args, "powercut")
    camp = Campaign(work, args.seed, args.cuts, heap=heap, kinds=kinds,
                    log=lambda m: print(f"powercut: {m}", flush=True))
    try:
        camp.start()
        result = camp.run()
    finally:
        camp.close()
    print(f"power cuts seed {args.seed}: {result['cuts']} cuts {result['by_kind']} in "
          f"{result['seconds']:.0f} s, {result['boots']} boots, {result['records']} charge "
          f"records kept")
    for v in result["violations"][:50]:
        print(f"  {v}")
    print(f"  {len(result['violations'])} violations" if result["violations"] else "  no violation")
    return tool_finish(args, "powercut", result, work)


if __name__ == "__main__":
    sys.exit(main())
