"""Heap taken by the firmware's code on the MicroPython unix port, and the heap size that
leaves a given budget for data.

On a charger the modules are frozen into flash (or run in place from a ROMFS partition),
so their bytecode, function objects and constants do not use the Python heap. The unix
port has no flash: every imported module lives in the GC heap, and on this 64-bit port
the code of the whole firmware plus the simulated plant takes more than the 128 KB the
tests give the firmware for its data. Tests therefore run with

    heapsize = data budget (128 KB) + the code footprint measured here

so the firmware still has exactly the data heap that the budget means (docs/development.md).

    python tools/footprint.py            # prints the footprint and the heapsize for 128k
"""

import argparse
import functools
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import sys, gc
sys.path[:0] = %r
gc.collect()
base = gc.mem_alloc()
for name in %r:
    __import__(name)
    gc.collect()
print(gc.mem_alloc() - base)
"""


def modules(board="unix_sim"):
    """Every importable module of the firmware, the libraries and the board."""
    names = [p.stem for p in sorted((ROOT / "lib").glob("*.py"))]
    names += [p.stem for p in sorted((ROOT / "boards" / board).glob("*.py"))]
    names += ["evse." + p.stem for p in sorted((ROOT / "firmware" / "evse").glob("*.py"))
              if p.stem != "__init__"]
    return names


@functools.lru_cache(maxsize=None)
def footprint(micropython, board="unix_sim"):
    """Bytes of heap the imported code keeps (measured with a large heap)."""
    paths = [str(ROOT / "firmware"), str(ROOT / "lib"), str(ROOT / "boards" / board)]
    code = _PROBE % (paths, modules(board))
    out = subprocess.run([micropython, "-X", "heapsize=8m", "-c", code], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError("footprint probe failed:\n" + out.stdout + out.stderr)
    return int(out.stdout.split()[-1])


def heapsize(micropython, data_kb=128, board="unix_sim"):
    """The -X heapsize value that leaves data_kb KB for data, rounded up to 4 KB."""
    total = data_kb * 1024 + footprint(micropython, board)
    return "%dk" % (-(-total // 4096) * 4)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micropython", default=str(ROOT / ".venv" / "bin" / "micropython"))
    ap.add_argument("--board", default="unix_sim")
    ap.add_argument("--data-kb", type=int, default=128)
    args = ap.parse_args()
    fp = footprint(args.micropython, args.board)
    print("code footprint: %d bytes (%d modules)" % (fp, len(modules(args.board))))
    print("heapsize for %d KB of data: %s" % (args.data_kb, heapsize(args.micropython,
                                                                     args.data_kb, args.board)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
