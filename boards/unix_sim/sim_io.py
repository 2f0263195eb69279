# Simulated actuators. Each change is recorded in the event ring; the relay and CP
# methods are ISR-safe (the firmware calls them from interrupt handlers and under
# heap_lock), so they store only small ints and existing references.
from micropython import const

from cpduty import DUTY_F, DUTY_X1

import sim_events as ev

_LOCK_TRAVEL_US = const(100_000)  # lock pin travel: feedback confirms this long after engage
_FAN_SPINUP_US = const(500_000)  # the tachometer reads 0 until the fan has spun up
FAN_RPM = const(2400)


class CpGenerator:
    """Control-pilot generator: 1 kHz PWM, static +12 V (x1) or static -12 V (state F)."""

    def __init__(self, events):
        self._events = events
        self.duty_pm = DUTY_X1  # power-on: x1, nothing offered

    def pwm(self, duty_pm):
        if not 0 <= duty_pm <= 1000:
            raise ValueError("duty_pm 0..1000")
        self._set(int(duty_pm))

    def high(self):
        self._set(DUTY_X1)

    def low(self):
        self._set(DUTY_F)

    def _set(self, duty_pm):
        if duty_pm != self.duty_pm:
            self.duty_pm = duty_pm
            self._events.record(ev.PWM, duty_pm)


class Relays:
    """Main contactors with auxiliary contacts. Relay 1: L1+L2, relay 2: L3+N."""

    def __init__(self, events):
        self._events = events
        self.closed = False  # commanded state
        # Injected faults, indexed by relay number (index 0 unused).
        self.welded = bytearray(3)
        self.stuck_open = bytearray(3)

    def close(self):
        if not self.closed:
            self.closed = True
            self._events.record(ev.RELAYS, 1)

    def open(self):
        if self.closed:
            self.closed = False
            self._events.record(ev.RELAYS, 0)

    def contact(self, n):
        """True when the main (and auxiliary) contact of relay n is physically closed."""
        if self.welded[n]:
            return True
        return self.closed and not self.stuck_open[n]

    def feedback(self, n):
        if n != 1 and n != 2:
            raise ValueError("relay 1 or 2")
        return self.contact(n)


class Lock:
    """Socket lock actuator with a feedback switch (Case B)."""

    def __init__(self, events, now_us, plant, fitted=True):
        self._events = events
        self._now_us = now_us
        self._plant = plant
        self.fitted = fitted
        self.engaged = False  # commanded
        self._since_us = 0

    def engage(self):
        if not self.engaged:
            self.engaged = True
            self._since_us = self._now_us()
            self._events.record(ev.LOCK, 1)

    def release(self):
        if self.engaged:
            self.engaged = False
            self._events.record(ev.LOCK, 0)

    def feedback(self):
        if not (self.fitted and self.engaged) or self._plant.fault("lock"):
            return False
        return self._now_us() - self._since_us >= _LOCK_TRAVEL_US


class Fan:
    def __init__(self, events, now_us, plant):
        self._events = events
        self._now_us = now_us
        self._plant = plant
        self.running = False
        self._since_us = 0

    def run(self, on):
        on = bool(on)
        if on != self.running:
            self.running = on
            self._since_us = self._now_us()
            self._events.record(ev.FAN, 1 if on else 0)

    def rpm(self):
        if not self.running or self._plant.fault("fan"):
            return 0
        if self._now_us() - self._since_us < _FAN_SPINUP_US:
            return 0
        return FAN_RPM


def _index(table, value, what):
    try:
        return table.index(value)
    except ValueError:
        raise ValueError("%s must be one of %s" % (what, " ".join(table)))


class Belt:
    """LED belt around the enclosure."""

    def __init__(self, events):
        self._events = events
        self.colour = "off"
        self.pattern = "steady"

    def set(self, colour, pattern="steady"):
        c = _index(ev.COLOURS, colour, "colour")
        p = _index(ev.PATTERNS, pattern, "pattern")
        if colour != self.colour or pattern != self.pattern:
            self.colour = ev.COLOURS[c]
            self.pattern = ev.PATTERNS[p]
            self._events.record(ev.BELT, c * 4 + p)

    def view(self):
        return {"colour": self.colour, "pattern": self.pattern}


class Leds:
    """AREA2 indicators: wifi, plug, charging, fault."""

    def __init__(self, events):
        self._events = events
        self.state = {}
        for name in ev.LED_NAMES:
            self.state[name] = ("off", "steady")

    def set(self, name, colour, pattern="steady"):
        n = _index(ev.LED_NAMES, name, "led")
        c = _index(ev.COLOURS, colour, "colour")
        p = _index(ev.PATTERNS, pattern, "pattern")
        if self.state[ev.LED_NAMES[n]] != (ev.COLOURS[c], ev.PATTERNS[p]):
            self.state[ev.LED_NAMES[n]] = (ev.COLOURS[c], ev.PATTERNS[p])
            self._events.record(ev.LEDS, n * 32 + c * 4 + p)

    def view(self):
        out = {}
        for name, (colour, pattern) in self.state.items():
            out[name] = {"colour": colour, "pattern": pattern}
        return out


class TapLight:
    """AREA3: the corners of the RFID tap area."""

    def __init__(self, events):
        self._events = events
        self.on = False

    def set(self, on):
        on = bool(on)
        if on != self.on:
            self.on = on
            self._events.record(ev.TAP_LIGHT, 1 if on else 0)


class Display:
    """AREA1 character display."""

    WIDTH = 12

    def __init__(self, events):
        self._events = events
        self.text = ""

    def show(self, text):
        if type(text) is not str:
            raise TypeError("display text must be a str")
        if len(text) > self.WIDTH:
            raise ValueError("display shows %d characters: %r" % (self.WIDTH, text))
        if text != self.text:
            self.text = text
            self._events.record_text(ev.DISPLAY, text)


class Buzzer:
    def __init__(self, events):
        self._events = events
        self.beeps = 0

    def beep(self, ms):
        if not 0 < ms <= 60_000:
            raise ValueError("beep ms 1..60000")
        self.beeps += 1
        self._events.record(ev.BUZZER, int(ms))


class ErrorReporter:
    """hw.report_error(code, active): the application announces manual codes raised and
    cleared, so tests read them from the event log."""

    def __init__(self, events):
        self._events = events
        self.active = {}

    def report(self, code, active):
        if type(code) is not str:
            raise TypeError("error code must be a str")
        active = bool(active)
        if active == (code in self.active):
            return
        if active:
            self.active[code] = True
        else:
            del self.active[code]
        self._events.record(ev.ERROR, 1 if active else 0, code)


class RecordedPin:
    """An output pin that remembers its level and how often it toggled (RS-485 DE)."""

    def __init__(self, level=0):
        self.level = level
        self.toggles = 0

    def value(self, v=None):
        if v is None:
            return self.level
        v = 1 if v else 0
        if v != self.level:
            self.level = v
            self.toggles += 1
        return None

    def __call__(self, v=None):
        return self.value(v)
