"""Both real boards compile with mpy-cross for their -march (tools/build.py) and get a
manifest.py beside the tree; tools/manifest.py lists every module for a frozen image with
paths that hold wherever the checkout is, and what a frozen image does not hold (entry
scripts, web pages) is what it copies to the filesystem."""

import os
import re
import subprocess
import sys

import pytest
from harness import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import manifest  # noqa: E402

sys.path.pop(0)

# MP_NATIVE_ARCH_XTENSAWIN, _ARMV7EMSP, _ARMV7EMDP
MPY_ARCH = {"esp32_evplus": 10, "stm32_evplus": 7, "stm32h7_evplus": 8}
MPY_VERSION = 6
MPY_SUB_VERSION = 3  # what the 1.23+ loaders demand of a module with native code
NATIVE_PROBE = "import micropython\n\n\n@micropython.native\ndef inc(x):\n    return x + 1\n"


def build(board, out, root=ROOT):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build.py"), "--board", board, "--out", str(out),
         "--root", str(root)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out


def checkout_with_native_module(tmp_path):
    """A checkout of links to this one whose lib/ also holds a module with native code:
    mpy-cross writes the architecture into the header of such modules only."""
    checkout = tmp_path / "checkout"
    (checkout / "lib").mkdir(parents=True)
    for top in ("firmware", "boards", "tools"):
        (checkout / top).symlink_to(ROOT / top)
    for src in (ROOT / "lib").iterdir():
        (checkout / "lib" / src.name).symlink_to(src)
    (checkout / "lib" / "native_probe.py").write_text(NATIVE_PROBE)
    return checkout


@pytest.mark.parametrize("board", sorted(MPY_ARCH))
def test_board_builds_with_its_arch_and_writes_the_manifest(board, tmp_path):
    out = build(board, tmp_path / board, checkout_with_native_module(tmp_path))
    shared = [p.stem for p in (ROOT / "boards" / "evplus_common").glob("*.py")]
    assert "evplus_board" in shared
    for name in ["board", "pins", *shared]:
        mpy = out / "lib" / f"{name}.mpy"
        assert mpy.is_file(), mpy

    # native code: the board's architecture and the sub-version its loader accepts
    magic, version, flags, _ = (out / "lib" / "native_probe.mpy").read_bytes()[:4]
    assert (magic, version) == (ord("M"), MPY_VERSION)
    assert flags >> 2 == MPY_ARCH[board], flags
    assert flags & 3 == MPY_SUB_VERSION, flags
    # bytecode only: no architecture, no sub-version, so either port loads it
    for mpy in sorted(out.rglob("*.mpy")):
        if mpy.name != "native_probe.mpy":
            head = mpy.read_bytes()[:3]
            assert head == bytes((ord("M"), MPY_VERSION, 0)), (mpy, head)

    text = (out / "manifest.py").read_text()  # make build writes it for a real board
    assert f"for {board}" in text
    assert 'package("evse"' in text and 'module("board.py"' in text


def frozen_sources(text, manifest_dir):
    """The files the manifest freezes: its module() lines, and the .py files of its
    package() lines (as MicroPython's manifest reader collects them)."""
    frozen = set()
    for kind, name, base in re.findall(r'(module|package)\("([^"]+)", base_path="([^"]+)"\)',
                                       text):
        top = (manifest_dir / base).resolve()
        if kind == "module":
            frozen.add(name)
        else:
            frozen.update(p.relative_to(top).as_posix()
                          for p in (top / name).rglob("*.py"))
    return frozen


@pytest.mark.parametrize("board", sorted(MPY_ARCH))
def test_frozen_image_plus_its_filesystem_part_is_the_whole_build(board, tmp_path):
    """Every file of the build is either frozen by the manifest or copied beside the
    image; the web pages are copied, to where app._www_dir() looks for a frozen package."""
    out = build(board, tmp_path / board)
    frozen = frozen_sources((out / "manifest.py").read_text(), out)
    copied = {src for src, _ in manifest.filesystem_part(out)}
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.name == "manifest.py":
            continue
        rel = path.relative_to(out).as_posix()
        if path.suffix == ".mpy":
            source = rel.removeprefix("lib/").removesuffix(".mpy") + ".py"
            assert source in frozen, f"{rel}: neither frozen nor copied"
        else:
            assert rel in copied, f"{rel}: neither frozen nor copied"
    device = {dev for _, dev in manifest.filesystem_part(out)}
    assert {"main.py", "ab_boot.py", "www/index.html.gz", "www/app.js.gz",
            "www/app.css.gz"} <= device
    # a directory named evse on the filesystem would hide the frozen package
    assert not any(dev.startswith("evse/") for dev in device)


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
