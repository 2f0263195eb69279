"""Power cuts across features (docs/soak.md): the charger SIGKILLed at seeded random
instants while charging, saving settings, appending charge records, queueing OCPP
transactions and installing upgrades (tests/soak_powercut.py); after every restart the
settings, the records and the queue are intact, and at the end every transaction reached
the central system exactly once (OCPP 1.6 §4.7: transaction messages are delivered even
after a power loss, StopTransaction reason PowerLoss).

Plus the two cuts the campaign found, made deterministic: a finished charge must not
come back as PowerLoss after a restart, and a cut between a charge's record and the
removal of its open-session file must not record it twice.

Parallel-safe: one charger and one central system on free ports under tmp_path.
EVSE_POWERCUT_SEED / EVSE_POWERCUT_CUTS replay another seed or length.
"""

import os
import time

import pytest
from harness import default_heap
from soak_powercut import Campaign

SEED = int(os.environ.get("EVSE_POWERCUT_SEED", "61851"))
CUTS = int(os.environ.get("EVSE_POWERCUT_CUTS", "40"))
FREE = {"auth_mode": "free"}


@pytest.mark.timeout(120 + CUTS * 6)
def test_power_cut_campaign(tmp_path):
    camp = Campaign(tmp_path, SEED, CUTS, heap=default_heap(),
                    log=lambda m: print(f"powercut: {m}"))
    try:
        camp.start()
        result = camp.run()
    finally:
        camp.close()
    print(f"\npower cuts seed {SEED}: {CUTS} cuts {result['by_kind']} in "
          f"{result['seconds']:.0f} s, {result['records']} charge records")
    assert result["violations"] == [], "\n".join(result["violations"])
    assert all(result["by_kind"].values()), f"every kind of cut ran: {result['by_kind']}"


def _charge(c):
    c.sim("ev", state="B", diode=True, max_a=16)
    c.wait_for(lambda s: s["session"]["active"], 10)
    c.sim("ev", state="C", diode=True, max_a=16)
    c.wait_for(lambda s: s["relays_closed"], 10)


def _records(c):
    return c.http("GET", "/api/history?limit=10").body["sessions"]


def _wait_records(c, n):
    deadline = time.monotonic() + 10
    while len(_records(c)) < n:
        assert time.monotonic() < deadline, f"{n} records not there: {_records(c)}"
        time.sleep(0.05)


def test_finished_charge_is_not_recorded_again_after_a_cut(start_charger):
    """A charge recorded at its end leaves no open-session copy behind (session.json.bak
    of the atomic writer) for the next boot to record a second time as PowerLoss."""
    c = start_charger(settings=FREE)
    _charge(c)
    time.sleep(1.5)  # the first meter reading saves the open session once more
    c.sim("ev", state="A")
    _wait_records(c, 1)
    c.kill()
    c.start()
    recs = _records(c)
    assert [r["stop_mode"] for r in recs] == ["Unplug"], recs
    assert not list(c.data_dir.glob("session.json*"))


def test_cut_between_record_and_forgetting_the_open_session(start_charger):
    """The cut lands after the record was appended but before the open-session file was
    removed: the next boot sees that file and must not record the charge again."""
    c = start_charger(settings=FREE)
    _charge(c)
    time.sleep(1.5)
    kept = {p.name: p.read_bytes() for p in c.data_dir.glob("session.json*")}
    assert "session.json" in kept
    c.sim("ev", state="A")
    _wait_records(c, 1)
    c.kill()
    for name, data in kept.items():  # the files as they were before the removal
        (c.data_dir / name).write_bytes(data)
    c.start()
    recs = _records(c)
    assert [r["stop_mode"] for r in recs] == ["Unplug"], recs


def test_cut_charge_is_recorded_once_as_power_loss(start_charger):
    """IEC/OCPP PowerLoss: a charge cut while it runs is closed at the next boot, once."""
    c = start_charger(settings=FREE)
    _charge(c)
    time.sleep(1.5)
    c.kill()
    c.start()
    c.kill()  # a second cut before anything else happens: still one record
    c.start()
    recs = _records(c)
    assert [r["stop_mode"] for r in recs] == ["PowerLoss"], recs


def test_charge_cut_before_it_was_queued_reaches_the_central_system(tmp_path, request):
    """OCPP 1.6 §4.8 / PowerLoss: the charge records stored a charge the transaction queue
    never got (the cut fell between the two). At the next boot it is reported: a
    StartTransaction and a StopTransaction with reason PowerLoss and its energy."""
    import json

    import csms
    from soak_rig import SharedCharger, seed_ocpp

    cs = csms.CentralSystem()
    cs.start()
    c = SharedCharger(tmp_path / "charger", settings={**FREE, "ocpp_url": cs.url("CP1")})
    request.node.chargers = [c]
    try:
        seed_ocpp(c)
        start_s = int(time.time()) - 600
        (c.data_dir / "session.json").write_text(json.dumps({
            "id_tag": "FREE", "start_mode": "Free", "start_s": start_s, "energy_wh": 1234.0,
            "tx_id": None, "power_dkw": [], "sample_s": 60, "no": 1}))
        c.start()
        cs.wait_for(lambda: cs.delivered("CP1", ("StopTransaction",)), 20, "the stop")
        msgs = cs.delivered("CP1", ("StartTransaction", "StopTransaction"))
        assert [a for _, a, _ in msgs] == ["StartTransaction", "StopTransaction"], msgs
        start, stop = msgs[0][2], msgs[1][2]
        assert start["idTag"] == "FREE" and start["meterStart"] == 0, start
        assert stop["reason"] == "PowerLoss" and stop["meterStop"] == 1234, stop
        assert stop["transactionId"] != -1
        assert [r["stop_mode"] for r in _records(c)] == ["PowerLoss"]
    finally:
        c.stop()
        cs.close()
