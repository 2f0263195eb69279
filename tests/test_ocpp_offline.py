"""OCPP offline behaviour: the persisted transaction queue across a central system that
goes away and a power cut (SIGKILL), retries per TransactionMessageAttempts /
TransactionMessageRetryInterval, reconnection with back-off, and authorization while
offline (local list, cache, LocalAuthorizeOffline, AllowOfflineTxForUnknownId)."""

import re
import time

from csms import ocpp_view, wait_ocpp

A = "04A1B2C3"  # learned card
CACHED = "0A0A0A01"  # accepted by the central system: cached
LISTED = "0A0A0A02"  # in the local list, Accepted
LISTBLOCK = "0A0A0A03"  # in the local list, Blocked
UNKNOWN = "0A0A0A04"

FAST = {  # through the standard keys (pre-seeded as an installer would, or changed live)
    "MeterValueSampleInterval": 1,
    "RetryBackOffWaitMinimum": 1,
    "RetryBackOffRandomRange": 0,
    "RetryBackOffRepeatTimes": 1,
    "MessageTimeout": 5,
}

TX = ("StartTransaction", "MeterValues", "StopTransaction")
WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware


def plug(c):
    c.sim("ev", state="B", diode=True, max_a=16)
    c.wait_for(lambda s: s["cp_state"] == "B", WAIT_S)
    c.sim("ev", state="C", diode=True, max_a=16)


def unplug(c):
    c.sim("ev", state="A")
    c.wait_for(lambda s: s["cp_state"] == "A" and not s["session"]["active"], WAIT_S)


def start_with_card(c, uid=A):
    c.tap(uid)
    c.wait_for(lambda s: s["session"]["active"], WAIT_S)


def beeps(c, since):
    return [e for e in c.events(since) if e["what"] == "buzzer"]


def queued(c):
    return ocpp_view(c)["queued"]


def tx_messages(cs):
    """The transaction messages the central system processed, once all are answered,
    checking it processed each exactly once (a copy that reached it but lost its answer
    to a closing connection comes again with the same id: that is the retry)."""
    answers = cs.answered("CP1")
    sent = [mid for mid, a, _ in cs.calls("CP1") if a in TX]
    assert all(answers.get(mid) == 1 for mid in sent), "each answered exactly once"
    return cs.delivered("CP1", TX)


def stops(cs):
    return [p for _, a, p in cs.delivered("CP1", TX) if a == "StopTransaction"]


def test_transaction_survives_csms_down_and_power_cut(cs, ocpp):
    c = ocpp(cards=[A])
    for k, v in FAST.items():
        assert cs.call("CP1", "ChangeConfiguration", key=k, value=str(v))["status"] == "Accepted"
    plug(c)
    start_with_card(c)
    cs.wait_for(lambda: len(cs.payloads("CP1", "MeterValues")) >= 2, 10, "meter values online")
    cs.stop()  # the central system goes away in the middle of the transaction
    wait_ocpp(c, lambda o: not o["connected"], 10)
    wait_ocpp(c, lambda o: o["queued"] >= 2, 10)
    unplug(c)  # transaction 1 ends offline ...
    plug(c)
    start_with_card(c)  # ... and transaction 2 starts offline (learned card)
    wait_ocpp(c, lambda o: o["queued"] >= 6, 10)
    c.kill()  # power cut while offline, transaction 2 still running
    c.start()  # power back, central system still down
    wait_ocpp(c, lambda o: o["queued"] >= 7, 10)
    assert not c.snapshot()["session"]["active"]
    mark = cs.mark()
    cs.start()
    cs.wait_for(
        lambda: [
            p for p in cs.payloads("CP1", "StopTransaction", mark) if p.get("reason") == "PowerLoss"
        ],
        30,
        "everything delivered",
    )
    wait_ocpp(c, lambda o: o["queued"] == 0, WAIT_S)
    assert cs.calls("CP1", since=mark)[0][1] == "BootNotification", "nothing before the boot"

    msgs = tx_messages(cs)
    starts = [p for _, a, p in msgs if a == "StartTransaction"]
    ends = [p for _, a, p in msgs if a == "StopTransaction"]
    assert [s["idTag"] for s in starts] == [A, A]
    assert [(s["transactionId"], s["reason"]) for s in ends] == [
        (1, "EVDisconnected"),
        (2, "PowerLoss"),
    ]
    # Start 1, its meter values, Stop 1, then the same for transaction 2: nothing twice.
    shape = "".join(
        {"StartTransaction": "B", "MeterValues": "M", "StopTransaction": "E"}[a] for _, a, _ in msgs
    )
    assert re.fullmatch("BM{2,}EBM{2,}E", shape), shape
    second = shape.index("EB") + 1
    for i, (_, a, p) in enumerate(msgs):
        if a != "StartTransaction":
            assert p["transactionId"] == (1 if i < second else 2)
    for lo, hi in ((0, second), (second, len(msgs))):
        stamps = [p["meterValue"][0]["timestamp"] for _, a, p in msgs[lo:hi] if a == "MeterValues"]
        assert stamps == sorted(stamps) and len(stamps) == len(set(stamps)), stamps
    energy = [
        int(sv["value"])
        for _, a, p in msgs
        if a == "MeterValues"
        for sv in p["meterValue"][0]["sampledValue"]
    ]
    assert energy == sorted(energy), "meter register never goes back within the delivery order"
    assert ends[1]["meterStop"] >= starts[1]["meterStart"]


