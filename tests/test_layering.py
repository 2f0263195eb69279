"""Imports point downwards only (ARCHITECTURE §2): the application and the generic
libraries never touch the hardware modules; only boards/<board>/ does."""

import ast

from harness import ROOT

HARDWARE = {"machine", "pyb", "network", "esp32"}


def imported_modules(source, filename="<source>"):
    """(line, top-level module name) for every absolute import in `source`: `import x`,
    `from x import y` and `__import__("x")`."""
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        else:
            continue
        for name in names:
            yield node.lineno, name.partition(".")[0]


def violations(dirs, banned):
    found = []
    for top in dirs:
        for path in sorted((ROOT / top).rglob("*.py")):
            for line, name in imported_modules(path.read_text(), str(path)):
                if name in banned:
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


def test_checker_sees_every_form_of_import():
    source = (
        "import os, machine\n"
        "from pyb import CAN\n"
        "from network.wlan import WLAN\n"
        "esp = __import__('esp32')\n"
        "from . import machine_tools\n"
        "import machinery\n"
    )
    assert {name for _, name in imported_modules(source)} & HARDWARE == HARDWARE
    assert {name for _, name in imported_modules(source)} - HARDWARE == {"os", "machinery"}


def test_application_and_libraries_never_import_hardware_modules():
    assert violations(["firmware", "lib"], HARDWARE) == []


def test_libraries_know_nothing_of_the_application_or_the_board():
    assert violations(["lib"], {"evse", "board"}) == []
