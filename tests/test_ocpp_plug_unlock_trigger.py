"""OCPP 1.6J end to end against the `ocpp` package as the central system (tests/csms.py):
identification before plug-in (ConnectionTimeOut, one waiting authorization, asked again at
plug-in), UnlockConnector during a charge with a
car that keeps drawing, TriggerMessage with every connectorId."""

import time

from csms import wait_ocpp, wait_status

A = "04A1B2C3"  # learned card
C = "04112233"  # accepted by the central system, not learned
WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware


def plug(c, state="C", **ev):
    c.sim("ev", state="B", diode=True, max_a=16, **ev)
    c.wait_for(lambda s: s["cp_state"] == "B", WAIT_S)
    if state == "C":
        c.sim("ev", state="C", diode=True, max_a=16, **ev)


def unplug(c):
    c.sim("ev", state="A")
    c.wait_for(lambda s: s["cp_state"] == "A" and not s["session"]["active"], WAIT_S)


def shown(c, since):
    return {e["value"] for e in c.events(since) if e["what"] == "display"}


def test_tap_then_plug_within_and_after_connection_timeout(cs, ocpp):
    c = ocpp(config={"ConnectionTimeOut": 6})
    t0 = c.snapshot()["t_us"]
    mark = cs.mark()
    c.tap(C)  # no vehicle yet
    cs.wait_for(lambda: cs.payloads("CP1", "Authorize", since=mark), WAIT_S, "Authorize")
    wait_status(cs, "CP1", 1, "Preparing", since=mark)
    c.wait_for(lambda s: "PLUG IN" in shown(c, t0), WAIT_S)
    time.sleep(2)
    plug(c)
    c.wait_for(lambda s: s["session"]["active"] and s["relays_closed"], WAIT_S)
    start = cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction", since=mark), WAIT_S)[0]
    assert start["idTag"] == C and start["connectorId"] == 1
    wait_status(cs, "CP1", 1, "Charging", since=mark)
    unplug(c)
    cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction", since=mark), WAIT_S)
    wait_status(cs, "CP1", 1, "Available", since=mark)
    # After ConnectionTimeOut the authorization lapses: Available, and a plug-in starts nothing.
    mark = cs.mark()
    c.tap(C)
    wait_status(cs, "CP1", 1, "Preparing", since=mark)
    lapse = wait_status(cs, "CP1", 1, "Available", since=mark, timeout=WAIT_S)
    assert lapse["status"] == "Available"
    plug(c)
    time.sleep(3)
    assert not c.snapshot()["session"]["active"]
    assert not cs.payloads("CP1", "StartTransaction", since=mark)


def test_remote_start_waits_as_the_one_authorization_and_plug_in_asks_again(cs, ocpp):
    """A RemoteStart before plug-in is the charger's one waiting authorization (Preparing,
    PLUG IN): another tag is refused meanwhile, by the central system or at the reader.
    At plug-in the local list is asked again: a tag Blocked during the wait starts nothing."""
    c = ocpp(cards=[A], config={"ConnectionTimeOut": 60})
    t0 = c.snapshot()["t_us"]
    mark = cs.mark()
    assert cs.call("CP1", "RemoteStartTransaction", idTag=C)["status"] == "Accepted"
    wait_status(cs, "CP1", 1, "Preparing", since=mark)
    c.wait_for(lambda s: "PLUG IN" in shown(c, t0), WAIT_S)
    assert cs.call("CP1", "RemoteStartTransaction", idTag="04999999")["status"] == "Rejected"
    c.tap(A)  # a learned card, but C waits
    plug(c)
    c.wait_for(lambda s: s["session"]["active"] and s["relays_closed"], WAIT_S)
    start = cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction", since=mark), WAIT_S)[0]
    assert start["idTag"] == C
    unplug(c)
    cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction", since=mark), WAIT_S)
    wait_status(cs, "CP1", 1, "Available", since=mark)

    listed = [{"idTag": C, "idTagInfo": {"status": "Accepted"}}]
    assert cs.call("CP1", "SendLocalList", listVersion=1, updateType="Full",
                   localAuthorizationList=listed)["status"] == "Accepted"
    mark = cs.mark()
    c.tap(C)
    wait_status(cs, "CP1", 1, "Preparing", since=mark)
    blocked = [{"idTag": C, "idTagInfo": {"status": "Blocked"}}]
    assert cs.call("CP1", "SendLocalList", listVersion=2, updateType="Differential",
                   localAuthorizationList=blocked)["status"] == "Accepted"
    plug(c)
    time.sleep(3)
    assert not c.snapshot()["session"]["active"]
    assert not cs.payloads("CP1", "StartTransaction", since=mark)


