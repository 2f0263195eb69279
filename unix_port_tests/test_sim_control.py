# unix_sim board: the control socket end to end inside one interpreter, with a stand-in
# application (the real one is exercised by tests/test_sim_socket.py).
import asyncio
import json
import os

import board
import check
from sim_socket import ControlServer


class _App:
    def __init__(self):
        self.broken = False
        self.extra = None
        self.rcd_calls = 0
        self.on_rcd = self._on_rcd  # bound once: called with the heap locked

    def _on_rcd(self):
        self.rcd_calls += 1

    def sim_status(self):
        if self.broken:
            raise AttributeError("charger not built yet")
        if self.extra:
            return self.extra
        return {
            "cp_state": "A",
            "state": "Available",
            "offered_a": 0.0,
            "errors": [],
            "session": {"active": False, "energy_kwh": 0.0, "id_tag": None, "start_mode": None},
            "wifi_mode": "ap",
            "limit_binding": "config",
        }


def _port():
    b = os.urandom(2)
    return 20000 + ((b[0] << 8 | b[1]) % 9000)


def _setup():
    hw = board.make(
        {"EVSE_DATA_DIR": "/tmp/sim_test_data", "EVSE_CAN_PORT": str(_port() + 20000), "EVSE_SIM_PORT": str(_port())}
    )
    app = _App()
    hw.rcd.set_handler(app.on_rcd)
    return hw, app


async def _start(hw, app, **kw):
    hw.controller.app = app
    srv = ControlServer(hw.controller, hw.clock_us, hw.sim_port, **kw)
    task = asyncio.create_task(srv.run())
    await asyncio.sleep_ms(50)
    return srv, task


class _Client:
    async def open(self, port):
        self.r, self.w = await asyncio.open_connection("127.0.0.1", port)
        return self

    async def send(self, raw):
        self.w.write(raw)
        await self.w.drain()

    async def reply(self, timeout_ms=2000):
        line = await asyncio.wait_for_ms(self.r.readline(), timeout_ms)
        return json.loads(line) if line else None

    async def req(self, obj):
        await self.send(json.dumps(obj).encode() + b"\n")
        r = await self.reply()
        check.true(type(r.get("t_us")) is int, "t_us in %r" % r)
        return r

    async def close(self):
        self.w.close()  # a no-op in MicroPython's asyncio: wait_closed() closes
        await self.w.wait_closed()


def _run(coro):
    asyncio.run(coro)
    asyncio.new_event_loop()


def test_every_op_answers_with_t_us():
    hw, app = _setup()

    async def main():
        srv, task = await _start(hw, app)
        c = await _Client().open(hw.sim_port)
        s = await c.req({"op": "snapshot"})
        check.eq((s["ok"], s["cp_state"], s["pwm_duty_pct"], s["relays_closed"], s["lock"]), (True, "A", None, False, "unlocked"), "snapshot")
        check.true(s["heap_free"] > 0 and "plant" in s and "leds" in s, "board fields")
        r = await c.req({"op": "ev", "state": "C", "max_a": 16})
        check.eq((r["ok"], r["ev"]["state"], r["ev"]["max_a"]), (True, "C", 16.0), "ev")
        hw.cp_adc.sample()
        check.eq(hw.cp_adc.hi_mv, 6048, "plateau moved")
        check.eq((await c.req({"op": "cable", "pp_ohms": 220}))["pp_ohms"], 220, "cable")
        check.eq(hw.pp_adc.read_ohm(), 220, "pp")
        check.eq((await c.req({"op": "grid", "volts": [250, 230, 0], "hz": 49.5}))["grid"]["volts"], [250.0, 230.0, 0.0], "grid")
        check.eq((await c.req({"op": "temp", "relay_c": 71}))["temp"]["relay_c"], 71.0, "temp")
        r = await c.req({"op": "card", "uid": "04A1B2C3", "kind": "CPU"})
        check.eq((r["card"]["kind"], len(hw.rfid_chip.cards)), ("CPU", 1), "card on the reader")
        r = await c.req({"op": "card", "uid": "88A1B2C3"})
        check.true(not r["ok"] and "cascade" in r["error"], "cascade tag refused: %r" % r)
        r = await c.req({"op": "button", "ms": 300})
        check.true(r["ok"] and hw.button.pressed(), "button held")
        await asyncio.sleep_ms(400)
        hw.plant.tick(hw.clock_us())
        check.true(not hw.button.pressed(), "button released")
        r = await c.req({"op": "wifi", "up": False, "networks": [{"ssid": "HOME", "rssi": -50, "auth": "wpa2"}]})
        check.eq((r["wifi"]["up"], hw.wlan.scan()), (False, [("HOME", -50, "wpa2")]), "wifi")
        r = await c.req({"op": "fault", "name": "relay_weld", "active": True, "relay": 2})
        check.eq((r["faults"], hw.relays.feedback(2)), (["relay_weld:2"], True), "weld")
        r = await c.req({"op": "events", "since": 0})
        check.true(r["ok"] and type(r["events"]) is list, "events")
        r = await c.req({"op": "heap"})
        check.true(r["ok"] and 0 < r["heap_largest"] <= r["heap_free"], "heap: %r" % r)
        hw.plant.amps[:] = [3.0, 2.0, 1.0]
        r = await c.req({"op": "plant"})
        check.eq((r["ok"], r["plant"]["amps"]), (True, [3.0, 2.0, 1.0]), "plant: %r" % r)
        r = await c.req({"op": "can", "up": False})
        check.true(r["ok"] and r["can"]["up"] is False and hw.can.up is False, "can: %r" % r)
        await c.req({"op": "can", "up": True})
        await c.close()
        task.cancel()

    _run(main())


