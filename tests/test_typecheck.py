"""The real boards' code type-checks against the pinned MicroPython stubs
(tools/typecheck.py, also `make lint`), and a type error fails the check.

The stubs are pinned in tools/stubs/ and installed once into build/stubs/<board>/; with
them in place a board takes about 2 s."""

import shutil
import subprocess
import sys

import pytest
from harness import ROOT

TYPECHECK = ROOT / "tools" / "typecheck.py"


@pytest.mark.parametrize("board", ["esp32_evplus", "stm32_evplus", "stm32h7_evplus"])
def test_board_code_has_no_type_errors(board):
    result = subprocess.run([sys.executable, str(TYPECHECK), "--board", board],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors" in result.stdout, result.stdout


def test_a_type_error_fails_the_check(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "boards").mkdir(parents=True)
    for top in ("firmware", "lib", "tools"):
        (checkout / top).symlink_to(ROOT / top)
    for d in ("esp32_evplus", "evplus_common"):
        shutil.copytree(ROOT / "boards" / d, checkout / "boards" / d)
    pins = checkout / "boards" / "esp32_evplus" / "pins.py"
    pins.write_text(pins.read_text() + "\nCP_PWM.bit_length(\"wrong\")\n")
    result = subprocess.run([sys.executable, str(TYPECHECK), "--board", "esp32_evplus",
                             "--root", str(checkout)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "pins.py" in result.stdout and "error" in result.stdout, result.stdout
