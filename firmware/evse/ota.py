# Upgrades (manual §12-13, docs/ota.md): the service behind the Upgrade page and the OCPP
# installer: status, signing key, .bin upload with MD5, A/B install, language packs,
# health confirmation of a new version. The file format and its checks are
# evse/otaimage.py, imported only while a file is checked or installed; the OCPP
# UpdateFirmware download is evse/otadownload.py (lib/httpget.py). With a key installed
# at <data>/ota_pub.key every file must carry a good signature by it; without one a
# signature cannot be checked (the status says so) and files install on their MD5; an
# OCPP download, which comes with no MD5, then only over https:// (checked against the CA).
# With a key, a firmware older than the running one needs the upload's downgrade=1.
#
# The upload streams in CHUNK pieces to <data>/ota/upload.bin with the MD5 computed on the
# way: the heap use does not depend on the file size. Errors: otaimage.OK and E_*.
import asyncio
import binascii
import gc
import hashlib
import json
import os
import time

import atomicfile
import log
from evse import settings

_log = log.get("ota")

KEY_FILE = "ota_pub.key"
HEAD_MS = 30000  # the whole response head of a download
STALL_MS = 15000  # E03: no data for this long
DOWNLOAD_MS = 600000  # a download's whole body, per try: 4 MB needs 7 KB/s
DNS_TIMEOUT_MS = 4000  # the firmware host asked of the DNS server (sent again at 2 s)
MAX_FILE = 4 << 20  # the largest .bin taken (web upload: api._UPGRADE_MAX)
HEALTH_MS = 10000  # a new version must stay healthy this long on its first boot...
HEALTH_DEADLINE_MS = 60000  # ...within this long after it started, else reset/rollback
RESET_DELAY_MS = 1500  # after "100 UP": time for the answer to reach the browser
MESSAGE_MS = 10000


def fingerprint(raw):
    """What the status and tools/mkbin.py show of a key: 16 hex digits of its SHA-256."""
    return binascii.hexlify(hashlib.sha256(bytes(raw)).digest()[:8]).decode()


def _mkdirs(path):
    cur = ""
    for part in path.split("/"):
        cur = cur + "/" + part if cur or path.startswith("/") else part
        if not part or part == ".":
            continue
        try:
            os.mkdir(cur)
        except OSError:
            pass


async def _rmtree(path):
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for e in entries:
        p = path + "/" + e[0]
        if e[1] == 0x4000:
            await _rmtree(p)
        else:
            try:
                os.remove(p)
            except OSError:
                pass
        await asyncio.sleep_ms(0)  # an erase per file: the pilot task runs between them
    try:
        os.rmdir(path)
    except OSError:
        pass


# What makes an archive a firmware tree (the slot is not touched without them).
_FIRMWARE_NEEDS = ("evse/app.mpy", "evse/version.mpy")


def _language_file(p):
    """A language pack holds lang/<code>.json (or .json.gz) only: OtaError(E04) else."""
    if not p.startswith("lang/") or "/" in p[5:] or not (
        p.endswith(".json") or p.endswith(".json.gz")
    ):
        from evse import otaimage as img

        raise img.OtaError(img.E_FILE, "a language pack holds lang/<code>.json only: %s" % p)


def discard(p):
    """Removes a file; nothing when it is not there."""
    try:
        os.remove(p)
    except OSError:
        pass


