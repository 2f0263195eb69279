# Port-independent adapters of the EV PLUS boards (docs/hal.md): each takes the pins,
# PWM channels and buses its board built, so the same code drives the ESP32 and the STM32
# board (boards/stm32_evplus/evp_parts.py is a link to this file) and runs against the
# fake `machine` of unix_port_tests/fakes. Nothing here imports a port module.
#
# ISR-safe methods (relays.open, cp.*, cp_adc.sample, clock_us) store small ints and call
# stored references only: no float, no tuple, no bound-method creation.
import array
import math
import time
from micropython import const

COLOURS = ("white", "green", "blue", "red", "off")
PATTERNS = ("steady", "slow", "fast")
LED_NAMES = ("wifi", "plug", "charging", "fault")
# (r, g, b) per colour, 1/4 brightness: the belt is behind a diffuser
_RGB = ((64, 64, 64), (0, 64, 0), (0, 0, 64), (64, 0, 0), (0, 0, 0))
_BLINK_SLOW_MS = const(1000)  # half-periods of the "slow" and "fast" patterns
_BLINK_FAST_MS = const(250)
_TICKS_MAX = const(0x3FFFFFFF)  # time.ticks_us() period is 2**30 on every port
_ETIMEDOUT = const(110)
_T0_K10 = const(29815)  # 25.00 degC in 0.01 K
_KELVIN = 273.15


class Clock:
    """Microseconds since boot that never wrap: the wrapping ticks_us() accumulated.

    ISR-safe while the total stays below 2**30 us (17.9 min); beyond that the int is a
    long int on a 32-bit MCU, so a hard ISR must not call it then (docs/hardware.md).
    Must be called at least once per ticks period (17.9 min): the board's `clock`
    task does that."""

    def __init__(self, ticks_us=time.ticks_us, ticks_diff=time.ticks_diff):
        self._ticks = ticks_us
        self._diff = ticks_diff
        self._last = ticks_us()
        self._total = 0

    def now_us(self):
        t = self._ticks()
        self._total += self._diff(t, self._last)
        self._last = t
        return self._total


class CpGenerator:
    """1 kHz control pilot. `set_duty` is the board's (duty_pm) -> hardware writer; it
    gets 1000 for static +12 V and 0 for static -12 V (the output stage inverts nothing:
    a 100 % duty is +12 V DC, 0 % is -12 V DC)."""

    def __init__(self, set_duty):
        self._set_duty = set_duty
        self.duty_pm = -1
        set_duty(1000)  # power-on: +12 V, nothing offered (state A/x1)

    def pwm(self, duty_pm):
        if not 0 <= duty_pm <= 1000:
            raise ValueError("duty_pm 0..1000")
        self.duty_pm = int(duty_pm)
        self._set_duty(self.duty_pm)

    def high(self):
        self.duty_pm = -1
        self._set_duty(1000)

    def low(self):
        self.duty_pm = -2
        self._set_duty(0)


def cp_mv(adc_mv, zero_mv, gain_x1000):
    """Pilot-line millivolts from the ADC pin millivolts of the level shifter
    (pilot = (adc - zero) * gain). Integers only: used from sample()."""
    return (adc_mv - zero_mv) * gain_x1000 // 1000


class Relays:
    """Two contactors (relay 1: L1+L2, relay 2: L3+N) with auxiliary-contact inputs."""

    def __init__(self, out1, out2, fb1, fb2, fb_active=0):
        self._o1 = out1
        self._o2 = out2
        self._fb = (None, fb1, fb2)
        self._fb_active = fb_active
        self.closed = False
        out1.value(0)
        out2.value(0)

    def close(self):
        self.closed = True
        self._o1.value(1)
        self._o2.value(1)

    def open(self):  # ISR-safe
        self._o1.value(0)
        self._o2.value(0)
        self.closed = False

    def feedback(self, n):
        if n != 1 and n != 2:
            raise ValueError("relay 1 or 2")
        return self._fb[n].value() == self._fb_active


