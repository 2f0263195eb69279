"""The test harness and tools/run.py, driven against a stand-in for the firmware
(tests/fixtures/standin/main.py), so that they are tested on their own."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ROOT, Charger, NotReady, SimError, free_port, micropython

STANDIN = Path(__file__).parent / "fixtures" / "standin"


@pytest.fixture
def standin(start_charger):
    def start(**kw):
        return start_charger(board_dir=STANDIN, **kw)

    return start


def test_start_waits_until_the_simulator_answers(standin):
    c = standin(env={"EVSE_STANDIN_BOOT_MS": 300})
    snap = c.snapshot()
    assert snap["ok"] and snap["cp_state"] == "A" and snap["t_us"] > 0
    assert snap["env"]["EVSE_HTTP_PORT"] == str(c.http_port)


def test_simulator_ops_events_and_wait_for(standin):
    c = standin()
    t0 = c.snapshot()["t_us"]
    c.sim("ev", state="B")
    assert c.wait_for(lambda s: s["cp_state"] == "B", timeout=2)["cp_state"] == "B"
    assert [e["value"] for e in c.events(since=t0)] == ["B"]
    with pytest.raises(SimError, match="unknown op"):
        c.sim("no_such_op")
    with pytest.raises(AssertionError, match="not met within"):
        c.wait_for(lambda s: s["cp_state"] == "C", timeout=0.2)


def test_http_keeps_session_cookie(standin):
    c = standin()
    status, headers, body = c.http("GET", "/api/status")
    assert (status, body["state"]) == (200, "Available")
    assert headers["Content-Type"] == "application/json"
    assert c.http("POST", "/api/login", json={"password": "nope"}).status == 401
    assert c.http("POST", "/api/login", json={"password": "123456"}).status == 200
    assert c.http("GET", "/api/whoami").body == {"cookie": "session=s3cret"}
    c.http("POST", "/api/logout")
    assert c.http("GET", "/api/whoami").body == {"cookie": None}


def test_settings_are_seeded_and_survive_power_cut(standin):
    c = standin(settings={"max_current_a": 16, "auth_mode": "free"})
    assert c.snapshot()["settings"] == {"max_current_a": 16, "auth_mode": "free"}
    ports = (c.http_port, c.sim_port, c.can_port)
    assert c.kill() == -signal.SIGKILL
    assert not c.running
    snap = c.start()
    assert snap["boots"] == 2 and snap["settings"]["max_current_a"] == 16
    assert (c.http_port, c.sim_port, c.can_port) == ports
    assert c.restart()["boots"] == 3


def test_exit_status_of_a_reset(standin):
    c = standin()
    c.sim("exit", status=3)
    assert c.wait_exit() == 3
    assert c.start()["boots"] == 2


def test_several_chargers_share_one_can_bus(standin):
    bus = {"EVSE_CAN_PORT": free_port(socket.SOCK_DGRAM)}
    a, b = standin(env=bus), standin(env=bus)
    assert a.sim_port != b.sim_port and a.http_port != b.http_port
    assert a.snapshot()["env"]["EVSE_CAN_PORT"] == b.snapshot()["env"]["EVSE_CAN_PORT"]
    assert a.data_dir != b.data_dir


def test_a_firmware_that_cannot_boot_fails_fast(tmp_path):
    c = Charger(tmp_path, board_dir=STANDIN, env={"EVSE_STANDIN_CRASH": 1})
    with pytest.raises(NotReady, match="exited with status 1(.|\n)*told to crash"):
        c.start(timeout=10)
    assert c.stop() == 1


def test_failed_test_report_shows_the_charger_log(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(f"""
        def test_fails(start_charger):
            start_charger(board_dir={str(STANDIN)!r})
            assert False
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*charger1 log, last lines*", "stand-in up, boot 1"])


def run_py(tmp_path, *args):
    """tools/run.py on the stand-in, and the Charger that talks to what it runs."""
    c = Charger(tmp_path, board_dir=STANDIN)
    log = open(c.log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "run.py"), "--entry", c.cmd[-1],
         "--micropython", micropython(), *args],
        env={k: v for k, v in os.environ.items() if not k.startswith("EVSE_")} | c.env,
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    c.proc = proc  # the harness reaps it like a firmware process if the test fails
    return c, proc


def test_run_py_restarts_like_a_power_supply(tmp_path):
    c, proc = run_py(tmp_path)
    try:
        assert c.wait_ready()["boots"] == 1
        c.sim("exit", status=3)      # reset: started again at once
        c.wait_ready()
        assert c.snapshot()["boots"] == 2
        c.sim("exit", status=1)      # crash: started again after 1 s
        c.wait_ready()
        assert c.snapshot()["boots"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert c.try_snapshot(timeout=1) is None
    finally:
        c.stop()
    log = c.log_path.read_text()
    assert "firmware reset: starting it again" in log
    assert "status 1: starting it again in 1 s" in log
    assert json.loads((tmp_path / "data" / "boots.json").read_text()) == 3


def test_run_py_stops_when_the_firmware_stops(tmp_path):
    c, proc = run_py(tmp_path)
    try:
        c.wait_ready()
        c.sim("exit", status=0)
        assert proc.wait(timeout=10) == 0
    finally:
        c.stop()
    assert "firmware stopped (status 0)" in c.log_path.read_text()
