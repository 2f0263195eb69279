# The control socket's operations: apply one checked request to the plant and the board,
# and build the reply. Transport (lines, timeouts, clients) lives in sim_socket.py.
import gc
from micropython import const

import sim_events
import sim_plant
import sim_requests
from sim_requests import RequestError

_CARD_MS = const(1000)  # a card op holds the card on the reader this long by default


def _not_json(v, depth):
    """What in v has no JSON form (a message), or None when it all has."""
    if depth > 8:
        return "nested too deep"
    t = type(v)
    if v is None or t is bool or t is int or t is str:
        return None
    if t is float:
        return None if v - v == 0 else "non-finite float %r" % v  # inf - inf and nan - nan are nan
    if t is list or t is tuple:
        for x in v:
            bad = _not_json(x, depth + 1)
            if bad:
                return bad
        return None
    if t is dict:
        for k, x in v.items():
            if type(k) is not str:
                return "key %r is not a string" % (k,)
            bad = _not_json(x, depth + 1)
            if bad:
                return "%s: %s" % (k, bad)
        return None
    return "%s value %r" % (t.__name__, v)


def _largest_block(free):
    """The largest bytearray the heap can give now (to 64 bytes), below `free`: with
    mem_free() it tells a fragmented heap from a full one. Each probe is freed at once."""
    lo, hi = 0, free
    while hi - lo > 64:
        mid = (lo + hi) // 2
        try:
            b = bytearray(mid)
        except MemoryError:
            hi = mid
            continue
        b = None
        lo = mid
    return lo


def error_reply(message, t_us):
    return {"ok": False, "error": message, "t_us": t_us}


