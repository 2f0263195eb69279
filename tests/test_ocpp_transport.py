"""The OCPP transport end to end: wss:// verified against the operator's CA (security
profile 2), HTTP Basic auth with AuthorizationKey (profiles 1 and 2), and hostile frames
from the central system, each answered with the right CALLERROR or a closed connection,
changing nothing."""

import json
import re
import time

from csms import CentralSystem, make_certs, ocpp_view, server_context
from harness import ROOT

KEY = "0123456789abcdef0123"
NEW_KEY = "fedcba9876543210fedc"
WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware


def test_wss_with_the_test_ca_and_basic_auth(tmp_path, ocpp):
    certs = make_certs(tmp_path / "pki")
    tls = CentralSystem(ssl=server_context(certs["cert"], certs["key"]), auth={"CP1": KEY})
    tls.start()
    try:
        c = ocpp(
            central=tls,
            url=tls.url("CP1", host="localhost"),
            files={"ocpp_ca.pem": certs["ca"].read_bytes()},
            config={"AuthorizationKey": KEY, "SecurityProfile": 1},
        )
        assert tls.payloads("CP1", "BootNotification")
        for value, why in ((1, "equal"), (0, "lower"), (3, "no client certificates")):
            ans = tls.call("CP1", "ChangeConfiguration", key="SecurityProfile", value=str(value))
            assert ans["status"] == "Rejected", why
        n = len(tls.connections)
        ans = tls.call("CP1", "ChangeConfiguration", key="SecurityProfile", value="2")
        assert ans["status"] == "Accepted"
        tls.wait_for(lambda: len(tls.connections) > n and tls.connected("CP1"), 15, "reconnected")
        # A new AuthorizationKey: accepted, used from the next connection, never disclosed.
        n = len(tls.connections)
        ans = tls.call("CP1", "ChangeConfiguration", key="AuthorizationKey", value=NEW_KEY)
        assert ans["status"] == "Accepted"
        tls.auth["CP1"] = NEW_KEY
        tls.wait_for(lambda: len(tls.connections) > n and tls.connected("CP1"), 20, "new key")
        got = tls.call("CP1", "GetConfiguration", key=["AuthorizationKey", "SecurityProfile"])
        assert got["configurationKey"] == [
            {"key": "AuthorizationKey", "readonly": False},
            {"key": "SecurityProfile", "readonly": False, "value": "2"},
        ]
        assert len(tls.calls("CP1", "BootNotification")) == 1
        assert not c.snapshot()["errors"]
    finally:
        tls.close()


