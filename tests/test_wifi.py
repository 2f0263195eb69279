"""WiFi modes (manual §8.1, §7.1.3): the AP hotspot by default, the button's long press
to client mode, and a client link that comes back by itself, with backoff, no reboot."""

WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware


def login(c):
    assert c.http("POST", "/api/login", json={"password": c.password}).status == 200


def test_ap_by_default_with_the_manual_ssid_and_led(charger):
    snap = charger.wait_for(lambda s: s["leds"]["wifi"] == {"colour": "blue", "pattern": "steady"})
    assert snap["wifi_mode"] == "ap" and snap["wlan"]["ap_ssid"].startswith("ACPILE_")
    charger.sim("wifi", ap_clients=2)  # a second phone tries: one at a time (manual 8.1.1)
    charger.wait_for(lambda s: s["leds"]["wifi"] == {"colour": "blue", "pattern": "slow"})
    login(charger)
    wifi = charger.http("GET", "/api/status").body["wifi"]
    assert (wifi["ap_clients"], wifi["ap_max_clients"], wifi["module_ok"]) == (1, 1, True), wifi


def test_client_mode_reconnects_by_itself_with_backoff(charger):
    c = charger
    login(c)
    c.sim("wifi", networks=[{"ssid": "Garage", "rssi": -60, "auth": "WPA2"}], up=False)
    nets = c.http("GET", "/api/wifi/scan").body["networks"]
    assert nets[0]["ssid"] == "Garage"
    r = c.http("POST", "/api/wifi/connect", json={"ssid": "Garage", "password": "secret-pass"})
    assert r.status == 200, r
    assert "secret-pass" not in str(c.http("GET", "/api/config").body)
    t0 = c.sim("button", ms=3500)["t_us"]
    snap = c.wait_for(lambda s: s["wifi_mode"] == "client", timeout=WAIT_S)
    assert any(e["what"] == "buzzer" and e["value"] == 1000 for e in c.events(t0))
    c.wait_for(lambda s: s["leds"]["wifi"] == {"colour": "green", "pattern": "steady"})
    # The uplink is down: attempts continue with a growing pause (1, 2, 4 s ...).
    snap = c.wait_for(lambda s: s["wlan"]["connects"] >= 3, timeout=15)
    assert not snap["wlan"]["connected"]
    c.sim("wifi", up=True)
    c.wait_for(lambda s: s["leds"]["wifi"] == {"colour": "green", "pattern": "slow"}, timeout=20)
    # The link drops and comes back: no reboot, no intervention.
    c.sim("wifi", up=False)
    c.wait_for(lambda s: s["leds"]["wifi"]["pattern"] == "steady", timeout=WAIT_S)
    c.sim("wifi", up=True)
    c.wait_for(lambda s: s["wlan"]["connected"] and s["leds"]["wifi"]["pattern"] == "slow",
               timeout=20)
    assert c.proc.poll() is None, "the same process: no reboot"
    status = c.http("GET", "/api/status").body
    assert status["wifi"]["connected"] and status["wifi"]["ssid"] == "Garage"