def test_retries_per_transaction_message_attempts(cs, ocpp):
    c = ocpp(
        cards=[A],
        config={
            "TransactionMessageAttempts": 2,
            "TransactionMessageRetryInterval": 1,
            "MeterValueSampleInterval": 0,
        },
    )
    cs.fail = {"StartTransaction"}
    plug(c)
    start_with_card(c)
    cs.wait_for(lambda: len(cs.calls("CP1", "StartTransaction")) >= 2, 10, "two attempts")
    time.sleep(1.5)
    attempts = cs.calls("CP1", "StartTransaction")
    assert len(attempts) == 2, "no third try"
    assert attempts[0][0] != attempts[1][0], "a new id on the same connection"
    assert attempts[0][2] == attempts[1][2], "the same message"
    t = [
        f["t"]
        for f in cs.frames
        if f["msg"] and f["msg"][0] == 2 and f["msg"][2] == "StartTransaction"
    ]
    assert t[1] - t[0] >= 0.9, "TransactionMessageRetryInterval waited"
    cs.fail = set()
    unplug(c)
    stop = cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction"), WAIT_S)[0]
    assert stop["transactionId"] == -1, "no transactionId ever received"
    wait_ocpp(c, lambda o: o["queued"] == 0, WAIT_S)


def test_reconnects_with_backoff_and_no_boot_on_plain_reconnect(cs, ocpp):
    c = ocpp(config=FAST)
    n = len(cs.connections)
    for _ in range(2):
        cs.stop()
        wait_ocpp(c, lambda o: not o["connected"], 10)
        time.sleep(1.5)
        cs.start()
        cs.wait_for(lambda: cs.connected("CP1"), 15, "reconnected")
    assert len(cs.connections) == n + 2
    assert len(cs.calls("CP1", "BootNotification")) == 1, "a plain reconnect sends no boot"


def test_offline_authorization(cs, ocpp):
    cs.tags = {CACHED: "Accepted"}
    c = ocpp(config=FAST)
    assert (
        cs.call(
            "CP1",
            "SendLocalList",
            listVersion=1,
            updateType="Full",
            localAuthorizationList=[
                {"idTag": LISTED, "idTagInfo": {"status": "Accepted"}},
                {"idTag": LISTBLOCK, "idTagInfo": {"status": "Blocked"}},
            ],
        )["status"]
        == "Accepted"
    )
    plug(c)
    start_with_card(c, CACHED)  # learned by the cache through Authorize
    unplug(c)
    # LocalPreAuthorize: a listed tag starts without waiting for the central system.
    assert (
        cs.call("CP1", "ChangeConfiguration", key="LocalPreAuthorize", value="true")["status"]
        == "Accepted"
    )
    n = len(cs.calls("CP1", "Authorize"))
    plug(c)
    start_with_card(c, LISTED)
    assert len(cs.calls("CP1", "Authorize")) == n
    unplug(c)
    cs.stop()
    wait_ocpp(c, lambda o: not o["connected"], 10)

    def tries(tag):
        plug(c)
        t = c.tap(tag)
        # The verdict is out with the first beep (one once the charge has started, two
        # when refused: auth.present), however long the firmware took to read the card.
        c.wait_for(lambda s: beeps(c, t), WAIT_S)
        ok = c.snapshot()["session"]["active"]
        if not ok:  # its second beep comes before the next card's verdict
            c.wait_for(lambda s: len(beeps(c, t)) >= 2, WAIT_S)
        unplug(c)
        return ok

    assert tries(CACHED) and tries(LISTED), "local list and cache work offline"
    assert not tries(UNKNOWN) and not tries(LISTBLOCK)
    cs.start()
    cs.wait_for(lambda: cs.connected("CP1"), 15)
    assert (
        cs.call("CP1", "ChangeConfiguration", key="AllowOfflineTxForUnknownId", value="true")[
            "status"
        ]
        == "Accepted"
    )
    assert (
        cs.call("CP1", "ChangeConfiguration", key="LocalAuthorizeOffline", value="false")["status"]
        == "Accepted"
    )
    cs.stop()
    wait_ocpp(c, lambda o: not o["connected"], 10)
    assert tries(UNKNOWN), "AllowOfflineTxForUnknownId"
    assert not tries(LISTBLOCK), "never for a listed non-Accepted id"
    assert tries(CACHED), "a cached id is 'unknown' only to the cache: allowed as unknown"
    cs.start()
    # The charges made offline are reported once back online, in order.
    cs.wait_for(lambda: len(stops(cs)) >= 6, 20)
    wait_ocpp(c, lambda o: o["queued"] == 0, WAIT_S)
    tags = [p["idTag"] for _, a, p in tx_messages(cs) if a == "StartTransaction"]
    assert tags == [CACHED, LISTED, CACHED, LISTED, UNKNOWN, CACHED]


