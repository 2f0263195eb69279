# What the ESP32 and the STM32 EV PLUS boards build alike (docs/hal.md): identity, clock,
# contactors, internal meter, LEDs, button, RS-485, RTC, watchdog, data dir, and the
# board tasks. A board's Board subclass calls _begin() first, builds its port-specific
# parts (pilot, lock, RCD, fan, display, CAN, radio), then calls _finish(). The port's
# `machine` module and pin map are passed in, so this file imports no port module.
import asyncio
import os
import time

import evplus_hmi as hmi
import evplus_power as power
import evplus_system as system


def serial_from(env, uid):
    """EVSE_SERIAL, else EVPLUS- and the last four bytes of the MCU's unique id."""
    return env.get("EVSE_SERIAL") or "EVPLUS-%s" % "".join("%02X" % b for b in uid[-4:])


def _flag(env, key, default):
    v = env.get(key)
    return bool(default) if v is None else v not in ("0", "no", "")


def tethered(env, pins):
    """True on a tethered-cable model (no socket lock): the pin file says which model
    this controller is (pins.TETHERED); EVSE_TETHERED, where there is an environment
    (tests), overrides it. On a device env is {}."""
    return _flag(env, "EVSE_TETHERED", pins.TETHERED)


def rs485_fitted(env, pins):
    """True when the external-meter RS-485 transceiver is fitted (pins.RS485); EVSE_RS485
    overrides it as above."""
    return _flag(env, "EVSE_RS485", pins.RS485)


class CanPort:
    """Base of the boards' CAN adapters. Each board's `Can` adds send(can_id, data) and
    recv() of docs/hal.md; poll() is called by the board task every 50 ms for the
    controller's own upkeep (nothing by default)."""

    def poll(self, now_ms):
        pass


class EvPlusBoard:
    # built by the subclass between _begin() and _finish(); used by reset() and the tasks
    cp: power.CpGenerator
    lock: power.Lock
    can: CanPort

    def _begin(self, name, env, machine, pins):
        self.name = name
        self._machine = machine
        self.serial = serial_from(env, machine.unique_id())
        # Before the radio: the hotspot's key comes from a secret kept there (lib/apkey.py).
        self.data_dir = env.get("EVSE_DATA_DIR") or "/data"
        system.ensure_dir(os, self.data_dir)
        # The port's tick counter: a small int that wraps every 2**30 us on a 32-bit MCU,
        # so it never allocates (ISR-safe); readers compare two values with ticks_diff.
        self.clock_us = time.ticks_us
        # Sections the RCD and timer interrupts cannot split (docs/hal.md).
        self.disable_irq = machine.disable_irq
        self.enable_irq = machine.enable_irq
        pin = machine.Pin
        self.relays = power.Relays(
            pin(pins.RELAY1, pin.OUT, value=0), pin(pins.RELAY2, pin.OUT, value=0),
            pin(pins.RELAY1_FB, pin.IN, pin.PULL_UP), pin(pins.RELAY2_FB, pin.IN, pin.PULL_UP),
            machine.disable_irq, machine.enable_irq, fb_active=0,
        )

    def _finish(self, env, pins, meter_uart, rs485_uart, i2c, tap_light, buzzer):
        """meter_uart: the internal meter's machine.UART; rs485_uart: a function that
        opens the external bus UART (called only when rs485_fitted()); i2c: the
        display bus; tap_light, buzzer: pin-like outputs."""
        from modbus_rtu import ModbusRtu

        machine = self._machine
        pin = machine.Pin
        self.meter = power.Meter(ModbusRtu(system.Rs485Uart(meter_uart, pins.METER_BAUD)))

        chain = hmi.Ws2812(pin(pins.NEOPIXEL, pin.OUT, value=0), pins.BELT_LEDS + 4,
                           machine.bitstream)
        self._pixels = px = hmi.Pixels(chain, pins.BELT_LEDS)
        self.belt = hmi.Belt(px)
        self.leds = hmi.Leds(px)
        self.tap_light = hmi.OutPin(tap_light)
        self.display = hmi.Lcd1602(i2c, pins.LCD_ADDR)
        self.buzzer = hmi.Buzzer(buzzer)
        self.button = hmi.Button(pin(pins.BUTTON, pin.IN, pin.PULL_UP))
        self.errors = system.ErrorReporter()
        self.report_error = self.errors.report

        if rs485_fitted(env, pins):
            self.rs485 = (system.Rs485Uart(rs485_uart(), pins.RS485_BAUD),
                          pin(pins.RS485_DE, pin.OUT, value=0))
        else:
            self.rs485 = None

        self.rtc = system.Rtc(machine.RTC())
        self.wdt = system.Wdt(machine.WDT)
        self.http_addr = ("0.0.0.0", 80)

    # Whether the port's HARD_RESET is the chip resetting itself. The ESP32 port says
    # HARD_RESET for esp_restart() (machine.reset) and a panic (a crash), SOFT_RESET only
    # for an interpreter restart (ports/esp32/modmachine.c); an STM32's is its NRST pin.
    HARD_RESET_IS_OWN = False

    def reset_cause(self):
        """Why this boot happened: "power", "watchdog" or "reset" (machine.reset, a
        crash on the ESP32)."""
        m = self._machine
        c = m.reset_cause()
        if c == getattr(m, "WDT_RESET", None):
            return "watchdog"
        if c == getattr(m, "SOFT_RESET", None):
            return "reset"
        if self.HARD_RESET_IS_OWN and c == getattr(m, "HARD_RESET", None):
            return "reset"
        return "power"

    def reset(self):
        self.relays.open()
        self.cp.high()
        self._machine.reset()

    def tasks(self, app):
        return [("board_io", self._io_task), ("board_meter", self._meter_task)]

    async def _io_task(self):
        while True:
            self._io_step(time.ticks_ms())
            await asyncio.sleep_ms(50)

    def _io_step(self, now_ms):
        """Blink patterns, the end of lock-motor and buzzer pulses, and the CAN
        controller's own upkeep (the board's `can.poll`)."""
        self.lock.poll()
        self.buzzer.poll()
        self._pixels.tick(now_ms)
        self.can.poll(now_ms)

    async def _meter_task(self):
        from modbus_rtu import ModbusError

        while True:
            try:
                await self.meter.poll()
            except (OSError, ModbusError):
                pass  # meter.read() goes stale and raises: the application reports it
            await asyncio.sleep_ms(1000)
