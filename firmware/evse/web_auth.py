# Login for the configuration pages: hashed password, random session tokens in an
# HttpOnly SameSite=Strict cookie with idle expiry, and a rate limit on attempts per
# client address with a cap over all addresses; addresses that logged in since boot keep
# their own count, out of reach of the others' (docs/web.md "Password guessing").
import asyncio
import binascii
import hashlib
import os
import time

import atomicfile
import log
from micropython import const

_log = log.get("web_auth")
_ENOENT = const(2)

DEFAULT_PASSWORD = "123456"  # manual §8.1.2 point 4: changes nothing until replaced
COOKIE = "evse_session"
IDLE_MS = 15 * 60 * 1000  # a session ends after 15 min without a request
MAX_SESSIONS = 4
_ROUNDS = 2000  # iterated SHA-256: slows down guessing from a stolen data dir
_YIELD_EVERY = 100  # rounds between two yields to the control loop (docs/web.md)
_MAX_BYTES = 1024  # password.json is ~120 bytes
FAILS_BEFORE_LOCK = 5  # wrong passwords from one address before it is locked out
LOCK_MS = 30000  # that lockout: 30 s, doubling up to LOCK_MAX_MS
LOCK_MAX_MS = 15 * 60 * 1000
BUCKETS = 16  # other addresses counted in this many buckets, by a keyed hash: none is
# ever forgotten to make room, so new addresses do not reset a lock's doubling; addresses
# sharing a bucket share its lock (stricter, never looser)
KNOWN = 4  # addresses that logged in since boot (the most recent), each counted alone
GLOBAL_FAILS = 20  # wrong passwords from all addresses within GLOBAL_WINDOW_MS ...
GLOBAL_WINDOW_MS = 60000
GLOBAL_LOCK_MS = 60000  # ... lock every address this long: many addresses guess no faster
# An entry: wrong passwords, locked until (0: not), next lock length, last attempt.
_FAILS = 0
_UNTIL = 1
_NEXT = 2
_SEEN = 3


def _entry():
    return [0, 0, LOCK_MS, 0]


async def _hash(salt, password):
    """The stored hash; yields every _YIELD_EVERY rounds: the whole takes 20-120 ms on
    an ESP32, longer than a pilot period."""
    h = hashlib.sha256(salt + password.encode()).digest()
    for i in range(_ROUNDS):
        h = hashlib.sha256(h + salt).digest()
        if i % _YIELD_EVERY == _YIELD_EVERY - 1:
            await asyncio.sleep_ms(0)
    return binascii.hexlify(h).decode()


def _remove(p):
    try:
        os.remove(p)
    except OSError:
        pass  # none


def _equal(a, b):
    """Compares without an early exit (no timing hint about the prefix)."""
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(a, b):
        diff |= ord(x) ^ ord(y)
    return diff == 0


class AuthError(ValueError):
    """A login or a password change refused. `kind` (one class, not one per kind: each
    class costs heap):
      "locked"  too many wrong passwords: no attempt is checked until the lockout ends
      "wrong"   the password (or, changing it, the current one) is wrong
      "new"     the new password is refused (length, the factory default)"""

    def __init__(self, msg, kind):
        super().__init__(msg)
        self.kind = kind


