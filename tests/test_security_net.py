"""Network secrets against a hostile LAN (docs/security.md, docs/ocpp.md, docs/hardware.md):
the hotspot is WPA2 with the board's own key, shown on the charger's display and never
over the web API; the OCPP AuthorizationKey is cleared when ocpp_url names another
central system (a pre-seeded one without its own: bound to the URL stored at boot), so
whoever may change the URL cannot have it sent to a server of theirs, and it goes over
unencrypted ws:// only when the technician allowed it (a central system cannot set one
there: the charger would never connect again)."""

import json
import re
import time

from csms import CentralSystem, ocpp_view

KEY = "0123456789abcdef0123"
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
WAIT_S = 20.0  # bound on a wait of the test, not a figure of the firmware


def login(c):
    """A technician's session (the charger's own password, tests/harness.py)."""
    c.login()


def write(c, method, path, body):
    """A state-changing call as a logged-in technician."""
    login(c)
    return c.http(method, path, json=body)


def answers(c):
    """Every JSON API answer a client can get, with and without a session."""
    paths = ("/api/status", "/api/history", "/api/faults", "/api/config", "/api/wifi/scan",
             "/api/cards", "/api/upgrade")
    c.cookies.clear()
    out = [json.dumps(c.http("GET", p).body, default=str) for p in paths]
    login(c)
    out += [json.dumps(c.http("GET", p).body, default=str) for p in paths]
    out.append(str(c.http("GET", "/api/history.csv").body))
    return out


