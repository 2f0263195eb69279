# Fake `pyb`: Timer/TimerChannel with counts, ADC, Pin, CAN, recording their set-up.
import fake_machine

timers = {}


class Pin:
    def __init__(self, name):
        self.name = name


class _Adc1:
    """The one converter behind every pyb.ADC on an F4 (the port's adc.c: ADCx is ADC1):
    read() selects its channel, converts, then takes the data register. `mid_read`, when
    set, runs once between the two, as an interrupt that reads the ADC itself may."""

    def __init__(self):
        self.channel = None  # the pyb.ADC whose pin is selected
        self.mid_read = None


adc1 = _Adc1()
adcs = {}  # pin name -> the last ADC made on it


class ADC:
    def __init__(self, pin):
        self.pin = pin
        self.raw = 2000  # what a conversion of this pin gives
        adcs[pin.name] = self

    def read(self):
        adc1.channel = self
        hook = adc1.mid_read
        if hook is not None:
            adc1.mid_read = None
            hook()
        return adc1.channel.raw


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


# Timer clocks of an STM32F405 at 168 MHz (the pyboard clock tree: APB2 84 MHz, APB1 42
# MHz, each prescaled by more than 1, so the timers run at twice their bus clock).
# select("stm32h7_evplus") sets an H743's instead.
APB2_TIMER_HZ = 168_000_000  # TIM1, TIM8-TIM11
APB1_TIMER_HZ = 84_000_000  # TIM2-TIM7, TIM12-TIM14
_clock = [APB1_TIMER_HZ, APB2_TIMER_HZ]
_TIMER_32BIT = (2, 5)  # the others count to 0xFFFF


def source_freq(n):
    return _clock[1] if n == 1 or 8 <= n <= 11 else _clock[0]


def prescaler_period(n, freq):
    """(PSC, ARR) for an integer `freq`, as the port's timer.c picks them
    (compute_prescaler_period_from_freq): the whole count at the source clock, divided by
    5, else 3, else 2 while it does not fit the counter."""
    mask = 0xFFFFFFFF if n in _TIMER_32BIT else 0xFFFF
    prescaler = 1
    period = max(1, source_freq(n) // freq)
    while period > mask:
        if period % 5 == 0:
            prescaler *= 5
            period //= 5
        elif period % 3 == 0:
            prescaler *= 3
            period //= 3
        else:
            prescaler <<= 1
            period >>= 1
    return (prescaler - 1) & 0xFFFF, (period - 1) & mask


class Timer:
    PWM = 0
    OC_TIMING = 2
    HIGH = 0

    def __init__(self, n, freq=None):
        self.n = n
        self.freq_hz = freq
        self._psc, self._period = prescaler_period(n, freq) if freq else (0, 0xFFFF)
        self.channels = {}
        self.cb = None
        timers[n] = self

    def prescaler(self):
        return self._psc

    def period(self):
        return self._period

    def source_freq(self):
        return source_freq(self.n)

    def channel(self, n, mode, pin=None, **kw):
        ch = TimerChannel(self, n, mode, kw)
        ch.pin = pin
        self.channels[n] = ch
        return ch

    def callback(self, cb):
        self.cb = cb


class BxCan:
    """bxCAN as pyb.CAN drives it: states, and bus-off with the automatic bus-off
    management auto_restart turns on."""

    NORMAL = 0
    MASK16 = 0
    STOPPED = 0
    ERROR_ACTIVE = 1
    ERROR_WARNING = 2
    ERROR_PASSIVE = 3
    BUS_OFF = 4

    def __init__(self, bus, mode=None, **kw):
        self.bus = bus
        self.sent = []
        self.rx = []
        self.init_args = None
        self._state = BxCan.STOPPED
        self.auto_restart = False
        if mode is not None:  # the port initialises the controller at once then
            self.init(mode, **kw)

    def init(self, mode, **kw):
        self.init_args = (mode, kw)
        self.auto_restart = bool(kw.get("auto_restart", False))
        self._state = BxCan.ERROR_ACTIVE

    def state(self):
        return self._state

    def go_bus_off(self):
        """What a transmit error counter past 255 does: the controller leaves the bus."""
        self._state = BxCan.BUS_OFF

    def bus_idle(self):
        """128 x 11 recessive bits on a sound bus: with automatic bus-off management
        (auto_restart) a bus-off controller rejoins; without it, it stays off."""
        if self._state == BxCan.BUS_OFF and self.auto_restart:
            self._state = BxCan.ERROR_ACTIVE

    def restart(self):
        # The port busy-waits here until the controller leaves initialisation mode (11
        # recessive bits): on a bus held dominant it never returns.
        raise AssertionError("pyb.CAN.restart() can block forever on a dominant bus")

    def setfilter(self, *a):
        self.filter = a

    def send(self, data, id, timeout=0):
        if self._state == BxCan.BUS_OFF:
            raise OSError(110)  # the mailboxes do not empty while off the bus
        self.sent.append((id, data))

    def any(self, fifo):
        return len(self.rx) > 0

    def recv(self, fifo, timeout=0):
        return self.rx.pop(0)


class FdCan(BxCan):
    """FDCAN as pyb.CAN drives it on an H7 (ports/stm32/fdcan.c, pyb_can.c): bit timing
    from baudrate= and sample_point=, auto_restart ignored (no automatic bus-off
    recovery), filters MASK/DUAL/RANGE (no MASK16), and restart() a stop and a start
    after which a bus-off controller rejoins once the bus is idle."""

    RANGE = 0
    DUAL = 1
    MASK = 2
    MASK16 = None  # not on the FDCAN

    def __init__(self, bus, mode=None, **kw):
        self.restarts = 0
        self._recovering = False
        BxCan.__init__(self, bus, mode, **kw)

    def init(self, mode, **kw):
        BxCan.init(self, mode, **kw)
        self.auto_restart = False  # fdcan.c: "(void)auto_restart"

    def restart(self):
        self.restarts += 1
        if self._state == BxCan.BUS_OFF:
            self._recovering = True  # INIT cleared: recovery runs in the hardware

    def bus_idle(self):
        if self._state == BxCan.BUS_OFF and self._recovering:
            self._recovering = False
            self._state = BxCan.ERROR_ACTIVE

    def setfilter(self, bank, mode, fifo, params, **kw):
        if mode not in (FdCan.RANGE, FdCan.DUAL, FdCan.MASK):
            raise ValueError("bank, mode, fifo or params")
        self.filter = (bank, mode, fifo, params)


CAN = BxCan

# MCU timer clocks (APB1, APB2 timers) and CAN controller per board
_MCU = {
    "stm32_evplus": ((APB1_TIMER_HZ, APB2_TIMER_HZ), BxCan),
    # H743 at 400 MHz: AHB 200 MHz, APB1 and APB2 100 MHz, timers at twice that
    # (ports/stm32: mpconfigboard_common.h bus dividers, timer.c timer_get_source_freq)
    "stm32h7_evplus": ((200_000_000, 200_000_000), FdCan),
}


def select(board):
    """The clocks and CAN controller of `board`'s MCU (the F405's for any other)."""
    global CAN
    clocks, can = _MCU.get(board, _MCU["stm32_evplus"])
    _clock[0], _clock[1] = clocks
    CAN = can


_ = fake_machine
