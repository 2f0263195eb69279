#!/usr/bin/env python3
"""evctl: drive the simulated charger through its control socket (docs/simulator.md).

    evctl snapshot                       state of the charger and of the simulated plant
    evctl ev C --max-a 16 [--no-diode] [--draw-a 20 | --no-draw] [--phases 3] [--start-min-a 8]
    evctl cable 220 | evctl cable none   PP resistor of the plugged cable (none = unplugged)
    evctl grid 230 230 230 --hz 50       mains voltage per phase (0 = phase missing)
    evctl temp --relay 40 --socket open  temperatures in C ("open" = open sensor)
    evctl fault rcd_dc on|off [--relay 2]
    evctl card 04A1B2C3 [--kind CPU] [--ms 1000]
    evctl button 3500                    hold the WiFi-mode button for 3.5 s
    evctl wifi --up|--down [--network HOME:-60:wpa2 ...] [--no-networks] [--ap-clients 1]
    evctl events [--since T_US]
    evctl watch                          print changes and events until Ctrl-C
    evctl raw '{"op": "snapshot"}'       any request, reply printed as JSON

--port defaults to $EVSE_SIM_PORT or 8090. Exit status: 0 ok, 1 the charger answered
{"ok": false}, 2 no connection or bad usage. Python 3 standard library only.
"""

import argparse
import json
import os
import socket
import sys
import time

TIMEOUT_S = 10.0
FAULTS = ("rcd_ac", "rcd_dc", "pe", "relay_weld", "relay_stuck_open", "lock", "fan",
          "cp_short", "diode", "internal_meter", "phase_rotation", "rfid_reader")


class Link:
    """One TCP connection to the control socket; one JSON line out, one line back."""

    def __init__(self, host, port, timeout=TIMEOUT_S):
        self.host, self.port, self.timeout = host, port, timeout
        self._sock = self._file = None

    def request(self, obj):
        try:
            if self._sock is None:
                self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
                self._file = self._sock.makefile("rb")
            self._sock.sendall(json.dumps(obj).encode() + b"\n")
            line = self._file.readline()
        except OSError:
            self.close()
            raise
        if not line:
            self.close()
            raise ConnectionError("the charger closed the connection")
        return json.loads(line)

    def close(self):
        if self._sock is not None:
            self._file.close()
            self._sock.close()
        self._sock = self._file = None


# -- output --------------------------------------------------------------------------------

def _secs(t_us):
    return "%10.3f s" % (t_us / 1e6)


def _light(v):
    if not v:
        return "-"
    return v["colour"] if v["pattern"] == "steady" else "%s/%s" % (v["colour"], v["pattern"])


def format_event(e):
    v = e["value"]
    what = e["what"]
    if what == "pwm_duty_pct":
        v = "%.1f %%" % v if v is not None else "static %s V" % e.get("cp", "?")
    elif what == "error":
        v = "%s %s" % (v, "raised" if e.get("active") else "cleared")
    elif what == "leds":
        v = "%s %s" % (v["name"], _light(v))
    elif what == "led_belt":
        v = _light(v)
    elif what == "buzzer":
        v = "%d ms" % v
    return "%s  %-13s %s" % (_secs(e["t_us"]), what, v)


def format_snapshot(s):
    p = s.get("plant", {})
    ev = p.get("ev", {})
    sess = s.get("session") or {}
    pwm = s.get("pwm_duty_pct")
    pilot = "%.1f %%" % pwm if pwm is not None else "static %s V" % s.get("cp")
    errors = ", ".join(s.get("errors") or []) or "-"
    leds = "  ".join("%s %s" % (k, _light(v)) for k, v in sorted((s.get("leds") or {}).items()))
    if sess.get("active"):
        session = "%s by %s, %.3f kWh" % (
            sess.get("id_tag"), sess.get("start_mode"), sess.get("energy_kwh") or 0)
    else:
        session = "none"
    faults = ", ".join(p.get("faults") or []) or "-"
    rows = [
        ("t", _secs(s["t_us"]).strip()),
        ("state", "%s   cp %s   errors %s" % (s.get("state"), s.get("cp_state"), errors)),
        ("pilot", "%s   hi %s mV  lo %s mV   offered %s A" % (
            pilot, s.get("cp_hi_mv"), s.get("cp_lo_mv"), s.get("offered_a"))),
        ("relays", "%s   feedback %s   lock %s" % (
            "closed" if s.get("relays_closed") else "open", s.get("relay_feedback"),
            s.get("lock"))),
        ("display", "%r   belt %s   tap light %s" % (
            s.get("display"), _light(s.get("led_belt")), "on" if s.get("tap_light") else "off")),
        ("leds", leds),
        ("session", session),
        ("wifi", "%s   %s" % (s.get("wifi_mode"), s.get("wlan"))),
        ("ev", "%s  max %s A  draw %s  diode %s  phases %s  following %s A" % (
            ev.get("state"), ev.get("max_a"), ev.get("draw_a"), ev.get("diode"),
            ev.get("phases"), ev.get("following_a"))),
        ("power", "amps %s  %.0f W  %.3f Wh" % (
            p.get("amps"), p.get("power_w") or 0, p.get("energy_wh") or 0)),
        ("plant", "cable %s ohm  grid %s  temps %s" % (
            p.get("pp_ohms"), p.get("grid"), p.get("temp"))),
        ("faults", "%s   card %s   button %s" % (
            faults, p.get("card"), "pressed" if p.get("button_pressed") else "up")),
        ("fan", "%s   heap free %s" % (s.get("fan"), s.get("heap_free"))),
    ]
    return "\n".join("%-12s %s" % row for row in rows)


