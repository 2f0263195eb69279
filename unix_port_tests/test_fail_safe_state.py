# What the charger does with stored state it cannot use (settings.json, latched.json):
# the safe value, never a more permissive one, and an error the driver, the web app and
# the technician see. The whole application on the unix_sim board.
import asyncio
import json
import os

import board
import check
import log
from check import eq, true


def _port():
    b = os.urandom(2)
    return 20000 + ((b[0] << 8 | b[1]) % 9000)


def _app(files):
    """The application booted on a data directory holding `files` (name -> text)."""
    d = check.tmpdir("failsafe")
    for name, text in files.items():
        with open(d + "/" + name, "w") as f:
            f.write(text)
    return _boot_on(d)


def _shown(app, ms=7000):
    """Every text the display showed over `ms` of HMI ticks."""
    seen = set()
    for t in range(0, ms, 100):
        app.hmi.tick(10_000 + t)
        seen.add(app.hw.display.text)
    return seen


def _report(app):
    """The Report page's data (GET /api/faults), as JSON."""
    from evse.api import Api

    api = Api(app.hw, app.data_dir, app.settings, app.charger, app.protection, app.history,
              app.auth, app.cards, app.rfid, app.ota, app.status, app.errors)
    r = asyncio.run(api.faults(_Req()))
    asyncio.new_event_loop()
    return {"active": r["active"], "latched": r["latched"],
            "faults": list(r["faults"].items(True))}


class _Req:
    query = {}


def test_an_invalid_house_limit_is_safe_and_shown_everywhere():
    """max_house_current_a that cannot be used: 6 A (the minimum), not the default (Max Current),
    and a configuration error on the display, in /api/status and on the Report page."""
    app = _app({"settings.json": '{"max_house_current_a": "32 A", "auth_mode": "free"}'})
    eq(app.settings["max_house_current_a"], 6, "the safe value")
    st = app.status()
    true("CFG" in st["errors"], "status errors %r" % st["errors"])
    true("max_house_current_a" in st["config_errors"], "status names the setting")
    eq(json.loads(json.dumps(st))["config_errors"], st["config_errors"], "JSON")
    true("CFG" in app.sim_status()["errors"], "simulator snapshot errors")
    true("CONFIG ERROR" in _shown(app), "display")
    rep = _report(app)
    true("CFG" in rep["active"], "Report page: active %r" % rep["active"])
    recs = [f for f in rep["faults"] if f["code"] == "CFG"]
    eq(len(recs), 1, "one record of it")
    true("max_house_current_a" in json.dumps(recs[0]["values"]), "the record names it")
    true(recs[0].get("description"), "described")
    eq(app.charger.ocpp_status(), "Available", "charging is not refused: the limit is safe")

    # Saving the setting clears the error everywhere.
    eq(app.settings.apply({"max_house_current_a": 32}), {})
    eq(app.status()["errors"], [], "cleared")
    true("CFG" not in _report(app)["active"], "cleared on the Report page")
    true("CONFIG ERROR" not in _shown(app), "cleared on the display")


def test_an_invalid_meter_or_pool_setting_keeps_the_charger_at_its_minimum():
    """meter_model or lb_enabled that cannot be used falls back to its default, which
    switches power management or load balancing off: the limit it kept is unknown, so the
    charger offers 6 A until the setting is saved again."""
    for bad in ('"meter_model": "SDM999"', '"lb_enabled": "yes"'):
        app = _app({"settings.json": '{%s, "auth_mode": "free"}' % bad})
        true("CFG" in app.status()["errors"], bad)
        eq(app.charger.external.get("config"), 6.0, "the minimum while " + bad)
        key = bad.split('"')[1]
        eq(app.settings.apply({key: app.settings[key]}), {})
        eq(app.charger.external.get("config"), None, "lifted once saved: " + bad)


def test_an_unusable_pool_id_or_meter_address_keeps_the_charger_at_6a():
    """lb_pool_id and meter_addr name which pool and which meter limit the charger; their
    default (1) may be another pool or another bus device, so an unusable value holds the
    charger at 6 A like the other limiter settings."""
    for key, bad in (("lb_pool_id", '"x"'), ("lb_pool_id", "0"), ("meter_addr", "0"),
                     ("meter_addr", "248")):
        app = _app({"settings.json": '{"lb_enabled": true, "meter_model": "SDM630", '
                    '"auth_mode": "free", "%s": %s}' % (key, bad)})
        true(key in app.settings.invalid, key + " flagged")
        eq(app.charger.external.get("config"), 6.0, "%s=%s: the config limit" % (key, bad))
        eq(app.settings.apply({key: 2}), {})
        eq(app.charger.external.get("config"), None, "lifted once saved: " + key)


