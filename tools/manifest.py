"""Write build/<board>/manifest.py: the firmware tree as `freeze`/`module` lines for a
custom MicroPython image (`make BOARD=... FROZEN_MANIFEST=.../manifest.py` in the port).

    python tools/manifest.py --board esp32_evplus [--out build/esp32_evplus/manifest.py]

The image freezes lib/, the board's shared modules and boards/<board>/ as top-level
modules (as /lib holds them on a filesystem deploy) and firmware/evse as the `evse`
package; main.py stays on the filesystem so a technician can still replace it with
mpremote. Paths in the manifest are relative to its own directory (MicroPython's
manifest reader resolves them from there), so the checkout can move.
"""

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from build import module_dirs  # noqa: E402  (the same module list as the build)

sys.path.pop(0)


def manifest_text(board, manifest_dir, root=ROOT):
    """The manifest for `board`, its paths relative to `manifest_dir`."""
    if not (root / "boards" / board).is_dir():
        raise SystemExit(f"manifest: no board {board!r}")

    def rel(path):
        # abspath, not resolve(): a linked checkout keeps its own layout
        return Path(os.path.relpath(os.path.abspath(path),
                                    os.path.abspath(manifest_dir))).as_posix()

    lines = [
        f"# Frozen modules of the EV PLUS firmware for {board} (tools/manifest.py).",
        'include("$(PORT_DIR)/boards/manifest.py")',  # the port's own frozen modules
    ]
    for top in module_dirs(root, board):
        for src in sorted(top.glob("*.py")):
            lines.append(f'module("{src.name}", base_path="{rel(top)}")')
    lines.append(f'package("evse", base_path="{rel(root / "firmware")}")')
    return "\n".join(lines) + "\n"


def write_manifest(board, out, root=ROOT):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(manifest_text(board, out.parent, root))
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
