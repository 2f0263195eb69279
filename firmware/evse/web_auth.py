# Login for the configuration pages: hashed password, random session tokens in an
# HttpOnly SameSite=Strict cookie with idle expiry, and a rate limit on attempts.
import binascii
import hashlib
import os
import time

import atomicfile
import log

_log = log.get("web_auth")

DEFAULT_PASSWORD = "123456"  # manual §8.1.2 point 4
COOKIE = "evse_session"
IDLE_MS = 15 * 60 * 1000  # a session ends after 15 min without a request
MAX_SESSIONS = 4
_ROUNDS = 2000  # iterated SHA-256: slows down guessing from a stolen data dir
FAILS_BEFORE_LOCK = 5
LOCK_MS = 30000  # after 5 wrong passwords: 30 s, doubling up to 15 min


def _hash(salt, password):
    h = hashlib.sha256(salt + password.encode()).digest()
    for _ in range(_ROUNDS):
        h = hashlib.sha256(h + salt).digest()
    return binascii.hexlify(h).decode()


def _equal(a, b):
    """Compares without an early exit (no timing hint about the prefix)."""
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(a, b):
        diff |= ord(x) ^ ord(y)
    return diff == 0


class WebAuth:
    def __init__(self, data_dir, clock_ms=time.ticks_ms):
        self._path = data_dir + "/password.json"
        self._clock = clock_ms
        self._sessions = {}  # token -> last use (ticks_ms)
        self._fails = 0
        self._locked_until = None
        self._lock_ms = LOCK_MS
        self._salt = None
        self._hash = None
        self._load()

    def _load(self):
        data = atomicfile.load_json(self._path, dict, _log.error)
        try:
            self._salt = binascii.unhexlify(data["salt"])
            self._hash = data["hash"]
        except (KeyError, TypeError, ValueError):
            self._salt = None  # factory default password

    def _check(self, password):
        if self._salt is None:
            return _equal(password, DEFAULT_PASSWORD)
        return _equal(_hash(self._salt, password), self._hash)

    def login(self, password):
        """Returns a new session token, or raises ValueError(reason)."""
        now = self._clock()
        if self._locked_until is not None:
            wait = time.ticks_diff(self._locked_until, now)
            if wait > 0:
                raise ValueError("too many attempts, try again in %d s" % ((wait + 999) // 1000))
            self._locked_until = None
        if not isinstance(password, str) or not self._check(password):
            self._fails += 1
            if self._fails >= FAILS_BEFORE_LOCK:
                self._fails = 0
                self._locked_until = time.ticks_add(now, self._lock_ms)
                self._lock_ms = min(self._lock_ms * 2, 15 * 60 * 1000)
                _log.warning("login locked for %d s after wrong passwords", self._lock_ms // 2000)
            raise ValueError("wrong password")
        self._fails = 0
        self._lock_ms = LOCK_MS
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda t: self._sessions[t])
            del self._sessions[oldest]
        token = binascii.hexlify(os.urandom(16)).decode()
        self._sessions[token] = now
        return token

    def valid(self, token):
        """True for a live session token (and refreshes its idle timer)."""
        if not token:
            return False
        t = self._sessions.get(token)
        if t is None:
            return False
        now = self._clock()
        if time.ticks_diff(now, t) > IDLE_MS:
            del self._sessions[token]
            return False
        self._sessions[token] = now
        return True

    def expire(self):
        """Every minute (app.py): drops the sessions idle too long and a lockout that is
        over. A time kept for days would read as recent once the ticks wrap (2**29 ms on
        a 32-bit port): an old session valid again, the login locked again."""
        now = self._clock()
        for token in [t for t, ms in self._sessions.items() if time.ticks_diff(now, ms) > IDLE_MS]:
            del self._sessions[token]
        if self._locked_until is not None and time.ticks_diff(self._locked_until, now) <= 0:
            self._locked_until = None

    def logout(self, token):
        self._sessions.pop(token, None)

    def change_password(self, old, new):
        if not self._check(old if isinstance(old, str) else ""):
            raise ValueError("current password is wrong")
        if not isinstance(new, str) or not 6 <= len(new) <= 64:
            raise ValueError("new password must have 6 to 64 characters")
        salt = os.urandom(16)
        atomicfile.save_json(
            self._path, {"salt": binascii.hexlify(salt).decode(), "hash": _hash(salt, new)}
        )
        self._salt = salt
        self._hash = _hash(salt, new)
        self._sessions.clear()  # every other device must log in again
