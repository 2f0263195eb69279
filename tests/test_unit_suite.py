"""The unix-port unit tests (unix_port_tests/, run by its runner inside MicroPython) as
items of the host suite: `make test` runs them beside the host tests instead of before
them. In a few batches of modules, each its own interpreter: every name a run compiles
stays interned, and MicroPython looks each new string up among them all, so one process
over every module took 3 min of one core where the batches take about 1.5 min in all.
The invariant checker runs apart (tests/test_invariant_checker.py); `make test-unix`
runs the runner over everything in one process."""
import re
import subprocess

import pytest
from harness import ROOT, micropython

BATCHES = 6
RUN_S = 600


def _modules():
    names = sorted(p.stem for p in (ROOT / "unix_port_tests").glob("test_*.py"))
    return [n for n in names if n != "test_invariants"]


def test_every_module_is_in_a_batch():
    mods = _modules()
    assert sorted(m for b in range(BATCHES) for m in mods[b::BATCHES]) == mods


@pytest.mark.duration(30)
@pytest.mark.timeout(RUN_S + 30)
@pytest.mark.parametrize("batch", range(BATCHES))
def test_unix_port_unit_tests(batch):
    mods = _modules()[batch::BATCHES]
    p = subprocess.run([str(micropython()), "unix_port_tests/runner.py", *mods],
                       cwd=ROOT, capture_output=True, text=True, timeout=RUN_S)
    out = p.stdout + p.stderr
    summary = re.findall(r"^\d+ passed, \d+ failed.*$", out, re.M)
    print(summary[-1] if summary else out[-3000:])
    # Each failure with its traceback, for the report.
    fails = re.findall(r"^FAIL .*?(?=^ok |^FAIL |^SKIP |^\d+ passed)", out, re.M | re.S)
    assert p.returncode == 0 and summary, "".join(fails)[-8000:] or out[-6000:]
