"""OCPP 1.6J end to end against the `ocpp` package as the central system (tests/csms.py):
boot, heartbeat, status, authorization and transactions with cards and remotely, the
configuration keys, availability, reset, unlock, trigger, data transfer, local list,
diagnostics and firmware requests.

They run on the 32-bit interpreter with the firmware frozen (conftest.on_mcu): the OCPP
client's buffers and messages in a board's heap."""

import json
import time

import csms
import pytest
from csms import wait_ocpp, wait_status

pytestmark = pytest.mark.usefixtures("on_mcu")

A = "04A1B2C3"  # learned card
B = "04D5E6F7"  # refused by the central system
C = "04112233"  # accepted by the central system, not learned
WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware


def beeps(c, since):
    return [e for e in c.events(since) if e["what"] == "buzzer"]


def tap(c, uid):
    return c.tap(uid)


def plug(c, state="C"):
    c.sim("ev", state="B", diode=True, max_a=16)
    c.wait_for(lambda s: s["cp_state"] == "B", WAIT_S)
    if state == "C":
        c.sim("ev", state="C", diode=True, max_a=16)


def unplug(c):
    c.sim("ev", state="A")
    c.wait_for(lambda s: s["cp_state"] == "A" and not s["session"]["active"], WAIT_S)


def change(cs, key, value, cp="CP1"):
    return cs.call(cp, "ChangeConfiguration", key=key, value=str(value))["status"]


def test_boot_pending_then_accepted_heartbeat_and_clock(cs, ocpp):
    cs.boot_status = "Pending"
    cs.boot_interval = 2
    c = ocpp(wait_boot=False)
    cs.wait_for(lambda: cs.calls("CP1", "BootNotification"), 15, "first boot")
    # Pending: requests are answered, remote control is refused, nothing else is sent.
    assert cs.call("CP1", "GetConfiguration", key=["NumberOfConnectors"])["configurationKey"] == [
        {"key": "NumberOfConnectors", "readonly": True, "value": "1"}
    ]
    assert cs.call("CP1", "RemoteStartTransaction", idTag=C)["status"] == "Rejected"
    cs.wait_for(lambda: len(cs.calls("CP1", "BootNotification")) >= 2, 10, "boot retried")
    assert {a for _, a, _ in cs.calls("CP1")} == {"BootNotification"}
    boot = cs.payloads("CP1", "BootNotification")[0]
    assert boot["chargePointVendor"] == "Cabur" and boot["chargePointModel"] == "EV PLUS 22kW"
    assert boot["chargePointSerialNumber"] == "EVPLUS-SIM-00001" and boot["firmwareVersion"]
    cs.boot_status = "Accepted"
    cs.heartbeat_interval = 1
    wait_status(cs, "CP1", 1, "Available")
    wait_status(cs, "CP1", 0, "Available")
    first = [a for _, a, _ in cs.calls("CP1")]
    assert first[-3:] == ["BootNotification", "StatusNotification", "StatusNotification"]
    cs.wait_for(lambda: len(cs.calls("CP1", "Heartbeat")) >= 2, WAIT_S, "heartbeats every second")
    assert (
        cs.call("CP1", "GetConfiguration", key=["HeartbeatInterval"])["configurationKey"][0][
            "value"
        ]
        == "1"
    )
    # Clock: put the charger an hour off, a heartbeat brings it back.
    assert c.http("POST", "/api/login", json={"password": c.password}).status == 200
    assert c.http("PUT", "/api/time", json={"epoch_s": int(time.time()) - 3600}).status == 200
    cs.wait_for(
        lambda: abs(c.http("GET", "/api/status").body["system_time"] - time.time()) < 5,
        WAIT_S,
        "clock synchronised",
    )
    assert c.http("GET", "/api/status").body["ocpp"]["registration"] == "Accepted"


def test_unanswered_boot_times_out_and_reconnects(cs, ocpp):
    cs.drop = {"BootNotification"}
    ocpp(
        wait_boot=False,
        config={"MessageTimeout": 1, "RetryBackOffWaitMinimum": 1, "RetryBackOffRandomRange": 0},
    )
    cs.wait_for(lambda: len(cs.calls("CP1", "BootNotification")) >= 2, 15, "boot sent again")
    assert len(cs.connections) >= 2, "no answer within MessageTimeout: a new connection"
    cs.drop = set()
    wait_status(cs, "CP1", 1, "Available")


