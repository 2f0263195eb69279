# Upgrades (manual §12-13, docs/ota.md): .bin upload with MD5, A/B install, language
# packs, health confirmation of a new version, the OCPP UpdateFirmware installer.
#
# .bin = 64-byte header + payload, integers little-endian:
#   0  magic  b"EVPB"          24 board   16 bytes, NUL padded ("*" = any board)
#   4  format version u8 (1)   40 version 16 bytes, NUL padded
#   5  kind u8 (1 firmware,    56 payload length u32
#      2 language pack,        60 CRC-32 of bytes 0..59 u32
#      3 signing key)
#   6  header length u16 (64)
#   8  model 16 bytes, NUL padded ("EVPLUS")
# payload = records (u16 path length, path UTF-8, u32 data length, data), then a u16 0.
# firmware: the compiled tree of tools/build.py (evse/..., lib/..., main.py);
# language:  lang/<code>.json[.gz] files, installed into <data>/www/lang/;
# key: the 65-byte public key (04 || x || y) that replaces <data>/ota_pub.key.
#
# A signed file (tools/mkbin.py --sign) has a 76-byte trailer after the payload:
#   0  magic b"EVPS"   4 algorithm u8 (1: ECDSA P-256, SHA-256)   5 reserved u8 (0)
#   6  signature length u16 (64)   8 r || s, 32 bytes each, big-endian
#   72 CRC-32 of bytes 0..71 u32
# signing the SHA-256 of the header and payload (lib/p256.py). With a key installed at
# <data>/ota_pub.key every file must carry a good signature by it; without one a
# signature cannot be checked (the status says so) and files install on their MD5; an
# OCPP download, which comes with no MD5, then only over https:// (checked against the CA).
# With a key, a firmware older than the running one needs the upload's downgrade=1.
#
# The upload streams in CHUNK pieces to <data>/ota/upload.bin with the MD5 computed on the
# way: the heap use does not depend on the file size. Errors (display and API):
#   E01 UP  write to flash failed      E03 UP  no data for 15 s
#   E02 UP  MD5 mismatch               E04 UP  wrong model/board, damaged or truncated file,
#                                              not signed or not by the installed key
import asyncio
import binascii
import gc
import hashlib
import json
import os
import struct
import time

import atomicfile
import dnsclient
import log
import p256
from evse import settings
from crc import crc32

_log = log.get("ota")

MAGIC = b"EVPB"
FORMAT = 1
HDR_LEN = 64
KIND_FIRMWARE = 1
KIND_LANGUAGE = 2
KIND_KEY = 3
_KINDS = {KIND_FIRMWARE: "firmware", KIND_LANGUAGE: "language", KIND_KEY: "key"}
SIG_MAGIC = b"EVPS"
SIG_P256 = 1
TRAILER_LEN = 76
KEY_FILE = "ota_pub.key"
MAX_LINE = 512  # a download's status line or header line, CRLF included
MAX_LINES = 32  # lines of a download's response head
HEAD_MS = 30000  # the whole response head of a download
MODEL = "EVPLUS"
CHUNK = 4096
_MIN_CHUNK = 256  # the least _buffer() falls back to
STALL_MS = 15000  # E03: no data for this long
DOWNLOAD_MS = 600000  # a download's whole body, per try: 4 MB needs 7 KB/s
DNS_TIMEOUT_MS = 4000  # the firmware host asked of the DNS server (sent again at 2 s)
MAX_FILE = 4 << 20  # the largest .bin taken (web upload: api._UPGRADE_MAX)
HEALTH_MS = 10000  # a new version must stay healthy this long on its first boot...
HEALTH_DEADLINE_MS = 60000  # ...within this long after it started, else reset/rollback
RESET_DELAY_MS = 1500  # after "100 UP": time for the answer to reach the browser
MESSAGE_MS = 10000
_MAX_PATH = 96
_PATH_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/"

OK = "100 UP"
E_WRITE = "E01 UP"
E_MD5 = "E02 UP"
E_TIMEOUT = "E03 UP"
E_FILE = "E04 UP"


class OtaError(ValueError):  # a ValueError: an installer's caller says it failed
    def __init__(self, code, msg):
        self.code = code
        self.msg = msg


class Truncated(OtaError):
    """The file ends before its header says: a broken transfer, worth another try."""


def _buffer():
    """A CHUNK bytearray, or a smaller one when the heap has no CHUNK-sized free block
    left (fragmented after weeks of running): an upgrade is slower then, never refused
    for want of one contiguous block. Every loop here reads len(buf)."""
    n = CHUNK
    while True:
        try:
            return bytearray(n)
        except MemoryError:
            if n <= _MIN_CHUNK:
                raise
            n //= 2


def _text(b):
    return bytes(b).split(b"\0", 1)[0].decode()


def version_key(v):
    """A version's dot-separated numbers as a tuple ("1.0.12-rc1": (1, 0, 12)), for the
    floor; None when a part does not start with a digit (it cannot be compared)."""
    out = []
    for part in v.split("."):
        n = 0
        k = 0
        for ch in part:
            if not "0" <= ch <= "9" or k >= 9:
                break
            n = n * 10 + ord(ch) - 48
            k += 1
        if not k:
            return None
        out.append(n)
    return tuple(out)


