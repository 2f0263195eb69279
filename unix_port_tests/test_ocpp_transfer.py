# UpdateFirmware hand-over to the installer (firmware/evse/ocpp/transfer.py) with a fake
# service: no installer, a failing download, a failing install, an install that reboots.
import asyncio

from check import eq, true
from evse.ocpp import transfer
from evse.ocpp.fwupdate import FwUpdate


class FakeService:
    def __init__(self, hook):
        self.on_update_firmware = hook
        self.state = {"fw": {"loc": "http://x/fw.bin", "date": 0, "retries": 0, "interval": 60,
                             "st": "Pending", "ver": "1.0.0"}}
        self.sent = []
        self.fw_status = "Idle"
        self.saved = 0

    def fw_update(self):  # as the service's
        d = self.state.get("fw")
        return None if d is None else FwUpdate(self, d)

    def firmware_status(self, status):
        self.fw_status = status
        fw = self.fw_update()
        if fw is not None:
            fw.status(status)
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


def test_a_stored_request_goes_on_through_its_named_transitions():
    """ocpp_state.json's "fw" as every version stored it: a charger upgraded in the middle
    of an update reads it, and each transition leaves the same form behind."""
    from evse.ocpp import fwupdate

    svc = FakeService(None)
    svc.state = {}
    fwupdate.create(svc, {"location": "https://x/fw.bin", "retrieveDate": "1970-01-01T00:01:40Z"},
                    "1.0.0")
    eq(svc.state["fw"], {"loc": "https://x/fw.bin", "date": 100, "retries": 0, "interval": 60,
                         "st": "Pending", "ver": "1.0.0"}, "created: Pending")
    fw = svc.fw_update()
    eq((fw.due(99), fw.due(100)), (False, True), "due at its retrieveDate")
    eq(fw.hook_args(), ("https://x/fw.bin", "1970-01-01T00:01:40Z", 0, 60, False), "hook args")
    eq((fw.resume_kept(), fw.cut_outcome("1.0.0", lambda: False)), (False, None), "Pending")
    fw.status("Downloaded")  # cut while the verified file waited: it goes on from it
    eq((fw.resume_kept(), svc.state["fw"]["st"], svc.state["fw"]["kept"]),
       (True, "Pending", True), "kept")
    eq(svc.fw_update().hook_args()[4], True, "the installer hears kept")
    for st, ver, trial, want in (("Downloading", "1.0.0", False, "DownloadFailed"),
                                 ("Installing", "1.0.0", False, "InstallationFailed"),
                                 ("Installing", "1.0.0", True, "InstallationFailed"),
                                 ("Installing", "2.0.0", False, "Installed"),
                                 ("Installing", "2.0.0", True, None)):
        svc.state = {"fw": {"loc": "x", "date": 0, "retries": 0, "interval": 60, "st": st,
                            "ver": "1.0.0"}}
        eq(svc.fw_update().cut_outcome(ver, lambda: trial), want, (st, ver, trial))
        eq("fw" in svc.state, want is None, "dropped once it says how it ended")
    eq(svc.fw_update().installed("1.0.0"), False, "not by the version that took it")
    eq((svc.fw_update().installed("2.0.0"), "fw" in svc.state), (True, False), "Installed")


def test_remote_transfer_urls_never_reach_a_blocking_getaddrinfo():
    """UpdateFirmware (otadownload.download) and GetDiagnostics (transfer._post) connect to
    a host the central system names: asyncio.open_connection calls socket.getaddrinfo,
    which blocks the loop (pilot, protection) on a name, so it only ever gets the address
    the DNS server gave; the name stays the TLS server name. No answer: no connection."""
    from evse import otadownload
    from test_ocpp_dns import _DnsServer

    dns = _DnsServer("10.1.2.3")
    calls = []
    real = asyncio.open_connection

    async def record(host, port, ssl=None, server_hostname=None):
        calls.append((host, port, server_hostname))
        raise OSError(113)

    class Svc:
        dns_server = staticmethod(lambda: ("127.0.0.1", dns.port))
        dns_timeout_ms = 200

        def tls(self):  # the service's and the Ota's: the CA store
            import ssl

            return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

        # what otadownload.download asks of the Ota besides: the security profile
        profile = staticmethod(lambda: 0)
        key_installed = staticmethod(lambda: True)  # http:// is taken only with a key
        cfg = {"SecurityProfile": 0}
        download_ms = 1000

    svc = Svc()
    with open("/tmp/evse_diag_upload.jsonl", "w") as f:
        f.write("{}\n")

    async def both():
        for coro in (otadownload.download(svc, "https://fw.example.com:8443/evplus.bin"),
                     otadownload.download(svc, "http://fw.example.com/evplus.bin"),
                     transfer._post(svc, "https://diag.example.com/up", "d.jsonl",
                                    "/tmp/evse_diag_upload.jsonl")):
            try:
                await coro
                true(False, "connected")
            except OSError:
                pass

    async def main():
        server = asyncio.create_task(dns.run())
        await asyncio.sleep_ms(10)
        await both()
        dns.addr = None  # silent: nothing to connect to
        await both()
        server.cancel()

    asyncio.open_connection = record
    try:
        asyncio.run(main())
    finally:
        asyncio.open_connection = real
        dns.s.close()
        asyncio.new_event_loop()
    eq(calls, [("10.1.2.3", 8443, "fw.example.com"), ("10.1.2.3", 80, None),
               ("10.1.2.3", 443, "diag.example.com")], "addresses only, names for TLS")


