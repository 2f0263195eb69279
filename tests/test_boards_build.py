"""Both real boards compile with mpy-cross for their -march (tools/build.py), and
tools/manifest.py lists every module for a frozen image."""

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
    for name in ("board", "pins", "evp_parts"):
        mpy = out / "lib" / f"{name}.mpy"
        assert mpy.is_file(), mpy
    header = (out / "lib" / "board.mpy").read_bytes()[:4]
    assert header[0] == ord("M")
    arch = header[2] >> 2
    # A module without native code may carry arch 0; when set it must be the board's.
    assert arch in (0, MPY_ARCH[board]), arch


@pytest.mark.parametrize("board", sorted(MPY_ARCH))
def test_manifest_lists_the_tree(board, tmp_path):
    out = tmp_path / "manifest.py"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "manifest.py"), "--board", board, "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    compile(text, str(out), "exec")  # valid Python, as the port's makemanifest needs
    for src in (ROOT / "lib").glob("*.py"):
        assert f'module("{src.name}"' in text
    assert 'module("board.py"' in text and 'module("evp_parts.py"' in text
    assert 'package("evse"' in text
