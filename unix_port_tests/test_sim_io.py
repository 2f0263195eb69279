# unix_sim board: actuators, sensors and injected faults as the firmware sees them.
import os
import time

import board
import check
import sim_watchdog


def _hw(**env):
    port = 30000 + (os.urandom(1)[0] << 4)
    e = {"EVSE_DATA_DIR": "/tmp/sim_test_data", "EVSE_CAN_PORT": str(port)}
    e.update(env)
    return board.make(e)


_HAL_ATTRS = (
    "name serial clock_us cp cp_adc pp_adc relays lock rcd pe meter temps fan belt leds "
    "tap_light display buzzer button rfid_spi rfid_cs rfid_rst rs485 can wlan rtc wdt "
    "data_dir http_addr reset tasks report_error"
)


def test_every_hal_attribute_is_there():
    hw = _hw()
    for name in _HAL_ATTRS.split():
        check.true(hasattr(hw, name), "hw." + name)
    check.eq(hw.name, "unix_sim", "name")
    check.eq(hw.rs485, None, "no RS-485 without EVSE_RS485")
    check.eq(hw.http_addr, ("127.0.0.1", 8080), "http_addr")
    check.eq(hw.data_dir, "/tmp/sim_test_data", "data_dir")
    names = [n for n, _ in hw.tasks(object())]
    check.eq(names, ["sim_plant", "sim_socket"], "tasks")


def test_env_is_checked():
    check.raises(ValueError, _hw, EVSE_SIM_PORT="http")
    check.raises(ValueError, _hw, EVSE_SERIAL="X" * 26)
    hw = _hw(EVSE_SERIAL="022101000266JSS070RE3CA07", EVSE_SIM_TETHERED="1")
    check.eq(hw.wlan.ap_ssid, "ACPILE_07", "ap_ssid")
    check.eq(hw.lock.fitted, False, "tethered")


def test_clock_is_monotonic_and_allocation_free():
    hw = _hw()
    a = hw.clock_us()
    check.assert_no_alloc(hw.clock_us)
    time.sleep_ms(10)
    b = hw.clock_us()
    check.true(b - a >= 9000, "10 ms later: %d" % (b - a))


def test_relay_feedback_follows_the_command():
    hw = _hw()
    r = hw.relays
    check.eq((r.feedback(1), r.feedback(2)), (False, False), "open")
    r.close()
    check.eq((r.closed, r.feedback(1), r.feedback(2)), (True, True, True), "closed")
    check.raises(ValueError, r.feedback, 3)


def test_welded_relay_reads_closed_while_commanded_open():
    hw = _hw()
    r = hw.relays
    r.welded[1] = 1
    check.eq((r.closed, r.feedback(1), r.feedback(2)), (False, True, False), "relay 1 welded")
    r.welded[1] = 0
    r.welded[2] = 1
    check.eq((r.feedback(1), r.feedback(2)), (False, True), "relay 2 welded")


def test_stuck_open_relay_reads_open_while_commanded_closed():
    hw = _hw()
    r = hw.relays
    r.stuck_open[2] = 1
    r.close()
    check.eq((r.feedback(1), r.feedback(2)), (True, False), "relay 2 stuck open")


def test_relay_paths_allocate_nothing():
    hw = _hw()
    r = hw.relays

    def toggle():
        r.close()
        r.feedback(1)
        r.open()
        r.feedback(2)

    for _ in range(200):
        check.assert_no_alloc(toggle)
    check.assert_no_alloc(r.open)  # already open: no event
    check.eq(r.closed, False, "open")


def test_lock_confirms_after_travel_unless_faulted():
    hw = _hw()
    lk = hw.lock
    check.true(lk.fitted, "fitted by default")
    lk.engage()
    check.eq(lk.feedback(), False, "not yet: the pin travels")
    time.sleep_ms(120)
    check.eq(lk.feedback(), True, "engaged")
    lk.release()
    check.eq(lk.feedback(), False, "released")
    hw.plant.set_fault("lock", True)
    lk.engage()
    time.sleep_ms(120)
    check.eq(lk.feedback(), False, "lock fault: never confirms")


