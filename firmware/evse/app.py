# The application: builds every part of the charger on a board and runs its tasks.
import asyncio
import gc
import time

import log
import periodic
import evse
from evse import pilot
from evse import faults
from evse import limits
from evse import version
from evse.auth import Authorizer
from evse.cards import CardStore
from evse.charger import Charger
from evse.history import History
from evse.hmi import Hmi
from evse.metering import Metering
from evse.protection import Protection
from evse import settings
from evse.settings import Settings
from evse.supervisor import Supervisor

_log = log.get("app")

_PILOT_MS = 10  # CP sampling period
# Settings whose default switches a limiter off or points it at another pool or bus
# device (app._config_limit).
_LIMITER_SETTINGS = ("meter_model", "meter_addr", "lb_enabled", "lb_pool_id", "can_addr",
                     "phase_set")
_CONTROL_MS = 100  # control logic period, on the clock (not every nth sample: a busy loop
# stretches the samples, and with them a count of samples)
GC_EVERY = 16 * 1024  # bytes allocated between two collections (gc.threshold)...
_GC_MIN = 2 * 1024  # ...or a quarter of the free heap when that is less, but at least this
_GC_TUNE_MS = 5000
_PROTECTION_MS = 100
_METER_MS = 1000
_HMI_MS = 100
_BALANCE_LOOK_MS = 100  # how soon a switched-on load balancing starts (one balancer tick)
_HTTP_RETRY_S = 60  # the web server's next try to listen when there was no interface
_OTA_IDLE_MS = 60000  # the OTA service is dropped this long after its last use...
_OTA_LOOK_MS = 5000  # ...looked at this often