class Ota:
    """hw: the board (its name, network interface and reset); charger: whether a charge
    runs (none is cut); hmi: the display that shows a result code, or None; settings:
    read at boot only (is OCPP configured?)."""

    # A download's limits (class attributes: an instance costs no entry for them; tests
    # shorten them on theirs).
    dns_timeout_ms = DNS_TIMEOUT_MS
    download_ms = DOWNLOAD_MS
    _ocpp = None  # the OCPP client once ocpp_hook() has been called

    def __init__(self, hw, data_dir, settings, charger, hmi, ab=None, boot=True):
        self.hw = hw
        self.data_dir = data_dir
        self.board = hw.name
        self.charger = charger
        self.hmi = hmi
        if ab is None:
            try:
                import ab_boot as ab
            except ImportError:
                ab = None  # source tree without A/B: language packs only
        self.ab = ab
        self.busy = None  # "upload" / "download" / "install" while one runs
        self.progress = [0, 0]  # bytes received, bytes expected
        self.last = None  # result of the last upgrade attempt since boot
        self.heap_peak = 0  # live heap, the worst of the last upgrade (_sample)
        self._pieces = 0
        self.stage_dir = self.data_dir + "/ota"
        self.staging = self.stage_dir + "/upload.bin"
        # An OCPP download, whole and verified, waiting to be installed (docs/ota.md): it
        # outlives a power cut, so the next boot installs it instead of failing.
        self.kept = self.stage_dir + "/download.bin"
        self.kept_meta = self.stage_dir + "/download.json"
        _mkdirs(self.stage_dir)
        self.key_path = self.data_dir + "/" + KEY_FILE
        if boot:  # what a power cut left; not when the app builds it again for a use
            self._clean_up(settings)

    def _clean_up(self, settings):
        discard(self.staging)  # a cut mid-upload leaves one: never installed
        discard(self.kept_meta + ".tmp")
        discard(self.kept_meta + ".bak")
        try:
            ocpp_on = bool(settings["ocpp_url"])
        except (KeyError, TypeError):
            ocpp_on = False
        if not ocpp_on:
            self.drop_kept()  # nothing will ask for it
        try:
            os.stat(self.key_path)
            discard(self.key_path + ".bak")  # a handover cut before it removed the old key
        except OSError:
            pass

    def dns_server(self):
        """The network's DNS server, asked for a download's host without blocking the
        loop (lib/dnsclient.py): open_connection only ever gets the address."""
        import dnsclient

        return dnsclient.wlan_server(getattr(self.hw, "wlan", None))

    # ---- state -----------------------------------------------------------------------
    def running(self):
        ab = self.ab
        return {"slot": None, "trial": False} if ab is None else ab.running()

    def view(self):
        from evse import version

        return {
            "busy": self.busy,
            "received": self.progress[0],
            "total": self.progress[1],
            "last": self.last,
            "version": version.VERSION,
            "running": self.running(),
            "key": self.key_view(),
        }

    # ---- the signing key (<data>/ota_pub.key: 65 bytes, 04 || x || y) --------------------
    def _key_files(self):
        # a replacement is write_atomic's: a cut between its renames leaves .tmp (whole,
        # the new key) or .bak (the old one) without the file itself
        return (self.key_path, self.key_path + ".tmp", self.key_path + ".bak")

    def key_installed(self):
        """True when any copy of a key is on flash, readable or not."""
        return atomicfile.stored(self.key_path)

    def load_key(self):
        """(raw 65 bytes, (x, y)) of the installed key, None when none is installed;
        OtaError(E04) when one is but cannot be read: then every file is refused.
        The first copy that exists decides: .tmp and .bak stand in only for a missing
        file (a cut replacement), never for a damaged one, whose .bak is a retired key."""
        import p256  # here, not at import: an upload's body does not need it

        for p in self._key_files():
            try:
                with open(p, "rb") as f:
                    raw = f.read(p256.KEY_LEN + 1)
                return raw, p256.parse_key(raw)
            except OSError as e:
                if e.args and e.args[0] == 2:  # ENOENT: the next copy
                    continue
                why = repr(e)
            except ValueError as e:
                why = str(e)
            from evse import otaimage as img

            raise img.OtaError(img.E_FILE, "the installed signing key cannot be read (%s)" % why)
        return None

    def key_view(self):
        try:
            k = self.load_key()
        except ValueError as e:  # the OtaError of load_key(): the page polls without otaimage
            return {"installed": True, "error": e.msg}
        if k is None:
            return {"installed": False, "note": "signatures cannot be checked: no key installed"}
        return {"installed": True, "fingerprint": fingerprint(k[0])}

    def install_key(self, raw):
        """Installs the first key (raw 65 bytes); OtaError when one is installed or raw
        is not a point of the curve."""
        import p256

        p256.parse_key(raw)  # ValueError when it is not a key
        if self.key_installed():
            from evse import otaimage as img

            raise img.OtaError(img.E_FILE, "a key is installed: only a key file signed by it "
                               "replaces it")
        self._write_key(raw)

    def _write_key(self, raw):
        try:
            atomicfile.write_atomic(self.key_path, bytes(raw))
        except OSError as e:
            from evse import otaimage as img

            raise img.OtaError(img.E_WRITE, "cannot write the key: %s" % e)
        discard(self.key_path + ".bak")  # the retired key must not outlive the handover
        _log.info("upgrade signing key installed: %s", fingerprint(raw))

    async def authenticate(self, sink):
        """What the signature of the whole file in sink says ("verified", "unsigned" or
        "unchecked: no key installed"); OtaError(E04) when a key is installed and the
        file is not signed by it. Steps of the check yield to the control loop."""
        from evse import otaimage as img

        key = self.load_key()
        sig = sink.sig
        if key is None:
            return "unsigned" if sig is None else "unchecked: no key installed"
        if sig is None:
            raise img.OtaError(img.E_FILE, "not signed: this charger takes only files signed "
                               "by %s" % fingerprint(key[0]))
        import p256

        if not await p256.averify(key[1], sink.digest, sig, self._sample):
            raise img.OtaError(img.E_FILE, "signature does not match the installed key %s"
                               % fingerprint(key[0]))
        return "verified"

    def check_floor(self, info, downgrade=False):
        """OtaError(E04) for a firmware file signed by the installed key whose version
        is older than the running one, unless the technician asked for a downgrade: an
        old signed image replayed would bring back what its successors fixed. Without a
        key anything well-formed installs anyway; equal versions reinstall."""
        if downgrade or info["kind"] != "firmware" or info.get("signature") != "verified":
            return
        from evse import otaimage as img
        from evse import version

        new, cur = img.version_key(info["version"]), img.version_key(version.VERSION)
        if new is None or cur is None or new < cur:
            raise img.OtaError(img.E_FILE, "version %s is older than the running %s (or cannot "
                               "be compared): a downgrade is installed only from the Upgrade "
                               "API with downgrade=1" % (info["version"], version.VERSION))

    def refuse(self):
        """Why no upgrade may start now (HTTP 409): (reason, message), reason "busy",
        "charging" or "checking"; None when one may."""
        if self.busy:
            return "busy", "another upgrade is in progress"
        if self.charger.session is not None:
            return "charging", "a charge is running: upgrade when it has ended"
        if self.running()["trial"]:
            return "checking", "the running version is still being checked: retry in %d s" % (
                HEALTH_MS // 1000
            )
        return None

    def result(self, code, msg=None, **extra):
        from evse import otaimage as img

        r = {"code": code}
        if msg:
            r["error"] = msg
        r.update(extra)
        self.last = r
        if self.hmi is not None:
            self.hmi.show_message(code, MESSAGE_MS)
        if code == img.OK:
            _log.info("upgrade: %s %s", code, extra)
        else:
            _log.warning("upgrade: %s %s", code, msg)
        return r

    # ---- upload (POST /api/upgrade?md5=...) ------------------------------------------------
    async def upload(self, req, md5, downgrade=False):
        """Receives req's body as a .bin, installs it; returns (http status, result dict).
        The caller checked the session and refuse(). downgrade: the technician asked for
        an older signed firmware (check_floor)."""
        from evse import otaimage as img

        self.busy = "upload"
        self.progress[0] = 0
        self.progress[1] = req.content_length
        t0 = time.ticks_ms()
        gc.collect()
        heap0 = self.heap_peak = gc.mem_alloc()
        self._pieces = 0
        sink = None
        # The body read deadline is the server's; ask for STALL_MS where httpd allows it.
        if hasattr(req, "body_timeout_ms"):
            req.body_timeout_ms = STALL_MS
        try:
            sink = img.Sink(self.staging, req.content_length, img.MODEL, self.board, md5)
            # The connection's own line buffer, idle while its body is read (1 KB less
            # at the upgrade's worst moment); a buffer of our own if it holds more.
            buf = req.buffer() or img.buffer()
            mv = memoryview(buf)
            while True:
                try:
                    n = await req.read_into(buf)
                except asyncio.CancelledError:
                    self.result(img.E_TIMEOUT, "no data for %d s" % (STALL_MS // 1000))
                    raise
                except (OSError, EOFError):
                    self.result(img.E_FILE, "upload broken off at %d bytes" % sink.got)
                    raise
                if not n:
                    break
                sink.write(mv[:n])
                self.progress[0] = sink.got
                self._piece()
            sink.finish()
            buf = mv = None  # one of our own goes before the signature check's numbers
            ms = time.ticks_diff(time.ticks_ms(), t0)
            stats = {"bytes": sink.got, "ms": ms, "heap_before": heap0}
            info = sink.info
            info["signature"] = await self.authenticate(sink)  # before anything is installed
            self.check_floor(info, downgrade)
            sink = None
            # A charge may have started during a long upload: installing is minutes of
            # flash work, never done while the relays may be closed. Refused, not kept.
            if self.charger.session is not None:
                _log.warning("upload refused: a charge started during it")
                return 409, {"error": "a charge started during the upload: upload again "
                             "when it has ended", "refused": "charging"}
            self.busy = "install"
            await self.install(info, buf=req.buffer())
            return 200, self.result(img.OK, None, version=info["version"], kind=info["kind"],
                                     signature=info["signature"], heap_peak=self.heap_peak,
                                     **stats)
        except img.OtaError as e:
            r = self.result(e.code, e.msg)
            await drop_body(req)  # the staging file goes below, as on every way out
            return (500 if e.code == img.E_WRITE else 400), r
        finally:
            if sink is not None:
                sink.close()
            discard(self.staging)
            if self.busy != "reset":
                self.busy = None

    def _sample(self):
        """The live heap now (after a collection) into heap_peak: an upgrade's worst moment
        is measured, in the upload, the signature check and the install (the answer's
        heap_peak; tools/mcu.py reports it)."""
        gc.collect()
        a = gc.mem_alloc()
        if a > self.heap_peak:
            self.heap_peak = a

    def _piece(self):
        self._pieces += 1
        if self._pieces & 31 == 0:  # every 32 pieces: a collection is milliseconds
            self._sample()

    # ---- install ---------------------------------------------------------------------------
    async def install(self, info, src=None, buf=None):
        """Installs the verified file src (the staging file by default); E01/E04 as
        OtaError. buf: a buffer to copy through (an upload's connection's), else one of
        its own."""
        from evse import otaimage as img

        src = src or self.staging
        if info["kind"] == "key":
            await self._install_key(info, src)
            return
        buf = buf or img.buffer()
        if info["kind"] == "language":
            await self._install_language(info, buf, src)
            return
        ab = self.ab
        if ab is None:
            raise img.OtaError(img.E_FILE, "this tree does not take firmware upgrades "
                               "(no ab_boot)")
        with open(src, "rb") as f:  # check the whole archive before touching a slot
            found = await img.holds(f, info["length"], _FIRMWARE_NEEDS)
        self._sample()
        if found < len(_FIRMWARE_NEEDS):
            raise img.OtaError(img.E_FILE, "not a firmware tree (no evse/app.mpy)")
        st = ab.load(self.data_dir)
        active = st.get("active")
        slot = "b" if active == "a" else "a"
        d = ab.slot_dir(self.data_dir, slot)
        # 1. the slot stops being a slot (slot.json first); boot.json never points at it
        #    (we run active; previous may, and ab_boot checks slot.json before using it).
        discard(d + "/slot.json")
        await _rmtree(d)
        _mkdirs(d)
        n = 0
        try:
            with open(src, "rb") as f:
                for path, size in img.records(f, info["length"]):
                    await self._extract(f, d + "/" + path, size, buf)
                    n += 1
            # 2. slot.json last: the slot is whole from here on.
            with open(d + "/slot.json", "w") as out:
                out.write(json.dumps({"complete": True, "version": info["version"], "files": n}))
                out.flush()
        except OSError as e:
            raise img.OtaError(img.E_WRITE, "install failed: %s" % e)
        # 3. the atomic switch: boot.json names the new slot, on trial.
        ab.save(
            self.data_dir,
            {
                "active": slot,
                "previous": active,
                "trial": True,
                "tries": 0,
                "version": info["version"],
                "rolled_back": None,
            },
        )
        _log.info("installed %s into slot %s (%d files); previous %s", info["version"], slot, n, active)
        self.busy = "reset"
        asyncio.create_task(self._reset_later())

    async def _install_key(self, info, src):
        import p256
        from evse import otaimage as img

        # only the installed key hands over to a new one (the first comes from the API)
        if info.get("signature") != "verified":
            raise img.OtaError(img.E_FILE, "a key file must be signed by the installed key"
                               if self.key_installed() else
                               "no key installed: install the first one on the Upgrade page")
        if info["length"] != p256.KEY_LEN:
            raise img.OtaError(img.E_FILE, "a key file holds a 65-byte public key")
        with open(src, "rb") as f:
            f.seek(img.HDR_LEN)
            raw = f.read(p256.KEY_LEN)
        try:
            p256.parse_key(raw)
        except ValueError as e:
            raise img.OtaError(img.E_FILE, "key file: %s" % e)
        self._write_key(raw)

    async def _extract(self, f, path, size, buf):
        from evse import otaimage as img

        _mkdirs(path.rpartition("/")[0])
        mv = memoryview(buf)
        with open(path, "wb") as out:
            while size:
                k = f.readinto(mv[: min(size, len(buf))])
                if not k:
                    raise img.OtaError(img.E_FILE, "archive ends early")
                out.write(mv[:k])
                size -= k
                self._piece()
                await asyncio.sleep_ms(0)  # the pilot task runs between chunks
            out.flush()

    async def _install_language(self, info, buf, src):
        from evse import otaimage as img

        d = self.data_dir + "/www/lang"
        with open(src, "rb") as f:
            await img.holds(f, info["length"], (), _language_file)
        _mkdirs(d)
        n = 0
        try:
            with open(src, "rb") as f:
                for path, size in img.records(f, info["length"]):
                    name = path[5:]
                    dest = d + "/" + name
                    # one form per file: a stale .gz would shadow a new plain file
                    discard(dest + ".gz" if not name.endswith(".gz") else dest[:-3])
                    await self._extract(f, dest + ".tmp", size, buf)
                    discard(dest)
                    os.rename(dest + ".tmp", dest)
                    n += 1
        except OSError as e:
            raise img.OtaError(img.E_WRITE, "install failed: %s" % e)
        _log.info("language pack %s installed: %d files", info["version"], n)
        settings.add_languages(self.data_dir)  # Setting -> Language may now name it

    async def _reset_later(self):
        await asyncio.sleep_ms(RESET_DELAY_MS)
        while self.charger.session is not None:  # never cut a charge
            await asyncio.sleep_ms(1000)
        _log.info("restarting into the new version")
        self.hw.reset()

    # ---- health of a new version (its first boot) --------------------------------------
    async def run(self, healthy):
        """Confirms a version on trial once healthy() (the application's judgement: its
        tasks on time, its web server up) has held for HEALTH_MS; resets (the next boot
        rolls back) when it has not within HEALTH_DEADLINE_MS."""
        if not self.running()["trial"]:
            return
        t0 = time.ticks_ms()
        since = None
        while True:
            await asyncio.sleep_ms(500)
            now = time.ticks_ms()
            if healthy():
                since = now if since is None else since
                if time.ticks_diff(now, since) >= HEALTH_MS:
                    break
            else:
                since = None
            if time.ticks_diff(now, t0) >= HEALTH_DEADLINE_MS:
                _log.error("new version not healthy within %d s: restarting to roll back",
                           HEALTH_DEADLINE_MS // 1000)
                self.hw.reset()
        st = self.ab.confirm(self.data_dir)
        _log.info("version %s confirmed healthy in slot %s", st.get("version"), self.ab.RUNNING)
        svc = self._service()
        if svc is not None:  # the central system hears Installed
            svc.firmware_confirmed()

    def _status(self, status):
        _log.info("firmware download: %s", status)

    # ---- download (OCPP UpdateFirmware: evse/otadownload.py) ------------------------------
    async def update_from_url(self, url, retries=0, retry_interval_s=60, status=None, kept=False):
        """Downloads a .bin from an http(s):// URL and installs it (then resets).
        status(s) hears Downloading, Downloaded, Installing. Raises OSError when the file
        could not be fetched in 1 + retries tries (the caller says DownloadFailed) and
        ValueError when a whole file is not for this charger or does not install
        (InstallationFailed, once Downloaded was said). The download may run during a
        charge; the install waits until no charge runs.

        kept: Downloaded was said before a restart; the file kept for it (self.kept) is
        installed when it is still whole, without downloading it again."""
        from evse import otadownload

        return await otadownload.run(self, url, retries, retry_interval_s,
                                     status or self._status, kept)

    def drop_kept(self):
        """Forgets the downloaded file kept for an install (metadata first)."""
        discard(self.kept_meta)
        discard(self.kept_meta + ".bak")
        discard(self.kept)

    # ---- the OCPP client (UpdateFirmware: evse/ocpp/transfer.py) -------------------------
    def ocpp_hook(self, ocpp):
        """The async fn for ocpp.on_update_firmware. The client is kept, not closures
        over it: what is asked of it goes through these methods."""
        self._ocpp = ocpp
        return self.update_firmware

    def _service(self):
        return None if self._ocpp is None else self._ocpp.service

    def tls(self):
        """An https:// download's context: the CA store of wss:// (ocpp_ca.pem), one
        loader for both; None without the OCPP client."""
        svc = self._service()
        return svc.tls() if svc is not None else None

    def profile(self):
        """The OCPP SecurityProfile (0 without the client): 2 and up refuse http://."""
        svc = self._service()
        return svc.cfg["SecurityProfile"] if svc is not None else 0

    def _fw_status(self, s):
        svc = self._service()
        if svc is not None:
            svc.firmware_status(s)

    async def update_firmware(self, location, retrieve_date, retries, retry_interval,
                              kept=False):
        await self.update_from_url(location, retries or 0, retry_interval or 60,
                                   self._fw_status, kept)


async def drop_body(req):
    """Reads what is still coming of a refused body (nothing kept), so the client gets
    to read the answer instead of a reset connection; the server's body timeout ends a
    stalled one."""
    buf = req.buffer() or bytearray(512)
    while req.left:
        if not await req.read_into(buf):
            break
