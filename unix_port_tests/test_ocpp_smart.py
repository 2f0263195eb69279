# Charging profiles -> limits and composite schedules (firmware/evse/ocpp/smart.py).
import os

from check import eq, raises, true
from evse.ocpp import isotime
from evse.ocpp.rpc import RpcError
from evse.ocpp.smart import Smart

T0 = isotime.parse("2024-05-01T10:00:00Z")


def _dir():
    d = "/tmp/ocpp_smart_%d" % (os.urandom(1)[0] * 256 + os.urandom(1)[0])
    try:
        os.mkdir(d)
    except OSError:
        pass
    for n in os.listdir(d):
        os.remove(d + "/" + n)
    return d


def prof(pid, purpose="TxDefaultProfile", level=0, kind="Absolute", periods=((0, 16),), unit="A",
         start=None, duration=None, **extra):
    s = {"chargingRateUnit": unit, "chargingSchedulePeriod": [
        {"startPeriod": a, "limit": b} for a, b in periods]}
    if start is not None:
        s["startSchedule"] = isotime.fmt(start)
    if duration is not None:
        s["duration"] = duration
    p = {"chargingProfileId": pid, "stackLevel": level, "chargingProfilePurpose": purpose,
         "chargingProfileKind": kind, "chargingSchedule": s}
    p.update(extra)
    return p


def test_absolute_periods_and_stack_levels():
    sm = Smart(_dir())
    eq(sm.limit(T0), None, "no profile: no limit")
    eq(sm.install(1, prof(1, periods=((0, 16), (600, 10)), start=T0), None, T0), "Accepted", "install")
    eq(sm.limit(T0 + 10), 16.0, "first period")
    eq(sm.limit(T0 + 600), 10.0, "second period")
    eq(sm.limit(T0 - 1), None, "before the start")
    eq(sm.install(1, prof(2, level=1, periods=((0, 8),), start=T0, duration=300), None, T0), "Accepted", "higher")
    eq(sm.limit(T0 + 100), 8.0, "higher stack level wins")
    eq(sm.limit(T0 + 300), 16.0, "past its duration: the lower level again")


def test_charge_point_max_caps_and_connector_rules():
    sm = Smart(_dir())
    eq(sm.install(1, prof(1, "ChargePointMaxProfile", periods=((0, 12),), start=T0), None, T0), "Rejected", "CPmax on 1")
    eq(sm.install(0, prof(1, "ChargePointMaxProfile", periods=((0, 12),), start=T0), None, T0), "Accepted", "CPmax on 0")
    sm.install(0, prof(2, periods=((0, 20),), start=T0), None, T0)
    eq(sm.limit(T0), 12.0, "min with the charger max")
    sm.install(1, prof(3, periods=((0, 10),), start=T0), None, T0)
    eq(sm.limit(T0), 10.0, "connector-1 TxDefault beats connector 0")
    e = raises(RpcError, sm.install, 2, prof(4), None, T0)
    eq(e.code, "PropertyConstraintViolation", "unknown connector")


def test_tx_profile_needs_transaction_and_ends_with_it():
    sm = Smart(_dir())
    sm.install(1, prof(1, periods=((0, 16),), start=T0), None, T0)
    eq(sm.install(1, prof(2, "TxProfile", periods=((0, 6),), start=T0), None, T0), "Rejected", "no tx")
    eq(sm.install(1, prof(2, "TxProfile", periods=((0, 6),), start=T0, transactionId=9), 5, T0), "Rejected", "other tx")
    eq(sm.install(1, prof(2, "TxProfile", periods=((0, 6),), start=T0), 5, T0), "Accepted", "tx")
    eq(sm.limit(T0, 1, T0, 5), 6.0, "TxProfile wins during the transaction")
    eq(sm.limit(T0), 16.0, "TxDefault without transaction")
    sm.tx_ended()
    eq(sm.limit(T0, 1, T0, 5), 16.0, "removed at the end")


