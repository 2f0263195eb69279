# One WebSocket connection to the central system, seen as OCPP-J RPC: our CALLs go out
# one at a time (a lock) and wait for their answer with a deadline; the central system's
# CALLs are answered in arrival order by one handler task; frames that break the RPC
# rules get the CALLERROR they deserve and change nothing.
import asyncio
import gc
import json

import log
from wsclient import WsError
from evse.ocpp import rpc
from evse.ocpp.rpc import RpcError, CALL, RESULT, ERROR

_log = log.get("ocpp.link")

_INBOX = 4  # central-system CALLs waiting for the handler (it should send one at a time)


class LinkDown(Exception):
    """The connection went away while a CALL waited (or before it went out)."""


class CallError(Exception):
    """The central system answered a CALL with a CALLERROR (or an unusable frame)."""

    def __init__(self, code, desc=""):
        super().__init__("%s %s" % (code, desc))
        self.code = code


class Link:
    def __init__(self, ws, on_call):
        self.ws = ws
        self._on_call = on_call  # async fn(msg_id, action, payload): answers through reply()
        self.up = False
        self.silent = False  # BootNotification Rejected: no answers, no requests
        self._lock = asyncio.Lock()
        self._wait_id = None
        self._given = None  # the last caller's message id sent on this connection
        self._resp = None
        self._resp_ev = asyncio.Event()
        self._inbox = []
        self._in_ev = asyncio.Event()
        self.down_ev = asyncio.Event()
        self.kick = None  # an Event of the owner's to set when the link goes down
        self.error = None  # why the reader stopped
        self.bad_frames = 0
        self.unknown_replies = 0

    def start(self):
        """Marks the link up and returns its two tasks (reader, handler)."""
        self.up = True
        self.error = None
        self.down_ev.clear()
        self._inbox = []
        self._given = None
        return asyncio.create_task(self._reader()), asyncio.create_task(self._handler())

    def down(self, why=None):
        if self.up:
            self.up = False
            self.error = self.error or why
        self._resp_ev.set()  # a waiting call() sees LinkDown
        self.down_ev.set()
        if self.kick is not None:
            self.kick.set()

    # ---- our CALLs ------------------------------------------------------------------------
    async def call(self, action, payload, timeout_ms, msg_id=None):
        """The CALLRESULT payload; raises CallError, LinkDown or asyncio.TimeoutError.
        msg_id (a queued message's own id) goes out the first time it is given on this
        connection; given again (a retry) a fresh id is used: OCPP-J §4.1.1 wants every
        CALL's id new on its connection. Only the transaction queue gives ids, its head
        until delivered, so the last one given is all there is to remember."""
        async with self._lock:
            if not self.up:
                raise LinkDown()
            if msg_id is None or msg_id == self._given:
                mid = rpc.new_id()
            else:
                mid = self._given = msg_id
            self._wait_id = mid
            self._resp = None
            self._resp_ev.clear()
            try:
                await self.ws.send(rpc.call(mid, action, payload))
                await asyncio.wait_for_ms(self._resp_ev.wait(), timeout_ms)
            finally:
                self._wait_id = None
            r = self._resp
        if r is None:
            raise LinkDown()
        if isinstance(r, RpcError):
            raise CallError(r.code, r.desc)
        if r[0] == ERROR:
            raise CallError(r[2], r[3])
        return r[2]

    # ---- their CALLs ----------------------------------------------------------------------
    async def reply(self, msg_id, payload):
        await self.ws.send(rpc.result(msg_id, payload))

    async def reply_error(self, msg_id, code, desc=""):
        await self.ws.send(rpc.error(msg_id, code, desc))

    async def _handler(self):
        while True:
            await self._in_ev.wait()
            self._in_ev.clear()
            while self._inbox:
                mid, action, payload = self._inbox.pop(0)
                try:
                    await self._on_call(mid, action, payload)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # e.g. MemoryError: the requests after it still get answers
                    if isinstance(e, MemoryError):
                        gc.collect()
                    _log.exc(e, "%s failed", action)
                    try:
                        await self.reply_error(mid, "InternalError", "internal error")
                    except Exception:
                        pass  # the link is going down: the session sees to that

    # ---- frames in --------------------------------------------------------------------------
    async def _reader(self):
        try:
            while True:
                # The frame is decoded from the receive buffer: no copy of it in the heap.
                try:
                    text, mv = await self.ws.recv_view()
                except WsError as e:
                    if e.kind != "too big":
                        raise
                    await self._too_big(e)
                    continue
                if not text:
                    await self.ws.close(1003)
                    raise WsError("binary message (OCPP-J is text only)", 1003)
                await self._frame(mv)
        except (OSError, WsError, asyncio.TimeoutError) as e:
            self.error = e  # the session logs why the link ended
        finally:
            self.down()

    async def _too_big(self, e):
        """A message longer than the receive buffer, read and dropped: a CALL gets a
        CALLERROR with its id (else the central system would send it again and again on
        new connections), the answer to our CALL fails it, anything else is ignored."""
        self.bad_frames += 1
        kind, mid = _kind_and_id(e.head)
        _log.warning("%d-byte message dropped: %s", e.size, _start(e.head))
        if mid is None:
            return
        if kind == CALL:
            if not self.silent:
                await self.reply_error(mid, "GenericError", "message of %d bytes over the charger's %d"
                                       % (e.size, self.ws.max_message))
        elif mid == self._wait_id:
            self._resp = RpcError("GenericError", "answer of %d bytes too large" % e.size)
            self._resp_ev.set()

    async def _frame(self, text):
        """text: the frame, str or a memoryview of UTF-8 (the receive buffer)."""
        try:
            msg = rpc.decode(text)
        except RpcError as e:
            self.bad_frames += 1
            _log.warning("bad frame (%s: %s): %s", e.code, e.desc, _start(text))
            if e.kind in (RESULT, ERROR):
                # A broken answer: fails our CALL if it is its answer; never answered
                # (a CALLERROR for a CALLERROR could loop between the two sides).
                if e.msg_id == self._wait_id:
                    self._resp = e
                    self._resp_ev.set()
            elif not self.silent:
                await self.reply_error(e.msg_id, e.code, e.desc)
            return
        if msg[0] == CALL:
            if self.silent:
                return
            if len(self._inbox) >= _INBOX:
                await self.reply_error(msg[1], "GenericError", "too many requests at once")
                return
            self._inbox.append((msg[1], msg[2], msg[3]))
            self._in_ev.set()
        elif msg[1] == self._wait_id:
            self._resp = msg
            self._resp_ev.set()
        else:
            self.unknown_replies += 1
            _log.warning("answer to unknown message id %s ignored", msg[1][:36])


def _kind_and_id(head):
    """(message type id, message id) read off the start of a frame too large to decode,
    `[2, "id", ...`; (None, None) where it does not start so."""
    h = bytes(head)
    q = h.find(b'"')
    q = h.find(b'"', q + 1) if q >= 0 else -1
    if q < 0:
        return None, None
    try:
        m = json.loads(h[: q + 1] + b"]")
    except ValueError:
        return None, None
    if (not isinstance(m, list) or len(m) != 2 or m[0] not in (CALL, RESULT, ERROR) or not isinstance(m[1], str)
            or not 0 < len(m[1]) <= rpc.MAX_ID):
        return None, None
    return m[0], m[1]


def _start(text):
    """The first 80 characters (bytes of a memoryview, cut before a character) to log."""
    if isinstance(text, str):
        return text[:80]
    j = min(len(text), 80)
    while 0 < j < len(text) and text[j] & 0xC0 == 0x80:
        j -= 1
    return str(text[:j], "utf-8")
