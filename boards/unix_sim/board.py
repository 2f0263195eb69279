# Board layer of the MicroPython unix port: the charger's hardware as a simulated plant
# (docs/hal.md is the contract, docs/simulator.md the model and the control socket).
import asyncio
import gc
import os
import time
from micropython import const

# The simulator's own heap (its modules, the plant, the chip emulations, the event ring)
# is measured from here to the end of make(): sim_heap, reported apart from the firmware's
# (docs/development.md "The firmware's heap and the simulator's").
gc.collect()
_HEAP_BEFORE_SIM = gc.mem_alloc()

import sim_can
import sim_io
import sim_rc522
import sim_sensors
import sim_socket
from sim_clock import Clock, Rtc
from sim_events import EventRing
from sim_ops import Controller
from sim_plant import Plant
from sim_watchdog import Watchdog
from sim_wlan import Wlan

NAME = "unix_sim"
DEFAULT_SERIAL = "EVPLUS-SIM-00001"
RESET_STATUS = const(3)  # exit status for "power-cycle me" (docs/hal.md)
_TICK_MS = const(20)  # plant period: EV response, energy, timed inputs, watchdog check
_MAX_SERIAL = const(25)
# What the next boot's hw.reset_cause() reads: written by a watchdog bite and hw.reset(),
# read and removed at boot. A power cut (SIGKILL) writes nothing.
_CAUSE_FILE = "/reset_cause"
_CAUSES = ("watchdog", "reset")


def _take_cause(data_dir):
    try:
        with open(data_dir + _CAUSE_FILE) as f:
            cause = f.read(16).strip()
        os.remove(data_dir + _CAUSE_FILE)
    except OSError:
        return "power"
    return cause if cause in _CAUSES else "power"


def _mark_cause(data_dir, cause):
    try:
        with open(data_dir + _CAUSE_FILE, "w") as f:
            f.write(cause)
    except OSError:
        pass  # the next boot reads a power cut: the cautious report


def make(env):
    """The hw object of docs/hal.md. env: dict of EVSE_* strings."""
    b = Board(env or {})
    gc.collect()
    b.sim_heap = gc.mem_alloc() - _HEAP_BEFORE_SIM
    return b


def _int_env(env, key, default, lo=1, hi=65535):
    v = env.get(key)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        raise ValueError("%s must be an integer, not %r" % (key, v))
    if not lo <= n <= hi:
        raise ValueError("%s must be within %d..%d" % (key, lo, hi))
    return n


def _irq_off():
    return 0  # no interrupts here: the simulated RCD trips in the loop's own context


def _irq_on(state):
    pass


def _ensure_dir(path):
    """mkdir -p: the data directory may be new (first boot of a fresh tree)."""
    parts = path.split("/")
    cur = "" if path.startswith("/") else "."
    for part in parts:
        if not part or part == ".":
            continue
        cur = cur + "/" + part
        try:
            os.mkdir(cur)
        except OSError:
            pass  # exists (or a real error, which the first file write reports)