def test_watts_relative_recurring_validity():
    sm = Smart(_dir())
    sm.phases = 1
    sm.install(1, prof(1, unit="W", periods=((0, 3680),), start=T0), None, T0)
    eq(sm.limit(T0), 16.0, "W -> A, one phase")
    sm.phases = 3
    eq(sm.limit(T0), 3680 / 690, "three phases share it")
    sm = Smart(_dir())
    sm.install(1, prof(1, kind="Relative", periods=((0, 10), (60, 20))), None, T0)
    eq(sm.limit(T0 + 1000, 1, T0 + 990, 1), 10.0, "relative to the transaction start")
    eq(sm.limit(T0 + 1060, 1, T0 + 990, 1), 20.0, "second period")
    sm = Smart(_dir())
    day0 = T0 - 10 * 3600  # midnight
    eq(sm.install(1, prof(1, kind="Recurring", periods=((0, 16), (3600, 8)), start=day0 - 5 * 86400,
                          duration=7200, recurrencyKind="Daily"), None, T0), "Accepted", "recurring")
    eq(sm.limit(day0 + 1800), 16.0, "daily, first hour")
    eq(sm.limit(day0 + 5400), 8.0, "daily, second hour")
    eq(sm.limit(day0 + 3 * 3600), None, "past the duration")
    eq(sm.install(1, prof(2, kind="Recurring", periods=((0, 16),)), None, T0), "Rejected", "no recurrencyKind")
    sm = Smart(_dir())
    sm.install(1, prof(1, periods=((0, 10),), start=T0, validFrom=isotime.fmt(T0 + 60),
                       validTo=isotime.fmt(T0 + 120)), None, T0)
    eq((sm.limit(T0 + 30), sm.limit(T0 + 60), sm.limit(T0 + 120)), (None, 10.0, None), "validity window")


def test_watts_over_the_phases_the_car_uses():
    """numberPhases when given, else the phases the car draws on (measured), else the
    configured ones; never fewer than the car is measured to draw on."""
    sm = Smart(_dir())
    sm.phases = 3
    one = prof(1, unit="W", periods=((0, 3680),), start=T0)
    one["chargingSchedule"]["chargingSchedulePeriod"][0]["numberPhases"] = 1
    sm.install(1, one, None, T0)
    eq(sm.limit(T0), 16.0, "numberPhases 1: 3680 W on one phase")
    sm.car_phases = 1
    eq(sm.limit(T0), 16.0, "numberPhases 1 and a one-phase car: 3680 W on one phase")
    sm.car_phases = 3
    eq(sm.limit(T0), 3680 / 690, "a three-phase car spreads it over three")
    sm = Smart(_dir())
    sm.phases = 3
    sm.install(1, prof(1, unit="W", periods=((0, 3680),), start=T0), None, T0)
    eq(sm.limit(T0), 3680 / 690, "no numberPhases, not measured: configured")
    sm.car_phases = 1
    eq(sm.limit(T0), 16.0, "no numberPhases: the one phase the car draws on")
    three = prof(2, unit="W", level=1, periods=((0, 3680),), start=T0)
    three["chargingSchedule"]["chargingSchedulePeriod"][0]["numberPhases"] = 3
    sm.install(1, three, None, T0)
    eq(sm.limit(T0), 3680 / 690, "numberPhases 3: I = P / (230 V x 3)")


def test_checks_replace_clear_persist():
    d = _dir()
    sm = Smart(d)
    eq(sm.install(1, prof(1, periods=((5, 10),)), None, T0), "Rejected", "first period not at 0")
    eq(sm.install(1, prof(1, level=9), None, T0), "Rejected", "stack level")
    eq(sm.install(1, prof(1, periods=[(i * 60, 10) for i in range(25)]), None, T0), "Rejected", "too many periods")
    sm.install(1, prof(1, level=2, periods=((0, 10),)), None, T0)
    sm.install(1, prof(2, level=2, periods=((0, 12),)), None, T0)
    eq(len(sm.profiles), 1, "same purpose and level replaced")
    eq(Smart(d).limit(T0), 12.0, "persisted")
    eq(sm.clear(pid=99), "Unknown", "unknown id")
    eq(sm.clear(purpose="TxDefaultProfile", level=2), "Accepted", "by purpose and level")
    eq(sm.limit(T0), None, "gone")


def test_composite_schedule():
    sm = Smart(_dir())
    sm.phases = 1
    sm.install(0, prof(1, "ChargePointMaxProfile", periods=((0, 20), (1800, 10)), start=T0), None, T0)
    sm.install(1, prof(2, periods=((0, 16),), start=T0, duration=3600), None, T0)
    c = sm.composite(1, T0, 7200, "A", 32.0)
    eq(c["chargingSchedulePeriod"], [{"startPeriod": 0, "limit": 16.0}, {"startPeriod": 1800, "limit": 10.0}],
       "min of both, merged")
    eq((c["duration"], c["chargingRateUnit"], c["startSchedule"]), (7200, "A", isotime.fmt(T0)), "header")
    w = sm.composite(0, T0, 3600, "W", 32.0)
    eq(w["chargingSchedulePeriod"], [{"startPeriod": 0, "limit": 4600.0}, {"startPeriod": 1800, "limit": 2300.0}],
       "connector 0 in W")
    true(sm.composite(1, T0 + 9000, 60, "A", 32.0)["chargingSchedulePeriod"][0]["limit"] == 10.0, "later")


