"""OCPP smart charging end to end: charging profiles become the charging core's "ocpp"
limit and move the PWM duty by the pilot rules (IEC 61851-1 Annex A: duty = I / 0.6,
rounded down to 0.1 %; below 6 A the pilot goes static and the charge pauses)."""

from datetime import datetime, timedelta, timezone

from csms import wait_status

A = "04A1B2C3"
WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware


def iso(delta_s=0):
    return (datetime.now(timezone.utc) + timedelta(seconds=delta_s)).isoformat()


def profile(pid, purpose, limit, unit="A", level=0, kind="Absolute", **extra):
    sched = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
    }
    if kind == "Absolute":
        sched["startSchedule"] = iso(-60)
    p = {
        "chargingProfileId": pid,
        "stackLevel": level,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": sched,
    }
    p.update(extra)
    return p


def set_profile(cs, conn, prof):
    return cs.call("CP1", "SetChargingProfile", connectorId=conn, csChargingProfiles=prof)["status"]


def duty_for(amps):
    return int(amps * 1000 / 60 + 1e-6) / 10


def offering(c, amps, timeout=5 + WAIT_S):  # a raise may wait 5 s (errors.md)
    return c.wait_for(
        lambda s: s["offered_a"] == amps and s["pwm_duty_pct"] == duty_for(amps), timeout
    )


def charge(c):
    c.sim("ev", state="B", diode=True, max_a=32)
    c.wait_for(lambda s: s["cp_state"] == "B", WAIT_S)
    c.sim("card", uid=A, ms=800)
    c.wait_for(lambda s: s["session"]["active"], WAIT_S)
    c.sim("ev", state="C", diode=True, max_a=32)