def test_wss_with_a_wrong_ca_is_refused(tmp_path, ocpp):
    certs = make_certs(tmp_path / "pki")
    tls = CentralSystem(ssl=server_context(certs["cert"], certs["key"]))
    tls.start()
    try:
        c = ocpp(
            central=tls,
            url=tls.url("CP1", host="localhost"),
            wait_boot=False,
            files={"ocpp_ca.pem": certs["other_ca"].read_bytes()},
            config={"RetryBackOffWaitMinimum": 1, "RetryBackOffRandomRange": 0},
        )
        deadline = time.monotonic() + 20
        while "not correctly signed" not in c.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "not correctly signed" in c.log_path.read_text()
        time.sleep(1)
        assert not tls.connections and not tls.frames, "no WebSocket over an unverified server"
        c2 = ocpp(central=tls, cp_id="CP2", url=tls.url("CP2", host="localhost"), wait_boot=False)
        deadline = time.monotonic() + 10
        while (
            "needs the CA certificate" not in c2.log_path.read_text()
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert "needs the CA certificate" in c2.log_path.read_text(), "no CA: no wss at all"
        assert ocpp_view(c)["connected"] is False
    finally:
        tls.close()


def test_wrong_authorization_key_is_refused(ocpp, cs):
    cs.auth = {"CP1": KEY}
    c = ocpp(
        wait_boot=False,
        # ws://: the key goes in clear only when the technician allows it (docs/ocpp.md)
        settings={"ocpp_allow_insecure_auth": True},
        config={
            "AuthorizationKey": NEW_KEY,
            "RetryBackOffWaitMinimum": 1,
            "RetryBackOffRandomRange": 0,
        },
    )
    cs.wait_for(lambda: cs.refused, 15, "refused")
    assert cs.refused[0] == ("CP1", 401) and not cs.connections
    assert ocpp_view(c)["connected"] is False


def _answer(cs, text, mid):
    cs.send_raw("CP1", text)
    return cs.wait_reply("CP1", mid, WAIT_S)


def test_hostile_frames(cs, ocpp):
    c = ocpp(config={"RetryBackOffWaitMinimum": 1, "RetryBackOffRandomRange": 0})
    pid = c.proc.pid
    heap_before = c.snapshot()["heap_free"]  # after a collection
    before = cs.call("CP1", "GetConfiguration", key=["HeartbeatInterval"])
    cases = [
        ("not json at all", "-1", "FormationViolation"),
        ('{"a": 1}', "-1", "FormationViolation"),
        ('[9, "h9", {}]', "h9", "FormationViolation"),
        ('["2", "h0", "Reset", {}]', "h0", "FormationViolation"),
        ('[2, "h1", "Reset", {"type": 5}]', "h1", "TypeConstraintViolation"),
        ('[2, "h2", "Reset", {}]', "h2", "OccurenceConstraintViolation"),
        ('[2, "h3", "Reset", {"type": "Warm"}]', "h3", "PropertyConstraintViolation"),
        ('[2, "h4", "Reset"]', "h4", "ProtocolError"),
        ('[2, "h5", "Reset", {"type": "Soft", "extra": 1}]', "h5", "FormationViolation"),
        (
            '[2, "h6", "ChangeConfiguration", {"key": "HeartbeatInterval", "value": 5}]',
            "h6",
            "TypeConstraintViolation",
        ),
        (
            '[2, "h7", "RemoteStartTransaction", {"idTag": "%s"}]' % ("X" * 21),
            "h7",
            "TypeConstraintViolation",
        ),
        ('[2, "h8", "FooBar", {}]', "h8", "NotImplemented"),
        # Over the 4 KB receive buffer (a local list of 40 entries): dropped and answered,
        # the connection kept; the central system can send it in parts.
        (
            '[2, "h10", "SendLocalList", {"listVersion": 3, "updateType": "Full", '
            '"localAuthorizationList": [%s]}]' % ", ".join(
                '{"idTag": "%020d", "idTagInfo": {"status": "Accepted", "expiryDate": '
                '"2030-01-01T00:00:00Z", "parentIdTag": "%020d"}}' % (i, i) for i in range(40)),
            "h10",
            "GenericError",
        ),
    ]
    connections = len(cs.connections)
    for text, mid, code in cases:
        ans = _answer(cs, text, mid)
        assert ans[0] == 4 and ans[2] == code, (text, ans)
        assert ans[4] == {} and isinstance(ans[3], str)
    assert len(cs.connections) == connections, "no frame above closed the connection"
    # Answers to messages we never sent are ignored, not answered.
    n = len(cs.replies("CP1"))
    cs.send_raw("CP1", '[3, "nobody-asked", {}]')
    cs.send_raw("CP1", '[4, "nobody-asked-2", "GenericError", "", {}]')
    assert cs.call("CP1", "GetConfiguration", key=["HeartbeatInterval"]) == before, (
        "nothing changed"
    )
    assert len(cs.replies("CP1")) == n + 1
    assert c.proc.poll() is None and c.proc.pid == pid, "no reset"
    assert not c.snapshot()["session"]["active"]

    def survives(send, code):
        n = len(cs.connections)
        send()
        cs.wait_for(lambda: len(cs.connections) > n and cs.connected("CP1"), 15, "reconnected")
        if code is not None:
            assert cs.closes[-1] == ("CP1", code), cs.closes
        assert c.proc.poll() is None

    # Huge: refused from its header, so the charger may close while it is still being sent.
    survives(lambda: cs.send_raw("CP1", "x" * (1 << 20), may_close=True), 1009)
    survives(lambda: cs.send_raw("CP1", b"\x00\x01binary"), 1003)  # OCPP-J is text only
    # The central system closing in the middle of a frame.
    survives(
        lambda: cs.send_bytes("CP1", b"\x81\x7e\x01\x00" + b'[2, "cut", "Re', close=True), None
    )
    assert len(cs.calls("CP1", "BootNotification")) == 1, "plain reconnects: no new boot"
    assert cs.call("CP1", "GetConfiguration", key=["HeartbeatInterval"]) == before
    snap = c.snapshot()
    # Nothing of the hostile frames is kept: what the charger holds after a collection is
    # what it held before, within the log ring and the reconnects' small state (4 KB).
    assert snap["heap_free"] > heap_before - 4096, (heap_before, snap["heap_free"])
    assert ocpp_view(c)["connected"]


def test_the_largest_legal_requests_fit_the_receive_buffer():
    """What the charger advertises (SendLocalListMaxLength, ChargingScheduleMaxPeriods,
    GetConfigurationMaxKeys) fits its 4 KB receive buffer with every field at its longest,
    written with Python's default separators (a space after each comma and colon)."""
    src = (ROOT / "firmware" / "evse" / "ocpp" / "config.py").read_text()
    limit = {k: int(v) for k, v in re.findall(r'\("(\w+)", "R", "i", (\d+)\)', src)}
    svc = (ROOT / "firmware" / "evse" / "ocpp" / "service.py").read_text()
    buf = int(re.search(r"WsClient\(max_message=(\d+)", svc).group(1))
    mid = "x" * 36
    date = "2030-01-01T00:00:00.000000+00:00"
    info = {"status": "ConcurrentTx", "expiryDate": date, "parentIdTag": "P" * 20}
    entries = [{"idTag": "T" * 20, "idTagInfo": info}] * limit["SendLocalListMaxLength"]
    periods = [{"startPeriod": 86400 * 7, "limit": 32.5, "numberPhases": 3}] * limit[
        "ChargingScheduleMaxPeriods"]
    profile = {"chargingProfileId": 2147483647, "transactionId": 2147483647, "stackLevel": 99,
               "chargingProfilePurpose": "ChargePointMaxProfile",
               "chargingProfileKind": "Recurring", "recurrencyKind": "Weekly",
               "validFrom": date, "validTo": date,
               "chargingSchedule": {"duration": 604800, "startSchedule": date,
                                    "chargingRateUnit": "A", "minChargingRate": 6.0,
                                    "chargingSchedulePeriod": periods}}
    requests = [
        ("SendLocalList", {"listVersion": 2147483647, "updateType": "Differential",
                           "localAuthorizationList": entries}),
        ("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": profile}),
        ("RemoteStartTransaction", {"connectorId": 1, "idTag": "T" * 20,
                                    "chargingProfile": profile}),
        ("GetConfiguration", {"key": ["K" * 50] * limit["GetConfigurationMaxKeys"]}),
    ]
    for action, payload in requests:
        size = len(json.dumps([2, mid, action, payload]).encode())
        assert size <= buf, (action, size, buf)
