"""`make deploy` against a board on a serial line: the Makefile's own mpremote command runs
from a built tree, over a pty, to a raw-REPL device emulated by the MicroPython unix port
(unix_port_tests/fakes/raw_repl_device.py) whose filesystem is a temporary directory."""

import os
import re
import subprocess
import sys
import tty

import pytest
from harness import ROOT

DEVICE = ROOT / "unix_port_tests" / "fakes" / "raw_repl_device.py"
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"


def deploy_recipe():
    """The shell line of the Makefile's deploy target that runs mpremote."""
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\ndeploy:", 1)[1].split("\n\n", 1)[0]
    line = next(ln.strip() for ln in recipe.splitlines() if "mpremote connect" in ln)
    return line.replace("$$", "$")


@pytest.mark.parametrize("board", ["esp32_evplus"])
def test_make_deploy_copies_the_build_and_resets_the_board(board, tmp_path):
    build = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build.py"), "--board", board,
         "--out", str(tmp_path / "build" / board)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    flash = tmp_path / "flash"
    flash.mkdir()

    master, slave = os.openpty()
    tty.setraw(slave)
    device = subprocess.Popen([str(MICROPYTHON), str(DEVICE), str(flash)],
                              stdin=master, stdout=master, stderr=subprocess.PIPE)
    try:
        line = deploy_recipe()
        for var, value in (("BOARD", board), ("VENV", ".venv"),
                           ("PORT", os.ttyname(slave))):
            line = line.replace(f"$({var})", value)
        assert not re.search(r"\$\(\w+\)", line), line
        result = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        device.wait(timeout=30)  # machine.reset() ends the emulated board
    finally:
        if device.poll() is None:
            device.kill()
            device.wait(timeout=10)
        os.close(master)
        os.close(slave)
        device.stderr.close()

    tree = tmp_path / "build" / board
    expected = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*")
                      if p.is_file() and p.name != "manifest.py")
    copied = sorted(p.relative_to(flash).as_posix() for p in flash.rglob("*")
                    if p.is_file() and p.name != ".reset")
    assert copied == expected
    for rel in expected:
        assert (flash / rel).read_bytes() == (tree / rel).read_bytes(), rel
    assert "lib/board.mpy" in copied and "main.py" in copied
    assert (flash / ".reset").is_file(), "the board was not reset"