class Board:
    def __init__(self, env):
        self.name = NAME
        serial = env.get("EVSE_SERIAL") or DEFAULT_SERIAL
        if len(serial) > _MAX_SERIAL:
            raise ValueError("EVSE_SERIAL: at most %d characters" % _MAX_SERIAL)
        self.serial = serial
        clock = Clock()
        self.clock_us = clock.now_us  # bound once: called from ISR-safe paths
        self.disable_irq = _irq_off
        self.enable_irq = _irq_on
        self.events = EventRing(self.clock_us)
        self.plant = plant = Plant()

        # Pilot, power path and protections
        self.cp = sim_io.CpGenerator(self.events)
        self.relays = sim_io.Relays(self.events)
        self.cp_adc = sim_sensors.CpAdc(self.cp, plant)
        self.pp_adc = sim_sensors.PpAdc(plant)
        tethered = env.get("EVSE_SIM_TETHERED", "") in ("1", "yes", "true")
        self.lock = sim_io.Lock(self.events, self.clock_us, plant, fitted=not tethered)
        self.rcd = sim_sensors.Rcd(self.relays, plant)
        self.pe = sim_sensors.PeMonitor(plant)
        self.meter = sim_sensors.Meter(plant)
        self.temps = sim_sensors.Temps(plant)
        self.fan = sim_io.Fan(self.events, self.clock_us, plant)

        # HMI
        self.belt = sim_io.Belt(self.events)
        self.leds = sim_io.Leds(self.events)
        self.tap_light = sim_io.TapLight(self.events)
        self.display = sim_io.Display(self.events)
        self.buzzer = sim_io.Buzzer(self.events)
        self.button = sim_sensors.Button(plant, self.clock_us)
        self.errors = sim_io.ErrorReporter(self.events)
        self.report_error = self.errors.report  # hw.report_error(code, active)

        # RFID: the RC522 emulated at register level behind its SPI bus
        chip = sim_rc522.Rc522Chip(clock_us=self.clock_us)
        self.rfid_chip = chip
        self.rfid_spi = chip.spi
        self.rfid_cs = chip.cs
        self.rfid_rst = chip.rst

        # Buses and radio
        path = env.get("EVSE_RS485")
        if path:
            from sim_uart import SimUart  # only when a bus is wired: saves heap otherwise

            self.rs485 = (SimUart(path), sim_io.RecordedPin())
        else:
            self.rs485 = None
        self.can = sim_can.SimCan(_int_env(env, "EVSE_CAN_PORT", sim_can.DEFAULT_PORT),
                                  clock_us=self.clock_us)
        self.data_dir = env.get("EVSE_DATA_DIR") or "./data"
        _ensure_dir(self.data_dir)
        self._cause = _take_cause(self.data_dir)
        self.wlan = Wlan(plant, serial, self.data_dir)

        # System
        self.rtc = Rtc()
        self._safe = self._safe_outputs  # bound once: the watchdog thread calls it
        self.wdt = Watchdog(self._safe, on_reset=self._mark_watchdog)
        self.stalled = False  # the "stall" op: the main loop hangs
        self.http_addr = (
            env.get("EVSE_HTTP_HOST") or "127.0.0.1",
            _int_env(env, "EVSE_HTTP_PORT", 8080),
        )
        self.sim_port = _int_env(env, "EVSE_SIM_PORT", sim_socket.DEFAULT_PORT)
        self.controller = Controller(self)
        # Made here, in make(): its reply buffer is the simulator's heap (sim_heap), not
        # the firmware's; tasks() starts it.
        self.control = sim_socket.ControlServer(self.controller, self.clock_us, self.sim_port)

        plant.attach(self.cp, self.relays, chip)
        plant.update_cp()

    def _safe_outputs(self):
        """What a reset leaves behind: contactors open, CP at static +12 V. No allocation."""
        self.relays.open()
        self.cp.high()

    def _mark_watchdog(self):
        _mark_cause(self.data_dir, "watchdog")

    def reset_cause(self):
        """Why this boot happened: "power" (power on or cut), "watchdog", "reset"."""
        return self._cause

    def reset(self):
        """Power-cycle: `make run` starts the process again on exit status 3."""
        self._safe_outputs()
        _mark_cause(self.data_dir, "reset")
        print("reset")
        raise SystemExit(RESET_STATUS)

    def tasks(self, app):
        self.controller.app = app
        return [("sim_plant", self._plant_task), ("sim_socket", self.control.run)]

    async def _plant_task(self):
        plant = self.plant
        while True:
            if self.wdt.bitten:
                # The watchdog thread cannot end the process itself (sim_watchdog.py).
                raise SystemExit(RESET_STATUS)
            while self.stalled:
                time.sleep_ms(1000)  # blocks every task: only the watchdog gets out
            plant.tick(self.clock_us())
            await asyncio.sleep_ms(_TICK_MS)
