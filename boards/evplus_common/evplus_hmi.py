# Indicators and controls of the EV PLUS boards (docs/hal.md `belt`, `leds`,
# `tap_light`, `display`, `buzzer`, `button`): the WS2812 chain of the LED belt and the
# AREA2 LEDs, the LCD, the buzzer, the button. Port-neutral: the board passes pins, its
# I2C bus and machine.bitstream.
import time

from indicators import COLOURS, LED_NAMES, PATTERNS
from micropython import const

# (r, g, b) per colour, 1/4 brightness: the belt is behind a diffuser
_RGB = ((64, 64, 64), (0, 64, 0), (0, 0, 64), (64, 0, 0), (0, 0, 0))
_BLINK_SLOW_MS = const(1000)  # half-periods of the "slow" and "fast" patterns
_BLINK_FAST_MS = const(250)


class Ws2812:
    """A WS2812B chain on one pin through machine.bitstream (`bitstream`): n pixels set
    as (r, g, b), sent green, red, blue as the chip expects (WS2812B datasheet)."""

    _TIMING_NS = (400, 850, 800, 450)  # T0H, T0L, T1H, T1L at 800 kbit/s

    def __init__(self, pin, n, bitstream):
        self._pin = pin
        self._bitstream = bitstream
        self.n = n
        self.buf = bytearray(3 * n)

    def __setitem__(self, i, rgb):
        b = self.buf
        o = 3 * i
        b[o] = rgb[1]
        b[o + 1] = rgb[0]
        b[o + 2] = rgb[2]

    def __getitem__(self, i):
        b = self.buf
        o = 3 * i
        return (b[o + 1], b[o], b[o + 2])

    def write(self):
        self._bitstream(self._pin, 0, self._TIMING_NS, self.buf)


def _index(table, value, what):
    try:
        return table.index(value)
    except ValueError:
        raise ValueError("%s must be one of %s" % (what, " ".join(table))) from None


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
