# The card reader task: polls the RC522 about every 200 ms, hands each new card to the
# authorizer (start/stop) or to a waiting "Read" of the web page, and reports a reader
# that stops answering (OCPP ReaderFailure) without touching a charge in progress.
#
# Unknown cards slow it down: UIDs are shown masked to the last 4 hex digits, so a
# UID-changing emulator must not try the rest at 5 cards a second. After 5 refused cards
# within a minute, cards are refused unread for 30 s (two beeps, PAUSE_TEXT on the
# display); after 10 within an hour (from the first of them), until that hour is over:
# at most 10 tries an hour however they are paced. A web "Read" still gets its card.
import asyncio
import time
from micropython import const

import log
import mfrc522

_log = log.get("rfid")

_POLL_MS = const(200)
_SAME_CARD_MS = const(3000)  # a card held on the reader counts once
_FAULT_AFTER = const(5)  # consecutive reader errors before ReaderFailure
_RETRY_MS = const(2000)  # reader in fault: try to bring it back this often
_BURST = const(5)  # refused cards ...
_WINDOW_MS = const(60000)  # ... within this long start a pause
_PAUSE_MS = const(30000)  # the pause after a burst
_BUDGET = const(10)  # refused cards ...
_BUDGET_MS = const(3600000)  # ... within this long pause the reader until it is over
PAUSE_TEXT = "CARDS PAUSED"  # the display's warning while cards are refused unread


class RfidReader:
    def __init__(self, hw, authorizer):
        self._reader = mfrc522.Mfrc522(hw.rfid_spi, hw.rfid_cs, hw.rfid_rst)
        self._auth = authorizer
        self.fault = False
        self.errors = 0
        self._last_uid = None
        self._last_ms = 0
        self._waiter = None  # asyncio.Event of a pending web "Read"
        self._read_card = None
        self.last_card = None  # (uid_hex, kind) of the last card seen, for the web page
        # The back-off. Every time is forgotten once over (_expire), so none is compared
        # across the ticks wrap.
        self._refused = 0  # refused cards since _window_at
        self._window_at = None
        self._spent = 0  # refused cards since _budget_at
        self._budget_at = None
        self._paused_at = None  # ticks_ms the pause began, None when cards are read
        self._pause_ms = _PAUSE_MS  # the length of the pause running

    @property
    def reading(self):
        """A web "Read" waits for a card: the next one goes to it, not to the authorizer."""
        return self._waiter is not None

    async def read(self, timeout_ms):
        """Waits for the next card on the reader (web Read button); (uid, kind) or None."""
        if self._waiter is not None:
            raise ValueError("a read is already waiting")
        ev = asyncio.Event()
        self._waiter = ev
        self._read_card = None
        try:
            await asyncio.wait_for_ms(ev.wait(), timeout_ms)
        except asyncio.TimeoutError:
            return None
        finally:
            self._waiter = None
        return self._read_card

    def _poll(self):
        # The last card is forgotten once its same-card window is over, so its time is
        # never compared days later: once the ticks wrap (2**29 ms on a 32-bit port) it
        # would read as a moment ago, and the next tap of that card would be dropped.
        now = time.ticks_ms()
        if self._last_uid is not None and time.ticks_diff(now, self._last_ms) >= _SAME_CARD_MS:
            self._last_uid = None
        self._expire(now)
        r = self._reader
        try:
            card = r.poll()
        except mfrc522.ReaderError as e:
            if e.kind == "timeout":
                self._error(e)
            else:
                # A card that could not be read (collision, CRC): not a reader fault.
                _log.debug("card read error: %r", e)
            return None
        if self.fault:
            _log.warning("card reader answers again")
        self.fault = False
        self.errors = 0
        return card

    def _expire(self, now):
        if self._window_at is not None and time.ticks_diff(now, self._window_at) >= _WINDOW_MS:
            self._window_at = None
            self._refused = 0
        if self._budget_at is not None and time.ticks_diff(now, self._budget_at) >= _BUDGET_MS:
            self._budget_at = None
            self._spent = 0
        if self._paused_at is not None and time.ticks_diff(now, self._paused_at) >= self._pause_ms:
            self._paused_at = None
            _log.info("cards read again")

    @property
    def paused(self):
        """Cards are refused unread (the back-off after unknown cards)."""
        return self._paused_at is not None

    def notice(self):
        """The display's warning (evse/hmi.py `notices`) while cards are refused unread."""
        return PAUSE_TEXT if self._paused_at is not None else None

    def _count_refusal(self, now):
        if self._window_at is None:
            self._window_at = now
            self._refused = 0
        self._refused += 1
        if self._budget_at is None:
            self._budget_at = now
            self._spent = 0
        self._spent += 1
        if self._spent >= _BUDGET:  # until the hour is over, when the count starts again
            self._pause(now, _BUDGET_MS - time.ticks_diff(now, self._budget_at),
                        "%d unknown cards within an hour" % _BUDGET)
        elif self._refused >= _BURST:
            self._pause(now, _PAUSE_MS, "%d unknown cards within %d s" % (_BURST,
                                                                         _WINDOW_MS // 1000))

    def _pause(self, now, ms, why):
        self._window_at = None
        self._refused = 0
        self._paused_at = now
        self._pause_ms = ms
        _log.warning("%s: cards refused unread for %d s", why, ms // 1000)

    def _error(self, e):
        self.errors += 1
        if self.errors >= _FAULT_AFTER and not self.fault:
            self.fault = True
            _log.error("card reader not answering: %r", e)

    async def run(self):
        try:
            self._reader.init()
        except mfrc522.ReaderError as e:
            self._error(e)
        while True:
            card = self._poll()
            if card is not None:
                await self._handle(card)
            await asyncio.sleep_ms(_RETRY_MS if self.fault else _POLL_MS)

    async def _handle(self, card):
        uid = card.uid_hex()
        kind = card.kind
        try:
            self._reader.halt()
        except mfrc522.ReaderError:
            pass
        now = time.ticks_ms()
        if uid == self._last_uid and time.ticks_diff(now, self._last_ms) < _SAME_CARD_MS:
            self._last_ms = now
            return
        self._last_uid = uid
        self._last_ms = now
        self.last_card = (uid, kind)
        if self._waiter is not None:
            self._read_card = (uid, kind)
            self._waiter.set()
            self._auth.hmi.beep_ok()
            return
        if self._paused_at is not None:
            self._auth.hmi.beep_fail()  # refused unread; the display says why
            _log.info("a card refused unread (back-off after unknown cards)")
            return
        await self._auth.present(uid, kind)
        if self._auth.unknown:
            self._count_refusal(time.ticks_ms())
