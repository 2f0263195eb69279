"""Hostile upgrades against the firmware process (docs/ota.md "Signed files", docs/
security.md): forged and unsigned files with and without a signing key, the key installed
once and replaced only by a file it signed, OCPP downloads over https:// against the CA of
wss://, http:// refused at security profile 2, a download server sending an endless
header line or endless headers, CR/LF in the location."""

import hashlib
import http.server
import socket
import sys
import threading
import time
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from csms import CentralSystem, make_certs, server_context
from harness import ROOT
from test_web_ui import browser, tab  # noqa: F401 (fixtures)

sys.path.insert(0, str(ROOT / "tools"))
import mkbin  # noqa: E402

OCTET = {"Content-Type": "application/octet-stream"}
AUTH_KEY = "0123456789abcdef0123"
WAIT_S = 20.0  # bound on a wait of the test, not a figure of the firmware


# ---- files and keys -----------------------------------------------------------------------
def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def pem(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def lang_pack(version="1.0"):
    """A language pack (installs without a restart) holding the shipped Italian strings."""
    it = (ROOT / "firmware" / "evse" / "www" / "lang" / "it.json").read_bytes()
    return mkbin.make_bin("language", [("lang/it.json", it)], version, "*")


def tampered(signed):
    """signed with one bit of s flipped and the trailer's CRC made right again."""
    sig = bytearray(signed[-68:-4])
    sig[40] ^= 1
    return signed[:-76] + mkbin.trailer(bytes(sig))


def installed_lang(c):
    return (c.data_dir / "www" / "lang" / "it.json").exists()


def remove_lang(c):
    (c.data_dir / "www" / "lang" / "it.json").unlink(missing_ok=True)


# ---- the web API --------------------------------------------------------------------------
def write(c, method, path, **kw):
    """A request as a logged-in technician (the charger's own password, tests/harness.py)."""
    r = c.http(method, path, **kw)
    if r.status == 401:
        c.login()
        r = c.http(method, path, **kw)
    return r


def logged_in(c):
    c.login()
    return c


def upload(c, data):
    return write(c, "POST", f"/api/upgrade?md5={hashlib.md5(data).hexdigest()}", body=data,
                 headers=OCTET)


def put_key(c, text):
    return write(c, "PUT", "/api/upgrade/key", json={"key": text})


def key_view(c):
    return write(c, "GET", "/api/upgrade").body["key"]


def test_without_a_key_unsigned_and_forged_files_install_unchecked(start_charger):
    c = logged_in(start_charger())
    assert key_view(c)["installed"] is False
    r = upload(c, lang_pack())
    assert r.status == 200 and r.body["code"] == "100 UP", r.body
    assert r.body["signature"] == "unsigned"
    remove_lang(c)
    r = upload(c, mkbin.sign(lang_pack(), new_key()))
    assert r.status == 200 and r.body["code"] == "100 UP", r.body
    assert r.body["signature"] == "unchecked: no key installed"
    assert installed_lang(c)


def test_with_a_key_unsigned_and_forged_files_are_refused_before_install(start_charger):
    key, other = new_key(), new_key()
    c = logged_in(start_charger())
    r = put_key(c, pem(key))
    assert r.status == 200, r.body
    fp = mkbin.fingerprint(mkbin.raw_public(key))
    assert key_view(c) == {"installed": True, "fingerprint": fp}
    for data, why in ((lang_pack(), "not signed"),
                      (mkbin.sign(lang_pack(), other), "signature does not match"),
                      (tampered(mkbin.sign(lang_pack(), key)), "signature does not match"),
                      (mkbin.sign(lang_pack(), key)[:-1] + b"\0", "damaged signature trailer")):
        r = upload(c, data)
        assert r.status == 400, r.body
        assert r.body["code"] == "E04 UP" and r.body["error"].startswith(why), r.body
        assert not installed_lang(c), "nothing installed"
        assert write(c, "GET", "/api/upgrade").body["last"]["code"] == "E04 UP"
    # a firmware image signed by another key: refused, no slot switch, no restart
    fw = mkbin.sign(mkbin.make_bin("firmware", [("evse/app.mpy", b"x"), ("evse/version.mpy",
                                                                         b"y")], "6.6.6",
                                   "unix_sim"), other)
    r = upload(c, fw)
    assert r.status == 400 and "signature does not match" in r.body["error"], r.body
    time.sleep(2)
    assert c.running
    assert not (c.data_dir / "slot_b").exists() or not any((c.data_dir / "slot_b").iterdir())
    r = upload(c, mkbin.sign(lang_pack(), key))
    assert r.status == 200 and r.body["signature"] == "verified", r.body
    assert installed_lang(c)


def test_key_installed_once_then_replaced_only_by_a_key_file_it_signed(start_charger):
    key, new, other = new_key(), new_key(), new_key()
    c = start_charger()
    assert c.http("PUT", "/api/upgrade/key", json={"key": pem(key)}).status == 401
    logged_in(c)
    hexkey = mkbin.raw_public(key).hex()
    for bad in ("04" + "00" * 64, hexkey[:-2] + "00", "hello", hexkey[:-2], 5):
        r = put_key(c, bad)
        assert r.status == 400, (bad, r.body)
    assert key_view(c)["installed"] is False
    assert not (c.data_dir / "ota_pub.key").exists()
    assert put_key(c, hexkey).status == 200
    r = put_key(c, pem(other))
    assert r.status == 409 and r.body["refused"] == "installed", r.body
    assert (c.data_dir / "ota_pub.key").read_bytes() == mkbin.raw_public(key)
    # a key file signed by another key, or unsigned, does not replace it
    raw_new = mkbin.raw_public(new)
    for data in (mkbin.sign(mkbin.key_bin(raw_new), other), mkbin.key_bin(raw_new)):
        r = upload(c, data)
        assert r.status == 400 and r.body["code"] == "E04 UP", r.body
    assert (c.data_dir / "ota_pub.key").read_bytes() == mkbin.raw_public(key)
    r = upload(c, mkbin.sign(mkbin.key_bin(raw_new), key))
    assert r.status == 200 and r.body["kind"] == "key", r.body
    assert key_view(c)["fingerprint"] == mkbin.fingerprint(raw_new)
    assert upload(c, mkbin.sign(lang_pack(), key)).status == 400  # the old key is done
    assert upload(c, mkbin.sign(lang_pack(), new)).status == 200
    c.restart()  # the key outlives a restart
    logged_in(c)
    assert key_view(c)["fingerprint"] == mkbin.fingerprint(raw_new)


def test_upgrade_page_shows_the_installed_key(start_charger, tab):  # noqa: F811
    from test_web_ui import expect, strings

    L = strings("en")
    key = new_key()
    c = logged_in(start_charger())
    assert put_key(c, pem(key)).status == 200
    write(c, "GET", "/api/upgrade")  # the session (and password) the page will use
    base = f"http://127.0.0.1:{c.http_port}"
    t = tab(base)
    t.ctx.add_cookies([{"name": k, "value": v, "url": base} for k, v in c.cookies.items()])
    t.go("/#/upgrade")
    t.title(L["up.title"])
    fp = mkbin.fingerprint(mkbin.raw_public(key))
    expect(t.page.locator("#up-running")).to_contain_text(L["up.key"].format(f=fp))
    (c.data_dir / "ota_pub.key").write_bytes(b"damaged")
    t.go("/#/")
    t.go("/#/upgrade")
    expect(t.page.locator("#up-running")).to_contain_text(L["up.keybad"])
    assert not t.problems, t.problems


def test_mkbin_signs_from_the_command_line(tmp_path):
    key = new_key()
    kf = tmp_path / "k.pem"
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    out = tmp_path / "it.bin"
    assert mkbin.main(["language", "--lang", "it", "-o", str(out), "--sign", str(kf)]) == 0
    data = out.read_bytes()
    t = data[-76:]
    assert t[:4] == b"EVPS" and t[4] == 1 and int.from_bytes(t[6:8], "little") == 64
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    sig = encode_dss_signature(int.from_bytes(t[8:40], "big"), int.from_bytes(t[40:72], "big"))
    key.public_key().verify(sig, data[:-76], ec.ECDSA(hashes.SHA256()))
    (tmp_path / "rsa.pem").write_text("not a key")
    assert mkbin.main(["language", "--lang", "it", "-o", str(out), "--sign",
                       str(tmp_path / "rsa.pem")]) == 1


# ---- OCPP downloads -----------------------------------------------------------------------
class _Files(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.requests.append(self.path)
        data = self.server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server():
    """start(ssl_ctx=None) -> a file server on 127.0.0.1 (.files, .requests, .url(name))."""
    servers = []

    def start(ctx=None):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
        srv.daemon_threads = True
        srv.files, srv.requests = {}, []
        if ctx is not None:
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        scheme, host = ("https", "localhost") if ctx else ("http", "127.0.0.1")
        srv.url = lambda name: f"{scheme}://{host}:{srv.server_address[1]}/{name}"
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fw_statuses(cs, since):
    return [p["status"] for p in cs.payloads("CP1", "FirmwareStatusNotification", since)]


def update(cs, location, final, retries=0):
    mark = cs.mark()
    assert cs.call("CP1", "UpdateFirmware", location=location, retrieveDate=now(),
                   retries=retries, retryInterval=1) == {}
    cs.wait_for(lambda: final in fw_statuses(cs, mark), WAIT_S, f"FirmwareStatus {final}")
    return fw_statuses(cs, mark)


def last_result(c):
    return write(c, "GET", "/api/upgrade").body["last"]


def test_https_download_checks_the_ca_of_wss(tmp_path, ocpp, cs, file_server):
    certs = make_certs(tmp_path / "pki")
    srv = file_server(server_context(certs["cert"], certs["key"]))
    srv.files["it.bin"] = lang_pack()
    c = ocpp(files={"ocpp_ca.pem": certs["other_ca"].read_bytes()})
    assert update(cs, srv.url("it.bin"), "DownloadFailed") == ["Downloading", "DownloadFailed"]
    assert not srv.requests, "no HTTP request to an unverified server"
    assert not installed_lang(c)
    (c.data_dir / "ocpp_ca.pem").unlink()
    assert update(cs, srv.url("it.bin"), "DownloadFailed") == ["Downloading", "DownloadFailed"]
    assert "needs the CA certificate" in last_result(c)["error"]
    (c.data_dir / "ocpp_ca.pem").write_bytes(certs["ca"].read_bytes())
    got = update(cs, srv.url("it.bin"), "Installing")
    assert got == ["Downloading", "Downloaded", "Installing"], got
    c.wait_for(lambda s: installed_lang(c), WAIT_S)
    assert srv.requests == ["/it.bin"]


def test_signature_of_an_ocpp_download_with_a_key_installed(ocpp, cs, file_server):
    key = new_key()
    srv = file_server()
    srv.files = {"plain.bin": lang_pack(), "forged.bin": mkbin.sign(lang_pack(), new_key()),
                 "good.bin": mkbin.sign(lang_pack(), key)}
    c = ocpp(files={"ota_pub.key": mkbin.raw_public(key)})
    for name, why in (("plain.bin", "not signed"), ("forged.bin", "signature does not match")):
        got = update(cs, srv.url(name), "InstallationFailed")
        assert got == ["Downloading", "Downloaded", "InstallationFailed"], got
        r = last_result(c)
        assert r["code"] == "E04 UP" and r["error"].startswith(why), r
        assert not installed_lang(c)
    got = update(cs, srv.url("good.bin"), "Installing")
    assert got == ["Downloading", "Downloaded", "Installing"], got
    c.wait_for(lambda s: installed_lang(c), WAIT_S)
    assert last_result(c)["signature"] == "verified"


def test_an_ocpp_download_over_plain_http_without_a_key_is_not_installed(ocpp, cs, file_server):
    # OCPP 1.6 gives no MD5 and, without a key, no signature is checked: whoever answers
    # for the host (plain http://, DNS) would choose the firmware. Refused before any
    # connection, with the reason; https:// (checked against the CA) or a key is needed.
    srv = file_server()
    srv.files["x.bin"] = lang_pack()
    c = ocpp()
    assert update(cs, srv.url("x.bin"), "DownloadFailed") == ["DownloadFailed"]
    assert not srv.requests, "no request over plain http://"
    r = last_result(c)
    assert r["code"] == "E03 UP" and "http:// without a signing key" in r["error"], r
    assert "http:// without a signing key" in c.log_tail()
    time.sleep(1)
    assert not installed_lang(c)


def test_an_older_signed_firmware_installs_only_when_the_technician_asks(ocpp, cs, file_server):
    # A signed image is good for ever: replayed (a plain http:// download, a stolen
    # password) an old one would bring back what later versions fixed. With a key, a
    # firmware older than the running version is refused over OCPP and on upload unless
    # the upload asks for the downgrade (docs/ota.md "Downgrades").
    key = new_key()
    tree = [("evse/app.mpy", b"x"), ("evse/version.mpy", b"y")]
    old = mkbin.sign(mkbin.make_bin("firmware", tree, "0.0.1", "unix_sim"), key)
    srv = file_server()
    srv.files["old.bin"] = old
    c = ocpp(files={"ota_pub.key": mkbin.raw_public(key)})
    got = update(cs, srv.url("old.bin"), "InstallationFailed")
    assert got == ["Downloading", "Downloaded", "InstallationFailed"], got
    r = last_result(c)
    assert r["code"] == "E04 UP" and "older than the running" in r["error"], r
    r = upload(c, old)
    assert r.status == 400 and "older than the running" in r.body["error"], r.body
    assert not (c.data_dir / "boot.json").exists(), "no slot switch"
    md5 = hashlib.md5(old).hexdigest()
    r = write(c, "POST", f"/api/upgrade?md5={md5}&downgrade=1", body=old, headers=OCTET)
    assert r.status == 200 and r.body["version"] == "0.0.1", r.body
    assert c.wait_exit(20) == 3  # installed: the restart into it


def test_http_download_refused_at_security_profile_2(tmp_path, ocpp, file_server):
    certs = make_certs(tmp_path / "pki")
    tls = CentralSystem(ssl=server_context(certs["cert"], certs["key"]), auth={"CP1": AUTH_KEY})
    tls.start()
    try:
        srv = file_server()
        srv.files["it.bin"] = lang_pack()
        c = ocpp(central=tls, url=tls.url("CP1", host="localhost"),
                 files={"ocpp_ca.pem": certs["ca"].read_bytes()},
                 config={"AuthorizationKey": AUTH_KEY, "SecurityProfile": 2})
        assert update(tls, srv.url("it.bin"), "DownloadFailed") == ["DownloadFailed"]
        assert not srv.requests
        assert "http:// at security profile 2" in last_result(c)["error"]
    finally:
        tls.close()


def test_control_characters_in_the_location_are_refused(ocpp, cs, file_server):
    srv = file_server()
    srv.files["it.bin"] = lang_pack()
    c = ocpp()
    for loc in (srv.url("it.bin") + "\r\nX-Injected: 1", srv.url("it .bin"),
                srv.url("it.bin\x00"), "ftp://127.0.0.1/it.bin"):
        assert update(cs, loc, "DownloadFailed") == ["DownloadFailed"], loc
        assert "download refused" in last_result(c)["error"]
    assert not srv.requests
    assert c.running


class _Endless:
    """A download server that answers with a status line, then `chunk` forever."""

    def __init__(self, chunk):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.chunk = chunk
        self.sent = 0
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self):
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/fw.bin"

    def _serve(self):
        conn, _ = self.sock.accept()
        conn.settimeout(30)
        try:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.0 200 OK\r\n")
            while True:
                conn.sendall(self.chunk)
                self.sent += len(self.chunk)
        except OSError:
            pass  # the charger hung up
        finally:
            conn.close()
            self.done.set()


@pytest.mark.parametrize("chunk", [b"a" * 256, b"X-Pad: 1\r\n"], ids=["endless-line",
                                                                      "endless-headers"])
def test_endless_response_head_fails_cleanly_with_a_bounded_heap(ocpp, cs, chunk):
    c = ocpp(files={"ota_pub.key": mkbin.raw_public(new_key())})  # http:// needs a key
    # A download that finds nobody first: the installer's modules are then in the heap
    # (on this port code takes heap, on a board it stays in flash), and what the endless
    # head adds below is the download's own data.
    assert update(cs, "http://127.0.0.1:9/fw.bin", "DownloadFailed")[-1] == "DownloadFailed"
    heap0 = c.sim("heap")["heap_alloc"]
    srv = _Endless(chunk)
    peak = [heap0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], c.sim("heap")["heap_alloc"])
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        assert update(cs, srv.url(), "DownloadFailed") == ["Downloading", "DownloadFailed"]
    finally:
        stop.set()
        th.join(5)
    assert srv.done.wait(10), "the charger closed the connection"
    err = last_result(c)["error"]
    assert "over 512 bytes" in err or "over 32 lines" in err, err
    assert peak[0] - heap0 < 24 << 10, (heap0, peak[0])  # a line buffer, not the stream
    assert c.http("GET", "/api/status").status == 200