def test_message_ids_unique_on_a_connection_across_retries(cs, ocpp):
    c = ocpp(
        cards=[A],
        config={
            "TransactionMessageAttempts": 3,
            "TransactionMessageRetryInterval": 1,
            "MeterValueSampleInterval": 1,
        },
    )
    cs.fail = {"StartTransaction", "MeterValues"}
    plug(c)
    start_with_card(c)
    cs.wait_for(lambda: len(cs.calls("CP1", "StartTransaction")) >= 3, WAIT_S, "three tries")
    cs.wait_for(lambda: len(cs.calls("CP1", "MeterValues")) >= 3, WAIT_S, "meter value tries")
    ids = [mid for mid, _, _ in cs.calls("CP1")]
    assert len(cs.connections) == 1
    assert len(ids) == len(set(ids)), "every CALL on a connection has a new id"
    starts = cs.payloads("CP1", "StartTransaction")
    assert starts[0] == starts[1] == starts[2], "the same message, told by its payload"
    cs.fail = set()
    unplug(c)
    wait_ocpp(c, lambda o: o["queued"] == 0, 20)
    ids = [mid for mid, _, _ in cs.calls("CP1")]
    assert len(ids) == len(set(ids))


def test_stop_never_waits_behind_refused_meter_values(cs, ocpp):
    # Defaults: 3 attempts, 60 s apart (x n): a refused MeterValues must not hold the stop.
    c = ocpp(cards=[A], config={"MeterValueSampleInterval": 1})
    cs.fail = {"MeterValues"}
    plug(c)
    start_with_card(c)
    cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction"), WAIT_S, "start")
    cs.wait_for(lambda: cs.calls("CP1", "MeterValues"), WAIT_S, "a refused MeterValues")
    time.sleep(1.5)
    t0 = time.monotonic()
    unplug(c)
    stop = cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction"), 10, "prompt stop")[0]
    assert time.monotonic() - t0 < 10
    assert stop["reason"] == "EVDisconnected" and stop["transactionId"] == 1
    wait_ocpp(c, lambda o: o["queued"] == 0, WAIT_S)
    # What went out after the stop: nothing of the finished transaction.
    calls = cs.calls("CP1")
    i = next(i for i, (_, a, _) in enumerate(calls) if a == "StopTransaction")
    assert not [a for _, a, _ in calls[i + 1:] if a == "MeterValues"]


def test_transaction_ended_while_ocpp_is_switched_off_is_stopped_when_back(cs, ocpp):
    """ocpp_url cleared mid-transaction (the owner's web app): the charge goes on and its
    end is still queued, so the central system gets the stop once OCPP is back and no
    transaction stays open there."""
    c = ocpp(cards=[A], config={"MeterValueSampleInterval": 0})
    plug(c)
    start_with_card(c)
    wait_ocpp(c, lambda o: o["transaction_id"] is not None, WAIT_S)
    assert c.login().status == 200
    assert c.http("PUT", "/api/config", json={"ocpp_url": ""}).status == 200
    unplug(c)
    time.sleep(1.5)  # a few ticks of the service with OCPP off
    assert c.http("PUT", "/api/config", json={"ocpp_url": cs.url("CP1")}).status == 200
    stop = cs.wait_for(lambda: stops(cs), WAIT_S, "the stop")[0]
    assert stop["transactionId"] == 1 and stop["reason"] == "EVDisconnected", stop
    wait_ocpp(c, lambda o: o["queued"] == 0 and o["transaction_id"] is None, WAIT_S)
    assert [a for _, a, _ in cs.delivered("CP1", TX)] == ["StartTransaction", "StopTransaction"]