def parse_header(h, model=MODEL, board=None):
    """The header's fields as a dict; OtaError(E04) when it is damaged or not for us."""
    if len(h) < HDR_LEN or bytes(h[0:4]) != MAGIC:
        raise OtaError(E_FILE, "not an EV PLUS upgrade file")
    if struct.unpack("<I", h[60:64])[0] != crc32(memoryview(h)[0:60]):
        raise OtaError(E_FILE, "damaged file header")
    fmt, kind, hlen = struct.unpack("<BBH", h[4:8])
    if fmt != FORMAT or hlen != HDR_LEN:
        raise OtaError(E_FILE, "unknown file format %d" % fmt)
    if kind not in _KINDS:
        raise OtaError(E_FILE, "unknown file kind %d" % kind)
    try:
        info = {
            "kind": _KINDS[kind],
            "model": _text(h[8:24]),
            "board": _text(h[24:40]),
            "version": _text(h[40:56]),
            "length": struct.unpack("<I", h[56:60])[0],
        }
    except UnicodeError:
        raise OtaError(E_FILE, "damaged file header")
    if info["model"] != model:
        raise OtaError(E_FILE, "file for %s, this charger is %s" % (info["model"], model))
    if board and info["board"] not in (board, "*"):
        if kind == KIND_FIRMWARE or info["board"] != "*":
            raise OtaError(E_FILE, "file for board %s, this one is %s" % (info["board"], board))
    return info


def parse_trailer(t):
    """The 64-byte signature r || s of a 76-byte trailer; OtaError(E04) when damaged."""
    if len(t) != TRAILER_LEN or bytes(t[0:4]) != SIG_MAGIC:
        raise OtaError(E_FILE, "data after the payload is not a signature trailer")
    if struct.unpack("<I", t[72:76])[0] != crc32(memoryview(t)[0:72]):
        raise OtaError(E_FILE, "damaged signature trailer")
    alg, _, n = struct.unpack("<BBH", t[4:8])
    if alg != SIG_P256 or n != p256.SIG_LEN:
        raise OtaError(E_FILE, "unknown signature algorithm %d (length %d)" % (alg, n))
    return bytes(t[8:72])


def check_location(url):
    """OtaError(E03) for a download location that is not a plain http(s) URL: a space,
    CR, LF or any control or non-ASCII byte would end up in the request line."""
    for ch in url.encode():
        if ch <= 0x20 or ch >= 0x7F:
            raise OtaError(E_TIMEOUT, "download refused: character 0x%02x in the location" % ch)
    if not (url.startswith("http://") or url.startswith("https://")):
        raise OtaError(E_TIMEOUT, "download refused: only http:// and https:// locations")


def fingerprint(raw):
    """What the status and tools/mkbin.py show of a key: 16 hex digits of its SHA-256."""
    return binascii.hexlify(hashlib.sha256(bytes(raw)).digest()[:8]).decode()


def parse_key_text(text):
    """The raw 65-byte key of a PEM public key (P-256 SubjectPublicKeyInfo) or of 130 hex
    digits; ValueError when it is neither or not a point of the curve."""
    text = text.strip()
    if text.startswith("-----BEGIN PUBLIC KEY-----"):
        body = text[len("-----BEGIN PUBLIC KEY-----"):].partition("-----END PUBLIC KEY-----")
        if not body[1]:
            raise ValueError("PEM without its END line")
        try:
            der = binascii.a2b_base64("".join(body[0].split()))
        except ValueError:  # binascii.Error is a ValueError
            raise ValueError("PEM body is not base64")
        if len(der) != len(_SPKI_P256) + p256.KEY_LEN or der[: len(_SPKI_P256)] != _SPKI_P256:
            raise ValueError("not a P-256 public key")
        raw = der[len(_SPKI_P256):]
    else:
        if len(text) != 2 * p256.KEY_LEN:
            raise ValueError("a key is a PEM public key or 130 hex digits")
        try:
            raw = binascii.unhexlify(text)
        except ValueError:  # binascii.Error is a ValueError
            raise ValueError("a key is a PEM public key or 130 hex digits")
    p256.parse_key(raw)
    return raw


# DER of SubjectPublicKeyInfo{ecPublicKey, prime256v1} up to the 65-byte point
_SPKI_P256 = binascii.unhexlify("3059301306072a8648ce3d020106082a8648ce3d030107034200")


def safe_path(p):
    """Relative path of plain names: no '..', no leading '/', no empty or hidden part."""
    if not p or len(p) > _MAX_PATH or p[0] == "/":
        return False
    for ch in p.encode():
        if ch not in _PATH_CHARS:
            return False
    for part in p.split("/"):
        if not part or part[0] == ".":
            return False
    return True


def _read_exactly(f, n):
    # The file may be shorter than its header says if something else shortened it.
    b = f.read(n)
    if len(b) < n:
        raise OtaError(E_FILE, "archive ends early")
    return b


def records(f, length, buf):
    """Yields (path, size) of each payload record; f is left at the record's data, which
    the caller reads or skips. OtaError(E04) on a malformed archive."""
    end = HDR_LEN + length
    pos = HDR_LEN
    f.seek(pos)
    while True:
        if pos + 2 > end:
            raise OtaError(E_FILE, "archive ends early")
        (n,) = struct.unpack("<H", _read_exactly(f, 2))
        if n == 0:
            if pos + 2 != end:
                raise OtaError(E_FILE, "data after the archive end")
            return
        if n > _MAX_PATH or pos + 2 + n + 4 > end:
            raise OtaError(E_FILE, "bad archive record")
        try:
            path = f.read(n).decode()
        except UnicodeError:
            raise OtaError(E_FILE, "bad file name in archive")
        (size,) = struct.unpack("<I", _read_exactly(f, 4))
        pos += 2 + n + 4
        if size > end - pos or not safe_path(path):
            raise OtaError(E_FILE, "bad archive record %s" % path)
        yield path, size
        pos += size
        f.seek(pos)