def test_good_settings_show_no_configuration_error():
    app = _app({"settings.json": '{"max_house_current_a": 32.0, "auth_mode": "free"}'})
    eq(app.settings["max_house_current_a"], 32, "32.0 is a whole number")
    eq((app.status()["errors"], app.status()["config_errors"]), ([], {}), "no error")
    true("CONFIG ERROR" not in _shown(app), "display")


def _boot_on(d):
    hw = board.make({"EVSE_DATA_DIR": d, "EVSE_CAN_PORT": str(_port()),
                     "EVSE_SIM_PORT": str(_port())})
    from evse.app import App

    log.set_level(log.ERROR + 10)
    try:
        return App(hw)
    finally:
        log.set_level(log.WARNING)


def test_an_unreadable_latch_record_keeps_the_charger_faulted_until_cleared():
    """latched.json that cannot be read (torn, corrupt, wrong types) must not drop the
    latched trips it held: the charger stays faulted (ERR LAT, relays open, no session)
    until a technician clears it, and a restart does not clear it either."""
    import atomicfile
    from evse import pilot

    good = atomicfile.encode_json({"latched": ["PE"]}).decode()
    cases = {
        "torn": good[:-3],
        "bad crc": good.replace("PE", "IR"),
        "not JSON": "\x00\xff garbage",
        "a list": '["PE"]',
        "codes not a list": '{"latched": "PE"}',
        "a number for a code": '{"latched": [4]}',
        "an unknown code": '{"latched": ["PE", "XYZ"]}',
        "a code that does not latch": '{"latched": ["OCP"]}',
        "empty": "",
    }
    for what, text in cases.items():
        app = _app({"latched.json": text, "settings.json": '{"auth_mode": "free"}'})
        ch = app.charger
        true("LAT" in app.errors(), "%s: errors %r" % (what, app.errors()))
        eq(ch.ocpp_status(), "Faulted", what)
        true(not app.hw.relays.closed and app.hw.cp.duty_pm == -2, "%s: relays open, F" % what)
        app.protection.tick(1000)  # records what is new
        true("ERR LAT" in _shown(app), "%s: display" % what)
        rep = _report(app)
        true("LAT" in rep["latched"], "%s: Report page latched %r" % (what, rep["latched"]))
        eq([f["code"] for f in rep["faults"]], ["LAT"], "%s: one fault record" % what)
        ch.cp_state = pilot.STATE_B  # a vehicle plugged in: still no session
        true(ch.start_session("04A1B2C3", "RFID") is not None, "%s: no session" % what)
        if what == "an unknown code":
            true("PE" in rep["latched"], "the trips it could read stay latched too")

        again = _boot_on(app.data_dir)  # a restart (power cut, watchdog) keeps it
        true("LAT" in again.errors(), "%s: after a restart" % what)
        eq(again.protection.technician_clear(["LAT"]), ["LAT"], "%s: cleared" % what)
        third = _boot_on(app.data_dir)
        true("LAT" not in third.errors(), "%s: stays cleared" % what)


def test_a_readable_latch_record_and_none_at_all():
    app = _app({"latched.json": '{"latched": ["IRD"]}'})
    eq(app.errors(), ["IRD"], "the latched trip, nothing else")
    app = _app({})
    eq((app.errors(), app.charger.ocpp_status()), ([], "Available"), "a new charger")


_OCPP = '{"ocpp_url": "ws://10.0.0.5:9/ocpp/CP1", "auth_mode": "free"}'


def test_an_unreadable_charging_profile_store_does_not_lift_the_site_limit():
    """The charging profile store may have held a site limit: unreadable, the charger
    offers at most 6 A (limit ocpp_store) and shows a configuration error until the
    central system sets or clears profiles again."""
    app = _app({"settings.json": _OCPP, "ocpp_profiles.json": '#crc32 00000000\n{"prof'})
    eq(app.charger.external.get("ocpp_store"), 6.0, "6 A from the start")
    true("CFG" in app.status()["errors"], "CFG")
    true("ocpp_profiles.json" in app.status()["config_errors"], "named")
    true("CONFIG ERROR" in _shown(app), "on the display")
    rep = _report(app)
    true("CFG" in rep["active"], "Report page: active")
    recs = [f for f in rep["faults"] if f["code"] == "CFG"]
    true(recs and "ocpp_profiles.json" in json.dumps(recs[0]["values"]), "a record names it")
    svc = app.ocpp.service
    svc.smart.clear()  # ClearChargingProfile
    svc.tx.apply_limit(svc.now())
    eq(app.charger.external.get("ocpp_store"), None, "lifted once the store is rewritten")
    eq(app.status()["errors"], [], "cleared")
    app2 = _app({"settings.json": _OCPP})
    eq((app2.charger.external.get("ocpp_store"), app2.status()["errors"]), (None, []),
       "no store at all: no limit, no error")


