"""Writes unix_port_tests/p256_vectors.py: ECDSA P-256 / SHA-256 known answers made with
the `cryptography` package, for the firmware's own verifier (lib/p256.py).

    python tools/p256_vectors.py

Each vector: public key (65 bytes, hex), message (hex), signature r || s (hex), and
whether it is valid. Besides the signatures made here, each key gets its high-S twin
(n - s, also valid: the verifier accepts it) and a signature of another message.
"""

import hashlib
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ROOT = Path(__file__).resolve().parent.parent
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def raw_key(pub):
    return pub.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


def sign_raw(priv, msg):
    r, s = decode_dss_signature(priv.sign(msg, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def vectors(count=8):
    out = []
    for i in range(count):
        priv = ec.generate_private_key(ec.SECP256R1())
        pub = raw_key(priv.public_key())
        msg = hashlib.sha256(b"message %d" % i).digest() * (i + 1)
        sig = sign_raw(priv, msg)
        r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        twin = r.to_bytes(32, "big") + (N - s).to_bytes(32, "big")
        other = sign_raw(priv, msg + b"!")
        out.append((pub.hex(), msg.hex(), sig.hex(), True))
        out.append((pub.hex(), msg.hex(), twin.hex(), True))
        out.append((pub.hex(), msg.hex(), other.hex(), False))
    return out


def signed_files():
    """Upgrade files for the firmware's trailer and key checks (unix_port_tests/test_ota):
    a language pack and a firmware tree signed by KEY, the same pack signed by OTHER,
    and a key file handing KEY over to OTHER."""
    sys.path.insert(0, str(ROOT / "tools"))
    import mkbin

    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    lang = mkbin.make_bin("language", [("lang/xx.json", b'{"hello": "ciao"}')], "1.0", "*")
    fw = mkbin.make_bin("firmware", [("evse/app.mpy", b"a" * 5000), ("evse/version.mpy", b"v")],
                        "9.9.9", "unix_sim")
    return {
        "KEY": raw_key(key.public_key()),
        "OTHER": raw_key(other.public_key()),
        "LANG": lang,
        "LANG_SIGNED": mkbin.sign(lang, key),
        "LANG_FORGED": mkbin.sign(lang, other),
        "FW_SIGNED": mkbin.sign(fw, key),
        "KEY_TO_OTHER": mkbin.sign(mkbin.key_bin(raw_key(other.public_key())), key),
        "KEY_BY_OTHER": mkbin.sign(mkbin.key_bin(raw_key(other.public_key())), other),
    }


def main():
    lines = ['# Made by tools/p256_vectors.py with the `cryptography` package: do not edit.',
             '# (public key, message, signature r || s, valid), all hex.', 'VECTORS = [']
    for v in vectors():
        lines.append("    (%r, %r, %r, %r)," % v)
    lines.append("]")
    lines.append("# signed upgrade files (hex), see signed_files()")
    for name, data in signed_files().items():
        lines.append("%s = %r" % (name, data.hex()))
    dest = ROOT / "unix_port_tests" / "p256_vectors.py"
    dest.write_text("\n".join(lines) + "\n")
    print(dest, file=sys.stderr)


if __name__ == "__main__":
    main()