def test_rcd_fault_opens_the_relays_before_the_reply_time_is_passed():
    hw, app = _setup()

    async def main():
        srv, task = await _start(hw, app)
        c = await _Client().open(hw.sim_port)
        hw.relays.close()
        r = await c.req({"op": "fault", "name": "rcd_dc", "active": True})
        check.eq((r["ok"], hw.relays.closed, app.rcd_calls, hw.rcd.tripped()), (True, False, 1, True), "trip")
        ev = (await c.req({"op": "events", "since": r["t_us"]}))["events"]
        opened = [e for e in ev if e["what"] == "relays" and e["value"] is False]
        check.eq(len(opened), 1, "one relay-open event after the fault reply's t_us")
        check.true(0 <= opened[0]["t_us"] - r["t_us"] < 5000, "latency on one clock")
        s = await c.req({"op": "snapshot"})
        check.eq((s["relays_closed"], s["rcd_tripped"]), (False, True), "snapshot")
        await c.close()
        task.cancel()

    _run(main())


def test_bad_requests_get_an_error_and_the_connection_survives():
    hw, app = _setup()

    async def main():
        srv, task = await _start(hw, app)
        c = await _Client().open(hw.sim_port)
        for raw, word in (
            (b"not json\n", "not JSON"),
            (b"[1, 2]\n", "object"),
            (b'{"op": "launch"}\n', "unknown op"),
            (b'{"op": "ev", "max_a": true}\n', "max_a"),
            (b'{"op": "grid", "volts": [1, 2]}\n', "volts"),
        ):
            await c.send(raw)
            r = await c.reply()
            check.true(r["ok"] is False and word in r["error"] and type(r["t_us"]) is int, "%r -> %r" % (raw, r))
        await c.send(b"\r\n\n")  # blank lines are not requests: no reply
        check.eq((await c.req({"op": "snapshot"}))["ok"], True, "still served")
        await c.close()
        task.cancel()

    _run(main())


def test_huge_line_gets_one_error_then_the_next_request_works():
    hw, app = _setup()

    async def main():
        srv, task = await _start(hw, app)
        c = await _Client().open(hw.sim_port)
        # 20 KB in 1 KB pieces: one 20 KB bytes object may find no room in this runner's
        # heap, cut up by the modules before it.
        await c.send(b'{"op": "snapshot", "x": "')
        piece = b"y" * 1000
        for _ in range(20):
            await c.send(piece)
        await c.send(b'"}\n')
        r = await c.reply()
        check.true(r["ok"] is False and "longer than" in r["error"], "too long: %r" % r)
        r = await c.req({"op": "snapshot"})
        check.eq(r["ok"], True, "next request: %r" % r.get("error"))
        await c.close()
        task.cancel()

    _run(main())


def test_slow_client_times_out():
    hw, app = _setup()

    async def main():
        srv, task = await _start(hw, app, line_timeout_ms=300)
        c = await _Client().open(hw.sim_port)
        await c.send(b'{"op": "snap')
        r = await c.reply(timeout_ms=2000)
        check.true(r["ok"] is False and "timeout" in r["error"], "timeout: %r" % r)
        check.eq(await c.reply(), None, "then closed")
        await c.close()
        task.cancel()

    _run(main())


def test_client_cap():
    hw, app = _setup()

    async def main():
        srv, task = await _start(hw, app, max_clients=2)
        a = await _Client().open(hw.sim_port)
        b = await _Client().open(hw.sim_port)
        await a.req({"op": "snapshot"})
        await b.req({"op": "snapshot"})
        c = await _Client().open(hw.sim_port)
        r = await c.reply()
        check.true(r["ok"] is False and "too many" in r["error"], "refused: %r" % r)
        await a.close()
        await asyncio.sleep_ms(50)
        d = await _Client().open(hw.sim_port)
        check.eq((await d.req({"op": "snapshot"}))["ok"], True, "a slot freed")
        for x in (b, c, d):
            await x.close()
        task.cancel()

    _run(main())


def test_snapshot_while_the_app_is_not_ready():
    hw, app = _setup()
    app.broken = True

    async def main():
        srv, task = await _start(hw, app)
        c = await _Client().open(hw.sim_port)
        r = await c.req({"op": "snapshot"})
        check.true(r["ok"] is False and "not ready" in r["error"], "error: %r" % r)
        check.eq((await c.req({"op": "ev", "state": "B"}))["ok"], True, "other ops work")
        app.broken = False
        app.extra = {"bad": {1, 2}}  # MicroPython would write this as invalid JSON
        r = await c.req({"op": "snapshot"})
        check.true(r["ok"] is False and "not valid JSON" in r["error"], "error: %r" % r)
        await c.close()
        task.cancel()

    _run(main())
