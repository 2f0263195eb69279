"""OCPP 1.6J UpdateFirmware end to end (FirmwareManagement profile, docs/ocpp.md "Firmware
updates", docs/ota.md): the `ocpp` package as the central system (tests/csms.py), a
local HTTP file server (CPython's http.server) serving `.bin` files built with
tools/mkbin.py, and the firmware downloading, installing and rebooting into them."""

import http.server
import json
import random
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from csms import make_certs, server_context, wait_status
from harness import NotReady
from test_ota import (
    CUT_SEED,
    FACTORY_VERSION,
    PAD,
    bad_file,
    boot_state,
    cut_when,
    fresh_pad,
    size,
    variant,
    wait_shown,
)

A = "04A1B2C3"  # a learned card
WAIT_S = 15.0  # bound on a wait of the test, not a figure of the firmware


@pytest.fixture(scope="module")
def good_bins(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ocpp-bins")
    return {v: variant(tmp, v) for v in ("1.0.1", "1.0.2")}


class _Files(http.server.BaseHTTPRequestHandler):
    """GET /<name>: the bytes of files[name] (404 when there are none). A name in
    `cut` is announced whole (Content-Length) but only half of it is sent; one in `slow`
    is sent 64 KB at a time with a pause of 5 ms after each piece."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        name = self.path.lstrip("/")
        srv.requests.append((time.time(), self.path))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if name in srv.slow:
            try:
                for i in range(0, len(data), 65536):
                    self.wfile.write(data[i:i + 65536])
                    time.sleep(0.005)
            except OSError:
                pass  # the charger lost power meanwhile
            return
        self.wfile.write(data[: len(data) // 2] if name in srv.cut else data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def ocpp(ocpp, pki):
    """Chargers that trust the file server's CA: without a signing key an OCPP download
    must come over https:// (docs/ota.md)."""

    def start(files=None, **kw):
        return ocpp(files={"ocpp_ca.pem": pki["ca"].read_bytes(), **(files or {})}, **kw)

    return start


@pytest.fixture
def files(pki):
    """An https:// file server on 127.0.0.1 (certificate for localhost, signed by the
    CA of `pki`): .files {name: bytes}, .requests [(t, path)], .url(name); stopped after
    the test."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    srv.daemon_threads = True
    srv.socket = server_context(pki["cert"], pki["key"]).wrap_socket(srv.socket, server_side=True)
    srv.files, srv.requests, srv.cut, srv.slow = {}, [], set(), set()
    srv.url = lambda name: f"https://localhost:{srv.server_address[1]}/{name}"
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    th.join(5)


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def fw_statuses(cs, since=0):
    return [p["status"] for p in cs.payloads("CP1", "FirmwareStatusNotification", since)]


def wait_fw(cs, last, since, timeout):
    """Waits for the FirmwareStatusNotification `last`; returns every status since."""
    cs.wait_for(lambda: last in fw_statuses(cs, since), timeout, f"FirmwareStatus {last}")
    return fw_statuses(cs, since)


def boot_into_new_version(cs, c, version):
    """The charger resets after Installing; power it back on (the harness plays the
    boot loader) and check that it runs `version`."""
    assert c.wait_exit(20) == 3
    mark = cs.mark()
    c.start()
    boot = cs.wait_for(lambda: cs.payloads("CP1", "BootNotification", mark), 20, "boot")[0]
    assert boot["firmwareVersion"] == version
    return mark


def test_update_now_then_at_a_later_retrieve_date(cs, ocpp, files, good_bins):
    """UpdateFirmware (OCPP 1.6 §5.18/§6.51): the download starts at retrieveDate, the
    status goes Downloading, Downloaded, Installing; the charger reboots into the new
    version (BootNotification.firmwareVersion) and says Installed once that version has
    passed its health check."""
    files.files = {"EVPLUS_1.0.1.bin": good_bins["1.0.1"], "EVPLUS_1.0.2.bin": good_bins["1.0.2"]}
    c = ocpp()
    assert cs.payloads("CP1", "BootNotification")[0]["firmwareVersion"] == FACTORY_VERSION
    mark = cs.mark()
    now = datetime.now(timezone.utc)
    assert cs.call("CP1", "UpdateFirmware", location=files.url("EVPLUS_1.0.1.bin"),
                   retrieveDate=iso(now)) == {}
    got = wait_fw(cs, "Installing", mark, 20)
    assert got == ["Downloading", "Downloaded", "Installing"], got
    boot_mark = boot_into_new_version(cs, c, "1.0.1")
    # Installed only once the new version has passed its health check (ota.HEALTH_MS)
    assert c.http("POST", "/api/login", json={"password": c.password}).status == 200
    assert c.http("GET", "/api/upgrade").body["running"]["trial"] is True
    assert "Installed" not in fw_statuses(cs, boot_mark)
    wait_fw(cs, "Installed", boot_mark, 40)
    assert c.http("GET", "/api/upgrade").body["running"]["trial"] is False
    assert fw_statuses(cs, mark) == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert json.loads((c.data_dir / "boot.json").read_text())["trial"] is False

    # retrieveDate 6 s ahead: nothing is fetched before it
    mark = cs.mark()
    n_req = len(files.requests)
    when = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=6)
    assert cs.call("CP1", "UpdateFirmware", location=files.url("EVPLUS_1.0.2.bin"),
                   retrieveDate=iso(when), retries=1, retryInterval=5) == {}
    time.sleep(3)
    fetched, heard = files.requests[n_req:], fw_statuses(cs, mark)
    if time.time() < when.timestamp():  # nothing before the date, while it is ahead
        assert not fetched and not heard, (fetched, heard)
    got = wait_fw(cs, "Installing", mark, 20)
    assert got == ["Downloading", "Downloaded", "Installing"], got
    t_get = files.requests[n_req][0]
    assert t_get >= when.timestamp() - 1.0, (t_get, when.timestamp())  # clock synced by boot
    boot_mark = boot_into_new_version(cs, c, "1.0.2")
    wait_fw(cs, "Installed", boot_mark, 40)
    assert len(files.requests) == n_req + 1  # one download, no retry needed


@pytest.mark.parametrize("where", ["404", "refused"])
def test_unreachable_location_retries_then_download_failed(cs, ocpp, files, where):
    """A location that does not deliver: 1 + `retries` tries, `retryInterval` s apart,
    each announced with Downloading, then DownloadFailed (OCPP 1.6 FirmwareStatus); the
    running version stays."""
    c = ocpp()
    mark = cs.mark()
    url = files.url("missing.bin") if where == "404" else "https://localhost:1/missing.bin"
    t0 = time.time()
    cs.call("CP1", "UpdateFirmware", location=url, retrieveDate=iso(datetime.now(timezone.utc)),
            retries=2, retryInterval=2)
    got = wait_fw(cs, "DownloadFailed", mark, 30)
    assert got == ["Downloading"] * 3 + ["DownloadFailed"], got
    if where == "404":
        times = [t for t, p in files.requests if p == "/missing.bin"]
        assert len(times) == 3
        assert all(b - a >= 1.8 for a, b in zip(times, times[1:], strict=False)), times
    else:
        assert time.time() - t0 >= 3.8  # two intervals of 2 s
    assert c.running and c.http("GET", "/api/status").body["software_version"] == FACTORY_VERSION
    assert not (c.data_dir / "boot.json").exists()
    assert not (c.data_dir / "ota" / "upload.bin").exists()
    wait_shown(c, "E03 UP")


def _bad_file(good, case):
    if case == "archive":
        b = bytearray(good)
        b[64:66] = b"\xff\xff"  # first record's path length beyond the limit
        return bytes(b)
    return bad_file(good, case)  # model, board, header, truncated


@pytest.mark.parametrize("case, statuses, gets", [
    ("model", ["Downloading", "Downloaded", "InstallationFailed"], 1),
    ("board", ["Downloading", "Downloaded", "InstallationFailed"], 1),
    ("header", ["Downloading", "Downloaded", "InstallationFailed"], 1),
    ("archive", ["Downloading", "Downloaded", "Installing", "InstallationFailed"], 1),
    ("truncated", ["Downloading", "Downloading", "DownloadFailed"], 2),
    ("cut", ["Downloading", "Downloading", "DownloadFailed"], 2),
], ids=["model", "board", "header", "archive", "truncated", "cut"])
def test_bad_file(cs, ocpp, files, good_bins, case, statuses, gets):
    """A file that arrives whole but is not for this charger (model, board, damaged
    header or archive) is Downloaded, then InstallationFailed without another try:
    fetching it again gives the same bytes. One that ends before its header says (a
    truncated file, a connection closed early) is a failed download: retried, then
    DownloadFailed. Either way nothing is installed and the charger runs on."""
    data = good_bins["1.0.1"]
    files.files = {"f.bin": data if case == "cut" else _bad_file(data, case)}
    if case == "cut":
        files.cut.add("f.bin")
    c = ocpp()
    mark = cs.mark()
    cs.call("CP1", "UpdateFirmware", location=files.url("f.bin"),
            retrieveDate=iso(datetime.now(timezone.utc)), retries=1, retryInterval=1)
    got = wait_fw(cs, statuses[-1], mark, 30)
    assert got == statuses, got
    time.sleep(1.5)  # a retry would come within retryInterval
    assert len(files.requests) == gets
    assert fw_statuses(cs, mark) == statuses
    wait_shown(c, "E04 UP" if gets == 1 else "E03 UP")
    assert c.http("GET", "/api/status").body["software_version"] == FACTORY_VERSION
    assert not (c.data_dir / "boot.json").exists()
    assert not (c.data_dir / "ota" / "upload.bin").exists()
    assert not any((c.data_dir / "fw").glob("*/slot.json"))
    # the request is over: the next boot has nothing more to report about it
    c.stop()
    mark = cs.mark()
    c.start()
    wait_status(cs, "CP1", 1, since=mark, timeout=20)
    time.sleep(1)
    assert not fw_statuses(cs, mark)


def test_update_during_a_charge_installs_after_it(cs, ocpp, files, good_bins):
    """UpdateFirmware while a charge runs: the file is downloaded, the install waits
    until the charge has ended (an upgrade never interrupts one, manual §12): the relays
    stay closed and the process runs until the transaction stops."""
    files.files = {"f.bin": good_bins["1.0.1"]}
    c = ocpp(cards=[A])
    c.sim("ev", state="B", diode=True, max_a=16)
    c.wait_for(lambda s: s["cp_state"] == "B", WAIT_S)
    c.sim("card", uid=A, ms=800)
    c.sim("ev", state="C", diode=True, max_a=16)
    c.wait_for(lambda s: s["relays_closed"] and s["session"]["active"], 10)
    cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction"), WAIT_S, "StartTransaction")
    since = c.snapshot()["t_us"]
    mark = cs.mark()
    cs.call("CP1", "UpdateFirmware", location=files.url("f.bin"),
            retrieveDate=iso(datetime.now(timezone.utc)))
    got = wait_fw(cs, "Downloaded", mark, 20)
    assert got == ["Downloading", "Downloaded"], got
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:  # charging goes on, nothing is installed
        s = c.snapshot()
        assert s["relays_closed"] and s["session"]["active"] and s["state"] == "Charging", s
        time.sleep(0.2)
    assert fw_statuses(cs, mark) == ["Downloading", "Downloaded"]
    assert not [e for e in c.events(since) if e["what"] == "relays"]
    assert c.http("POST", "/api/login", json={"password": c.password}).status == 200
    assert c.http("GET", "/api/upgrade").body["busy"] == "waiting"
    # the driver ends the charge: the install follows, then the restart
    c.sim("card", uid=A, ms=800)
    cs.wait_for(lambda: cs.payloads("CP1", "StopTransaction"), 10, "StopTransaction")
    wait_fw(cs, "Installing", mark, 20)
    stop = cs.payloads("CP1", "StopTransaction")[0]
    assert stop["reason"] == "Local"
    boot_mark = boot_into_new_version(cs, c, "1.0.1")
    wait_fw(cs, "Installed", boot_mark, 40)
    assert fw_statuses(cs, mark) == ["Downloading", "Downloaded", "Installing", "Installed"]
    c.sim("ev", state="A")
    wait_status(cs, "CP1", 1, "Available", timeout=10, since=boot_mark)


def test_new_version_that_dies_is_installation_failed(cs, ocpp, files, tmp_path):
    """A version installed by UpdateFirmware that dies before its health check: the next
    boot rolls back to the running version and says InstallationFailed."""
    files.files = {"f.bin": variant(tmp_path, "6.6.6",
                                    app_source='raise RuntimeError("broken build")\n')}
    c = ocpp()
    mark = cs.mark()
    cs.call("CP1", "UpdateFirmware", location=files.url("f.bin"),
            retrieveDate=iso(datetime.now(timezone.utc)))
    wait_fw(cs, "Installing", mark, 20)
    assert c.wait_exit(20) == 3
    with pytest.raises(NotReady):  # the new version dies at boot
        c.start()
    boot_mark = cs.mark()
    c.start()  # rolled back
    boot = cs.wait_for(lambda: cs.payloads("CP1", "BootNotification", boot_mark), 20, "boot")[0]
    assert boot["firmwareVersion"] == FACTORY_VERSION
    got = wait_fw(cs, "InstallationFailed", mark, 20)
    assert got == ["Downloading", "Downloaded", "Installing", "InstallationFailed"], got


def ocpp_state(c):
    """ocpp_state.json (lib/atomicfile.py: a "#crc32 ..." line, then the JSON)."""
    text = (c.data_dir / "ocpp_state.json").read_text()
    return json.loads(text.partition("\n")[2] if text.startswith("#") else text)


def _charge(c, cs):
    c.sim("ev", state="B", diode=True, max_a=16)
    c.wait_for(lambda s: s["cp_state"] == "B", WAIT_S)
    c.sim("card", uid=A, ms=800)
    c.sim("ev", state="C", diode=True, max_a=16)
    c.wait_for(lambda s: s["relays_closed"] and s["session"]["active"], 10)
    cs.wait_for(lambda: cs.payloads("CP1", "StartTransaction"), WAIT_S, "StartTransaction")


@pytest.mark.parametrize("kept", ["whole", "damaged"])
def test_power_cut_while_the_download_waits_for_the_charge(cs, ocpp, files, good_bins, kept):
    """UpdateFirmware during a charge: Downloaded, then a power cut while the file waits
    for the charge to end. The central system has heard Downloaded, so the charger keeps
    that promise: the file stays verified in its staging area (download.bin, with the
    MD5 taken while it arrived) and the boot after the cut, with no charge running,
    installs it: Installing, the restart, Installed after the health check, without a
    second download. A kept file that changed meanwhile is not installed: it is
    downloaded again (Downloading, Downloaded, Installing)."""
    files.files = {"f.bin": good_bins["1.0.1"]}
    c = ocpp(cards=[A])
    _charge(c, cs)
    mark = cs.mark()
    cs.call("CP1", "UpdateFirmware", location=files.url("f.bin"),
            retrieveDate=iso(datetime.now(timezone.utc)))
    assert wait_fw(cs, "Downloaded", mark, 20) == ["Downloading", "Downloaded"]
    assert c.http("POST", "/api/login", json={"password": c.password}).status == 200
    cs.wait_for(lambda: c.http("GET", "/api/upgrade").body["busy"] == "waiting", WAIT_S, "waiting")
    kept_file = c.data_dir / "ota" / "download.bin"
    assert kept_file.read_bytes() == good_bins["1.0.1"]
    assert ocpp_state(c)["fw"]["st"] == "Downloaded"
    c.kill()  # power cut: the charge ends with it
    if kept == "damaged":
        b = bytearray(kept_file.read_bytes())
        b[5000] ^= 1
        kept_file.write_bytes(bytes(b))
    boot_mark = cs.mark()
    c.start()
    got = wait_fw(cs, "Installing", boot_mark, 20)
    if kept == "whole":
        assert got == ["Installing"], got  # Downloaded holds: no new download
        assert len(files.requests) == 1
    else:
        assert got == ["Downloading", "Downloaded", "Installing"], got
        assert len(files.requests) == 2
    assert "DownloadFailed" not in fw_statuses(cs, mark)
    new_mark = boot_into_new_version(cs, c, "1.0.1")
    assert not kept_file.exists()
    if kept == "whole":
        wait_fw(cs, "Installed", new_mark, 40)
        assert fw_statuses(cs, mark) == ["Downloading", "Downloaded", "Installing", "Installed"]


def _fw_after_cut(cs, mark, boot_mark, final, timeout=40):
    """The statuses heard since UpdateFirmware (`mark`) once `final` has come after the
    boot (`boot_mark`): what reached the central system before the cut is a prefix of
    Downloading, Downloaded, Installing in that order, then `final`, and nothing else."""
    wait_fw(cs, final, boot_mark, timeout)
    time.sleep(0.5)
    before = fw_statuses(cs, mark)[: len(fw_statuses(cs, mark)) - len(fw_statuses(cs, boot_mark))]
    after = fw_statuses(cs, boot_mark)
    steps = ["Downloading", "Downloaded", "Installing"]
    assert before == [s for s in steps if s in before] and len(set(before)) == len(before), before
    assert after == [final], after
    return before


def test_power_cuts_during_an_ocpp_update(cs, ocpp, files, tmp_path):
    """Power cuts at seeded instants of UpdateFirmware with a 2 MB file, aimed at what
    the charger writes: while the download fills the staging file, while the install
    extracts the file into the new slot, after the switch (boot.json names the new slot)
    and during the first boot of the new version. After each it boots the old or the new
    version and tells the central system how the update ended: DownloadFailed after a
    cut in the download, InstallationFailed after one in the install or on the new
    version's first boot (rolled back), Installed when the new version, booted after a
    cut past the switch, passes its health check."""
    rnd = random.Random(CUT_SEED)
    files.files = {v: variant(tmp_path, v, pad=PAD) for v in ("4.0.1", "4.0.2")}
    files.slow = set(files.files)
    plan = ["download", "install", "download", "install", "download", "install",
            "first boot", "switch"]
    c = ocpp()
    running = FACTORY_VERSION
    ota_dir = c.data_dir / "ota"
    landed = []
    for aim in plan:
        version = "4.0.1" if running != "4.0.1" else "4.0.2"
        total = len(files.files[version])
        slot = "b" if boot_state(c.data_dir)["active"] == "a" else "a"
        sd = c.data_dir / "fw" / slot
        mark = cs.mark()
        cs.call("CP1", "UpdateFirmware", location=files.url(version),
                retrieveDate=iso(datetime.now(timezone.utc)))
        if aim == "download":
            at = rnd.randrange(64 << 10, total * 9 // 10)
            assert cut_when(c, lambda at=at: size(ota_dir / "upload.bin") >= at)
            expect, final = running, "DownloadFailed"
        elif aim == "install":
            at = int(rnd.uniform(0, 0.9) * PAD)
            kept = ota_dir / "download.bin"
            assert cut_when(c, lambda at=at, sd=sd, kept=kept: fresh_pad(sd, kept) >= at)
            assert not (sd / "slot.json").exists()
            expect, final = running, "InstallationFailed"
        else:
            assert cut_when(c, lambda slot=slot: boot_state(c.data_dir).get("active") == slot,
                            then=rnd.uniform(0, 0.8))
            st = boot_state(c.data_dir)
            assert st["trial"] and st["tries"] == 0 and st["version"] == version
            expect = version
            final = "Installed" if aim == "switch" else "InstallationFailed"
        boot_mark = cs.mark()
        if aim == "first boot":  # the new version's first boot, cut before its health check
            c.start()
            boot = cs.wait_for(lambda bm=boot_mark: cs.payloads("CP1", "BootNotification", bm),
                               20, "boot")[0]
            assert boot["firmwareVersion"] == version
            time.sleep(rnd.uniform(0, 2))
            assert boot_state(c.data_dir)["tries"] == 1
            c.kill()
            expect = running
            boot_mark = cs.mark()
        c.start()
        boot = cs.wait_for(lambda bm=boot_mark: cs.payloads("CP1", "BootNotification", bm),
                           20, "boot")[0]
        assert boot["firmwareVersion"] == expect, (aim, boot)
        before = _fw_after_cut(cs, mark, boot_mark, final)
        landed.append((aim, before, final))
        running = expect
        assert not (ota_dir / "upload.bin").exists() and not (ota_dir / "download.bin").exists()
        assert ocpp_state(c).get("fw") is None
    print(f"\nOCPP power cuts (seed {CUT_SEED}): {len(landed)}\n{landed}")
    assert running == "4.0.1" or running == "4.0.2"
