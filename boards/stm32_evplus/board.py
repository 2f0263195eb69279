# Board layer for the EV PLUS controller on an STM32F405 (docs/hal.md is the contract,
# pins.py the pin map, docs/hardware.md the wiring and the bench checklist). The pilot,
# ADC, lock, RCD, fan and buses are built as on every STM32 board
# (boards/evplus_common/evplus_stm32.py, which says how); this file adds the CAN
# controller and the radio where the build has one.
#
# Port facts that shape this file (STYLE.md section 10): machine.Timer is virtual only,
# so the pilot uses pyb.Timer, whose callbacks are hard IRQs; Pin.irq takes hard=True.
# TIM1 runs from the 168 MHz APB2 timer clock; 168 000 counts per 1 kHz period do not
# fit its 16 bits, so the port's timer.c divides by 5: prescaler 5 (PSC 4), 33 600
# counts per period (ARR 33 599), 33.6 counts per 0.1 %.
# CAN: the on-chip bxCAN through pyb.CAN, rejoining the bus by itself after bus-off.
import evplus_stm32 as stm
import evplus_system as system
import machine
import pins
import pyb

NAME = "stm32_evplus"


def make(env):
    """The hw object of docs/hal.md. env is {} on the device."""
    return Board(env or {})


class Can(stm.PybCan):
    """bxCAN through pyb.CAN (send/recv: evplus_stm32.PybCan).

    Bus-off (too many transmit errors: a shorted or unterminated bus, a node at another
    bit rate) is left by the controller itself: auto_restart sets bxCAN's automatic
    bus-off management, which rejoins after 128 x 11 recessive bits once the bus is
    sound. Not restart(): it busy-waits for the controller to leave initialisation mode,
    which needs 11 recessive bits, and would hang the charger on a bus held dominant.
    While bus-off, send() refuses the frame."""

    def __init__(self, bus, bitrate):
        # APB1 42 MHz: 42e6 / (prescaler * (1 + bs1 + bs2)) = 125 kbit/s, sample 81 %
        dev = pyb.CAN(bus, pyb.CAN.NORMAL, prescaler=42_000_000 // (bitrate * 16),
                      sjw=1, bs1=12, bs2=3, auto_restart=True)
        dev.setfilter(0, pyb.CAN.MASK16, 0, (0, 0, 0, 0))  # accept every frame
        super().__init__(dev, pyb.CAN.BUS_OFF)


class Board(stm.StmBoard):
    def __init__(self, env):
        self._build_stm32(NAME, env, machine, pyb, pins)
        self.can = Can(pins.CAN_BUS, pins.CAN_BITRATE)
        self.wlan = _wlan(self.serial, self.data_dir)
        self._finish_stm32(env, machine, pins)


def _wlan(serial, data_dir):
    """network.WLAN where the build has it (CYW43 modules); else a radio-less stand-in
    so the application runs (the web app is then reachable only over a wired netif)."""
    try:
        import network

        if hasattr(network, "WLAN"):
            return system.make_wlan(network, serial, data_dir)
    except ImportError:
        pass
    return system.NoWlan(serial)
