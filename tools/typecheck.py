"""Type-check the real boards' code against the published MicroPython stubs.

    python tools/typecheck.py [--board esp32_evplus] ... [--root CHECKOUT]

For each board: installs the pinned stubs of tools/stubs/<port>.txt into
build/stubs/<board>/ (once; again only when that file changes), writes
build/stubs/<board>/pyrightconfig.json and runs basedpyright on boards/<board>/ and the
shared modules it imports, with lib/ and firmware/ on the import path and the stubs'
MicroPython stdlib as the standard library. Exits non-zero on any error.
tests/test_typecheck.py runs it in `make test`.
"""

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from build import SHARED  # noqa: E402  (the shared modules each board imports)

sys.path.pop(0)

# The stubs of each board's port: one package per port (stm32's describe its pyb,
# network.LAN and FDCAN pyb.CAN constants for every STM32 board).
PORT = {"esp32_evplus": "esp32", "stm32_evplus": "stm32", "stm32h7_evplus": "stm32"}


def install_stubs(board, root=ROOT):
    """build/stubs/<board>/ with the pinned stubs; pip runs only when the pins changed."""
    reqs = root / "tools" / "stubs" / f"{PORT[board]}.txt"
    target = root / "build" / "stubs" / board
    stamp = target / ".requirements.sha256"
    digest = hashlib.sha256(reqs.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest:
        return target
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
         "--target", str(target), "-r", str(reqs)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"typecheck: pip could not install {reqs.name}:\n{result.stderr}")
    stamp.write_text(digest)
    return target


def pyright_config(board, stubs, root=ROOT):
    code = [root / "boards" / board] + [root / "boards" / d for d in SHARED.get(board, ())]
    return {
        "include": [str(p) for p in code],
        # the board's own modules first, as on the device's /lib; then the stubs
        "extraPaths": [str(p) for p in code + [root / "lib", root / "firmware", stubs]],
        "typeshedPath": str(stubs),  # its stdlib/: MicroPython's time, asyncio, os ...
        "pythonVersion": "3.8",
        "pythonPlatform": "Linux",
        "typeCheckingMode": "standard",
        "reportMissingModuleSource": False,  # stubs only: the modules live in the firmware
    }


def check(board, root=ROOT):
    stubs = install_stubs(board, root)
    config = stubs / "pyrightconfig.json"
    config.write_text(json.dumps(pyright_config(board, stubs, root), indent=2) + "\n")
    pyright = Path(sys.executable).parent / "basedpyright"
    print(f"typecheck: {board}", flush=True)
    return subprocess.run([str(pyright), "--project", str(config)], cwd=root).returncode


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", action="append", choices=sorted(PORT),
                    help="board to check (repeatable; default: every real board)")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="source tree (default: this checkout); stubs go to its build/")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    failed = [b for b in (args.board or sorted(PORT)) if check(b, root) != 0]
    if failed:
        print(f"typecheck: errors in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