class Controller:
    def __init__(self, hw):
        self._hw = hw
        self.app = None  # set by hw.tasks(app); snapshot asks it for sim_status()

    def handle_line(self, line):
        """One request line (bytes) -> the reply dict. Never raises."""
        # The reply's t_us is taken before the request acts, so the latency of what it
        # triggers (e.g. fault -> relays open) reads as event t_us - reply t_us >= 0.
        t_us = self._hw.clock_us()
        try:
            req = sim_requests.parse(line)
        except RequestError as e:
            return error_reply(str(e), t_us)
        except Exception as e:  # e.g. MemoryError on a pathological document
            return error_reply("bad request: %r" % e, t_us)
        try:
            reply = getattr(self, "_op_" + req["op"])(req, t_us)
        except RequestError as e:
            return error_reply(str(e), t_us)
        except Exception as e:  # a bug here must not take the charger down
            return error_reply("internal error in %s: %r" % (req["op"], e), t_us)
        reply["ok"] = True
        reply["t_us"] = t_us
        return reply

    # ---- ops -------------------------------------------------------------------------
    def _op_snapshot(self, req, t_us):
        app = self.app
        if app is None:
            raise RequestError("app not ready: no application attached")
        # The heap is read before the reply is built: the reply is the simulator's
        # instrument (about 2.5 KB of dicts on a 32-bit build), not the firmware's heap.
        gc.collect()
        heap_free = gc.mem_free()
        heap_alloc = gc.mem_alloc()
        try:
            status = app.sim_status()
        except Exception as e:
            raise RequestError("app not ready: %r" % e)
        if type(status) is not dict:
            raise RequestError("app status is not a dict")
        # MicroPython's json.dumps writes sets, NaN or objects as invalid JSON instead of
        # raising: check the application's part so the reply line stays parseable.
        bad = _not_json(status, 0)
        if bad:
            raise RequestError("app status is not valid JSON: %s" % bad)
        out = dict(status)
        out.update(self.board_view())
        if status.get("lock") == "none":
            out["lock"] = "none"  # the application runs Case C: the lock is unused
        out["heap_free"] = heap_free
        out["heap_alloc"] = heap_alloc
        out["sim_heap"] = getattr(self._hw, "sim_heap", 0)
        return out

    def _op_plant(self, req, t_us):
        # What an outside meter measures of this charger, several times a second: no
        # collection and no application status, unlike the snapshot.
        return {"plant": {"amps": list(self._hw.plant.amps)}}

    def _op_heap(self, req, t_us):
        # Apart from the snapshot: each failed probe costs the allocator a collection.
        gc.collect()
        free = gc.mem_free()
        return {"heap_free": free, "heap_alloc": gc.mem_alloc(),
                "heap_largest": _largest_block(free), "sim_heap": getattr(self._hw, "sim_heap", 0)}

    def board_view(self):
        """What the board itself knows: outputs, inputs and the plant."""
        hw = self._hw
        p = hw.plant
        duty = hw.cp.duty_pm
        hi, lo = sim_plant.plateaus(duty, p.cp_pos_mv, p.cp_neg_mv)
        lk = hw.lock
        if not lk.fitted:
            lock = "none"
        else:
            lock = "locked" if lk.feedback() else "unlocked"
        return {
            "pwm_duty_pct": duty / 10 if duty >= 0 else None,
            "cp": sim_events.cp_name(duty),
            "cp_hi_mv": hi,
            "cp_lo_mv": lo,
            "relays_closed": hw.relays.closed,
            "relay_feedback": [hw.relays.contact(1), hw.relays.contact(2)],
            "lock": lock,
            "lock_engaged": lk.engaged,
            "display": hw.display.text,
            "led_belt": hw.belt.view(),
            "leds": hw.leds.view(),
            "tap_light": hw.tap_light.on,
            "fan": {"running": hw.fan.running, "rpm": hw.fan.rpm()},
            "rcd_tripped": hw.rcd.tripped(),
            "board_errors": sorted(hw.errors.active),
            "wlan": hw.wlan.view(),
            "plant": self.plant_view(),
        }

    def plant_view(self):
        hw = self._hw
        p = hw.plant
        return {
            "ev": p.ev_view(),
            "pilot": p.pilot_view(),
            "pp_ohms": p.pp_ohms,
            "grid": {"volts": list(p.grid_v), "hz": p.grid_hz},
            "temp": self._temp_view(),
            "amps": list(p.amps),
            "power_w": p.power_w,
            "energy_wh": p.energy_wh,
            "faults": self.active_faults(),
            "card": None if p.card is None else {"uid": p.card[0], "kind": p.card[1]},
            "button_pressed": hw.button.pressed(),
        }

    def _temp_view(self):
        p = self._hw.plant
        return {"relay_c": p.relay_c, "socket_c": p.socket_c, "env_c": p.env_c}

    def active_faults(self):
        """Active fault names; relay faults as "relay_weld:1"."""
        hw = self._hw
        out = sorted(hw.plant.faults)
        for n in (1, 2):
            if hw.relays.welded[n]:
                out.append("relay_weld:%d" % n)
            if hw.relays.stuck_open[n]:
                out.append("relay_stuck_open:%d" % n)
        return out

    def _op_ev(self, req, t_us):
        p = self._hw.plant
        if req.get("asleep") and req.get("state", p.ev_state) != "B":
            raise RequestError("asleep needs the car in B")
        if "state" in req:
            p.ev_state = req["state"]
        if "diode" in req:
            p.ev_diode = req["diode"]
        if "diode_v" in req:
            p.ev_diode_v = float(req["diode_v"])
        if "max_a" in req:
            p.ev_max_a = float(req["max_a"])
        if "draw_a" in req:
            d = req["draw_a"]
            p.ev_draw_a = None if d is None else float(d)
        if "follow_s" in req:
            p.set_follow_s(req["follow_s"])
        if "phases" in req:
            p.ev_phases = req["phases"]
        if req.get("state", "B") != "B":
            p.ev_asleep = False  # a car that leaves B is awake
        if "asleep" in req:
            p.ev_asleep = req["asleep"]
        if "start_min_a" in req:
            p.ev_start_min_a = float(req["start_min_a"])
        if "start_s" in req:
            p.ev_start_s = float(req["start_s"])
        if "gives_up_after" in req or "state" in req:
            # A new count with the setting, and after the driver moved the car (a car that
            # gave up asks again when the test puts it back in C).
            if "gives_up_after" in req:
                p.ev_gives_up_after = req["gives_up_after"]
            p.ev_interruptions = 0
            p.ev_gave_up = False
        p.update_cp()
        p.update_draw()
        return {"ev": p.ev_view()}

    def _op_pilot(self, req, t_us):
        p = self._hw.plant
        if "offset_v" in req:
            p.adc_zero_mv = int(round(req["offset_v"] * 1000))
        if "gen_pos_v" in req:
            p.gen_pos_mv = int(round(req["gen_pos_v"] * 1000))
        if "gen_neg_v" in req:
            p.gen_neg_mv = int(round(req["gen_neg_v"] * 1000))
        p.update_cp()
        return {"pilot": p.pilot_view()}

    def _op_cable(self, req, t_us):
        p = self._hw.plant
        p.pp_ohms = req["pp_ohms"]
        return {"pp_ohms": p.pp_ohms}

    def _op_grid(self, req, t_us):
        p = self._hw.plant
        if "volts" in req:
            p.grid_v = req["volts"]
        if "hz" in req:
            p.grid_hz = float(req["hz"])
        p.update_draw()
        return {"grid": {"volts": list(p.grid_v), "hz": p.grid_hz}}

    def _op_temp(self, req, t_us):
        p = self._hw.plant
        for name in ("relay_c", "socket_c", "env_c"):
            if name in req:
                v = req[name]
                setattr(p, name, None if v is None else float(v))
        return {"temp": self._temp_view()}

    def _op_fault(self, req, t_us):
        hw = self._hw
        name = req["name"]
        active = req["active"]
        if name in sim_plant.RELAY_FAULTS:
            relays = hw.relays
            flags = relays.welded if name == "relay_weld" else relays.stuck_open
            flags[req.get("relay", 1)] = 1 if active else 0
            hw.plant.update_draw()
        else:
            hw.plant.set_fault(name, active, req.get("times"))
            if name == "rcd_ac" or name == "rcd_dc":
                hw.rcd.update()  # a rising fault line opens the relays and calls the IRQ
            elif name == "rfid_reader":
                hw.rfid_chip.silent = active
        return {"faults": self.active_faults()}

    def _op_stall(self, req, t_us):
        self._hw.stalled = True  # the plant task blocks at its next tick
        return {}

    def _op_card(self, req, t_us):
        hw = self._hw
        p = hw.plant
        uid = req["uid"]
        kind = req.get("kind", "M1")
        hold_us = req.get("ms", _CARD_MS) * 1000
        try:
            hw.rfid_chip.present(bytes.fromhex(uid), kind, hold_us, t_us)
        except ValueError as e:  # e.g. a 4-byte UID starting with the cascade tag 0x88
            raise RequestError("uid: %s" % e)
        p.card = (uid, kind)
        p.card_until_us = t_us + hold_us
        return {"card": {"uid": uid, "kind": kind, "until_us": p.card_until_us}}

    def _op_button(self, req, t_us):
        p = self._hw.plant
        p.button_until_us = t_us + req["ms"] * 1000
        return {"until_us": p.button_until_us}

    def _op_wifi(self, req, t_us):
        hw = self._hw
        p = hw.plant
        if "networks" in req:
            p.wifi_networks = req["networks"]
        if "up" in req:
            p.wifi_up = req["up"]
        if "ap_clients" in req:
            p.ap_clients = req["ap_clients"]
        nets = [{"ssid": s, "rssi": r, "auth": a} for s, r, a in p.wifi_networks]
        return {"wifi": {"networks": nets, "up": p.wifi_up, "ap_clients": p.ap_clients}, "wlan": hw.wlan.view()}

    def _op_can(self, req, t_us):
        can = self._hw.can
        if "up" in req:
            can.up = req["up"]
        out = {"can": {"up": can.up, "sent": can.sent, "received": can.received,
                       "lost": can.lost}}
        if "since" in req and can.trace is not None:
            out["can"]["frames"] = can.trace.since(req["since"])
            out["can"]["trace_dropped"] = can.trace.dropped
            out["can"]["trace_oldest_us"] = can.trace.oldest_us()
        return out

    def _op_events(self, req, t_us):
        ring = self._hw.events
        return {"events": ring.since(req.get("since", 0)), "dropped": ring.dropped}
