# boards/stm32_evplus against fake machine/pyb/neopixel modules (fakes/). The check_*
# functions take the board's name: test_board_stm32h7 runs them on the H743 board too.
import sys

_FAKES = (__file__.rpartition("/")[0] or ".") + "/fakes"
if _FAKES not in sys.path:
    sys.path.append(_FAKES)
import boardload  # noqa: E402
from check import assert_no_alloc, eq, true  # noqa: E402

_BOARD = "stm32_evplus"
_ENV = {"EVSE_DATA_DIR": "/tmp/evplus_stm32_test", "EVSE_SERIAL": "EVPLUS-00017"}


def _make(board=_BOARD):
    if board == _BOARD:
        return boardload.make(board, _ENV)
    return boardload.make(board, dict(_ENV, EVSE_DATA_DIR="/tmp/evplus_%s_test" % board))


def test_cp_timer_1khz_counts_and_duty():
    # timer.c: 168 MHz / 1 kHz = 168 000 counts do not fit 16 bits; / 5 = 33 600 do
    check_cp_timer_1khz_counts_and_duty(_BOARD, "A8", 168_000_000, (4, 33599))


def check_cp_timer_1khz_counts_and_duty(board, pin, clock_hz, psc_arr):
    ld, hw = _make(board)
    try:
        tim = ld.pyb.timers[1]
        eq(tim.freq_hz, 1000, "TIM1 frequency")
        ch = tim.channels[1]
        eq(ch.mode, ld.pyb.Timer.PWM, "CH1 PWM")
        eq(ch.pin.name, pin, "CH1 pin")
        eq(tim.source_freq(), clock_hz, "TIM1 clock")
        eq((tim.prescaler(), tim.period()), psc_arr, "TIM1 PSC, ARR")
        n = tim.period() + 1
        eq(tim.source_freq() // ((tim.prescaler() + 1) * n), 1000, "exactly 1 kHz")
        eq(ch.pw, n, "power-on CP is static +12 V")
        hw.cp.pwm(266)  # 16 A -> 26.6 %
        eq(ch.pw, 266 * n // 1000, "pulse for 16 A")
        true(abs(ch.pw / n - 0.266) < 0.0001, "26.6 %")
        smp = tim.channels[2]
        eq(smp.mode, ld.pyb.Timer.OC_TIMING, "CH2 sampling compare")
        true(ch.pw < smp.cmp < n, "low-plateau sample inside the low part")
        hw.cp.low()
        eq((ch.pw, hw.cp.duty_pm), (0, -2), "state F")
        assert_no_alloc(hw.cp.pwm, 100)
        assert_no_alloc(hw.cp.high)
        eq(ch.pw, n, "x1")
    finally:
        ld.__exit__()


def test_cp_tenth_of_an_amp_steps_are_distinct_pulses():
    check_cp_tenth_of_an_amp_steps_are_distinct_pulses(_BOARD)


def check_cp_tenth_of_an_amp_steps_are_distinct_pulses(board):
    """Every 0.1 A offer from 6 A to 80 A gives its own pulse width (in TIM1 counts)
    where the offers' per-mille duties differ (pilot.duty_pm: 1 per mille = 33.6 counts)."""
    from evse import pilot

    ld, hw = _make(board)
    try:
        ch = ld.pyb.timers[1].channels[1]
        pulses = {}
        for tenth in range(60, 801):
            duty = pilot.duty_pm(tenth / 10)
            hw.cp.pwm(duty)
            pulses.setdefault(duty, set()).add(ch.pw)
        true(all(len(p) == 1 for p in pulses.values()), "one pulse per duty")
        widths = sorted(p.pop() for p in pulses.values())
        eq(len(set(widths)), len(widths), "distinct pulses")
        steps = [pilot.duty_pm(t / 10) for t in range(60, 511)]
        eq(len(set(steps)), len(steps), "6-51 A: each 0.1 A its own duty")
    finally:
        ld.__exit__()


def test_cp_sampling_irqs_in_step():
    check_cp_sampling_irqs_in_step(_BOARD)


def check_cp_sampling_irqs_in_step(board):
    ld, hw = _make(board)
    try:
        tim = ld.pyb.timers[1]
        adc = hw.cp_adc
        true(tim.cb is not None, "update IRQ wired")
        true(tim.channels[2].cb is not None, "CH2 compare IRQ wired")
        adc_obj = hw._cp_adc_dev
        adc_obj.raw = 3660  # 2.95 V: +12 V on the pilot
        assert_no_alloc(tim.cb, tim)
        adc_obj.raw = 310  # 0.25 V: -12 V
        assert_no_alloc(tim.channels[2].cb, tim)
        assert_no_alloc(adc.sample)
        true(11500 < adc.hi_mv < 12500, "hi plateau %d" % adc.hi_mv)
        true(-12500 < adc.lo_mv < -11500, "lo plateau %d" % adc.lo_mv)
    finally:
        ld.__exit__()


def test_cp_irq_in_the_middle_of_a_main_loop_read_changes_neither_reading():
    check_cp_irq_in_the_middle_of_a_main_loop_read_changes_neither_reading(_BOARD)


def check_cp_irq_in_the_middle_of_a_main_loop_read_changes_neither_reading(board):
    """Every pyb.ADC converts on ADC1: the pilot's timer IRQs must not select the CP
    channel under a PP, N-PE or temperature read that is under way (0.25 V of the CP
    low plateau read as an NTC is 94 C: a false over-temperature trip)."""
    ld, hw = _make(board)
    try:
        pins = sys.modules["pins"]
        pyb = ld.pyb
        tim = pyb.timers[1]
        cp = hw._cp_adc_dev
        cp.raw = 310  # 0.25 V: the -12 V plateau
        adcs = pyb.adcs
        adcs[pins.T_RELAY_ADC].raw = adcs[pins.T_SOCKET_ADC].raw = 2048  # 1.65 V: 25 C
        adcs[pins.T_ENV_ADC].raw = 2048
        adcs[pins.PP_ADC].raw = 4095 * 220 // 1220  # 220 ohm under 1 kohm: a 32 A cable
        adcs[pins.NPE_ADC].raw = 0  # no neutral-earth voltage

        def irq():
            tim.cb(tim)  # rising edge: high plateau
            tim.channels[2].cb(tim)  # mid low plateau

        for what, read in (("temps", hw.temps.read), ("pe", hw.pe.read)):
            pyb.adc1.mid_read = irq
            read()
            eq(pyb.adc1.mid_read, None, "the IRQ fired inside the %s read" % what)
        true(abs(hw.temps.relay_c - 25.0) < 0.5, "relay %r C" % hw.temps.relay_c)
        eq(hw.pe.n_pe_v, 0.0, "N-PE")
        pyb.adc1.mid_read = irq
        ohm = hw.pp_adc.read_ohm()
        true(abs(ohm - 220) < 5, "PP %d ohm" % ohm)
        pyb.adc1.mid_read = irq  # the first temperature read of the next cycle
        hw.temps.read()
        true(abs(hw.temps.socket_c - 25.0) < 0.5, "socket %r C" % hw.temps.socket_c)

        # Outside a main-loop read the IRQs sample the pilot as before.
        cp.raw = 3660
        assert_no_alloc(tim.cb, tim)
        cp.raw = 310
        assert_no_alloc(tim.channels[2].cb, tim)
        hw.cp_adc.sample()
        true(11500 < hw.cp_adc.hi_mv < 12500, "hi plateau %d" % hw.cp_adc.hi_mv)
        true(-12500 < hw.cp_adc.lo_mv < -11500, "lo plateau %d" % hw.cp_adc.lo_mv)
    finally:
        ld.__exit__()


def test_it_network_judges_the_continuity_input_only():
    check_it_network_judges_the_continuity_input_only(_BOARD)


def check_it_network_judges_the_continuity_input_only(board):
    """docs/errors.md: in IT only PE continuity counts (this board's opto input); the
    N-PE voltage, high in IT, latches ERR PE only in TN/TT."""
    import fakehw

    ld, hw = _make(board)
    try:
        pins = sys.modules["pins"]
        ld.pyb.adcs[pins.NPE_ADC].raw = 75 * pins.NPE_MV_PER_V * 4095 // pins.VREF_MV
        opto = ld.machine.pins[pins.PE_OK]
        opto.level = 1  # earth present
        eq(fakehw.pe_latched(hw.pe, "IT"), False, "IT, earth present, 75 V N-PE")
        eq(fakehw.pe_latched(hw.pe, "TN_TT"), True, "TN/TT: 75 V N-PE is an earth fault")
        opto.level = 0
        eq(fakehw.pe_latched(hw.pe, "IT"), True, "IT: lost continuity trips")
    finally:
        ld.__exit__()


def test_rcd_hard_irq_opens_relays_without_alloc():
    check_rcd_hard_irq_opens_relays_without_alloc(_BOARD)


def check_rcd_hard_irq_opens_relays_without_alloc(board):
    ld, hw = _make(board)
    try:
        pins = sys.modules["pins"]
        p = ld.machine.pins[pins.RCD_FAULT]
        handler, trigger, kw = p.irq_args
        eq(trigger, ld.machine.Pin.IRQ_RISING, "trigger")
        eq(kw, {"hard": True}, "hard IRQ on STM32")
        hw.relays.close()
        assert_no_alloc(handler, p)
        r1 = ld.machine.pins[pins.RELAY1]
        r2 = ld.machine.pins[pins.RELAY2]
        eq((r1.level, r2.level, hw.relays.closed), (0, 0, False), "opened by the ISR")
        eq(hw.rcd.trips, 1, "counted")
        hw.rcd.test(True)
        eq(ld.machine.pins[pins.RCD_TEST].level, 1, "test output")
    finally:
        ld.__exit__()


def test_pin_directions_and_tach():
    check_pin_directions_and_tach(_BOARD)


def check_pin_directions_and_tach(board):
    ld, hw = _make(board)
    try:
        pins = sys.modules["pins"]
        P = ld.machine.Pin
        m = ld.machine.pins
        for name in (pins.RELAY1, pins.RELAY2, pins.LOCK_A, pins.LOCK_B, pins.RCD_TEST,
                     pins.TAP_LIGHT, pins.BUZZER, pins.RFID_CS, pins.RFID_RST, pins.RS485_DE):
            eq(m[name].mode, P.OUT, "%s mode" % name)
        for name in (pins.RELAY1_FB, pins.RELAY2_FB, pins.LOCK_FB, pins.RCD_FAULT, pins.PE_OK,
                     pins.FAN_TACH, pins.BUTTON):
            eq(m[name].mode, P.IN, "%s mode" % name)
        tach = m[pins.FAN_TACH]
        eq(tach.irq_args[2], {"hard": True}, "tach counts in a hard IRQ")
        for _ in range(10):
            assert_no_alloc(tach.irq_args[0], tach)
        eq(hw._tach.count(), 10, "tach pulses")
        fan = ld.pyb.timers[pins.FAN_TIMER]
        eq(fan.freq_hz, 25000, "fan PWM 25 kHz")
        eq(fan.channels[pins.FAN_CHANNEL].pin.name, pins.FAN_PWM, "fan PWM pin")
        hw.fan.run(True)
        eq(fan.channels[pins.FAN_CHANNEL].pct, 100, "fan on")
    finally:
        ld.__exit__()


def test_can_contract_and_misc():
    ld, hw = _make()
    try:
        dev = hw.can.dev
        mode, kw = dev.init_args
        eq(42_000_000 // (kw["prescaler"] * (1 + kw["bs1"] + kw["bs2"])), 125000, "bit rate")
        hw.can.send(0x123, b"\x01\x02")
        eq(dev.sent, [(0x123, b"\x01\x02")], "sent")
        eq(hw.can.recv(), None, "nothing waiting")
        dev.rx.append((0x456, False, False, 0, b"\x09"))
        eq(hw.can.recv(), (0x456, b"\x09"), "received")
        eq(hw.wlan.ap_ssid, "ACPILE_17", "AP SSID")
        eq(hw.http_addr, ("0.0.0.0", 80), "http")
        eq(hw.data_dir, "/tmp/evplus_stm32_test", "data dir")
        hw.display.show("READY")
        eq(hw.display.text, "READY", "display")
        hw.reset()
        eq(ld.machine.log[-1], ("reset", None), "machine.reset")
    finally:
        ld.__exit__()


def test_can_leaves_bus_off_by_itself():
    """auto_restart: bxCAN rejoins after bus-off once the bus is sound, without restart()
    (which can block); while off, frames are refused, not left to go out stale."""
    ld, hw = _make()
    try:
        dev = hw.can.dev
        eq(dev.init_args[1].get("auto_restart"), True, "automatic bus-off management")
        hw.can.send(0x101, b"\x01")
        dev.go_bus_off()
        try:
            hw.can.send(0x102, b"\x02")
            true(False, "send while bus-off must fail")
        except OSError:
            pass
        eq((hw.can.bus_off, dev.sent), (1, [(0x101, b"\x01")]), "refused while off the bus")
        hw._io_step(0)  # the board task's upkeep must not call the blocking restart()
        dev.bus_idle()
        eq(dev.state(), dev.ERROR_ACTIVE, "rejoined by itself")
        hw.can.send(0x103, b"\x03")
        eq(dev.sent[-1], (0x103, b"\x03"), "frames go out again")
    finally:
        ld.__exit__()


def test_model_comes_from_the_pin_file():
    check_model_comes_from_the_pin_file(_BOARD)


def check_model_comes_from_the_pin_file(board):
    """On a device env is {}: the pin file says whether the socket lock and the RS-485
    transceiver are there; an environment (tests) overrides it."""
    data = {"EVSE_DATA_DIR": "/tmp/evplus_%s_test" % board}  # not /data of this machine
    ld, hw = boardload.make(board, data)
    try:
        pins = sys.modules["pins"]
        eq((pins.TETHERED, pins.RS485), (0, 1), "the pin map's model: socket, RS-485")
        eq(hw.lock.fitted, True, "socket lock fitted")
        true(hw.rs485 is not None, "RS-485 opened")
        pins.TETHERED = 1  # the same pin file, edited for a tethered model without RS-485
        pins.RS485 = 0
        hw = ld.board.make(data)
        eq((hw.lock.fitted, hw.rs485), (False, None), "tethered model, no RS-485")
        hw = ld.board.make(dict(data, EVSE_TETHERED="0", EVSE_RS485="1"))
        eq(hw.lock.fitted, True, "overridden by the environment")
        true(hw.rs485 is not None, "RS-485 overridden by the environment")
    finally:
        ld.__exit__()


def test_without_a_network_the_web_server_waits_and_the_charger_keeps_charging():
    """An image without a network interface cannot listen ("no available NIC"): the web
    app's task logs it and waits to try again instead of dying, so the supervisor never
    puts the charger in its safe state for it (a charge on the F405 would end each time)."""
    import asyncio

    from check import tmpdir

    ld, hw = boardload.make(_BOARD, dict(_ENV, EVSE_DATA_DIR=tmpdir("stm32_no_nic")))
    try:
        from evse.app import App

        app = App(hw)
        hw.http_addr = ("192.0.2.1", 80)  # no interface has it: bind() fails as without a NIC
        stops = []
        app.charger.emergency_stop = lambda: stops.append(1)

        async def main():
            task = asyncio.create_task(app._http_task())
            await asyncio.sleep_ms(300)
            alive = not task.done()
            task.cancel()
            return alive

        true(asyncio.run(main()), "the web app's task waits: it did not die")
        eq(stops, [], "no safe state")
        eq(app.http._sock, None, "not listening")
    finally:
        ld.__exit__()
