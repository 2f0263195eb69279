# Board layer for the EV PLUS controller on an STM32F405 (docs/hal.md is the contract,
# pins.py the pin map, docs/hardware.md the wiring and the bench checklist).
#
# Port facts that shape this file (STYLE.md section 10): machine.Timer is virtual only,
# so the pilot uses pyb.Timer, whose callbacks are hard IRQs; Pin.irq takes hard=True.
# - CP PWM: TIM1 CH1 at 1 kHz; the pulse width is set in timer counts, integer maths
#   only, so cp.* is ISR-safe. TIM1 runs from the 168 MHz APB2 timer clock; 168 000
#   counts per period do not fit its 16 bits, so the port's timer.c divides by 5:
#   prescaler 5 (PSC 4), 33 600 counts per period (ARR 33 599), 33.6 counts per 0.1 %.
# - CP sampling in step with the PWM: TIM1's update interrupt (rising edge, start of the
#   high plateau) reads the high level; CH2 in OC_TIMING mode fires in the middle of the
#   low plateau and reads the low level. sample() copies the latest pair.
# - One ADC: every pyb.ADC converts on ADC1 (channel select, start, wait, data register).
#   A main-loop read (PP, N-PE, temperatures) marks ADC1 busy for its few microseconds,
#   and the pilot IRQs skip their sample meanwhile, so neither reading gets the other's
#   channel. docs/hal.md says why this and not a second ADC or disable_irq().
# - RCD: hard IRQ on the fault line opens the relays before anything else.
# - CAN: the on-chip bxCAN through pyb.CAN, rejoining the bus by itself after bus-off.
import array

import evplus_power as power
import evplus_system as system
import evplus_thermal as thermal
import machine
import pins
import pyb
from evplus_board import CanPort, EvPlusBoard, tethered
from machine import Pin
from micropython import const

NAME = "stm32_evplus"
_CP_FREQ = const(1000)
_FAN_FREQ = const(25000)
_ADC_FULL = const(4095)
_HI = const(0)
_LO = const(1)


def make(env):
    """The hw object of docs/hal.md. env is {} on the device."""
    return Board(env or {})


def _mv_reader(adc, busy):
    """A main-loop reader of one ADC1 channel: `busy[0]` is set while it converts, so
    the pilot IRQs leave ADC1 alone (they would select their channel under this read)."""

    def read_mv():
        busy[0] = 1
        try:
            raw = adc.read()
        finally:
            busy[0] = 0
        return raw * pins.VREF_MV // _ADC_FULL

    return read_mv


