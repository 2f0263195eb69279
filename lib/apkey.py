# The WPA2 key of the installer's hotspot (docs/hal.md `wlan.ap_key`, docs/hardware.md).
#
# Not a function of the serial alone: the firmware is public, the SSID shows the serial's
# last characters and the MCU id is the MAC the hotspot broadcasts, so anything computed
# from those is known to everyone in radio range. The key is HMAC-SHA256 over the serial
# keyed with a per-device secret: 16 random bytes written once, at the first boot (the
# factory's), to the data directory, and never rewritten by the firmware. Upgrades keep
# the data directory, and a reset of the settings does not touch the file, so the key on
# the label printed from that first boot stays valid for the life of the board.
import hashlib
import os
from micropython import const

# 32 symbols without 0/O, 1/I and lower case (l): read off a display, typed on a phone.
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
LENGTH = const(12)  # 5 bits a symbol: 60 bits (WPA2 wants 8 to 63 characters)
SECRET_BYTES = const(16)
FILE = "ap_secret.bin"
_LABEL = b"EVPLUS hotspot key\x00"
_BLOCK = const(64)


def hmac_sha256(key, msg):
    """RFC 2104 HMAC with SHA-256 (MicroPython has no hmac module built in)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + b"\x00" * (_BLOCK - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def derive(secret, serial):
    """The hotspot key of a board: the first 60 bits of HMAC-SHA256(secret, label +
    serial), 5 bits a symbol of ALPHABET, most significant first."""
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < SECRET_BYTES:
        raise ValueError("secret: at least %d bytes" % SECRET_BYTES)
    mac = hmac_sha256(bytes(secret), _LABEL + serial.encode())
    out = []
    acc = 0
    bits = 0
    for b in mac:  # small ints only: no long-int maths on a 32-bit port
        acc = (acc << 8) | b
        bits += 8
        while bits >= 5 and len(out) < LENGTH:
            bits -= 5
            out.append(ALPHABET[(acc >> bits) & 31])
        acc &= (1 << bits) - 1
        if len(out) == LENGTH:
            break
    return "".join(out)


def load_secret(data_dir, log=None):
    """The board's secret: read from <data_dir>/ap_secret.bin, or created there when
    the file is absent (first boot). A file that is there but cannot be read, or has
    the wrong length, is left alone (a flash error may pass) and a random secret for
    this boot only is used: the hotspot stays protected, its key is the one the display
    shows (not the label's), and `log(msg)` says why."""
    path = data_dir + "/" + FILE
    try:
        with open(path, "rb") as f:
            secret = f.read(SECRET_BYTES + 1)
    except OSError:
        secret = None
    if secret is not None:
        if len(secret) == SECRET_BYTES:
            return secret
        if log is not None:
            log("%s has %d bytes, not %d: a key for this boot only"
                % (path, len(secret), SECRET_BYTES))
        return os.urandom(SECRET_BYTES)
    try:
        os.stat(path)
        exists = True
    except OSError:
        exists = False
    secret = os.urandom(SECRET_BYTES)
    if exists:
        if log is not None:
            log("%s cannot be read: a key for this boot only" % path)
        return secret
    try:
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(secret)
        os.rename(tmp, path)  # whole or absent: a cut write never leaves a short secret
    except OSError as e:
        if log is not None:
            log("%s cannot be written (%r): a key for this boot only" % (path, e))
    return secret