class App:
    def __init__(self, hw):
        self.hw = hw
        self.data_dir = hw.data_dir
        self.uptime_s = 0  # counted by the control tick: ticks_ms alone wraps
        self._up_ms = time.ticks_ms()
        settings.add_languages(self.data_dir)  # before the stored `language` is checked
        self.settings = Settings(self.data_dir + "/settings.json")
        self.settings.load()
        self.history = History(self.data_dir, hw.rtc.now)
        self.charger = Charger(hw, self.settings)
        self.protection = Protection(
            self.charger, hw, self.settings, self.history, self.data_dir
        )
        self.metering = Metering(hw, self.charger, self.protection, self.history)
        from evse.power import PowerManager

        self.power = PowerManager(
            self.charger,
            self.settings,
            self.protection,
            self.metering,
            rs485=hw.rs485,
            data_dir=self.data_dir,
            own_meter=hw.meter,
            clock_us=hw.clock_us,
            rtc=hw.rtc.now,
        )
        self.balance = _Balancing(self)
        self.hmi = Hmi(hw, self.charger, self.metering, self.toggle_wifi_mode, self.settings)
        self.hmi.notices.append(self._password_notice)  # before CONFIG ERROR: the way out
        self.hmi.notices.append(self._config_notice)
        self.hmi.notices.append(self.balance.notice)
        self.hmi.notices.append(self._cp_cal_notice)
        self.auth = Authorizer(self.charger, self.settings, self.hmi, self.metering)
        self.cards = CardStore(self.data_dir)
        self.auth.sources.append(self.cards)
        from evse.rfid import RfidReader

        self.rfid = RfidReader(hw, self.auth)
        self.hmi.notices.append(self.rfid.notice)
        self.supervisor = Supervisor(hw.wdt, self.charger.emergency_stop, self.charger.hold)
        self._records = []  # history writes deferred out of the pilot task
        self._records_flag = asyncio.Event()
        self.charger.listeners.append(self._on_charger)
        self.settings.on_change(self._on_settings)
        hw.rcd.set_handler(self.charger.rcd_handler)
        self.protection.load_latches()
        if self.settings.invalid:  # the Report page names what is not as configured
            self.history.add_fault("CFG", {"settings": dict(self.settings.invalid)})
        self._config_limit()
        self.history.recover_open_session(hw.rtc.now())
        from evse.wifi import WifiManager

        self.wifi = WifiManager(hw.wlan, self.settings)
        self.wifi.apply()
        self.hmi.show_hotspot(idle_only=True)  # booted in AP mode: its name and key
        self.http = None
        self.api = None
        self.ota = _Upgrades(self)
        from evse import ocpp

        self.ocpp = ocpp.attach(self)
        self.ota.attach(self.ocpp)
        stores = self.ocpp.store_errors()
        if stores:  # the Report page names the OCPP files that could not be read
            self.history.add_fault("CFG", {"ocpp": dict(stores)})

    # ---- events --------------------------------------------------------------------------
    def _on_charger(self, event, ch, *rest):
        if event == "session_start":
            self._records.append(("start", ch.session))
        elif event == "session_end":
            self._records.append(("end", rest[0]))
        else:
            return
        self._records_flag.set()

    def _on_settings(self, changed):
        self.charger.apply_settings(changed)
        self._config_limit()
        if "wifi_mode" in changed or "wifi_ssid" in changed or "wifi_password" in changed:
            self._apply_wifi()

    def toggle_wifi_mode(self):
        mode = "client" if self.settings["wifi_mode"] == "ap" else "ap"
        self.settings.apply({"wifi_mode": mode})
        return mode

    def _apply_wifi(self):
        self.wifi.apply()

    # ---- tasks -----------------------------------------------------------------------------
    async def _pilot_task(self):
        ch = self.charger
        # The first control tick a period after the first sample: after a restart of
        # this task (the supervisor's safe state) the pilot is sampled again first.
        due = time.ticks_add(time.ticks_ms(), _CONTROL_MS)
        while True:
            ch.tick_pilot()
            now = time.ticks_ms()
            if time.ticks_diff(now, due) >= 0:
                due = periodic.next_due(due, now, _CONTROL_MS)
                self.auth.tick()
                ch.tick_control(now)
                self._count_uptime(now)
                self.supervisor.checkin("pilot")
            await asyncio.sleep_ms(_PILOT_MS)

    def _count_uptime(self, now_ms):
        """Whole seconds since boot, from the control tick: a boot time compared days
        later would read as negative once the ticks wrap (2**29 ms on a 32-bit port)."""
        s = time.ticks_diff(now_ms, self._up_ms) // 1000
        if s > 0:
            self.uptime_s += s
            self._up_ms = time.ticks_add(self._up_ms, s * 1000)

    async def _protection_task(self):
        while True:
            self.protection.tick(time.ticks_ms())
            self.supervisor.checkin("protection")
            await asyncio.sleep_ms(_PROTECTION_MS)

    async def _metering_task(self):
        while True:
            self.metering.read(time.ticks_ms())
            await asyncio.sleep_ms(_METER_MS)

    async def _hmi_task(self):
        while True:
            self.hmi.tick(time.ticks_ms())
            await asyncio.sleep_ms(_HMI_MS)

    async def _records_task(self):
        while True:
            await self._records_flag.wait()
            self._records_flag.clear()
            while self._records:
                kind, s = self._records.pop(0)
                if kind == "start":
                    self.history.session_started(s)
                else:
                    self.history.session_ended(s)

    async def _http_task(self):
        from evse import api

        host, port = self.hw.http_addr
        self.api = api.Api(self.hw, self.data_dir, self.settings, self.charger,
                           self.protection, self.history, self.auth, self.cards, self.rfid,
                           self.ota, self.status, self.errors)
        self.http = api.make_server(self.api, _www_dir())
        why = self._password_error()
        if why:  # the Report page names it, as a setting that cannot be read
            self.history.add_fault("CFG", {"password.json": why})
        told = False
        while True:
            try:
                await self.http.start(host, port)
                break
            except OSError as e:
                # No interface to listen on (an image without a network, as the F405's):
                # the charger charges on without its web app. A task that died here would
                # put it in its safe state, ending the charge, at every restart.
                if not told:
                    _log.error("web app not started (%r): trying again every %d s",
                               e, _HTTP_RETRY_S)
                    told = True
                await asyncio.sleep(_HTTP_RETRY_S)
        _log.info("web app on http://%s:%d", host, port)
        while True:
            await asyncio.sleep(60)
            self.api.auth.expire()

    async def run(self):
        sup = self.supervisor
        sup.add("pilot", self._pilot_task, critical=True)
        sup.add("protection", self._protection_task, critical=True)
        sup.add("metering", self._metering_task)
        sup.add("power", self.power.run)
        sup.add("balance", self.balance.run)
        sup.add("hmi", self._hmi_task)
        sup.add("records", self._records_task)
        sup.add("rfid", self.rfid.run)
        sup.add("wifi", self.wifi.run)
        sup.add("http", self._http_task)
        sup.add("ota", self.ota.run)
        for name, fn in self.ocpp.tasks():
            sup.add(name, fn)
        for name, fn in self.hw.tasks(self):
            sup.add(name, fn)
        gc.collect()
        # Collect after every GC_EVERY bytes allocated, not only when the heap is full:
        # garbage is then reused near the bottom before long-lived objects get scattered
        # through the free space. Without it a 150 s soak left 30 KB free but no block
        # above 1.7 KB; with it the largest free block stayed at 18 KB or more, and at
        # 13.5 KB or more over a 1-hour soak (docs/soak.md, docs/development.md).
        gc.threshold(GC_EVERY)
        sup.add("gc", self._gc_task)
        _log.info("EV PLUS %s on %s ready", version.VERSION, self.hw.name)
        await sup.run()

    async def _gc_task(self):
        """With little free, a collection after GC_EVERY bytes would come only once the
        heap is full, and long-lived objects would then be scattered through all of it:
        collect after a quarter of the free heap instead. mem_free() does
        not count the garbage not yet collected: between collections the figure is low,
        so a collection comes sooner, never later."""
        while True:
            await asyncio.sleep_ms(_GC_TUNE_MS)
            gc.threshold(max(_GC_MIN, min(GC_EVERY, gc.mem_free() // 4)))

    # ---- views -----------------------------------------------------------------------------
    def errors(self):
        ch = self.charger
        codes = faults.codes(ch.active | ch.latched)
        if self.settings.invalid or self.ocpp.store_errors() or self._password_error():
            codes.append("CFG")  # not a trip: the charger runs on the safe values
        return codes

    def _password_error(self):
        api = self.api
        return api.auth.load_error if api is not None else None

    def config_errors(self):
        """{setting or OCPP file: why, and what is in use instead}."""
        out = dict(self.settings.invalid)
        out.update(self.ocpp.store_errors())
        why = self._password_error()
        if why:
            out["password.json"] = why
        return out

    def _config_limit(self):
        """A meter or load-balancing setting that cannot be used falls back to its default,
        which switches that limiter off: the house or pool limit it kept is unknown, so
        the charger offers its minimum until the setting is saved again."""
        bad = [k for k in _LIMITER_SETTINGS if k in self.settings.invalid]
        self.charger.set_external_limit("config", limits.MIN_A if bad else None)

    def _config_notice(self):
        bad = self.settings.invalid or self.ocpp.store_errors() or self._password_error()
        return "CONFIG ERROR" if bad else None

    def _password_notice(self):
        """The reset code while the password file cannot be read (evse/web_auth.py): only
        someone at the charger sees it. 12 characters, the display's width."""
        api = self.api
        code = api.auth.reset_code if api is not None else None
        return "PWD " + code if code else None

    def _cp_cal_notice(self):
        return "CP CAL ERROR" if self.charger.cp_cal.error else None

    def cp_cal_view(self):
        """The zero of the CP measurement in use and the last estimate (docs/errors.md)."""
        cal = self.charger.cp_cal
        return {"zero_mv": cal.zero_mv, "last_mv": cal.last_mv, "error": cal.error}

    def session_view(self):
        s = self.charger.session
        if s is None:
            return {"active": False, "energy_kwh": 0.0, "id_tag": None, "start_mode": None}
        v = s.as_dict()
        v["duration_min"] = max(0, self.hw.rtc.now() - s.start_s) // 60
        return v

    def _view(self):
        """What the Charger State page and the simulator's snapshot both show."""
        ch = self.charger
        return {
            "state": ch.ocpp_status(),
            "cp_state": pilot.NAMES[ch.cp_state],
            "cp_cal": self.cp_cal_view(),
            "errors": self.errors(),
            "latched": faults.codes(ch.latched),
            "offered_a": ch.offered_a,
            "limit_a": ch.limit_a,
            "limit_binding": ch.limit_binding,
            "session": self.session_view(),
            "car_phases": self.metering.view()["car_phases"],  # measured this session
            "wifi_mode": self.settings["wifi_mode"],
            "reader_fault": self.rfid.fault,
            "meter": self.power.view(),
            "meter_search": self.power.search_view(),
            # null in charge_mode normal; in a pool the mode is the master's (its Balancer)
            "solar": (self.power.pool or self.power).solar_view(),
            "tariff": self.power.tariff_view(),
            "balance": self.balance.view(),
            "ocpp": self.ocpp.view(),
        }

    def sim_status(self):
        ch = self.charger
        v = self._view()
        v["card_read_waiting"] = self.rfid.reading
        v["restarts"] = dict(self.supervisor.restarts)
        v["lock"] = None if ch.case_b else "none"
        return v

    def status(self):
        """The Charger State page and /api/status."""
        ch = self.charger
        hw = self.hw
        m = self.metering
        t = hw.temps
        v = self._view()
        v.update({
            "config_errors": self.config_errors(),
            "limits": {
                "max_current": self.settings["max_current_a"],
                "cable": ch.cable_a,
                "thermal": ch.thermal_a,
                "external": dict(ch.external),
            },
            "serial": hw.serial,
            "software_version": version.VERSION,
            "grid_v": m.volts,
            "grid_hz": m.hz,
            "output_a": m.amps,
            "active_power_kw": round(m.power_w / 1000, 3),
            "charging_min": v["session"]["duration_min"] if ch.session else 0,
            "system_time": hw.rtc.now(),
            "relay_c": t.relay_c,
            "socket_c": t.socket_c,
            "env_c": t.env_c,
            "cp_v": round(ch.hi_mv / 1000, 2),
            "phase_rotation": "RST" if m.rotation_ok else "wrong",
            "fan": "Run" if hw.fan.running else "Stop",
            "language": self.settings["language"],
            "wifi": self.wifi.view(),
            "uptime_s": self.uptime_s,
        })
        return v


class _Balancing:
    """Load balancing as the app holds it: the balancer (the evse/balance package, about
    4 KB of heap with its modules on a 32-bit board) is built the first time `lb_enabled`
    is set and kept from then on (switching it off again is its own business), so a
    charger that never balances spends nothing on it."""

    def __init__(self, app):
        self._app = app
        self.balancer = None

    def _get(self):
        if self.balancer is None and self._app.settings["lb_enabled"]:
            from evse.balance.node import Balancer

            a = self._app
            self.balancer = Balancer(a.charger, a.settings, a.protection, a.hw.can,
                                     metering=a.metering, power=a.power, data_dir=a.data_dir)
        return self.balancer

    def notice(self):
        b = self.balancer
        return None if b is None else b.notice()

    def view(self):
        b = self._get()
        return None if b is None else b.view()

    async def run(self):
        while self._get() is None:
            await asyncio.sleep_ms(_BALANCE_LOOK_MS)
        await self.balancer.run()


class _Upgrades:
    """The OTA service (evse/ota.py and lib/p256.py: about 3.5 KB of heap with its object)
    as the app holds it: built at boot for its clean-up and the OCPP client's recovery,
    kept while a version on trial proves healthy, built again when it is used (the
    Upgrade page, an upload, an OCPP UpdateFirmware) and dropped, modules and all, once
    it has been idle for _OTA_IDLE_MS, so a charger that is not being upgraded spends
    nothing on it. The last result outlives it."""

    def __init__(self, app):
        self._app = app
        self._ota = None
        self._ocpp = None
        self._hook = None
        self._runs = 0  # OCPP installs and the health check under way: never dropped
        self._used = 0
        self._boot = True  # the first one cleans up what a power cut left
        self.last = None
        self._key = None  # the service's last key view (the Upgrade page's status)
        self.get()  # a cut upload removed, a kept download nothing will ask for

    def get(self):
        o = self._ota
        if o is None:
            from evse.ota import Ota

            a = self._app
            o = self._ota = Ota(a.hw, a.data_dir, a.settings, a.charger, a.hmi, boot=self._boot)
            self._boot = False
            o.last = self.last
            if self._ocpp is not None:
                self._hook = o.ocpp_hook(self._ocpp)
        self._used = time.ticks_ms()
        return o

    def attach(self, ocpp):
        self._ocpp = ocpp
        if self._ota is not None:
            self._hook = self._ota.ocpp_hook(ocpp)
        ocpp.on_update_firmware = self.update_firmware

    async def update_firmware(self, *args):
        """ocpp.on_update_firmware (evse/ota.py Ota.ocpp_hook)."""
        self._runs += 1
        try:
            self.get()
            await self._hook(*args)
        finally:
            self._runs -= 1

    # What the OCPP client and the web API ask of it.
    def running(self):
        return self.get().running()

    def drop_kept(self):
        self.get().drop_kept()

    def view(self):
        """The Upgrade page's status. The page polls it: with the service dropped and
        nothing under way it is answered from what the service left (its last result
        and key), not by building the service again for a minute (2.4 KB)."""
        o = self._ota
        if o is not None or self._key is None:
            v = self.get().view()
            self._key = v["key"]  # changes only through the service
            return v
        from evse import version

        try:
            import ab_boot

            run = ab_boot.running()
        except ImportError:
            run = {"slot": None, "trial": False}
        return {"busy": None, "received": 0, "total": 0, "last": self.last,
                "version": version.VERSION, "running": run, "key": self._key}

    async def run(self):
        """The health check of a version on trial, then the idle look."""
        if self._ota is not None and self._ota.running()["trial"]:
            self._runs += 1
            a = self._app
            sup = a.supervisor
            try:  # healthy: every task on time, none escalated, the web server up
                await self._ota.run(
                    lambda: not sup.late() and sup.escalated is None and a.http is not None)
            finally:
                self._runs -= 1
        self._idle(time.ticks_ms(), True)  # the boot's clean-up is done
        # no local keeps the service: this frame lives as long as the charger
        while True:
            await asyncio.sleep_ms(_OTA_LOOK_MS)
            self._idle(time.ticks_ms())

    def _idle(self, now, done=False):
        o = self._ota
        if o is not None and (o.busy or self._runs):
            self._used = now  # refreshed while in use: never compared across a wrap
        elif o is None or done or time.ticks_diff(now, self._used) >= _OTA_IDLE_MS:
            if o is not None:
                self.last = o.last
                self._key = o.key_view()  # a key installed since the last view
                self._ota = self._hook = None
            # the service and what it imports when used (httpget also after transfer.py's,
            # dnsclient after a download's name lookup)
            for name in ("evse.otadownload", "evse.otaimage", "evse.ota", "httpget", "p256",
                         "dnsclient"):
                evse.unload(name)


def _www_dir():
    """The web app's static files (None until they exist).

    A package loaded from the filesystem (a deployed tree, an upgrade slot) has them
    beside it, in evse/www. A package frozen into the firmware image (its __path__ is
    ".frozen/evse") has no directory: its assets are in www/ of the directory the charger
    starts in, where docs/hardware.md has them copied. Not in evse/www there: a directory
    named evse on the filesystem would hide the frozen package from `import evse`."""
    import os
    import evse

    if getattr(evse, "__path__", "").startswith(".frozen"):
        d = os.getcwd().rstrip("/") + "/www"
    else:
        d = evse.__file__.rpartition("/")[0] + "/www"
    try:
        os.stat(d)
        return d
    except OSError:
        return None


def main(hw):
    app = App(hw)
    try:
        asyncio.run(app.run())
    finally:
        app.charger.emergency_stop()
        asyncio.new_event_loop()
