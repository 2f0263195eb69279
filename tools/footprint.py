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


def _layout(board="unix_sim", tree=None):
    """(sys.path entries, module directories with their package prefix, extension)."""
    if tree is None:  # the source tree
        return ([ROOT / "firmware", ROOT / "lib", ROOT / "boards" / board],
                [(ROOT / "lib", ""), (ROOT / "boards" / board, ""),
                 (ROOT / "firmware" / "evse", "evse.")], "*.py")
    tree = Path(tree)  # a tree from tools/build.py: main.py, evse/, lib/
    return [tree, tree / "lib"], [(tree / "lib", ""), (tree / "evse", "evse.")], "*.mpy"


def modules(board="unix_sim", tree=None):
    """Every importable module of the firmware, the libraries and the board."""
    _paths, dirs, pattern = _layout(board, tree)
    names = []
    for d, prefix in dirs:
        # lib/ and the board are flat; the evse package has sub-packages (evse.ocpp...).
        found = sorted(d.rglob(pattern)) if prefix else sorted(d.glob(pattern))
        for p in found:
            parts = p.relative_to(d).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts:
                names.append(prefix + ".".join(parts))
    return names


@functools.lru_cache(maxsize=None)
def footprint(micropython, board="unix_sim", tree=None):
    """Bytes of heap the imported code keeps (measured with a large heap)."""
    paths = [str(p) for p in _layout(board, tree)[0]]
    code = _PROBE % (paths, modules(board, tree))
    out = subprocess.run([micropython, "-X", "heapsize=8m", "-c", code], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError("footprint probe failed:\n" + out.stdout + out.stderr)
    return int(out.stdout.split()[-1])


def heapsize(micropython, data_kb=128, board="unix_sim", tree=None):
    """The -X heapsize value that leaves data_kb KB for data, rounded up to 4 KB."""
    total = data_kb * 1024 + footprint(micropython, board, None if tree is None else str(tree))
    return "%dk" % (-(-total // 4096) * 4)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micropython", default=str(ROOT / ".venv" / "bin" / "micropython"))
    ap.add_argument("--board", default="unix_sim")
    ap.add_argument("--data-kb", type=int, default=128)
    ap.add_argument("--tree", help="a built tree (tools/build.py) instead of the sources")
    args = ap.parse_args()
    fp = footprint(args.micropython, args.board, args.tree)
    print("code footprint: %d bytes (%d modules)" % (fp, len(modules(args.board, args.tree))))
    print("heapsize for %d KB of data: %s" % (
        args.data_kb, heapsize(args.micropython, args.data_kb, args.board, args.tree)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
