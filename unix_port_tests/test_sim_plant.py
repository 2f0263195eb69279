# unix_sim board: the EV's current draw, its lag behind the PWM, energy and the mains.
import os

import board
import check
import sim_plant


def _hw():
    port = 30000 + (os.urandom(1)[0] << 4)
    return board.make({"EVSE_DATA_DIR": "/tmp/sim_test_data", "EVSE_CAN_PORT": str(port)})


def _charging(hw, duty_pm=267, state="C"):
    """EV in `state`, PWM at duty_pm, relays closed, offer settled (t = 0 .. 0.6 s)."""
    p = hw.plant
    p.ev_state = state
    p.update_cp()
    hw.cp.pwm(duty_pm)
    hw.relays.close()
    p.tick(0)
    p.tick(600_000)
    return p


def test_offered_current_table():
    for duty, amps in ((50, 0.0), (79, 0.0), (90, 6.0), (100, 6.0), (267, 16.02), (533, 31.98), (850, 51.0), (900, 65.0), (965, 80.0), (980, 0.0)):
        got = sim_plant.offered_a(duty)
        check.true(abs(got - amps) < 1e-6, "offer at %d: %r != %r" % (duty, got, amps))
    check.eq(sim_plant.offered_a(-1), 0.0, "x1")


def test_ev_draws_min_of_offer_and_max():
    hw = _hw()
    p = _charging(hw, 267)
    check.eq(p.amps, [16.02, 0.0, 0.0], "16 A offered, 1 phase")
    p.ev_max_a = 10.0
    p.update_draw()
    check.eq(p.amps[0], 10.0, "EV limit")


def test_slow_starter_waits_for_its_start_current_and_time():
    hw = _hw()
    p = hw.plant
    p.ev_start_min_a = 8.0
    p.ev_start_s = 5.0
    _charging(hw, 100)  # 6 A
    check.eq(p.amps[0], 0.0, "6 A offered: below what it needs to start")
    hw.cp.pwm(267)  # 16 A
    p.tick(1_200_000)
    check.eq(p.amps[0], 0.0, "16 A, but the contacts closed 1.2 s ago")
    p.tick(5_000_000)
    check.eq(p.amps[0], 16.02, "5 s after the contacts closed")
    hw.relays.open()
    p.tick(5_100_000)
    hw.relays.close()
    p.tick(5_200_000)
    check.eq(p.amps[0], 0.0, "a new close: it starts again slowly")
    check.eq(p.ev_view()["start_min_a"], 8.0, "in the view")


def test_draw_follows_a_duty_change_after_the_settling_time():
    hw = _hw()
    p = _charging(hw, 267)
    hw.cp.pwm(100)  # 6 A
    p.tick(700_000)
    check.eq(p.amps[0], 16.02, "still the old offer")
    p.tick(1_100_000)
    check.eq(p.amps[0], 16.02, "0.4 s after the change")
    p.tick(1_250_000)
    check.eq(p.amps[0], 6.0, "after 0.5 s")


def test_no_draw_in_b_or_without_pwm_or_with_relays_open():
    hw = _hw()
    p = _charging(hw, 267, state="B")
    check.eq(p.amps[0], 0.0, "state B")
    p.ev_state = "C"
    p.update_draw()
    check.eq(p.amps[0], 16.02, "C")
    hw.relays.open()
    p.update_draw()
    check.eq(p.amps[0], 0.0, "relays open")
    hw.relays.close()
    hw.cp.high()
    p.tick(700_000)
    p.tick(1_300_000)
    check.eq(p.amps[0], 0.0, "x1: no offer")


def test_state_d_draws_like_c():
    hw = _hw()
    p = _charging(hw, 267, state="D")
    check.eq(p.amps[0], 16.02, "D")


def test_three_phase_ev_and_a_missing_phase():
    hw = _hw()
    p = _charging(hw, 267)
    p.ev_phases = 3
    p.update_draw()
    check.eq(p.amps, [16.02, 16.02, 16.02], "3 phases")
    p.grid_v = [230.0, 0.0, 230.0]
    p.update_draw()
    check.eq(p.amps, [16.02, 0.0, 16.02], "L2 missing")
    check.true(abs(p.power_w - 2 * 230 * 16.02) < 1e-6, "power")


