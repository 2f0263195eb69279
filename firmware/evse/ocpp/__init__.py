# OCPP 1.6J client (docs/ocpp.md). attach(app) is all the application calls. With an
# `ocpp_url` set it builds the client (service.py) right away, so its buffers are
# allocated early, before the heap fragments; without one it only waits, spending no
# heap, and builds the client when a URL is set. Changing or clearing the URL later
# needs no reboot.
import asyncio

VENDOR = "Cabur"  # DataTransfer's vendorId, the BootNotification's chargePointVendor


class Ocpp:
    def __init__(self, app):
        self.app = app
        self.service = None
        self._wake = asyncio.Event()
        self._fw_hook = None
        app.settings.on_change(self._on_settings)
        # The technician's AuthorizationKey (write-only): PUT /api/config ocpp_auth_key.
        app.settings.extra["ocpp_auth_key"] = (self._check_key, self._set_key, self._key_view)
        if app.settings["ocpp_url"]:
            self._build(at_boot=True)

    def _build(self, at_boot=False):
        import gc
        from evse.ocpp.authsrc import Gate
        from evse.ocpp.service import Service

        gc.collect()
        # at_boot: the URL stored at boot, the one a key stored without its central
        # system may be bound to (a URL set later may come from anyone with a session)
        app = self.app
        self.service = svc = Service(app.hw, app.data_dir, app.settings, app.charger,
                                     app.metering, app.auth, app.history, app.rfid, app.ota,
                                     app.status, at_boot)
        svc.on_update_firmware = self._fw_hook
        # The charge point's place in the charger: its transactions follow the charger's
        # sessions, it authorizes (behind the reservation gate, ahead of the others) and
        # is asked before a session stops, fault records go to the central system.
        app.charger.listeners.append(svc.tx.on_charger)
        app.auth.sources.insert(0, Gate(svc.auth))
        app.auth.sources.append(svc.auth)
        app.auth.stop_checks.append(svc.auth)
        app.history.listeners.append(svc.on_history)
        app.settings.on_change(svc.on_settings)

    @property
    def on_update_firmware(self):
        """The OTA installer's hook: async fn(location, retrieve_date, retries,
        retry_interval), reporting through service.firmware_status() (transfer.py)."""
        return self._fw_hook

    @on_update_firmware.setter
    def on_update_firmware(self, fn):
        self._fw_hook = fn
        if self.service is not None:
            self.service.on_update_firmware = fn

    def _check_key(self, text, changes):
        from evse.ocpp.config import check_key

        why = check_key(text)
        if why is None and text and not changes.get("ocpp_url", self.app.settings["ocpp_url"]):
            # bound to the central system it is for: there must be one
            why = "set the central system's address (ocpp_url) first"
        return why

    def _set_key(self, text):
        if self.service is None:
            if not self.app.settings["ocpp_url"]:
                return  # "" with OCPP off: nothing to clear here
            self._build()  # run() then uses it
        self.service.set_key(text)

    def _key_view(self):
        if self.service is None:
            return {"ocpp_auth_key": "", "ocpp_auth_key_set": False, "ocpp_auth_key_note": None}
        v = self.service.key_view()
        v["ocpp_auth_key"] = ""  # write-only: the form's field starts empty
        return v

    def _on_settings(self, changed):
        if "ocpp_url" in changed:
            self._wake.set()

    def tasks(self):
        return [("ocpp", self.run)]

    async def run(self):
        while self.service is None and not self.app.settings["ocpp_url"]:
            self._wake.clear()
            await self._wake.wait()
        if self.service is None:
            self._build()
        await self.service.run()

    def view(self):
        return None if self.service is None else self.service.view()

    def store_errors(self):
        """{file: why} of the OCPP files that could not be read (configuration errors)."""
        return {} if self.service is None else self.service.store_errors


def attach(app):
    return Ocpp(app)
