# UpdateFirmware hand-over to the installer (firmware/evse/ocpp/transfer.py) with a fake
# service: no installer, a failing download, a failing install, an install that reboots.
import asyncio

from check import eq
from evse.ocpp import transfer


class FakeService:
    def __init__(self, hook):
        self.on_update_firmware = hook
        self.state = {"fw": {"loc": "http://x/fw.bin", "date": 0, "retries": 0, "interval": 60,
                             "st": "Pending", "ver": "1.0.0"}}
        self.sent = []
        self.fw_status = "Idle"
        self.saved = 0

    def firmware_status(self, status):
        self.fw_status = status
        fw = self.state.get("fw")
        if fw is not None:
            fw["st"] = status
        self.sent.append(status)

    def save_state(self):
        self.saved += 1


def _run(hook):
    svc = FakeService(hook)
    asyncio.run(transfer.update_firmware(svc))
    asyncio.new_event_loop()
    return svc


def test_no_installer_says_download_failed():
    svc = _run(None)
    eq(svc.sent, ["DownloadFailed"], "honest failure")
    eq("fw" in svc.state, False, "request dropped")


def test_failed_download_and_failed_install():
    async def bad_download(loc, date, retries, interval, kept):
        raise OSError("no route")

    svc = _run(bad_download)
    eq(svc.sent, ["DownloadFailed"], "download")
    got = []

    async def bad_install(loc, date, retries, interval, kept):
        got.append((loc, date, retries, interval, kept))
        svc2.firmware_status("Downloaded")
        svc2.firmware_status("Installing")
        raise ValueError("bad image")

    svc2 = FakeService(bad_install)
    asyncio.run(transfer.update_firmware(svc2))
    asyncio.new_event_loop()
    eq(svc2.sent, ["Downloaded", "Installing", "InstallationFailed"], "install")
    eq(got, [("http://x/fw.bin", "1970-01-01T00:00:00Z", 0, 60, False)], "hook arguments")


def test_installing_then_reboot_keeps_the_request():
    async def reboots(loc, date, retries, interval, kept):
        svc.firmware_status("Installing")

    svc = FakeService(reboots)
    asyncio.run(transfer.update_firmware(svc))
    asyncio.new_event_loop()
    eq(svc.state["fw"]["st"], "Installing", "the next boot reports the outcome")


def test_kept_download_is_handed_on_and_its_failure_is_an_install_failure():
    # A power cut while a verified download waited for the charge to end: the service
    # recovers the request with "kept" (Downloaded already said, service._recover); the
    # installer is told so, and a failure from there on is InstallationFailed.
    got = []

    async def fails_to_install(loc, date, retries, interval, kept):
        got.append(kept)
        svc.firmware_status("Installing")
        raise ValueError("slot not writable")

    svc = FakeService(fails_to_install)
    svc.state["fw"]["kept"] = True
    svc.fw_status = "Downloaded"
    asyncio.run(transfer.update_firmware(svc))
    asyncio.new_event_loop()
    eq(got, [True], "kept passed on")
    eq(svc.sent, ["Installing", "InstallationFailed"], "no second Downloading/Downloaded")
    eq("fw" in svc.state, False, "request over")