class RecordingCentralSystem(CentralSystem):
    """A central system that keeps the Authorization header of every handshake."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.auth_headers = []

    def _check_request(self, connection, request):
        self.auth_headers.append(request.headers.get("Authorization"))
        return super()._check_request(connection, request)


# ---- the hotspot --------------------------------------------------------------------------------
def test_hotspot_is_wpa2_with_a_key_shown_on_the_display_never_on_the_api(charger):
    c = charger
    wlan = c.snapshot()["wlan"]
    key = wlan["ap_key"]
    assert wlan["mode"] == "ap" and wlan["ap_auth"] == "WPA2-PSK", wlan
    assert len(key) == 12 and all(ch in ALPHABET for ch in key), key
    assert (c.data_dir / "ap_secret.bin").stat().st_size == 16, "the board's secret"
    # Booted in AP mode: the name and the key in the display's rotation.
    c.wait_for(lambda s: any(e["what"] == "display" and e["value"] == key
                             for e in c.events()), timeout=WAIT_S)
    for body in answers(c):
        assert key not in body, body[:200]
    # Long press to client mode and back: the name at once, then the key.
    c.sim("button", ms=3500)
    c.wait_for(lambda s: s["wifi_mode"] == "client" and not s["plant"]["button_pressed"],
               timeout=WAIT_S)
    t0 = c.snapshot()["t_us"]
    c.sim("button", ms=3500)
    c.wait_for(lambda s: s["wifi_mode"] == "ap", timeout=WAIT_S)
    shown = c.wait_for(lambda s: [e["value"] for e in c.events(t0) if e["what"] == "display"
                                  and e["value"] in ("ACPILE_01", key)][:2] == ["ACPILE_01", key]
                       and s, timeout=WAIT_S)
    assert shown["wlan"]["ap_key"] == key, "the same key after the switch"
    # A short press in AP mode: shown again, the mode unchanged, no beep.
    c.wait_for(lambda s: not s["plant"]["button_pressed"], timeout=WAIT_S)
    time.sleep(3.5)
    t1 = c.snapshot()["t_us"]
    c.sim("button", ms=400)
    c.wait_for(lambda s: any(e["what"] == "display" and e["value"] == "ACPILE_01"
                             for e in c.events(t1)), timeout=WAIT_S)
    assert c.snapshot()["wifi_mode"] == "ap"
    assert not [e for e in c.events(t1) if e["what"] == "buzzer"]


def test_hotspot_key_survives_a_restart_and_a_reset_of_the_settings(start_charger):
    c = start_charger()
    key = c.snapshot()["wlan"]["ap_key"]
    c.stop()
    (c.data_dir / "settings.json").unlink(missing_ok=True)  # the settings back to defaults
    c.start()
    assert c.snapshot()["wlan"]["ap_key"] == key, "the printed label stays valid"


# ---- the OCPP AuthorizationKey ---------------------------------------------------------------
def test_url_swap_to_another_central_system_never_receives_the_key(ocpp, cs):
    cs.auth = {"CP1": KEY}
    c = ocpp(settings={"ocpp_allow_insecure_auth": True},
             config={"AuthorizationKey": KEY, "RetryBackOffWaitMinimum": 1,
                     "RetryBackOffRandomRange": 0})
    assert cs.connections, "the key works with its own central system"
    other = RecordingCentralSystem(port=0)
    other.start()
    try:
        r = write(c, "PUT", "/api/config", {"ocpp_url": other.url("CP1")})
        assert r.status == 200, r
        assert r.body["ocpp_auth_key_set"] is False and r.body["ocpp_auth_key"] == ""
        assert str(cs.port) in r.body["ocpp_auth_key_note"], r.body["ocpp_auth_key_note"]
        other.wait_for(lambda: other.connected("CP1"), WAIT_S, "connected to the other")
        assert other.auth_headers and set(other.auth_headers) == {None}, other.auth_headers
        assert "AuthorizationKey cleared" in c.log_path.read_text()
        # Back to the first: the key is gone for good, its owner refuses the charger ...
        mark = len(cs.refused)
        assert write(c, "PUT", "/api/config", {"ocpp_url": cs.url("CP1")}).status == 200
        cs.wait_for(lambda: cs.refused[mark:], WAIT_S, "refused without the key")
        assert cs.refused[mark] == ("CP1", 401)
        # ... until the technician enters it again (write-only).
        n = len(cs.connections)
        r = write(c, "PUT", "/api/config", {"ocpp_auth_key": KEY})
        assert r.status == 200 and r.body["ocpp_auth_key_set"] is True, r
        cs.wait_for(lambda: len(cs.connections) > n and cs.connected("CP1"), WAIT_S, "back")
        r = write(c, "PUT", "/api/config", {"ocpp_auth_key": "short"})
        assert r.status == 400 and "ocpp_auth_key" in r.body["fields"], r
        for body in answers(c):
            assert KEY not in body, body[:200]
    finally:
        other.close()


def test_basic_auth_over_ws_is_refused_unless_the_technician_allows_it(ocpp, cs):
    cs.auth = {"CP1": KEY}
    c = ocpp(wait_boot=False,
             config={"AuthorizationKey": KEY, "RetryBackOffWaitMinimum": 1,
                     "RetryBackOffRandomRange": 0})
    c.wait_for(lambda s: (ocpp_view(c) or {}).get("refused"), timeout=WAIT_S)
    refused = ocpp_view(c)["refused"]
    assert "ws://" in refused and "ocpp_allow_insecure_auth" in refused, refused
    assert re.search(r"AuthorizationKey over ws:// .*not connecting", c.log_path.read_text())
    time.sleep(1.5)  # a retry or two: still nothing goes out
    assert not cs.connections and not cs.refused, "not even a handshake"
    body = write(c, "GET", "/api/config", None).body
    assert body["ocpp_allow_insecure_auth"] is False and body["ocpp_auth_key_set"] is True
    r = write(c, "PUT", "/api/config", {"ocpp_allow_insecure_auth": "on"})
    assert r.status == 400 and "ocpp_allow_insecure_auth" in r.body["fields"], r
    assert write(c, "PUT", "/api/config", {"ocpp_allow_insecure_auth": True}).status == 200
    cs.wait_for(lambda: cs.connected("CP1"), WAIT_S, "connected once allowed")
    c.wait_for(lambda s: ocpp_view(c)["refused"] is None, timeout=WAIT_S)


def test_a_key_sent_over_plain_ws_is_rejected_and_the_charger_stays_online(ocpp, cs):
    """At profile 0 over ws:// without the "insecure" tick the charger could never send
    an AuthorizationKey: ChangeConfiguration of one is Rejected, else one frame injected
    into the plain link would keep it off OCPP until a technician came."""
    cs.auth = None
    c = ocpp(config={"RetryBackOffWaitMinimum": 1, "RetryBackOffRandomRange": 0})
    n = len(cs.connections)
    ans = cs.call("CP1", "ChangeConfiguration", key="AuthorizationKey", value=KEY)
    assert ans["status"] == "Rejected", ans
    time.sleep(1.5)
    assert cs.connected("CP1") and len(cs.connections) == n, "still online, same link"
    assert write(c, "GET", "/api/config", None).body["ocpp_auth_key_set"] is False
    assert ocpp_view(c)["refused"] is None
    assert b"AuthorizationKey" not in ((c.data_dir / "ocpp_config.json").read_bytes()
                                       if (c.data_dir / "ocpp_config.json").exists() else b"")


def test_a_pre_seeded_key_does_not_go_to_the_first_url_set_on_the_web_app(ocpp, cs):
    """A key pre-seeded without its central system, on a charger that boots without
    ocpp_url, is bound to none: whoever sets the URL first (any session) gets no key."""
    other = RecordingCentralSystem(port=0)
    other.start()
    try:
        c = ocpp(wait_boot=False, settings={"ocpp_url": "", "ocpp_allow_insecure_auth": True},
                 config={"AuthorizationKey": KEY})
        c.wait_for(lambda s: True)
        r = write(c, "PUT", "/api/config", {"ocpp_url": other.url("CP1")})
        assert r.status == 200, r
        other.wait_for(lambda: other.connected("CP1"), WAIT_S, "connected")
        assert other.auth_headers and set(other.auth_headers) == {None}, other.auth_headers
        body = write(c, "GET", "/api/config", None).body
        assert body["ocpp_auth_key_set"] is False and "after the boot" in body["ocpp_auth_key_note"]
    finally:
        other.close()