def test_an_unreadable_availability_state_keeps_the_charger_inoperative():
    """ocpp_state.json holds whether the central system took the charger out of service
    (ChangeAvailability Inoperative): unreadable, it stays Unavailable until the central
    system says again."""
    app = _app({"settings.json": _OCPP, "ocpp_state.json": '{"inop": tr'})
    eq(app.charger.ocpp_status(), "Unavailable", "Inoperative")
    true("ocpp_state.json" in app.status()["config_errors"], "named")
    from evse.ocpp import handlers

    svc = app.ocpp.service
    r = asyncio.run(handlers.change_availability(svc, "1", {"connectorId": 0,
                                                             "type": "Operative"}))
    asyncio.new_event_loop()
    eq((r[0], app.charger.ocpp_status()), ({"status": "Accepted"}, "Available"), "operative")
    eq(app.status()["errors"], [], "cleared")
    app2 = _boot_on(app.data_dir)
    eq((app2.charger.ocpp_status(), app2.status()["errors"]), ("Available", []),
       "saved: readable after a restart")


def test_a_damaged_availability_state_with_an_older_bak_keeps_the_charger_inoperative():
    """The central system took the charger out of service (Inoperative, the newest
    ocpp_state.json); the .bak is the state before that. ocpp_state.json is then damaged:
    the older .bak must not bring the charger back into service."""
    import atomicfile

    app = _app({"settings.json": _OCPP,
                "ocpp_state.json": atomicfile.encode_json({"inop": True}).decode()[:-3],
                "ocpp_state.json.bak": atomicfile.encode_json({"inop": False}).decode()})
    eq(app.charger.ocpp_status(), "Unavailable", "Inoperative")
    true("CFG" in app.status()["errors"], "CFG")
    true("ocpp_state.json" in app.status()["config_errors"], "named")
    app2 = _boot_on(app.data_dir)
    eq(app2.charger.ocpp_status(), "Unavailable", "still after another restart")


def test_each_fault_s_clear_text_carries_protection_s_thresholds():
    """The Report page's "clears" text names the very numbers protection.py clears by."""
    from evse import faults, protection

    for row in faults.TABLE:
        text = protection.clear_text(row[0])
        true(text and "%" not in text, "%s: %r" % (row[0], text))
    eq(protection.clear_text("OVP"), "every phase below %g V for 10 s" % protection.OVP_CLEAR_V)
    true("%g" % protection.LVP_CLEAR_V in protection.clear_text("LVP"), "LVP")
    true("%g" % protection.LVP_V in protection.clear_text("MIS"), "MIS")
    true("%g °C" % protection.ROT_CLEAR_C in protection.clear_text("ROT"), "ROT")
    true("%g °C" % protection.OCT_CLEAR_C in protection.clear_text("OCT"), "OCT")
    eq(protection.clear_text("nope"), None)


def test_smart_charging_is_built_only_when_used_and_stored_profiles_apply_at_boot():
    """A central system that sets no profile costs no smart-charging heap; a stored
    profile (a site limit) is read at boot, from the file or the copy a cut save left."""
    from evse.ocpp.smart import Smart

    app = _app({"settings.json": _OCPP})
    svc = app.ocpp.service
    eq(svc.smart_loaded, None, "no store: not built")
    svc.tx.apply_limit(svc.now())
    eq((svc.smart_loaded, app.charger.external.get("ocpp")), (None, None), "no limit, not built")
    d = check.tmpdir("smartsrc")
    sm = Smart(d)
    cap = {"chargingProfileId": 1, "stackLevel": 0,
           "chargingProfilePurpose": "ChargePointMaxProfile", "chargingProfileKind": "Absolute",
           "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": "2020-01-01T00:00:00Z",
                                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10}]}}
    eq(sm.install(0, cap, None, 1700000000), "Accepted", "a site limit stored")
    with open(d + "/ocpp_profiles.json") as f:
        stored = f.read()
    # Only the older copy left: it may predate a change, so 6 A (ocpp_store) holds.
    for name, limit in (("ocpp_profiles.json", ("ocpp", 10.0)),
                        ("ocpp_profiles.json.bak", ("ocpp_store", 6.0))):
        app = _app({"settings.json": _OCPP, name: stored})
        svc = app.ocpp.service
        true(svc.smart_loaded is not None, "%s: built at boot" % name)
        svc.tx.apply_limit(svc.now())
        eq(app.charger.external.get(limit[0]), limit[1], "%s: the limit applies" % name)
