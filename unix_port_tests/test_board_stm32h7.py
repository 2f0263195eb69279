# boards/stm32h7_evplus (NUCLEO-H743ZI2) against fake machine/pyb/network modules
# (fakes/): the checks of test_board_stm32 that hold for every STM32 board, what differs
# on the H743 (TIM1 clock, FDCAN, pin names), the wired network, and the application
# (web app and OCPP) built on this board's hw.
import sys

_FAKES = (__file__.rpartition("/")[0] or ".") + "/fakes"
if _FAKES not in sys.path:
    sys.path.append(_FAKES)
import boardload  # noqa: E402
import test_board_stm32 as stm  # noqa: E402
from check import eq, raises, tmpdir, true  # noqa: E402

_BOARD = "stm32h7_evplus"
_ENV = {"EVSE_DATA_DIR": "/tmp/evplus_stm32h7_test", "EVSE_SERIAL": "EVPLUS-00023"}
_LEASE = ("192.168.7.42", "255.255.255.0", "192.168.7.1", "192.168.7.1")


def _make(env=None):
    return boardload.make(_BOARD, env or _ENV)


def test_cp_timer_1khz_counts_and_duty():
    # TIM1 on D6 (PE9, TIM1_CH1). timer.c: 200 MHz / 1 kHz = 200 000 counts do not fit
    # 16 bits; / 5 = 40 000 do
    stm.check_cp_timer_1khz_counts_and_duty(_BOARD, "D6", 200_000_000, (4, 39999))


def test_cp_tenth_of_an_amp_steps_are_distinct_pulses():
    stm.check_cp_tenth_of_an_amp_steps_are_distinct_pulses(_BOARD)


def test_cp_sampling_irqs_in_step():
    stm.check_cp_sampling_irqs_in_step(_BOARD)


def test_cp_irq_in_the_middle_of_a_main_loop_read_changes_neither_reading():
    stm.check_cp_irq_in_the_middle_of_a_main_loop_read_changes_neither_reading(_BOARD)


def test_it_network_judges_the_continuity_input_only():
    stm.check_it_network_judges_the_continuity_input_only(_BOARD)


def test_rcd_hard_irq_opens_relays_without_alloc():
    stm.check_rcd_hard_irq_opens_relays_without_alloc(_BOARD)


def test_pin_directions_and_tach():
    stm.check_pin_directions_and_tach(_BOARD)


def test_model_comes_from_the_pin_file():
    stm.check_model_comes_from_the_pin_file(_BOARD)


def test_pins_are_header_names_clear_of_what_the_nucleo_uses():
    """Every pin is named as the Nucleo's headers name it (the port looks up board names
    first: "A3" is PB1 there, not PA3), no two functions share one, and none is the
    Ethernet, USB, REPL UART, LED, user button or SD card pin of the image."""
    ld, hw = _make()
    try:
        pins = sys.modules["pins"]
        names = [v for k, v in pins.__dict__.items() if k.isupper() and type(v) is str]
        eq(len(names), len(set(names)), "one function per pin")
        for name in names:
            true(name[0] in "AD" and name[1:].isdigit(), "%s: a header name" % name)
        # MicroPython's ports/stm32/boards/NUCLEO_H743ZI2/pins.csv: these header names
        # are Ethernet RMII (D13 = PA7, D18 = PB13), LED1 (D33 = PB0), the SD card
        # (D43-D48) and its detect pin (D49), the ADC3-only A5-A8
        taken = ["D13", "D18", "D33", "D43", "D44", "D45", "D46", "D47", "D48", "D49",
                 "A5", "A6", "A7", "A8"]
        for name in taken:
            true(name not in names, "%s left to the Nucleo" % name)
        true(pins.SPI_ID == 3 and pins.I2C_ID == 1, "the buses the port defines")
        true(pins.RS485_UART != 3 and pins.METER_UART != 3, "UART3 is the REPL")
    finally:
        ld.__exit__()


def test_fdcan_contract_and_bus_off_restart():
    """The FDCAN has no automatic bus-off recovery (the port ignores auto_restart): the
    board task restarts it, at once and then once a second while it stays off, and
    frames are refused meanwhile, not left to go out stale."""
    ld, hw = _make()
    try:
        dev = hw.can.dev
        eq(type(dev).__name__, "FdCan", "pyb.CAN is an FDCAN on the H7")
        mode, kw = dev.init_args
        eq((kw.get("baudrate"), kw.get("sample_point")), (125000, 80), "bit rate")
        eq(dev.filter[1], ld.pyb.CAN.MASK, "a MASK filter (no MASK16 on the FDCAN)")
        hw.can.send(0x123, b"\x01\x02")
        eq(dev.sent, [(0x123, b"\x01\x02")], "sent")
        dev.rx.append((0x456, False, False, 0, b"\x09"))
        eq(hw.can.recv(), (0x456, b"\x09"), "received")
        raises(ValueError, hw.can.send, 0x800, b"")
        hw._io_step(5000)
        eq(dev.restarts, 0, "no restart on the bus")
        dev.go_bus_off()
        raises(OSError, hw.can.send, 0x102, b"\x02")
        eq(hw.can.bus_off, 1, "refused while off the bus")
        dev.bus_idle()
        eq(dev.state(), dev.BUS_OFF, "no recovery of its own")
        hw._io_step(6000)
        eq(dev.restarts, 1, "restarted at once")
        hw._io_step(6050)
        hw._io_step(6950)
        eq(dev.restarts, 1, "not again within the second")
        hw._io_step(7000)
        eq(dev.restarts, 2, "again a second later")
        dev.bus_idle()
        eq(dev.state(), dev.ERROR_ACTIVE, "rejoined")
        hw.can.send(0x103, b"\x03")
        eq(dev.sent[-1], (0x103, b"\x03"), "frames go out again")
        # days on the bus, then bus-off again: restarted at once, whatever the ticks say
        hw._io_step(8000)
        dev.go_bus_off()
        hw._io_step((7000 + (1 << 29) + 5) & ((1 << 30) - 1))
        eq(dev.restarts, 3, "no stale deadline across the ticks wrap")
    finally:
        ld.__exit__()


