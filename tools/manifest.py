"""Write build/<board>/manifest.py: the firmware tree as `freeze`/`module` lines for a
custom MicroPython image (`make BOARD=... FROZEN_MANIFEST=.../manifest.py` in the port).

    python tools/manifest.py --board esp32_evplus [--out build/esp32_evplus/manifest.py]

The image freezes lib/ and boards/<board>/ as top-level modules (as /lib holds them on a
filesystem deploy) and firmware/evse as the `evse` package; main.py stays on the
filesystem so a technician can still replace it with mpremote.
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def manifest_text(board, root=ROOT):
    board_dir = root / "boards" / board
    if not board_dir.is_dir():
        raise SystemExit(f"manifest: no board {board!r}")
    lines = [
        f"# Frozen modules of the EV PLUS firmware for {board} (tools/manifest.py).",
        'include("$(PORT_DIR)/boards/manifest.py")',  # the port's own frozen modules
    ]
    for top in (root / "lib", board_dir):
        for src in sorted(top.glob("*.py")):
            lines.append(f'module("{src.name}", base_path="{top.resolve()}")')
    lines.append(f'package("evse", base_path="{(root / "firmware").resolve()}")')
    return "\n".join(lines) + "\n"


def write_manifest(board, out, root=ROOT):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(manifest_text(board, root))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--root", type=Path, default=ROOT)
    args = ap.parse_args(argv)
    out = args.out or args.root / "build" / args.board / "manifest.py"
    print(f"manifest: {write_manifest(args.board, out, args.root.resolve())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