def test_profiles_set_the_pwm_duty(cs, ocpp):
    # The shortest minimum pause (docs/errors.md): the pause below is the profile's, and
    # the resume after it is timed by the profile being cleared.
    c = ocpp(settings={"charger_power": "7kW", "min_pause_s": 5}, cards=[A])
    charge(c)
    offering(c, 32.0)
    # The relays close once a sample under the PWM has proven the diode (docs/errors.md).
    s = c.wait_for(lambda s: s["relays_closed"], WAIT_S)
    assert s["pwm_duty_pct"] == 53.3
    t0 = s["t_us"]
    assert set_profile(cs, 1, profile(1, "TxDefaultProfile", 10.0)) == "Accepted"
    s = offering(c, 10.0)
    assert s["pwm_duty_pct"] == 16.6 and s["limit_binding"] == "ocpp"
    assert set_profile(cs, 0, profile(2, "ChargePointMaxProfile", 8.0)) == "Accepted"
    assert offering(c, 8.0)["pwm_duty_pct"] == 13.3
    # A TxProfile in W (one phase: 4140 W = 18 A) replaces TxDefault, under the charger max.
    assert set_profile(cs, 1, profile(3, "TxProfile", 4140.0, unit="W", level=1)) == "Accepted"
    assert (
        cs.call("CP1", "ClearChargingProfile", chargingProfilePurpose="ChargePointMaxProfile")[
            "status"
        ]
        == "Accepted"
    )
    assert offering(c, 18.0)["pwm_duty_pct"] == 30.0  # raises wait 5 s (charging core)
    comp = cs.call("CP1", "GetCompositeSchedule", connectorId=1, duration=600)
    assert comp["status"] == "Accepted" and comp["connectorId"] == 1
    assert comp["chargingSchedule"]["chargingRateUnit"] == "A"
    assert comp["chargingSchedule"]["chargingSchedulePeriod"][0] == {
        "startPeriod": 0,
        "limit": 18.0,
    }
    comp_w = cs.call(
        "CP1", "GetCompositeSchedule", connectorId=0, duration=60, chargingRateUnit="W"
    )
    assert (
        comp_w["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 7360.0
    )  # 32 A, no CP max
    # Below 6 A: the pilot goes static, the charge pauses (SuspendedEVSE).
    mark = cs.mark()
    assert set_profile(cs, 1, profile(4, "TxProfile", 1000.0, unit="W", level=1)) == "Accepted"
    s = c.wait_for(lambda s: s["offered_a"] == 0 and s["pwm_duty_pct"] is None, WAIT_S)
    assert s["state"] == "SuspendedEVSE"
    c.wait_for(lambda s: not s["relays_closed"], 6 + WAIT_S)  # the EV stays in C: 6 s
    wait_status(cs, "CP1", 1, "SuspendedEVSE", since=mark)
    assert cs.call("CP1", "ClearChargingProfile", id=99)["status"] == "Unknown"
    assert cs.call("CP1", "ClearChargingProfile")["status"] == "Accepted"
    offering(c, 32.0)
    # Every duty the pilot showed meanwhile is one the table allows for a whole offer.
    duties = [
        e["value"] for e in c.events(t0) if e["what"] == "pwm_duty_pct" and e["value"] is not None
    ]
    assert set(duties) <= {53.3, 16.6, 13.3, 30.0}, duties
    # Rules: no TxProfile on connector 0, an unknown connector is a broken value.
    assert set_profile(cs, 0, profile(5, "TxProfile", 10.0)) == "Rejected"
    raw = cs.call_raw(
        "CP1",
        "SetChargingProfile",
        {"connectorId": 5, "csChargingProfiles": profile(6, "TxDefaultProfile", 10.0)},
    )
    assert raw[0] == 4 and raw[2] == "PropertyConstraintViolation"


def test_remote_start_profile_and_persistence(cs, ocpp):
    c = ocpp(settings={"charger_power": "7kW"}, cards=[A])
    c.sim("ev", state="B", diode=True, max_a=32)
    prof = profile(7, "TxProfile", 12.0, kind="Relative")  # embedded: no transactionId
    assert (
        cs.call("CP1", "RemoteStartTransaction", idTag=A, chargingProfile=prof)["status"]
        == "Accepted"
    )
    c.wait_for(lambda s: s["session"]["active"], WAIT_S)
    c.sim("ev", state="C", diode=True, max_a=32)
    offering(c, 12.0)
    c.sim("ev", state="A")
    c.wait_for(lambda s: not s["session"]["active"], WAIT_S)
    cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction"), WAIT_S)
    comp = cs.call("CP1", "GetCompositeSchedule", connectorId=1, duration=60)
    assert comp["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 32.0, "TxProfile gone"
    # A TxDefaultProfile survives a restart and limits the next charge.
    assert set_profile(cs, 0, profile(8, "TxDefaultProfile", 10.0)) == "Accepted"
    mark = cs.mark()
    c.restart()
    wait_status(cs, "CP1", 1, since=mark, timeout=20)
    charge(c)
    offering(c, 10.0)


def test_watt_profile_number_phases_on_a_three_phase_charger(cs, ocpp):
    """OCPP 1.6 §3.13: I = P / (230 V x numberPhases). A 6900 W profile for one phase on
    a 22 kW charger is 30 A on that phase, not 10 A spread over three (the car here
    draws on L1 only); the same profile without numberPhases is spread over the phases
    the car is measured to draw on."""
    c = ocpp(settings={"charger_power": "22kW"}, cards=[A])
    charge(c)
    offering(c, 32.0)
    c.wait_for(lambda s: s["car_phases"] == [1], WAIT_S)
    prof = profile(1, "TxDefaultProfile", 6900.0, unit="W")
    prof["chargingSchedule"]["chargingSchedulePeriod"][0]["numberPhases"] = 1
    assert set_profile(cs, 1, prof) == "Accepted"
    assert offering(c, 30.0)["limit_binding"] == "ocpp"
    prof = profile(2, "TxDefaultProfile", 4600.0, unit="W", level=1)
    assert set_profile(cs, 1, prof) == "Accepted"
    assert offering(c, 20.0)["limit_binding"] == "ocpp"  # measured: one phase
