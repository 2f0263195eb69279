# boards/esp32_evplus against fake machine/esp32/network/neopixel modules (fakes/).
import sys

_FAKES = (__file__.rpartition("/")[0] or ".") + "/fakes"
if _FAKES not in sys.path:
    sys.path.append(_FAKES)
import boardload  # noqa: E402
from check import assert_no_alloc, eq, true  # noqa: E402

_BOARD = "esp32_evplus"
_ENV = {"EVSE_DATA_DIR": "/tmp/evplus_esp32_test", "EVSE_SERIAL": "EVPLUS-00042"}


def _make():
    return boardload.make("esp32_evplus", _ENV)


def _pwm_on(m, gpio):
    for what, args in m.log:
        if what == "pwm" and args[0] == gpio:
            return args
    return None


def test_cp_pwm_1khz_and_duty():
    ld, hw = _make()
    try:
        pins = sys.modules["pins"]
        eq(_pwm_on(ld.machine, pins.CP_PWM)[1], 1000, "CP frequency")
        pwm = hw._cp_out._pwm
        eq(pwm.duty, 65535, "power-on CP is static +12 V")
        hw.cp.pwm(266)  # 16 A -> 26.6 %
        eq(pwm.duty, 266 * 65535 // 1000, "duty_u16 for 16 A")
        true(abs(pwm.duty / 65535 - 0.266) < 0.0001, "26.6 %")
        hw.cp.pwm(267)
        true(pwm.duty - 266 * 65535 // 1000 >= 65, "1 per mille is >= 65 counts")
        hw.cp.low()
        eq((pwm.duty, hw.cp.duty_pm), (0, -2), "state F")
        hw.cp.high()
        eq((pwm.duty, hw.cp.duty_pm), (65535, -1), "x1")
        assert_no_alloc(hw.cp.pwm, 100)
        assert_no_alloc(hw.cp.high)
    finally:
        ld.__exit__()


def test_cp_adc_plateaus():
    ld, hw = _make()
    try:
        # a 10 % PWM seen by the burst: mostly the low plateau, some high readings
        hw.cp_adc.adc.seq = [2_950_000] * 5 + [250_000] * 43
        assert_no_alloc(hw.cp_adc.sample)
        eq(hw.cp_adc.hi_mv, (2950 - 1600) * 8889 // 1000, "hi plateau")
        eq(hw.cp_adc.lo_mv, (250 - 1600) * 8889 // 1000, "lo plateau")
        true(11500 < hw.cp_adc.hi_mv < 12500 and -12500 < hw.cp_adc.lo_mv < -11500, "+-12 V")
    finally:
        ld.__exit__()


def test_rcd_irq_wiring_and_isr_opens_relays_without_alloc():
    ld, hw = _make()
    try:
        pins = sys.modules["pins"]
        p = ld.machine.pins[pins.RCD_FAULT]
        handler, trigger, kw = p.irq_args
        eq(trigger, ld.machine.Pin.IRQ_RISING, "trigger")
        eq(kw, {}, "no hard= on ESP32 (TypeError there)")
        seen = []
        seen.append(0)

        def app_cb():
            seen[0] += 1  # no allocation: item assignment of a small int

        hw.rcd.set_handler(app_cb)
        hw.relays.close()
        r1 = ld.machine.pins[pins.RELAY1]
        r2 = ld.machine.pins[pins.RELAY2]
        eq((r1.level, r2.level, hw.relays.closed), (1, 1, True), "closed")
        assert_no_alloc(handler, p)
        eq((r1.level, r2.level, hw.relays.closed), (0, 0, False), "opened by the ISR")
        eq((hw.rcd.trips, seen[0]), (1, 1), "counted and handler called")
    finally:
        ld.__exit__()


def test_pin_directions():
    ld, hw = _make()
    try:
        pins = sys.modules["pins"]
        P = ld.machine.Pin
        m = ld.machine.pins
        for gpio in (pins.RELAY1, pins.RELAY2, pins.RFID_CS, pins.CAN_CS, pins.RFID_RST,
                     pins.SR_LATCH, pins.RS485_DE):
            eq(m[gpio].mode, P.OUT, "GPIO%d mode" % gpio)
        for gpio in (pins.RELAY1_FB, pins.RELAY2_FB, pins.LOCK_FB, pins.RCD_FAULT,
                     pins.FAN_TACH, pins.BUTTON):
            eq(m[gpio].mode, P.IN, "GPIO%d mode" % gpio)
        eq(m[pins.BUTTON].pull, P.PULL_UP, "button pull-up")
        eq((m[pins.RELAY1].level, m[pins.RELAY2].level), (0, 0), "relays open at boot")
        eq(m[pins.RFID_CS].level, 1, "CS idle high")
        # relay feedback: aux contact to GND
        m[pins.RELAY1_FB].level = 0
        m[pins.RELAY2_FB].level = 1
        eq((hw.relays.feedback(1), hw.relays.feedback(2)), (True, False), "feedback")
    finally:
        ld.__exit__()


def test_shift_register_outputs_and_tasks():
    ld, hw = _make()
    try:
        pins = sys.modules["pins"]
        hw.rcd.test(True)
        eq(hw.shift.get(pins.SR_RCD_TEST), 1, "RCD test output")
        hw.rcd.test(False)
        hw.tap_light.set(True)
        eq(hw.shift.get(pins.SR_TAP_LIGHT), 1, "tap light")
        hw.buzzer.beep(1)
        eq(hw.shift.get(pins.SR_BUZZER), 1, "buzzer on")
        import time

        time.sleep_ms(3)
        hw.buzzer.poll()
        eq(hw.shift.get(pins.SR_BUZZER), 0, "buzzer off after its time")
        hw.lock.engage()
        eq((hw.shift.get(pins.SR_LOCK_A), hw.shift.get(pins.SR_LOCK_B)), (1, 0), "lock drive")
        eq(hw.tasks(None)[0][0], "board_io", "board task")
    finally:
        ld.__exit__()


def test_fan_belt_display_wlan_can_misc():
    ld, hw = _make()
    try:
        pins = sys.modules["pins"]
        eq(_pwm_on(ld.machine, pins.FAN_PWM)[1], 25000, "fan PWM frequency")
        hw.fan.run(True)
        eq(hw._fan_out._pwm.duty, 65535, "fan full on")
        hw.belt.set("green", "steady")
        hw.leds.set("fault", "red", "fast")
        hw._pixels.tick(0)
        np = hw._pixels._np
        eq(np[0], (0, 64, 0), "belt green")
        eq(np[pins.BELT_LEDS + 3], (64, 0, 0), "fault LED red")
        # WS2812B: one frame of 3 bytes per pixel, green first, at 800 kbit/s
        enc, timing, frame = ld.machine.frames[pins.NEOPIXEL]
        eq(len(frame), 3 * (pins.BELT_LEDS + 4), "frame length")
        eq((frame[0], frame[1], frame[2]), (64, 0, 0), "belt green sent G, R, B")
        eq(frame[-3:], bytes((0, 64, 0)), "fault LED red sent G, R, B")
        eq((enc, sum(timing[:2]), sum(timing[2:])), (0, 1250, 1250), "1.25 us per bit")
        hw.display.show("16A")
        eq(hw.display.text, "16A", "display")
        w = ld.network.interfaces[ld.network.AP_IF]
        eq((w.is_active, w.cfg["ssid"], w.ifcfg[0]), (True, "ACPILE_42", "192.168.1.1"), "AP")
        eq((w.cfg["authmode"], w.cfg["key"], w.cfg["max_clients"]),
           (ld.network.AUTH_WPA2_PSK, hw.wlan.ap_key, 1), "WPA2-PSK, one client (manual 8.1.1)")
        hw.wlan.set_mode("client")
        hw.wlan.connect("home", "pw")
        eq(hw.wlan.isconnected(), True, "STA connected")
        eq(hw.wlan.scan(), [("home", -60, 3)], "scan")
        eq(hw.can.recv(), None, "no MCP2515 answering: silent bus")
        eq(hw.http_addr, ("0.0.0.0", 80), "http")
        hw.wdt.start(8000)
        hw.wdt.feed()
        eq(hw.wdt._wdt.feeds, 1, "wdt fed")
        eq(hw.rs485[0].readinto(bytearray(4)), 0, "rs485 readinto gives 0, not None")
        hw.reset()
        eq(ld.machine.log[-1], ("reset", None), "machine.reset")
        m = ld.machine
        # The ESP32 port's HARD_RESET: esp_restart() (machine.reset) or a panic.
        for c, want in ((m.PWRON_RESET, "power"), (m.HARD_RESET, "reset"),
                        (m.WDT_RESET, "watchdog"), (m.SOFT_RESET, "reset")):
            m.cause[0] = c
            eq(hw.reset_cause(), want, "reset cause %d" % c)
    finally:
        ld.__exit__()


def test_ntc_beta_and_pp():
    ld, hw = _make()
    try:
        thermal = sys.modules["evplus_thermal"]
        power = sys.modules["evplus_power"]
        true(abs(thermal.ntc_c(10000) - 25.0) < 0.01, "10k at 25 C")
        true(abs(thermal.ntc_c(3588) - 50.0) < 1.0, "B3950 at 50 C")
        hw.temps._read = (lambda: 1650, lambda: 3299, lambda: 0)
        hw.temps.read()
        true(abs(hw.temps.relay_c - 25.0) < 0.2, "mid-scale is 25 C")
        eq((hw.temps.socket_c, hw.temps.env_c), (None, None), "open and shorted sensors")
        pp = power.PpAdc(lambda: 3300 * 680 // 1680)
        true(abs(pp.read_ohm() - 680) < 3, "680 ohm (20 A cable)")
        eq(power.PpAdc(lambda: 3290).read_ohm(), -1, "no cable")
    finally:
        ld.__exit__()


def test_open_and_shorted_ntc_are_faults_within_the_adc_range():
    """The ESP32-S3 ADC at 11 dB reads up to about 3.1 V: an open NTC (pulled to 3.3 V)
    reads there, not at 3.3 V, and must still be an open sensor (None), which the
    protection turns into ERR ROT / ERR OCT; so must a shorted one."""
    import fakehw
    from evse import faults
    from evse.charger import Charger
    from evse.protection import Protection

    ld, hw = _make()
    try:
        pins = sys.modules["pins"]
        adc = ld.machine.adcs
        for ceiling_uv in (3_100_000, 3_000_000, 2_950_000):  # the ADC's top, chip to chip
            adc[pins.T_RELAY_ADC].uv = ceiling_uv  # open: the pin pulled to 3.3 V
            adc[pins.T_SOCKET_ADC].uv = 30_000  # shorted: 0 V plus the ADC's offset
            adc[pins.T_ENV_ADC].uv = 1_650_000  # 25 C
            hw.temps.read()
            eq(hw.temps.relay_c, None, "open sensor at a %d mV ceiling" % (ceiling_uv // 1000))
            eq(hw.temps.socket_c, None, "shorted sensor")
            true(abs(hw.temps.env_c - 25.0) < 0.2, "a good sensor still reads")
        adc[pins.T_RELAY_ADC].uv = 2_800_000  # 56 kohm: -9.3 C, inside the range
        hw.temps.read()
        true(abs(hw.temps.relay_c + 9.3) < 0.2, "cold but readable: %r" % hw.temps.relay_c)

        # What the charger makes of the open and the shorted sensor: two faults.
        adc[pins.T_RELAY_ADC].uv = 3_100_000
        fake = fakehw.Hw()
        fake.temps = hw.temps
        ch = Charger(fake, fakehw.FakeSettings())
        prot = Protection(ch, fake, fakehw.FakeSettings(), None, "/tmp")
        prot.tick(1000)
        eq(faults.codes(ch.active), ["ROT", "OCT"], "open relay NTC, shorted socket NTC")
    finally:
        ld.__exit__()


def test_no_cable_reads_as_open_pp_within_the_adc_range():
    """hal.md: read_ohm() is -1 with no cable. The PP pull-up takes the input to 3.3 V,
    which the ESP32-S3 ADC reads as its top (about 3.1 V), not as 3.3 V."""
    ld, hw = _make()
    try:
        pins = sys.modules["pins"]
        pp = ld.machine.adcs[pins.PP_ADC]
        for ceiling_uv in (3_100_000, 2_950_000):
            pp.uv = ceiling_uv
            eq(hw.pp_adc.read_ohm(), -1, "no cable at a %d mV ceiling" % (ceiling_uv // 1000))
        pp.uv = 3_300_000 * 1500 // 2500  # 1.5 kohm: a 13 A cable
        true(abs(hw.pp_adc.read_ohm() - 1500) < 5, "13 A cable still read")
    finally:
        ld.__exit__()


def test_it_network_checks_no_neutral_earth_voltage():
    """docs/errors.md: in IT there is no neutral to compare with earth. This board has no
    continuity input, only the N-PE voltage, which is high in IT whatever the earth: it
    must not latch ERR PE there. In TN/TT the same voltage still means a lost earth."""
    import fakehw

    ld, hw = _make()
    try:
        pins = sys.modules["pins"]
        npe = ld.machine.adcs[pins.NPE_ADC]
        npe.uv = 75 * pins.NPE_MV_PER_V * 1000  # 75 V between N and PE: IT, earth sound
        hw.pe.read()
        true(abs(hw.pe.n_pe_v - 75) < 0.1, "N-PE %r V" % hw.pe.n_pe_v)
        eq(fakehw.pe_latched(hw.pe, "IT"), False, "IT: no ERR PE for the N-PE voltage")
        eq(fakehw.pe_latched(hw.pe, "TN_TT"), True, "TN/TT: the same voltage is a lost earth")
        npe.uv = 2 * pins.NPE_MV_PER_V * 1000
        eq(fakehw.pe_latched(hw.pe, "TN_TT"), False, "TN/TT, 2 V: earth sound")
    finally:
        ld.__exit__()


def test_clock_us_stays_a_small_int_across_the_tick_wrap():
    """hal.md: clock_us() is ISR-safe. On a 32-bit MCU an int of 2**30 or more is a long
    int that allocates, which a hard IRQ cannot do: the value wraps like ticks_us (every
    17.9 minutes) and readers measure intervals with ticks_diff."""
    ld, hw = boardload.make("esp32_evplus", _ENV, boot_us=0)
    try:
        import time  # fakes/fake_time.py while the board is loaded

        minute = 60 * 1_000_000
        prev = hw.clock_us()
        for m in range(1, 19):  # read once a minute, as a task would, up to 18 minutes
            ld.time.set_us(m * minute)
            now = hw.clock_us()
            assert_no_alloc(hw.clock_us)
            true(0 <= now < (1 << 30), "small int at %d min: %d" % (m, now))
            eq(time.ticks_diff(now, prev), minute, "one minute at %d min" % m)
            prev = now
    finally:
        ld.__exit__()


def test_can_controller_found_later_is_set_up_with_backoff():
    """An MCP2515 that does not answer at boot is tried again from the board task, 1 s
    later, then 2, 4 ... s apart up to 60 s; once it answers, frames flow."""
    from sim_mcp2515 import SimCanWire, SimMcp2515

    ld, hw = _make()
    try:
        eq((hw.can.ok, hw.can.inits), (False, 1), "no chip answering at boot")
        pins = sys.modules["pins"]
        # the same adapter booted at t = 0 ms, to time its retries
        hw.can = can = ld.board.Mcp2515Can(hw.rfid_spi, ld.machine.pins[pins.CAN_CS],
                                           pins.CAN_XTAL_MHZ, pins.CAN_BITRATE, 0)
        eq((can.ok, can.inits), (False, 1), "boot attempt")
        waits = []
        t = 0
        for _ in range(9):  # step 1 ms at a time across each wait to find the next try
            n = can.inits
            start = t
            while can.inits == n:
                t += 1
                can.poll(t)
            waits.append(t - start)
        eq(waits, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000], "backoff")
        eq(can.ok, False, "still no chip")
        try:
            can.send(0x100, b"\x00")
            true(False, "send without a controller must fail")
        except OSError:
            pass

        # the CAN board plugged in: the driver's SPI and CS now reach an emulated chip,
        # with a second node on the wire to acknowledge
        wire = SimCanWire()
        chip = SimMcp2515(wire)
        peer = SimMcp2515(wire)
        peer.regs[0x0E] = peer.regs[0x0F] = 0x00  # the other charger, in normal mode
        can.dev._spi, can.dev._cs = chip.spi, chip.cs
        n = can.inits
        hw._io_step(t + 59_999)
        eq((can.ok, can.inits), (False, n), "not before its time")
        hw._io_step(t + 60_000)  # through the board task's upkeep
        eq((can.ok, can.inits), (True, n + 1), "set up at the next try")
        eq(chip.opmode(), 0x00, "normal mode")
        can.send(0x321, b"\x05\x06")
        eq(chip.sent[-1][:2], (0x321, b"\x05\x06"), "frame on the wire")
        hw._io_step(t + 200_000)
        eq(can.inits, n + 1, "no set-up once it answers")
    finally:
        ld.__exit__()


def test_model_comes_from_the_pin_file():
    """On a device env is {}: the pin file says whether the socket lock and the RS-485
    transceiver are there; an environment (tests) overrides it."""
    data = {"EVSE_DATA_DIR": _ENV["EVSE_DATA_DIR"]}  # not /data of this machine
    ld, hw = boardload.make(_BOARD, data)
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


def test_hotspot_key_is_the_boards_own_and_never_open():
    import apkey

    ld, hw = _make()
    try:
        with open(_ENV["EVSE_DATA_DIR"] + "/" + apkey.FILE, "rb") as f:
            secret = f.read()
        eq(hw.wlan.ap_key, apkey.derive(secret, "EVPLUS-00042"), "from the stored secret")
        eq(hw.wlan.ap_auth, "WPA2-PSK", "contract")
        key = hw.wlan.ap_key
    finally:
        ld.__exit__()
    ld, hw = _make()  # the next boot (an upgrade, a reset of the settings): the same key
    try:
        eq(hw.wlan.ap_key, key, "kept across boots")
        # A driver that knows neither `authmode` nor `security`: the hotspot goes off.
        import evplus_system

        class Refusing(ld.network.WLAN):
            def config(self, **kw):
                if "authmode" in kw or "security" in kw:
                    raise ValueError("unknown config param")
                self.cfg.update(kw)

        class Net:
            AP_IF = ld.network.AP_IF
            STA_IF = ld.network.STA_IF
            WLAN = Refusing

        notes = []
        w = evplus_system.Wlan(Net, "EVPLUS-00042", _ENV["EVSE_DATA_DIR"], notes.append)
        ap = ld.network.interfaces[ld.network.AP_IF]
        eq((ap.is_active, "key" in ap.cfg), (False, False), "no open hotspot")
        true(notes and "WPA2" in notes[0], "logged")
        eq(w.ap_key, key, "the key is still the board's")

        class Cyw43(ld.network.WLAN):
            def config(self, **kw):
                if "authmode" in kw or "max_clients" in kw:
                    raise ValueError("unknown config param")
                self.cfg.update(kw)

        Net.WLAN = Cyw43
        evplus_system.Wlan(Net, "EVPLUS-00042", _ENV["EVSE_DATA_DIR"], notes.append)
        ap = ld.network.interfaces[ld.network.AP_IF]
        eq((ap.is_active, ap.cfg["security"], ap.cfg["key"]), (True, 0x00400004, key),
           "CYW43: WPA2-AES by `security`")
    finally:
        ld.__exit__()


def _recording_net(ld, events, refuse_while_off):
    """network with WLAN objects that record what the AP goes through; refuse_while_off:
    the ESP32's driver (esp_wifi_set_config needs the interface enabled)."""
    import apkey

    class Rec(ld.network.WLAN):
        def active(self, on=None):
            if on is not None:
                events.append(("active", self.kind, bool(on), "key" in self.cfg))
            return super().active(on)

        def config(self, **kw):
            if self.kind == ld.network.AP_IF:
                if refuse_while_off and not self.is_active:
                    raise OSError("Wifi Invalid Mode")
                events.append(("config", "key" in kw))
            super().config(**kw)

    class Net:
        AP_IF = ld.network.AP_IF
        STA_IF = ld.network.STA_IF
        WLAN = Rec

    load = apkey.load_secret

    def load_secret(d, log=None):
        events.append(("secret",))
        return load(d, log)

    apkey.load_secret = load_secret
    return Net, lambda: setattr(apkey, "load_secret", load)


def test_hotspot_is_never_up_before_its_key_is_set():
    # The secret is read (or made and written to flash) and the key derived before the
    # hotspot is switched on: a fresh ESP32's AP is open until configured.
    ld, hw = _make()
    try:
        import os

        import evplus_system

        for fresh in (True, False):
            if fresh:
                os.remove(_ENV["EVSE_DATA_DIR"] + "/ap_secret.bin")  # the first boot
            events = []
            Net, undo = _recording_net(ld, events, refuse_while_off=False)
            try:
                w = evplus_system.Wlan(Net, "EVPLUS-00042", _ENV["EVSE_DATA_DIR"], lambda m: None)
            finally:
                undo()
            ap_on = [ev for ev in events if ev[0] == "active" and ev[1] == Net.AP_IF and ev[2]]
            true(ap_on and ap_on[0][3], "hotspot on before its WPA2 key: %r" % events)
            i = events.index(("secret",))
            true(("active", Net.STA_IF, True, False) in events[:i], "radio on for the RNG")
            eq(ld.network.interfaces[Net.AP_IF].cfg["key"], w.ap_key, "keyed")
    finally:
        ld.__exit__()


def test_esp32_hotspot_gets_its_key_by_the_next_call_after_switching_on():
    # The ESP32's driver takes no configuration while the AP is off: the key is set by
    # the very call after active(True), no flash access or key derivation in between;
    # switching back to AP mode later keeps the key.
    ld, hw = _make()
    try:
        import evplus_system

        events = []
        Net, undo = _recording_net(ld, events, refuse_while_off=True)
        try:
            w = evplus_system.Wlan(Net, "EVPLUS-00042", _ENV["EVSE_DATA_DIR"], lambda m: None)
        finally:
            undo()
        ap = ld.network.interfaces[Net.AP_IF]
        eq((ap.is_active, ap.cfg["key"], ap.cfg["authmode"]),
           (True, w.ap_key, ld.network.AUTH_WPA2_PSK), "WPA2 hotspot")
        i = events.index(("active", Net.AP_IF, True, False))
        eq(events[i + 1], ("config", True), "keyed by the next call: %r" % events)
        true(events.index(("secret",)) < i, "secret read before")
        w.set_mode("client")
        del events[:]
        w.set_mode("ap")
        eq([ev for ev in events if ev[0] == "secret"], [], "key kept: no flash access")
        eq((ap.is_active, ap.cfg["key"]), (True, w.ap_key), "keyed again")
    finally:
        ld.__exit__()


def test_scan_in_ap_mode_uses_the_station_interface_and_leaves_the_hotspot_up():
    # The installer is on the hotspot when the page lists networks: the driver scans only
    # on the station interface, which AP mode keeps off.
    ld, hw = _make()
    try:
        net = ld.network
        ap = net.interfaces[net.AP_IF]
        sta = net.interfaces[net.STA_IF]
        eq((hw.wlan.mode, ap.is_active, sta.is_active), ("ap", True, False), "AP mode")
        key = ap.cfg["key"]
        ap_calls = []
        for name in ("active", "config", "ifconfig", "disconnect"):
            def rec(*a, _name=name, **kw):
                if a or kw:
                    ap_calls.append(_name)
                return getattr(net.WLAN, _name)(ap, *a, **kw)

            setattr(ap, name, rec)
        eq(hw.wlan.scan(), [("home", -60, 3)], "networks listed in AP mode")
        eq((ap.is_active, ap.cfg["key"], ap_calls), (True, key, []), "hotspot untouched")
        eq((sta.is_active, hw.wlan.mode), (False, "ap"), "station off again")

        def failing():
            raise OSError("scan failed")

        sta.scan = failing
        try:
            hw.wlan.scan()
            true(False, "the error reaches the caller")
        except OSError:
            pass
        eq((sta.is_active, ap.is_active), (False, True), "station off after a failed scan")
        del sta.scan
        hw.wlan.set_mode("client")
        eq(hw.wlan.scan(), [("home", -60, 3)], "client mode")
        eq(sta.is_active, True, "station left on in client mode")
    finally:
        ld.__exit__()


def test_a_module_that_does_not_answer_leaves_the_charger_running_without_wifi():
    ld = boardload.Loaded("esp32_evplus")
    ld.__enter__()
    try:
        ld.network.broken = True
        hw = ld.board.make(_ENV)
        eq((hw.wlan.module_ok, hw.wlan.ap_key, hw.wlan.scan(), hw.wlan.ap_clients()),
           (False, None, [], 0), "no WiFi: the WiFi LED steady red, no hotspot")
        hw.relays.close()  # the rest of the board works
        eq(hw.relays.closed, True, "relays")
    finally:
        ld.__exit__()
    ld, hw = _make()
    try:
        eq((hw.wlan.module_ok, hw.wlan.ap_max_clients), (True, 1), "a module that answers")
    finally:
        ld.__exit__()


def test_led_patterns_on_the_pixels():
    # Manual 7.1: blinking slowly (1 s on, 1 s off), blinking fast (250 ms), steady.
    ld, hw = _make()
    try:
        pins = sys.modules["pins"]
        px = hw._pixels
        np = px._np
        white, blue, off = (64, 64, 64), (0, 0, 64), (0, 0, 0)
        hw.belt.set("blue", "fast")  # pause during charging
        hw.leds.set("charging", "white", "slow")  # charging suspended
        hw.leds.set("plug", "white", "steady")  # a vehicle connected
        seen = []
        for t in (0, 250, 500, 750, 1000, 1250, 2000):
            px.tick(t)
            seen.append((np[0], np[pins.BELT_LEDS + 1], np[pins.BELT_LEDS + 2]))
        eq([s[0] for s in seen], [blue, off, blue, off, blue, off, blue], "belt fast")
        eq([s[2] for s in seen], [white] * 4 + [off, off, white], "charging LED slow")
        eq([s[1] for s in seen], [white] * 7, "plug LED steady")
        hw.belt.set("blue", "slow")  # charging
        hw.leds.set("charging", "white", "steady")
        px.tick(3000)
        eq((np[0], np[pins.BELT_LEDS + 2]), (off, white), "slow belt off in its second half")
        px.tick(4000)
        eq(np[0], blue, "and on again")
    finally:
        ld.__exit__()