def test_an_unreadable_charging_profile_store_does_not_lift_the_site_limit():
    """ocpp_profiles.json holds the central system's ChargePointMaxProfile (a site limit).
    A store that is there but cannot be read is no store: its limits are unknown, so it
    is an error until the central system sets or clears profiles again (which rewrites
    it). A missing store (no profile ever set) is no error."""
    d = _dir()
    sm = Smart(d)
    eq(sm.store_error, None, "no file: nothing lost")
    eq(sm.install(0, prof(1, "ChargePointMaxProfile", periods=((0, 10),), start=T0), None, T0),
       "Accepted")
    p = d + "/ocpp_profiles.json"
    with open(p, "rb") as f:
        data = f.read()
    with open(p, "wb") as f:
        f.write(data[:-4])  # torn (no older copy: it was the first save)
    again = Smart(d)  # the restart
    true(again.store_error, "unreadable store reported")
    eq(Smart(d).clear(pid=99), "Unknown", "a clear of nothing")
    eq(Smart(d).store_error, None, "a clear from the central system rewrites the store")
    with open(p, "wb") as f:
        f.write(b'{"profiles": 7}')
    true(Smart(d).store_error, "profiles of the wrong type")
    sm = Smart(d)
    eq(sm.install(1, prof(2, periods=((0, 16),), start=T0), None, T0), "Accepted")
    eq((sm.store_error, Smart(d).store_error), (None, None), "set again")


def test_a_damaged_store_with_an_older_bak_does_not_lift_the_site_limit():
    """A TxDefaultProfile of 16 A, then a ChargePointMaxProfile of 10 A (the site limit):
    the .bak is the store before the site limit. ocpp_profiles.json is then damaged: the
    .bak may not be used as if it were the newest store, so the store is an error (6 A
    until the central system sets or clears profiles), never 16 A."""
    d = _dir()
    sm = Smart(d)
    sm.phases = 1
    eq(sm.install(1, prof(1, periods=((0, 16),), start=T0), None, T0), "Accepted")
    eq(sm.install(0, prof(2, "ChargePointMaxProfile", periods=((0, 10),), start=T0), None, T0),
       "Accepted")
    eq(sm.limit(T0), 10.0, "site limit in force")
    p = d + "/ocpp_profiles.json"
    with open(p, "rb") as f:
        data = f.read()
    with open(p, "wb") as f:
        f.write(data[:-4])  # damaged newest copy; the .bak is from before the site limit
    again = Smart(d)
    again.phases = 1
    true(again.store_error, "an older copy only: the store is an error")
    eq(again.profiles, [], "the older profiles are not used")
    eq(Smart(d).store_error, again.store_error, "still after another restart")
    eq(again.clear(), "Unknown", "ClearChargingProfile")
    eq(Smart(d).store_error, None, "rewritten by the central system")


def test_a_whole_tmp_of_a_cut_save_is_the_newest_store():
    """A save cut after the old store became the .bak leaves the new one in .tmp: proven
    whole by its CRC it is the newest store (no error). A .tmp without a CRC cannot be
    proven whole: the newest state is unknown, an error."""
    import atomicfile

    d = _dir()
    sm = Smart(d)
    eq(sm.install(1, prof(1, periods=((0, 16),), start=T0), None, T0), "Accepted")
    eq(sm.install(0, prof(2, "ChargePointMaxProfile", periods=((0, 10),), start=T0), None, T0),
       "Accepted")
    p = d + "/ocpp_profiles.json"
    os.rename(p, p + ".tmp")  # as if cut after the rename to .bak
    again = Smart(d)
    again.phases = 1
    eq((again.store_error, again.limit(T0)), (None, 10.0), "the whole .tmp in use")
    with open(p + ".tmp", "rb") as f:
        data = f.read()
    with open(p + ".tmp", "wb") as f:
        f.write(data[16:])  # the same JSON without its CRC line
    true(atomicfile.decode_json(data[16:]), "still JSON")
    true(Smart(d).store_error, "a .tmp without a CRC: an error")
