# The OCPP 1.6J charge point's own side (docs/ocpp.md): its stores (configuration,
# transaction queue, charging profiles, local list, cache, ocpp_state.json), the status
# it reports, availability, the firmware and diagnostics state, the central system's
# CALLs (dispatched to handlers.py), and the ticker: what must happen whether or not we
# are connected (transactions.py: queue the transaction messages, sample meter values,
# apply the charging-profile limit; expire reservations, scheduled availability, a due
# firmware update). The connection to the central system is service.py's Service, built
# on this class: it provides `link` and `online`. The application registers the charge
# point's listeners (evse/ocpp/__init__.py).
import asyncio
import json
from micropython import const

import atomicfile
import log
from evse import faults
from evse import version
import evse
from evse.ocpp import VENDOR, authlist, config
from evse.ocpp.authsrc import Authorization
from evse.ocpp.link import CallError, LinkDown
from evse.ocpp.rpc import RpcError
from evse.ocpp.transactions import Transactions
from evse.ocpp.txqueue import TxQueue

_log = log.get("ocpp")

_TICK_MS = const(1000)
_NOTES = const(10)  # non-transaction messages waiting to go out
_CACHE_LEN = const(32)
_PROFILES = "/ocpp_profiles.json"  # smart.py's store, in the data directory
STORE_LIMIT = "ocpp_store"  # the charger's named limit while that store is unreadable
STORE_LIMIT_A = 6.0


