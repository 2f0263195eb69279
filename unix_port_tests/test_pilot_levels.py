# The CP classification by midpoints between the nominal levels, its out-of-range and
# hostile readings, the missing-diode threshold and the zero calibration from the +12 V
# plateau (docs/errors.md, "Control pilot levels").
from check import eq, true
from evse import pilot

A, B, C, D, E, F, X = (pilot.STATE_A, pilot.STATE_B, pilot.STATE_C, pilot.STATE_D,
                       pilot.STATE_E, pilot.STATE_F, pilot.INVALID)
NAN = float("nan")
INF = float("inf")


def _both():
    for diode in (800, 1000):
        yield diode, pilot.Classifier(diode)


def test_midpoints_of_the_nominal_levels():
    for diode, c in _both():
        # The levels of this cp_type, and each boundary halfway to the next one.
        eq(c.ab_mv, (12000 + c.b_mv) // 2)
        eq(c.bc_mv, (c.b_mv + c.c_mv) // 2)
        eq(c.cd_mv, (c.c_mv + c.d_mv) // 2)
        eq(c.de_mv, c.d_mv // 2)
        for got, lo, hi in ((c.ab_mv, 10450, 10550), (c.bc_mv, 7500, 7650),
                            (c.cd_mv, 4500, 4700), (c.de_mv, 1450, 1600)):
            true(lo <= got <= hi, "cp_type %d: boundary %d" % (diode, got))


def test_every_boundary_both_sides():
    for diode, c in _both():
        # A level at a midpoint goes to the higher state, one millivolt under to the lower;
        # E is strictly above -6 V (the midpoint of 0 and -12 V), F from there to -14 V.
        for mv, want in ((14001, X), (14000, A), (c.ab_mv, A), (c.ab_mv - 1, B),
                         (c.bc_mv, B), (c.bc_mv - 1, C), (c.cd_mv, C), (c.cd_mv - 1, D),
                         (c.de_mv, D), (c.de_mv - 1, E), (0, E), (-5999, E), (-6000, F),
                         (-12000, F), (-14000, F), (-14001, X)):
            eq(c.classify(mv, -12000, True), want, "cp_type %d: %d mV under the PWM" % (diode, mv))
            eq(c.classify(mv, mv, False), want, "cp_type %d: %d mV static" % (diode, mv))
            true(c.diode_ok, "a level is not a missing diode")


def test_no_reading_falls_between_windows():
    """From -14 V to +14 V every positive plateau is a state; the states come in order."""
    for diode, c in _both():
        order = (F, E, D, C, B, A)
        prev = 0
        mv = -14000
        while mv <= 14000:
            s = c.classify(mv, -12000, True)
            true(s != X, "cp_type %d: %d mV read as invalid" % (diode, mv))
            i = order.index(s)
            true(i >= prev, "cp_type %d: %d mV went back to %s" % (diode, mv, pilot.NAMES[s]))
            prev = i
            mv += 7


def test_hostile_readings_are_invalid_level_faults():
    for diode, c in _both():
        for hi in (NAN, INF, -INF, 10 ** 12, -(10 ** 12)):
            eq(c.classify(hi, -12000, True), X, "hi %r" % hi)
            true(c.diode_ok, "hi %r is not a diode fault" % hi)
        for lo in (NAN, INF, -INF, 14001, -14001):
            eq(c.classify(c.b_mv, lo, True), X, "lo %r under the PWM" % lo)
            true(c.diode_ok, "lo %r is a level fault, not a missing diode" % lo)
        # Without the PWM the low plateau is the high one: it is not looked at.
        eq(c.classify(c.b_mv, NAN, False), B)


def test_missing_diode_only_far_from_minus_12_v():
    for diode, c in _both():
        for lo in (-14000, -12600, -12000, -11400, -10800, pilot.DIODE_MAX_MV):
            eq(c.classify(c.b_mv, lo, True), B, "diode present at %d mV" % lo)
            true(c.diode_ok)
        # Without the diode the line follows the generator through the EV: -8.8 V in B,
        # -5.6 V in C, -2.4 V in D; a generator 0.6 V strong and a zero 0.6 V off stay
        # well above the threshold.
        for hi, lo in ((c.b_mv, pilot.DIODE_MAX_MV + 1), (c.b_mv, -8791), (c.b_mv, -9831),
                       (c.c_mv, -5624), (c.d_mv, -2367), (c.b_mv, 0), (c.c_mv, 3000)):
            eq(c.classify(hi, lo, True), X, "no diode at %d mV" % lo)
            true(not c.diode_ok, "flagged at %d mV" % lo)
        # A (nothing plugged) has no diode to prove; static levels neither.
        eq(c.classify(12000, -12000, True), A)
        eq(c.classify(c.b_mv, c.b_mv, False), B)
        true(c.diode_ok)


def _line(gen_pos, gen_neg, state, diode_mv, diode=True):
    r = {"B": 2740, "C": 882, "D": 246}.get(state)
    if r is None:
        return gen_pos, gen_neg
    hi = diode_mv + (gen_pos - diode_mv) * r // (r + 1000)
    lo = gen_neg if diode else gen_neg * r // (r + 1000)
    return hi, lo


def test_generator_and_zero_within_tolerance_read_the_right_state():
    """+-0.6 V on each generator level and +-0.6 V of ADC zero, in any combination: every
    state reads right and a missing diode is flagged, with nothing corrected (the zero
    estimate is a check, not a correction: docs/errors.md)."""
    want = {"A": A, "B": B, "C": C, "D": D}
    for diode, c in _both():
        for gp in (-600, 0, 600):
            for gn in (-600, 0, 600):
                for z in (-600, 0, 600):
                    for st in "ABCD":
                        hi, lo = _line(12000 + gp, -12000 + gn, st, diode)
                        eq(c.classify(hi + z, lo + z, True), want[st],
                           "%s gen %+d/%+d zero %+d" % (st, gp, gn, z))
                        if st == "A":
                            continue
                        hi, lo = _line(12000 + gp, -12000 + gn, st, diode, False)
                        eq(c.classify(hi + z, lo + z, True), X, "%s without diode" % st)
                        true(not c.diode_ok, "%s without diode flagged" % st)


def test_a_generator_beyond_its_tolerance_does_not_hide_a_missing_diode():
    """A generator 1.2 V strong on both levels, or at the corners of its tolerance with
    the zero off: the diode-less plateau of B (-9.7 V at worst), C and D is flagged."""
    for diode, c in _both():
        for gp, gn, z in ((1200, -1200, 0), (600, -600, 600), (0, -600, -600),
                          (-600, -600, -600), (600, -600, -600)):
            for st in "BCD":
                hi, lo = _line(12000 + gp, -12000 + gn, st, diode, False)
                eq(c.classify(hi + z, lo + z, True), X, "%s without diode, gen %+d/%+d zero %+d"
                   % (st, gp, gn, z))
                true(not c.diode_ok)


def _feed(cal, mv, n=pilot.CAL_SAMPLES):
    done = False
    for _ in range(n):
        done = cal.feed(mv)
    return done


def test_zero_calibration_accepts_a_plausible_offset():
    cal = pilot.ZeroCal()
    eq(cal.zero_mv, 0)
    true(not _feed(cal, 12600, pilot.CAL_SAMPLES - 1), "needs CAL_SAMPLES samples")
    eq(cal.zero_mv, 0, "nothing before the estimate")
    true(cal.feed(12600), "the estimate")
    eq((cal.zero_mv, cal.error, cal.done, cal.last_mv), (600, False, True, 600))
    for mv in (12000 - pilot.CAL_MAX_MV, 12000 + pilot.CAL_MAX_MV, 11400):
        true(_feed(cal, mv))
        eq(cal.zero_mv, mv - 12000)
        true(not cal.error)
    # The estimate is the average of its samples (noise, a 10 mV ripple).
    for i in range(pilot.CAL_SAMPLES):
        cal.feed(12300 + (10 if i % 2 else -10))
    eq(cal.zero_mv, 300)


def test_zero_calibration_out_of_range_is_refused_and_nominal_used():
    for mv in (12000 + pilot.CAL_MAX_MV + 1, 12000 - pilot.CAL_MAX_MV - 1, 13999, 10000):
        cal = pilot.ZeroCal()
        _feed(cal, 12500)
        eq(cal.zero_mv, 500)
        true(_feed(cal, mv))
        eq((cal.zero_mv, cal.error, cal.last_mv), (0, True, mv - 12000), "refused %d" % mv)
        # A good estimate afterwards clears the error.
        _feed(cal, 12100)
        eq((cal.zero_mv, cal.error), (100, False))


def test_zero_calibration_drops_hostile_samples_and_restarts():
    cal = pilot.ZeroCal()
    _feed(cal, 12600, pilot.CAL_SAMPLES - 1)
    for bad in (NAN, INF, -INF, 14001, -14001):
        true(not cal.feed(bad), "%r" % bad)
    eq(cal._n, 0, "a hostile sample drops the partial estimate")
    _feed(cal, 12600, pilot.CAL_SAMPLES - 1)
    cal.restart()
    true(not cal.feed(12600))
    eq(cal.zero_mv, 0, "no estimate from a partial run")
    true(_feed(cal, 12600, pilot.CAL_SAMPLES - 1))
    eq(cal.zero_mv, 600)