def test_unlock_connector_answers_once_a_slow_car_let_go(cs, ocpp):
    c = ocpp(cards=[A])
    plug(c, follow_s=5)
    c.tap(A)
    c.wait_for(lambda s: s["relays_closed"], WAIT_S)
    t = time.monotonic()
    assert cs.call("CP1", "UnlockConnector", connectorId=1, timeout=20)["status"] == "Unlocked"
    assert time.monotonic() - t >= 4.5, "answered before the car stopped drawing"
    snap = c.snapshot()
    assert snap["lock"] == "unlocked" and not snap["relays_closed"]
    stop = cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction"), WAIT_S)[0]
    assert stop["reason"] == "UnlockCommand"
    # Nothing to stop, the lock already open: at once.
    t = time.monotonic()
    assert cs.call("CP1", "UnlockConnector", connectorId=1)["status"] == "Unlocked"
    assert time.monotonic() - t < 2


def test_trigger_message_with_every_connector_id(cs, ocpp):
    c = ocpp(cards=[A])
    for what in (
        "BootNotification",
        "Heartbeat",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
    ):
        for conn in (None, 0, 1, 2):
            mark = cs.mark()
            kw = {} if conn is None else {"connectorId": conn}
            # Not a per-connector message: the connectorId is ignored (OCPP 1.6 §5.17).
            assert cs.call("CP1", "TriggerMessage", requestedMessage=what, **kw)["status"] == (
                "Accepted"
            ), (what, conn)
            cs.wait_for(lambda w=what, m=mark: cs.calls("CP1", w, since=m), WAIT_S, (what, conn))
    for what in ("StatusNotification", "MeterValues"):
        assert (
            cs.call("CP1", "TriggerMessage", requestedMessage=what, connectorId=2)["status"]
            == "Rejected"
        )
    for conn, want in ((None, {0, 1}), (0, {0}), (1, {1})):
        mark = cs.mark()
        kw = {} if conn is None else {"connectorId": conn}
        assert (
            cs.call("CP1", "TriggerMessage", requestedMessage="StatusNotification", **kw)["status"]
            == "Accepted"
        )
        cs.wait_for(
            lambda m=mark, w=want: {
                p["connectorId"] for p in cs.payloads("CP1", "StatusNotification", since=m)
            } >= w,
            WAIT_S,
        )
        time.sleep(0.5)
        got = {p["connectorId"] for p in cs.payloads("CP1", "StatusNotification", since=mark)}
        assert got == want, (conn, got)
    for conn, want in ((None, 1), (1, 1), (0, 0)):
        mark = cs.mark()
        kw = {} if conn is None else {"connectorId": conn}
        assert (
            cs.call("CP1", "TriggerMessage", requestedMessage="MeterValues", **kw)["status"]
            == "Accepted"
        )
        mv = cs.wait_for(lambda m=mark: cs.payloads("CP1", "MeterValues", since=m), WAIT_S)[0]
        assert mv["connectorId"] == want, (conn, mv)
        assert mv["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    # During a transaction: connector 1 carries it, connector 0 (the main meter) does not.
    plug(c)
    c.tap(A)
    cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction"), WAIT_S)
    wait_ocpp(c, lambda o: o["transaction_id"] is not None, WAIT_S)
    for conn in (1, 0):
        mark = cs.mark()
        assert (
            cs.call("CP1", "TriggerMessage", requestedMessage="MeterValues", connectorId=conn)[
                "status"
            ]
            == "Accepted"
        )
        mv = cs.wait_for(lambda m=mark: cs.payloads("CP1", "MeterValues", since=m), WAIT_S)[0]
        assert mv["connectorId"] == conn
        assert ("transactionId" in mv) == (conn == 1), mv
