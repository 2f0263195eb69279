# The web login (evse/web_auth.py): lockouts per client address under a cap over all
# addresses, the factory password, and session expiries past the 32-bit ticks wrap.
import sys

_FAKES = (__file__.rpartition("/")[0] or ".") + "/fakes"
if _FAKES not in sys.path:
    sys.path.append(_FAKES)
import asyncio  # noqa: E402

import fake_time  # noqa: E402
from check import eq, raises, tmpdir, true  # noqa: E402
from evse import web_auth as wa  # noqa: E402

MASK = fake_time.TICKS_PERIOD - 1
NEAR_WRAP = fake_time.TICKS_PERIOD - 3000


class Clock:
    """ms of a 32-bit port: always within 0 .. 2**30 - 1."""

    def __init__(self, start=0):
        self.ms = start & MASK

    def step(self, ms):
        self.ms = (self.ms + ms) & MASK

    def __call__(self):
        return self.ms


class Ticks32:
    def __enter__(self):
        self.saved = wa.time
        wa.time = fake_time
        return self

    def __exit__(self, *exc):
        wa.time = self.saved
        fake_time.set_ms(-1)
        return False


def _run(coro):
    r = asyncio.run(coro)
    asyncio.new_event_loop()
    return r


def login(a, *args):
    return _run(a.login(*args))


def change(a, *args):
    return _run(a.change_password(*args))


def _auth(tag, clock, password=None):
    a = wa.WebAuth(tmpdir(tag), clock_ms=clock)
    if password is not None:
        change(a, wa.DEFAULT_PASSWORD, password)
    return a


def _apart(a, *addrs):
    """Draws the bucket key again until `addrs` fall in distinct buckets: a shared bucket
    shares its lock (stricter), which these tests do not look at."""
    while len(set(id(a._entry_of(x)[0]) for x in addrs)) < len(addrs):
        a._key = wa.os.urandom(8)


def _locked(fn, *args):
    # The API answers 429 for this kind (evse/api.py), not by the message's words.
    e = raises(wa.AuthError, fn, *args)
    eq(e.kind, "locked", "locked out")
    true("attempts" in str(e), "locked out: %s" % e)


def test_wrong_passwords_lock_only_their_address():
    clock = Clock()
    a = _auth("wa_addr", clock, "owner-pw")
    _apart(a, "10.0.0.66", "10.0.0.2")
    for _ in range(wa.FAILS_BEFORE_LOCK):
        e = raises(wa.AuthError, login, a, "guess", "10.0.0.66")
        eq((str(e), e.kind), ("wrong password", "wrong"))
    _locked(login, a, "owner-pw", "10.0.0.66")  # even the right one
    true(a.valid(login(a, "owner-pw", "10.0.0.2")), "the owner's address is not locked")
    clock.step(wa.LOCK_MS)
    true(a.valid(login(a, "owner-pw", "10.0.0.66")), "the lock is over after 30 s")


def test_the_lock_doubles_up_to_15_minutes():
    clock = Clock()
    a = _auth("wa_double", clock, "owner-pw")
    want = wa.LOCK_MS
    for _ in range(7):
        for _ in range(wa.FAILS_BEFORE_LOCK):
            raises(ValueError, login, a, "guess", "x")
        clock.step(want - 1)
        _locked(login, a, "owner-pw", "x")
        clock.step(1)
        want = min(want * 2, wa.LOCK_MAX_MS)
        clock.step(wa.GLOBAL_WINDOW_MS)  # keep the global cap out of it
    eq(want, wa.LOCK_MAX_MS, "capped")


def test_many_addresses_hit_the_global_cap():
    clock = Clock()
    a = _auth("wa_global", clock, "owner-pw")
    for i in range(wa.GLOBAL_FAILS):
        raises(ValueError, login, a, "guess", "10.0.1.%d" % i)  # 1 each: none locked alone
        clock.step(10)
    _locked(login, a, "owner-pw", "10.0.0.2")  # everyone waits ...
    _locked(change, a, "owner-pw", "another-1", "10.0.0.2")
    clock.step(wa.GLOBAL_LOCK_MS)
    true(a.valid(login(a, "owner-pw", "10.0.0.2")), "... but briefly")


