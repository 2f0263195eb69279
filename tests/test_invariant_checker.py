"""The randomized invariant checker of the charging core (unix_port_tests/test_invariants.py,
docs/invariants.md) as one item of the host suite: `make test` runs it beside the host tests
instead of before them. Its seed and count come from the environment (INV_SEED, INV_N)."""
import subprocess

import pytest
from harness import ROOT, micropython

RUN_S = 400  # 3000 scenarios: about 95 s on an idle core, more beside the host tests


@pytest.mark.duration(130)
@pytest.mark.timeout(RUN_S + 30)
def test_invariant_checker():
    p = subprocess.run([str(micropython()), "unix_port_tests/runner.py", "test_invariants"],
                       cwd=ROOT, capture_output=True, text=True, timeout=RUN_S)
    out = p.stdout + p.stderr
    print(out[-3000:])
    assert p.returncode == 0, out[-6000:]