def show_reply(reply, raw=False):
    if raw:
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif not reply.get("ok"):
        print("error: %s" % reply.get("error"), file=sys.stderr)
    elif "events" in reply:
        for e in reply["events"]:
            print(format_event(e))
        if reply.get("dropped"):
            print("(%d older events were overwritten)" % reply["dropped"])
    elif "cp_state" in reply:
        print(format_snapshot(reply))
    else:
        rest = {k: v for k, v in reply.items() if k not in ("ok", "t_us")}
        print("ok at %s  %s" % (_secs(reply["t_us"]).strip(), json.dumps(rest, sort_keys=True)))
    return 0 if reply.get("ok") else 1


# -- requests from the command line ----------------------------------------------------------

def _temp(text):
    return None if text.lower() in ("open", "none", "null") else float(text)


def _network(text):
    try:
        ssid, rssi, auth = text.rsplit(":", 2)
        return {"ssid": ssid, "rssi": int(rssi), "auth": auth}
    except ValueError:
        raise argparse.ArgumentTypeError("network is SSID:RSSI:AUTH, e.g. HOME:-60:wpa2") from None


def build_request(a):
    if a.cmd == "snapshot":
        return {"op": "snapshot"}
    if a.cmd == "ev":
        r = {"op": "ev"}
        if a.state:
            r["state"] = a.state.upper()
        for key in ("max_a", "diode_v", "phases"):
            if getattr(a, key) is not None:
                r[key] = getattr(a, key)
        if a.start_min_a is not None:
            r["start_min_a"] = a.start_min_a
        if a.start_s is not None:
            r["start_s"] = a.start_s
        if a.diode is not None:
            r["diode"] = a.diode
        if a.no_draw:
            r["draw_a"] = None
        elif a.draw_a is not None:
            r["draw_a"] = a.draw_a
        if a.asleep is not None:
            r["asleep"] = a.asleep
        return r
    if a.cmd == "pilot":
        r = {"op": "pilot"}
        for opt in ("offset", "gen_pos", "gen_neg"):
            key = opt + "_v"
            if getattr(a, opt) is not None:
                r[key] = getattr(a, opt)
        return r
    if a.cmd == "cable":
        if a.ohms.lower() == "none":
            return {"op": "cable", "pp_ohms": None}
        ohms = float(a.ohms)
        return {"op": "cable", "pp_ohms": int(ohms) if ohms.is_integer() else ohms}
    if a.cmd == "grid":
        r = {"op": "grid", "volts": a.volts}
        if a.hz is not None:
            r["hz"] = a.hz
        return r
    if a.cmd == "temp":
        r = {"op": "temp"}
        for opt, key in (("relay", "relay_c"), ("socket", "socket_c"), ("env", "env_c")):
            if getattr(a, opt) is not None:
                r[key] = _temp(getattr(a, opt))
        return r
    if a.cmd == "fault":
        r = {"op": "fault", "name": a.name, "active": a.state == "on"}
        if a.relay is not None:
            r["relay"] = a.relay
        return r
    if a.cmd == "card":
        r = {"op": "card", "uid": a.uid, "kind": a.kind}
        if a.ms is not None:
            r["ms"] = a.ms
        return r
    if a.cmd == "button":
        return {"op": "button", "ms": a.ms}
    if a.cmd == "wifi":
        r = {"op": "wifi"}
        if a.up is not None:
            r["up"] = a.up
        if a.no_networks:
            r["networks"] = []
        elif a.network:
            r["networks"] = a.network
        if a.ap_clients is not None:
            r["ap_clients"] = a.ap_clients
        return r
    if a.cmd == "events":
        return {"op": "events", "since": a.since}
    if a.cmd == "raw":
        return json.loads(a.json)
    raise ValueError(a.cmd)


# -- watch -------------------------------------------------------------------------------------

_WATCHED = ("state", "cp_state", "pwm_duty_pct", "offered_a", "relays_closed", "lock", "errors",
            "display", "led_belt", "wifi_mode")


_UNSEEN = object()


def watch(link, interval):
    try:
        _watch(link, interval)
    except KeyboardInterrupt:
        pass
    return 0


