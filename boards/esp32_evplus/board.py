# Board layer for the EV PLUS controller on an ESP32-S3 (docs/hal.md is the contract,
# pins.py the pin map, docs/hardware.md the wiring and the bench checklist).
#
# Port limits that shape this file (STYLE.md section 10): ESP32 pin IRQs are always soft
# (scheduled), and its machine.Timer callbacks too (hard=True is rejected). So:
# - the RCD trip cuts the relay drive in hardware (the RDC-DD fault output gates the
#   contactor drivers); the scheduled IRQ here opens the relays in software as well,
#   latches and tells the application, but it is never the only path;
# - CP sampling is not phase-locked to the PWM: cp_adc.sample() reads a burst spanning
#   more than one 1 kHz period and keeps the min and max plateaus;
# - the fan tachometer uses the PCNT hardware (machine.Counter), never Pin.irq.
import time

import esp32
import evplus_power as power
import evplus_system as system
import evplus_thermal as thermal
import machine
import network
import pins
from evplus_board import EvPlusBoard, tethered
from evplus_cp_burst import BurstCpAdc
from evplus_mcp2515 import Mcp2515Can
from machine import ADC, PWM, Pin
from micropython import const

NAME = "esp32_evplus"
_CP_FREQ = const(1000)
_FAN_FREQ = const(25000)
_CP_BURST = const(48)  # ADC reads per sample(): ~1.3 periods at ~28 us per read
_U16_FULL = const(65535)
# NTC limits inside what the ADC reads. At 11 dB the ESP32-S3 ADC tops out near 3100 mV
# (Espressif: 0-3100 mV), chip to chip somewhat lower or higher, and its calibration is
# linear only up to about 2900 mV; an open NTC, pulled to 3.3 V, reads that top, not
# 3.3 V. So 2900 mV and above is an open sensor (or colder than -13.8 C, which this
# divider cannot tell apart: the charger then reports the sensor fault, never a made-up
# temperature). 50 mV and below is a shorted one: 50 mV is 162 C, far past every trip.
_NTC_OPEN_MV = const(2900)
_NTC_SHORT_MV = const(50)
# No cable leaves PP pulled to 3.3 V, which reads as the same top: 2900 mV (7.25 kohm
# against the 1 kohm pull-up, far above the 2.2 kohm of the last IEC 62196 window).
_PP_OPEN_MV = const(2900)


def make(env):
    """The hw object of docs/hal.md. env is {} on the device."""
    return Board(env or {})


def _adc(gpio):
    return ADC(Pin(gpio), atten=ADC.ATTN_11DB)  # 0..~3.1 V full scale


