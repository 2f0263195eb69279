"""OCPP reservations end to end: Reserved status, another card turned away, the reserved
idTag (or one with the same parent) starts and consumes it, expiry and cancellation."""

import time
from datetime import datetime, timedelta, timezone

from csms import wait_status

A = "04A1B2C3"  # learned card, not the reserved one
R = "04BEEF01"  # the reserved idTag (known to the central system only)
Q = "04BEEF02"  # another tag under the same parent
WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware


def iso(delta_s):
    return (datetime.now(timezone.utc) + timedelta(seconds=delta_s)).isoformat()


def beeps(c, since):
    return [e for e in c.events(since) if e["what"] == "buzzer"]


def reserve(cs, rid, tag, delta_s=60, conn=1, parent=None):
    extra = {"parentIdTag": parent} if parent else {}
    return cs.call(
        "CP1",
        "ReserveNow",
        connectorId=conn,
        expiryDate=iso(delta_s),
        idTag=tag,
        reservationId=rid,
        **extra,
    )["status"]


def test_reservation_turns_away_another_card(cs, ocpp):
    c = ocpp(cards=[A])
    assert reserve(cs, 1, R, conn=0) == "Rejected"  # ReserveConnectorZeroSupported false
    assert reserve(cs, 1, R, delta_s=-5) == "Rejected"
    assert reserve(cs, 1, R) == "Accepted"
    wait_status(cs, "CP1", 1, "Reserved")
    assert reserve(cs, 2, A) == "Occupied"
    assert reserve(cs, 1, R, delta_s=120) == "Accepted"  # same id: replaced
    c.sim("ev", state="B", diode=True, max_a=16)
    wait_status(cs, "CP1", 1, "Preparing")
    t = c.sim("card", uid=A, ms=800)["t_us"]
    c.wait_for(lambda s: len(beeps(c, t)) >= 2, WAIT_S)
    assert not c.snapshot()["session"]["active"], "a learned card is turned away too"
    assert cs.call("CP1", "RemoteStartTransaction", idTag=A)["status"] == "Rejected"
    c.sim("card", uid=R, ms=800)
    c.wait_for(lambda s: s["session"]["active"] and s["session"]["id_tag"] == R, WAIT_S)
    start = cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction"), WAIT_S)[0]
    assert start["idTag"] == R and start["reservationId"] == 1
    assert cs.call("CP1", "CancelReservation", reservationId=1)["status"] == "Rejected", "consumed"


def test_reservation_parent_expiry_and_cancel(cs, ocpp):
    cs.parents = {Q: "FLEET"}
    c = ocpp(cards=[A])
    assert reserve(cs, 5, R, parent="FLEET") == "Accepted"
    c.sim("ev", state="B", diode=True, max_a=16)
    c.wait_for(lambda s: s["cp_state"] == "B", WAIT_S)  # a card before the plug is refused
    c.sim("card", uid=Q, ms=800)  # same parent: may use the reservation
    c.wait_for(lambda s: s["session"]["active"] and s["session"]["id_tag"] == Q, WAIT_S)
    start = cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction"), WAIT_S)[0]
    assert start["reservationId"] == 5
    c.sim("ev", state="A")
    c.wait_for(lambda s: not s["session"]["active"], WAIT_S)
    wait_status(cs, "CP1", 1, "Available")
    mark = cs.mark()
    t0 = time.time()  # before the expiry date is taken from this clock
    assert reserve(cs, 6, R, delta_s=5) == "Accepted"  # refused if past when it arrives
    wait_status(cs, "CP1", 1, "Available", since=mark, timeout=5 + WAIT_S)  # expired
    seen = [p["status"] for p in cs.payloads("CP1", "StatusNotification", mark)
            if p["connectorId"] == 1]
    assert seen[0] == "Reserved", seen
    # Not before its date: the charger keeps it in whole seconds and its RTC counts whole
    # seconds of this host's clock (isotime.parse, sim_clock.Rtc), so a date 5 s ahead is
    # reached 4 to 5 s later.
    assert time.time() - t0 >= 4, time.time() - t0
    assert reserve(cs, 7, R) == "Accepted"
    wait_status(cs, "CP1", 1, "Reserved")
    assert cs.call("CP1", "CancelReservation", reservationId=8)["status"] == "Rejected"
    assert cs.call("CP1", "CancelReservation", reservationId=7)["status"] == "Accepted"
    wait_status(cs, "CP1", 1, "Available")
    c.sim("fault", name="cp_short", active=True)
    wait_status(cs, "CP1", 1, "Faulted")
    assert reserve(cs, 9, R) == "Faulted"
