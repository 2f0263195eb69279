"""OCPP transactions cut by the charger going down: a power cut (SIGKILL) reports a
StopTransaction PowerLoss whose meterStop is at most PERSIST_WH behind the meter and whose
timestamp is the last one kept (docs/ocpp.md), with or without periodic meter values; a
watchdog reset reports Reboot."""

import datetime
import time

from csms import ocpp_view, wait_ocpp

A = "04A1B2C3"
WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware
PERSIST_WH = 100  # firmware/evse/ocpp/transactions.py


def _epoch(stamp):
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def charge(c, cs):
    c.sim("ev", state="B", diode=True, max_a=32, phases=3)
    c.wait_for(lambda s: s["cp_state"] == "B", WAIT_S)
    c.sim("ev", state="C", diode=True, max_a=32, phases=3)
    c.tap(A)
    c.wait_for(lambda s: s["session"]["active"], WAIT_S)
    cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction"), WAIT_S, "start")
    wait_ocpp(c, lambda o: o["transaction_id"] is not None, WAIT_S)


def cut_after(c, wh):
    """Charges until the plant's meter moved `wh`, then cuts the power; returns the
    register and the wall-clock time at the cut."""
    e0 = c.snapshot()["plant"]["energy_wh"]
    c.wait_for(lambda s: s["plant"]["energy_wh"] - e0 >= wh, 120)
    snap = c.snapshot()
    t = time.time()
    c.kill()
    return snap["plant"]["energy_wh"], t


def stop_after_boot(c, cs, reason):
    mark = cs.mark()
    c.start()
    cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction", mark), 30, "the stop")
    wait_ocpp(c, lambda o: o["queued"] == 0, WAIT_S)
    (stop,) = cs.payloads("CP1", "StopTransaction", mark)
    assert stop["reason"] == reason, stop
    return stop


def _check_cut(c, cs, config):
    c = c(cards=[A], config=config)
    charge(c, cs)
    start = cs.payloads("CP1", "StartTransaction")[0]
    e0 = c.snapshot()["plant"]["energy_wh"]
    used, t_cut = cut_after(c, 2.5 * PERSIST_WH)
    stop = stop_after_boot(c, cs, "PowerLoss")
    got = stop["meterStop"] - start["meterStart"]
    assert used - e0 - PERSIST_WH - 5 <= got <= used - e0 + 5, (got, used - e0)
    assert _epoch(stop["timestamp"]) > _epoch(start["timestamp"])
    assert _epoch(stop["timestamp"]) <= t_cut + 2


def test_power_cut_without_meter_values_keeps_the_energy(cs, ocpp):
    _check_cut(ocpp, cs, {"MeterValueSampleInterval": 0})


def test_power_cut_at_the_default_sample_interval_keeps_the_energy(cs, ocpp):
    _check_cut(ocpp, cs, {})


def test_power_cut_while_idle_keeps_the_last_time(cs, ocpp):
    """No energy flows (the car paused): the record still moves on every PERSIST_S."""
    c = ocpp(cards=[A], config={"MeterValueSampleInterval": 0})
    charge(c, cs)
    start = cs.payloads("CP1", "StartTransaction")[0]
    c.sim("ev", state="B", diode=True, max_a=32, phases=3)  # the car pauses
    time.sleep(65)
    t_cut = time.time()
    c.kill()
    stop = stop_after_boot(c, cs, "PowerLoss")
    assert _epoch(stop["timestamp"]) - _epoch(start["timestamp"]) >= 55, stop
    assert _epoch(stop["timestamp"]) <= t_cut + 2


def test_watchdog_reset_during_a_charge_is_reported_as_reboot(cs, ocpp):
    """The main loop hangs mid-charge: nothing ends the session before the watchdog bites
    (a dying task would: the supervisor's safe state ends it as Other first)."""
    c = ocpp(cards=[A])
    charge(c, cs)
    c.sim("stall", confirm="watchdog")
    status = c.wait_exit(timeout=30)
    assert status == -9, "the watchdog bit, then cut the power of the stuck loop"
    assert "watchdog reset" in c.log_tail(20)
    stop = stop_after_boot(c, cs, "Reboot")
    assert isinstance(stop["transactionId"], int)
    assert ocpp_view(c)["transaction_id"] is None
    # The cause is read once: a power cut after that reset is a power loss again.
    charge(c, cs)
    c.kill()
    stop_after_boot(c, cs, "PowerLoss")
