"""The scripted charging session of `make bench` (tools/bench_session.py) still runs: a few
minutes of its script, its table printed, its summary rows written, the same numbers for
the same seed. It measures; nothing here judges the numbers."""
import json
import subprocess
import sys

from harness import ROOT

TOOL = str(ROOT / "tools" / "bench_session.py")


def _run(*args):
    return subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_a_short_session_prints_its_rows_and_repeats(tmp_path):
    out = tmp_path / "session.json"
    p = _run("--seed", "7", "--minutes", "3", "--json", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "steady (0-3)" in p.stdout and "total (0-3)" in p.stdout, p.stdout
    res = json.loads(out.read_text())
    total = res["total"]
    assert total["contactor_cycles"] >= 1 and total["energy_kwh"] > 0, total  # the car charged
    for key in ("contactor_cycles", "duty_changes", "pauses", "opens_under_load", "trips"):
        assert sum(s[key] for s in res["segments"]) == total[key], key
    rows = {r["what"]: r["value"] for r in res["table"]}
    assert rows["3-min session seed 7: duty changes"] == total["duty_changes"], rows
    again = _run("--seed", "7", "--minutes", "3")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1:] == p.stdout.splitlines()[1:], "same seed, same numbers"


def test_a_duration_that_is_not_positive_is_refused():
    p = _run("--minutes", "0")
    assert p.returncode == 2 and "--minutes must be > 0" in p.stderr, p.stderr