def test_wired_network_is_hw_wlan():
    """network.LAN as hw.wlan (docs/hal.md, wired board): started at boot with DHCP,
    client mode for good, no hotspot, no scan; ifconfig() is the lease."""
    ld, hw = _make()
    try:
        lan = ld.network.interfaces["lan"]
        eq((lan.up, lan.starts), (True, 1), "started once, at boot")
        w = hw.wlan
        eq((w.mode, w.ap_key, w.ap_auth, w.started), ("client", None, None, True), "wired")
        eq(w.ifconfig(), lan.lease, "the DHCP lease")
        eq(w.isconnected(), True, "link up with an address")
        eq((w.scan(), w.ap_clients()), ([], 0), "no radio")
        w.set_mode("ap")  # the default setting at every boot
        eq(w.mode, "client", "no hotspot: the wire stays the network")
        eq(lan.starts, 1, "set_mode does not restart the interface")
        raises(ValueError, w.set_mode, "mesh")
        raises(ValueError, w.connect, "")
        w.connect("home", "pw")  # the wire needs no joining
        eq(w.mode, "client", "unchanged")
        lan.lease = None  # no DHCP answer yet
        eq((w.isconnected(), w.ifconfig()[0]), (False, "0.0.0.0"), "up, no address")
        lan.lease = _LEASE
        lan.cable = False
        eq(w.isconnected(), False, "cable pulled")
        lan.cable = True
        eq((w.isconnected(), lan.starts), (True, 1), "back by itself, no restart")
        eq(hw.http_addr, ("0.0.0.0", 80), "the web app listens on every interface")
    finally:
        ld.__exit__()


def test_boot_without_a_cable_has_no_network_and_never_blocks_later():
    """LAN.active(True) waits up to 10 s for the PHY's link: only at boot, never again
    while the charger runs (it would stall the control loop past the watchdog)."""
    import fake_network

    real = fake_network.LAN.__init__

    def no_cable(self, *a, **kw):
        real(self, *a, **kw)
        self.cable = False

    fake_network.LAN.__init__ = no_cable
    try:
        ld, hw = _make()
    finally:
        fake_network.LAN.__init__ = real
    try:
        lan = ld.network.interfaces["lan"]
        w = hw.wlan
        eq((w.started, w.isconnected()), (False, False), "no network")
        eq(w.ifconfig(), ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0"), "no address")
        lan.cable = True
        waited = lan.waited_ms
        for t in range(0, 5000, 50):
            hw._io_step(t)
        w.set_mode("client")
        w.connect("home")
        eq((lan.starts, lan.waited_ms), (1, waited), "never started again at run time")
    finally:
        ld.__exit__()


def _app(ld, hw):
    import json

    d = hw.data_dir
    with open(d + "/settings.json", "w") as f:
        json.dump({"ocpp_url": "ws://csms.example:9000/ocpp", "auth_mode": "free"}, f)
    from evse.app import App

    return App(hw)


def test_web_app_and_ocpp_start_on_this_board():
    """The application builds on this board's hw: the web server answers under the
    charger's wired address (and refuses another Host), and the OCPP client asks the
    DNS server the DHCP lease named."""
    import asyncio
    import os

    d = tmpdir("stm32h7_app")
    ld, hw = _make(dict(_ENV, EVSE_DATA_DIR=d))
    try:
        app = _app(ld, hw)
        eq(app.hw.name, "stm32h7_evplus", "board")
        eq([n for n, _ in app.ocpp.tasks()], ["ocpp"], "OCPP task")
        app.ocpp._build(at_boot=True)
        eq(app.ocpp.service._dns_server(), ("192.168.7.1", 53), "DNS from the lease")
        own = hw.wlan.ifconfig()[0]

        async def get(port, host):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /api/status HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode())
            await w.drain()
            line = await r.readline()
            w.close()
            await w.wait_closed()
            return int(line.split()[1])

        async def main():
            for _ in range(20):
                port = 20000 + int.from_bytes(os.urandom(2), "little") % 30000
                hw.http_addr = ("127.0.0.1", port)
                task = asyncio.create_task(app._http_task())
                await asyncio.sleep_ms(50)
                if app.http is not None and app.http._sock is not None:
                    break
                task.cancel()
            try:
                ok = await get(port, own)
                other = await get(port, "csms.example")
            finally:
                task.cancel()
                app.http.close()
                await asyncio.sleep_ms(10)
            return ok, other

        ok, other = asyncio.run(main())
        eq(ok, 200, "served under " + own)
        eq(other, 421, "another Host refused")
    finally:
        ld.__exit__()
