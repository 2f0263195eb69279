# Board layer for the EV PLUS controller on a NUCLEO-H743ZI2 (docs/hal.md is the
# contract, pins.py the pin map, docs/hardware.md the wiring, the image and the bench
# checklist): the STM32 target with a network, so the web app and OCPP run over the
# Nucleo's Ethernet. The pilot, ADC, lock, RCD, fan and buses are built as on every STM32
# board (boards/evplus_common/evplus_stm32.py, which says how); this file adds the FDCAN
# controller and the wired interface.
#
# Port facts that shape this file (STYLE.md section 10; MicroPython v1.28.0 ports/stm32):
# - TIM1 runs from the 200 MHz APB2 timer clock (400 MHz core, AHB and APB2 divided by
#   2, timer clock twice APB2): 200 000 counts per 1 kHz period do not fit 16 bits, so
#   timer.c divides by 5: prescaler 5 (PSC 4), 40 000 counts per period (ARR 39 999),
#   40 counts per 0.1 %.
# - pyb.CAN is an FDCAN here (fdcan.c): auto_restart is ignored, as the FDCAN has no
#   automatic bus-off recovery; see Can below.
# - network.LAN: the on-board LAN8742 PHY over RMII, lwIP with DHCP (eth.c).
import time

import evplus_stm32 as stm
import evplus_system as system
import machine
import network
import pins
import pyb
from micropython import const

NAME = "stm32h7_evplus"
_RESTART_MS = const(1000)  # between two restarts of a bus-off FDCAN


def make(env):
    """The hw object of docs/hal.md. env is {} on the device."""
    return Board(env or {})


class Can(stm.PybCan):
    """pyb.CAN on the H7's FDCAN (send/recv: evplus_stm32.PybCan).

    Bus-off (too many transmit errors: a shorted or unterminated bus, a node at another
    bit rate) stops the FDCAN, and it has no automatic recovery: poll(), which the board
    task calls every 50 ms, restarts it at once and then once a second while it is off.
    The port's restart() on the FDCAN is the HAL's stop (a bounded count of register
    polls) and start (it clears INIT): unlike bxCAN's, it does not wait for the bus; the
    controller then rejoins by itself after 128 x 11 recessive bits once the bus is
    sound. While bus-off, send()
    refuses the frame."""

    def __init__(self, bus, bitrate, sample_pct):
        # baudrate=: the port derives prescaler and segments from the FDCAN's own clock.
        # The constructor takes every keyword of init() (pyb_can.c make_new passes them
        # on); the stubs list only the bxCAN ones, hence the dict.
        timing = {"baudrate": bitrate, "sample_point": sample_pct}
        dev = pyb.CAN(bus, pyb.CAN.NORMAL, **timing)
        dev.setfilter(0, pyb.CAN.MASK, 0, (0, 0))  # id 0, mask 0: every frame
        super().__init__(dev, pyb.CAN.BUS_OFF)
        self.restarts = 0
        self._next_ms = None  # the next restart while bus-off; None while on the bus

    def poll(self, now_ms):
        if self.dev.state() != pyb.CAN.BUS_OFF:
            self._next_ms = None  # no deadline kept across the ticks wrap
            return
        nxt = self._next_ms
        if nxt is not None and time.ticks_diff(now_ms, nxt) < 0:
            return
        self._next_ms = time.ticks_add(now_ms, _RESTART_MS)
        self.restarts += 1
        try:
            self.dev.restart()
        except (OSError, ValueError):
            self.errors += 1


class Board(stm.StmBoard):
    def __init__(self, env):
        self._build_stm32(NAME, env, machine, pyb, pins)
        self.can = Can(pins.CAN_BUS, pins.CAN_BITRATE, pins.CAN_SAMPLE_PCT)
        self.wlan = system.Lan(network, self.serial)
        self._finish_stm32(env, machine, pins)
