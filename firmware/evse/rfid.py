# The card reader task: polls the RC522 about every 200 ms, hands each new card to the
# authorizer (start/stop) or to a waiting "Read" of the web page, and reports a reader
# that stops answering (OCPP ReaderFailure) without touching a charge in progress.
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
        r = self._reader
        try:
            card = r.poll()
        except mfrc522.ReaderTimeout as e:
            self._error(e)
            return None
        except mfrc522.ReaderError as e:
            # A card that could not be read (collision, CRC): not a reader fault.
            _log.debug("card read error: %r", e)
            return None
        if self.fault:
            _log.warning("card reader answers again")
        self.fault = False
        self.errors = 0
        return card

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
        await self._auth.present(uid, kind)