def test_forced_draw_ignores_the_pwm():
    hw = _hw()
    p = _charging(hw, 100)
    p.ev_draw_a = 25.0
    hw.cp.high()
    p.tick(2_000_000)
    check.eq(p.amps[0], 25.0, "misbehaving EV")
    hw.relays.open()
    p.update_draw()
    check.eq(p.amps[0], 0.0, "but not through open contacts")


def test_relay_faults_change_the_current_path():
    hw = _hw()
    p = _charging(hw, 267)
    hw.relays.stuck_open[2] = 1  # relay 2 carries N: nothing flows
    p.update_draw()
    check.eq(p.amps[0], 0.0, "N open")
    hw.relays.stuck_open[2] = 0
    hw.relays.welded[1] = 1
    hw.relays.welded[2] = 1
    hw.relays.open()
    p.update_draw()
    check.eq(p.amps[0], 16.02, "both welded: current flows with the relays commanded open")


def test_energy_accumulates():
    hw = _hw()
    p = _charging(hw, 267)
    p.ev_max_a = 10.0
    p.update_draw()  # 2300 W
    e0 = p.energy_wh
    p.tick(600_000 + 3_600_000)
    p.tick(600_000 + 7_200_000)
    # 7.2 s at 2300 W = 2300 * 7.2 / 3600 Wh
    check.true(abs(p.energy_wh - e0 - 4.6) < 1e-6, "7.2 s at 2300 W: %r Wh" % (p.energy_wh - e0))


def test_button_and_card_expire_with_the_plant_clock():
    hw = _hw()
    p = hw.plant
    now = hw.clock_us()
    p.button_until_us = now + 50_000_000
    check.true(hw.button.pressed(), "held")
    p.tick(now + 60_000_000)
    check.true(not hw.button.pressed(), "released")
    p.card = ("04A1B2C3", "M1")
    p.card_until_us = now + 1_000
    p.tick(now + 2_000)
    check.eq(p.card, None, "card gone")


def test_a_counted_sensor_bug_clears_itself():
    hw = _hw()
    hw.plant.set_fault("sensor_bug", True, 2)
    for _ in range(2):
        check.raises(RuntimeError, hw.temps.read)
    hw.temps.read()
    check.eq(hw.plant.fault("sensor_bug"), False, "cleared after two")
    hw.plant.set_fault("sensor_bug", True)
    for _ in range(5):
        check.raises(RuntimeError, hw.temps.read)
    hw.plant.set_fault("sensor_bug", False)
    hw.temps.read()


def _pilot(hw, p, t_us, mode):
    """The pilot generator in `mode` (F, X1 or a duty) from t_us, then a plant tick."""
    if mode == "F":
        hw.cp.low()
    elif mode == "X1":
        hw.cp.high()
    else:
        hw.cp.pwm(mode)
    p.tick(t_us)


def test_a_sleeping_car_ignores_the_pwm_until_the_wake_up_sequence():
    hw = _hw()
    p = hw.plant
    p.ev_state = "B"
    p.ev_asleep = True
    p.update_cp()
    _pilot(hw, p, 0, 533)
    p.tick(60_000_000)
    check.eq((p.ev_state, p.ev_asleep), ("B", True), "a minute of PWM: asleep")
    # F too short, then X1 and the PWM: still asleep.
    _pilot(hw, p, 61_000_000, "F")
    _pilot(hw, p, 63_000_000, "X1")
    _pilot(hw, p, 64_000_000, 533)
    p.tick(70_000_000)
    check.eq((p.ev_state, p.ev_asleep), ("B", True), "F 2 s is no wake-up")
    # F 4 s, then straight to the PWM (no X1): still asleep.
    _pilot(hw, p, 71_000_000, "F")
    _pilot(hw, p, 75_000_000, 533)
    p.tick(80_000_000)
    check.eq(p.ev_state, "B", "F then PWM without X1 is no wake-up")
    # F 4 s, X1 0.75 s, PWM: awake, S2 closes 1 s into the PWM.
    _pilot(hw, p, 81_000_000, "F")
    _pilot(hw, p, 85_000_000, "X1")
    _pilot(hw, p, 85_750_000, 533)
    p.tick(86_500_000)
    check.eq(p.ev_state, "B", "not yet")
    p.tick(86_760_000)
    check.eq((p.ev_state, p.ev_asleep), ("C", False), "woken: S2 closed")
    check.eq(p.cp_pos_mv, 6048, "the pilot shows C")
    check.eq(p.ev_view()["asleep"], False, "view")