async def _names(f, length, buf):
    """The paths of every record (records() checks each), yielding between records: an
    archive of hundreds of files is hundreds of flash seeks and reads."""
    names = []
    for p, _ in records(f, length, buf):
        names.append(p)
        await asyncio.sleep_ms(0)
    return names


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


def _remove(p):
    try:
        os.remove(p)
    except OSError:
        pass


class Sink:
    """Takes the file in pieces: header check as soon as it is complete, MD5, SHA-256 of
    the header and payload, the signature trailer, staging (path None: checks only)."""

    def __init__(self, path, total, model, board, expect_md5=None, defer=False):
        self.path = path
        self.defer = defer  # a download: keep every byte, check with verify() at the end
        self.total = total
        self.model = model
        self.board = board
        self.expect_md5 = expect_md5
        self.md5 = hashlib.md5()
        self.sha = hashlib.sha256()
        self.hdr = bytearray(HDR_LEN)
        self.tail = bytearray(TRAILER_LEN)
        self.end = None  # header + payload length, once the header is in
        self.sig = None  # the trailer's r || s, once the file is whole and checked
        self.got = 0
        self.info = None
        self.f = None
        if total is not None and total < HDR_LEN:
            raise OtaError(E_FILE, "file too short")
        if path is None:
            return
        try:
            self.f = open(path, "wb")
        except OSError as e:
            raise OtaError(E_WRITE, "cannot write the staging file: %s" % e)

    def write(self, mv):
        n = len(mv)
        if self.got < HDR_LEN:
            k = min(n, HDR_LEN - self.got)
            self.hdr[self.got : self.got + k] = mv[:k]
            if self.got + k == HDR_LEN:
                # where the signed part ends; the header itself is checked below or,
                # for a download, by verify()
                self.end = HDR_LEN + struct.unpack("<I", self.hdr[56:60])[0]
            if self.got + k == HDR_LEN and not self.defer:
                self.info = parse_header(self.hdr, self.model, self.board)
                want = HDR_LEN + self.info["length"]
                if self.total is not None and self.total not in (want, want + TRAILER_LEN):
                    raise OtaError(
                        E_FILE, "file is %d bytes, its header says %d: truncated or damaged"
                        % (self.total, want)
                    )
                if self.total is None:
                    self.total = want + TRAILER_LEN  # at most; finish() checks the rest
        if self.total is not None and self.got + n > self.total:
            raise OtaError(E_FILE, "file longer than its header says")
        k = n if self.end is None else max(0, min(n, self.end - self.got))
        if k:
            self.sha.update(mv[:k])
        if k < n:  # the bytes after the payload: the trailer's first TRAILER_LEN kept
            t = self.got + k - self.end
            m = min(n - k, TRAILER_LEN - t)
            if m > 0:
                self.tail[t : t + m] = mv[k : k + m]
        self.md5.update(mv)
        if self.f is not None:
            try:
                self.f.write(mv)
            except OSError as e:
                raise OtaError(E_WRITE, "write failed: %s" % e)
        self.got += n

    def signature(self):
        """None for an unsigned file, else the trailer's r || s; OtaError(E04) when the
        bytes after the payload are not exactly one good trailer. The file is whole."""
        after = self.got - self.end
        if after == 0:
            return None
        if after < TRAILER_LEN:
            raise Truncated(E_FILE, "signature trailer cut short (%d bytes)" % after)
        if after > TRAILER_LEN:
            raise OtaError(E_FILE, "data after the signature trailer")
        return parse_trailer(self.tail)

    def finish(self):
        try:
            self.f.flush()
        except OSError as e:
            raise OtaError(E_WRITE, "write failed: %s" % e)
        finally:
            self.close()
        if self.defer:
            return None
        if self.info is None or self.got != self.total:
            raise OtaError(E_FILE, "file truncated at %d bytes" % self.got)
        self.sig = self.signature()
        digest = binascii.hexlify(self.md5.digest()).decode()
        if self.expect_md5 is not None and digest != self.expect_md5:
            raise OtaError(E_MD5, "MD5 mismatch: file %s, typed %s" % (digest, self.expect_md5))
        return digest

    def verify(self):
        """A downloaded file, whole: its header, then its length against the header's.
        Truncated(E04) when it ends early, OtaError(E04) when it is not for us."""
        if self.got < HDR_LEN:
            raise OtaError(E_FILE, "not an EV PLUS upgrade file (%d bytes)" % self.got)
        info = parse_header(self.hdr, self.model, self.board)
        want = HDR_LEN + info["length"]
        if self.got < want:
            raise Truncated(E_FILE, "file ends at %d bytes, its header says %d" % (self.got, want))
        if self.got > want + TRAILER_LEN:
            raise OtaError(E_FILE, "file longer than its header says")
        self.sig = self.signature()
        self.info = info
        return info

    def close(self):
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None


