# What the two STM32 EV PLUS boards (stm32_evplus on an F405, stm32h7_evplus on an H743)
# build alike with MicroPython's `pyb` module: the pilot on a hardware timer with its two
# sampling IRQs, the ADC readers that keep out of the pilot IRQs' way, lock, RCD, earth
# monitor, NTCs, fan and tachometer, RFID bus and the serial buses (docs/hal.md,
# docs/hardware.md). The board passes its `machine`, `pyb` and pin map, so this file
# imports no port module; each board builds its own CAN controller and network.
#
# - CP PWM: TIM1 CH1 at 1 kHz; the pulse width is set in timer counts, integer maths
#   only, so cp.* is ISR-safe (the port's timer.c picks prescaler and period).
# - CP sampling in step with the PWM: TIM1's update interrupt (rising edge, start of the
#   high plateau) reads the high level; CH2 in OC_TIMING mode fires in the middle of the
#   low plateau and reads the low level. sample() copies the latest pair.
# - One ADC: every pyb.ADC converts on ADC1 (channel select, start, wait, data register).
#   A main-loop read (PP, N-PE, temperatures) marks ADC1 busy for its few microseconds,
#   and the pilot IRQs skip their sample meanwhile, so neither reading gets the other's
#   channel. docs/hal.md says why this and not a second ADC or disable_irq().
# - RCD: hard IRQ on the fault line opens the relays before anything else.
import array

import evplus_power as power
import evplus_thermal as thermal
from evplus_board import CanPort, EvPlusBoard, tethered
from micropython import const

_CP_FREQ = const(1000)
_FAN_FREQ = const(25000)
_ADC_FULL = const(4095)  # pyb.ADC reads 12 bits on the F4 and on the H7 alike
_HI = const(0)
_LO = const(1)


