# Property-style checks of the duty formula, the classification windows and the limit
# composition over their whole range (IEC 61851-1 Table A.8 / STANDARDS.md §1.3).
from check import eq, true, raises
from evse import pilot, limits


def test_duty_table_values():
    for amps, pm in ((6, 100), (8, 133), (10, 166), (13, 216), (16, 266), (20, 333),
                     (25, 416), (32, 533), (51, 850), (63, 892), (80, 960)):
        eq(pilot.duty_pm(amps), pm, "%s A" % amps)


def test_duty_never_offers_more_than_asked():
    """Over 6.0-80.0 A in 0.1 A steps, the EV's reading of the duty never exceeds the
    requested current, is within 0.1 A + one timer step of it, and duty is monotonic."""
    prev = 0
    i = 60
    while i <= 800:
        a = i / 10
        pm = pilot.duty_pm(a)
        true(100 <= pm <= 960, "duty in range at %s A" % a)
        got = pilot.amps_of(pm)
        true(got <= a + 1e-9, "%s A offered as %s A" % (a, got))
        if a <= 51 or a >= 53:  # 85 % sits on the boundary of both formulas
            true(a - got < 0.3, "%s A offered as %s A" % (a, got))
        true(pm >= prev, "monotonic at %s A" % a)
        prev = pm
        i += 1


def test_below_6a_is_never_signalled():
    raises(ValueError, pilot.duty_pm, 5.9)


def test_classifier_windows_both_cp_types():
    for diode in (800, 1000):
        c = pilot.Classifier(diode)
        eq(c.classify(12000, 12000, False), pilot.STATE_A)
        eq(c.classify(c.b_mv, -12000, True), pilot.STATE_B)
        eq(c.classify(c.c_mv + 900, -12000, True), pilot.STATE_C)
        eq(c.classify(c.d_mv - 900, -12000, True), pilot.STATE_D)
        eq(c.classify(0, 0, False), pilot.STATE_E)
        eq(c.classify(-12000, -12000, False), pilot.STATE_F)
        eq(c.classify(c.b_mv, -8000, True), pilot.INVALID, "missing diode")
        true(not c.diode_ok)


def test_compose_is_min_of_inputs_and_names_binding():
    import random

    random.seed(7)
    names = ("ocpp", "power", "balance", "solar", "tariff")
    for _ in range(2000):
        cfg = random.randint(6, 32)
        cable = random.choice((None, 13, 20, 32, 63))
        thermal = random.choice((None, random.randint(0, 320) / 10))
        ext = {}
        for n in names:
            if random.random() < 0.5:
                ext[n] = random.randint(0, 400) / 10
        amps, binding = limits.compose(cfg, 32, cable, thermal, ext)
        inputs = [cfg, 32] + [v for v in (cable, thermal) if v is not None] + list(ext.values())
        low = min(inputs)
        if low < 6:
            eq(amps, 0.0, "pause below 6 A")
        else:
            true(6 <= amps <= low, "%s within [6, %s]" % (amps, low))
            true(low - amps < 0.1 + 1e-9)
        bound = {"max_current": cfg, "model": 32, "cable": cable, "thermal": thermal}
        bound.update(ext)
        eq(bound[binding], low, "binding limit %s" % binding)


def test_thermal_derating_is_monotonic_and_reaches_6a_at_trip():
    prev = 32.0
    t = 60.0
    while t < 85.0:
        a = limits.thermal_limit(32, t, 25.0)
        if a is not None:
            true(a <= prev, "monotonic at %s C" % t)
            prev = a
        t += 0.5
    eq(limits.thermal_limit(32, 84.99, 25.0) >= 6.0, True)


def test_cable_rating_windows():
    for ohm, want in ((50, None), (100, 63), (220, 32), (680, 20), (1500, 13), (3000, None), (-1, None)):
        eq(limits.cable_rating(ohm), want, "%s ohm" % ohm)


def test_a_limit_that_is_not_a_number_pauses_and_binds():
    nan = float("nan")
    eq(limits.compose(32, 32, None, None, {"power": nan}), (0.0, "power"))
    eq(limits.compose(32, 32, None, None, {"ocpp": float("inf")}), (0.0, "ocpp"))
    eq(limits.compose(32, 32, nan, None, {}), (0.0, "cable"))
    eq(limits.compose(nan, 32, None, None, {}), (0.0, "max_current"))
    eq(limits.compose(32, 32, None, None, {"balance": "10"}), (0.0, "balance"))


def test_a_limit_that_is_not_a_number_does_not_lift_the_offer():
    from test_charger import Rig

    r = Rig()
    r.charge()
    r.ch.set_external_limit("power", 10.0)
    r.run(6000)
    eq(r.ch.offered_a, 10.0)
    r.ch.set_external_limit("power", float("nan"))
    eq(r.ch.offered_a, 0.0, "a NaN limit pauses at once")
    r.run(300)
    eq((r.ch.offered_a, r.ch.limit_binding), (0.0, "power"))
