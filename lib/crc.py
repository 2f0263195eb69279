# CRC-32 (IEEE 802.3, the zlib/PNG one): crc32(b"123456789") == 0xCBF43926.
#
# Uses binascii.crc32 when the port has it (unix, ESP32 and STM32 builds do, through
# MICROPY_PY_BINASCII_CRC32); otherwise a 16-entry nibble table in Python: slower, but
# persistence checks run on a few KB at boot and a few hundred bytes per write.
# Chain calls like binascii: crc32(b"lo", crc32(b"hel")) == crc32(b"hello").

# Reflected polynomial 0xEDB88320, one entry per 4-bit nibble.
_T = (
    0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC,
    0x76DC4190, 0x6B6B51F4, 0x4DB26158, 0x5005713C,
    0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C,
    0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C,
)


def crc32_nibble(data, crc=0):
    """CRC-32 of a bytes-like object, continuing from `crc` (pure Python)."""
    t = _T
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        crc = (crc >> 4) ^ t[crc & 15]
        crc = (crc >> 4) ^ t[crc & 15]
    return crc ^ 0xFFFFFFFF


try:
    from binascii import crc32
except ImportError:
    crc32 = crc32_nibble