class WebAuth:
    """Every time kept here is on our own millisecond count (_now): it only grows, so an
    expiry stored days ago never reads as recent after the ticks wrap (2**29 ms on a
    32-bit port). The count is exact while the clock is read at least every few days:
    app.py calls expire() every minute."""

    def __init__(self, data_dir, clock_ms=time.ticks_ms):
        self._path = data_dir + "/password.json"
        self._clock = clock_ms
        self._t = clock_ms()
        self._ms = 1  # 0 stands for "not locked"
        self._sessions = {}  # token -> expiry
        self._key = os.urandom(8)  # the bucket hash's: no address aims at a bucket
        self._buckets = [_entry() for _ in range(BUCKETS)]
        self._known = []  # [address, entry], the most recent login first
        self._gfails = 0
        self._gsince = 0
        self._glocked = 0
        self._lock = asyncio.Lock()  # one password check at a time
        self._load()

    def _load(self):
        """Reads password.json alone: its .bak (an older password, perhaps replaced because
        it leaked) and .tmp are read only when it is missing, as a save cut between its
        renames leaves it. A password file that exists and cannot be read is no reason
        to take the public factory password: only a reset code shown on the charger's
        display (someone at the charger) logs in then, to set a new password."""
        self._salt = None  # None: the factory default password
        self._hash = None
        self.reset_code = None
        self.load_error = None  # shown as CFG (app.config_errors)
        bad = None
        data = None
        missing = False
        try:
            data = atomicfile.read_json(self._path, _MAX_BYTES)
        except OSError as e:
            missing = e.errno == _ENOENT
            if not missing:
                bad = "unreadable: %s" % e
        except ValueError as e:  # UnicodeError included
            bad = "corrupt: %s" % e
        if missing:
            notes = []
            data = atomicfile.load_dict_newest(self._path, _MAX_BYTES, notes.append)[0]
            if data is None and notes:
                bad = notes[0]
        elif not bad:
            _remove(self._path + ".bak")  # a copy left by an older firmware
        if not bad and not (missing and data is None):
            try:
                salt = binascii.unhexlify(data["salt"])
                h = data["hash"]
                if not isinstance(h, str) or not salt:
                    raise TypeError("hash")
                self._salt = salt
                self._hash = h
            except (KeyError, TypeError, ValueError):
                bad = "not a password file"
        if bad:
            _log.error("password.json %s: the reset code on the display logs in", bad)
            n = int.from_bytes(os.urandom(4), "big") % 100_000_000
            self.reset_code = "%08d" % n
            self.load_error = ("cannot be read: only the reset code shown on the charger's "
                               "display logs in, and changes nothing until a new password "
                               "is set")

    def now_ms(self):
        """Milliseconds on a count that only grows (past the ticks wrap)."""
        return self._now()

    def _now(self):
        t = self._clock()
        d = time.ticks_diff(t, self._t)
        self._t = t
        if d > 0:
            self._ms += d
        return self._ms

    @property
    def factory(self):
        """True while the password is the factory default or the reset code: nothing
        may be changed then but the password."""
        return self._salt is None

    async def _check(self, password):
        if self.reset_code is not None:
            return _equal(password, self.reset_code)
        if self._salt is None:
            return _equal(password, DEFAULT_PASSWORD)
        return _equal(await _hash(self._salt, password), self._hash)

    # ---- attempts --------------------------------------------------------------------------
    def _entry_of(self, client):
        """(entry, known): a known address's own entry, else its bucket's."""
        for k in self._known:
            if k[0] == client:
                return k[1], True
        h = hashlib.sha256(self._key + str(client).encode()).digest()
        return self._buckets[h[0] % BUCKETS], False

    def _gate(self, client, now):
        """Raises AuthError "locked" while `client` is locked out: by its own count (its bucket's
        when it has not logged in since boot) or, unless it has, by the global cap."""
        e, known = self._entry_of(client)
        until = e[_UNTIL]
        if not known and self._glocked > until:
            until = self._glocked
        if until > now:
            raise AuthError("too many attempts, try again in %d s" % ((until - now + 999) // 1000), "locked")

    def _wrong(self, client, now):
        e = self._entry_of(client)[0]
        e[_SEEN] = now
        e[_FAILS] += 1
        if e[_FAILS] >= FAILS_BEFORE_LOCK:
            e[_FAILS] = 0
            e[_UNTIL] = now + e[_NEXT]
            _log.warning("login locked for %d s for one address", e[_NEXT] // 1000)
            e[_NEXT] = min(e[_NEXT] * 2, LOCK_MAX_MS)
        if now - self._gsince > GLOBAL_WINDOW_MS:
            self._gsince = now
            self._gfails = 0
        self._gfails += 1
        if self._gfails >= GLOBAL_FAILS:
            self._gfails = 0
            self._glocked = now + GLOBAL_LOCK_MS
            _log.warning("login locked for %d s for everyone", GLOBAL_LOCK_MS // 1000)

    async def _attempt(self, client, password):
        """Checks a password under the lockouts; raises AuthError "locked" or "wrong".
        Called under self._lock: parallel requests cannot all pass the gate before the
        first wrong one is counted."""
        self._gate(client, self._now())
        ok = isinstance(password, str) and await self._check(password)
        now = self._now()
        if not ok:
            self._wrong(client, now)
            raise AuthError("wrong password", "wrong")
        self._login_ok(client)
        return now

    def _login_ok(self, client):
        """`client` knows the password: from now on it has its own count, fresh, and the
        global cap no longer holds it (the oldest of KNOWN forgotten)."""
        self._known = [k for k in self._known if k[0] != client]
        self._known.insert(0, [client, _entry()])
        del self._known[KNOWN:]

    # ---- sessions ----------------------------------------------------------------------------
    async def login(self, password, client=None):
        """Returns a new session token, or raises ValueError(reason)."""
        self._gate(client, self._now())  # a locked address does not queue
        async with self._lock:
            now = await self._attempt(client, password)
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda t: self._sessions[t])
            del self._sessions[oldest]
        token = binascii.hexlify(os.urandom(16)).decode()
        self._sessions[token] = now + IDLE_MS
        return token

    def valid(self, token, touch=True):
        """True for a live session token; `touch` starts its idle time again."""
        if not token:
            return False
        exp = self._sessions.get(token)
        if exp is None:
            return False
        now = self._now()
        if now >= exp:
            del self._sessions[token]
            return False
        if touch:
            self._sessions[token] = now + IDLE_MS
        return True

    def expire(self):
        """Every minute (app.py): drops the sessions idle too long and starts the counts
        over whose lockout is over and that saw no attempt for 15 min."""
        now = self._now()
        for token in [t for t, exp in self._sessions.items() if now >= exp]:
            del self._sessions[token]
        for e in self._buckets + [k[1] for k in self._known]:
            if e[_UNTIL] <= now and now - e[_SEEN] > LOCK_MAX_MS:
                e[_FAILS] = e[_UNTIL] = 0  # calm for 15 min: the doubling starts over
                e[_NEXT] = LOCK_MS

    def logout(self, token):
        self._sessions.pop(token, None)

    async def change_password(self, old, new, client=None):
        self._gate(client, self._now())
        async with self._lock:
            await self._change(old, new, client)

    async def _change(self, old, new, client):
        try:
            await self._attempt(client, old if isinstance(old, str) else "")
        except AuthError as e:
            if e.kind != "wrong":
                raise
            raise AuthError("current password is wrong", "wrong")
        if not isinstance(new, str) or not 6 <= len(new) <= 64:
            raise AuthError("new password must have 6 to 64 characters", "new")
        if new == DEFAULT_PASSWORD:
            raise AuthError("new password must not be the factory default", "new")
        salt = os.urandom(16)
        h = await _hash(salt, new)
        atomicfile.save_json(self._path, {"salt": binascii.hexlify(salt).decode(), "hash": h})
        _remove(self._path + ".bak")  # the replaced password must never come back
        self._salt = salt
        self._hash = h
        self.reset_code = None
        self.load_error = None
        self._sessions.clear()  # every other device must log in again
