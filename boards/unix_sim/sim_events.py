# Actuator event log: a fixed ring written without allocating (the relay and CP paths
# record from interrupt handlers and under heap_lock), decoded to JSON-ready dicts for the
# control socket's `events` op.
import array
from micropython import const

from cpduty import DUTY_F, DUTY_X1

# The indicator vocabulary of docs/hal.md; their indexes are what the ring stores.
from indicators import COLOURS, LED_NAMES, PATTERNS  # noqa: F401 (sim_io reads them here)

_SIZE = const(256)  # events kept; the oldest are overwritten (~5 KB of heap)
# A display text is copied into its slot (12 characters, UTF-8, up to 36 bytes): a reference would keep
# each string the application let go alive as long as its event, up to 8 KB of the
# firmware's heap on a 32-bit build that a board never holds. Allocated with the plant,
# so it counts as the simulator's heap.
_TEXT = const(36)

# `what` codes. Values are small ints; text (display, error code) goes in the object slot.
RELAYS = const(1)  # value 1 closed / 0 open (commanded)
LOCK = const(2)  # value 1 engage / 0 release (commanded)
PWM = const(3)  # value duty per-mille, -1 static +12 V, -2 static -12 V
BUZZER = const(4)  # value beep length in ms
BELT = const(5)  # value colour * 4 + pattern
LEDS = const(6)  # value name * 32 + colour * 4 + pattern
DISPLAY = const(7)  # the text, copied (record_text); value its length in bytes
ERROR = const(8)  # object: the code, value 1 raised / 0 cleared
TAP_LIGHT = const(9)  # value 1 on / 0 off
FAN = const(10)  # value 1 running / 0 stopped

NAMES = (
    None,
    "relays",
    "lock",
    "pwm_duty_pct",
    "buzzer",
    "led_belt",
    "leds",
    "display",
    "error",
    "tap_light",
    "fan",
)



def cp_name(duty_pm):
    """Generator mode of a duty value: "pwm", "+12" (x1) or "-12" (state F)."""
    if duty_pm == DUTY_X1:
        return "+12"
    if duty_pm == DUTY_F:
        return "-12"
    return "pwm"


class EventRing:
    def __init__(self, now_us, size=_SIZE):
        self._now_us = now_us  # the board clock: a stored bound method, called without alloc
        self._size = size
        self._t_us = array.array("q", bytes(8 * size))
        self._what = bytearray(size)
        self._value = array.array("i", bytes(4 * size))
        self._obj = [None] * size
        self._text = bytearray(size * _TEXT)
        self._next = 0
        self._count = 0
        self.dropped = 0  # events overwritten before anyone could read them

    def record(self, what, value, obj=None):
        """Appends one event stamped now. ISR-safe: stores ints and an existing reference."""
        i = self._next
        self._t_us[i] = self._now_us()
        self._what[i] = what
        self._value[i] = value
        self._obj[i] = obj
        i += 1
        if i == self._size:
            i = 0
        self._next = i
        if self._count < self._size:
            self._count += 1
        else:
            self.dropped += 1

    def record_text(self, what, text):
        """Appends one event carrying a copy of `text` (not from an interrupt: the
        encoding allocates)."""
        b = text.encode()[:_TEXT]
        o = self._next * _TEXT
        self._text[o : o + len(b)] = b
        self.record(what, len(b))

    def __len__(self):
        return self._count

    def since(self, since_us):
        """Events with t_us >= since_us, oldest first, as {"t_us", "what", "value"} dicts."""
        out = []
        n = self._count
        i = self._next - n
        if i < 0:
            i += self._size
        for _ in range(n):
            if self._t_us[i] >= since_us:
                out.append(self._decode(i))
            i += 1
            if i == self._size:
                i = 0
        return out

    def _decode(self, i):
        what = self._what[i]
        v = self._value[i]
        e = {"t_us": self._t_us[i], "what": NAMES[what]}
        if what == RELAYS or what == TAP_LIGHT or what == FAN:
            e["value"] = bool(v)
        elif what == LOCK:
            e["value"] = "locked" if v else "unlocked"
        elif what == PWM:
            e["value"] = v / 10 if v >= 0 else None
            e["cp"] = cp_name(v)
        elif what == BUZZER:
            e["value"] = v
        elif what == BELT:
            e["value"] = {"colour": COLOURS[v >> 2], "pattern": PATTERNS[v & 3]}
        elif what == LEDS:
            e["value"] = {
                "name": LED_NAMES[v >> 5],
                "colour": COLOURS[(v >> 2) & 7],
                "pattern": PATTERNS[v & 3],
            }
        elif what == DISPLAY:
            o = i * _TEXT
            try:
                e["value"] = bytes(self._text[o : o + v]).decode()
            except UnicodeError:  # cut inside a character past 36 bytes (not in use)
                e["value"] = "?"
        elif what == ERROR:
            e["value"] = self._obj[i]
            e["active"] = bool(v)
        return e