def mv_reader(adc, busy, vref_mv):
    """A main-loop reader of one ADC1 channel: `busy[0]` is set while it converts, so
    the pilot IRQs leave ADC1 alone (they would select their channel under this read)."""

    def read_mv():
        busy[0] = 1
        try:
            raw = adc.read()
        finally:
            busy[0] = 0
        return raw * vref_mv // _ADC_FULL

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

    def __init__(self, adc, busy, machine, pins):
        self._read = adc.read
        self._busy = busy
        self._disable_irq = machine.disable_irq
        self._enable_irq = machine.enable_irq
        self._vref = pins.VREF_MV
        self._zero = pins.CP_ZERO_MV
        self._gain = pins.CP_GAIN_X1000
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
        irq = self._disable_irq()
        hi = r[_HI]
        lo = r[_LO]
        self._enable_irq(irq)
        v = self._vref
        self.hi_mv = power.cp_mv(hi * v // _ADC_FULL, self._zero, self._gain)
        self.lo_mv = power.cp_mv(lo * v // _ADC_FULL, self._zero, self._gain)


class FanOut:
    def __init__(self, ch):
        self._ch = ch

    def set_pct(self, pct):
        self._ch.pulse_width_percent(pct)


class Tach:
    """Counts tach edges in a hard IRQ (no scheduler queue on this path)."""

    def __init__(self, pin, machine):
        self._n = 0
        self._disable_irq = machine.disable_irq
        self._enable_irq = machine.enable_irq
        self.isr = self._isr
        pin.irq(handler=self.isr, trigger=machine.Pin.IRQ_FALLING, hard=True)

    def _isr(self, _pin):
        self._n += 1

    def count(self):
        irq = self._disable_irq()
        n = self._n
        self._n = 0
        self._enable_irq(irq)
        return n


class PybCan(CanPort):
    """send(can_id, data) and recv() -> (id, bytes)|None of docs/hal.md over a pyb.CAN.
    While the controller is bus-off, send() refuses the frame (OSError, counted in
    `bus_off`) instead of leaving it in a mailbox to go out stale when the bus comes
    back; how the controller gets back on the bus is the board's (its Can)."""

    def __init__(self, dev, bus_off_state):
        self.dev = dev
        self._off = bus_off_state  # the port's pyb.CAN.BUS_OFF
        self.errors = 0
        self.bus_off = 0  # frames refused while the controller was bus-off

    def send(self, can_id, data):
        if not 0 <= can_id <= 0x7FF or len(data) > 8:
            raise ValueError("11-bit id, up to 8 bytes")
        if self.dev.state() == self._off:
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


class StmBoard(EvPlusBoard):
    """_build_stm32() makes everything but the CAN controller and the network, which
    the board then sets (`can`, `wlan`) before it calls _finish_stm32()."""

    def _build_stm32(self, name, env, machine, pyb, pins):
        self._begin(name, env, machine, pins)
        pin = machine.Pin
        vref = pins.VREF_MV

        # Pilot: TIM1 1 kHz, CH1 PWM, CH2 sampling compare, update IRQ
        tim = pyb.Timer(pins.CP_TIMER, freq=_CP_FREQ)
        self._cp_tim = tim
        ch_pwm = tim.channel(pins.CP_CHANNEL, pyb.Timer.PWM, pin=pyb.Pin(pins.CP_PWM),
                             pulse_width=tim.period() + 1)
        self._cp_adc_dev = pyb.ADC(pyb.Pin(pins.CP_ADC))
        busy = bytearray(1)  # ADC1 taken by a main-loop read (see mv_reader)
        self.cp_adc = CpAdc(self._cp_adc_dev, busy, machine, pins)
        ch_smp = tim.channel(pins.CP_SAMPLE_CHANNEL, pyb.Timer.OC_TIMING,
                             compare=tim.period(), polarity=pyb.Timer.HIGH,
                             callback=self.cp_adc.on_low)
        tim.callback(self.cp_adc.on_high)
        self._cp_out = CpPwm(tim, ch_pwm, ch_smp)
        self.cp = power.CpGenerator(self._cp_out.set_duty, machine.disable_irq,
                                    machine.enable_irq)

        def reader(name):
            return mv_reader(pyb.ADC(pyb.Pin(name)), busy, vref)

        self.pp_adc = power.PpAdc(reader(pins.PP_ADC), vref, pins.PP_PULLUP_OHM)

        # Lock and protection (the contactors are built by _begin)
        self.lock = power.Lock(pin(pins.LOCK_A, pin.OUT, value=0),
                               pin(pins.LOCK_B, pin.OUT, value=0),
                               pin(pins.LOCK_FB, pin.IN, pin.PULL_DOWN),
                               fitted=not tethered(env, pins))
        rcd_pin = pin(pins.RCD_FAULT, pin.IN, pin.PULL_DOWN)
        self.rcd = power.Rcd(rcd_pin, pin(pins.RCD_TEST, pin.OUT, value=0), self.relays)
        rcd_pin.irq(handler=self.rcd.isr, trigger=pin.IRQ_RISING, hard=True)
        self.pe = power.PeMonitor(pin(pins.PE_OK, pin.IN, pin.PULL_DOWN),
                                  reader(pins.NPE_ADC), pins.NPE_MV_PER_V)
        self.temps = thermal.Temps((reader(pins.T_RELAY_ADC), reader(pins.T_SOCKET_ADC),
                                    reader(pins.T_ENV_ADC)), vref)
        fan_tim = pyb.Timer(pins.FAN_TIMER, freq=_FAN_FREQ)
        fan_ch = fan_tim.channel(pins.FAN_CHANNEL, pyb.Timer.PWM, pin=pyb.Pin(pins.FAN_PWM),
                                 pulse_width=0)
        self._fan_out = FanOut(fan_ch)
        self._tach = Tach(pin(pins.FAN_TACH, pin.IN, pin.PULL_UP), machine)
        self.fan = thermal.Fan(self._fan_out.set_pct, self._tach.count)

        # RFID
        self.rfid_spi = machine.SPI(pins.SPI_ID, baudrate=pins.SPI_BAUD, polarity=0, phase=0)
        self.rfid_cs = pin(pins.RFID_CS, pin.OUT, value=1)
        self.rfid_rst = pin(pins.RFID_RST, pin.OUT, value=0)

    def _finish_stm32(self, env, machine, pins):
        pin = machine.Pin
        self._finish(
            env, pins,
            meter_uart=machine.UART(pins.METER_UART, pins.METER_BAUD, timeout=0),
            rs485_uart=lambda: machine.UART(pins.RS485_UART, pins.RS485_BAUD, timeout=0),
            i2c=machine.I2C(pins.I2C_ID, freq=100_000),
            tap_light=pin(pins.TAP_LIGHT, pin.OUT, value=0),
            buzzer=pin(pins.BUZZER, pin.OUT, value=0),
        )