class Lock:
    """Case B socket lock: an H-bridge (two pins) and the pin-engaged switch. The motor
    is pulsed for `pulse_ms`; the board's HMI task ends the pulse (no sleep here)."""

    def __init__(self, in_a, in_b, fb, fitted=True, pulse_ms=300, ticks_ms=time.ticks_ms):
        self._a = in_a
        self._b = in_b
        self._fb = fb
        self._ticks = ticks_ms
        self.fitted = fitted
        self.pulse_ms = pulse_ms
        self.engaged = False
        self._until = None
        in_a.value(0)
        in_b.value(0)

    def engage(self):
        self.engaged = True
        self._drive(1, 0)

    def release(self):
        self.engaged = False
        self._drive(0, 1)

    def _drive(self, a, b):
        if not self.fitted:
            return
        self._a.value(a)
        self._b.value(b)
        self._until = time.ticks_add(self._ticks(), self.pulse_ms)

    def poll(self):
        """Stops the motor once the pulse is over (called by the board task)."""
        if self._until is not None and time.ticks_diff(self._ticks(), self._until) >= 0:
            self._a.value(0)
            self._b.value(0)
            self._until = None

    def feedback(self):
        return self.fitted and self._fb.value() == 1


class Rcd:
    """RDC-DD fault line. `_isr` opens the relays first, counts, then calls the
    application's handler. The board wires `_isr` (bound once here) to the pin IRQ."""

    def __init__(self, fault_pin, test_pin, relays, active=1):
        self._pin = fault_pin
        self._test = test_pin
        self._relays_open = relays.open  # bound once: the ISR must not allocate
        self._active = active
        self._handler = None
        self.trips = 0
        self.isr = self._isr
        test_pin.value(0)

    def set_handler(self, cb):
        self._handler = cb

    def _isr(self, _pin):
        self._relays_open()
        self.trips += 1
        cb = self._handler
        if cb is not None:
            cb()

    def tripped(self):
        return self._pin.value() == self._active

    def test(self, on):
        self._test.value(1 if on else 0)


class PpAdc:
    """Proximity pilot: PP-PE resistor against a pull-up `r_pu_ohm` to the ADC reference.
    `read_mv` returns the ADC pin millivolts."""

    def __init__(self, read_mv, vref_mv=3300, r_pu_ohm=1000, open_mv=3200):
        self._read_mv = read_mv
        self._vref = vref_mv
        self._r_pu = r_pu_ohm
        self._open = open_mv

    def read_ohm(self):
        mv = self._read_mv()
        if mv >= self._open:
            return -1
        return self._r_pu * mv // (self._vref - mv)


def ntc_c(r_ohm, r0_ohm=10000, beta=3950):
    """NTC temperature (degC) from its resistance, Beta formula: 1/T = 1/T0 + ln(R/R0)/B."""
    inv_t = 100.0 / _T0_K10 + math.log(r_ohm / r0_ohm) / beta
    return 1.0 / inv_t - _KELVIN


class Temps:
    """Three NTC 10k B3950 on ADC inputs, each with a pull-up `r_pu_ohm` to vref.
    `read_mv` is a tuple of three callables (relay, socket, environment)."""

    def __init__(self, read_mv, vref_mv=3300, r_pu_ohm=10000, beta=3950):
        self._read = read_mv
        self._vref = vref_mv
        self._r_pu = r_pu_ohm
        self._beta = beta
        self.relay_c = self.socket_c = self.env_c = None

    def _one(self, fn):
        mv = fn()
        if mv <= 20 or mv >= self._vref - 20:
            return None  # shorted or open sensor
        r = self._r_pu * mv / (self._vref - mv)
        return round(ntc_c(r, 10000, self._beta), 1)

    def read(self):
        r = self._read
        self.relay_c = self._one(r[0])
        self.socket_c = self._one(r[1])
        self.env_c = self._one(r[2])


class PeMonitor:
    """Rectified N-PE voltage on an ADC (`mv_per_v` ADC mV per volt) and, when fitted, a
    PE continuity opto input (1 = continuity). Without the input, continuity is judged
    from the N-PE voltage: a lost PE floats far above `max_n_pe_v`."""

    def __init__(self, ok_pin, read_mv, mv_per_v=33, max_n_pe_v=30):
        self._ok = ok_pin
        self._read_mv = read_mv
        self._mv_per_v = mv_per_v
        self._max_v = max_n_pe_v
        self.continuity = True
        self.n_pe_v = 0.0

    def read(self):
        self.n_pe_v = self._read_mv() / self._mv_per_v
        if self._ok is None:
            self.continuity = self.n_pe_v < self._max_v
        else:
            self.continuity = self._ok.value() == 1


