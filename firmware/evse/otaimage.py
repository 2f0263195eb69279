# The upgrade file (.bin) and its checks (docs/ota.md): header, payload records, signature
# trailer, the signing key's text forms, and the Sink that takes a file in pieces. The
# service that installs it is evse/ota.py; this module is imported only while a file is
# checked or installed (and by the key form of the Upgrade page).
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
# signing the SHA-256 of the header and payload (lib/p256.py); evse/ota.py says which
# files must carry one.
#
# Errors (display and API):
#   E01 UP  write to flash failed      E03 UP  no data for 15 s (a download: refused or failed)
#   E02 UP  MD5 mismatch               E04 UP  wrong model/board, damaged or truncated file,
#                                              not signed or not by the installed key
import asyncio
import binascii
import hashlib
import struct

from crc import crc32

MAGIC = b"EVPB"
FORMAT = 1
HDR_LEN = 64
KIND_FIRMWARE = 1
KIND_LANGUAGE = 2
KIND_KEY = 3
_KINDS = ("", "firmware", "language", "key")  # by KIND_*: a tuple of constants, in flash
SIG_MAGIC = b"EVPS"
SIG_P256 = 1
TRAILER_LEN = 76
MODEL = "EVPLUS"
# The piece an upload, a download or an install moves at a time. 1 KB: about a TCP
# segment arrives per read anyway (MSS 1460), and the buffer is held while an upload runs
# beside everything else, the heap's worst moment (docs/development.md "The 32-bit frozen
# build"); 4 KB and 2 KB before, each step 1-2 KB of that moment.
CHUNK = 1024
_MIN_CHUNK = 256  # the least buffer() falls back to
_MAX_PATH = 96
_PATH_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/"

OK = "100 UP"
E_WRITE = "E01 UP"
E_MD5 = "E02 UP"
E_TIMEOUT = "E03 UP"
E_FILE = "E04 UP"


class OtaError(ValueError):  # a ValueError: an installer's caller says it failed
    """`truncated`: the file ends before its header says, a broken transfer worth another
    try (a flag, not a subclass: each class costs heap)."""

    def __init__(self, code, msg, truncated=False):
        self.code = code
        self.msg = msg
        self.truncated = truncated


def buffer():
    """A CHUNK bytearray, or a smaller one when the heap has no CHUNK-sized free block
    left (fragmented after weeks of running): an upgrade is slower then, never refused
    for want of one contiguous block. Every loop on one reads len(buf)."""
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
    if not KIND_FIRMWARE <= kind <= KIND_KEY:
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
    import p256  # here, not at import: an upload's body does not need it

    alg, _, n = struct.unpack("<BBH", t[4:8])
    if alg != SIG_P256 or n != p256.SIG_LEN:
        raise OtaError(E_FILE, "unknown signature algorithm %d (length %d)" % (alg, n))
    return bytes(t[8:72])


def parse_key_text(text):
    """The raw 65-byte key of a PEM public key (P-256 SubjectPublicKeyInfo) or of 130 hex
    digits; ValueError when it is neither or not a point of the curve."""
    import p256

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


def records(f, length):
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


async def holds(f, length, want, check=None):
    """Walks every record (records() checks each; check(path), when given, raises
    OtaError for a path the caller does not take), yielding between records: an archive
    of hundreds of files is hundreds of flash seeks and reads. Returns how many of the
    paths in `want` the archive holds, each counted once (a path twice is not another
    one). No list of the paths is kept: a firmware tree's hundred names were 5 KB of
    heap at the upgrade's worst moment."""
    seen = 0  # a bit per path of want
    for p, _ in records(f, length):
        if check is not None:
            check(p)
        if p in want:
            seen |= 1 << want.index(p)
        await asyncio.sleep_ms(0)
    found = 0
    while seen:
        found += seen & 1
        seen >>= 1
    return found


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
        self.digest = self.md5_hex = None  # SHA-256 of header and payload, MD5 of all, then
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
            raise OtaError(E_FILE, "signature trailer cut short (%d bytes)" % after, True)
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
        self._done()
        digest = self.md5sum()
        if self.expect_md5 is not None and digest != self.expect_md5:
            raise OtaError(E_MD5, "MD5 mismatch: file %s, typed %s" % (digest, self.expect_md5))
        return digest

    def verify(self):
        """A downloaded file, whole: its header, then its length against the header's.
        OtaError(E04, truncated) when it ends early, OtaError(E04) when it is not for us.
        Asked again, the same answer (the header copy is gone by then)."""
        if self.digest is not None:
            return self.info
        if self.got < HDR_LEN:
            raise OtaError(E_FILE, "not an EV PLUS upgrade file (%d bytes)" % self.got)
        info = parse_header(self.hdr, self.model, self.board)
        want = HDR_LEN + info["length"]
        if self.got < want:
            raise OtaError(E_FILE, "file ends at %d bytes, its header says %d" % (self.got, want), True)
        if self.got > want + TRAILER_LEN:
            raise OtaError(E_FILE, "file longer than its header says")
        self.sig = self.signature()
        self.info = info
        self._done()
        return info

    def _done(self):
        # The whole file is in and checked: its SHA-256 kept, the hashes' state and the
        # header and trailer copies let go before the signature check's numbers.
        self.md5sum()
        self.digest = self.sha.digest()
        self.sha = self.md5 = self.hdr = self.tail = None

    def md5sum(self):
        """The MD5 of every byte taken, in hex, once the file is whole (a hash gives
        one digest)."""
        if self.md5_hex is None:
            self.md5_hex = binascii.hexlify(self.md5.digest()).decode()
        return self.md5_hex

    def close(self):
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None

