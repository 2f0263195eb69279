"""Write build/<board>/manifest.py: the firmware tree as `module`/`package` lines for a
custom MicroPython image (`make BOARD=... FROZEN_MANIFEST=.../manifest.py` in the port).

    python tools/manifest.py --board esp32_evplus [--out build/esp32_evplus/manifest.py]

The image freezes lib/, the board's shared modules and boards/<board>/ as top-level
modules (as /lib holds them on a filesystem deploy) and firmware/evse as the `evse`
package. Paths in the manifest are relative to its own directory (MicroPython's
manifest reader resolves them from there), so the checkout can move.

What a frozen image still needs on the board's filesystem (`filesystem_part()`, and the
mpremote line `copy_args()` prints) is small: the entry scripts (main.py, ab_boot.py),
which stay source so a technician can replace them, and the web app's assets, which
the web server streams from files. The assets go to www/ beside main.py, not to
evse/www: a directory named evse on the filesystem comes before the frozen modules on
sys.path and would hide the frozen package (firmware/evse/app.py `_www_dir()`).
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


def filesystem_part(tree):
    """(path in the built tree, path on the device) of every file a frozen image needs
    on its filesystem: the top-level entry scripts and evse/www/... as www/...."""
    tree = Path(tree)
    files = [(p.name, p.name) for p in sorted(tree.glob("*.py")) if p.name != "manifest.py"]
    www = tree / "evse" / "www"
    for p in sorted(www.rglob("*")):
        if p.is_file():
            rel = p.relative_to(www).as_posix()
            files.append((f"evse/www/{rel}", f"www/{rel}"))
    return files


def copy_args(tree):
    """mpremote's arguments after `connect PORT`, run from the built tree, that copy
    filesystem_part() to a board flashed with the frozen image and reset it."""
    scripts = [p.name for p in sorted(Path(tree).glob("*.py")) if p.name != "manifest.py"]
    return ["fs", "cp", *scripts, ":", "+", "fs", "cp", "-r", "evse/www", ":", "+", "reset"]


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
    out = write_manifest(args.board, out, args.root.resolve())
    print(f"manifest: {out}")
    if (out.parent / "main.py").is_file():
        print("manifest: on a board flashed with this image, copy the rest from "
              f"{out.parent}:\n    mpremote connect PORT {' '.join(copy_args(out.parent))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