def _watch(link, interval):
    last = {}
    since = None
    connected = None
    while True:
        try:
            snap = link.request({"op": "snapshot"})
            if since is None:
                since = snap.get("t_us", 0)  # events from now on
            evs = link.request({"op": "events", "since": since})
            if connected is not True:
                print("-- connected to %s:%d" % (link.host, link.port))
                connected = True
        except (OSError, ValueError):
            if connected is not False:
                print("-- waiting for the charger on %s:%d" % (link.host, link.port))
                connected = False
            last, since = {}, None  # a restarted charger starts a new clock
            time.sleep(max(interval, 1.0))
            continue
        if snap.get("ok"):
            changes = ["%s=%s" % (k, json.dumps(snap.get(k))) for k in _WATCHED
                       if snap.get(k) != last.get(k, _UNSEEN)]
            if changes:
                print("%s  %s" % (_secs(snap["t_us"]), "  ".join(changes)))
            last = snap
        else:
            print("%s  (%s)" % (_secs(snap["t_us"]), snap.get("error")))
        for e in evs.get("events", ()):
            print(format_event(e))
            since = e["t_us"] + 1
        time.sleep(interval)


# -- main ----------------------------------------------------------------------------------------

def parser():
    p = argparse.ArgumentParser(prog="evctl", description="Drive the simulated EV PLUS charger.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("EVSE_SIM_PORT") or 8090))
    p.add_argument("--json", action="store_true", help="print the raw reply")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("snapshot", help="charger and plant state")
    ev = sub.add_parser("ev", help="the simulated EV")
    ev.add_argument("state", nargs="?", choices=["A", "B", "C", "D", "a", "b", "c", "d"])
    ev.add_argument("--max-a", type=float)
    ev.add_argument("--diode", dest="diode", action="store_true", default=None)
    ev.add_argument("--no-diode", dest="diode", action="store_false")
    ev.add_argument("--diode-v", type=float)
    ev.add_argument("--draw-a", type=float, help="force this draw (a misbehaving EV)")
    ev.add_argument("--no-draw", action="store_true", help="stop forcing the draw")
    ev.add_argument("--phases", type=int, choices=[1, 3])
    ev.add_argument("--asleep", dest="asleep", action="store_true", default=None,
                    help="in B, deaf to the PWM until the wake-up sequence")
    ev.add_argument("--awake", dest="asleep", action="store_false")
    pilot = sub.add_parser("pilot", help="the charger's pilot: ADC zero error, generator (V)")
    pilot.add_argument("--offset", type=float, help="ADC zero error, added to every reading")
    pilot.add_argument("--gen-pos", type=float, help="generator's positive level (12 at boot)")
    pilot.add_argument("--gen-neg", type=float, help="generator's negative level (-12 at boot)")
    ev.add_argument("--start-min-a", type=float,
                    help="a car that draws nothing while offered less (Zoe: 8)")
    ev.add_argument("--start-s", type=float,
                    help="a car that draws only this long after its contacts closed")
    cable = sub.add_parser("cable", help="PP resistor in ohms, or none")
    cable.add_argument("ohms")
    grid = sub.add_parser("grid", help="mains volts per phase")
    grid.add_argument("volts", type=float, nargs=3)
    grid.add_argument("--hz", type=float)
    temp = sub.add_parser("temp", help="temperatures in C (open = open sensor)")
    temp.add_argument("--relay")
    temp.add_argument("--socket")
    temp.add_argument("--env")
    fault = sub.add_parser("fault", help="inject or clear a fault")
    fault.add_argument("name", choices=FAULTS)
    fault.add_argument("state", choices=["on", "off"])
    fault.add_argument("--relay", type=int, choices=[1, 2])
    card = sub.add_parser("card", help="hold a card on the reader")
    card.add_argument("uid")
    card.add_argument("--kind", default="M1", choices=["M1", "CPU"])
    card.add_argument("--ms", type=int)
    button = sub.add_parser("button", help="press the WiFi-mode button")
    button.add_argument("ms", type=int)
    wifi = sub.add_parser("wifi", help="scan results and uplink")
    wifi.add_argument("--up", dest="up", action="store_true", default=None)
    wifi.add_argument("--down", dest="up", action="store_false")
    wifi.add_argument("--network", action="append", type=_network, metavar="SSID:RSSI:AUTH")
    wifi.add_argument("--no-networks", action="store_true")
    wifi.add_argument("--ap-clients", type=int)
    events = sub.add_parser("events", help="actuator events since a t_us")
    events.add_argument("--since", type=int, default=0)
    w = sub.add_parser("watch", help="print changes and events until Ctrl-C")
    w.add_argument("--interval", type=float, default=0.5)
    raw = sub.add_parser("raw", help="send a JSON request as is")
    raw.add_argument("json")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    link = Link(a.host, a.port)
    try:
        if a.cmd == "watch":
            return watch(link, a.interval)
        try:
            req = build_request(a)
        except ValueError as e:
            print("evctl: %s" % e, file=sys.stderr)
            return 2
        reply = link.request(req)
        return show_reply(reply, raw=a.json or a.cmd == "raw")
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as e:
        print("evctl: no answer from %s:%d: %s" % (a.host, a.port, e), file=sys.stderr)
        return 2
    finally:
        link.close()


if __name__ == "__main__":
    sys.exit(main())
