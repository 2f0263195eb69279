"""tools/build.py: the device tree it makes, its errors, and the firmware running from it."""

import subprocess
import sys

import pytest
from harness import ROOT

# MicroPython's native-architecture codes, as stored in an .mpy header (byte 2 >> 2).
MPY_ARCH = {"unix_sim": None, "esp32_evplus": 10, "stm32_evplus": 7, "stm32h7_evplus": 8}


def build(board, out, root=ROOT):
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build.py"), "--board", board, "--out", str(out),
         "--root", str(root)],
        capture_output=True, text=True, timeout=120,
    )


def make_tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


SMALL_TREE = {
    "firmware/main.py": "import evse\n",
    "firmware/evse/__init__.py": "",
    "firmware/evse/ocpp/__init__.py": "X = 1\n",
    "firmware/evse/www/index.html": "<h1>EV PLUS</h1>\n",
    "firmware/evse/__pycache__/stale.cpython-311.pyc": "",
    "lib/crc.py": "def crc(b):\n    return 0\n",
    "boards/unix_sim/board.py": "NAME = 'unix_sim'\n",
    "boards/esp32_evplus/board.py": "NAME = 'esp32'\n",
    "boards/stm32_evplus/board.py": "NAME = 'stm32'\n",
    "boards/stm32h7_evplus/board.py": "NAME = 'stm32h7'\n",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "unix_sim"
    result = build("unix_sim", out)
    assert result.returncode == 0, result.stderr
    return out


def test_tree_is_laid_out_like_the_device(built):
    assert (built / "main.py").read_bytes() == (ROOT / "firmware" / "main.py").read_bytes()
    for src in (ROOT / "firmware" / "evse").rglob("*.py"):
        rel = src.relative_to(ROOT / "firmware").with_suffix(".mpy")
        assert (built / rel).is_file(), rel
    for top in (ROOT / "lib", ROOT / "boards" / "unix_sim"):
        for src in top.glob("*.py"):
            assert (built / "lib" / src.with_suffix(".mpy").name).is_file(), src.name
    assert (built / "lib" / "board.mpy").is_file()
    assert sorted(p.name for p in built.rglob("*.py")) == ["ab_boot.py", "main.py"]


def test_firmware_runs_from_the_build_tree(built, start_charger):
    c = start_charger(board_dir=built)
    snap = c.snapshot()
    assert snap["ok"] and snap["cp_state"] == "A"


def test_small_tree_layout(tmp_path):
    root = make_tree(tmp_path / "src", SMALL_TREE)
    result = build("unix_sim", tmp_path / "out", root)
    assert result.returncode == 0, result.stderr
    files = sorted(p.relative_to(tmp_path / "out").as_posix()
                   for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["evse/__init__.mpy", "evse/ocpp/__init__.mpy", "evse/www/index.html",
                     "lib/board.mpy", "lib/crc.mpy", "main.py"]


@pytest.mark.parametrize("board", ["esp32_evplus", "stm32_evplus", "stm32h7_evplus"])
def test_native_code_is_compiled_for_the_board(tmp_path, board):
    files = dict(SMALL_TREE)
    files["firmware/evse/fast.py"] = ("import micropython\n\n@micropython.native\n"
                                      "def f(x):\n    return x + 1\n")
    root = make_tree(tmp_path / "src", files)
    result = build(board, tmp_path / "out", root)
    assert result.returncode == 0, result.stderr
    header = (tmp_path / "out" / "evse" / "fast.mpy").read_bytes()[:4]
    assert header[0] == ord("M") and header[2] >> 2 == MPY_ARCH[board]


def test_a_compile_error_fails_the_build_and_names_the_file(tmp_path):
    files = dict(SMALL_TREE)
    files["firmware/evse/broken.py"] = "def f(:\n"
    files["lib/also_broken.py"] = "return 1 +\n"
    result = build("unix_sim", tmp_path / "out", make_tree(tmp_path / "src", files))
    assert result.returncode == 1
    assert "2 module(s) failed" in result.stderr
    assert "firmware/evse/broken.py" in result.stderr and "lib/also_broken.py" in result.stderr
    assert "SyntaxError" in result.stderr


def test_unknown_board_is_refused(tmp_path):
    root = make_tree(tmp_path / "src", {**SMALL_TREE, "boards/toaster/board.py": ""})
    result = build("toaster", tmp_path / "out", root)
    assert result.returncode == 1 and "unknown board 'toaster'" in result.stderr