def test_boot_rejected_is_silent_until_the_interval(cs, ocpp):
    cs.boot_status = "Rejected"
    cs.boot_interval = 3
    ocpp(wait_boot=False)
    cs.wait_for(lambda: cs.calls("CP1", "BootNotification"), 15, "boot")
    mark = cs.mark()
    cs.send_raw("CP1", json.dumps([2, "q1", "GetConfiguration", {}]))
    time.sleep(1.0)
    assert not cs.replies("CP1"), "a rejected charge point does not answer"
    cs.boot_status = "Accepted"
    cs.wait_for(lambda: cs.calls("CP1", "BootNotification", since=mark), 3 + WAIT_S,
                "second boot")
    assert [a for _, a, _ in cs.calls("CP1")][:2] == ["BootNotification", "BootNotification"]
    # The interval runs from the Rejected answer, which the central system sent after it
    # took the first boot in and before it took the second: the times it took them in
    # hold the firmware's wait, give or take a few ms (its ms ticks, a wall clock's slew).
    boots = [f["t"] for f in cs.frames if f["dir"] == "in" and isinstance(f["msg"], list)
             and f["msg"][:1] == [2] and f["msg"][2:3] == ["BootNotification"]]
    assert boots[1] - boots[0] >= cs.boot_interval - 0.01, boots
    wait_status(cs, "CP1", 1, "Available")


def test_cards_authorize_start_meter_values_stop(cs, ocpp):
    cs.tags = {B: "Invalid"}
    c = ocpp(cards=[A])
    for k, v in (
        ("MeterValueSampleInterval", 1),
        (
            "MeterValuesSampledData",
            "Energy.Active.Import.Register,Power.Active.Import,"
            "Current.Import,Voltage,Current.Offered,Power.Offered,Frequency,Temperature",
        ),
    ):
        assert change(cs, k, v) == "Accepted"
    plug(c, "B")
    wait_status(cs, "CP1", 1, "Preparing")
    t = tap(c, B)
    c.wait_for(lambda s: len(beeps(c, t)) >= 2, WAIT_S)
    assert [p["idTag"] for p in cs.payloads("CP1", "Authorize")] == [B]
    assert not cs.calls("CP1", "StartTransaction")
    time.sleep(0.5)
    tap(c, A)  # learned card: no Authorize round trip
    c.wait_for(lambda s: s["session"]["active"], WAIT_S)
    c.sim("ev", state="C", diode=True, max_a=16)
    start = cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction"), WAIT_S)[0]
    assert (
        start["idTag"] == A and start["connectorId"] == 1 and isinstance(start["meterStart"], int)
    )
    assert [p["idTag"] for p in cs.payloads("CP1", "Authorize")] == [B]
    wait_status(cs, "CP1", 1, "Charging")
    mv = cs.wait_for(lambda: cs.payloads("CP1", "MeterValues")[2:], 10, "meter values")[-1]
    assert mv["transactionId"] == 1 and mv["connectorId"] == 1
    sv = mv["meterValue"][0]["sampledValue"]
    got = {(v["measurand"], v.get("phase"), v.get("unit")) for v in sv}
    assert {
        ("Energy.Active.Import.Register", None, "Wh"),
        ("Power.Active.Import", None, "W"),
        ("Current.Import", "L1", "A"),
        ("Current.Import", "L3", "A"),
        ("Voltage", "L1-N", "V"),
        ("Current.Offered", None, "A"),
        ("Power.Offered", None, "W"),
        ("Frequency", None, None),
        ("Temperature", None, "Celsius"),
    } <= got
    assert all(v["context"] == "Sample.Periodic" and isinstance(v["value"], str) for v in sv)
    offered = next(float(v["value"]) for v in sv if v["measurand"] == "Current.Offered")
    assert offered == 32.0  # the configured maximum; the vehicle takes 16 A of it
    time.sleep(3.2)  # the same card counts again only after 3 s off the reader
    t = tap(c, A)
    stop = cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction"), WAIT_S)[0]
    assert stop["transactionId"] == 1 and stop["reason"] == "Local" and stop["idTag"] == A
    assert stop["meterStop"] >= start["meterStart"]
    wait_status(cs, "CP1", 1, "Finishing")
    unplug(c)
    wait_status(cs, "CP1", 1, "Available")
    # A card only the central system knows, then the vehicle leaves.
    plug(c)
    tap(c, C)
    c.wait_for(lambda s: s["session"]["active"], WAIT_S)
    assert [p["idTag"] for p in cs.payloads("CP1", "Authorize")] == [B, C]
    cs.wait_for(lambda: len(cs.payloads("CP1", "StartTransaction")) == 2, WAIT_S)
    unplug(c)
    stop = cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction")[1:], WAIT_S)[0]
    assert stop["reason"] == "EVDisconnected" and stop["transactionId"] == 2 and "idTag" not in stop
    assert not [r for r in cs.frames if r["dir"] == "out" and r["msg"] and r["msg"][0] == 4], (
        "the central system found nothing to refuse"
    )