class Fan:
    """Fan on a PWM channel (`set_pct(0..100)`) and a tachometer `count()` (pulses since
    the last call, 2 per revolution)."""

    def __init__(self, set_pct, count, ticks_ms=time.ticks_ms, pulses_per_rev=2):
        self._set = set_pct
        self._count = count
        self._ticks = ticks_ms
        self._ppr = pulses_per_rev
        self._t = ticks_ms()
        self._rpm = 0
        self.running = False
        set_pct(0)

    def run(self, on):
        self.running = bool(on)
        self._set(100 if on else 0)

    def rpm(self):
        now = self._ticks()
        dt = time.ticks_diff(now, self._t)
        if dt >= 250:  # short windows are noise: keep the last figure
            self._rpm = self._count() * 60000 // (dt * self._ppr)
            self._t = now
        return self._rpm


def _index(table, value, what):
    try:
        return table.index(value)
    except ValueError:
        raise ValueError("%s must be one of %s" % (what, " ".join(table)))


class Pixels:
    """Belt and AREA2 LEDs on one NeoPixel chain: pixels [0, belt_n) are the belt, the
    next four are wifi, plug, charging, fault. `blink()` (board task) runs the patterns."""

    def __init__(self, np, belt_n):
        self._np = np
        self._belt_n = belt_n
        self.state = [(4, 0)] * (1 + len(LED_NAMES))  # (colour, pattern): belt, then LEDs
        self._phase_slow = self._phase_fast = True
        self._dirty = True

    def set(self, slot, colour, pattern):
        c = _index(COLOURS, colour, "colour")
        p = _index(PATTERNS, pattern, "pattern")
        if self.state[slot] != (c, p):
            self.state[slot] = (c, p)
            self._dirty = True

    def tick(self, now_ms):
        slow = (now_ms // _BLINK_SLOW_MS) % 2 == 0
        fast = (now_ms // _BLINK_FAST_MS) % 2 == 0
        if slow != self._phase_slow or fast != self._phase_fast:
            self._phase_slow, self._phase_fast = slow, fast
            self._dirty = True
        if not self._dirty:
            return
        self._dirty = False
        np = self._np
        for slot in range(len(self.state)):
            c, p = self.state[slot]
            on = p == 0 or (slow if p == 1 else fast)
            rgb = _RGB[c] if on else _RGB[4]
            if slot == 0:
                for i in range(self._belt_n):
                    np[i] = rgb
            else:
                np[self._belt_n + slot - 1] = rgb
        np.write()


class Belt:
    def __init__(self, pixels):
        self._px = pixels
        self.colour = "off"
        self.pattern = "steady"

    def set(self, colour, pattern="steady"):
        self._px.set(0, colour, pattern)
        self.colour = colour
        self.pattern = pattern


class Leds:
    def __init__(self, pixels):
        self._px = pixels

    def set(self, name, colour, pattern="steady"):
        self._px.set(1 + _index(LED_NAMES, name, "led"), colour, pattern)


class Hc595:
    """74HC595 output latch on the shared SPI bus (slow outputs only: lock motor, RCD
    test, buzzer, tap light). bit(n) gives a pin-like object with value(v)."""

    def __init__(self, spi, latch):
        self._spi = spi
        self._latch = latch
        self._buf = bytearray(1)
        latch.value(0)
        self._flush()

    def _flush(self):
        self._spi.write(self._buf)
        self._latch.value(1)  # RCLK rising edge copies the shift register to Q0-Q7
        self._latch.value(0)

    def put(self, n, v):
        b = self._buf
        b[0] = (b[0] | (1 << n)) if v else (b[0] & ~(1 << n))
        self._flush()

    def get(self, n):
        return (self._buf[0] >> n) & 1

    def bit(self, n):
        return _Hc595Bit(self, n)


class _Hc595Bit:
    def __init__(self, sr, n):
        self._sr = sr
        self._n = n

    def value(self, v=None):
        if v is None:
            return self._sr.get(self._n)
        self._sr.put(self._n, v)
        return None


class OutPin:
    """A plain on/off output behind `set(on)` (tap light)."""

    def __init__(self, pin):
        self._pin = pin
        self.on = False
        pin.value(0)

    def set(self, on):
        self.on = bool(on)
        self._pin.value(1 if on else 0)


class Buzzer:
    """Active piezo buzzer on a GPIO. beep() switches it on and returns; the board task
    calls poll() to switch it off."""

    def __init__(self, pin, ticks_ms=time.ticks_ms):
        self._pin = pin
        self._ticks = ticks_ms
        self._until = None
        self.beeps = 0
        pin.value(0)

    def beep(self, ms):
        if not 0 < ms <= 60000:
            raise ValueError("beep ms 1..60000")
        self.beeps += 1
        self._pin.value(1)
        self._until = time.ticks_add(self._ticks(), int(ms))

    def poll(self):
        if self._until is not None and time.ticks_diff(self._ticks(), self._until) >= 0:
            self._pin.value(0)
            self._until = None


class Button:
    """WiFi-mode push button to GND with the pull-up enabled: pressed reads 0."""

    def __init__(self, pin):
        self._pin = pin

    def pressed(self):
        return self._pin.value() == 0


# HD44780 16x2 character LCD behind a PCF8574 I2C backpack (the common "LCM1602 IIC"
# wiring: P0 RS, P1 RW, P2 E, P3 backlight, P4-P7 D4-D7). HD44780 datasheet table 6.
_LCD_RS = const(0x01)
_LCD_E = const(0x04)
_LCD_BL = const(0x08)


class Lcd1602:
    """AREA1 display: the first 12 columns of line 1. show() writes only on change."""

    WIDTH = 12

    def __init__(self, i2c, addr=0x27, sleep_us=time.sleep_us):
        self._i2c = i2c
        self._addr = addr
        self._sleep_us = sleep_us
        self._buf = bytearray(1)
        self.text = None
        self.ok = True
        try:
            for nib in (0x30, 0x30, 0x30, 0x20):  # 8-bit reset, then 4-bit mode (fig. 24)
                self._nibble(nib, 0)
                sleep_us(5000)
            for cmd in (0x28, 0x0C, 0x06, 0x01):  # 2 lines, display on, entry inc, clear
                self._byte(cmd, 0)
            sleep_us(2000)
        except OSError:
            self.ok = False  # no display fitted: show() keeps the text only

    def _nibble(self, nib, rs):
        b = self._buf
        v = (nib & 0xF0) | rs | _LCD_BL
        b[0] = v | _LCD_E
        self._i2c.writeto(self._addr, b)
        b[0] = v
        self._i2c.writeto(self._addr, b)

    def _byte(self, val, rs):
        self._nibble(val & 0xF0, rs)
        self._nibble((val << 4) & 0xF0, rs)
        self._sleep_us(50)

    def show(self, text):
        if type(text) is not str:
            raise TypeError("display text must be a str")
        if len(text) > self.WIDTH:
            raise ValueError("display shows %d characters: %r" % (self.WIDTH, text))
        if text == self.text:
            return
        self.text = text
        if not self.ok:
            return
        try:
            self._byte(0x80, 0)  # DDRAM address 0: line 1, column 1
            for ch in text + " " * (self.WIDTH - len(text)):
                c = ord(ch)
                self._byte(c if c < 128 else 0x3F, _LCD_RS)
        except OSError:
            self.ok = False


class Wlan:
    """network.WLAN in AP (ACPILE_xx, 192.168.1.1) or client mode, the hal.md contract."""

    AP_IFCONFIG = ("192.168.1.1", "255.255.255.0", "192.168.1.1", "192.168.1.1")

    def __init__(self, network, serial, ap_key=None):
        self._net = network
        self.ap_ssid = "ACPILE_" + serial[-2:].upper()
        self._ap_key = ap_key
        self._ap = network.WLAN(network.AP_IF)
        self._sta = network.WLAN(network.STA_IF)
        self.mode = None
        self.set_mode("ap")

    def set_mode(self, mode):
        if mode != "ap" and mode != "client":
            raise ValueError("mode must be 'ap' or 'client'")
        if mode == self.mode:
            return
        self.mode = mode
        if mode == "ap":
            self._sta.active(False)
            self._ap.active(True)
            if self._ap_key:
                self._ap.config(ssid=self.ap_ssid, key=self._ap_key)
            else:
                self._ap.config(ssid=self.ap_ssid)
            self._ap.ifconfig(self.AP_IFCONFIG)
        else:
            self._ap.active(False)
            self._sta.active(True)

    def scan(self):
        if self.mode != "client":
            return []
        # network scan tuples: (ssid, bssid, channel, RSSI, security, hidden)
        return [(s[0].decode(), s[3], s[4]) for s in self._sta.scan()]

    def connect(self, ssid, password=""):
        if type(ssid) is not str or not ssid:
            raise ValueError("ssid must be a non-empty str")
        if self.mode != "client":
            raise OSError("connect needs client mode")
        self._sta.connect(ssid, password)

    def disconnect(self):
        self._sta.disconnect()

    def isconnected(self):
        return self.mode == "client" and self._sta.isconnected()

    def ap_clients(self):
        if self.mode != "ap":
            return 0
        try:
            return len(self._ap.status("stations"))
        except (OSError, ValueError):
            return 0

    def ifconfig(self):
        return (self._ap if self.mode == "ap" else self._sta).ifconfig()


class Rtc:
    """Wall clock in seconds since 1970 on machine.RTC, whatever the port's epoch."""

    def __init__(self, rtc):
        self._rtc = rtc
        self._offset = 946684800 if time.gmtime(0)[0] == 2000 else 0

    def now(self):
        return time.time() + self._offset

    def set(self, epoch_s):
        y, mo, d, h, mi, s, wd, _ = time.gmtime(int(epoch_s) - self._offset)
        self._rtc.datetime((y, mo, d, wd, h, mi, s, 0))


class Wdt:
    """machine.WDT once started (it cannot be stopped), fed by the supervisor only."""

    def __init__(self, wdt_class):
        self._cls = wdt_class
        self._wdt = None

    def start(self, timeout_ms):
        if self._wdt is None:
            self._wdt = self._cls(timeout=timeout_ms)

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()


class Rs485Uart:
    """machine.UART with the hal.md readinto contract (0, never None, when nothing waits)."""

    def __init__(self, uart, baudrate):
        self._u = uart
        self.baudrate = baudrate

    def write(self, buf):
        return self._u.write(buf)

    def readinto(self, buf):
        if not self._u.any():
            return 0
        n = self._u.readinto(buf)
        return n or 0

    def any(self):
        return self._u.any()


class ErrorReporter:
    """hw.report_error(code, active): kept for the bench REPL (`hw.errors.active`)."""

    def __init__(self):
        self.active = {}

    def report(self, code, active):
        if active:
            self.active[code] = True
        else:
            self.active.pop(code, None)


def ensure_dir(os_mod, path):
    try:
        os_mod.mkdir(path)
    except OSError:
        pass  # exists


class Meter:
    """Internal MID meter (Eastron SDM630-class, Modbus RTU slave 1 on its own UART).
    A board task polls it; read() returns the last good values or raises OSError when
    none arrived for `stale_ms`."""

    def __init__(self, modbus, ticks_ms=time.ticks_ms, stale_ms=3000):
        self._mb = modbus
        self._ticks = ticks_ms
        self._stale = stale_ms
        self._good = None
        self.volts = [0.0, 0.0, 0.0]
        self.amps = [0.0, 0.0, 0.0]
        self.hz = 0.0
        self.power_w = 0.0
        self.energy_wh = 0.0
        self.rotation_ok = True
        self._vals = array.array("f", [0.0] * 18)

    def read(self):
        if self._good is None or time.ticks_diff(self._ticks(), self._good) > self._stale:
            raise OSError(_ETIMEDOUT)

    def _floats(self, data, n):
        import struct

        v = self._vals
        for i in range(n):
            v[i] = struct.unpack_from(">f", data, 4 * i)[0]

    async def poll(self):
        # SDM630 input registers: 0x0000 V1-3, 0x0006 I1-3 (float32, big-endian words)
        data = await self._mb.read_input_registers(1, 0x0000, 12)
        self._floats(data, 6)
        v = self._vals
        self.volts = [v[0], v[1], v[2]]
        self.amps = [v[3], v[4], v[5]]
        data = await self._mb.read_input_registers(1, 0x0034, 2)  # total system power W
        self._floats(data, 1)
        self.power_w = v[0]
        data = await self._mb.read_input_registers(1, 0x0046, 2)  # frequency Hz
        self._floats(data, 1)
        self.hz = v[0]
        data = await self._mb.read_input_registers(1, 0x0156, 2)  # total kWh
        self._floats(data, 1)
        self.energy_wh = v[0] * 1000.0
        self._good = self._ticks()
