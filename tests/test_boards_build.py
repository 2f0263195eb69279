"""Both real boards compile with mpy-cross for their -march (tools/build.py), and
tools/manifest.py lists every module for a frozen image with paths that hold wherever the
checkout is."""

import os
import re
import subprocess
import sys

import pytest
from harness import ROOT

MPY_ARCH = {"esp32_evplus": 10, "stm32_evplus": 7}  # .mpy header byte 2 >> 2


@pytest.mark.parametrize("board", sorted(MPY_ARCH))
def test_board_builds_with_its_arch(board, tmp_path):
    out = tmp_path / board
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build.py"), "--board", board, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    shared = [p.stem for p in (ROOT / "boards" / "evplus_common").glob("*.py")]
    assert "evplus_board" in shared
    for name in ["board", "pins", *shared]:
        mpy = out / "lib" / f"{name}.mpy"
        assert mpy.is_file(), mpy
    header = (out / "lib" / "board.mpy").read_bytes()[:4]
    assert header[0] == ord("M")
    arch = header[2] >> 2
    # A module without native code may carry arch 0; when set it must be the board's.
    assert arch in (0, MPY_ARCH[board]), arch


@pytest.mark.parametrize("board", sorted(MPY_ARCH))
def test_manifest_lists_the_tree_and_moves_with_it(board, tmp_path):
    # a checkout of links to this one, moved after the manifest is written
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for top in ("firmware", "lib", "boards", "tools"):
        (checkout / top).symlink_to(ROOT / top)
    out = checkout / "build" / board / "manifest.py"
    result = subprocess.run(  # from another directory: the output must not depend on it
        [sys.executable, str(ROOT / "tools" / "manifest.py"), "--board", board,
         "--root", str(checkout), "--out", str(out)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    moved = tmp_path / "elsewhere"
    checkout.rename(moved)
    out = moved / "build" / board / "manifest.py"
    text = out.read_text()
    compile(text, str(out), "exec")  # valid Python, as the port's makemanifest needs
    for src in (ROOT / "lib").glob("*.py"):
        assert f'module("{src.name}", base_path="../../lib")' in text
    assert f'module("board.py", base_path="../../boards/{board}")' in text
    assert 'module("evplus_board.py", base_path="../../boards/evplus_common")' in text
    assert 'package("evse", base_path="../../firmware")' in text
    # MicroPython's manifest reader resolves relative paths from the manifest's directory
    paths = re.findall(r'(module|package)\("([^"]+)", base_path="([^"]+)"\)', text)
    assert len(paths) > 10
    for kind, name, base in paths:
        assert not os.path.isabs(base) and "checkout" not in base, base
        target = out.parent / base / name
        assert target.is_file() if kind == "module" else target.is_dir(), target