def test_fan_tach():
    hw = _hw()
    f = hw.fan
    check.eq(f.rpm(), 0, "off")
    f.run(True)
    check.eq(f.rpm(), 0, "spinning up")
    time.sleep_ms(550)
    check.eq(f.rpm(), 2400, "running")
    hw.plant.set_fault("fan", True)
    check.eq(f.rpm(), 0, "blocked")
    check.eq(f.running, True, "still commanded")


class _Trips:
    def __init__(self, relays):
        self.relays = relays
        self.count = 0
        self.relays_open_at_call = None
        self.cb = self._cb

    def _cb(self):
        self.count += 1
        self.relays_open_at_call = not self.relays.closed


def test_rcd_trip_opens_the_relays_then_calls_the_handler():
    hw = _hw()
    t = _Trips(hw.relays)
    hw.rcd.set_handler(t.cb)
    hw.relays.close()
    hw.plant.set_fault("rcd_dc", True)
    hw.rcd.update()
    check.eq((t.count, t.relays_open_at_call, hw.rcd.tripped()), (1, True, True), "trip")
    hw.plant.set_fault("rcd_ac", True)
    hw.rcd.update()
    check.eq(t.count, 1, "line already high: no second edge")
    hw.plant.set_fault("rcd_dc", False)
    hw.plant.set_fault("rcd_ac", False)
    hw.rcd.update()
    check.eq(hw.rcd.tripped(), False, "released")
    check.eq(hw.rcd.handler_allocates, False, "the handler is ISR-safe")


def test_rcd_self_test_input_trips_the_line():
    hw = _hw()
    t = _Trips(hw.relays)
    hw.rcd.set_handler(t.cb)
    hw.rcd.test(True)
    check.eq((hw.rcd.tripped(), t.count), (True, 1), "test on")
    hw.rcd.test(False)
    check.eq(hw.rcd.tripped(), False, "test off")


def test_rcd_handler_that_allocates_is_reported_and_still_called():
    hw = _hw()
    calls = []
    hw.rcd.set_handler(lambda: calls.append(bytearray(4)))  # allocates
    hw.rcd.test(True)
    check.eq(len(calls), 1, "called once, unlocked")
    check.eq(hw.rcd.handler_allocates, True, "flagged")


def test_meter_reads_the_plant_and_fails_on_fault():
    hw = _hw()
    m = hw.meter
    m.read()
    check.eq((m.volts, m.amps, m.hz, m.rotation_ok), ([230.0] * 3, [0.0] * 3, 50.0, True), "idle")
    hw.plant.set_fault("phase_rotation", True)
    m.read()
    check.eq(m.rotation_ok, False, "rotation")
    hw.plant.set_fault("internal_meter", True)
    check.raises(OSError, m.read)


def test_pe_fault():
    hw = _hw()
    hw.pe.read()
    check.eq((hw.pe.continuity, hw.pe.n_pe_v), (True, 0.0), "good earth")
    hw.plant.set_fault("pe", True)
    hw.pe.read()
    check.eq((hw.pe.continuity, hw.pe.n_pe_v), (False, 115.0), "PE broken")


def test_temps_and_pp():
    hw = _hw()
    hw.temps.read()
    check.eq((hw.temps.relay_c, hw.temps.socket_c, hw.temps.env_c), (25.0, 25.0, 25.0), "defaults")
    hw.plant.socket_c = None
    hw.temps.read()
    check.eq(hw.temps.socket_c, None, "open sensor")
    check.eq(hw.pp_adc.read_ohm(), 220, "default: a 32 A cable")
    hw.plant.pp_ohms = None
    check.eq(hw.pp_adc.read_ohm(), -1, "no cable")
    hw.plant.pp_ohms = 1500.4
    check.eq(hw.pp_adc.read_ohm(), 1500, "13 A cable, rounded")