def test_faults_and_reader_failure_in_status(cs, ocpp):
    c = ocpp()
    mark = cs.mark()
    c.sim("fault", name="cp_short", active=True)
    st = wait_status(cs, "CP1", 1, "Faulted", since=mark)
    assert st["errorCode"] == "EVCommunicationError" and st["vendorErrorCode"] == "CP"
    assert st["info"] == "CP voltage fault"
    assert wait_status(cs, "CP1", 0, "Faulted", since=mark)["errorCode"] == "EVCommunicationError"
    c.sim("fault", name="cp_short", active=False)
    wait_status(cs, "CP1", 1, "Available", since=mark)
    report = cs.wait_for(lambda: cs.payloads("CP1", "DataTransfer"), WAIT_S)[0]
    assert report["vendorId"] == "Cabur" and report["messageId"] == "FaultReport"
    assert json.loads(report["data"])["code"] == "CP"
    c.sim("fault", name="rfid_reader", active=True)
    cs.wait_for(
        lambda: any(
            p["errorCode"] == "ReaderFailure" and p["status"] == "Available"
            for p in cs.payloads("CP1", "StatusNotification", mark)
        ),
        20,
        "ReaderFailure as a warning",
    )


def test_remote_start_stop_and_authorize_remote(cs, ocpp):
    c = ocpp()
    assert cs.call("CP1", "RemoteStartTransaction", idTag=C, connectorId=2)["status"] == "Rejected"
    assert cs.call("CP1", "RemoteStartTransaction", idTag=C)["status"] == "Accepted"
    time.sleep(0.5)
    assert not c.snapshot()["session"]["active"], "waits for the vehicle"
    plug(c)
    c.wait_for(lambda s: s["session"]["active"] and s["session"]["start_mode"] == "OCPP", WAIT_S)
    start = cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction"), WAIT_S)[0]
    assert start["idTag"] == C and not cs.calls("CP1", "Authorize")
    wait_ocpp(c, lambda o: o["transaction_id"] == 1, WAIT_S)
    assert cs.call("CP1", "RemoteStartTransaction", idTag=C)["status"] == "Rejected"
    assert cs.call("CP1", "RemoteStopTransaction", transactionId=99)["status"] == "Rejected"
    assert cs.call("CP1", "RemoteStopTransaction", transactionId=1)["status"] == "Accepted"
    stop = cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction"), WAIT_S)[0]
    assert stop["reason"] == "Remote" and stop["transactionId"] == 1
    unplug(c)
    # Transaction data and clock-aligned values; a tag the central system refuses in its
    # StartTransaction answer stops the charge (StopTransactionOnInvalidId).
    for k, v in (
        ("StopTxnSampledData", "Energy.Active.Import.Register"),
        ("ClockAlignedDataInterval", 1),
    ):
        assert change(cs, k, v) == "Accepted"
    cs.tags = {B: "Blocked"}
    plug(c)
    assert cs.call("CP1", "RemoteStartTransaction", idTag=B)["status"] == "Accepted"
    stop = cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction")[1:], WAIT_S)[0]
    assert stop["reason"] == "DeAuthorized" and stop["transactionId"] == 2
    assert [d["sampledValue"][0]["context"] for d in stop["transactionData"]] == [
        "Transaction.Begin",
        "Transaction.End",
    ]
    assert change(cs, "StopTransactionOnInvalidId", "false") == "Accepted"
    unplug(c)
    plug(c)
    assert cs.call("CP1", "RemoteStartTransaction", idTag=B)["status"] == "Accepted"
    cs.wait_for(lambda: len(cs.payloads("CP1", "StartTransaction")) == 3, WAIT_S)
    s = c.wait_for(lambda s: s["state"] == "SuspendedEVSE" and s["limit_binding"] == "ocpp", WAIT_S)
    assert s["session"]["active"] and s["offered_a"] == 0, (
        "no energy after MaxEnergyOnInvalidId (0)"
    )
    cs.wait_for(
        lambda: [
            p
            for p in cs.payloads("CP1", "MeterValues")
            if p.get("transactionId") == 3
            and p["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"
        ],
        WAIT_S,
        "clock-aligned values of the transaction",
    )
    assert change(cs, "ClockAlignedDataInterval", 0) == "Accepted"
    unplug(c)
    # AuthorizeRemoteTxRequests: the tag is authorized like a local one first.
    assert change(cs, "AuthorizeRemoteTxRequests", "true") == "Accepted"
    plug(c)
    assert cs.call("CP1", "RemoteStartTransaction", idTag=B)["status"] == "Accepted"
    cs.wait_for(lambda: cs.payloads("CP1", "Authorize"), WAIT_S)
    time.sleep(0.5)
    assert not c.snapshot()["session"]["active"]
    assert len(cs.payloads("CP1", "StartTransaction")) == 3


def test_configuration_keys(cs, ocpp):
    cs.heartbeat_interval = 200000  # over the key's range: kept as its largest, a day
    c = ocpp()
    keys = cs.call("CP1", "GetConfiguration")["configurationKey"]
    by = {k["key"]: k for k in keys}
    assert by["HeartbeatInterval"]["value"] == "86400", by["HeartbeatInterval"]
    for name, ro in (
        ("HeartbeatInterval", False),
        ("NumberOfConnectors", True),
        ("SupportedFeatureProfiles", True),
        ("LocalAuthListEnabled", False),
        ("ChargeProfileMaxStackLevel", True),
        ("ReserveConnectorZeroSupported", True),
        ("TransactionMessageAttempts", False),
        ("SecurityProfile", False),
        ("AuthorizationKey", False),
        ("MeterValuesSampledDataMaxLength", True),
    ):
        assert by[name]["readonly"] is ro, name
    assert "value" not in by["AuthorizationKey"]
    assert set(by["SupportedFeatureProfiles"]["value"].split(",")) == {
        "Core",
        "FirmwareManagement",
        "LocalAuthListManagement",
        "Reservation",
        "SmartCharging",
        "RemoteTrigger",
    }
    assert by["UnlockConnectorOnEVSideDisconnect"]["value"] == "true"
    assert change(cs, "NumberOfConnectors", 2) == "Rejected"
    assert change(cs, "NoSuchKey", 1) == "NotSupported"
    assert change(cs, "HeartbeatInterval", "soon") == "Rejected"
    assert change(cs, "MeterValuesSampledData", "SoC") == "Rejected"
    assert change(cs, "SecurityProfile", 1) == "Rejected"  # no AuthorizationKey yet
    assert change(cs, "ConnectionTimeOut", 45) == "Accepted"
    got = cs.call("CP1", "GetConfiguration", key=["connectiontimeout", "Nope"])
    assert got == {
        "configurationKey": [{"key": "ConnectionTimeOut", "readonly": False, "value": "45"}],
        "unknownKey": ["Nope"],
    }
    # ChargeMode: a vendor key kept in the charger's settings (charge_mode), also set by a
    # DataTransfer (docs/ocpp.md).
    assert by["ChargeMode"] == {"key": "ChargeMode", "readonly": False, "value": "normal"}
    assert change(cs, "ChargeMode", "turbo") == "Rejected"
    assert change(cs, "chargemode", "solar_min") == "Accepted"
    c.wait_for(lambda s: (s["solar"] or {}).get("mode") == "solar_min", WAIT_S)
    got = cs.call("CP1", "GetConfiguration", key=["ChargeMode"])["configurationKey"]
    assert got == [{"key": "ChargeMode", "readonly": False, "value": "solar_min"}]
    dt = cs.call("CP1", "DataTransfer", vendorId="Cabur", messageId="ChargeMode")
    assert dt == {"status": "Accepted", "data": "solar_min"}
    dt = cs.call("CP1", "DataTransfer", vendorId="Cabur", messageId="ChargeMode", data="normal")
    assert dt == {"status": "Accepted", "data": "normal"}
    dt = cs.call("CP1", "DataTransfer", vendorId="Cabur", messageId="ChargeMode", data="x")
    assert dt["status"] == "Rejected"
    c.wait_for(lambda s: s["solar"] is None, WAIT_S)
    # CapacityTariffLimit: the capacity tariff's limit (tariff_limit_w, W; 0: off).
    assert by["CapacityTariffLimit"]["value"] == "0"
    for bad in ("4.5", "-1", "999", "400001", "4 kW", "", "1" * 12):
        assert change(cs, "CapacityTariffLimit", bad) == "Rejected", bad
    assert change(cs, "CapacityTariffLimit", "4500") == "Accepted"
    c.wait_for(lambda s: (s["tariff"] or {}).get("limit_w") == 4500, WAIT_S)
    assert change(cs, "CapacityTariffLimit", "0") == "Accepted"
    c.wait_for(lambda s: s["tariff"] is None, WAIT_S)


def test_reset_soft_and_hard_stop_the_transaction_first(cs, ocpp):
    c = ocpp(cards=[A])
    plug(c)
    tap(c, A)
    cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction"), WAIT_S)
    assert cs.call("CP1", "Reset", type="Soft")["status"] == "Accepted"
    assert c.wait_exit(15) == 3
    stop = cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction"), WAIT_S)[0]
    assert stop["reason"] == "SoftReset"
    mark = cs.mark()
    c.start()
    wait_status(cs, "CP1", 1, since=mark, timeout=20)
    assert cs.calls("CP1", "BootNotification", since=mark)
    plug(c)
    tap(c, A)
    cs.wait_for(lambda: len(cs.payloads("CP1", "StartTransaction")) == 2, WAIT_S)
    assert cs.call("CP1", "Reset", type="Hard")["status"] == "Accepted"
    assert c.wait_exit(15) == 3
    c.start()
    stop = cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction")[1:], 20)[0]
    assert stop["reason"] == "HardReset" and stop["transactionId"] == 2


def test_availability_unlock_cache_local_list(cs, ocpp):
    c = ocpp(cards=[A])
    assert (
        cs.call("CP1", "ChangeAvailability", connectorId=2, type="Inoperative")["status"]
        == "Rejected"
    )
    assert (
        cs.call("CP1", "ChangeAvailability", connectorId=0, type="Inoperative")["status"]
        == "Accepted"
    )
    wait_status(cs, "CP1", 1, "Unavailable")
    wait_status(cs, "CP1", 0, "Unavailable")
    mark = cs.mark()
    c.restart()
    assert wait_status(cs, "CP1", 1, since=mark, timeout=20)["status"] == "Unavailable", "persists"
    plug(c)
    tap(c, A)
    time.sleep(1)
    assert not c.snapshot()["session"]["active"], "no charge while Inoperative"
    assert (
        cs.call("CP1", "ChangeAvailability", connectorId=1, type="Operative")["status"]
        == "Accepted"
    )
    wait_status(cs, "CP1", 1, "Preparing")
    time.sleep(2.5)
    tap(c, A)
    cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction"), WAIT_S)
    assert (
        cs.call("CP1", "ChangeAvailability", connectorId=0, type="Inoperative")["status"]
        == "Scheduled"
    )
    # UnlockConnector ends the transaction and releases the plug.
    assert cs.call("CP1", "UnlockConnector", connectorId=2)["status"] == "NotSupported"
    assert cs.call("CP1", "UnlockConnector", connectorId=1)["status"] == "Unlocked"
    stop = cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction"), WAIT_S)[0]
    assert stop["reason"] == "UnlockCommand"
    assert c.snapshot()["lock"] == "unlocked"
    wait_status(cs, "CP1", 1, "Unavailable")  # the scheduled change, after the transaction
    assert (
        cs.call("CP1", "ChangeAvailability", connectorId=0, type="Operative")["status"]
        == "Accepted"
    )
    assert cs.call("CP1", "ClearCache")["status"] == "Accepted"
    assert cs.call("CP1", "GetLocalListVersion") == {"listVersion": 0}
    entries = [
        {"idTag": "LIST1", "idTagInfo": {"status": "Accepted"}},
        {"idTag": "LIST2", "idTagInfo": {"status": "Blocked"}},
    ]
    assert (
        cs.call(
            "CP1", "SendLocalList", listVersion=3, updateType="Full", localAuthorizationList=entries
        )["status"]
        == "Accepted"
    )
    assert cs.call("CP1", "GetLocalListVersion") == {"listVersion": 3}
    assert (
        cs.call(
            "CP1",
            "SendLocalList",
            listVersion=3,
            updateType="Differential",
            localAuthorizationList=[],
        )["status"]
        == "VersionMismatch"
    )
    assert (
        cs.call(
            "CP1",
            "SendLocalList",
            listVersion=4,
            updateType="Differential",
            localAuthorizationList=[{"idTag": "LIST2"}],
        )["status"]
        == "Accepted"
    )
    too_many = [{"idTag": f"T{i}", "idTagInfo": {"status": "Accepted"}} for i in range(21)]
    assert (
        cs.call(
            "CP1",
            "SendLocalList",
            listVersion=5,
            updateType="Full",
            localAuthorizationList=too_many,
        )["status"]
        == "Failed"
    )
    assert cs.call("CP1", "GetLocalListVersion") == {"listVersion": 4}


def test_trigger_data_transfer_diagnostics_firmware(cs, ocpp):
    c = ocpp()
    assert (
        cs.call("CP1", "TriggerMessage", requestedMessage="StatusNotification", connectorId=3)[
            "status"
        ]
        == "Rejected"
    )
    for what in (
        "BootNotification",
        "Heartbeat",
        "StatusNotification",
        "MeterValues",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
    ):
        mark = cs.mark()
        assert cs.call("CP1", "TriggerMessage", requestedMessage=what)["status"] == "Accepted"
        cs.wait_for(lambda w=what, m=mark: cs.calls("CP1", w, since=m), WAIT_S, what)
    assert cs.payloads("CP1", "DiagnosticsStatusNotification")[-1] == {"status": "Idle"}
    assert cs.payloads("CP1", "FirmwareStatusNotification")[-1] == {"status": "Idle"}
    mv = cs.payloads("CP1", "MeterValues")[-1]["meterValue"][0]["sampledValue"][0]
    assert mv["context"] == "Trigger"
    assert cs.call("CP1", "DataTransfer", vendorId="Other")["status"] == "UnknownVendorId"
    assert (
        cs.call("CP1", "DataTransfer", vendorId="Cabur", messageId="Nope")["status"]
        == "UnknownMessageId"
    )
    r = cs.call("CP1", "DataTransfer", vendorId="Cabur", messageId="Status")
    data = json.loads(r["data"])
    assert r["status"] == "Accepted" and data["state"] == "Available"
    # The charger's own status view (GET /api/status), not the simulator's snapshot.
    assert data["software_version"] and data["serial"] == "EVPLUS-SIM-00001"
    assert "restarts" not in data and "card_read_waiting" not in data
    # A fault to have a record (its report comes as a DataTransfer), then the upload.
    c.sim("fault", name="cp_short", active=True)
    cs.wait_for(lambda: cs.payloads("CP1", "DataTransfer"), WAIT_S, "fault report")
    c.sim("fault", name="cp_short", active=False)
    r = cs.call("CP1", "GetDiagnostics", location=cs.upload_url())
    assert r["fileName"].startswith("diag-EVPLUS-SIM-00001")
    cs.wait_for(
        lambda: (
            [p["status"] for p in cs.payloads("CP1", "DiagnosticsStatusNotification")][-2:]
            == ["Uploading", "Uploaded"]
        ),
        10,
        "upload",
    )
    up = cs.uploads[0]
    assert up["path"] == "/upload/" + r["fileName"]
    lines = [json.loads(x) for x in up["body"].decode().splitlines()]
    assert lines[0]["serial"] == "EVPLUS-SIM-00001"
    assert any(x.get("kind") == "fault" and x["code"] == "CP" for x in lines)
    assert cs.call("CP1", "GetDiagnostics", location="http://127.0.0.1:1/none", retries=0)[
        "fileName"
    ]
    cs.wait_for(
        lambda: cs.payloads("CP1", "DiagnosticsStatusNotification")[-1]["status"] == "UploadFailed",
        10,
        "failed upload reported",
    )
    # UpdateFirmware goes to the installer; a location nobody serves ends in DownloadFailed
    # (https://: without a signing key http:// is refused before Downloading).
    mark = cs.mark()
    ans = cs.call(
        "CP1",
        "UpdateFirmware",
        location="https://127.0.0.1:1/fw.bin",
        retrieveDate="2020-01-01T00:00:00Z",
        retries=0,
    )
    assert ans == {}
    cs.wait_for(
        lambda: (
            [p["status"] for p in cs.payloads("CP1", "FirmwareStatusNotification", mark)][-1:]
            == ["DownloadFailed"]
        ),
        10,
        "DownloadFailed",
    )
    assert cs.payloads("CP1", "FirmwareStatusNotification", mark)[0]["status"] == "Downloading"
    ans = cs.call_raw("CP1", "FooBar", {})
    assert ans[0] == 4 and ans[2] == "NotImplemented"


def test_pending_then_triggered_boot_accepted_starts_at_once(cs, ocpp):
    cs.boot_status = "Pending"
    # A week: past the 2**29 ms a 32-bit port's ticks can add (the interval has no
    # upper bound in OCPP), and long after the test.
    cs.boot_interval = 7 * 86400
    c = ocpp(cards=[A], wait_boot=False)
    cs.wait_for(lambda: cs.calls("CP1", "BootNotification"), WAIT_S, "first boot")
    plug(c, "B")
    tap(c, A)  # a learned card charges while the registration is Pending
    c.wait_for(lambda s: s["session"]["active"], WAIT_S)
    c.sim("ev", state="C", diode=True, max_a=16)
    time.sleep(1.0)
    assert {a for _, a, _ in cs.calls("CP1")} == {"BootNotification"}
    snap = c.snapshot()
    assert snap["restarts"] == {} and snap["session"]["active"], snap["restarts"]
    cs.boot_status = "Accepted"
    cs.heartbeat_interval = 1
    mark = cs.mark()
    assert cs.call("CP1", "TriggerMessage", requestedMessage="BootNotification")["status"] == (
        "Accepted")
    t0 = time.monotonic()
    wait_status(cs, "CP1", 0, "Available", timeout=5, since=mark)
    wait_status(cs, "CP1", 1, timeout=5, since=mark)
    cs.wait_for(lambda: cs.calls("CP1", "StartTransaction", mark), 5, "queued start")
    cs.wait_for(lambda: cs.calls("CP1", "Heartbeat", mark), 5, "heartbeats")
    assert time.monotonic() - t0 < 5
    assert ocpp_registration(c) == "Accepted"


def ocpp_registration(c):
    return c.http("GET", "/api/status").body["ocpp"]["registration"]


def test_callerror_to_heartbeat_keeps_the_connection(cs, ocpp, monkeypatch):
    cs.heartbeat_interval = 1
    cs.fail = {"Heartbeat"}
    c = ocpp()
    cs.wait_for(lambda: len(cs.calls("CP1", "Heartbeat")) >= 3, WAIT_S, "heartbeats go on")
    assert len(cs.connections) == 1, "a refused Heartbeat is an answer: the link stays"
    # A time the clock cannot take (before 1970 here; past 2068 for a board's gmtime)
    # is not set, and kills no task (each death is a safe state: a charge would end).
    monkeypatch.setattr(csms, "now_iso", lambda: "1969-12-31T23:59:00Z")
    cs.fail = set()
    n = len(cs.calls("CP1", "Heartbeat"))
    cs.wait_for(lambda: len(cs.calls("CP1", "Heartbeat")) >= n + 2, WAIT_S, "heartbeats go on")
    assert c.snapshot()["restarts"] == {}
    assert c.http("GET", "/api/status").body["system_time"] > 1.6e9
    assert change(cs, "MeterValueSampleInterval", 30) == "Accepted"
    assert len(cs.calls("CP1", "BootNotification")) == 1