def test_the_address_table_is_bounded():
    # A fixed table of buckets: new addresses never push a lock (or its doubling) out.
    clock = Clock()
    a = _auth("wa_table", clock, "owner-pw")
    for i in range(wa.FAILS_BEFORE_LOCK):
        raises(ValueError, login, a, "guess", "locked")
    for i in range(wa.GLOBAL_FAILS - wa.FAILS_BEFORE_LOCK - 1):  # under the global cap
        try:
            login(a, "guess", "other%d" % i)
        except ValueError:
            pass  # wrong, or its bucket is the locked one's
        clock.step(10)
    eq(len(a._buckets), wa.BUCKETS)
    _locked(login, a, "owner-pw", "locked")
    clock.step(wa.LOCK_MS)
    for i in range(3 * wa.KNOWN):  # only logins add known addresses
        login(a, "owner-pw", "known%d" % i)
    eq(len(a._known), wa.KNOWN)
    eq(a._known[0][0], "known%d" % (3 * wa.KNOWN - 1), "the most recent kept")


def test_the_old_password_check_counts_as_an_attempt():
    clock = Clock()
    a = _auth("wa_change", clock, "owner-pw")
    _apart(a, "10.0.0.66", "10.0.0.2")
    for _ in range(wa.FAILS_BEFORE_LOCK):
        e = raises(wa.AuthError, change, a, "guess", "another-1", "10.0.0.66")
        eq((str(e), e.kind), ("current password is wrong", "wrong"))
    _locked(change, a, "owner-pw", "another-1", "10.0.0.66")
    _locked(login, a, "owner-pw", "10.0.0.66")
    change(a, "owner-pw", "another-1", "10.0.0.2")
    true(a.valid(login(a, "another-1", "10.0.0.2")), "changed from another address")


class _Host:
    """One host with a dozen addresses sending GLOBAL_FAILS wrong passwords a minute,
    FAILS_BEFORE_LOCK from each address that is not locked."""

    def __init__(self, a, n=12):
        self.a = a
        self.addrs = ["10.0.9.%d" % i for i in range(n)]
        self.k = 0
        self.sent = 0

    def minute(self):
        sent = 0
        for _ in range(len(self.addrs)):
            if sent >= wa.GLOBAL_FAILS:
                break
            for _ in range(wa.FAILS_BEFORE_LOCK):
                try:
                    login(self.a, "guess", self.addrs[self.k % len(self.addrs)])
                except ValueError as e:
                    if "attempts" in str(e):
                        break
                    sent += 1
            self.k += 1
        self.sent += sent
        return sent