class Ota:
    def __init__(self, app, ab=None, boot=True):
        self.app = app
        self.hw = app.hw
        self.data_dir = app.data_dir
        self.board = app.hw.name
        if ab is None:
            try:
                import ab_boot as ab
            except ImportError:
                ab = None  # source tree without A/B: language packs only
        self.ab = ab
        self.busy = None  # "upload" / "download" / "install" while one runs
        # The firmware URL's host is asked of the network's DNS server without blocking
        # the loop (lib/dnsclient.py); open_connection only ever gets the address.
        self.dns_server = lambda: dnsclient.wlan_server(getattr(self.hw, "wlan", None))
        self.dns_timeout_ms = DNS_TIMEOUT_MS
        self.download_ms = DOWNLOAD_MS
        self.progress = [0, 0]  # bytes received, bytes expected
        self.last = None  # result of the last upgrade attempt since boot
        self.heap_peak = 0
        self.stage_dir = self.data_dir + "/ota"
        self.staging = self.stage_dir + "/upload.bin"
        # An OCPP download, whole and verified, waiting to be installed (docs/ota.md): it
        # outlives a power cut, so the next boot installs it instead of failing.
        self.kept = self.stage_dir + "/download.bin"
        self.kept_meta = self.stage_dir + "/download.json"
        _mkdirs(self.stage_dir)
        self.on_healthy = None  # fn() when a version on trial is confirmed (OCPP Installed)
        self.key_path = self.data_dir + "/" + KEY_FILE
        if boot:  # what a power cut left; not when the app builds it again for a use
            self._clean_up(app)
        # an OCPP download's https:// context and security profile (ocpp_hook)
        self.tls = lambda: None
        self.profile = lambda: 0

    def _clean_up(self, app):
        _remove(self.staging)  # a cut mid-upload leaves one: never installed
        _remove(self.kept_meta + ".tmp")
        _remove(self.kept_meta + ".bak")
        try:
            ocpp_on = bool(app.settings["ocpp_url"])
        except (AttributeError, KeyError, TypeError):
            ocpp_on = False
        if not ocpp_on:
            self.drop_kept()  # nothing will ask for it
        try:
            os.stat(self.key_path)
            _remove(self.key_path + ".bak")  # a handover cut before it removed the old key
        except OSError:
            pass

    # ---- state -----------------------------------------------------------------------
    def running(self):
        ab = self.ab
        if ab is None:
            return {"slot": None, "trial": False}
        st = ab.STATE or {}
        return {
            "slot": ab.RUNNING,
            "trial": bool(st.get("trial")) and st.get("active") == ab.RUNNING,
            "previous": st.get("previous"),
            "rolled_back": st.get("rolled_back"),
        }

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
        for p in self._key_files():
            try:
                os.stat(p)
                return True
            except OSError:
                pass
        return False

    def load_key(self):
        """(raw 65 bytes, (x, y)) of the installed key, None when none is installed;
        OtaError(E04) when one is but cannot be read: then every file is refused.
        The first copy that exists decides: .tmp and .bak stand in only for a missing
        file (a cut replacement), never for a damaged one, whose .bak is a retired key."""
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
            raise OtaError(E_FILE, "the installed signing key cannot be read (%s)" % why)
        return None

    def key_view(self):
        try:
            k = self.load_key()
        except OtaError as e:
            return {"installed": True, "error": e.msg}
        if k is None:
            return {"installed": False, "note": "signatures cannot be checked: no key installed"}
        return {"installed": True, "fingerprint": fingerprint(k[0])}

    def install_key(self, raw):
        """Installs the first key (raw 65 bytes); OtaError when one is installed or raw
        is not a point of the curve."""
        p256.parse_key(raw)  # ValueError when it is not a key
        if self.key_installed():
            raise OtaError(E_FILE, "a key is installed: only a key file signed by it replaces it")
        self._write_key(raw)

    def _write_key(self, raw):
        import atomicfile

        try:
            atomicfile.write_atomic(self.key_path, bytes(raw))
        except OSError as e:
            raise OtaError(E_WRITE, "cannot write the key: %s" % e)
        _remove(self.key_path + ".bak")  # the retired key must not outlive the handover
        _log.info("upgrade signing key installed: %s", fingerprint(raw))

    async def authenticate(self, sink):
        """What the signature of the whole file in sink says ("verified", "unsigned" or
        "unchecked: no key installed"); OtaError(E04) when a key is installed and the
        file is not signed by it. Steps of the check yield to the control loop."""
        key = self.load_key()
        sig = sink.sig
        if key is None:
            return "unsigned" if sig is None else "unchecked: no key installed"
        if sig is None:
            raise OtaError(E_FILE, "not signed: this charger takes only files signed by %s"
                           % fingerprint(key[0]))
        if not await p256.averify(key[1], sink.sha.digest(), sig):
            raise OtaError(E_FILE, "signature does not match the installed key %s"
                           % fingerprint(key[0]))
        return "verified"

    def check_floor(self, info, downgrade=False):
        """OtaError(E04) for a firmware file signed by the installed key whose version
        is older than the running one, unless the technician asked for a downgrade: an
        old signed image replayed would bring back what its successors fixed. Without a
        key anything well-formed installs anyway; equal versions reinstall."""
        if downgrade or info["kind"] != "firmware" or info.get("signature") != "verified":
            return
        from evse import version

        new, cur = version_key(info["version"]), version_key(version.VERSION)
        if new is None or cur is None or new < cur:
            raise OtaError(E_FILE, "version %s is older than the running %s (or cannot be "
                           "compared): a downgrade is installed only from the Upgrade API "
                           "with downgrade=1" % (info["version"], version.VERSION))

    def refuse(self):
        """Why no upgrade may start now (HTTP 409): (reason, message), reason "busy",
        "charging" or "checking"; None when one may."""
        if self.busy:
            return "busy", "another upgrade is in progress"
        if self.app.charger.session is not None:
            return "charging", "a charge is running: upgrade when it has ended"
        if self.running()["trial"]:
            return "checking", "the running version is still being checked: retry in %d s" % (
                HEALTH_MS // 1000
            )
        return None

    def _result(self, code, msg=None, **extra):
        r = {"code": code}
        if msg:
            r["error"] = msg
        r.update(extra)
        self.last = r
        try:
            self.app.hmi.show_message(code, MESSAGE_MS)
        except AttributeError:
            pass
        if code == OK:
            _log.info("upgrade: %s %s", code, extra)
        else:
            _log.warning("upgrade: %s %s", code, msg)
        return r

    # ---- upload (POST /api/upgrade?md5=...) ------------------------------------------------
    async def upload(self, req, md5, downgrade=False):
        """Receives req's body as a .bin, installs it; returns (http status, result dict).
        The caller checked the session and refuse(). downgrade: the technician asked for
        an older signed firmware (check_floor)."""
        self.busy = "upload"
        self.progress[0] = 0
        self.progress[1] = req.content_length
        t0 = time.ticks_ms()
        gc.collect()
        heap0 = gc.mem_alloc()
        peak = heap0
        chunks = 0
        sink = None
        # The body read deadline is the server's; ask for STALL_MS where httpd allows it.
        if hasattr(req, "body_timeout_ms"):
            req.body_timeout_ms = STALL_MS
        try:
            sink = Sink(self.staging, req.content_length, MODEL, self.board, md5)
            buf = _buffer()
            mv = memoryview(buf)
            while True:
                try:
                    n = await req.read_into(buf)
                except asyncio.CancelledError:
                    self._result(E_TIMEOUT, "no data for %d s" % (STALL_MS // 1000))
                    raise
                except (OSError, EOFError):
                    self._result(E_FILE, "upload broken off at %d bytes" % sink.got)
                    raise
                if not n:
                    break
                sink.write(mv[:n])
                self.progress[0] = sink.got
                chunks += 1
                if chunks & 31 == 0:  # live heap every 32 chunks: garbage is not use
                    gc.collect()
                    a = gc.mem_alloc()
                    if a > peak:
                        peak = a
            sink.finish()
            ms = time.ticks_diff(time.ticks_ms(), t0)
            stats = {"bytes": sink.got, "ms": ms, "heap_before": heap0, "heap_peak": peak}
            self.heap_peak = peak
            info = sink.info
            info["signature"] = await self.authenticate(sink)  # before anything is installed
            self.check_floor(info, downgrade)
            sink = None
            # A charge may have started during a long upload: installing is minutes of
            # flash work, never done while the relays may be closed. Refused, not kept.
            if self.app.charger.session is not None:
                _log.warning("upload refused: a charge started during it")
                return 409, {"error": "a charge started during the upload: upload again "
                             "when it has ended", "refused": "charging"}
            self.busy = "install"
            await self.install(info)
            return 200, self._result(OK, None, version=info["version"], kind=info["kind"],
                                     signature=info["signature"], **stats)
        except OtaError as e:
            r = self._result(e.code, e.msg)
            await drop_body(req)  # the staging file goes below, as on every way out
            return (500 if e.code == E_WRITE else 400), r
        finally:
            if sink is not None:
                sink.close()
            _remove(self.staging)
            if self.busy != "reset":
                self.busy = None

    # ---- install ---------------------------------------------------------------------------
    async def install(self, info, src=None):
        """Installs the verified file src (the staging file by default); E01/E04 as
        OtaError."""
        src = src or self.staging
        if info["kind"] == "key":
            await self._install_key(info, src)
            return
        buf = _buffer()
        if info["kind"] == "language":
            await self._install_language(info, buf, src)
            return
        ab = self.ab
        if ab is None:
            raise OtaError(E_FILE, "this tree does not take firmware upgrades (no ab_boot)")
        with open(src, "rb") as f:  # check the whole archive before touching a slot
            names = await _names(f, info["length"], buf)
        if "evse/app.mpy" not in names or "evse/version.mpy" not in names:
            raise OtaError(E_FILE, "not a firmware tree (no evse/app.mpy)")
        st = ab.load(self.data_dir)
        active = st.get("active")
        slot = "b" if active == "a" else "a"
        d = ab.slot_dir(self.data_dir, slot)
        # 1. the slot stops being a slot (slot.json first); boot.json never points at it
        #    (we run active; previous may, and ab_boot checks slot.json before using it).
        _remove(d + "/slot.json")
        await _rmtree(d)
        _mkdirs(d)
        n = 0
        try:
            with open(src, "rb") as f:
                for path, size in records(f, info["length"], buf):
                    await self._extract(f, d + "/" + path, size, buf)
                    n += 1
            # 2. slot.json last: the slot is whole from here on.
            with open(d + "/slot.json", "w") as out:
                out.write(json.dumps({"complete": True, "version": info["version"], "files": n}))
                out.flush()
        except OSError as e:
            raise OtaError(E_WRITE, "install failed: %s" % e)
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
        # only the installed key hands over to a new one (the first comes from the API)
        if info.get("signature") != "verified":
            raise OtaError(E_FILE, "a key file must be signed by the installed key"
                           if self.key_installed() else
                           "no key installed: install the first one on the Upgrade page")
        if info["length"] != p256.KEY_LEN:
            raise OtaError(E_FILE, "a key file holds a 65-byte public key")
        with open(src, "rb") as f:
            f.seek(HDR_LEN)
            raw = f.read(p256.KEY_LEN)
        try:
            p256.parse_key(raw)
        except ValueError as e:
            raise OtaError(E_FILE, "key file: %s" % e)
        self._write_key(raw)

    async def _extract(self, f, path, size, buf):
        _mkdirs(path.rpartition("/")[0])
        mv = memoryview(buf)
        with open(path, "wb") as out:
            while size:
                k = f.readinto(mv[: min(size, len(buf))])
                if not k:
                    raise OtaError(E_FILE, "archive ends early")
                out.write(mv[:k])
                size -= k
                await asyncio.sleep_ms(0)  # the pilot task runs between chunks
            out.flush()

    async def _install_language(self, info, buf, src):
        d = self.data_dir + "/www/lang"
        with open(src, "rb") as f:
            names = await _names(f, info["length"], buf)
        for p in names:
            if not p.startswith("lang/") or "/" in p[5:] or not (
                p.endswith(".json") or p.endswith(".json.gz")
            ):
                raise OtaError(E_FILE, "a language pack holds lang/<code>.json only: %s" % p)
        _mkdirs(d)
        try:
            with open(src, "rb") as f:
                for path, size in records(f, info["length"], buf):
                    name = path[5:]
                    dest = d + "/" + name
                    # one form per file: a stale .gz would shadow a new plain file
                    _remove(dest + ".gz" if not name.endswith(".gz") else dest[:-3])
                    await self._extract(f, dest + ".tmp", size, buf)
                    _remove(dest)
                    os.rename(dest + ".tmp", dest)
        except OSError as e:
            raise OtaError(E_WRITE, "install failed: %s" % e)
        _log.info("language pack %s installed: %s", info["version"], names)
        settings.add_languages(self.data_dir)  # Setting -> Language may now name it

    async def _reset_later(self):
        await asyncio.sleep_ms(RESET_DELAY_MS)
        while self.app.charger.session is not None:  # never cut a charge
            await asyncio.sleep_ms(1000)
        _log.info("restarting into the new version")
        self.hw.reset()

    # ---- health of a new version (its first boot) --------------------------------------
    async def run(self):
        """Confirms a version on trial once it has been healthy for HEALTH_MS; resets
        (the next boot rolls back) when it is not within HEALTH_DEADLINE_MS."""
        if not self.running()["trial"]:
            return
        t0 = time.ticks_ms()
        since = None
        sup = self.app.supervisor
        while True:
            await asyncio.sleep_ms(500)
            now = time.ticks_ms()
            ok = not sup.late() and sup.escalated is None and self.app.http is not None
            if ok:
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
        if self.on_healthy is not None:
            self.on_healthy()

    def _status(self, status):
        _log.info("firmware download: %s", status)

    # ---- download (OCPP UpdateFirmware) ----------------------------------------------------
    async def update_from_url(self, url, retries=0, retry_interval_s=60, status=None, kept=False):
        """Downloads a .bin from an http(s):// URL and installs it (then resets).
        status(s) hears Downloading, Downloaded, Installing. Raises OSError when the file
        could not be fetched in 1 + retries tries (the caller says DownloadFailed) and
        ValueError when a whole file is not for this charger or does not install
        (InstallationFailed, once Downloaded was said). The download may run during a
        charge; the install waits until no charge runs.

        kept: Downloaded was said before a restart; the file kept for it (self.kept) is
        installed when it is still whole, without downloading it again."""
        status = status or self._status
        try:
            self._check_source(url)
        except OtaError as e:
            self._result(e.code, e.msg)
            raise ValueError(e.msg)  # before Downloading: DownloadFailed
        while self.busy or self.running()["trial"]:
            await asyncio.sleep(5)  # one upgrade at a time; a new version first proves healthy
        self.busy = "download"
        try:
            info = await self._resume(url) if kept else None
            if info is None:
                self.drop_kept()
                sink = await self._fetch(url, 1 + max(0, retries), retry_interval_s, status)
                try:
                    info = sink.verify()
                    info["signature"] = await self.authenticate(sink)
                    self.check_floor(info)  # no downgrade over OCPP
                except OtaError as e:
                    info = e
                else:
                    self._keep(url, sink)
                status("Downloaded")
                if isinstance(info, OtaError):
                    self._result(info.code, info.msg)
                    raise ValueError(info.msg)
            self.busy = "waiting"
            while self.app.charger.session is not None:  # never cut a charge
                await asyncio.sleep(2)
            self.busy = "install"
            status("Installing")
            try:
                await self.install(info, self.kept)
            except OtaError as e:
                self._result(e.code, e.msg)
                raise ValueError(e.msg)
            self._result(OK, None, version=info["version"], kind=info["kind"],
                         signature=info["signature"])
            return info
        finally:
            _remove(self.staging)
            self.drop_kept()
            if self.busy != "reset":
                self.busy = None

    def drop_kept(self):
        """Forgets the downloaded file kept for an install (metadata first)."""
        _remove(self.kept_meta)
        _remove(self.kept_meta + ".bak")
        _remove(self.kept)

    def _keep(self, url, sink):
        """The verified download becomes the kept file, with what identifies it: the
        location, the length and the MD5 computed while it arrived."""
        os.rename(self.staging, self.kept)
        meta = {"url": url, "bytes": sink.got,
                "md5": binascii.hexlify(sink.md5.digest()).decode()}
        atomicfile.save_json(self.kept_meta, meta)

    async def _resume(self, url):
        """The header info of the kept file when it is the whole file downloaded from url
        (same length and MD5 as when it arrived) and passes every check again, the
        signature included, else None (download it again)."""
        try:
            meta = atomicfile.read_json(self.kept_meta)  # this file's own, no older copy
            if meta.get("url") != url:
                raise ValueError("kept file is from %s" % meta.get("url"))
            self.progress[0] = 0
            self.progress[1] = meta.get("bytes") or 0
            sink = Sink(None, None, MODEL, self.board, defer=True)  # checks only
            buf = _buffer()
            mv = memoryview(buf)
            with open(self.kept, "rb") as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    sink.write(mv[:n])
                    self.progress[0] = sink.got
                    await asyncio.sleep_ms(0)
            digest = binascii.hexlify(sink.md5.digest()).decode()
            if sink.got != meta.get("bytes") or digest != meta.get("md5"):
                raise ValueError("kept file changed: %d bytes, MD5 %s" % (sink.got, digest))
            info = sink.verify()
            info["signature"] = await self.authenticate(sink)
            self.check_floor(info)
        except (OSError, ValueError, AttributeError) as e:  # OtaError is a ValueError
            _log.warning("downloaded file not usable after the restart (%s): downloading again",
                         getattr(e, "msg", None) or repr(e))
            return None
        _log.info("installing %s, downloaded before the restart", info["version"])
        return info

    async def _fetch(self, url, tries, retry_interval_s, status):
        """The file in the staging area (a Sink, not yet verified) after at most `tries`
        tries; OSError after the last failed one."""
        for i in range(tries):
            if i:
                await asyncio.sleep(max(1, retry_interval_s))
            status("Downloading")
            try:
                return await self._download(url)
            except Truncated as e:
                why = e.msg
            except OtaError as e:
                if e.code != E_WRITE:  # a refusal: no other try changes it
                    self._result(e.code, e.msg)
                    raise
                why = e.msg
            except (OSError, ValueError, IndexError, asyncio.TimeoutError) as e:
                why = repr(e)
            _log.warning("download %d/%d of %s failed: %s", i + 1, tries, url, why)
        self._result(E_TIMEOUT, "download failed: %s" % why)
        raise OSError(why)

    def _check_source(self, url):
        """OtaError(E03) for a location this charger must not download from: a bad
        character, http:// at security profile 2 or above, https:// without the CA, and
        http:// without a signing key: OCPP 1.6 gives no MD5, so nothing else would stand
        between whoever answers for the host and the firmware."""
        check_location(url)
        if url.startswith("http://") and self.profile() >= 2:
            raise OtaError(E_TIMEOUT, "download refused: http:// at security profile %d"
                           % self.profile())
        if url.startswith("http://") and not self.key_installed():
            raise OtaError(E_TIMEOUT, "download refused: http:// without a signing key "
                           "installed (use https:// or install a key)")

    async def _download(self, url):
        self._check_source(url)
        if url.startswith("https://"):
            ssl, port, rest = self.tls(), 443, url[8:]
            if ssl is None:  # the same CA store as wss:// (ocpp_ca.pem)
                raise OtaError(E_TIMEOUT, "download refused: https:// needs the CA certificate")
        else:
            ssl, port, rest = None, 80, url[7:]
        host, _, path = rest.partition("/")
        if ":" in host:
            host, _, p = host.partition(":")
            port = int(p)
        if not host:
            raise OtaError(E_TIMEOUT, "download refused: no host in the location")
        # asyncio.open_connection calls socket.getaddrinfo, which blocks the whole loop
        # (pilot and protection included) on a name: it only ever gets the address; the
        # name stays in the Host header and the TLS server name.
        addr = await dnsclient.address(host, self.dns_server(), self.dns_timeout_ms)
        r, w = await asyncio.wait_for_ms(
            asyncio.open_connection(addr, port, ssl=ssl, server_hostname=host if ssl else None),
            STALL_MS)
        sink = None
        try:
            w.write(b"GET /%s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path.encode(), host.encode()))
            await w.drain()
            code, length, early = await asyncio.wait_for_ms(_read_head(r), HEAD_MS)
            if code != 200:
                raise OSError("HTTP %d" % code)
            if length is not None and length > MAX_FILE:
                raise ValueError("file of %d bytes: at most %d" % (length, MAX_FILE))
            sink = Sink(self.staging, None, MODEL, self.board, defer=True)
            self.progress[0] = 0
            self.progress[1] = length or 0
            if early:
                sink.write(early)
            buf = _buffer()
            mv = memoryview(buf)
            # an overall deadline: a server trickling a byte now and then never trips the
            # stall timeout, and would hold the download (and the next ones) for good
            end = time.ticks_add(time.ticks_ms(), self.download_ms)
            while True:
                left = time.ticks_diff(end, time.ticks_ms())
                try:
                    if left <= 0:
                        raise asyncio.TimeoutError
                    n = await asyncio.wait_for_ms(r.readinto(mv), min(STALL_MS, left))
                except asyncio.TimeoutError:
                    if left > STALL_MS:
                        raise  # no data for STALL_MS
                    raise OSError("download not complete within %d s"
                                  % (self.download_ms // 1000))
                if n is None:
                    continue  # TLS record not complete yet
                if not n:
                    break
                if sink.got + n > MAX_FILE:
                    raise ValueError("file larger than %d bytes" % MAX_FILE)
                sink.write(mv[:n])
                self.progress[0] = sink.got
            sink.finish()
            if length is not None and sink.got != length:
                raise Truncated(E_FILE, "connection closed at %d of %d bytes" % (sink.got, length))
            try:
                sink.verify()  # here only a file shorter than its header says is an error
            except Truncated:
                raise
            except OtaError:
                pass  # not for us: said after Downloaded (update_from_url)
            return sink
        finally:
            if sink is not None:
                sink.close()
            w.close()
            try:
                await w.wait_closed()  # MicroPython's close() alone leaves the socket open
            except OSError:
                pass

    def ocpp_hook(self, ocpp):
        """The async fn for ocpp.on_update_firmware (evse/ocpp/transfer.py). Also tells
        the central system Installed once a version it asked for proves healthy."""

        def status(s):
            if ocpp.service is not None:
                ocpp.service.firmware_status(s)

        def healthy():
            if ocpp.service is not None:
                ocpp.service.firmware_confirmed()

        self.on_healthy = healthy

        def tls():  # the CA store of wss:// (ocpp_ca.pem): one loader for both
            svc = ocpp.service
            return svc._tls() if svc is not None else None

        def profile():
            svc = ocpp.service
            return svc.cfg["SecurityProfile"] if svc is not None else 0

        self.tls = tls
        self.profile = profile

        async def hook(location, retrieve_date, retries, retry_interval, kept=False):
            await self.update_from_url(location, retries or 0, retry_interval or 60, status,
                                       kept)

        return hook


async def _read_head(r):
    """(status code, Content-Length or None, body bytes read past the head) of an HTTP
    response, each line at most MAX_LINE bytes and at most MAX_LINES of them: a server
    sending an endless line or endless headers fails the download, the heap does not
    grow. OSError when the head is not one."""
    buf = bytearray(MAX_LINE)
    mv = memoryview(buf)
    n = 0
    lines = 0
    code = None
    length = None
    while True:
        i = buf.find(b"\n", 0, n)
        if i < 0:
            if n >= MAX_LINE:
                raise OSError("response line over %d bytes" % MAX_LINE)
            got = await asyncio.wait_for_ms(r.readinto(mv[n:]), STALL_MS)
            if got is None:
                continue  # TLS record not complete yet
            if not got:
                raise OSError("connection closed in the response head")
            n += got
            continue
        line = bytes(mv[:i])
        rest = bytes(mv[i + 1 : n])
        buf[: len(rest)] = rest
        n = len(rest)
        lines += 1
        if lines > MAX_LINES:
            raise OSError("response head over %d lines" % MAX_LINES)
        if line.endswith(b"\r"):
            line = line[:-1]
        if code is None:
            parts = line.split(b" ")
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                raise OSError("not an HTTP response: %r" % line[:40])
            try:
                code = int(parts[1])
            except ValueError:
                raise OSError("bad status line: %r" % line[:40])
        elif not line:
            return code, length, rest
        else:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                try:
                    length = int(v.strip())
                except ValueError:
                    raise OSError("bad Content-Length")


# ---- HTTP ------------------------------------------------------------------------------------
async def drop_body(req):
    """Reads what is still coming of a refused body (nothing kept), so the client gets
    to read the answer instead of a reset connection; the server's body timeout ends a
    stalled one."""
    buf = bytearray(512)
    while req.left:
        if not await req.read_into(buf):
            break


async def http_upgrade(api, req):
    """POST /api/upgrade?md5=<32 hex>[&downgrade=1]: body = the .bin (octet-stream).
    409 {"error", "refused": "busy" | "charging" | "checking"} when none may start now."""
    from httpd import HTTPError, Response

    api._need_session(req)
    ota = api.app.ota.get()
    md5 = req.query.get("md5", "").strip().lower()
    if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5):
        raise HTTPError(400, "md5 must be 32 hexadecimal digits")
    why = ota.refuse()
    if why:
        await drop_body(req)
        return Response({"error": why[1], "refused": why[0]}, 409)
    status, result = await ota.upload(req, md5, req.query.get("downgrade") == "1")
    return Response(result, status)


async def http_upgrade_key(api, req):
    """PUT /api/upgrade/key {"key": PEM public key or 130 hex digits}: installs the first
    signing key. 409 once one is installed (a key file signed by it replaces it)."""
    from httpd import HTTPError, Response

    api._need_session(req)
    ota = api.app.ota.get()
    body = await api._json(req)
    text = body.get("key")
    if not isinstance(text, str):
        raise HTTPError(400, "key: a PEM public key or 130 hex digits")
    try:
        raw = parse_key_text(text)
    except ValueError as e:
        return Response({"error": "key: %s" % e, "fields": {"key": str(e)}}, 400)
    if ota.key_installed():
        return Response({"error": "a key is installed: only a key file signed by it "
                         "replaces it", "refused": "installed"}, 409)
    if ota.busy:
        return Response({"error": "an upgrade is in progress", "refused": "busy"}, 409)
    try:
        ota.install_key(raw)
    except OtaError as e:
        return Response({"error": e.msg}, 500 if e.code == E_WRITE else 409)
    return {"ok": True, "key": ota.key_view()}
