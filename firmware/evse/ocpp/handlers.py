# The central system's requests (OCPP 1.6 §5). Each handler gets the service, the message
# id and a payload already checked against its schema (schema.py), and returns
# (answer payload, after) where `after` is None or a coroutine function run once the
# answer is on the wire (TriggerMessage: "reply first, then send"). A semantic problem is
# the answer's status (Rejected, NotSupported, …); a broken value raises RpcError.
import asyncio
import json
import time

import log
from evse import charger as charger_mod
from evse import faults
from evse import socketlock
from evse.ocpp import VENDOR, isotime
from evse.ocpp import meterval
from evse.ocpp.authlist import apply_list
from evse.ocpp.rpc import RpcError

_log = log.get("ocpp.cs")


# The answer waits for the outcome (charger.UNLOCK_WORST_MS: the vehicle's time to stop
# drawing, the weld window, the lock's feedback with its retry) and a margin for a busy
# loop; 11.5 s, well inside a central system's call timeout (30 s in the `ocpp` package).
# Meanwhile the central system's next CALL waits (it should send none before this answer,
# OCPP-J §4.1.1); the charger's own messages and their answers go on.
_UNLOCK_WAIT_MS = charger_mod.UNLOCK_WORST_MS + 2000


def _status(s):
    return {"status": s}, None


async def change_availability(svc, mid, p):
    if p["connectorId"] not in (0, 1):
        return _status("Rejected")
    operative = p["type"] == "Operative"
    ch = svc.ch
    svc.store_errors.pop("ocpp_state.json", None)  # the central system has decided
    if ch.session is not None and not operative:
        svc.state["sched"] = "Inoperative"
        svc.save_state()
        return _status("Scheduled")
    svc.state.pop("sched", None)
    if ch.unavailable != (not operative):
        svc.set_available(operative)
    else:
        svc.save_state()
    return _status("Accepted")


async def change_configuration(svc, mid, p):
    from evse.ocpp import config

    row = config.setting_key(p["key"])
    if row is not None:  # a vendor key kept in the settings (ChargeMode)
        return _status(config.change_setting(svc.settings, row, p["value"]))
    return _status(svc.cfg.change(p["key"], p["value"]))


async def clear_cache(svc, mid, p):
    svc.cache.clear()
    svc.cache.save()
    return _status("Accepted")


async def clear_charging_profile(svc, mid, p):
    conn = p.get("connectorId")
    if conn is not None and conn not in (0, 1):
        return _status("Unknown")
    st = svc.smart.clear(p.get("id"), conn, p.get("chargingProfilePurpose"), p.get("stackLevel"))
    svc.kick()
    return _status(st)


async def data_transfer(svc, mid, p):
    if p["vendorId"] != VENDOR:
        return _status("UnknownVendorId")
    msg = p.get("messageId")
    if msg == "Status":
        return {"status": "Accepted", "data": json.dumps(svc.status_view())}, None
    if msg == "ChargeMode":
        # data: the mode to set (normal, solar, solar_min); without data: the mode in use.
        # Either way the answer's data is the mode in use.
        from evse.ocpp import config

        data = p.get("data")
        if data:
            st = config.change_setting(svc.settings, config.SETTING_KEYS[0], data)
            if st != "Accepted":
                return _status("Rejected")
        return {"status": "Accepted", "data": svc.settings["charge_mode"]}, None
    return _status("UnknownMessageId")


async def get_composite_schedule(svc, mid, p):
    conn = p["connectorId"]
    dur = p["duration"]
    if conn < 0 or dur < 0:
        raise RpcError("PropertyConstraintViolation", "connectorId and duration must not be negative", mid)
    if conn > 1 or dur == 0:
        return _status("Rejected")
    start, tx_id = svc.tx.tx_for_smart()
    sched = svc.smart.composite(conn, svc.now(), min(dur, 7 * 86400), p.get("chargingRateUnit", "A"),
                                float(svc.settings["max_current_a"]), start, tx_id)
    return {"status": "Accepted", "connectorId": conn, "scheduleStart": sched["startSchedule"],
            "chargingSchedule": sched}, None


