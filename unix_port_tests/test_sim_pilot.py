# unix_sim board: control-pilot voltages for each EV state and generator mode.
import os

import board
import check
import sim_plant


def _hw():
    port = 30000 + (os.urandom(1)[0] << 4)
    return board.make({"EVSE_DATA_DIR": "/tmp/sim_test_data", "EVSE_CAN_PORT": str(port)})


def _levels(hw):
    hw.cp_adc.sample()
    return hw.cp_adc.hi_mv, hw.cp_adc.lo_mv


def _ev(hw, state, diode=True, diode_v=None):
    p = hw.plant
    p.ev_state = state
    p.ev_diode = diode
    if diode_v is not None:
        p.ev_diode_v = diode_v
    p.update_cp()


def test_no_ev_reads_12_v_in_every_mode():
    hw = _hw()
    hw.cp.high()
    check.eq(_levels(hw), (12000, 12000), "A, x1")
    hw.cp.pwm(267)
    check.eq(_levels(hw), (12000, -12000), "A, PWM")
    hw.cp.low()
    check.eq(_levels(hw), (-12000, -12000), "F")


def test_ev_states_with_the_default_diode():
    hw = _hw()
    hw.cp.pwm(500)
    # Vd + (12 V - Vd) * R / (R + 1 kOhm), Vd = 0.8 V
    for state, want_hi in (("B", 9005), ("C", 6048), ("D", 3010)):
        _ev(hw, state)
        hi, lo = _levels(hw)
        check.eq(hi, want_hi, "hi in " + state)
        check.eq(lo, -12000, "lo in " + state + " (the diode blocks)")


def test_static_plus_12_gives_equal_plateaus():
    hw = _hw()
    _ev(hw, "B")
    hw.cp.high()
    hi, lo = _levels(hw)
    check.eq(hi, 9005, "B1 hi")
    check.eq(lo, hi, "B1 lo == hi")


def test_state_f_with_an_ev_plugged():
    hw = _hw()
    _ev(hw, "C")
    hw.cp.low()
    check.eq(_levels(hw), (-12000, -12000), "F with EV")


def test_diode_drop_is_settable():
    hw = _hw()
    hw.cp.pwm(500)
    _ev(hw, "B", diode_v=1.0)
    check.eq(_levels(hw)[0], 9059, "B with a 1.0 V diode")


def test_missing_diode_mirrors_the_positive_plateau():
    hw = _hw()
    hw.cp.pwm(500)
    _ev(hw, "C", diode=False)
    hi, lo = _levels(hw)
    check.eq(hi, 5623, "C hi without diode: 12 V * R / (R + R1)")
    check.eq(lo, -hi, "lo mirrors hi")


def test_diode_fault_acts_like_a_missing_diode():
    hw = _hw()
    hw.cp.pwm(500)
    _ev(hw, "B")
    hw.plant.set_fault("diode", True)
    hi, lo = _levels(hw)
    check.eq((hi, lo), (8791, -8791), "B, diode fault")
    hw.plant.set_fault("diode", False)
    check.eq(_levels(hw), (9005, -12000), "diode back")


def test_cp_short_is_state_e():
    hw = _hw()
    _ev(hw, "C")
    hw.cp.pwm(500)
    hw.plant.set_fault("cp_short", True)
    check.eq(_levels(hw), (0, 0), "CP shorted")
    hw.cp.high()
    check.eq(_levels(hw), (0, 0), "CP shorted, x1")


def test_pwm_extremes_have_one_plateau():
    hw = _hw()
    _ev(hw, "B")
    hw.cp.pwm(1000)
    check.eq(_levels(hw), (9005, 9005), "100 %")
    hw.cp.pwm(0)
    check.eq(_levels(hw), (-12000, -12000), "0 %")


def test_line_mv_formula():
    check.eq(sim_plant.line_mv(12000, None, True, 0.8), 12000, "open line")
    check.eq(sim_plant.line_mv(12000, 2740, True, 0.0), round(12000 * 2740 / 3740), "ideal diode")
    check.eq(sim_plant.line_mv(-12000, 2740, True, 0.8), -12000, "reverse")


def test_pwm_rejects_out_of_range_duty():
    hw = _hw()
    check.raises(ValueError, hw.cp.pwm, 1001)
    check.raises(ValueError, hw.cp.pwm, -3)
    check.eq(hw.cp.duty_pm, -1, "unchanged")


def test_generator_and_sampler_allocate_nothing():
    hw = _hw()
    _ev(hw, "C")
    cp = hw.cp
    adc = hw.cp_adc

    def cycle():
        cp.pwm(267)
        adc.sample()
        cp.high()
        adc.sample()
        cp.low()
        adc.sample()
        cp.pwm(100)

    for _ in range(300):  # also wraps the event ring under the lock
        check.assert_no_alloc(cycle)
    check.eq(cp.duty_pm, 100, "duty")


def test_pilot_op_moves_the_generator_and_the_adc_zero():
    hw = _hw()
    p = hw.plant
    p.adc_zero_mv = 600
    p.gen_neg_mv = -11400
    p.update_cp()
    hw.cp.high()
    check.eq(_levels(hw), (12600, 12600), "A, x1: the line at 12 V, read 0.6 V high")
    _ev(hw, "B")
    hw.cp.pwm(500)
    check.eq(_levels(hw), (9005 + 600, -11400 + 600), "B: the weak negative level, read high")
    hw.cp.low()
    check.eq(_levels(hw), (-10800, -10800), "F")
    p.gen_pos_mv = 12600
    p.adc_zero_mv = 0
    p.update_cp()
    hw.cp.pwm(500)
    hi, lo = _levels(hw)
    check.eq(hi, sim_plant.line_mv(12600, sim_plant.ev_ohms("B"), True, sim_plant.DIODE_V))
    _ev(hw, "B", diode=False)
    check.eq(_levels(hw)[1], sim_plant.line_mv(-11400, sim_plant.ev_ohms("B"), False, 0.8),
             "no diode: the line follows the weak negative level")
