# Fake `machine` for the board tests: every object records how it was set up and used.
# Installed as sys.modules["machine"] by boardload.py only (never on the firmware's path).
log = []  # (what, args) in call order, across every object
pins = {}  # id -> the last Pin made for that id
adcs = {}  # pin id -> the last ADC made on that pin


def reset_log():
    del log[:]
    pins.clear()
    adcs.clear()
    frames.clear()
    _irq_off[0] = False
    del pending[:]
    cause[0] = PWRON_RESET


def unique_id():
    return b"\x01\x02\x03\x04\x05\x06"


def reset():
    log.append(("reset", None))


# The port's reset causes (values as on the ESP32 port); cause[0] is what reset_cause() says.
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
cause = [PWRON_RESET]


def reset_cause():
    return cause[0]


def bitstream(pin, encoding, timing, data):
    """The port bit-bangs `data` on `pin`; here the last frame per pin is kept."""
    frames[pin.id] = (encoding, timing, bytes(data))


frames = {}  # pin id -> (encoding, timing, bytes) of the last bitstream()


# Interrupts as the port masks them: an interrupt that fires while they are disabled runs
# when enable_irq() turns them back on (a hard IRQ is held pending by the NVIC; on the
# ESP32 the ISR that schedules a soft one cannot run).
_irq_off = [False]
pending = []  # (handler, arg) of interrupts held while disabled


def disable_irq():
    state = _irq_off[0]
    _irq_off[0] = True
    return state


def enable_irq(state):
    _irq_off[0] = state
    while not _irq_off[0] and pending:
        fn, arg = pending.pop(0)
        fn(arg)


def interrupt(handler, arg):
    """An interrupt: handler(arg) now, or once interrupts are enabled again."""
    if _irq_off[0]:
        pending.append((handler, arg))
    else:
        handler(arg)


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=None, pull=None, value=None):
        self.id = id
        self.mode = mode
        self.pull = pull
        self.level = 0 if value is None else value
        self.writes = 0
        self.irq_args = None
        pins[id] = self
        log.append(("pin", (id, mode, pull, value)))

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = 1 if v else 0
        self.writes += 1
        return None

    def irq(self, handler=None, trigger=3, **kw):
        self.irq_args = (handler, trigger, kw)
        return None

    def fire(self):
        """What the port does on an edge: call the handler with the pin (held while
        interrupts are disabled)."""
        interrupt(self.irq_args[0], self)


class PWM:
    def __init__(self, pin, freq=None, duty_u16=None):
        self.pin = pin
        self.freq_hz = freq
        self.duty = duty_u16
        log.append(("pwm", (pin.id, freq, duty_u16)))

    def freq(self, f=None):
        if f is None:
            return self.freq_hz
        self.freq_hz = f

    def duty_u16(self, d=None):
        if d is None:
            return self.duty
        self.duty = d


class ADC:
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        self.pin = pin
        self.atten = atten
        self.uv = 1_600_000
        self.seq = None  # optional list of values read in turn
        self._i = 0
        adcs[pin.id] = self

    def read_uv(self):
        if self.seq:
            v = self.seq[self._i % len(self.seq)]
            self._i += 1
            return v
        return self.uv

    def read_u16(self):
        return self.uv * 65535 // 3_300_000


class SPI:
    def __init__(self, id, **kw):
        self.id = id
        self.kw = kw
        self.written = []

    def write(self, buf):
        self.written.append(bytes(buf))

    def readinto(self, buf, write=0):
        for i in range(len(buf)):
            buf[i] = 0

    def write_readinto(self, out, inp):
        for i in range(len(inp)):
            inp[i] = 0


class I2C:
    def __init__(self, id, **kw):
        self.id = id
        self.kw = kw
        self.writes = 0

    def writeto(self, addr, buf):
        self.writes += 1


class UART:
    def __init__(self, id, baudrate=9600, **kw):
        self.id = id
        self.baud = baudrate
        self.kw = kw

    def write(self, buf):
        return len(buf)

    def readinto(self, buf):
        return None  # the real port returns None when nothing arrived

    def any(self):
        return 0


class RTC:
    def __init__(self):
        self.dt = None

    def datetime(self, t=None):
        if t is not None:
            self.dt = t
        return self.dt


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.feeds = 0
        log.append(("wdt", timeout))

    def feed(self):
        self.feeds += 1


class Counter:
    RISING = 1
    FALLING = 2

    def __init__(self, id, src=None, edge=1):
        self.id = id
        self.src = src
        self.edge = edge
        self.n = 0

    def value(self, v=None):
        return self.n