class ChargePoint:
    """What it uses of the charger: hw (clock, serial, reset, network interface),
    data_dir (its stores), settings, charger, metering (meter values), authorizer (starts
    and asks about id tags: evse/auth.py), history (the records a transaction waits for,
    GetDiagnostics), rfid (a reader fault), ota (the upgrade service: evse/app.py
    _Upgrades; None on a build without one) and status() (the application's status,
    DataTransfer Status)."""

    def __init__(self, hw, data_dir, settings, charger, metering, authorizer, history, rfid,
                 ota, status):
        self.hw = hw
        self.data_dir = d = data_dir
        self.settings = settings
        self.ch = ch = charger
        self.metering = metering
        self.authorizer = authorizer
        self.history = history
        self.rfid = rfid
        self.ota = ota
        self.status_view = status
        self.cfg = cfg = config.Config(d + "/ocpp_config.json")
        self.q = TxQueue(d)
        # Smart charging is built when the central system first uses it, or at boot when
        # profiles are stored: a charger whose central system sets none keeps its ~1 KB.
        self.smart_loaded = None  # the Smart once built (self.smart builds it)
        if atomicfile.stored(d + _PROFILES):
            self.smart_loaded = self.smart
        self.llist = authlist.TagTable(d + "/ocpp_list.json", cfg["LocalAuthListMaxLength"])
        self.cache = authlist.Cache(d + "/ocpp_cache.json", _CACHE_LEN)
        self._state_path = d + "/ocpp_state.json"
        # OCPP files that are there but cannot be read: {file: why and what is in use},
        # configuration errors (CFG) until the central system sets them again.
        self.store_errors = {}
        bad = []
        self.state = config.load_json(self._state_path, 2048, bad.append)
        if bad:
            # Whether the central system had taken the charger out of service is unknown:
            # it stays Inoperative (reported as Unavailable) until a ChangeAvailability.
            self.state = {"inop": True}
            # Unreadable, or only an older copy readable (it may predate an Inoperative).
            self.store_errors["ocpp_state.json"] = (
                "%s: Inoperative until the central system sends ChangeAvailability"
                % bad[0].partition(" ")[2])
            _log.error("%s: Inoperative until ChangeAvailability", bad[0])
        self._send_ev = asyncio.Event()  # work for the sender loop (service.py)
        self._tick_ev = asyncio.Event()
        self.registration = None
        self.auth = Authorization(self)
        self.tx = Transactions(self)
        self._notes = []
        self.diag_status = "Idle"
        self.fw_status = "Idle"
        self._jobs = {}  # name -> task (reset, diagnostics, firmware)
        self.on_update_firmware = None  # async fn(location, date, retries, interval, kept)
        cfg.dynamic["UnlockConnectorOnEVSideDisconnect"] = self._unlock_on_unplug

    def _resume(self):
        """What the stores say once read: availability, the profile store's limit, an
        interrupted transaction or firmware update."""
        if self.state.get("inop"):
            self.ch.unavailable = True
        self.update_store_limit()
        self._recover()

    # ---- small views ------------------------------------------------------------------------
    @property
    def active(self):
        return bool(self.settings["ocpp_url"])

    def _unlock_on_unplug(self):
        return self.ch.case_b

    def now(self):
        return self.hw.rtc.now()

    @property
    def smart(self):
        """The charging profiles (evse/ocpp/smart.py), built on first use."""
        s = self.smart_loaded
        if s is None:
            from evse.ocpp.smart import Smart

            s = self.smart_loaded = Smart(self.data_dir)
            s.phases = self.ch.phases
        return s

    def update_store_limit(self, off=False):
        """The 6 A limit (STORE_LIMIT) while the charging profile store cannot be read: it
        may have held a site limit (ChargePointMaxProfile). None when OCPP is off (no
        profile applies then) or the central system has set profiles again."""
        s = self.smart_loaded
        err = None if s is None else s.store_error
        if err is None:
            self.store_errors.pop("ocpp_profiles.json", None)
        else:
            self.store_errors["ocpp_profiles.json"] = (
                "%s: %d A (limit %s) until the central system sets or clears charging "
                "profiles" % (err.partition(" ")[2], STORE_LIMIT_A, STORE_LIMIT))
        lim = None if err is None or off else STORE_LIMIT_A
        if self.ch.external.get(STORE_LIMIT) != lim:
            self.ch.set_external_limit(STORE_LIMIT, lim)

    def save_state(self):
        atomicfile.save_json(self._state_path, self.state)

    def kick(self):
        self._tick_ev.set()
        self._send_ev.set()

    def note(self, action, payload):
        """A non-transaction message to send when possible (oldest dropped when full)."""
        if len(self._notes) >= _NOTES:
            self._notes.pop(0)
        self._notes.append((action, payload))
        self._send_ev.set()

    # ---- boot-time recovery --------------------------------------------------------------------
    def _recover(self):
        self.tx.recover()
        fw = self.fw_update()
        if fw is not None and fw.resume_kept():
            # Cut while the verified file waited for the charge to end: the installer
            # kept it (evse/ota.py); the request goes on from there, Downloaded already said.
            self.fw_status = "Downloaded"
            return
        if self.ota is not None:
            self.ota.drop_kept()  # no request waits for a kept file
        # Cut while downloading or installing: say how it ended, honestly (a new version
        # on trial says Installed once it proves healthy: firmware_confirmed()).
        st = fw.cut_outcome(version.VERSION, self._on_trial) if fw is not None else None
        if st is not None:
            self.firmware_status(st)

    # ---- listeners (registered by the application: evse/ocpp/__init__.py) ------------------------
    def on_history(self, kind, rec):
        if kind in ("open", "session"):
            self.kick()  # a transaction message held back for its record can go now
        elif kind == "fault" and self.online:
            self.note("DataTransfer", {
                "vendorId": VENDOR, "messageId": "FaultReport", "data": json.dumps(rec)})

    # ---- status ---------------------------------------------------------------------------------
    def status_of(self, conn):
        """(status, errorCode, vendorErrorCode) of connector 0 (the charger) or 1."""
        ch = self.ch
        st = ch.ocpp_status()
        bits = ch.active | ch.latched
        err = faults.ocpp_error(bits)
        codes = faults.codes(bits)
        vendor = codes[0] if codes else None
        if err == "NoError" and self.rfid.fault:
            err = "ReaderFailure"
        if conn == 0:
            if st != "Faulted":
                st = "Unavailable" if ch.unavailable else "Available"
        elif st == "Available" and self.auth.reservation() is not None:
            st = "Reserved"
        return st, err, vendor

    # ---- the central system's CALLs ---------------------------------------------------------------
    async def _on_call(self, mid, action, payload):
        # The handlers and the request schemas are imported for the CALL and forgotten
        # after it (1 KB on a board for good otherwise): the central system's CALLs are
        # rare, a frozen module's import is its objects, made in about a millisecond.
        try:
            await self._call(mid, action, payload)
        finally:
            evse.unload("evse.ocpp.handlers")
            evse.unload("evse.ocpp.schema")

    async def _call(self, mid, action, payload):
        from evse.ocpp import handlers, schema

        link = self.link
        fn = None
        for row in handlers.TABLE:
            if row[0] == action:
                fn = getattr(handlers, row[1])
                break
        if fn is None:
            await link.reply_error(mid, "NotImplemented", "unknown action")
            return
        after = None
        try:
            schema.check(action, payload, mid)
            if self.registration == "Pending" and action in ("RemoteStartTransaction", "RemoteStopTransaction"):
                res = {"status": "Rejected"}
            else:
                res, after = await fn(self, mid, payload)
        except RpcError as e:
            _log.warning("%s refused: %s %s", action, e.code, e.desc)
            await link.reply_error(mid, e.code, e.desc)
            return
        except (ValueError, KeyError, TypeError, OSError) as e:
            _log.exc(e, "%s failed", action)
            await link.reply_error(mid, "InternalError", str(e)[:80])
            return
        await link.reply(mid, res)
        if after is not None:
            try:
                await after()
            except (CallError, LinkDown, asyncio.TimeoutError) as e:
                _log.warning("after %s: %r", action, e)

    def job(self, name, coro):
        """Runs coro as a task of its own (outliving the connection), one per name."""
        t = self._jobs.get(name)
        if t is not None and not t.done():
            return False
        self._jobs[name] = asyncio.create_task(coro)
        return True

    async def _ticker(self):
        while True:
            try:
                self._tick()
            except Exception as e:  # a bug must not stop transactions being queued
                _log.exc(e, "ocpp tick")
            self._tick_ev.clear()
            try:
                await asyncio.wait_for_ms(self._tick_ev.wait(), _TICK_MS)
            except asyncio.TimeoutError:
                pass

    def _tick(self):
        if not self.active:
            self.tx.tick_off(self.now())
            self.tx.apply_limit(0, off=True)  # OCPP switched off: no profile limits
            return
        now = self.now()
        self.tx.tick(now)
        ch = self.ch
        if self.auth.reservation() is not None and ch.ocpp_status() in ("Faulted", "Unavailable"):
            _log.info("reservation ended: charger %s", ch.ocpp_status())
            self.auth.end_reservation()
        sched = self.state.get("sched")
        if sched is not None and ch.session is None:
            self.set_available(sched == "Operative")
        fw = self.fw_update()
        if fw is not None and fw.due(now):
            from evse.ocpp import transfer

            self.job("firmware", transfer.update_firmware(self))

    # ---- availability, reset, firmware --------------------------------------------------------------
    def set_available(self, operative):
        self.state.pop("sched", None)
        self.ch.unavailable = not operative
        if not operative:
            self.ch.auth_pending = None  # a waiting authorization ends with Inoperative
        self.state["inop"] = not operative
        if not operative:
            self.state["resv"] = None
        self.save_state()
        self._send_ev.set()

    def firmware_status(self, status):
        """FirmwareStatusNotification (installers report through this)."""
        self.fw_status = status
        fw = self.fw_update()
        if fw is not None:
            fw.status(status)
        self.note("FirmwareStatusNotification", {"status": status})

    def firmware_confirmed(self):
        """The new version passed its health check (evse/ota.py): Installed, when an
        UpdateFirmware installed it."""
        fw = self.fw_update()
        if fw is not None and fw.installed(version.VERSION):
            self.firmware_status("Installed")

    def fw_update(self):
        """The UpdateFirmware request under way (evse/ocpp/fwupdate.py), None when none."""
        d = self.state.get("fw")
        if d is None:
            return None
        from evse.ocpp.fwupdate import FwUpdate

        return FwUpdate(self, d)

    def _on_trial(self):
        return self.ota is not None and self.ota.running()["trial"]

    def diagnostics_status(self, status):
        self.diag_status = status
        self.note("DiagnosticsStatusNotification", {"status": status})
