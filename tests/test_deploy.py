"""`make deploy` against a board on a serial line: the Makefile's own mpremote command runs
from a built tree, over a pty, to a raw-REPL device emulated by the MicroPython unix port
(unix_port_tests/fakes/raw_repl_device.py) whose filesystem is a temporary directory. The
same for a board flashed with the frozen image (tools/manifest.py): only what the image
does not hold is copied, and the charger finds its web pages there."""

import os
import re
import subprocess
import sys
import tty

import pytest
from harness import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import manifest  # noqa: E402  (tools/manifest.py: the frozen image's filesystem part)

sys.path.pop(0)

DEVICE = ROOT / "unix_port_tests" / "fakes" / "raw_repl_device.py"
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"


def deploy_recipe():
    """The shell line of the Makefile's deploy target that runs mpremote."""
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\ndeploy:", 1)[1].split("\n\n", 1)[0]
    line = next(ln.strip() for ln in recipe.splitlines() if "mpremote connect" in ln)
    return line.replace("$$", "$")


def build(board, out):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build.py"), "--board", board, "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out


def run_against_board(flash, command, cwd):
    """Runs `command(port)` (argv or a shell line) with an emulated board on a pty whose
    filesystem is `flash`; returns once the command succeeded and the board was reset."""
    master, slave = os.openpty()
    tty.setraw(slave)
    device = subprocess.Popen([str(MICROPYTHON), str(DEVICE), str(flash)],
                              stdin=master, stdout=master, stderr=subprocess.PIPE)
    try:
        cmd = command(os.ttyname(slave))
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120,
                                shell=isinstance(cmd, str), executable="/bin/bash"
                                if isinstance(cmd, str) else None)
        assert result.returncode == 0, result.stdout + result.stderr
        device.wait(timeout=30)  # machine.reset() ends the emulated board
    finally:
        if device.poll() is None:
            device.kill()
            device.wait(timeout=10)
        os.close(master)
        os.close(slave)
        device.stderr.close()
    assert (flash / ".reset").is_file(), "the board was not reset"


def files_under(top, skip=()):
    return sorted(p.relative_to(top).as_posix() for p in top.rglob("*")
                  if p.is_file() and p.name not in skip)


@pytest.mark.parametrize("board", ["esp32_evplus"])
def test_make_deploy_copies_the_build_and_resets_the_board(board, tmp_path):
    tree = build(board, tmp_path / "build" / board)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    flash = tmp_path / "flash"
    flash.mkdir()

    def make_deploy_line(port):
        line = deploy_recipe()
        for var, value in (("BOARD", board), ("VENV", ".venv"), ("PORT", port)):
            line = line.replace(f"$({var})", value)
        assert not re.search(r"\$\(\w+\)", line), line
        return line

    run_against_board(flash, make_deploy_line, tmp_path)

    expected = files_under(tree, skip=("manifest.py",))
    copied = files_under(flash, skip=(".reset",))
    assert copied == expected
    for rel in expected:
        assert (flash / rel).read_bytes() == (tree / rel).read_bytes(), rel
    assert "lib/board.mpy" in copied and "main.py" in copied


# Run on the emulated board's filesystem, as a frozen image runs: the evse package comes
# from the image (here: the sources, marked as frozen the way the import system marks a
# frozen package), the working directory is the filesystem root.
_FROZEN_CHECK = """
import os, sys
sys.path[:0] = [{firmware!r}, {lib!r}]
import evse
from evse import app
evse.__path__ = ".frozen/evse"
evse.__file__ = "evse/__init__.py"
os.chdir({flash!r})
d = app._www_dir()
print(d)
os.stat(d + "/index.html.gz")
"""


@pytest.mark.parametrize("board", ["esp32_evplus"])
def test_frozen_image_deploy_copies_the_rest_and_the_pages_are_found(board, tmp_path):
    tree = build(board, tmp_path / "build" / board)
    flash = tmp_path / "flash"
    flash.mkdir()
    mpremote = str(ROOT / ".venv" / "bin" / "mpremote")
    run_against_board(flash, lambda port: [mpremote, "connect", port,
                                           *manifest.copy_args(tree)], tree)

    part = manifest.filesystem_part(tree)
    assert sorted(dev for _, dev in part) == files_under(flash, skip=(".reset",))
    for src, dev in part:
        assert (flash / dev).read_bytes() == (tree / src).read_bytes(), dev
    assert {"main.py", "ab_boot.py", "www/index.html.gz", "www/app.js.gz"} <= {
        dev for _, dev in part}
    assert not (flash / "evse").exists(), "an evse/ directory would hide the frozen package"

    check = _FROZEN_CHECK.format(firmware=str(ROOT / "firmware"), lib=str(ROOT / "lib"),
                                 flash=str(flash))
    result = subprocess.run([str(MICROPYTHON), "-c", check], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == str(flash / "www")