class CpPwm:
    """TIM1 CH1 PWM plus the CH2 sampling compare, both in counts. ISR-safe."""

    def __init__(self, tim, ch_pwm, ch_sample):
        self._ch = ch_pwm
        self._smp = ch_sample
        self.counts = tim.period() + 1

    def set_duty(self, duty_pm):
        n = self.counts
        pulse = duty_pm * n // 1000
        self._ch.pulse_width(pulse)
        # mid low plateau; at 100 % duty that is the period end, still the high level
        self._smp.compare((pulse + n) // 2 if pulse < n else n - 1)


class CpAdc:
    """Plateaus captured by the timer IRQs into a preallocated array; sample() converts
    the latest pair to pilot millivolts. All ISR-safe. An IRQ that finds ADC1 busy with
    a main-loop read (`busy[0]`) keeps the plateau it had: one period older at most."""

    def __init__(self, adc, busy):
        self._read = adc.read
        self._busy = busy
        self._raw = array.array("i", [0, 0])
        self.on_high = self._isr_high  # bound once, given to the timer
        self.on_low = self._isr_low
        self.hi_mv = 0
        self.lo_mv = 0

    def _isr_high(self, _tim):
        if self._busy[0]:
            return
        self._raw[_HI] = self._read()

    def _isr_low(self, _tim):
        if self._busy[0]:
            return
        self._raw[_LO] = self._read()

    def sample(self):
        # Both plateaus of one period: a timer IRQ between the two reads would pair a
        # high level with the next period's low one (a duty change, a vehicle's step).
        r = self._raw
        irq = machine.disable_irq()
        hi = r[_HI]
        lo = r[_LO]
        machine.enable_irq(irq)
        self.hi_mv = power.cp_mv(hi * pins.VREF_MV // _ADC_FULL, pins.CP_ZERO_MV,
                                 pins.CP_GAIN_X1000)
        self.lo_mv = power.cp_mv(lo * pins.VREF_MV // _ADC_FULL, pins.CP_ZERO_MV,
                                 pins.CP_GAIN_X1000)


class FanOut:
    def __init__(self, ch):
        self._ch = ch

    def set_pct(self, pct):
        self._ch.pulse_width_percent(pct)


class Tach:
    """Counts tach edges in a hard IRQ (no scheduler queue on this path)."""

    def __init__(self, pin):
        self._n = 0
        self.isr = self._isr
        pin.irq(handler=self.isr, trigger=Pin.IRQ_FALLING, hard=True)

    def _isr(self, _pin):
        self._n += 1

    def count(self):
        irq = machine.disable_irq()
        n = self._n
        self._n = 0
        machine.enable_irq(irq)
        return n


class Can(CanPort):
    """pyb.CAN with the hal.md contract: send(can_id, data), recv() -> (id, bytes)|None.

    Bus-off (too many transmit errors: a shorted or unterminated bus, a node at another
    bit rate) is left by the controller itself: auto_restart sets bxCAN's automatic
    bus-off management, which rejoins after 128 x 11 recessive bits once the bus is
    sound. Not restart(): it busy-waits for the controller to leave initialisation mode,
    which needs 11 recessive bits, and would hang the charger on a bus held dominant.
    While bus-off, send() refuses the frame (OSError, counted in `bus_off`) instead of
    leaving it in a mailbox to go out stale when the bus comes back."""

    def __init__(self, bus, bitrate):
        # APB1 42 MHz: 42e6 / (prescaler * (1 + bs1 + bs2)) = 125 kbit/s, sample 81 %
        self.dev = pyb.CAN(bus, pyb.CAN.NORMAL, prescaler=42_000_000 // (bitrate * 16),
                           sjw=1, bs1=12, bs2=3, auto_restart=True)
        self.dev.setfilter(0, pyb.CAN.MASK16, 0, (0, 0, 0, 0))  # accept every frame
        self.errors = 0
        self.bus_off = 0  # frames refused while the controller was bus-off

    def send(self, can_id, data):
        if not 0 <= can_id <= 0x7FF or len(data) > 8:
            raise ValueError("11-bit id, up to 8 bytes")
        if self.dev.state() == pyb.CAN.BUS_OFF:
            self.bus_off += 1
            raise OSError(5)  # EIO: off the bus until the controller rejoins
        self.dev.send(bytes(data), can_id, timeout=0)

    def recv(self):
        if not self.dev.any(0):
            return None
        try:
            frame = self.dev.recv(0, timeout=0)
        except OSError:
            self.errors += 1
            return None
        return (frame[0], bytes(frame[-1]))  # (id, [isext,] rtr, fmi, data)


class Board(EvPlusBoard):
    def __init__(self, env):
        self._begin(NAME, env, machine, pins)

        # Pilot: TIM1 1 kHz, CH1 PWM on PA8, CH2 sampling compare, update IRQ
        tim = pyb.Timer(pins.CP_TIMER, freq=_CP_FREQ)
        self._cp_tim = tim
        ch_pwm = tim.channel(pins.CP_CHANNEL, pyb.Timer.PWM, pin=pyb.Pin(pins.CP_PWM),
                             pulse_width=tim.period() + 1)
        self._cp_adc_dev = pyb.ADC(pyb.Pin(pins.CP_ADC))
        busy = bytearray(1)  # ADC1 taken by a main-loop read (see _mv_reader)
        self.cp_adc = CpAdc(self._cp_adc_dev, busy)
        ch_smp = tim.channel(pins.CP_SAMPLE_CHANNEL, pyb.Timer.OC_TIMING,
                             compare=tim.period(), polarity=pyb.Timer.HIGH,
                             callback=self.cp_adc.on_low)
        tim.callback(self.cp_adc.on_high)
        self._cp_out = CpPwm(tim, ch_pwm, ch_smp)
        self.cp = power.CpGenerator(self._cp_out.set_duty, machine.disable_irq,
                                    machine.enable_irq)
        self.pp_adc = power.PpAdc(_mv_reader(pyb.ADC(pyb.Pin(pins.PP_ADC)), busy),
                                  pins.VREF_MV, pins.PP_PULLUP_OHM)

        # Lock and protection (the contactors are built by _begin)
        self.lock = power.Lock(Pin(pins.LOCK_A, Pin.OUT, value=0),
                               Pin(pins.LOCK_B, Pin.OUT, value=0),
                               Pin(pins.LOCK_FB, Pin.IN, Pin.PULL_DOWN),
                               fitted=not tethered(env, pins))
        rcd_pin = Pin(pins.RCD_FAULT, Pin.IN, Pin.PULL_DOWN)
        self.rcd = power.Rcd(rcd_pin, Pin(pins.RCD_TEST, Pin.OUT, value=0), self.relays)
        rcd_pin.irq(handler=self.rcd.isr, trigger=Pin.IRQ_RISING, hard=True)
        self.pe = power.PeMonitor(Pin(pins.PE_OK, Pin.IN, Pin.PULL_DOWN),
                                  _mv_reader(pyb.ADC(pyb.Pin(pins.NPE_ADC)), busy),
                                  pins.NPE_MV_PER_V)
        self.temps = thermal.Temps((_mv_reader(pyb.ADC(pyb.Pin(pins.T_RELAY_ADC)), busy),
                                    _mv_reader(pyb.ADC(pyb.Pin(pins.T_SOCKET_ADC)), busy),
                                    _mv_reader(pyb.ADC(pyb.Pin(pins.T_ENV_ADC)), busy)),
                                   pins.VREF_MV)
        fan_tim = pyb.Timer(pins.FAN_TIMER, freq=_FAN_FREQ)
        fan_ch = fan_tim.channel(pins.FAN_CHANNEL, pyb.Timer.PWM, pin=pyb.Pin(pins.FAN_PWM),
                                 pulse_width=0)
        self._fan_out = FanOut(fan_ch)
        self._tach = Tach(Pin(pins.FAN_TACH, Pin.IN, Pin.PULL_UP))
        self.fan = thermal.Fan(self._fan_out.set_pct, self._tach.count)

        # RFID, CAN, radio
        self.rfid_spi = machine.SPI(pins.SPI_ID, baudrate=pins.SPI_BAUD, polarity=0, phase=0)
        self.rfid_cs = Pin(pins.RFID_CS, Pin.OUT, value=1)
        self.rfid_rst = Pin(pins.RFID_RST, Pin.OUT, value=0)
        self.can = Can(pins.CAN_BUS, pins.CAN_BITRATE)
        self.wlan = _wlan(self.serial, self.data_dir)

        self._finish(
            env, pins,
            meter_uart=machine.UART(pins.METER_UART, pins.METER_BAUD, timeout=0),
            rs485_uart=lambda: machine.UART(pins.RS485_UART, pins.RS485_BAUD, timeout=0),
            i2c=machine.I2C(pins.I2C_ID, freq=100_000),
            tap_light=Pin(pins.TAP_LIGHT, Pin.OUT, value=0),
            buzzer=Pin(pins.BUZZER, Pin.OUT, value=0),
        )


def _wlan(serial, data_dir):
    """network.WLAN where the build has it (CYW43 modules); else a radio-less stand-in
    so the application runs (the web app is then reachable only over a wired netif)."""
    try:
        import network

        if hasattr(network, "WLAN"):
            return system.Wlan(network, serial, data_dir)
    except ImportError:
        pass
    return system.NoWlan(serial)
