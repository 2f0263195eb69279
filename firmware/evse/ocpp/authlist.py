# The local authorization list and the authorization cache (OCPP 1.6 §3.5): idTag ->
# (status, expiry, parentIdTag), case-insensitive, persisted atomically.
#
# Entries are kept as short strings "TAG\tS\tEXPIRY\tPARENT" (S: first letter of the
# status; EXPIRY epoch seconds or empty) in a list: a hundred of them cost a few KB.
# The cache holds every idTagInfo the central system sent (Authorize, Start and Stop
# confirmations), never an id of the local list; when full it evicts a non-Accepted
# entry first, else the least recently updated one.
import atomicfile
import log

from evse.ocpp import isotime
from evse.ocpp.config import load_json

_log = log.get("ocpp.auth")

# Stored by their first letters. A tuple, not dicts: it stays in flash on a frozen build.
_STATUSES = ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")


def info_of(obj):
    """(status, expiry epoch or 0, parent or None) of an idTagInfo object; ValueError."""
    status = obj.get("status") if isinstance(obj, dict) else None
    if status not in _STATUSES:
        raise ValueError("bad idTagInfo")
    exp = obj.get("expiryDate")
    parent = obj.get("parentIdTag")
    if parent is not None and (not isinstance(parent, str) or len(parent) > 20):
        parent = None
    return status, isotime.parse(exp) if exp else 0, parent


def valid(info, now):
    """The status that applies now: an Accepted entry past its expiry counts as Expired."""
    status, exp, _ = info
    if status == "Accepted" and exp and exp <= now:
        return "Expired"
    return status


class TagTable:
    def __init__(self, path, max_len):
        self._path = path
        self.max_len = max_len
        self.version = 0
        self._rows = []
        data = load_json(path, max_len * 64 + 256)
        rows = data.get("rows")
        if isinstance(rows, list):
            self._rows = [r for r in rows[:max_len] if isinstance(r, str) and r.count("\t") == 3]
        v = data.get("version")
        self.version = v if isinstance(v, int) else 0

    def __len__(self):
        return len(self._rows)

    def _find(self, tag):
        key = tag.upper() + "\t"
        for i, r in enumerate(self._rows):
            if r.startswith(key):
                return i
        return -1

    def get(self, tag):
        i = self._find(tag)
        if i < 0:
            return None
        _, s, exp, parent = self._rows[i].split("\t")
        for name in _STATUSES:
            if name[0] == s:
                break
        else:
            name = "Invalid"
        return name, int(exp) if exp else 0, parent or None

    def put(self, tag, info):
        """Adds or replaces; returns False when the table is full."""
        status, exp, parent = info
        if status not in _STATUSES:
            raise KeyError(status)
        row = "%s\t%s\t%s\t%s" % (tag.upper(), status[0], exp or "", parent or "")
        i = self._find(tag)
        if i >= 0:
            self._rows.pop(i)
        elif len(self._rows) >= self.max_len:
            return False
        self._rows.append(row)  # newest last: the cache evicts from the front
        return True

    def remove(self, tag):
        i = self._find(tag)
        if i >= 0:
            self._rows.pop(i)

    def clear(self):
        self._rows = []

    def save(self):
        atomicfile.save_json(self._path, {"version": self.version, "rows": self._rows})


class Cache(TagTable):
    def store(self, tag, info):
        if not self.put(tag, info):
            rows = self._rows
            for i, r in enumerate(rows):
                if r.split("\t")[1] != "A":
                    rows.pop(i)
                    break
            else:
                rows.pop(0)
            self.put(tag, info)
        self.save()


def apply_list(table, update, entries, version):
    """SendLocalList into `table`: 'Accepted', 'Failed' or 'VersionMismatch'."""
    if update == "Differential" and version <= table.version:
        return "VersionMismatch"
    rows = table._rows
    keep = list(rows)
    if update == "Full":
        table.clear()
    try:
        for e in entries or ():
            info = e.get("idTagInfo")
            if info is None:
                table.remove(e["idTag"])
            elif not table.put(e["idTag"], info_of(info)):
                raise ValueError("list full")
    except ValueError as err:
        table._rows = keep
        _log.warning("SendLocalList failed: %s", err)
        return "Failed"
    table.version = version
    table.save()
    return "Accepted"