def test_hmi_outputs_check_their_arguments():
    hw = _hw()
    check.raises(ValueError, hw.belt.set, "purple", "steady")
    check.raises(ValueError, hw.belt.set, "green", "blinking")
    check.raises(ValueError, hw.leds.set, "power", "green", "steady")
    check.raises(ValueError, hw.display.show, "X" * 13)
    check.raises(ValueError, hw.buzzer.beep, 0)
    hw.belt.set("green", "slow")
    hw.leds.set("wifi", "blue", "fast")
    hw.display.show("230.0")
    check.eq(hw.belt.view(), {"colour": "green", "pattern": "slow"}, "belt")
    check.eq(hw.leds.view()["wifi"], {"colour": "blue", "pattern": "fast"}, "wifi led")
    check.eq(hw.display.text, "230.0", "display")


def test_wlan_modes_and_uplink():
    hw = _hw()
    w = hw.wlan
    check.eq((w.mode, w.isconnected(), w.ifconfig()[0]), ("ap", False, "192.168.1.1"), "AP default")
    check.raises(OSError, w.connect, "HOME", "pw")
    w.set_mode("client")
    w.connect("HOME", "pw")
    check.eq(w.isconnected(), True, "up")
    hw.plant.wifi_up = False
    check.eq((w.isconnected(), w.ifconfig()[0]), (False, "0.0.0.0"), "uplink down")
    hw.plant.wifi_up = True
    check.eq(w.isconnected(), True, "back")
    hw.plant.wifi_networks = [("HOME", -60, "wpa2")]
    check.eq(w.scan(), [("HOME", -60, "wpa2")], "scan")
    check.raises(ValueError, w.set_mode, "mesh")


def test_hotspot_takes_one_device_at_a_time():
    # Manual 8.1.1: one device on the hotspot at a time; the status says "1 of 1".
    from evse.wifi import WifiManager

    hw = _hw()
    w = hw.wlan
    view = WifiManager(w, {"wifi_mode": "ap", "wifi_ssid": "", "wifi_password": ""}).view
    check.eq((view()["ap_clients"], view()["ap_max_clients"]), (0, 1), "nobody yet")
    hw.plant.ap_clients = 2  # a second phone tries to join
    check.eq((view()["ap_clients"], view()["ap_max_clients"]), (1, 1), "one let in")


def test_rtc_is_settable():
    hw = _hw()
    hw.rtc.set(1_700_000_000)
    check.true(abs(hw.rtc.now() - 1_700_000_000) <= 1, "set")
    check.raises(ValueError, hw.rtc.set, -5)


def test_watchdog_bites_when_not_fed():
    hw = _hw()
    cuts = []
    wdt = sim_watchdog.Watchdog(hw._safe, grace_ms=50, cut=lambda: cuts.append(1))
    hw.relays.close()
    hw.cp.pwm(267)
    wdt.start(200)
    for _ in range(5):
        time.sleep_ms(100)
        wdt.feed()
    check.eq(wdt.bitten, False, "fed in time")
    deadline = time.ticks_add(time.ticks_ms(), 2000)
    while not cuts and time.ticks_diff(deadline, time.ticks_ms()) > 0:
        time.sleep_ms(20)
    check.eq((wdt.bitten, cuts), (True, [1]), "bitten, then the power cut")
    check.eq((hw.relays.closed, hw.cp.duty_pm), (False, -1), "outputs in their reset state")
    check.raises(ValueError, wdt.start, 5)


def test_reset_exits_with_status_3():
    hw = _hw()
    hw.relays.close()
    e = check.raises(SystemExit, hw.reset)
    check.eq(e.args[0] if e.args else e.value, 3, "status")
    check.eq(hw.relays.closed, False, "relays opened first")