async def get_configuration(svc, mid, p):
    keys = p.get("key")
    if keys and len(keys) > svc.cfg["GetConfigurationMaxKeys"]:
        raise RpcError("OccurenceConstraintViolation", "more keys than GetConfigurationMaxKeys", mid)
    known, unknown = svc.cfg.listing(keys, svc.settings)
    out = {"configurationKey": known}
    if unknown:
        out["unknownKey"] = unknown
    return out, None


async def get_diagnostics(svc, mid, p):
    from evse.ocpp import transfer

    name = transfer.diag_name(svc)
    svc.job("diagnostics", transfer.upload_diagnostics(svc, p, name))
    return {"fileName": name}, None


async def get_local_list_version(svc, mid, p):
    ll = svc.llist
    return {"listVersion": ll.version if len(ll) else 0}, None


async def remote_start(svc, mid, p):
    ch = svc.ch
    tag = p["idTag"]
    prof = p.get("chargingProfile")
    conn = p.get("connectorId", 1)
    refuse = None
    if conn != 1:
        refuse = "connector %d" % conn
    elif prof is not None and prof["chargingProfilePurpose"] != "TxProfile":
        refuse = "embedded profile is not a TxProfile"
    elif ch.session is not None:
        refuse = "a transaction is running"
    elif ch.auth_pending is not None and ch.auth_pending[0].upper() != tag.upper():
        refuse = "another id tag waits for the vehicle"
    elif ch.ocpp_status() in ("Faulted", "Unavailable"):
        refuse = "charger " + ch.ocpp_status()
    elif prof is not None and svc.smart.check(prof):
        refuse = "bad charging profile"
    if refuse is None:
        r = svc.auth.reservation()
        if r is not None and tag.upper() != r["tag"].upper() and not r.get("parent"):
            refuse = "reserved for another id tag"
    if refuse:
        _log.info("RemoteStartTransaction %s rejected: %s", tag, refuse)
        return _status("Rejected")

    async def after():
        src = None
        if svc.cfg["AuthorizeRemoteTxRequests"]:
            verdict, src = await svc.authorizer.ask(tag)
            if verdict != "Accepted":
                _log.info("remote start of %s not authorized (%s)", tag, verdict)
                return
        elif await svc.auth.reservation_verdict(tag) is not None:
            _log.info("remote start of %s refused: reserved", tag)
            return
        svc.tx.start_remote(tag, prof, src)

    return {"status": "Accepted"}, after


async def remote_stop(svc, mid, p):
    cur = svc.tx.cur
    if cur is None or svc.ch.session is None or cur["id"] != p["transactionId"]:
        return _status("Rejected")

    async def after():
        svc.tx.stop_session("Remote")

    return {"status": "Accepted"}, after


async def reserve_now(svc, mid, p):
    conn = p["connectorId"]
    if conn != 1:
        return _status("Rejected")  # ReserveConnectorZeroSupported is false
    exp = isotime.parse(p["expiryDate"])
    if exp <= svc.now():
        return _status("Rejected")
    st = svc.ch.ocpp_status()
    if st == "Faulted":
        return _status("Faulted")
    if st == "Unavailable":
        return _status("Unavailable")
    r = svc.auth.reservation()
    if r is not None and r["id"] != p["reservationId"]:
        return _status("Occupied")
    if r is None and (st != "Available" or svc.ch.session is not None):
        return _status("Occupied")
    svc.state["resv"] = {"id": p["reservationId"], "tag": p["idTag"], "parent": p.get("parentIdTag"), "exp": exp}
    svc.save_state()
    svc.kick()
    _log.info("reservation %d for %s until %s", p["reservationId"], p["idTag"], p["expiryDate"])
    return _status("Accepted")


async def cancel_reservation(svc, mid, p):
    r = svc.auth.reservation()
    if r is None or r["id"] != p["reservationId"]:
        return _status("Rejected")
    svc.auth.end_reservation()
    return _status("Accepted")


async def reset(svc, mid, p):
    async def after():
        svc.job("reset", svc.reset(p["type"] == "Hard"))

    return {"status": "Accepted"}, after