def test_one_host_cycling_addresses_cannot_lock_the_owner_out_for_good():
    # The global cap locks every address, and a table that forgot addresses to make
    # room forgot their doubling too: a dozen addresses kept the owner out as long as
    # they went on. An address that logged in since boot is not held by the cap nor by
    # the other addresses' locks; the attacker's buckets keep their doubling.
    clock = Clock()
    a = _auth("wa_host", clock)
    change(a, wa.DEFAULT_PASSWORD, "owner-pw", "10.0.0.2")
    host = _Host(a)
    owner_ok = 0
    minutes = 30
    for m in range(minutes):
        host.minute()
        if m == 0:
            _locked(login, a, "owner-pw", "10.0.0.99")  # a new address waits
        clock.step(30_000)
        try:
            login(a, "owner-pw", "10.0.0.2")
            owner_ok += 1
        except ValueError:
            pass
        clock.step(30_000)
        a.expire()
    print("  the owner logged in %d times in %d minutes; %d wrong passwords"
          % (owner_ok, minutes, host.sent))
    eq(owner_ok, minutes, "the owner (no wrong password) logged in every minute")
    true(host.sent <= minutes * wa.GLOBAL_FAILS, "still capped: %d" % host.sent)
    # the buckets kept their doubling: locks of 15 min by now, so far fewer than
    # 20 a minute get through at the end
    last = 0
    for _ in range(10):
        last += host.minute()
        clock.step(60_000)
    print("  then %d wrong passwords in 10 minutes" % last)
    true(last < 10 * wa.GLOBAL_FAILS // 2, "%d in the last 10 minutes" % last)


def test_a_known_address_keeps_its_own_count():
    # Known is no free pass: its own wrong passwords lock it as before.
    clock = Clock()
    a = _auth("wa_known", clock, "owner-pw")
    login(a, "owner-pw", "10.0.0.2")
    for _ in range(wa.FAILS_BEFORE_LOCK):
        raises(ValueError, login, a, "guess", "10.0.0.2")
    _locked(login, a, "owner-pw", "10.0.0.2")
    clock.step(wa.LOCK_MS)
    true(a.valid(login(a, "owner-pw", "10.0.0.2")), "after 30 s")


def test_factory_password():
    a = _auth("wa_factory", Clock())
    true(a.factory, "factory default at first")
    e = raises(wa.AuthError, change, a, wa.DEFAULT_PASSWORD, wa.DEFAULT_PASSWORD)
    eq((str(e), e.kind), ("new password must not be the factory default", "new"))
    e = raises(wa.AuthError, change, a, wa.DEFAULT_PASSWORD, "short")
    eq((str(e), e.kind), ("new password must have 6 to 64 characters", "new"))
    true(a.factory, "the default is no new password")
    change(a, wa.DEFAULT_PASSWORD, "owner-pw")
    true(not a.factory, "changed")
    true(not wa.WebAuth(a._path.rpartition("/")[0]).factory, "and stored")


def _damage(d, text='{"salt": "zz", "ha'):
    with open(d + "/password.json", "w") as f:
        f.write(text)


def _quiet(fn, *args):
    import log

    log.set_level(log.ERROR + 10)
    try:
        return fn(*args)
    finally:
        log.set_level(log.WARNING)


def test_an_unreadable_password_file_asks_for_the_reset_code():
    clock = Clock()
    a = _auth("wa_torn", clock, "owner-pw")
    d = a._path.rpartition("/")[0]
    _damage(d)
    a = _quiet(wa.WebAuth, d, clock)
    code = a.reset_code
    true(isinstance(code, str) and len(code) == 8 and code.isdigit(), "8 digits: %r" % code)
    true(a.factory, "changes nothing until replaced")
    true(a.load_error, "and says so (CFG)")
    for pw in (wa.DEFAULT_PASSWORD, "owner-pw"):  # neither the public one nor a guess
        eq(str(raises(ValueError, login, a, pw, "10.0.0.%d" % len(pw))), "wrong password")
    e = raises(ValueError, change, a, wa.DEFAULT_PASSWORD, "attacker-pw", "10.0.0.9")
    eq(str(e), "current password is wrong")
    true(a.valid(login(a, code, "10.0.0.2")), "the code logs in ...")
    true(a.factory, "... to a session that must change the password")
    change(a, code, "new-owner", "10.0.0.2")
    true(not a.factory and a.reset_code is None and a.load_error is None, "reset")
    raises(ValueError, login, a, code, "10.0.0.2")  # once
    b = wa.WebAuth(d, clock_ms=clock)
    true(b.reset_code is None and b.load_error is None, "stored")
    true(b.valid(login(b, "new-owner", "10.0.0.2")), "the new password")
    # A new code at every boot while the file stays unreadable.
    _damage(d, "null")
    codes = set(_quiet(wa.WebAuth, d, clock).reset_code for _ in range(4))
    true(len(codes) > 1 and None not in codes, "random codes: %r" % codes)


def test_a_password_file_that_cannot_be_opened_asks_for_the_reset_code():
    import os

    d = tmpdir("wa_dir")
    os.mkdir(d + "/password.json")  # exists, cannot be read as a file
    a = _quiet(wa.WebAuth, d, Clock())
    true(a.reset_code and a.factory and a.load_error, "reset code")
    raises(ValueError, login, a, wa.DEFAULT_PASSWORD)


def test_no_password_file_is_the_factory_password():
    a = wa.WebAuth(tmpdir("wa_none"), clock_ms=Clock())
    true(a.factory and a.reset_code is None and a.load_error is None,
         "no file at all: the factory state, not an error")
    true(a.valid(login(a, wa.DEFAULT_PASSWORD)), "the factory password logs in")


def test_a_replaced_password_never_comes_back():
    # The owner replaced a password (it leaked): no copy of it stays beside the file,
    # and a damaged password.json does not make it log in again.
    import os

    d = tmpdir("wa_replaced")
    a = wa.WebAuth(d, clock_ms=Clock())
    change(a, wa.DEFAULT_PASSWORD, "leaked-one")
    change(a, "leaked-one", "the-new-one")
    raises(OSError, os.stat, d + "/password.json.bak")
    _damage(d, "{damaged")
    b = _quiet(wa.WebAuth, d, Clock())
    raises(ValueError, login, b, "leaked-one", "a")
    raises(ValueError, login, b, "the-new-one", "b")
    true(b.reset_code is not None, "the reset code instead")
    # A .bak an older firmware left is deleted once the file is read.
    change(b, b.reset_code, "third-one-x")
    with open(d + "/password.json", "rb") as f:
        current = f.read()
    with open(d + "/password.json.bak", "wb") as f:
        f.write(current)
    wa.WebAuth(d, clock_ms=Clock())
    raises(OSError, os.stat, d + "/password.json.bak")


def test_a_save_cut_between_its_renames_keeps_the_new_password():
    # Cut after password.json became the .bak: the new one is whole in .tmp.
    import os

    d = tmpdir("wa_cut")
    a = wa.WebAuth(d, clock_ms=Clock())
    change(a, wa.DEFAULT_PASSWORD, "old-one-pw")
    other = wa.WebAuth(tmpdir("wa_cut2"), clock_ms=Clock())
    change(other, wa.DEFAULT_PASSWORD, "new-one-pw")
    os.rename(d + "/password.json", d + "/password.json.bak")
    os.rename(other._path, d + "/password.json.tmp")
    c = wa.WebAuth(d, clock_ms=Clock())
    true(c.reset_code is None and not c.factory, "no reset needed")
    true(c.valid(login(c, "new-one-pw")), "the newer copy")
    os.remove(d + "/password.json.tmp")  # only the .bak: the change never happened
    c = wa.WebAuth(d, clock_ms=Clock())
    true(c.valid(login(c, "old-one-pw")), "the older copy")


def test_parallel_attempts_are_counted_before_the_next_one():
    # The hash yields to the loop: attempts sent together must still be checked one by
    # one, or they would all pass the lockout before the first wrong one counts.
    a = _auth("wa_parallel", Clock(), "owner-pw")
    got = []

    async def one():
        try:
            await a.login("guess", "10.0.0.66")
        except ValueError as e:
            got.append(str(e)[:8])

    async def main():
        await asyncio.gather(*[one() for _ in range(wa.FAILS_BEFORE_LOCK + 3)])

    _run(main())
    eq(got.count("wrong pa"), wa.FAILS_BEFORE_LOCK, "checked: %r" % got)


def test_sessions_expire_across_the_wrap():
    with Ticks32():
        clock = Clock(NEAR_WRAP)
        a = _auth("wa_wrap", clock, "owner-pw")
        token = login(a, "owner-pw")
        for _ in range(4):  # used every 10 min: alive past the wrap, for 40 min
            clock.step(10 * 60 * 1000)
            true(a.valid(token), "an active session goes on")
        clock.step(wa.IDLE_MS)
        true(not a.valid(token), "15 min idle: ended")
        token = login(a, "owner-pw")
        clock.step(wa.IDLE_MS - 1000)
        true(a.valid(token, False), "a look does not refresh ...")
        clock.step(1000)
        true(not a.valid(token, False), "... so it ends on time")


def test_a_session_idle_for_a_week_stays_ended():
    with Ticks32():
        clock = Clock(NEAR_WRAP)
        a = _auth("wa_week", clock, "owner-pw")
        kept = login(a, "owner-pw")
        tokens = [login(a, "owner-pw") for _ in range(2)]
        for _ in range(9 * 24 * 60):  # 9 days: past 2**29 ms; expire() every minute
            clock.step(60_000)
            a.expire()
        true(not a.valid(kept), "ended")
        eq(len(a._sessions), 0, "purged")
        true(not any(a.valid(t) for t in tokens), "none back")
