# The three learned RFID cards (manual §8.1.2 point 11): slots 1-3, persisted atomically.
# As an authorization source it accepts a learned card and knows nothing of any other.
import atomicfile
import log

_log = log.get("cards")

SLOTS = 3
_HEX = "0123456789ABCDEF"


def normalize_uid(uid):
    """Upper-case hex of a 4-, 7- or 10-byte UID, or raises ValueError."""
    if not isinstance(uid, str):
        raise ValueError("uid must be hex text")
    u = uid.strip().upper()
    if len(u) not in (8, 14, 20):
        raise ValueError("uid must be 4, 7 or 10 bytes (8, 14 or 20 hex digits)")
    for ch in u:
        if ch not in _HEX:
            raise ValueError("uid must be hex digits only")
    return u


class CardStore:
    def __init__(self, data_dir):
        self._path = data_dir + "/cards.json"
        self._slots = [None] * SLOTS
        data = atomicfile.load_json(self._path, dict, _log.error)
        stored = data.get("slots") if isinstance(data, dict) else None
        if isinstance(stored, list):
            for i, uid in enumerate(stored[:SLOTS]):
                try:
                    self._slots[i] = normalize_uid(uid) if uid else None
                except ValueError:
                    _log.error("card slot %d ignored: %r", i + 1, uid)

    def list(self):
        return [{"slot": i + 1, "uid": u} for i, u in enumerate(self._slots)]

    def learned(self, uid):
        u = uid.upper()
        return any(s == u for s in self._slots)

    def _save(self):
        atomicfile.save_json(self._path, {"slots": self._slots})

    def learn(self, slot, uid):
        """Stores a card in slot 1-3 (replacing what was there). Raises ValueError."""
        if not isinstance(slot, int) or not 1 <= slot <= SLOTS:
            raise ValueError("slot must be 1, 2 or 3")
        u = normalize_uid(uid)
        for i, s in enumerate(self._slots):
            if s == u and i != slot - 1:
                raise ValueError("card already learned in slot %d" % (i + 1))
        self._slots[slot - 1] = u
        self._save()
        _log.info("card %s learned in slot %d", u, slot)

    def forget(self, slot):
        if not isinstance(slot, int) or not 1 <= slot <= SLOTS:
            raise ValueError("slot must be 1, 2 or 3")
        self._slots[slot - 1] = None
        self._save()

    def free_slot(self):
        for i, s in enumerate(self._slots):
            if s is None:
                return i + 1
        return None

    async def authorize(self, id_tag):
        return "Accepted" if self.learned(id_tag) else None

    def recheck(self, id_tag):
        """A card this store accepted, asked again at plug-in: deleted meanwhile, refused."""
        return "Accepted" if self.learned(id_tag) else "Invalid"