async def send_local_list(svc, mid, p):
    entries = p.get("localAuthorizationList") or []
    if len(entries) > svc.cfg["SendLocalListMaxLength"]:
        return _status("Failed")
    for e in entries:
        tag = e["idTag"]
        if not tag or any(ord(ch) < 32 for ch in tag):
            return _status("Failed")
    return _status(apply_list(svc.llist, p["updateType"], entries, p["listVersion"]))


async def set_charging_profile(svc, mid, p):
    tx = svc.tx.tx_for_smart()[1]
    st = svc.smart.install(p["connectorId"], p["csChargingProfiles"], tx, svc.now(), mid)
    svc.kick()
    return _status(st)


async def trigger_message(svc, mid, p):
    what = p["requestedMessage"]
    conn = p.get("connectorId")
    # Only StatusNotification and MeterValues are per connector: the others ignore it (§5.17).
    if what in ("StatusNotification", "MeterValues") and conn is not None and conn not in (0, 1):
        return _status("Rejected")

    async def after():
        if what == "BootNotification":
            await svc.boot()
        elif what == "Heartbeat":
            r = await svc.call("Heartbeat", {})
            svc._sync_clock(r.get("currentTime"))
        elif what == "StatusNotification":
            for c in (0, 1) if conn is None else (conn,):
                await svc.send_status(c)
        elif what == "MeterValues":
            # Connector 0 is the charger's main meter (the same one, with one connector),
            # reported without a transaction.
            main = conn == 0
            payload = {"connectorId": 0 if main else 1, "meterValue": [
                meterval.meter_value(svc, svc.cfg["MeterValuesSampledData"], "Trigger", svc.now())]}
            cur = svc.tx.cur
            if not main and cur is not None and cur["id"] is not None:
                payload["transactionId"] = cur["id"]
            await svc.call("MeterValues", payload)
        elif what == "DiagnosticsStatusNotification":
            await svc.call("DiagnosticsStatusNotification", {"status": svc.diag_status})
        else:
            await svc.call("FirmwareStatusNotification", {"status": svc.fw_status})

    return {"status": "Accepted"}, after


async def unlock_connector(svc, mid, p):
    ch = svc.ch
    if p["connectorId"] != 1 or not ch.case_b:
        return _status("NotSupported")
    svc.tx.stop_session("UnlockCommand")
    deadline = time.ticks_add(time.ticks_ms(), _UNLOCK_WAIT_MS)
    while time.ticks_diff(deadline, time.ticks_ms()) > 0:
        if ch.lock.state == socketlock.LOCK_OPEN and not svc.hw.lock.feedback():
            return _status("Unlocked")
        if ch.latched & faults.ELK or (ch.active | ch.latched) & (faults.R12 | faults.R3N):
            return _status("UnlockFailed")  # a broken lock, or a weld keeps it locked
        await asyncio.sleep_ms(50)
    return _status("UnlockFailed")


async def update_firmware(svc, mid, p):
    from evse import version
    from evse.ocpp import fwupdate

    fwupdate.create(svc, p, version.VERSION)
    svc.kick()
    return {}, None


# (action, the name of its handler in this module): a tuple of constants, in flash on a
# board (a dict of the functions would be built in the heap at import).
TABLE = (
    ("CancelReservation", "cancel_reservation"),
    ("ChangeAvailability", "change_availability"),
    ("ChangeConfiguration", "change_configuration"),
    ("ClearCache", "clear_cache"),
    ("ClearChargingProfile", "clear_charging_profile"),
    ("DataTransfer", "data_transfer"),
    ("GetCompositeSchedule", "get_composite_schedule"),
    ("GetConfiguration", "get_configuration"),
    ("GetDiagnostics", "get_diagnostics"),
    ("GetLocalListVersion", "get_local_list_version"),
    ("RemoteStartTransaction", "remote_start"),
    ("RemoteStopTransaction", "remote_stop"),
    ("ReserveNow", "reserve_now"),
    ("Reset", "reset"),
    ("SendLocalList", "send_local_list"),
    ("SetChargingProfile", "set_charging_profile"),
    ("TriggerMessage", "trigger_message"),
    ("UnlockConnector", "unlock_connector"),
    ("UpdateFirmware", "update_firmware"),
)