def test_the_diagnostics_file_gives_the_loop_a_turn_between_records():
    class Log:
        def records(self, newest_first):
            for i in range(50):
                yield i, b'{"t": "2026-01-01T00:00:00Z", "code": "OCP"}'

    class History:
        faults = Log()
        sessions = Log()

    class Svc:
        history = History()

        class hw:
            serial = "S1"

        def now(self):
            return 0

    turns = [0]
    done = [False]

    async def ticker():
        while not done[0]:
            turns[0] += 1
            await asyncio.sleep_ms(0)

    async def main():
        t = asyncio.create_task(ticker())
        n = await transfer._write_file(Svc(), "/tmp/evse_diag_write.jsonl", {})
        done[0] = True
        await t
        return n

    n = asyncio.run(main())
    asyncio.new_event_loop()
    eq(n, 100, "every record")
    true(turns[0] >= 50, "the loop ran %d times meanwhile" % turns[0])


def test_diagnostics_locations_are_plain_urls_and_tls_at_profile_2():
    """GetDiagnostics' location goes into a request line: CR, LF, spaces and other control
    or non-ASCII bytes are refused, and at security profile 2 the records (card UIDs
    among them) leave only over https://."""
    eq(transfer._split("https://d.example.com:8443/up", 2), (True, "d.example.com", 8443, "/up"))
    eq(transfer._split("http://d.example.com/up", 1), (False, "d.example.com", 80, "/up"))
    for bad, profile in (("http://d.example.com/up\r\nX-Evil: 1", 0), ("http://d.ex ample/", 0),
                         ("http://d.example.com/\x00", 0), ("http://d.example.com/\xe9", 0),
                         ("http://d.example.com/up", 2), ("ftp://d.example.com/up", 0)):
        try:
            transfer._split(bad, profile)
            true(False, "accepted %r" % bad)
        except ValueError:
            pass


def test_a_retry_interval_of_years_waits_instead_of_ending_the_job():
    """OCPP bounds no retryInterval: a sleep past 2**31 ms raises OverflowError on a
    32-bit port (ticks_add takes a machine word), which ended the firmware download at its
    first retry. The wait between tries is at most a day, what the ticks of every port
    hold (2**29 ms is 6.2 days)."""
    from evse import otadownload

    async def fails(o, url):
        raise OSError("refused")

    waits = []

    class _Results:
        def result(self, *a):
            pass

    async def sleep(s):
        waits.append(s)

    real = (otadownload.download, asyncio.sleep)
    otadownload.download = fails
    asyncio.sleep = sleep
    try:
        try:
            asyncio.run(otadownload._fetch(_Results(), "https://fw.example.com/x.bin", 2,
                                           10 ** 9, lambda st: None))
        except OSError:
            pass
    finally:
        otadownload.download, asyncio.sleep = real
    eq(len(waits), 1, "one wait between two tries")
    true(0 < waits[0] * 1000 < 2 ** 29, "a wait the ticks hold: %r s" % waits[0])


def test_the_diagnostics_upload_reads_its_answer_as_http():
    """GetDiagnostics' POST is done when the server answers 2xx in an HTTP head
    (lib/httpget.py's reader: bounded lines, the whole head); another status, or an
    answer that is not HTTP, is a failed try."""
    import os

    port = 20000 + (os.urandom(1)[0] << 4)
    path = "/tmp/evse_diag_answer.jsonl"
    with open(path, "w") as f:
        f.write('{"kind": "fault"}\n' * 40)
    got = []

    class Svc:
        cfg = {"SecurityProfile": 0}
        dns_server = staticmethod(lambda: None)
        dns_timeout_ms = 200

    async def main(answer):
        async def serve(r, w):
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += await r.read(1)
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            body = await r.readexactly(length)
            got.append((head.split(b"\r\n")[0], len(body)))
            w.write(answer)
            await w.drain()
            w.close()
            await w.wait_closed()

        srv = await asyncio.start_server(serve, "127.0.0.1", port)
        try:
            await transfer._post(Svc(), "http://127.0.0.1:%d/up" % port, "d.jsonl", path)
            return "ok"
        except OSError as e:
            return str(e)
        finally:
            srv.close()
            await srv.wait_closed()

    def run(answer):
        r = asyncio.run(main(answer))
        asyncio.new_event_loop()
        return r

    eq(run(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"), "ok")
    eq(got[-1], (b"POST /up/d.jsonl HTTP/1.1", os.stat(path)[6]), "the whole file")
    eq(run(b"HTTP/1.0 500 Internal Server Error\r\n\r\n"), "upload answered 500")
    true(run(b"SSH-2.0-OpenSSH\r\n\r\n").startswith("not an HTTP response"), "not HTTP")
    true("line over" in run(b"HTTP/1.1 200 OK" + b"x" * 600 + b"\r\n\r\n"), "endless line")