class CpOut:
    """LEDC PWM at 1 kHz. duty_u16 has 1/65535 steps: 0.1 A is 1.67 per mille."""

    def __init__(self, pwm):
        self._pwm = pwm

    def set_duty(self, duty_pm):  # ISR-safe: integer maths, < 2**30
        self._pwm.duty_u16(duty_pm * _U16_FULL // 1000)


def _mv_reader(adc):
    def read_mv():
        return adc.read_uv() // 1000

    return read_mv


class FanOut:
    def __init__(self, pwm):
        self._pwm = pwm

    def set_pct(self, pct):
        self._pwm.duty_u16(pct * _U16_FULL // 100)


class Tach:
    """Pulses since the last call, from a PCNT unit (machine.Counter, v1.26+; before
    that esp32.PCNT). Without either, counts() is 0 and the fan check reports a fault:
    a pin IRQ would drop edges behind the 8-entry scheduler queue (STYLE.md section 4)."""

    def __init__(self, pin):
        self._ctr = None
        self._last = 0
        counter = getattr(machine, "Counter", None)
        if counter is not None:
            self._ctr = counter(0, pin, edge=counter.RISING)
        elif hasattr(esp32, "PCNT"):
            self._ctr = esp32.PCNT(0, pin=pin, rising=esp32.PCNT.INCREMENT)
            self._ctr.start()

    def count(self):
        if self._ctr is None:
            return 0
        v = self._ctr.value()
        n = (v - self._last) & 0xFFFF  # the hardware counter is 16 bits
        self._last = v
        return n


class Board(EvPlusBoard):
    HARD_RESET_IS_OWN = True  # machine.reset() and a panic: a Reboot, not a PowerLoss

    def __init__(self, env):
        self._begin(NAME, env, machine, pins)

        # Pilot
        cp_pwm = PWM(Pin(pins.CP_PWM, Pin.OUT), freq=_CP_FREQ, duty_u16=_U16_FULL)
        self._cp_out = CpOut(cp_pwm)
        self.cp = power.CpGenerator(self._cp_out.set_duty, machine.disable_irq,
                                    machine.enable_irq)
        self.cp_adc = BurstCpAdc(_adc(pins.CP_ADC), _CP_BURST, pins.CP_ZERO_MV,
                                 pins.CP_GAIN_X1000)
        self.pp_adc = power.PpAdc(_mv_reader(_adc(pins.PP_ADC)), pins.VREF_MV,
                                  pins.PP_PULLUP_OHM, open_mv=_PP_OPEN_MV)

        # SPI bus: RC522, MCP2515, 74HC595
        self.rfid_cs = Pin(pins.RFID_CS, Pin.OUT, value=1)
        can_cs = Pin(pins.CAN_CS, Pin.OUT, value=1)
        self.rfid_rst = Pin(pins.RFID_RST, Pin.OUT, value=0)
        spi = machine.SPI(pins.SPI_ID, baudrate=pins.SPI_BAUD, polarity=0, phase=0,
                          sck=Pin(pins.SPI_SCK), mosi=Pin(pins.SPI_MOSI),
                          miso=Pin(pins.SPI_MISO))
        self.rfid_spi = spi
        sr = system.Hc595(spi, Pin(pins.SR_LATCH, Pin.OUT, value=0))
        self.shift = sr

        # Lock and protection (the contactors are built by _begin)
        self.lock = power.Lock(sr.bit(pins.SR_LOCK_A), sr.bit(pins.SR_LOCK_B),
                               Pin(pins.LOCK_FB, Pin.IN, Pin.PULL_DOWN),
                               fitted=not tethered(env, pins))
        rcd_pin = Pin(pins.RCD_FAULT, Pin.IN)
        self.rcd = power.Rcd(rcd_pin, sr.bit(pins.SR_RCD_TEST), self.relays)
        # Soft IRQ on this port (no hard= keyword): see the header comment.
        rcd_pin.irq(handler=self.rcd.isr, trigger=Pin.IRQ_RISING)
        self.pe = power.PeMonitor(None, _mv_reader(_adc(pins.NPE_ADC)), pins.NPE_MV_PER_V)
        self.temps = thermal.Temps((_mv_reader(_adc(pins.T_RELAY_ADC)),
                                    _mv_reader(_adc(pins.T_SOCKET_ADC)),
                                    _mv_reader(_adc(pins.T_ENV_ADC))), pins.VREF_MV,
                                   open_mv=_NTC_OPEN_MV, short_mv=_NTC_SHORT_MV)
        fan_pwm = PWM(Pin(pins.FAN_PWM, Pin.OUT), freq=_FAN_FREQ, duty_u16=0)
        self._fan_out = FanOut(fan_pwm)
        self._tach = Tach(Pin(pins.FAN_TACH, Pin.IN, Pin.PULL_UP))
        self.fan = thermal.Fan(self._fan_out.set_pct, self._tach.count)

        # CAN and radio
        self.can = Mcp2515Can(spi, can_cs, pins.CAN_XTAL_MHZ, pins.CAN_BITRATE,
                              time.ticks_ms())
        self.wlan = system.make_wlan(network, self.serial, self.data_dir)

        self._finish(
            env, pins,
            meter_uart=machine.UART(pins.METER_UART, pins.METER_BAUD, tx=pins.METER_TX,
                                    rx=pins.METER_RX, timeout=0),
            rs485_uart=lambda: machine.UART(pins.RS485_UART, pins.RS485_BAUD,
                                            tx=pins.RS485_TX, rx=pins.RS485_RX, timeout=0),
            i2c=machine.I2C(0, scl=Pin(pins.I2C_SCL), sda=Pin(pins.I2C_SDA), freq=100_000),
            tap_light=sr.bit(pins.SR_TAP_LIGHT),
            buzzer=sr.bit(pins.SR_BUZZER),
        )
