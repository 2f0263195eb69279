# Fake `pyb`: Timer/TimerChannel with counts, ADC, Pin, CAN, recording their set-up.
import fake_machine

timers = {}


class Pin:
    def __init__(self, name):
        self.name = name


class ADC:
    def __init__(self, pin):
        self.pin = pin
        self.raw = 2000

    def read(self):
        return self.raw


class TimerChannel:
    def __init__(self, tim, n, mode, kw):
        self.tim = tim
        self.n = n
        self.mode = mode
        self.kw = kw
        self.pw = kw.get("pulse_width")
        self.cmp = kw.get("compare")
        self.cb = kw.get("callback")
        self.pct = None

    def pulse_width(self, v=None):
        if v is None:
            return self.pw
        self.pw = v

    def compare(self, v=None):
        if v is None:
            return self.cmp
        self.cmp = v

    def pulse_width_percent(self, v=None):
        if v is None:
            return self.pct
        self.pct = v


class Timer:
    PWM = 0
    OC_TIMING = 2
    HIGH = 0

    def __init__(self, n, freq=None):
        self.n = n
        self.freq_hz = freq
        # TIM1 on APB2 (168 MHz) at 1 kHz: prescaler 2, 56000 counts
        self._period = 168_000_000 // 3 // freq - 1 if freq else 0xFFFF
        self.channels = {}
        self.cb = None
        timers[n] = self

    def period(self):
        return self._period

    def channel(self, n, mode, pin=None, **kw):
        ch = TimerChannel(self, n, mode, kw)
        ch.pin = pin
        self.channels[n] = ch
        return ch

    def callback(self, cb):
        self.cb = cb


class CAN:
    NORMAL = 0
    MASK16 = 0

    def __init__(self, bus, mode=None, **kw):
        self.bus = bus
        self.sent = []
        self.rx = []
        self.init_args = None
        if mode is not None:  # the port initialises the controller at once then
            self.init(mode, **kw)

    def init(self, mode, **kw):
        self.init_args = (mode, kw)

    def setfilter(self, *a):
        self.filter = a

    def send(self, data, id, timeout=0):
        self.sent.append((id, data))

    def any(self, fifo):
        return len(self.rx) > 0

    def recv(self, fifo, timeout=0):
        return self.rx.pop(0)


_ = fake_machine