def test_the_asleep_field_of_the_ev_op():
    hw = _hw()
    p = hw.plant
    c = hw.controller
    r = c.handle_line(b'{"op": "ev", "state": "B", "asleep": true}')
    check.eq((r["ok"], r["ev"]["state"], r["ev"]["asleep"]), (True, "B", True), "asleep in B")
    r = c.handle_line(b'{"op": "ev", "state": "C", "asleep": true}')
    check.true(not r["ok"] and "asleep" in r["error"], "asleep needs B: %r" % r)
    check.eq((p.ev_state, p.ev_asleep), ("B", True), "a refused request changes nothing")
    r = c.handle_line(b'{"op": "ev", "asleep": 1}')
    check.true(not r["ok"] and "true or false" in r["error"], "a bool: %r" % r)
    r = c.handle_line(b'{"op": "ev", "state": "A"}')
    check.eq((r["ev"]["state"], r["ev"]["asleep"]), ("A", False), "unplugged: awake")
    r = c.handle_line(b'{"op": "ev", "asleep": true}')
    check.true(not r["ok"] and "asleep" in r["error"], "not in B: %r" % r)
    check.eq(p.ev_asleep, False, "unchanged")


def test_an_ev_that_gives_up_after_n_interruptions_stays_in_b():
    hw = _hw()
    p = _charging(hw, 267)
    p.ev_gives_up_after = 2
    t = 700_000
    for n in (1, 2):
        hw.cp.high()  # a pause: the PWM stops with the car in C
        p.tick(t)
        check.eq(p.ev_interruptions, n, "interruptions")
        hw.cp.pwm(267)
        p.tick(t + 20_000)
        t += 100_000
    check.eq((p.ev_state, p.ev_gave_up), ("B", True), "gave up after 2: S2 open")
    check.true(p.cp_pos_mv > 8000, "the pilot reads B: %d mV" % p.cp_pos_mv)
    p.tick(t + 600_000)
    check.eq(p.amps[0], 0.0, "asks no more with the PWM back")
    view = p.ev_view()
    check.eq((view["gives_up_after"], view["interruptions"], view["gave_up"]), (2, 2, True), "view")


def test_an_ev_that_gives_up_ignores_stops_in_b():
    hw = _hw()
    p = _charging(hw, 267, state="B")
    p.ev_gives_up_after = 1
    hw.cp.high()
    p.tick(700_000)
    check.eq((p.ev_interruptions, p.ev_gave_up), (0, False), "not asking: not an interruption")


def test_follow_s_keeps_the_old_draw_after_a_lower_offer_or_a_stop():
    """`ev follow_s`: a car slow to follow a lower offer, or a stop (X1): it draws the old
    current that long; a higher offer it follows after the usual 0.5 s."""
    hw = _hw()
    p = _charging(hw, 267)
    p.set_follow_s(5.5)
    hw.cp.high()  # X1: the PWM stops
    p.tick(700_000)
    p.tick(6_000_000)
    check.eq(p.amps[0], 16.02, "still drawing 5.3 s after the stop")
    p.tick(6_200_000)
    check.eq(p.amps[0], 0.0, "followed 5.5 s after the stop")
    hw.cp.pwm(267)
    p.tick(6_300_000)
    p.tick(6_800_000)
    check.eq(p.amps[0], 16.02, "a higher offer after 0.5 s")
    hw.cp.pwm(100)  # 6 A
    p.tick(6_900_000)
    p.tick(12_300_000)
    check.eq(p.amps[0], 16.02, "a lower offer: 5.4 s on")
    p.tick(12_500_000)
    check.eq(p.amps[0], 6.0, "then followed")
    check.eq(p.ev_view()["follow_s"], 5.5, "shown")
    p.set_follow_s(None)
    check.eq(p.ev_view()["follow_s"], None, "back to the 0.5 s")
